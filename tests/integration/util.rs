//! Small helpers shared by the tests: fixture paths, temp dirs, Parquet in and out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Float32Type, UInt64Type};
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
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

pub fn write_texts(path: &Path, texts: &[Option<&str>]) {
    write_parquet(path, vec![("text", Arc::new(StringArray::from(texts.to_vec())) as ArrayRef)]);
}

/// All (row, vector) pairs of the part files under `dir`, sorted by row.
pub fn read_vectors(dir: &Path) -> Vec<(u64, Vec<f32>)> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("part-") && n.ends_with(".parquet")
        })
        .collect();
    parts.sort();
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
                out.push((rows.value(i), v.as_primitive::<Float32Type>().values().to_vec()));
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

/// Copies a directory (one level) into `dest`.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
}
