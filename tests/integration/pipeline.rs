//! The pipeline at scale: workers, resume after a kill, fingerprints, shard schema, input types.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, BinaryViewArray, DictionaryArray, Int32Array, Int64Array,
    LargeBinaryArray, LargeStringArray, StringArray, StringViewArray, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use predicates::str::contains;

use crate::util::*;

fn rows_of(v: &[(u64, Vec<f32>)]) -> Vec<u64> {
    v.iter().map(|(r, _)| *r).collect()
}

#[test]
fn three_workers_give_the_rows_and_vectors_of_one() {
    let dir = tempdir();
    let input = corpus(dir.path(), 300);
    let one = dir.path().join("one");
    embed_cmd(&input, &one, &[]).assert().success();
    let three = dir.path().join("three");
    for w in 0..3 {
        embed_cmd(
            &input,
            &three,
            &["--num-workers", "3", "--worker-id", &w.to_string(), "--stride-block", "7"],
        )
        .assert()
        .success();
    }
    let a = read_vectors(&one);
    let b = read_vectors(&three);
    let mut rows = rows_of(&b);
    rows.dedup();
    assert_eq!(rows.len(), b.len(), "a row was written twice");
    assert_same_vectors(&a, &b);
    // Vectors + failures = all rows, with each worker holding only its own blocks.
    let failures = read_failures(&three);
    assert_eq!(failures, read_failures(&one));
    assert_eq!(a.len() + failures.len(), 300);
    for w in 0..3u64 {
        let wdir = three.join(format!("worker-{w:05}-of-00003"));
        for (row, _) in read_vectors(&wdir) {
            assert_eq!((row / 7) % 3, w, "row {row} in worker {w}");
        }
    }
}

#[test]
fn workers_skip_row_groups_and_pages_they_do_not_own() {
    // Row groups of 16 rows and pages of 4: with K = 5 and 3 workers, some groups hold no row of
    // a worker and most pages are skipped; the rows must still come out right, each once.
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for f in 0..2 {
        let texts: Vec<String> = (0..70).map(|i| format!("file {f} row {i} says hello")).collect();
        let ids: Vec<i64> = (0..70).map(|i| f * 1000 + i).collect();
        write_parquet_groups(
            &input.join(format!("g{f}.parquet")),
            vec![
                ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ("text", Arc::new(StringArray::from(texts)) as ArrayRef),
            ],
            16,
        );
    }
    let one = dir.path().join("one");
    embed_cmd(&input, &one, &["--id-column", "id"]).assert().success();
    let three = dir.path().join("three");
    for w in 0..3 {
        embed_cmd(
            &input,
            &three,
            &[
                "--num-workers",
                "3",
                "--worker-id",
                &w.to_string(),
                "--stride-block",
                "5",
                "--id-column",
                "id",
            ],
        )
        .assert()
        .success();
    }
    assert_same_vectors(&read_vectors(&one), &read_vectors(&three));
    assert_eq!(read_vectors(&three).len(), 140);
}

