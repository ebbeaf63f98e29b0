//! Small helpers shared by the tests: fixture paths, temp dirs, Parquet in and out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float16Type, Float32Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub fn tiny_model() -> PathBuf {
    root().join("models/tiny-qwen2")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A command running the built `batch-embed` binary.
pub fn batch_embed() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("batch-embed").expect("binary built")
}

/// Writes a Parquet file with the given columns.
pub fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    write_parquet_groups(path, columns, 1 << 20);
}

/// Writes a Parquet file with row groups of at most `group_rows` rows.
pub fn write_parquet_groups(path: &Path, columns: Vec<(&str, ArrayRef)>, group_rows: usize) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows))
        .set_data_page_row_count_limit(4)
        .set_write_batch_size(4)
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// 256 texts (ids 1000…) in four row groups of 64, as [`damaged_file`] has before the damage.
pub fn undamaged_file(path: &Path) {
    let texts: Vec<String> = (0..256).map(|i| format!("review number {i}")).collect();
    let texts = StringArray::from(texts.iter().map(String::as_str).collect::<Vec<_>>());
    let ids = Int64Array::from_iter_values(1000..1256);
    write_parquet_groups(path, vec![("text", Arc::new(texts) as ArrayRef), ("id", Arc::new(ids))], 64);
}

/// [`undamaged_file`] with row group 2's first page header of the text column overwritten by
/// bytes no Thrift decoder accepts: the footer reads, rows 128..192 do not decode.
pub fn damaged_file(path: &Path) {
    undamaged_file(path);
    let meta = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let column = meta.metadata().row_group(2).column(0);
    let at = column.dictionary_page_offset().unwrap_or(column.data_page_offset()) as usize;
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at..at + 24].fill(0xff);
    std::fs::write(path, bytes).unwrap();
}

pub fn write_texts(path: &Path, texts: &[Option<&str>]) {
    write_parquet(path, vec![("text", Arc::new(StringArray::from(texts.to_vec())) as ArrayRef)]);
}

/// Every `part-*.parquet` under `dir` (worker folders included), sorted.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                walk(&p, out);
            } else if n.starts_with("part-") && n.ends_with(".parquet") {
                out.push(p);
            }
        }
    }
    let mut parts = Vec::new();
    walk(dir, &mut parts);
    parts.sort();
    parts
}

/// All (row, vector) pairs of the part files under `dir`, sorted by row.
pub fn read_vectors(dir: &Path) -> Vec<(u64, Vec<f32>)> {
    let parts = part_files(dir);
    let mut out = Vec::new();
    for p in parts {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let rows = batch.column_by_name("row").unwrap().as_primitive::<UInt64Type>().clone();
            let emb = batch.column_by_name("embedding").unwrap().as_fixed_size_list().clone();
            for i in 0..rows.len() {
                let v = emb.value(i);
                let v: Vec<f32> = match v.data_type() {
                    arrow::datatypes::DataType::Float16 => {
                        v.as_primitive::<Float16Type>().values().iter().map(|x| x.to_f32()).collect()
                    }
                    _ => v.as_primitive::<Float32Type>().values().to_vec(),
                };
                out.push((rows.value(i), v));
            }
        }
    }
    out.sort_by_key(|(r, _)| *r);
    out
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Copies a directory and the folders in it into `dest`.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        match e.file_type().unwrap().is_dir() {
            true => copy_dir(&e.path(), &dest.join(e.file_name())),
            false => drop(std::fs::copy(e.path(), dest.join(e.file_name())).unwrap()),
        }
    }
}

/// The failures.jsonl lines under `dir` (all worker folders), as (row, reason).
pub fn read_failures(dir: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let f = e.unwrap().path().join("failures.jsonl");
        if let Ok(text) = std::fs::read_to_string(&f) {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                out.push((v["row"].as_u64().unwrap(), v["reason"].as_str().unwrap().to_string()));
            }
        }
    }
    out.sort();
    out
}

/// The single worker folder of a one-worker run.
pub fn worker0(out: &Path) -> PathBuf {
    out.join("worker-00000-of-00001")
}

/// A corpus of `n` rows over three files (plus an empty one), with ids and a few nulls/empties.
pub fn corpus(dir: &Path, n: usize) -> PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let words = ["book", "great", "slow", "plot", "loved", "the", "ending", "café", "😀", "pages"];
    let texts: Vec<Option<String>> = (0..n)
        .map(|i| match i % 97 {
            13 => None,
            41 => Some(String::new()),
            _ => Some(
                (0..(3 + i % 23)).map(|j| words[(i * 7 + j * 3) % words.len()]).collect::<Vec<_>>().join(" "),
            ),
        })
        .collect();
    let ids: Vec<i64> = (0..n as i64).map(|i| 1000 + i).collect();
    let cuts = [0, n / 3, n / 3, (2 * n / 3 + 5).min(n), n];
    for f in 0..4 {
        let (a, b) = (cuts[f], cuts[f + 1]);
        let t: Vec<Option<&str>> = texts[a..b].iter().map(|t| t.as_deref()).collect();
        write_parquet(
            &input.join(format!("shard-{f}.parquet")),
            vec![
                ("id", Arc::new(Int64Array::from(ids[a..b].to_vec())) as ArrayRef),
                ("text", Arc::new(StringArray::from(t)) as ArrayRef),
            ],
        );
    }
    input
}

