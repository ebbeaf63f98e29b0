//! Inputs on a bucket (a real S3 server, moto, on 127.0.0.1): mixed with local files (numbered
//! first), hidden objects under a prefix left out and a Delta Lake table named as on disk, and a
//! damaged row group named at once, or skipped with `--skip-damaged`.

use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use crate::buckets::{assert_same_output, downloaded, read_failures_any};
use crate::moto::*;
use crate::util::*;

#[test]
fn local_and_bucket_inputs_mix_with_local_paths_numbered_first() {
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("mixed");
    let dir = tempdir();
    let input = corpus(dir.path(), 300);
    let local = dir.path().join("local");
    embed_cmd(&input, &local, &["--id-column", "id"]).assert().success();
    // shard-0 stays local; shards 1..3 (and the empty one) go to the bucket.
    for f in 1..4 {
        let name = format!("shard-{f}.parquet");
        bucket.put(&format!("in/{name}"), std::fs::read(input.join(&name)).unwrap());
    }
    // Under the prefix, Spark's attempt folders and dot files are left out, as on disk.
    bucket.put("in/_temporary/0/shard-9.parquet", std::fs::read(input.join("shard-1.parquet")).unwrap());
    bucket.put("in/.shard-1.parquet", std::fs::read(input.join("shard-1.parquet")).unwrap());
    let first = input.join("shard-0.parquet");
    let mut cmd = embed_s3(&s3.endpoint, &bucket.url("in"), &bucket.url("out"), &["--id-column", "id"]);
    cmd.arg(&first).assert().success();
    assert_same_output(&local, &downloaded(&bucket, "out", dir.path()));
    let ckpt: serde_json::Value =
        serde_json::from_slice(&bucket.get("out/worker-00000-of-00001/checkpoint.json").unwrap()).unwrap();
    let paths: Vec<&str> = ckpt["spec"]["rows"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(paths[0].ends_with("shard-0.parquet") && paths[0].starts_with('/'), "{paths:?}");
    // A Delta Lake table under the prefix is named; the same command finds the run complete.
    bucket.put("in/_delta_log/00000000000000000000.json", b"{}".to_vec());
    let mut again = s3_cmd(&s3.endpoint);
    again
        .args(["embed", "--id-column", "id", "--model"])
        .arg(fixture("qwen2-gqa"))
        .args(["--output", &bucket.url("out")]);
    again
        .arg(bucket.url("in"))
        .arg(&first)
        .assert()
        .success()
        .stderr(contains("s3://mixed/in is a Delta Lake table"));
    assert_eq!(
        &paths[1..],
        ["s3://mixed/in/shard-1.parquet", "s3://mixed/in/shard-2.parquet", "s3://mixed/in/shard-3.parquet"]
    );
}

#[test]
fn a_damaged_row_group_on_a_bucket_is_named_and_not_retried() {
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("damaged");
    let dir = tempdir();
    let file = dir.path().join("damaged.parquet");
    damaged_file(&file);
    bucket.put("in/damaged.parquet", std::fs::read(&file).unwrap());
    embed_s3(&s3.endpoint, &bucket.url("in/damaged.parquet"), &bucket.url("out"), &[])
        .assert()
        .failure()
        .stderr(contains("s3://damaged/in/damaged.parquet: row group 2 of 4 (rows 128..192"))
        .stderr(contains("retrying").not());

    // With --skip-damaged the group's rows are failures and the rest is as from a clean copy.
    embed_s3(&s3.endpoint, &bucket.url("in/damaged.parquet"), &bucket.url("skipped"), &["--skip-damaged"])
        .assert()
        .success()
        .stderr(contains("warning: s3://damaged/in/damaged.parquet: row group 2 of 4"));
    s3_cmd(&s3.endpoint).arg("verify").arg(bucket.url("skipped")).assert().success();
    let clean_in = dir.path().join("clean.parquet");
    undamaged_file(&clean_in);
    let clean = dir.path().join("clean");
    embed_cmd(&clean_in, &clean, &[]).assert().success();
    let copy = downloaded(&bucket, "skipped", dir.path());
    let expected: Vec<(u64, Vec<f32>)> =
        read_vectors(&clean).into_iter().filter(|(row, _)| !(128..192).contains(row)).collect();
    assert_same_vectors(&expected, &read_vectors(&copy));
    let failed: Vec<u64> = read_failures_any(&copy).into_iter().map(|f| f.0).collect();
    assert_eq!(failed, (128..192).collect::<Vec<u64>>());
}