#[test]
fn worker_identity_comes_from_the_environment() {
    let dir = tempdir();
    let input = corpus(dir.path(), 60);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--stride-block", "5"])
        .env("BATCH_EMBED_WORKER_ID", "1")
        .env("BATCH_EMBED_NUM_WORKERS", "2")
        .assert()
        .success();
    let got = read_vectors(&out.join("worker-00001-of-00002"));
    assert!(!got.is_empty());
    assert!(got.iter().all(|(r, _)| (r / 5) % 2 == 1));
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_output() {
    let dir = tempdir();
    let input = corpus(dir.path(), 400);
    let clean = dir.path().join("clean");
    embed_cmd(&input, &clean, &["--id-column", "id"]).assert().success();

    let out = dir.path().join("out");
    let args = [
        "--id-column",
        "id",
        "--rows-per-part",
        "16",
        "--checkpoint-every",
        "0",
        "--debug-chunk-delay-ms",
        "40",
    ];
    let checkpoint = worker0(&out).join("checkpoint.json");
    for round in 0..3 {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("batch-embed"))
            .args(["embed", "--quiet", "--model"])
            .arg(fixture("qwen2-gqa"))
            .arg("--output")
            .arg(&out)
            .args(args)
            .arg(&input)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until this run has committed something, then kill it without warning.
        let before = done(&checkpoint);
        let deadline = Instant::now() + Duration::from_secs(60);
        while done(&checkpoint) <= before + 16 * (round + 1) {
            assert!(Instant::now() < deadline, "no progress");
            assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be interrupted");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let ck: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
        assert_eq!(ck["complete"], false, "killed mid-run");
    }
    embed_cmd(&input, &out, &args).assert().success();
    assert_same_vectors(&read_vectors(&clean), &read_vectors(&out));
    assert_eq!(read_failures(&clean), read_failures(&out));
    let leftovers: Vec<_> = std::fs::read_dir(worker0(&out))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A finished worker run again does nothing.
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(&out)
        .args(args)
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("already complete"));
}

#[test]
fn a_different_run_in_the_same_folder_is_refused() {
    let dir = tempdir();
    let input = corpus(dir.path(), 30);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &[]).assert().success();
    embed_cmd(&input, &out, &["--max-tokens", "100"])
        .assert()
        .failure()
        .stderr(contains("was written by a different run: max_tokens was 512 and is now 100"))
        .stderr(contains("--restart"));
    embed_cmd(&input, &out, &["--attention", "bidirectional", "--prompt", "q: "])
        .assert()
        .failure()
        .stderr(contains("attention was \"causal\" and is now \"bidirectional\""))
        .stderr(contains("prompt was null and is now \"q: \""));
    // Changing an input file is noticed too.
    write_texts(&input.join("shard-9.parquet"), &[Some("new")]);
    embed_cmd(&input, &out, &[])
        .assert()
        .failure()
        .stderr(contains("the input files changed (4 files before, 5 now)"));
    embed_cmd(&input, &out, &["--restart"]).assert().success();
    assert_eq!(read_vectors(&out).len() + read_failures(&out).len(), 31);
}

#[test]
fn a_run_that_failed_before_committing_anything_does_not_block_the_next() {
    // Regression: the checkpoint is written before the weights load; a model that fails to
    // load must not leave a fingerprint that refuses the corrected command.
    let dir = tempdir();
    let input = corpus(dir.path(), 20);
    let bad = dir.path().join("bad-model");
    copy_dir(&fixture("qwen2-gqa"), &bad);
    let cfg = std::fs::read_to_string(bad.join("config.json"))
        .unwrap()
        .replace("\"hidden_size\": 64", "\"hidden_size\": 96");
    std::fs::write(bad.join("config.json"), cfg).unwrap();
    let out = dir.path().join("out");
    embed_with(&bad, &input, &out, &[]).assert().failure().stderr(contains("loading the weights of"));
    embed_cmd(&input, &out, &[]).assert().success();
    assert_eq!(read_vectors(&out).len() + read_failures(&out).len(), 20);
}

