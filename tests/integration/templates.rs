//! `--text-template`: the text built from several columns (nulls empty, a row with every column
//! null a failure), only those columns read, and bad templates or chunk flags refused before
//! anything is written.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
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
    let hashes = |dir: &Path| -> Vec<Vec<u8>> {
        let part = &part_files(dir)[0];
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(part).unwrap())
            .unwrap()
            .build()
            .unwrap();
        reader
            .flat_map(|b| {
                let b: RecordBatch = b.unwrap();
                let h = b.column_by_name("text_hash").unwrap().as_fixed_size_binary().clone();
                (0..h.len()).map(|i| h.value(i).to_vec()).collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(hashes(&out), hashes(&plain), "text_hash is the hash of the template's output");
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

#[test]
fn bad_templates_and_chunk_flags_fail_before_anything_is_written() {
    let dir = tempdir();
    let input = dir.path().join("records.parquet");
    write_parquet(
        &input,
        vec![
            ("title", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
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
    fails(&["--text-template", "{title} {body}"], "has no column \"body\" (named in --text-template");
    fails(&["--text-template", "{title} {body}"], "its columns are: title, n");
    fails(&["--text-template", "{title}: {n}"], "column \"n\" of");
    fails(&["--text-template", "{title}: {n}"], "has type Int64, not a string or binary type");
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