pub fn embed_cmd(input: &Path, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    embed_with(&fixture("qwen2-gqa"), input, out, extra)
}

/// `batch-embed embed --quiet --model MODEL --output OUT EXTRA… INPUT`
pub fn embed_with(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = batch_embed();
    cmd.args(["embed", "--quiet", "--model"]).arg(model).arg("--output").arg(out).args(extra).arg(input);
    cmd
}

pub fn assert_same_vectors(a: &[(u64, Vec<f32>)], b: &[(u64, Vec<f32>)]) {
    assert_eq!(a.len(), b.len(), "row counts differ");
    for ((ra, va), (rb, vb)) in a.iter().zip(b) {
        assert_eq!(ra, rb);
        let d = max_abs_diff(va, vb);
        assert!(d < 1e-5, "row {ra} differs by {d}");
    }
}

/// `rows_done` of a checkpoint file (0 when it is missing or being replaced).
pub fn done(checkpoint: &Path) -> u64 {
    std::fs::read_to_string(checkpoint)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["rows_done"].as_u64())
        .unwrap_or(0)
}

/// `batch-embed embed --model qwen2-gqa --output OUT EXTRA… INPUT` as a plain child process (for
/// tests that signal or kill it), stdout discarded; the caller sets stderr and spawns.
pub fn embed_child(input: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("batch-embed"));
    cmd.args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(out)
        .args(extra)
        .arg(input)
        .stdout(std::process::Stdio::null());
    cmd
}

/// Waits for `child` to exit, at most `limit` (then kills it and fails); returns its exit code.
pub fn wait_exit(child: &mut std::process::Child, limit: std::time::Duration) -> i32 {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the run did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A Python with `packages` installed: the virtual environment `BATCH_EMBED_TEST_VENV`, else
/// `target/test-venv`, created and filled on first use (by `.ci/run` in CI). `None` when the
/// packages cannot be installed here, after saying so on stderr; a panic instead when the
/// environment variable `require` is set (CI sets it: there the test must run).
pub fn python_with(packages: &[&str], import: &str, require: &str) -> Option<PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = std::env::var_os("BATCH_EMBED_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-venv"));
    let python = venv.join("bin/python");
    let works = || {
        std::process::Command::new(&python)
            .args(["-c", &format!("import {import}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works() {
        let made = std::process::Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
        let installed = made.is_ok_and(|s| s.success())
            && std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet"])
                .args(packages)
                .status()
                .is_ok_and(|s| s.success());
        if !installed || !works() {
            let why = format!(
                "could not install {} into {} (pip install {} failed or python3 is missing)",
                packages.join(", "),
                venv.display(),
                packages.join(" ")
            );
            if std::env::var_os(require).is_some() {
                panic!("{why}; {require} is set, so this test must run");
            }
            eprintln!("\n*** SKIPPED: {why}; this test did NOT run ***\n");
            return None;
        }
    }
    Some(python)
}

/// The key-value metadata of a Parquet file (a part's `batch_embed.*` keys).
pub fn part_metadata(path: &Path) -> std::collections::HashMap<String, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    reader.schema().metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The BERT fixture (st-bert-mean) as a folder from before fast tokenizers: its tokenizer.json
/// replaced by the slow tokenizer's vocab.txt and a 4.x tokenizer_config.json.
pub fn slow_bert_folder(dest: &Path) {
    copy_dir(&fixture("st-bert-mean"), dest);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("tokenizer.json")).unwrap()).unwrap();
    let mut vocab: Vec<(&str, u64)> = json["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, id)| (t.as_str(), id.as_u64().unwrap()))
        .collect();
    vocab.sort_by_key(|v| v.1);
    assert!(vocab.iter().enumerate().all(|(i, v)| v.1 == i as u64));
    let lines: String = vocab.iter().map(|(t, _)| format!("{t}\n")).collect();
    std::fs::write(dest.join("vocab.txt"), lines).unwrap();
    let config = r#"{"do_lower_case": true, "tokenizer_class": "BertTokenizer"}"#;
    std::fs::write(dest.join("tokenizer_config.json"), config).unwrap();
    std::fs::remove_file(dest.join("tokenizer.json")).unwrap();
}
