//! `--text-template`: the text built from several columns (nulls empty, numbers and dates written
//! as text, a row with every column null a failure), only those columns read, and bad templates
//! or chunk flags refused before anything is written.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, ListArray,
    StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::Int32Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use predicates::str::contains;

use crate::util::*;

/// `(id, title, body)` rows with nulls in either column and both.
fn records() -> Vec<(i64, Option<&'static str>, Option<&'static str>)> {
    vec![
        (1, Some("Dune"), Some("A desert planet and a boy who would be more.")),
        (2, None, Some("No title, only a body.")),
        (3, Some("Title only"), None),
        (4, None, None),
        (5, Some(""), Some("")),
        (6, Some("{Braces}"), Some("kept as they are in values: {title}")),
    ]
}

#[test]
fn a_text_template_builds_the_text_from_its_columns_and_reads_only_those() {
    let dir = tempdir();
    let input = dir.path().join("records.parquet");
    let recs = records();
    // A large column the template does not name: it must not be read.
    let blob: Vec<String> = (0..recs.len()).map(|i| format!("{i}").repeat(200_000)).collect();
    write_parquet(
        &input,
        vec![
            ("id", Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.0))) as ArrayRef),
            ("title", Arc::new(StringArray::from_iter(recs.iter().map(|r| r.1))) as ArrayRef),
            ("body", Arc::new(StringArray::from_iter(recs.iter().map(|r| r.2))) as ArrayRef),
            ("blob", Arc::new(StringArray::from(blob)) as ArrayRef),
        ],
    );
    let out = dir.path().join("out");
    let assert = batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .args(["--output"])
        .arg(&out)
        .args(["--id-column", "id", "--text-template", r"{title}\n\n{body}"])
        .arg(&input)
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    let read_mib: f64 =
        stderr.split("input:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let file_mib = std::fs::metadata(&input).unwrap().len() as f64 / (1 << 20) as f64;
    assert!(
        read_mib < 0.1 && file_mib > 1.0,
        "read {read_mib} MiB of a {file_mib:.1} MiB file: the blob column was read"
    );

    // The same texts built here, as one column: the same vectors and text hashes.
    let rendered: Vec<Option<String>> = recs
        .iter()
        .map(|r| match (r.1, r.2) {
            (None, None) => None,
            (t, b) => Some(format!("{}\n\n{}", t.unwrap_or(""), b.unwrap_or(""))),
        })
        .collect();
    let plain_in = dir.path().join("rendered.parquet");
    write_parquet(
        &plain_in,
        vec![
            ("id", Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.0))) as ArrayRef),
            ("text", Arc::new(StringArray::from(rendered)) as ArrayRef),
        ],
    );
    let plain = dir.path().join("plain");
    embed_cmd(&plain_in, &plain, &["--id-column", "id"]).assert().success();
    assert_same_vectors(&read_vectors(&plain), &read_vectors(&out));
    assert_eq!(
        read_failures(&out),
        vec![(3, "text is null".to_string())],
        "the row whose columns are all null"
    );
    assert_eq!(text_hashes(&out), text_hashes(&plain), "text_hash is the hash of the template's output");
    // The template and its columns are in the description and every part's metadata.
    let meta = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&part_files(&out)[0]).unwrap())
        .unwrap()
        .schema()
        .metadata()
        .clone();
    assert_eq!(meta["batch_embed.text_template"], r"{title}\n\n{body}");
    assert_eq!(meta["batch_embed.text_columns"], r#"["title","body"]"#);
    // Another template is another run.
    batch_embed()
        .args(["embed", "--quiet", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(&out)
        .args(["--id-column", "id", "--text-template", "{body}"])
        .arg(&input)
        .assert()
        .failure()
        .stderr(contains("text_template was"));
}

/// The text_hash of each row of an output, by row.
fn text_hashes(out: &Path) -> Vec<(u64, u128)> {
    let mut got = Vec::new();
    for part in part_files(out) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(part).unwrap()).unwrap();
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            let rows =
                b.column_by_name("row").unwrap().as_primitive::<arrow::datatypes::UInt64Type>().clone();
            let h = b.column_by_name("text_hash").unwrap().as_fixed_size_binary().clone();
            got.extend((0..h.len()).map(|i| (rows.value(i), batch_embed::sync::hash_from_bytes(h.value(i)))));
        }
    }
    got.sort();
    got
}

#[test]
fn a_template_writes_numbers_booleans_and_dates_as_text() {
    let dir = tempdir();
    let input = dir.path().join("books.parquet");
    write_parquet(
        &input,
        vec![
            (
                "title",
                Arc::new(StringArray::from(vec![Some("Dune"), Some("Untitled draft"), None])) as ArrayRef,
            ),
            ("year", Arc::new(Int32Array::from(vec![Some(1965), None, Some(2001)]))),
            ("rating", Arc::new(Float64Array::from(vec![Some(4.5), Some(3.0), None]))),
            ("in_print", Arc::new(BooleanArray::from(vec![Some(true), Some(false), None]))),
            // Days since 1970-01-01: 1965-08-01.
            ("published", Arc::new(Date32Array::from(vec![Some(-1614), None, None]))),
            ("seen", Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_500), None, None]))),
        ],
    );
    let out = dir.path().join("out");
    let template =
        "{title} ({year}): {rating} stars, in print: {in_print}, published {published}, seen {seen}";
    embed_cmd(&input, &out, &["--text-template", template]).assert().success();
    let want = [
        "Dune (1965): 4.5 stars, in print: true, published 1965-08-01, seen 2023-11-14T22:13:20.500",
        "Untitled draft (): 3.0 stars, in print: false, published , seen ",
        " (2001):  stars, in print: , published , seen ",
    ];
    let want: Vec<(u64, u128)> =
        want.iter().enumerate().map(|(i, t)| (i as u64, batch_embed::sync::text_hash(t))).collect();
    assert_eq!(text_hashes(&out), want, "the rows' texts as the template wrote them");
}