#[test]
fn shards_have_the_documented_schema_and_metadata() {
    let dir = tempdir();
    let input = corpus(dir.path(), 50);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--id-column", "id", "--output-dtype", "f16", "--prompt", "Query: "])
        .assert()
        .success();
    let parts = part_files(&out);
    assert!(!parts.is_empty());
    for p in &parts {
        assert!(p.parent().unwrap().ends_with("worker-00000-of-00001"));
    }
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&parts[0]).unwrap()).unwrap();
    let schema = reader.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["row", "id", "text_hash", "embedding"]);
    assert_eq!(schema.field(0).data_type(), &DataType::UInt64);
    assert_eq!(schema.field(1).data_type(), &DataType::Int64, "id keeps its type");
    assert_eq!(schema.field(2).data_type(), &DataType::FixedSizeBinary(16));
    match schema.field(3).data_type() {
        DataType::FixedSizeList(item, 64) => assert_eq!(item.data_type(), &DataType::Float16),
        other => panic!("embedding is {other}"),
    }
    let meta = schema.metadata();
    for (k, v) in [
        ("batch_embed.dim", "64"),
        ("batch_embed.pooling", "last_token"),
        ("batch_embed.normalized", "true"),
        ("batch_embed.attention", "causal"),
        ("batch_embed.max_tokens", "512"),
        ("batch_embed.prompt", "Query: "),
        ("batch_embed.model_type", "qwen2"),
        ("batch_embed.version", env!("CARGO_PKG_VERSION")),
    ] {
        assert_eq!(meta.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(meta["batch_embed.model_hash"].len(), 32);
    assert!(meta["batch_embed.model"].ends_with("qwen2-gqa"));
    // f16 vectors are the f32 ones rounded.
    let f32_out = dir.path().join("f32");
    embed_cmd(&input, &f32_out, &["--prompt", "Query: "]).assert().success();
    for ((_, a), (_, b)) in read_vectors(&out).iter().zip(read_vectors(&f32_out)) {
        assert!(max_abs_diff(a, &b) < 1e-3);
    }
    // No temporary files are left.
    assert!(!std::fs::read_dir(worker0(&out)).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn every_string_encoding_is_read_and_empty_files_are_fine() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let words = vec![Some("alpha beta"), None, Some("gamma")];
    write_parquet(
        &input.join("a.parquet"),
        vec![("text", Arc::new(StringArray::from(words.clone())) as ArrayRef)],
    );
    write_parquet(
        &input.join("b.parquet"),
        vec![("text", Arc::new(LargeStringArray::from(words.clone())) as ArrayRef)],
    );
    write_parquet(
        &input.join("c.parquet"),
        vec![("text", Arc::new(StringViewArray::from(words.clone())) as ArrayRef)],
    );
    let dict: DictionaryArray<Int32Type> = words.iter().copied().collect();
    write_parquet(&input.join("d.parquet"), vec![("text", Arc::new(dict) as ArrayRef)]);
    write_parquet(
        &input.join("e.parquet"),
        vec![("text", Arc::new(StringArray::from(Vec::<Option<&str>>::new())) as ArrayRef)],
    );
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &[]).assert().success();
    let got = read_vectors(&out);
    assert_eq!(rows_of(&got), vec![0, 2, 3, 5, 6, 8, 9, 11]);
    // Same text, same vector, whatever the encoding.
    assert_same_vectors(&[got[0].clone()].map(|(_, v)| (0, v)), &[got[2].clone()].map(|(_, v)| (0, v)));
    assert_same_vectors(&[got[0].clone()].map(|(_, v)| (0, v)), &[got[6].clone()].map(|(_, v)| (0, v)));
    let failed: Vec<u64> = read_failures(&out).into_iter().map(|(r, _)| r).collect();
    assert_eq!(failed, vec![1, 4, 7, 10]);
}

#[test]
fn binary_text_columns_are_read_as_utf8_and_other_bytes_are_a_rows_failure() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    // Older writers store strings as unannotated binary; a value may also not be UTF-8 at all.
    let bytes: Vec<Option<&[u8]>> =
        vec![Some(b"alpha beta"), None, Some(b"caf\xe9 au lait"), Some("gr\u{fc}n".as_bytes())];
    write_parquet(
        &input.join("a.parquet"),
        vec![("text", Arc::new(BinaryArray::from(bytes.clone())) as ArrayRef)],
    );
    write_parquet(
        &input.join("b.parquet"),
        vec![("text", Arc::new(LargeBinaryArray::from(bytes.clone())) as ArrayRef)],
    );
    write_parquet(
        &input.join("c.parquet"),
        vec![("text", Arc::new(BinaryViewArray::from(bytes.clone())) as ArrayRef)],
    );
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &[]).assert().success();
    let got = read_vectors(&out);
    assert_eq!(rows_of(&got), vec![0, 3, 4, 7, 8, 11]);
    let not_utf8 = "text is not valid UTF-8";
    let failures = read_failures(&out);
    let reasons: Vec<(u64, bool)> = failures.iter().map(|(r, why)| (*r, why.contains(not_utf8))).collect();
    assert_eq!(
        reasons,
        vec![(1, false), (2, true), (5, false), (6, true), (9, false), (10, true)],
        "{failures:?}"
    );
    assert!(failures[0].1.contains("text is null"), "{failures:?}");

    // The same texts as strings give the same vectors.
    let strings = dir.path().join("strings.parquet");
    write_texts(&strings, &[Some("alpha beta"), Some("gr\u{fc}n")]);
    let out_strings = dir.path().join("out-strings");
    embed_cmd(&strings, &out_strings, &[]).assert().success();
    let want = read_vectors(&out_strings);
    for (i, (_, v)) in got.iter().enumerate() {
        assert_same_vectors(&[(0, v.clone())], &[(0, want[i % 2].1.clone())]);
    }

    // In a template, one column that is not UTF-8 fails the row, whatever the others hold.
    let titled = dir.path().join("titled.parquet");
    write_parquet(
        &titled,
        vec![
            ("title", Arc::new(StringArray::from(vec!["one", "two"])) as ArrayRef),
            (
                "body",
                Arc::new(BinaryArray::from(vec![Some(&b"fine"[..]), Some(&b"\xff\xfe"[..])])) as ArrayRef,
            ),
        ],
    );
    let out_titled = dir.path().join("out-titled");
    embed_cmd(&titled, &out_titled, &["--text-template", "{title}: {body}"]).assert().success();
    assert_eq!(rows_of(&read_vectors(&out_titled)), vec![0]);
    let failures = read_failures(&out_titled);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].0 == 1 && failures[0].1.contains(not_utf8), "{failures:?}");
}

