//! Inputs as writers leave them: ids stored in different widths or string layouts by different
//! writers over time (read as one type within a run, matched by value across runs), and the
//! hidden files of Spark and Delta Lake beside the data.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, LargeStringArray, StringArray, UInt16Array,
};
use arrow::datatypes::{DataType, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use predicates::str::contains;

use crate::sync::change_ids;
use crate::util::*;

/// Every part's `id` column type and its (row, id) pairs, sorted by row.
fn part_ids(out: &Path) -> (Vec<DataType>, Vec<(u64, i64)>) {
    let (mut types, mut ids) = (Vec::new(), Vec::new());
    for part in part_files(out) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&part).unwrap()).unwrap();
        types.push(reader.schema().field_with_name("id").unwrap().data_type().clone());
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let rows =
                batch.column_by_name("row").unwrap().as_primitive::<arrow::datatypes::UInt64Type>().clone();
            let id = batch.column_by_name("id").unwrap();
            let id = arrow::compute::cast(id, &DataType::Int64).unwrap();
            let id = id.as_primitive::<Int64Type>();
            ids.extend((0..rows.len()).map(|i| (rows.value(i), id.value(i))));
        }
    }
    ids.sort();
    (types, ids)
}

fn texts(range: std::ops::Range<i64>) -> Vec<String> {
    range.map(|i| format!("review {i}: the plot holds up")).collect()
}

#[test]
fn ids_of_different_widths_across_files_are_read_as_the_wider_type() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let t = texts(0..30);
    let strs = |r: std::ops::Range<usize>| Arc::new(StringArray::from_iter_values(&t[r])) as ArrayRef;
    write_parquet(
        &input.join("a.parquet"),
        vec![("text", strs(0..10)), ("id", Arc::new(Int32Array::from_iter_values(0..10)))],
    );
    let large = Arc::new(LargeStringArray::from_iter_values(&t[10..20])) as ArrayRef;
    write_parquet(
        &input.join("b.parquet"),
        vec![("text", large), ("id", Arc::new(Int64Array::from_iter_values(10..20)))],
    );
    write_parquet(
        &input.join("c.parquet"),
        vec![("text", strs(20..30)), ("id", Arc::new(UInt16Array::from_iter_values(20..30)))],
    );
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--id-column", "id", "--rows-per-part", "8"]).assert().success();
    let (types, ids) = part_ids(&out);
    assert!(types.len() > 1 && types.iter().all(|t| *t == DataType::Int64), "{types:?}");
    assert_eq!(ids, (0..30).map(|i| (i as u64, i as i64)).collect::<Vec<_>>());
    batch_embed().arg("verify").arg(&out).assert().success();

    // Ids that no one type holds are refused up front, naming both files.
    let text_ids = Arc::new(StringArray::from_iter_values(["x"; 10])) as ArrayRef;
    write_parquet(&input.join("d.parquet"), vec![("text", strs(0..10)), ("id", text_ids)]);
    embed_cmd(&input, &dir.path().join("out2"), &["--id-column", "id"])
        .assert()
        .failure()
        .stderr(contains("column \"id\" has type Int64"))
        .stderr(contains("but Utf8 in"))
        .stderr(contains("d.parquet"));
}

#[test]
fn a_new_snapshot_with_wider_ids_reuses_and_diffs_by_value() {
    let dir = tempdir();
    let p = |name: &str| dir.path().join(name);
    // Day 1: int32 ids 0..40; day 2: int64 ids and large strings, id 5 changed, 39 gone, 40 new.
    let mut t = texts(0..41);
    write_parquet(
        &p("day1.parquet"),
        vec![
            ("text", Arc::new(StringArray::from_iter_values(&t[..40])) as ArrayRef),
            ("id", Arc::new(Int32Array::from_iter_values(0..40))),
        ],
    );
    t[5] = "review 5: rewritten by its author".into();
    let day2_ids: Vec<i64> = (0..39).chain([40]).collect();
    let day2_texts: Vec<&str> = day2_ids.iter().map(|&i| t[i as usize].as_str()).collect();
    write_parquet(
        &p("day2.parquet"),
        vec![
            ("text", Arc::new(LargeStringArray::from_iter_values(day2_texts)) as ArrayRef),
            ("id", Arc::new(Int64Array::from(day2_ids.clone()))),
        ],
    );
    embed_cmd(&p("day1.parquet"), &p("out1"), &["--id-column", "id"]).assert().success();
    let reuse = p("out1").to_string_lossy().into_owned();
    embed_cmd(&p("day2.parquet"), &p("out2"), &["--id-column", "id", "--reuse", &reuse]).assert().success();
    assert_eq!(crate::sync::total(&p("out2"), "rows_reused"), 38);
    // Reused vectors are the ones a full embed of day 2 gives, under day 2's ids and type.
    embed_cmd(&p("day2.parquet"), &p("full2"), &["--id-column", "id"]).assert().success();
    assert_same_vectors(&read_vectors(&p("out2")), &read_vectors(&p("full2")));
    let (types, ids) = part_ids(&p("out2"));
    assert!(types.iter().all(|t| *t == DataType::Int64), "{types:?}");
    assert_eq!(ids.iter().map(|r| r.1).collect::<Vec<_>>(), day2_ids);

    batch_embed()
        .arg("changes")
        .arg(p("out1"))
        .arg(p("out2"))
        .arg("--output")
        .arg(p("ch"))
        .assert()
        .success();
    assert_eq!(change_ids(&p("ch/upserted.parquet")), vec![5, 40]);
    // Deleted ids keep PREVIOUS's type, the one the database was loaded with.
    let deleted =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(p("ch/deleted.parquet")).unwrap())
            .unwrap();
    assert_eq!(deleted.schema().field_with_name("id").unwrap().data_type(), &DataType::Int32);
    let batch = deleted.build().unwrap().next().unwrap().unwrap();
    let id = batch.column_by_name("id").unwrap();
    assert_eq!((id.len(), id.as_primitive::<arrow::datatypes::Int32Type>().value(0)), (1, 39));
}

