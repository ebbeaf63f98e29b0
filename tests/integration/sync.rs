//! Keeping an output in step with a changing corpus: `text_hash`, `--reuse`, repeats embedded
//! once, `changes`, and the change set applied to a real vector database (LanceDB).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use predicates::str::contains;

use crate::util::*;

/// Rows of a snapshot: (id, text).
type Rows = Vec<(i64, Option<String>)>;

/// `n` rows with ids 1..=n: varied texts, some repeated ("great book!"), nulls and empty texts.
pub fn base_rows(n: usize) -> Rows {
    let words =
        ["book", "great", "slow", "plot", "loved", "the", "ending", "café", "😀", "pages", "dull", "wow"];
    (1..=n as i64)
        .map(|id| {
            let i = id as usize;
            let text = match i % 53 {
                7 => None,
                19 => Some(String::new()),
                11 | 29 | 31 => Some("great book!".to_string()),
                _ => Some(
                    (0..(3 + i % 19))
                        .map(|j| words[(i * 7 + j * 5) % words.len()])
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            };
            (id, text)
        })
        .collect()
}

/// Snapshot B from A: every 20th text changed, every 50th row deleted, `new` rows added, and
/// the order shuffled (`seed`).
pub fn next_snapshot(a: &Rows, new: usize, seed: u64) -> Rows {
    let mut b: Rows = Vec::new();
    for (k, (id, text)) in a.iter().enumerate() {
        if k % 50 == 3 {
            continue;
        }
        let text = if k % 20 == 5 { text.as_ref().map(|t| format!("{t} (edited)")) } else { text.clone() };
        b.push((*id, text));
    }
    let top = a.iter().map(|r| r.0).max().unwrap_or(0);
    for i in 0..new as i64 {
        b.push((top + 1 + i, Some(format!("a new review, number {i}, of a slow book"))));
    }
    fastrand::Rng::with_seed(seed).shuffle(&mut b);
    b
}

/// Writes `rows` into `dir` as `files` Parquet files (ids and texts), and returns `dir`.
pub fn write_snapshot(dir: &Path, rows: &Rows, files: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let per = rows.len().div_ceil(files.max(1)).max(1);
    for (f, part) in rows.chunks(per).enumerate() {
        let ids: Vec<i64> = part.iter().map(|r| r.0).collect();
        let texts: Vec<Option<&str>> = part.iter().map(|r| r.1.as_deref()).collect();
        write_parquet(
            &dir.join(format!("part-{f}.parquet")),
            vec![
                ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
                ("text", Arc::new(StringArray::from(texts)) as ArrayRef),
            ],
        );
    }
    dir.to_path_buf()
}

/// Sums a field over every worker's checkpoint of an output.
pub fn total(out: &Path, field: &str) -> u64 {
    let mut sum = 0;
    for e in std::fs::read_dir(out).unwrap() {
        let ckpt = e.unwrap().path().join("checkpoint.json");
        if let Ok(text) = std::fs::read_to_string(&ckpt) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            sum += v[field].as_u64().unwrap();
        }
    }
    sum
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn verify(out: &Path) {
    batch_embed().arg("verify").arg(out).assert().success().stdout(contains("OK: complete and sound"));
}

#[test]
fn reuse_embeds_only_new_and_changed_texts_and_equals_a_full_embed() {
    let dir = tempdir();
    let a = base_rows(600);
    let b = next_snapshot(&a, 18, 7);
    let (in_a, in_b) =
        (write_snapshot(&dir.path().join("a"), &a, 3), write_snapshot(&dir.path().join("b"), &b, 2));
    let out_a = dir.path().join("out-a");
    embed_cmd(&in_a, &out_a, &["--id-column", "id"]).assert().success();
    let full_b = dir.path().join("full-b");
    embed_cmd(&in_b, &full_b, &["--id-column", "id"]).assert().success();

    // By id: a changed text under a kept id is embedded again.
    let out_b = dir.path().join("out-b");
    embed_cmd(&in_b, &out_b, &["--id-column", "id", "--reuse", &path(&out_a)]).assert().success();
    assert_same_vectors(&read_vectors(&full_b), &read_vectors(&out_b));
    assert_eq!(read_failures(&full_b), read_failures(&out_b));
    verify(&out_b);
    let old: std::collections::HashMap<i64, Option<String>> = a.iter().cloned().collect();
    let unchanged = b.iter().filter(|(id, t)| t.is_some() && old.get(id) == Some(t)).count() as u64;
    assert_eq!(total(&out_b, "rows_reused"), unchanged);
    let embedded_text = b.len() as u64 - unchanged - total(&out_b, "rows_failed");
    assert_eq!(total(&out_b, "rows_embedded"), embedded_text, "new and changed texts only");

    // By text hash (no ids): identical texts anywhere are reused.
    let (a_txt, b_txt) = (dir.path().join("a-txt"), dir.path().join("b-txt"));
    embed_cmd(&in_a, &a_txt, &[]).assert().success();
    embed_cmd(&in_b, &b_txt, &["--reuse", &path(&a_txt)]).assert().success();
    let full_b_txt = dir.path().join("full-b-txt");
    embed_cmd(&in_b, &full_b_txt, &[]).assert().success();
    assert_same_vectors(&read_vectors(&full_b_txt), &read_vectors(&b_txt));
    let texts_a: std::collections::HashSet<&str> = a.iter().filter_map(|r| r.1.as_deref()).collect();
    let by_text = b.iter().filter(|r| r.1.as_deref().is_some_and(|t| texts_a.contains(t))).count();
    assert_eq!(total(&b_txt, "rows_reused"), by_text as u64);
    verify(&b_txt);
}

#[test]
fn a_reordered_snapshot_reuses_every_vector() {
    let dir = tempdir();
    let a = base_rows(300);
    let mut shuffled = a.clone();
    fastrand::Rng::with_seed(3).shuffle(&mut shuffled);
    let (in_a, in_b) =
        (write_snapshot(&dir.path().join("a"), &a, 2), write_snapshot(&dir.path().join("b"), &shuffled, 5));
    let out_a = dir.path().join("out-a");
    embed_cmd(&in_a, &out_a, &["--id-column", "id"]).assert().success();
    let out_b = dir.path().join("out-b");
    embed_cmd(&in_b, &out_b, &["--id-column", "id", "--reuse", &path(&out_a)]).assert().success();
    assert_eq!(total(&out_b, "rows_reused"), total(&out_a, "rows_embedded"));
    assert_eq!(total(&out_b, "rows_embedded"), 0);
    let full_b = dir.path().join("full-b");
    embed_cmd(&in_b, &full_b, &["--id-column", "id"]).assert().success();
    assert_same_vectors(&read_vectors(&full_b), &read_vectors(&out_b));
    verify(&out_b);
}

#[test]
fn vectors_of_another_model_or_prompt_are_refused_before_anything_is_written() {
    let dir = tempdir();
    let input = write_snapshot(&dir.path().join("a"), &base_rows(60), 1);
    let out_a = dir.path().join("out-a");
    embed_cmd(&input, &out_a, &["--id-column", "id"]).assert().success();
    let out = dir.path().join("out");
    let reuse_a = path(&out_a);
    for (extra, says) in [
        (vec!["--prompt", "query: "], "prompt was null and is now \"query: \""),
        (vec!["--max-tokens", "64"], "max_tokens was 512 and is now 64"),
        (vec!["--no-normalize"], "normalized was true and is now false"),
    ] {
        let mut args = vec!["--id-column", "id"];
        args.extend(extra);
        args.extend(["--reuse", &reuse_a]);
        embed_cmd(&input, &out, &args)
            .assert()
            .failure()
            .stderr(contains("its vectors were made differently"))
            .stderr(contains(says));
        assert!(!out.exists(), "nothing written");
    }
    embed_with(&fixture("qwen3"), &input, &out, &["--id-column", "id", "--reuse", &path(&out_a)])
        .assert()
        .failure()
        .stderr(contains("model_hash was"))
        .stderr(contains("model_type was \"qwen2\" and is now \"qwen3\""));
    // Ids wanted but the earlier run had none.
    let out_txt = dir.path().join("out-txt");
    embed_cmd(&input, &out_txt, &[]).assert().success();
    embed_cmd(&input, &out, &["--id-column", "id", "--reuse", &path(&out_txt)])
        .assert()
        .failure()
        .stderr(contains("had no --id-column"));
    // Its own output.
    embed_cmd(&input, &out_a, &["--id-column", "id", "--reuse", &path(&out_a)])
        .assert()
        .failure()
        .stderr(contains("is this run's --output"));
}

#[test]
fn three_previous_workers_serve_a_run_of_two_and_an_incomplete_output_is_used() {
    let dir = tempdir();
    let a = base_rows(500);
    let b = next_snapshot(&a, 10, 11);
    let (in_a, in_b) =
        (write_snapshot(&dir.path().join("a"), &a, 2), write_snapshot(&dir.path().join("b"), &b, 3));
    let out_a = dir.path().join("out-a");
    for w in 0..3 {
        embed_cmd(&in_a, &out_a, &["--id-column", "id", "--num-workers", "3", "--stride-block", "16"])
            .args(["--worker-id", &w.to_string()])
            .assert()
            .success();
    }
    let out_b = dir.path().join("out-b");
    for w in 0..2 {
        embed_cmd(
            &in_b,
            &out_b,
            &["--id-column", "id", "--num-workers", "2", "--stride-block", "7", "--reuse", &path(&out_a)],
        )
        .args(["--worker-id", &w.to_string()])
        .assert()
        .success();
    }
    let full_b = dir.path().join("full-b");
    embed_cmd(&in_b, &full_b, &["--id-column", "id"]).assert().success();
    assert_same_vectors(&read_vectors(&full_b), &read_vectors(&out_b));
    verify(&out_b);
    assert!(total(&out_b, "rows_reused") > 400);

    // Worker 1 of A's three never ran: what is there is reused, and the run says so.
    std::fs::remove_dir_all(out_a.join("worker-00001-of-00003")).unwrap();
    let partial = dir.path().join("partial");
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .args(["--id-column", "id", "--output"])
        .arg(&partial)
        .arg("--reuse")
        .arg(&out_a)
        .arg(&in_b)
        .assert()
        .success()
        .stderr(contains("is incomplete"))
        .stderr(contains("in 2 of 3 worker folders"));
    assert_same_vectors(&read_vectors(&full_b), &read_vectors(&partial));
    let reused = total(&partial, "rows_reused");
    assert!(reused > 200 && reused < total(&out_b, "rows_reused"), "{reused}");
}

#[test]
fn a_reuse_run_killed_at_random_resumes_to_the_uninterrupted_output() {
    let dir = tempdir();
    let a = base_rows(800);
    let b = next_snapshot(&a, 40, 5);
    let (in_a, in_b) =
        (write_snapshot(&dir.path().join("a"), &a, 4), write_snapshot(&dir.path().join("b"), &b, 4));
    let out_a = dir.path().join("out-a");
    embed_cmd(&in_a, &out_a, &["--id-column", "id", "--rows-per-part", "64"]).assert().success();
    let clean = dir.path().join("clean");
    embed_cmd(&in_b, &clean, &["--id-column", "id", "--reuse", &path(&out_a)]).assert().success();

    let out = dir.path().join("out");
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let slow = [
        "--id-column",
        "id",
        "--rows-per-part",
        "16",
        "--checkpoint-every",
        "0",
        "--debug-chunk-delay-ms",
        "60",
    ];
    let reuse = out_a.to_string_lossy().to_string();
    let args: Vec<&str> = slow.iter().copied().chain(["--reuse", reuse.as_str()]).collect();
    for _ in 0..6 {
        let mut child = embed_child(&in_b, &out, &args).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.u64(0..400)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    embed_cmd(&in_b, &out, &[&args[..4], &["--reuse", &reuse]].concat()).assert().success();
    assert_same_vectors(&read_vectors(&clean), &read_vectors(&out));
    assert_eq!(read_failures(&clean), read_failures(&out), "seed {seed}");
    assert_eq!(total(&clean, "rows_reused"), total(&out, "rows_reused"), "seed {seed}");
    verify(&out);
    // Resuming a --reuse run needs the same --reuse.
    let other = dir.path().join("other");
    let mut child = embed_child(&in_b, &other, &args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let checkpoint = worker0(&other).join("checkpoint.json");
    while done(&checkpoint) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be stopped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    embed_cmd(&in_b, &other, &slow[..4]).assert().failure().stderr(contains("was started with --reuse"));
}

#[test]
fn status_and_progress_count_reused_and_repeated_rows() {
    let dir = tempdir();
    let a = base_rows(200);
    let b = next_snapshot(&a, 5, 2);
    let (in_a, in_b) =
        (write_snapshot(&dir.path().join("a"), &a, 1), write_snapshot(&dir.path().join("b"), &b, 1));
    let out_a = dir.path().join("out-a");
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(&out_a)
        .arg(&in_a)
        .assert()
        .success()
        .stderr(contains("repeats:    "));
    // Every row whose text an earlier row had is a repeat ("great book!" is 3 rows in every 53;
    // the empty text is one token, the appended end-of-text, with this fixture's tokenizer).
    let texts: Vec<&str> = a.iter().filter_map(|r| r.1.as_deref()).collect();
    let distinct: std::collections::HashSet<&&str> = texts.iter().collect();
    let repeats = (texts.len() - distinct.len()) as u64;
    assert!(repeats >= 8);
    assert_eq!(total(&out_a, "rows_deduplicated"), repeats);
    // status and progress.json count them too, with the rows embedded.
    let s: serde_json::Value = serde_json::from_slice(
        &batch_embed().args(["status", "--json"]).arg(&out_a).output().unwrap().stdout,
    )
    .unwrap();
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(worker0(&out_a).join("progress.json")).unwrap())
            .unwrap();
    let embedded = total(&out_a, "rows_embedded");
    assert_eq!(embedded + total(&out_a, "rows_failed"), 200);
    for counts in [&s, &s["workers"][0], &progress] {
        assert_eq!(counts["rows_embedded"], embedded, "{counts}");
        assert_eq!(counts["rows_deduplicated"], repeats, "{counts}");
    }
    batch_embed()
        .arg("status")
        .arg(&out_a)
        .assert()
        .success()
        .stdout(contains(format!("{embedded} embedded ({repeats} of them repeats)")));
    let out_b = dir.path().join("out-b");
    embed_cmd(&in_b, &out_b, &["--reuse", &path(&out_a)]).assert().success();
    let s: serde_json::Value = serde_json::from_slice(
        &batch_embed().args(["status", "--json"]).arg(&out_b).output().unwrap().stdout,
    )
    .unwrap();
    let reused = total(&out_b, "rows_reused");
    assert!(reused > 0);
    assert_eq!(s["rows_reused"], reused);
    assert_eq!(s["workers"][0]["rows_reused"], reused);
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(worker0(&out_b).join("progress.json")).unwrap())
            .unwrap();
    assert_eq!(progress["rows_reused"], reused);
    batch_embed().arg("status").arg(&out_b).assert().success().stdout(contains(format!("{reused} reused")));
}

#[test]
fn a_change_set_applied_to_lancedb_gives_what_a_fresh_load_gives() {
    lancedb_round_trip(&[]);
}

/// With one row per chunk, a changed text may have fewer chunks than before: its old chunks must
/// not stay behind in the database.
#[test]
fn a_chunked_change_set_applied_to_lancedb_leaves_no_stale_chunks() {
    lancedb_round_trip(&["--chunk-tokens", "12", "--chunk-overlap", "2"]);
}

/// Day 1 loaded, day 2's change set applied: the database equals a fresh load of day 2.
fn lancedb_round_trip(extra: &[&str]) {
    let Some(python) = python_with(&["lancedb", "pyarrow"], "lancedb", "CI_REQUIRE_LANCEDB") else { return };
    let chunked = !extra.is_empty();
    let ids: Vec<&str> = ["--id-column", "id"].iter().chain(extra).copied().collect();
    let script = root().join("examples/vector-db/lancedb_sync.py");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new(&python).arg(&script).args(args).output().unwrap();
        assert!(o.status.success(), "lancedb_sync.py {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let dir = tempdir();
    let a = base_rows(400);
    let b = next_snapshot(&a, 25, 9);
    let (in_a, in_b) =
        (write_snapshot(&dir.path().join("a"), &a, 2), write_snapshot(&dir.path().join("b"), &b, 3));
    let p = |name: &str| dir.path().join(name);
    // Snapshot A: full embed, loaded.
    embed_cmd(&in_a, &p("out-a"), &ids).assert().success();
    run(&["load".as_ref(), p("out-a").as_os_str(), p("db").as_os_str()]);
    // Snapshot B: only what changed is embedded; the change set goes into the database.
    embed_cmd(&in_b, &p("out-b"), &[&ids[..], &["--reuse", &path(&p("out-a"))]].concat()).assert().success();
    let report = batch_embed()
        .args(["changes", "--json"])
        .arg(p("out-a"))
        .arg(p("out-b"))
        .arg("--output")
        .arg(p("changes"))
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(report["changed"].as_u64().unwrap() > 0);
    if chunked {
        // Changed ids are deleted first, then their new chunks upserted.
        assert_eq!(report["chunk_rows"], true);
        assert_eq!(report["deleted_changed"], report["changed"]);
        assert_eq!(
            change_ids(&p("changes/deleted.parquet")).len() as u64,
            report["deleted"].as_u64().unwrap() + report["changed"].as_u64().unwrap()
        );
    }
    run(&["apply".as_ref(), p("changes").as_os_str(), p("db").as_os_str()]);
    if chunked {
        // Applying it again changes nothing (deletes, then upserts on (id, chunk)).
        run(&["apply".as_ref(), p("changes").as_os_str(), p("db").as_os_str()]);
    }
    // What a full embed of B loaded from scratch holds.
    embed_cmd(&in_b, &p("full-b"), &ids).assert().success();
    run(&["load".as_ref(), p("full-b").as_os_str(), p("db-fresh").as_os_str()]);
    run(&["dump".as_ref(), p("db").as_os_str(), p("synced.parquet").as_os_str()]);
    run(&["dump".as_ref(), p("db-fresh").as_os_str(), p("fresh.parquet").as_os_str()]);
    let (synced, fresh) = (read_table_vectors(&p("synced.parquet")), read_table_vectors(&p("fresh.parquet")));
    assert_eq!(synced.len(), fresh.len());
    for ((ia, va), (ib, vb)) in synced.iter().zip(&fresh) {
        assert_eq!(ia, ib, "the same ids (and chunks)");
        assert!(max_abs_diff(va, vb) <= 1e-6, "id {ia:?}: vectors differ by {}", max_abs_diff(va, vb));
    }
    let with_text = b.iter().filter(|r| r.1.is_some()).count();
    let mut distinct: Vec<i64> = synced.iter().map(|(k, _)| k.0).collect();
    distinct.dedup();
    assert_eq!(distinct.len(), with_text, "every row with a text, once");
    if chunked {
        assert!(synced.len() > with_text + 100, "rows of several chunks");
    }
}

/// ((id, chunk), vector) of a dumped LanceDB table, by id and chunk (0 without chunks).
fn read_table_vectors(path: &Path) -> Vec<((i64, u32), Vec<f32>)> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float32Type, Int64Type, UInt32Type};
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch.column_by_name("id").unwrap().as_primitive::<Int64Type>().clone();
        let chunks = batch.column_by_name("chunk").map(|c| c.as_primitive::<UInt32Type>().clone());
        let vectors = batch.column_by_name("vector").unwrap().as_fixed_size_list().clone();
        for i in 0..batch.num_rows() {
            let key = (ids.value(i), chunks.as_ref().map_or(0, |c| c.value(i)));
            out.push((key, vectors.value(i).as_primitive::<Float32Type>().values().to_vec()));
        }
    }
    out.sort_by_key(|(key, _)| *key);
    out
}