#[test]
fn fields_inside_struct_columns_are_named_by_dotted_paths() {
    let dir = tempdir();
    let texts = ["first review", "second review", "third review", "fourth review"];
    let titles = ["A", "B", "C", "D"];
    // doc: {title, body, meta: {asin}}; row 2's doc is null as a whole; "a.b" is a top-level
    // column whose name holds a dot.
    let asin = Arc::new(Int64Array::from(vec![10, 11, 12, 13])) as ArrayRef;
    let meta = StructArray::from(vec![(Arc::new(Field::new("asin", DataType::Int64, false)), asin)]);
    let doc = StructArray::try_new(
        vec![
            Field::new("title", DataType::Utf8, true),
            Field::new("body", DataType::Utf8, true),
            Field::new("meta", arrow::array::Array::data_type(&meta).clone(), false),
        ]
        .into(),
        vec![
            Arc::new(StringArray::from(titles.to_vec())) as ArrayRef,
            Arc::new(StringArray::from(texts.to_vec())) as ArrayRef,
            Arc::new(meta) as ArrayRef,
        ],
        Some(NullBuffer::from(vec![true, true, false, true])),
    )
    .unwrap();
    let nested = dir.path().join("nested.parquet");
    write_parquet(
        &nested,
        vec![
            ("doc", Arc::new(doc) as ArrayRef),
            ("a.b", Arc::new(StringArray::from(texts.to_vec())) as ArrayRef),
        ],
    );
    let out = dir.path().join("out");
    embed_cmd(&nested, &out, &["--text-column", "doc.body", "--id-column", "doc.meta.asin"])
        .assert()
        .success();
    let got = read_vectors(&out);
    assert_eq!(rows_of(&got), vec![0, 1, 3]);
    let failures = read_failures(&out);
    assert!(failures.len() == 1 && failures[0].0 == 2 && failures[0].1.contains("null"), "{failures:?}");
    let mut ids = Vec::new();
    for part in part_files(&out) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(part).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            ids.extend(
                b.unwrap().column_by_name("id").unwrap().as_primitive::<Int64Type>().values().to_vec(),
            );
        }
    }
    ids.sort();
    assert_eq!(ids, vec![10, 11, 13]);

    // The same texts in a flat file give the same vectors; so does the dotted top-level name.
    let flat = dir.path().join("flat.parquet");
    write_texts(&flat, &texts.iter().map(|t| Some(*t)).collect::<Vec<_>>());
    let out_flat = dir.path().join("out-flat");
    embed_cmd(&flat, &out_flat, &[]).assert().success();
    let want: Vec<_> = read_vectors(&out_flat).into_iter().filter(|(r, _)| *r != 2).collect();
    assert_same_vectors(&got, &want);
    let out_dotted = dir.path().join("out-dotted");
    embed_cmd(&nested, &out_dotted, &["--text-column", "a.b"]).assert().success();
    assert_same_vectors(&read_vectors(&out_dotted), &read_vectors(&out_flat));

    // Templates reach into structs too; a name that is nowhere lists the dotted paths.
    let out_template = dir.path().join("out-template");
    embed_cmd(&nested, &out_template, &["--text-template", "{doc.title}: {doc.body}"]).assert().success();
    assert_eq!(rows_of(&read_vectors(&out_template)), vec![0, 1, 3]);
    embed_cmd(&nested, &dir.path().join("bad"), &["--text-column", "doc.text"])
        .assert()
        .failure()
        .stderr(contains("has no column \"doc.text\""))
        .stderr(contains("its columns are: doc.title, doc.body, doc.meta.asin, a.b"));
    embed_cmd(&nested, &dir.path().join("bad2"), &["--text-column", "doc.meta"])
        .assert()
        .failure()
        .stderr(contains("column \"doc.meta\""))
        .stderr(contains("not a string or binary type"));
}