#[test]
fn hidden_files_and_folders_in_an_input_folder_are_left_out_unless_named() {
    let dir = tempdir();
    let input = dir.path().join("table");
    for sub in ["date=2024-01-01", "_delta_log", "_temporary/0", ".staging"] {
        std::fs::create_dir_all(input.join(sub)).unwrap();
    }
    let t = texts(0..12);
    let strs = |r: std::ops::Range<usize>| Arc::new(StringArray::from_iter_values(&t[r])) as ArrayRef;
    write_parquet(&input.join("part-0.parquet"), vec![("text", strs(0..4))]);
    write_parquet(&input.join("date=2024-01-01/part-1.parquet"), vec![("text", strs(4..8))]);
    // Delta Lake's checkpoint has no text column: taken, it would fail the run.
    let log = Arc::new(Int64Array::from_iter_values(0..3)) as ArrayRef;
    write_parquet(&input.join("_delta_log/00000000000000000010.checkpoint.parquet"), vec![("version", log)]);
    write_parquet(&input.join("_temporary/0/part-1.parquet"), vec![("text", strs(4..8))]);
    write_parquet(&input.join(".staging/part-2.parquet"), vec![("text", strs(8..12))]);
    write_parquet(&input.join(".part-0.parquet"), vec![("text", strs(0..4))]);
    let out = dir.path().join("out");
    batch_embed()
        .args(["embed", "--model"])
        .arg(tiny_model())
        .arg("--output")
        .arg(&out)
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("left out 4 hidden Parquet files (a name or folder starting with '.' or '_')"))
        .stderr(contains(format!("{} is a Delta Lake table (it has a _delta_log)", input.display())));
    assert_eq!(read_vectors(&out).len(), 8);

    // A hidden file named on the command line is taken.
    let named = input.join(".staging/part-2.parquet");
    embed_with(&tiny_model(), &input, &dir.path().join("out2"), &[]).arg(&named).assert().success();
    assert_eq!(read_vectors(&dir.path().join("out2")).len(), 12);

    // A folder holding only hidden files says so.
    let only = dir.path().join("only");
    std::fs::create_dir_all(only.join("_temporary")).unwrap();
    std::fs::copy(&named, only.join("_temporary/part-2.parquet")).unwrap();
    embed_with(&tiny_model(), &only, &dir.path().join("out3"), &[])
        .assert()
        .failure()
        .stderr(contains("no Parquet files (*.parquet) found"))
        .stderr(contains("1 left out as hidden"));
}

#[test]
fn a_shard_whose_texts_and_ids_are_all_null_is_read_as_null_rows() {
    // pandas writes a column of nulls only with Parquet's null type, not as strings or integers.
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let t = texts(0..4);
    write_parquet(
        &input.join("a.parquet"),
        vec![
            ("text", Arc::new(StringArray::from_iter_values(&t)) as ArrayRef),
            ("id", Arc::new(Int64Array::from_iter_values(0..4))),
        ],
    );
    let nulls = || Arc::new(arrow::array::NullArray::new(3)) as ArrayRef;
    let batch = arrow::array::RecordBatch::try_from_iter_with_nullable([
        ("text", nulls(), true),
        ("id", nulls(), true),
    ])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(input.join("b.parquet")).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--id-column", "id"]).assert().success();
    let (types, ids) = part_ids(&out);
    assert_eq!((types, ids), (vec![DataType::Int64], (0..4).map(|i| (i as u64, i as i64)).collect()));
    let failed: Vec<(u64, String)> = (4..7).map(|r| (r, "text is null".to_string())).collect();
    assert_eq!(read_failures(&out), failed);
}
