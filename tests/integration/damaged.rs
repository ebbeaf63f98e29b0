//! Input files that go bad under a run. A file replaced while the run goes on stops it, naming
//! the file. A row group whose bytes do not decode stops the worker at once, naming
//! it; with `--skip-damaged` its rows are recorded as failed and every other row is embedded as
//! from an undamaged copy, across workers, part boundaries, a resume and `--reuse`; `changes`
//! keeps the ids of rows that failed and refuses to guess the ids it could not read.

use std::path::{Path, PathBuf};

use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

use crate::util::*;

/// The rows of the damaged row group (group 2 of 4, 64 rows each).
const DAMAGED: std::ops::Range<u64> = 128..192;

fn status_json(out: &Path) -> serde_json::Value {
    let output = batch_embed().arg("status").arg(out).arg("--json").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The damaged run's vectors are the undamaged run's less the damaged rows, and its failures
/// are exactly those rows, each saying why.
fn assert_damaged_rows_failed(clean: &Path, out: &Path) {
    let expected: Vec<(u64, Vec<f32>)> =
        read_vectors(clean).into_iter().filter(|(row, _)| !DAMAGED.contains(row)).collect();
    assert_same_vectors(&expected, &read_vectors(out));
    let failures = read_failures(out);
    assert_eq!(failures.iter().map(|f| f.0).collect::<Vec<u64>>(), DAMAGED.collect::<Vec<u64>>());
    assert!(failures.iter().all(|f| f.1.contains("does not decode") && f.1.contains("--skip-damaged")));
    batch_embed()
        .arg("verify")
        .arg(out)
        .assert()
        .success()
        .stdout(contains(
            "failed rows by reason:\n          64  its row group in the input file does not decode",
        ))
        .stdout(contains("OK: complete and sound"));
}

/// The damaged file in `dir/damaged/`, and the output of a run over its undamaged copy (with
/// ids), to compare with.
fn damaged_and_clean_run(dir: &Path) -> (PathBuf, PathBuf) {
    let (clean_in, damaged_in) = (dir.join("clean/in.parquet"), dir.join("damaged/in.parquet"));
    std::fs::create_dir_all(clean_in.parent().unwrap()).unwrap();
    std::fs::create_dir_all(damaged_in.parent().unwrap()).unwrap();
    undamaged_file(&clean_in);
    damaged_file(&damaged_in);
    let clean = dir.join("clean-out");
    embed_cmd(&clean_in, &clean, &["--id-column", "id"]).assert().success();
    (damaged_in, clean)
}

#[test]
fn a_damaged_row_group_fails_at_once_naming_it() {
    let dir = tempdir();
    let input = dir.path().join("damaged.parquet");
    damaged_file(&input);
    // Not retried (a flaky read is, for 15 s): reading the same bytes again cannot help.
    embed_cmd(&input, &dir.path().join("out"), &[])
        .assert()
        .failure()
        .stderr(contains("damaged.parquet: row group 2 of 4 (rows 128..192 of the file"))
        .stderr(contains("the file is damaged"))
        .stderr(contains("retrying").not());
}

#[test]
fn skip_damaged_records_the_row_group_as_failed_and_embeds_every_other_row() {
    let dir = tempdir();
    let (damaged_in, clean) = damaged_and_clean_run(dir.path());

    // Three workers in blocks of 16 rows: each owns part of the damaged group, and chunks of 16
    // rows (parts of 16) put its failures across several commits.
    let out = dir.path().join("out");
    for w in 0..3 {
        let worker = w.to_string();
        let args =
            ["--id-column", "id", "--num-workers", "3", "--worker-id", &worker, "--stride-block", "16"];
        let mut args = args.to_vec();
        args.extend(["--rows-per-part", "16", "--skip-damaged"]);
        embed_cmd(&damaged_in, &out, &args)
            .assert()
            .success()
            .stderr(contains("warning: "))
            .stderr(contains("in.parquet: row group 2 of 4 (rows 128..192 of the file"))
            .stderr(contains("recorded as failed (--skip-damaged)"));
    }
    assert_damaged_rows_failed(&clean, &out);
    let status = status_json(&out);
    assert_eq!(status["rows_failed"], 64, "{status}");
    assert_eq!(status["rows_embedded"], 192, "{status}");
}

#[test]
fn a_skip_damaged_run_cut_short_resumes_to_the_same_output() {
    let dir = tempdir();
    let (damaged_in, clean) = damaged_and_clean_run(dir.path());

    // Commits of 16 rows; the 10th fails like a full disk, inside the rows after the damage.
    let out = dir.path().join("out");
    let args = ["--id-column", "id", "--rows-per-part", "16", "--checkpoint-every", "0", "--skip-damaged"];
    let mut failing = args.to_vec();
    failing.extend(["--debug-faults", "commit=10"]);
    embed_cmd(&damaged_in, &out, &failing).assert().failure().stderr(contains("no space left on device"));
    assert_eq!(done(&worker0(&out).join("checkpoint.json")), 144, "nine commits kept");
    embed_cmd(&damaged_in, &out, &args).assert().success();
    assert_damaged_rows_failed(&clean, &out);

    // Without the flag, a resume meets the damage again and stops; with it, the worker is done.
    let stopped = dir.path().join("stopped");
    let mut failing = args[..4].to_vec();
    failing.extend(["--skip-damaged", "--debug-faults", "commit=4"]);
    embed_cmd(&damaged_in, &stopped, &failing).assert().failure();
    embed_cmd(&damaged_in, &stopped, &args[..4]).assert().failure().stderr(contains("row group 2 of 4"));
}

#[test]
fn reuse_over_a_damaged_input_copies_what_it_can_and_records_the_rest() {
    let dir = tempdir();
    let (damaged_in, clean) = damaged_and_clean_run(dir.path());

    let prev = clean.to_str().unwrap();
    let out = dir.path().join("out");
    embed_cmd(&damaged_in, &out, &["--id-column", "id", "--reuse", prev])
        .assert()
        .failure()
        .stderr(contains("row group 2 of 4"));
    std::fs::remove_dir_all(&out).unwrap();
    embed_cmd(&damaged_in, &out, &["--id-column", "id", "--reuse", prev, "--skip-damaged"])
        .assert()
        .success()
        .stderr(contains("row group 2 of 4").count(1));
    assert_damaged_rows_failed(&clean, &out);
    let status = status_json(&out);
    assert_eq!(status["rows_reused"], 192, "{status}");
}

#[test]
fn an_input_file_replaced_while_the_run_goes_on_stops_it_naming_the_file() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let texts: Vec<String> = (0..400).map(|i| format!("first file, review {i}")).collect();
    write_texts(&input.join("a.parquet"), &texts.iter().map(|t| Some(t.as_str())).collect::<Vec<_>>());
    write_texts(&input.join("b.parquet"), &[Some("second file, one row")]);
    let out = dir.path().join("out");
    let log = dir.path().join("log");
    let args = ["--rows-per-part", "16", "--checkpoint-every", "0", "--debug-chunk-delay-ms", "40"];
    let mut child =
        embed_child(&input, &out, &args).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    // Once rows are committed, the run was planned from the old b.parquet, which it has not
    // opened yet (a.parquet takes 25 chunks of 40 ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while done(&worker0(&out).join("checkpoint.json")) == 0 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    write_texts(&input.join("b.parquet"), &[Some("second file, now"), Some("two rows")]);
    assert_eq!(wait_exit(&mut child, std::time::Duration::from_secs(60)), 1);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("b.parquet changed while this run was going on"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    // What was committed stays; the resume is refused as a different run until the file is back.
    assert_eq!(done(&worker0(&out).join("checkpoint.json")), 400);
    embed_cmd(&input, &out, &[]).assert().failure().stderr(contains("different run"));
    write_texts(&input.join("b.parquet"), &[Some("second file, one row")]);
    embed_cmd(&input, &out, &[]).assert().success();
    batch_embed().arg("verify").arg(&out).assert().success();
}

#[test]
fn changes_keeps_ids_whose_row_failed_and_refuses_ids_it_cannot_know() {
    let dir = tempdir();
    let p = |name: &str| dir.path().join(name);
    std::fs::create_dir_all(p("a")).unwrap();
    undamaged_file(&p("a/in.parquet"));
    embed_cmd(&p("a/in.parquet"), &p("out-a"), &["--id-column", "id"]).assert().success();

    // CURRENT: id 1005's text is now null (gone, like id 1006); id 1007's text changed into one
    // that fails to embed (out of memory even alone), a failure that carries its id.
    std::fs::create_dir_all(p("b")).unwrap();
    let text = |i: i64| match i {
        5 => None,
        7 => Some("a long review that runs out of memory on its own ".repeat(8)),
        _ => Some(format!("review number {i}")),
    };
    let (ids, texts): (Vec<i64>, Vec<Option<String>>) =
        (0..256).filter(|&i| i != 6).map(|i| (1000 + i, text(i))).unzip();
    write_parquet(
        &p("b/in.parquet"),
        vec![
            ("text", std::sync::Arc::new(arrow::array::StringArray::from(texts)) as arrow::array::ArrayRef),
            ("id", std::sync::Arc::new(arrow::array::Int64Array::from(ids))),
        ],
    );
    embed_cmd(&p("b/in.parquet"), &p("out-b"), &["--id-column", "id", "--debug-faults", "oom-above=40"])
        .assert()
        .success();
    let failures = std::fs::read_to_string(worker0(&p("out-b")).join("failures.jsonl")).unwrap();
    let lines: Vec<&str> = failures.lines().collect();
    assert_eq!(lines[0], "{\"code\":\"null_text\",\"id\":1005,\"reason\":\"text is null\",\"row\":5}");
    assert!(lines[1].starts_with("{\"code\":\"out_of_memory\",\"id\":1007,"), "{failures}");
    let changes = |current: &str, out: &str, extra: &[&str]| {
        let mut cmd = batch_embed();
        cmd.arg("changes").arg(p("out-a")).arg(p(current)).arg("--output").arg(p(out)).args(extra);
        cmd
    };
    changes("out-b", "changes-b", &[])
        .assert()
        .success()
        .stdout(contains("ids: 253 unchanged, 0 changed, 0 new, 2 deleted"))
        .stdout(contains("1 ids of PREVIOUS have a row in CURRENT that got no vector"));
    assert_eq!(crate::sync::change_ids(&p("changes-b/deleted.parquet")), [1005, 1006]);
    assert!(crate::sync::change_ids(&p("changes-b/upserted.parquet")).is_empty());

    // CURRENT with a damaged row group skipped: those rows' ids are unknown, so a change set
    // would delete them; refused unless the user accepts that.
    std::fs::create_dir_all(p("c")).unwrap();
    damaged_file(&p("c/in.parquet"));
    embed_cmd(&p("c/in.parquet"), &p("out-c"), &["--id-column", "id", "--skip-damaged"]).assert().success();
    changes("out-c", "changes-c", &[])
        .assert()
        .failure()
        .stderr(contains("has 64 failed rows whose id is not known"))
        .stderr(contains("--allow-incomplete"));
    assert!(!p("changes-c").exists(), "nothing written");
    changes("out-c", "changes-c", &["--allow-incomplete"]).assert().success().stdout(contains("64 deleted"));
    assert_eq!(crate::sync::change_ids(&p("changes-c/deleted.parquet")), (1128..1192).collect::<Vec<i64>>());
}