#[test]
fn id_column_problems_fail_before_writing() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    write_parquet(
        &input.join("a.parquet"),
        vec![
            ("text", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
            ("id", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
        ],
    );
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--id-column", "key"])
        .assert()
        .failure()
        .stderr(contains("has no column \"key\" (--id-column); its columns are: text, id"));
    write_parquet(
        &input.join("b.parquet"),
        vec![
            ("text", Arc::new(StringArray::from(vec!["y"])) as ArrayRef),
            ("id", Arc::new(StringArray::from(vec!["k"])) as ArrayRef),
        ],
    );
    embed_cmd(&input, &out, &["--id-column", "id"])
        .assert()
        .failure()
        .stderr(contains("column \"id\" has type Int32 in"))
        .stderr(contains("but Utf8 in"));
    embed_cmd(&input, &out, &["--id-column", "text"])
        .assert()
        .failure()
        .stderr(contains("name the same column"));
    assert!(!out.exists(), "nothing may be written for bad input");
}

#[test]
fn a_truncated_parquet_file_is_named() {
    let dir = tempdir();
    let input = corpus(dir.path(), 40);
    let f = input.join("shard-1.parquet");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &[])
        .assert()
        .failure()
        .stderr(contains("shard-1.parquet is not a readable Parquet file"));
    assert!(!out.exists());
}

#[test]
fn bad_worker_flags_are_refused() {
    let dir = tempdir();
    let input = corpus(dir.path(), 10);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--num-workers", "3", "--worker-id", "3"])
        .assert()
        .failure()
        .stderr(contains("--worker-id 3 is out of range for --num-workers 3"));
    embed_cmd(&input, &out, &["--stride-block", "0"])
        .assert()
        .failure()
        .stderr(contains("--stride-block must be at least 1"));
}
