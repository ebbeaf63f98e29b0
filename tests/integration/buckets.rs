//! Inputs and outputs on a bucket (s3:// against a real S3 server, moto, on 127.0.0.1): the same
//! output as on disk, resume after kill -9 and SIGTERM, one writer per worker folder, transient
//! faults survived, `verify`, `status`, `--reuse` and `changes` on bucket URLs, only owned pages
//! fetched. Bad URLs are in bucket_urls.rs, inputs mixed with local files and damaged ones in
//! bucket_inputs.rs.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use predicates::str::contains;

use crate::moto::*;
use crate::util::*;

/// Exit code of an interrupted run (documented in README).
const INTERRUPTED: i32 = 75;

/// Arguments that make a small run slow enough to interrupt, committing every 16 rows.
const SLOW: [&str; 8] =
    ["--id-column", "id", "--rows-per-part", "16", "--checkpoint-every", "0", "--debug-chunk-delay-ms", "40"];

/// `rows_done` of a checkpoint object (0 when it is missing).
fn done_on(bucket: &Bucket, key: &str) -> u64 {
    bucket
        .get(key)
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["rows_done"].as_u64())
        .unwrap_or(0)
}

fn wait_for_progress(child: &mut Child, bucket: &Bucket, key: &str, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while done_on(bucket, key) <= rows {
        assert!(Instant::now() < deadline, "no progress");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local copy of an output on the bucket, for the file-based checks.
pub fn downloaded(bucket: &Bucket, prefix: &str, dir: &Path) -> std::path::PathBuf {
    let local = dir.join(format!("copy-of-{}", prefix.replace('/', "-")));
    bucket.download(prefix, &local);
    local
}

pub fn assert_same_output(clean: &Path, copy: &Path) {
    assert_same_vectors(&read_vectors(clean), &read_vectors(copy));
    assert_eq!(read_failures_any(clean), read_failures_any(copy));
}

/// Failure records of every worker folder, in either form (failures.jsonl on a disk,
/// failures-*.jsonl on a bucket), as (row, reason).
pub fn read_failures_any(dir: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for w in std::fs::read_dir(dir).unwrap() {
        let w = w.unwrap().path();
        if !w.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&w).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("failures") && name.ends_with(".jsonl") {
                for line in std::fs::read_to_string(&f).unwrap().lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    out.push((v["row"].as_u64().unwrap(), v["reason"].as_str().unwrap().to_string()));
                }
            }
        }
    }
    out.sort();
    out
}

