//! `batch-embed verify`: passes a complete run, and names each way a run can be incomplete or
//! unsound.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use predicates::str::contains;

use crate::util::*;

fn verify(out: &Path) -> assert_cmd::Command {
    let mut cmd = batch_embed();
    cmd.arg("verify").arg(out);
    cmd
}

fn three_workers(input: &Path, out: &Path, which: &[u64]) {
    for w in which {
        embed_cmd(
            input,
            out,
            &[
                "--num-workers",
                "3",
                "--worker-id",
                &w.to_string(),
                "--stride-block",
                "8",
                "--rows-per-part",
                "20",
            ],
        )
        .assert()
        .success();
    }
}

fn report(out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = verify(out).arg("--json").args(extra).output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_complete_run_passes_and_a_missing_worker_is_named() {
    let dir = tempdir();
    let input = corpus(dir.path(), 150);
    let out = dir.path().join("out");
    three_workers(&input, &out, &[0, 2]);
    verify(&out)
        .assert()
        .failure()
        .stdout(contains("worker 1 has not written anything"))
        .stdout(contains("missing (rows 8..16, 32..40"));
    let r = report(&out, &[]);
    assert_eq!(r["ok"], false);
    assert_eq!(r["workers"][1]["state"], "missing");
    three_workers(&input, &out, &[1]);
    verify(&out).assert().success().stdout(contains("OK: complete and sound"));
    let r = report(&out, &["--deep"]);
    assert_eq!(r["ok"], true);
    assert_eq!(r["rows_input"], 150);
    let total = r["rows_embedded"].as_u64().unwrap() + r["rows_failed"].as_u64().unwrap();
    assert_eq!(total, 150);
    // The corpus has a null text at rows 13 and 110, each on another worker's folder.
    assert_eq!(r["failures_by_reason"], serde_json::json!({"text is null": 2}));
    assert_eq!(r["workers"][0]["failures_by_reason"], serde_json::json!({}));
    verify(&out).assert().success().stdout(contains("failed rows by reason:\n           2  text is null\n"));
}

#[test]
fn lost_duplicated_and_unreadable_shards_are_reported() {
    let dir = tempdir();
    let input = corpus(dir.path(), 100);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--rows-per-part", "30"]).assert().success();
    let w = worker0(&out);
    verify(&out).assert().success();

    // A part replaced by a copy of another: its rows are missing, the other's are doubled.
    let saved = dir.path().join("saved.parquet");
    std::fs::copy(w.join("part-000001.parquet"), &saved).unwrap();
    std::fs::copy(w.join("part-000000.parquet"), w.join("part-000001.parquet")).unwrap();
    let r = report(&out, &[]);
    assert_eq!(r["ok"], false);
    assert!(r["duplicates"].as_u64().unwrap() > 0, "{r}");
    assert!(r["rows_missing"].as_u64().unwrap() > 0, "{r}");
    std::fs::copy(&saved, w.join("part-000001.parquet")).unwrap();

    // A shard cut short does not open.
    let bytes = std::fs::read(w.join("part-000002.parquet")).unwrap();
    std::fs::write(w.join("part-000002.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    verify(&out).assert().failure().stdout(contains("part-000002.parquet does not open as a vector shard"));
    std::fs::write(w.join("part-000002.parquet"), &bytes).unwrap();

    // A part no checkpoint lists (an interrupted commit) would be read twice by a glob.
    std::fs::copy(w.join("part-000000.parquet"), w.join("part-000009.parquet")).unwrap();
    verify(&out).assert().failure().stdout(contains("part-000009.parquet is not in the checkpoint"));
    std::fs::remove_file(w.join("part-000009.parquet")).unwrap();
    verify(&out).assert().success();
}

#[test]
fn deep_finds_nan_and_unnormalised_vectors() {
    let dir = tempdir();
    let input = corpus(dir.path(), 40);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &[]).assert().success();
    let part = worker0(&out).join("part-000000.parquet");
    // Rewrite the part with the same schema and metadata: one vector NaN, one doubled.
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&part).unwrap()).unwrap();
    let schema = reader.schema().clone();
    let batches: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let emb_index = schema.index_of("embedding").unwrap();
    let emb = batch.column(emb_index).as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    let dim = emb.value_length() as usize;
    let mut values: Vec<f32> =
        emb.values().as_any().downcast_ref::<Float32Array>().unwrap().values().to_vec();
    values[0] = f32::NAN;
    for v in &mut values[dim..2 * dim] {
        *v *= 2.0;
    }
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let list =
        FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(values)), None).unwrap();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[emb_index] = Arc::new(list);
    let tampered = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(&part).unwrap(), schema, None).unwrap();
    w.write(&tampered).unwrap();
    w.close().unwrap();

    verify(&out).assert().success().stdout(contains("pass --deep"));
    verify(&out)
        .arg("--deep")
        .assert()
        .failure()
        .stdout(contains("1 vectors with NaN"))
        .stdout(contains("1 vectors whose norm is not 1"));
}

#[test]
fn a_folder_that_is_not_a_run_is_an_error() {
    let dir = tempdir();
    verify(dir.path()).assert().failure().stderr(contains("holds no worker folders"));
}