/// The ids of a change-set file, sorted.
pub fn change_ids(path: &Path) -> Vec<i64> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut ids: Vec<i64> = reader
        .flat_map(|b| b.unwrap().column_by_name("id").unwrap().as_primitive::<Int64Type>().values().to_vec())
        .collect();
    ids.sort();
    ids
}

#[test]
fn changes_lists_new_changed_and_deleted_ids_and_reports_duplicates() {
    let dir = tempdir();
    let p = |name: &str| dir.path().join(name);
    let a = base_rows(200);
    let b = next_snapshot(&a, 7, 4);
    let (in_a, in_b) = (write_snapshot(&p("a"), &a, 1), write_snapshot(&p("b"), &b, 2));
    embed_cmd(&in_a, &p("out-a"), &["--id-column", "id"]).assert().success();
    embed_cmd(&in_b, &p("out-b"), &["--id-column", "id", "--reuse", &path(&p("out-a"))]).assert().success();
    let out = batch_embed()
        .args(["changes", "--json"])
        .arg(p("out-a"))
        .arg(p("out-b"))
        .arg("--output")
        .arg(p("changes"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Expected from the snapshots themselves (rows with a vector: non-null texts).
    let old: std::collections::HashMap<i64, &Option<String>> =
        a.iter().filter(|r| r.1.is_some()).map(|r| (r.0, &r.1)).collect();
    let new_rows: Vec<&(i64, Option<String>)> = b.iter().filter(|r| r.1.is_some()).collect();
    let changed: Vec<i64> =
        new_rows.iter().filter(|r| old.get(&r.0).is_some_and(|t| **t != r.1)).map(|r| r.0).collect();
    let added: Vec<i64> = new_rows.iter().filter(|r| !old.contains_key(&r.0)).map(|r| r.0).collect();
    let kept: std::collections::HashSet<i64> = new_rows.iter().map(|r| r.0).collect();
    let mut deleted: Vec<i64> = old.keys().filter(|id| !kept.contains(id)).copied().collect();
    deleted.sort();
    assert_eq!(report["changed"], changed.len() as u64);
    assert_eq!(report["new"], added.len() as u64);
    assert_eq!(report["deleted"], deleted.len() as u64);
    assert_eq!(report["unchanged"], (new_rows.len() - changed.len() - added.len()) as u64);
    let mut upserted: Vec<i64> = changed.iter().chain(&added).copied().collect();
    upserted.sort();
    assert_eq!(change_ids(&p("changes/upserted.parquet")), upserted);
    assert_eq!(change_ids(&p("changes/deleted.parquet")), deleted);
    assert!(!p("changes/duplicates.parquet").exists());

    // An id twice in CURRENT: reported and left out, not merged.
    let mut dup = b.clone();
    let twice = dup.iter().find(|r| r.1.is_some() && changed.contains(&r.0)).unwrap().0;
    dup.push((twice, Some("the same id again".into())));
    embed_cmd(&write_snapshot(&p("dup"), &dup, 1), &p("out-dup"), &["--id-column", "id"]).assert().success();
    batch_embed()
        .arg("changes")
        .arg(p("out-a"))
        .arg(p("out-dup"))
        .arg("--output")
        .arg(p("changes-dup"))
        .assert()
        .success()
        .stdout(contains("more than once in PREVIOUS and 1 in CURRENT"))
        .stdout(contains(format!("{} changed", changed.len() - 1)));
    assert!(!change_ids(&p("changes-dup/upserted.parquet")).contains(&twice));
    assert!(p("changes-dup/duplicates.parquet").exists());

    // Runs without ids, and incomplete runs, are refused.
    embed_cmd(&in_b, &p("no-ids"), &[]).assert().success();
    batch_embed()
        .arg("changes")
        .arg(p("out-a"))
        .arg(p("no-ids"))
        .arg("--output")
        .arg(p("x"))
        .assert()
        .failure()
        .stderr(contains("made without --id-column"));
    embed_cmd(
        &in_b,
        &p("half"),
        &["--id-column", "id", "--num-workers", "2", "--worker-id", "0", "--stride-block", "8"],
    )
    .assert()
    .success();
    batch_embed()
        .arg("changes")
        .arg(p("out-a"))
        .arg(p("half"))
        .arg("--output")
        .arg(p("x"))
        .assert()
        .failure()
        .stderr(contains("is incomplete"))
        .stderr(contains("--allow-incomplete"));
    batch_embed()
        .args(["changes", "--allow-incomplete"])
        .arg(p("out-a"))
        .arg(p("half"))
        .arg("--output")
        .arg(p("x"))
        .assert()
        .success();
}