#[test]
fn bad_templates_and_chunk_flags_fail_before_anything_is_written() {
    let dir = tempdir();
    let input = dir.path().join("records.parquet");
    write_parquet(
        &input,
        vec![
            ("title", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            (
                "tags",
                Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>([Some([Some(1)])])) as ArrayRef,
            ),
        ],
    );
    let out = dir.path().join("out");
    let fails = |args: &[&str], message: &str| {
        batch_embed()
            .args(["embed", "--model"])
            .arg(fixture("qwen2-gqa"))
            .arg("--output")
            .arg(&out)
            .args(args)
            .arg(&input)
            .assert()
            .failure()
            .stderr(contains(message));
        assert!(!out.exists(), "{args:?}: nothing may be written");
    };
    fails(
        &["--text-template", "{title} {body}"],
        "no input file has the column \"body\" that --text-template",
    );
    fails(&["--text-template", "{title} {body}"], "the first file's columns are: title, n, tags");
    fails(&["--text-template", "{title}: {tags}"], "column \"tags\" of");
    fails(
        &["--text-template", "{title}: {tags}"],
        "not a string, binary, number, boolean, date or time type",
    );
    // A number may go into a template beside text, but is no text of its own.
    fails(&["--text-column", "n"], "has type Int64, not a string or binary type");
    fails(&["--text-template", "{title"], "is never closed");
    fails(&["--text-template", "title}"], "closes no placeholder");
    fails(&["--text-template", "no placeholder"], "names no column");
    fails(&["--text-template", "{title}", "--text-column", "title"], "cannot be used with");
    let tt = ["--text-template", "{title}"];
    fails(
        &[&tt[..], &["--chunk-tokens", "600"]].concat(),
        "--chunk-tokens 600 is more than the model accepts (512",
    );
    fails(
        &[&tt[..], &["--chunk-tokens", "64", "--max-tokens", "32"]].concat(),
        "--chunk-tokens 64 is more than --max-tokens 32",
    );
    fails(&[&tt[..], &["--chunk-tokens", "0"]].concat(), "--chunk-tokens must be at least 1");
    fails(
        &[&tt[..], &["--chunk-tokens", "16", "--chunk-overlap", "16"]].concat(),
        "--chunk-overlap 16 must be less than the 15 tokens",
    );
    fails(&[&tt[..], &["--chunk-tokens", "8"]].concat(), "--chunk-tokens 8 leaves 7 tokens for text");
    let prompt =
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ";
    fails(
        &[&tt[..], &["--chunk-tokens", "20", "--prompt", prompt]].concat(),
        "the prompt and the special tokens take",
    );
    fails(
        &[&tt[..], &["--chunk-tokens", "20", "--max-chunks", "0"]].concat(),
        "--max-chunks must be at least 1",
    );
    for lone in [&["--chunk-overlap", "4"][..], &["--max-chunks", "2"], &["--chunk-pool", "mean"]] {
        fails(&[&tt[..], lone].concat(), "--chunk-tokens");
    }
}

#[test]
fn a_template_column_missing_from_older_files_reads_as_null_there() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let strs = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
    // The older shard was written before `subtitle` was added.
    write_parquet(
        &input.join("a-old.parquet"),
        vec![("title", strs(&["Old"])), ("body", strs(&["first body"]))],
    );
    write_parquet(
        &input.join("b-new.parquet"),
        vec![
            ("title", strs(&["New"])),
            ("subtitle", strs(&["a subtitle"])),
            ("body", strs(&["second body"])),
        ],
    );
    let template = r"{title}\n{subtitle}\n{body}";
    let out = dir.path().join("out");
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(&out)
        .args(["--text-template", template])
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("column \"subtitle\" of --text-template is not in 1 of the 2 input files (e.g."))
        .stderr(contains("a-old.parquet): read as null there"));
    let want = ["Old\n\nfirst body", "New\na subtitle\nsecond body"];
    let want: Vec<(u64, u128)> =
        want.iter().enumerate().map(|(i, t)| (i as u64, batch_embed::sync::text_hash(t))).collect();
    assert_eq!(text_hashes(&out), want);

    // A column no file has is a misspelling; a file with none of the columns is not of this corpus.
    let fails = |template: &str, message: &str| {
        embed_cmd(&input, &dir.path().join("refused"), &["--text-template", template])
            .assert()
            .failure()
            .stderr(contains(message));
    };
    fails(r"{title}\n{subtitel}", "no input file has the column \"subtitel\"");
    fails(r"{title}\n{subtitel}", "the first file's columns are: title, body");
    write_parquet(&input.join("c-other.parquet"), vec![("label", strs(&["x"]))]);
    fails(template, "c-other.parquet has none of the columns --text-template");
    // A bare column must be in every file.
    fails("{subtitle}", "a-old.parquet has no column \"subtitle\" (pick one with --text-column)");
}