fn three_workers_args(w: u64) -> Vec<String> {
    ["--id-column", "id", "--num-workers", "3", "--stride-block", "32", "--rows-per-part", "64"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--worker-id".to_string(), w.to_string()])
        .collect()
}

#[test]
fn three_workers_on_a_bucket_give_the_output_of_the_same_run_on_disk() {
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("three-workers");
    let dir = tempdir();
    let input = corpus(dir.path(), 500);
    bucket.upload_dir(&input, "corpus");
    let local = dir.path().join("local");
    for w in 0..3 {
        let args = three_workers_args(w);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        embed_cmd(&input, &local, &args).assert().success();
    }
    // The three workers at once, reading from and writing to the bucket.
    let children: Vec<Child> = (0..3)
        .map(|w| {
            let args = three_workers_args(w);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            embed_s3_child(&s3.endpoint, &bucket.url("corpus"), &bucket.url("out"), &args)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert_eq!(wait_exit(&mut c, Duration::from_secs(120)), 0);
    }
    let copy = downloaded(&bucket, "out", dir.path());
    assert_same_output(&local, &copy);

    // The layout: parts named after their writer and listed in the checkpoint, the lock
    // released, nothing else.
    for w in 0..3 {
        let folder = format!("out/worker-{w:05}-of-00003");
        let ckpt: serde_json::Value =
            serde_json::from_slice(&bucket.get(&format!("{folder}/checkpoint.json")).unwrap()).unwrap();
        assert_eq!(ckpt["complete"], true);
        let listed: Vec<String> = ckpt["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["file"].as_str().unwrap().to_string())
            .collect();
        let owner = ckpt["owner"].as_str().unwrap();
        assert!(
            !listed.is_empty() && listed.iter().all(|p| p.starts_with("part-") && p.contains(owner)),
            "{listed:?}"
        );
        let keys = bucket.keys(&folder);
        for key in &keys {
            let name = key.rsplit('/').next().unwrap();
            let known = ["checkpoint.json", "lock.json", "progress.json"].contains(&name)
                || listed.iter().any(|p| p == name)
                || ckpt["failure_files"].as_array().is_some_and(|f| f.iter().any(|x| x["file"] == name));
            assert!(known, "unexpected object {key}");
        }
        let lock: serde_json::Value =
            serde_json::from_slice(&bucket.get(&format!("{folder}/lock.json")).unwrap()).unwrap();
        assert_eq!(lock["released"], true, "the lock is released at the end");
    }

    // verify and status read the bucket directly.
    s3_cmd(&s3.endpoint)
        .arg("verify")
        .arg(bucket.url("out"))
        .assert()
        .success()
        .stdout(contains("OK: complete and sound"));
    let status = s3_cmd(&s3.endpoint).args(["status", "--json"]).arg(bucket.url("out")).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((status["done"].as_u64(), status["rows_done"].as_u64()), (Some(3), Some(500)));
    // A worker run again on the finished bucket output says so and changes nothing.
    let before = bucket.keys("out");
    let args = three_workers_args(1);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = embed_s3(&s3.endpoint, &bucket.url("corpus"), &bucket.url("out"), &args).output().unwrap();
    assert!(again.status.success());
    assert_eq!(bucket.keys("out"), before);

    // The live page serves the bucket's status.
    let mut page = std::process::Command::new(assert_cmd::cargo::cargo_bin("batch-embed"))
        .envs(Moto::env_for(&s3.endpoint))
        .args(["status", "--serve", "127.0.0.1:0"])
        .arg(bucket.url("out"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(page.stderr.take().unwrap()), &mut line)
        .unwrap();
    let addr =
        line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("{line}"));
    assert_eq!(http(&format!("http://{addr}"), "GET", "/status.json", &[]), Some(200), "{line}");
    page.kill().unwrap();
    page.wait().unwrap();

    // --restart on a bucket discards the worker's objects and writes them anew.
    let old = bucket.keys("out/worker-00001-of-00003");
    let args = three_workers_args(1);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--restart");
    embed_s3(&s3.endpoint, &bucket.url("corpus"), &bucket.url("out"), &args).assert().success();
    let new = bucket.keys("out/worker-00001-of-00003");
    let parts = |keys: &[String]| keys.iter().filter(|k| k.contains("/part-")).cloned().collect::<Vec<_>>();
    assert_eq!(parts(&old).len(), parts(&new).len());
    assert!(parts(&new).iter().all(|p| !old.contains(p)), "new parts carry the new owner's token");
    assert_same_output(&local, &downloaded(&bucket, "out", &dir.path().join("after-restart")));

    // verify names a part left on the bucket outside any checkpoint.
    bucket.put("out/worker-00001-of-00003/part-000099-stray.parquet", b"x".to_vec());
    s3_cmd(&s3.endpoint)
        .arg("verify")
        .arg(bucket.url("out"))
        .assert()
        .failure()
        .stdout(contains("part-000099-stray.parquet is not in the checkpoint"));
}

/// The chaos test on a bucket: SIGKILL at random instants, then SIGTERM, then run to the end.
#[test]
fn kills_and_sigterm_on_a_bucket_then_resume_equal_an_uninterrupted_run() {
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("chaos");
    let dir = tempdir();
    let input = corpus(dir.path(), 900);
    bucket.upload_dir(&input, "in");
    let clean = dir.path().join("clean");
    embed_cmd(&input, &clean, &["--id-column", "id"]).assert().success();
    let (input_url, out) = (bucket.url("in"), bucket.url("out"));
    let checkpoint = "out/worker-00000-of-00001/checkpoint.json";
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut chaos = SLOW.to_vec();
    chaos[7] = "60";
    let log = dir.path().join("log");
    for _ in 0..4 {
        let mut child = embed_s3_child(&s3.endpoint, &input_url, &out, &chaos)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // 57 chunks of 16 rows, 60 ms each: ~3.4 s of work, more than four kills of < 0.6 s can
        // finish, so the SIGTERM below always lands with work left.
        std::thread::sleep(Duration::from_millis(rng.u64(0..600)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    let before = done_on(&bucket, checkpoint);
    assert!(before < 900, "seed {seed}: the kills left nothing to do");
    // SIGTERM: what is finished is committed, exit 75.
    let mut child = embed_s3_child(&s3.endpoint, &input_url, &out, &chaos)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_progress(&mut child, &bucket, checkpoint, before);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let code = wait_exit(&mut child, Duration::from_secs(15));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, INTERRUPTED, "seed {seed}: {stderr}");
    assert!(stderr.contains("run the same command to resume"), "{stderr}");
    let committed = done_on(&bucket, checkpoint);
    assert!(committed > before, "seed {seed}: nothing committed at SIGTERM");
    let progress: serde_json::Value =
        serde_json::from_slice(&bucket.get("out/worker-00000-of-00001/progress.json").unwrap()).unwrap();
    assert_eq!(progress["state"], "interrupted");
    s3_cmd(&s3.endpoint).arg("verify").arg(&out).assert().failure().stdout(contains("incomplete"));

    embed_s3(&s3.endpoint, &input_url, &out, &SLOW[..6]).assert().success();
    let copy = downloaded(&bucket, "out", dir.path());
    assert_same_output(&clean, &copy);
    s3_cmd(&s3.endpoint)
        .arg("verify")
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("OK: complete and sound"));
}

#[test]
fn a_second_writer_on_a_bucket_folder_is_refused_and_a_forced_takeover_fences_the_first() {
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("one-writer");
    let dir = tempdir();
    let input = corpus(dir.path(), 200);
    bucket.upload_dir(&input, "in");
    let (input_url, out) = (bucket.url("in"), bucket.url("out"));
    let log = dir.path().join("first.log");
    // Slow enough to outlive the checks below: 13 chunks of 16 rows, 1.5 s each.
    let mut slow = SLOW.to_vec();
    slow[7] = "1500";
    let mut first = embed_s3_child(&s3.endpoint, &input_url, &out, &slow)
        .env("BATCH_EMBED_HOSTNAME", "node-a")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_progress(&mut first, &bucket, "out/worker-00000-of-00001/checkpoint.json", 0);
    // The same host, the owner alive: refused at once.
    embed_s3(&s3.endpoint, &input_url, &out, &SLOW)
        .env("BATCH_EMBED_HOSTNAME", "node-a")
        .assert()
        .failure()
        .stderr(contains("another batch-embed process (pid "));
    // Another host: its heartbeat moves while watched, so it is refused too.
    embed_s3(&s3.endpoint, &input_url, &out, &["--id-column", "id", "--lock-stale", "20"])
        .env("BATCH_EMBED_HOSTNAME", "node-b")
        .timeout(Duration::from_secs(40))
        .assert()
        .failure()
        .stderr(contains("on host node-a, which is still running"));
    // Forced: node-b takes the folder while node-a still runs; node-a's next commit or heartbeat
    // finds it lost, and it commits nothing more.
    let forced = embed_s3(
        &s3.endpoint,
        &input_url,
        &out,
        &["--id-column", "id", "--rows-per-part", "16", "--force-unlock"],
    )
    .env("BATCH_EMBED_HOSTNAME", "node-b")
    .timeout(Duration::from_secs(60))
    .output()
    .unwrap();
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_eq!(wait_exit(&mut first, Duration::from_secs(30)), 1);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("nothing more was committed by this process"), "{stderr}");
    let clean = dir.path().join("clean");
    embed_cmd(&input, &clean, &["--id-column", "id"]).assert().success();
    assert_same_output(&clean, &downloaded(&bucket, "out", dir.path()));
    s3_cmd(&s3.endpoint)
        .arg("verify")
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("OK: complete and sound"));
}

#[test]
fn transient_errors_between_batch_embed_and_the_bucket_lose_nothing() {
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("faults");
    let dir = tempdir();
    let input = corpus(dir.path(), 400);
    bucket.upload_dir(&input, "in");
    let clean = dir.path().join("clean");
    let args = ["--id-column", "id", "--num-workers", "2", "--stride-block", "32", "--rows-per-part", "24"];
    for w in ["0", "1"] {
        let mut a = args.to_vec();
        a.extend(["--worker-id", w]);
        embed_cmd(&input, &clean, &a).assert().success();
    }
    // One request in seven fails: 503 Slow Down, or a connection reset before or after the
    // server saw it. Small upload parts (1 KiB) make every part a multipart upload.
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let proxy = FaultProxy::start(&s3.endpoint, 15, seed);
    for w in ["0", "1"] {
        let mut a = args.to_vec();
        a.extend(["--worker-id", w]);
        let o = embed_s3(&proxy.endpoint, &bucket.url("in"), &bucket.url("out"), &a)
            .env("BATCH_EMBED_UPLOAD_CHUNK", "1024")
            .output()
            .unwrap();
        assert!(o.status.success(), "worker {w}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let (requests, slow_down, before, after) = proxy.faults();
    eprintln!("fault proxy: {requests} requests; {slow_down} answered 503, {before} reset before and {after} after the server saw them");
    assert!(
        slow_down > 0 && before > 0 && after > 0,
        "faults injected: {slow_down}, {before}, {after} of {requests}"
    );
    assert_same_output(&clean, &downloaded(&bucket, "out", dir.path()));
    s3_cmd(&proxy.endpoint)
        .arg("verify")
        .arg(bucket.url("out"))
        .assert()
        .success()
        .stdout(contains("OK: complete and sound"));
}

#[test]
fn reuse_and_changes_read_and_write_buckets() {
    use crate::sync::{base_rows, next_snapshot, write_snapshot};
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("sync");
    let dir = tempdir();
    let a = base_rows(300);
    let b = next_snapshot(&a, 11, 5);
    let (in_a, in_b) =
        (write_snapshot(&dir.path().join("a"), &a, 2), write_snapshot(&dir.path().join("b"), &b, 2));
    bucket.upload_dir(&in_a, "snap-a");
    bucket.upload_dir(&in_b, "snap-b");
    let ids = ["--id-column", "id", "--rows-per-part", "64"];
    // On disk.
    let p = |n: &str| dir.path().join(n);
    embed_cmd(&in_a, &p("out-a"), &ids).assert().success();
    let mut reuse_local = ids.to_vec();
    let out_a = p("out-a").to_string_lossy().to_string();
    reuse_local.extend(["--reuse", &out_a]);
    embed_cmd(&in_b, &p("out-b"), &reuse_local).assert().success();
    let local = batch_embed()
        .args(["changes", "--json"])
        .arg(p("out-a"))
        .arg(p("out-b"))
        .arg("--output")
        .arg(p("changes"))
        .output()
        .unwrap();
    assert!(local.status.success());
    // On the bucket.
    embed_s3(&s3.endpoint, &bucket.url("snap-a"), &bucket.url("out-a"), &ids).assert().success();
    let mut reuse = ids.to_vec();
    let url_a = bucket.url("out-a");
    reuse.extend(["--reuse", &url_a]);
    embed_s3(&s3.endpoint, &bucket.url("snap-b"), &bucket.url("out-b"), &reuse).assert().success();
    let remote = s3_cmd(&s3.endpoint)
        .args(["changes", "--json"])
        .arg(bucket.url("out-a"))
        .arg(bucket.url("out-b"))
        .arg("--output")
        .arg(bucket.url("changes"))
        .output()
        .unwrap();
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    let counts = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        ["unchanged", "changed", "new", "deleted", "upserted"].map(|k| v[k].as_u64().unwrap())
    };
    assert_eq!(counts(&remote), counts(&local));
    assert!(counts(&remote)[0] > 0 && counts(&remote)[1] > 0, "{:?}", counts(&remote));
    // The reused run equals the local one; the change set's files are on the bucket.
    assert_same_output(&p("out-b"), &downloaded(&bucket, "out-b", dir.path()));
    let copied = downloaded(&bucket, "changes", dir.path());
    for f in ["upserted.parquet", "deleted.parquet"] {
        assert_eq!(std::fs::read(copied.join(f)).map(|b| !b.is_empty()).ok(), Some(true), "{f}");
        let rows = |path: &Path| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(path).unwrap(),
            )
            .unwrap()
            .metadata()
            .file_metadata()
            .num_rows()
        };
        assert_eq!(rows(&copied.join(f)), rows(&p("changes").join(f)), "{f}");
    }
    let ckpt: serde_json::Value =
        serde_json::from_slice(&bucket.get("out-b/worker-00000-of-00001/checkpoint.json").unwrap()).unwrap();
    let reused = ckpt["rows_reused"].as_u64().unwrap();
    assert!(reused > 0, "vectors were copied from the bucket's earlier output");
    s3_cmd(&s3.endpoint).arg("verify").arg(bucket.url("out-b")).assert().success();
}

/// Worker 1 of 4 (blocks of 16 rows) of a file with a page index: it must fetch the page index
/// and the pages holding its rows, and not the other three quarters.
#[test]
fn a_worker_fetches_only_its_own_pages_from_a_bucket() {
    use arrow::array::{ArrayRef, StringArray};
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("pages");
    let dir = tempdir();
    let path = dir.path().join("pages.parquet");
    // 4 row groups of 64 rows, pages of 8 rows, ~3 KB of text a row: an owned block (16 rows,
    // two pages) is ~48 KB, and the gap to the next is three times that.
    let mut rng = fastrand::Rng::with_seed(3);
    let texts: Vec<String> = (0..256)
        .map(|i| format!("row {i} {}", (0..3000).map(|_| rng.alphanumeric()).collect::<String>()))
        .collect();
    let batch = arrow::array::RecordBatch::try_from_iter([(
        "text",
        std::sync::Arc::new(StringArray::from(texts)) as ArrayRef,
    )])
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(64))
        .set_data_page_row_count_limit(8)
        .set_write_batch_size(8)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    bucket.put("in/pages.parquet", std::fs::read(&path).unwrap());

    let read_by = |n: &str, id: &str| -> u64 {
        let out = dir.path().join(format!("out-{n}-{id}"));
        let o = s3_cmd(&s3.endpoint)
            .args(["embed", "--debug-noop-model", "--model"])
            .arg(tiny_model())
            .arg("--output")
            .arg(&out)
            .args(["--num-workers", n, "--worker-id", id, "--stride-block", "16"])
            .arg(bucket.url("in/pages.parquet"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        let line = stderr.lines().find(|l| l.starts_with("input:")).unwrap_or_else(|| panic!("{stderr}"));
        line.split('(').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    let meta = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new_with_options(
        std::fs::File::open(&path).unwrap(),
        parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
    )
    .unwrap()
    .metadata()
    .clone();
    let owns = |row: u64| (row / 16) % 4 == 1;
    let (mut data, mut owned_pages, mut first) = (0u64, 0u64, 0u64);
    let index = meta.page_index().expect("the test file has a page index");
    for (g, group) in meta.row_groups().iter().enumerate() {
        data += group.column(0).compressed_size() as u64;
        let pages = index.offset_index(g, 0).unwrap().page_locations();
        for (p, page) in pages.iter().enumerate() {
            let start = first + page.first_row_index as u64;
            let end = pages
                .get(p + 1)
                .map_or(first + group.num_rows() as u64, |n| first + n.first_row_index as u64);
            if (start..end).any(owns) {
                owned_pages += page.compressed_page_size as u64;
            }
        }
        first += group.num_rows() as u64;
    }
    let metadata = std::fs::metadata(&path).unwrap().len() - data;
    let quarter = read_by("4", "1");
    assert!(quarter >= owned_pages, "read {quarter} bytes, less than its own pages ({owned_pages})");
    assert!(
        quarter <= metadata + owned_pages,
        "read {quarter} bytes; the page index and owned pages are at most {}",
        metadata + owned_pages
    );
    let all = read_by("1", "0");
    assert!(all >= data, "a worker of one fetches every page ({all} < {data})");
    assert!(quarter * 3 < all, "a quarter's share ({quarter}) is not well under the whole ({all})");
}
