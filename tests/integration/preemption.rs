//! Preemption and faults: SIGTERM, kill -9 at random instants, two processes on one worker
//! folder, write and read failures, out-of-memory splits — each ending in the output an
//! uninterrupted run gives, checked by `batch-embed verify`.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use predicates::str::contains;

use crate::util::*;

/// Exit code of an interrupted run (documented in README).
const INTERRUPTED: i32 = 75;

/// Arguments that make a small run slow enough to interrupt, committing every 16 rows.
const SLOW: [&str; 8] =
    ["--id-column", "id", "--rows-per-part", "16", "--checkpoint-every", "0", "--debug-chunk-delay-ms", "40"];

/// Starts `batch-embed embed` as a child process; its stderr goes to `log`.
fn spawn(input: &Path, out: &Path, extra: &[&str], log: &Path) -> Child {
    embed_child(input, out, extra).stderr(std::fs::File::create(log).unwrap()).spawn().unwrap()
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Waits until the worker's checkpoint shows more than `rows` done.
fn wait_for_progress(child: &mut Child, checkpoint: &Path, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while done(checkpoint) <= rows {
        assert!(Instant::now() < deadline, "no progress");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be interrupted");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn verify(out: &Path) -> assert_cmd::assert::Assert {
    batch_embed().arg("verify").arg(out).assert()
}

fn clean_run(input: &Path, dir: &Path) -> PathBuf {
    let clean = dir.join("clean");
    embed_cmd(input, &clean, &["--id-column", "id"]).assert().success();
    clean
}

fn assert_same_output(clean: &Path, out: &Path) {
    assert_same_vectors(&read_vectors(clean), &read_vectors(out));
    assert_eq!(read_failures(clean), read_failures(out));
    verify(out).success().stdout(contains("OK: complete and sound"));
}

#[test]
fn sigterm_commits_finished_work_and_exits_with_the_resume_code() {
    let dir = tempdir();
    let input = corpus(dir.path(), 300);
    let clean = clean_run(&input, dir.path());
    let out = dir.path().join("out");
    let log = dir.path().join("log");
    let worker = worker0(&out);
    let mut child = spawn(&input, &out, &SLOW, &log);
    wait_for_progress(&mut child, &worker.join("checkpoint.json"), 16);
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), INTERRUPTED);
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?} to stop", sent.elapsed());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("SIGTERM") && stderr.contains("run the same command to resume"), "{stderr}");

    // What was finished is committed, the lock is released, status says interrupted.
    let committed = done(&worker.join("checkpoint.json"));
    assert!(committed > 16 && committed < 300, "{committed}");
    assert!(!worker.join("lock.json").exists(), "the lock outlived the process");
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(worker.join("progress.json")).unwrap()).unwrap();
    assert_eq!(progress["state"], "interrupted");
    assert_eq!(progress["rows_done"].as_u64(), Some(committed));
    verify(&out).failure().stdout(contains("NOT OK")).stdout(contains("incomplete"));

    embed_cmd(&input, &out, &SLOW[..6]).assert().success();
    assert_same_output(&clean, &out);
}

#[test]
fn a_second_signal_or_the_stop_timeout_exits_at_once() {
    let dir = tempdir();
    let input = corpus(dir.path(), 60);
    // Each chunk waits 20 s before the model: the first signal cannot finish it in time.
    let slow = ["--rows-per-part", "16", "--debug-chunk-delay-ms", "20000"];
    let log = dir.path().join("log");
    for (case, extra) in [("second signal", &[][..]), ("timeout", &["--stop-timeout", "1"][..])] {
        let out = dir.path().join(case.replace(' ', "-"));
        let mut args = slow.to_vec();
        args.extend(extra);
        let mut child = spawn(&input, &out, &args, &log);
        let lock = worker0(&out).join("lock.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lock.exists() {
            assert!(Instant::now() < deadline, "{case}: never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        signal(&child, libc::SIGTERM);
        if case == "second signal" {
            std::thread::sleep(Duration::from_millis(300));
            signal(&child, libc::SIGINT);
        }
        assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), INTERRUPTED, "{case}");
        assert!(sent.elapsed() < Duration::from_secs(5), "{case}: took {:?}", sent.elapsed());
        let stderr = std::fs::read_to_string(&log).unwrap();
        let expected = if case == "timeout" { "still busy" } else { "second SIGINT" };
        assert!(stderr.contains(expected), "{case}: {stderr}");
        // The checkpoint stays valid: the next run resumes (and takes over the dead pid's lock).
        embed_cmd(&input, &out, &["--rows-per-part", "16"]).assert().success();
        verify(&out).success();
    }
}

/// The chaos test: SIGKILL at random instants, then SIGTERM once, then run to the end.
#[test]
fn random_kills_then_sigterm_then_resume_equal_an_uninterrupted_run() {
    let dir = tempdir();
    let input = corpus(dir.path(), 800);
    let clean = clean_run(&input, dir.path());
    let out = dir.path().join("out");
    let log = dir.path().join("log");
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    // 50 chunks of 16 rows, 60 ms each: ~3 s of work, more than five kills of < 0.5 s can finish.
    let mut chaos = SLOW.to_vec();
    chaos[7] = "60";
    let checkpoint = worker0(&out).join("checkpoint.json");
    for _ in 0..5 {
        let mut child = spawn(&input, &out, &chaos, &log);
        // Anywhere from start-up (model load, lock, cleanup) to deep into the run.
        std::thread::sleep(Duration::from_millis(rng.u64(0..500)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    let before = done(&checkpoint);
    assert!(before < 800, "seed {seed}: the kills left nothing to do");
    let mut child = spawn(&input, &out, &chaos, &log);
    wait_for_progress(&mut child, &checkpoint, before);
    signal(&child, libc::SIGTERM);
    let code = wait_exit(&mut child, Duration::from_secs(10));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, INTERRUPTED, "seed {seed}, {before} rows done before: {stderr}");
    embed_cmd(&input, &out, &SLOW[..6]).assert().success();
    let leftovers: Vec<_> = std::fs::read_dir(worker0(&out))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp") || n == "lock.json")
        .collect();
    assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
    assert_same_output(&clean, &out);
}

#[test]
fn a_second_process_on_the_same_worker_folder_is_refused() {
    let dir = tempdir();
    let input = corpus(dir.path(), 200);
    let out = dir.path().join("out");
    let log = dir.path().join("log");
    let mut first = spawn(&input, &out, &SLOW, &log);
    wait_for_progress(&mut first, &worker0(&out).join("checkpoint.json"), 0);
    embed_cmd(&input, &out, &SLOW)
        .assert()
        .failure()
        .stderr(contains("another batch-embed process (pid "))
        .stderr(contains("is writing"));
    first.kill().unwrap();
    first.wait().unwrap();
    // The killed process left its lock; its pid is gone, so the next run takes it over.
    assert!(worker0(&out).join("lock.json").exists());
    embed_cmd(&input, &out, &SLOW[..6]).assert().success();
    verify(&out).success();
}

#[test]
fn a_lock_from_another_host_is_refused_while_its_heartbeat_moves_and_forced_with_a_flag() {
    let dir = tempdir();
    let input = corpus(dir.path(), 100);
    let out = dir.path().join("out");
    let log = dir.path().join("log");
    // A live worker "on another host".
    let mut first = embed_child(&input, &out, &["--rows-per-part", "16", "--debug-chunk-delay-ms", "20000"])
        .env("BATCH_EMBED_HOSTNAME", "node-a")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let lock = worker0(&out).join("lock.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lock.exists() {
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its heartbeat moves every 5 s; we watch for up to 60 s and see it move.
    embed_cmd(&input, &out, &["--rows-per-part", "16"])
        .env("BATCH_EMBED_HOSTNAME", "node-b")
        .timeout(Duration::from_secs(30))
        .assert()
        .failure()
        .stderr(contains("on host node-a, which is still running"))
        .stderr(contains("--force-unlock"));
    first.kill().unwrap();
    first.wait().unwrap();
    // node-a is gone but its lock stays; --force-unlock takes it without waiting.
    embed_cmd(&input, &out, &["--rows-per-part", "16", "--force-unlock"])
        .env("BATCH_EMBED_HOSTNAME", "node-b")
        .timeout(Duration::from_secs(30))
        .assert()
        .success();
    verify(&out).success();
}

#[test]
fn a_write_failure_ends_the_run_clearly_and_the_next_run_resumes() {
    let dir = tempdir();
    let input = corpus(dir.path(), 120);
    let clean = clean_run(&input, dir.path());
    let out = dir.path().join("out");
    let args = ["--id-column", "id", "--rows-per-part", "16", "--checkpoint-every", "0"];
    let mut failing = args.to_vec();
    failing.extend(["--debug-faults", "commit=3"]);
    embed_cmd(&input, &out, &failing)
        .assert()
        .failure()
        .stderr(contains("no space left on device"))
        .stderr(contains("the same command resumes"));
    let worker = worker0(&out);
    assert_eq!(done(&worker.join("checkpoint.json")), 32, "two commits kept");
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(worker.join("progress.json")).unwrap()).unwrap();
    assert_eq!(progress["state"], "failed");
    assert!(progress["error"].as_str().unwrap().contains("no space left"));
    embed_cmd(&input, &out, &args).assert().success();
    assert_same_output(&clean, &out);
}

#[test]
fn a_read_only_output_folder_fails_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let input = corpus(dir.path(), 40);
    let model = dir.path().join("model");
    copy_dir(&fixture("qwen2-gqa"), &model);
    for f in std::fs::read_dir(&model).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = dir.path().join("out");
    let worker = worker0(&out);
    std::fs::create_dir_all(&worker).unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes anywhere: run the worker as `nobody` then (its folder is still read-only to it).
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let bin = assert_cmd::cargo::cargo_bin("batch-embed");
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    let o = cmd
        .args(["embed", "--quiet", "--model"])
        .arg(&model)
        .arg("--output")
        .arg(&out)
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Permission denied") && stderr.contains(&worker.display().to_string()),
        "{stderr}"
    );
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn flaky_input_reads_are_retried_and_a_dead_file_is_named() {
    let dir = tempdir();
    let input = corpus(dir.path(), 120);
    let clean = clean_run(&input, dir.path());
    let out = dir.path().join("out");
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(&out)
        .args(["--id-column", "id", "--rows-per-part", "16", "--debug-faults", "read=2"])
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("connection timed out (injected"))
        .stderr(contains("retrying in 0.5s (attempt 2 of 6)"));
    assert_same_output(&clean, &out);

    let dead = dir.path().join("dead");
    embed_cmd(&input, &dead, &["--debug-faults", "read=1000"])
        .assert()
        .failure()
        .stderr(contains("giving up on"))
        .stderr(contains("shard-0.parquet after 6 attempts"));
}

#[test]
fn an_out_of_memory_batch_is_split_and_a_text_too_big_alone_is_recorded() {
    let dir = tempdir();
    let input = corpus(dir.path(), 100);
    let clean = clean_run(&input, dir.path());
    let out = dir.path().join("out");
    // Batches above 30 tokens "run out of memory": big batches split down to single texts,
    // and texts longer than 30 tokens fail alone.
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(&out)
        .args(["--id-column", "id", "--debug-faults", "oom-above=30"])
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("batches split after running out of memory"));
    let failures = read_failures(&out);
    let oom: Vec<u64> =
        failures.iter().filter(|(_, r)| r.contains("out of memory")).map(|(row, _)| *row).collect();
    assert!(!oom.is_empty(), "no text was too big alone");
    // Every other row has the vector of the run without faults.
    let want: Vec<(u64, Vec<f32>)> =
        read_vectors(&clean).into_iter().filter(|(row, _)| !oom.contains(row)).collect();
    assert_same_vectors(&want, &read_vectors(&out));
    verify(&out).success();
}

#[test]
fn a_worker_whose_folder_is_taken_over_commits_nothing_more_and_says_so() {
    // node-a runs; node-b takes the folder with --force-unlock midway. node-a must stop at its
    // next commit without renaming a part or saving the checkpoint, and node-b's result must be
    // the uninterrupted output: every row once, verify OK.
    let dir = tempdir();
    let input = corpus(dir.path(), 400);
    let clean = clean_run(&input, dir.path());
    let out = dir.path().join("out");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut slow = SLOW.to_vec();
    slow[7] = "80";
    let mut a = embed_child(&input, &out, &slow)
        .env("BATCH_EMBED_HOSTNAME", "node-a")
        .stderr(std::fs::File::create(&log_a).unwrap())
        .spawn()
        .unwrap();
    let checkpoint = worker0(&out).join("checkpoint.json");
    wait_for_progress(&mut a, &checkpoint, 32);
    let mut b = embed_child(&input, &out, &[&slow[..], &["--force-unlock"]].concat())
        .env("BATCH_EMBED_HOSTNAME", "node-b")
        .stderr(std::fs::File::create(&log_b).unwrap())
        .spawn()
        .unwrap();
    let code_a = wait_exit(&mut a, Duration::from_secs(60));
    let stderr_a = std::fs::read_to_string(&log_a).unwrap();
    assert_eq!(code_a, 1, "{stderr_a}");
    assert!(
        stderr_a.contains("on host node-b")
            && stderr_a.contains("nothing more was committed by this process"),
        "{stderr_a}"
    );
    // node-b is still running when node-a is gone: node-a stopped at its first commit after.
    assert!(b.try_wait().unwrap().is_none(), "node-b finished before node-a noticed");
    let code_b = wait_exit(&mut b, Duration::from_secs(120));
    assert_eq!(code_b, 0, "{}", std::fs::read_to_string(&log_b).unwrap());
    let ckpt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
    assert_eq!(ckpt["rows_done"], 400);
    assert_same_output(&clean, &out);
    // node-a's progress record did not overwrite node-b's.
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(worker0(&out).join("progress.json")).unwrap()).unwrap();
    assert_eq!((progress["host"].as_str(), progress["state"].as_str()), (Some("node-b"), Some("done")));
}

#[test]
fn a_text_that_runs_out_of_memory_alone_is_retried_once_before_it_counts_as_failed() {
    let dir = tempdir();
    let input = corpus(dir.path(), 60);
    let clean = clean_run(&input, dir.path());
    let out = dir.path().join("out");
    // One text per batch; the first batch runs out of memory (a passing shortage): that text is
    // retried after the others and embedded, nothing fails.
    embed_with(&fixture("qwen2-gqa"), &input, &out, &["--id-column", "id", "--batch-tokens", "1"])
        .args(["--debug-faults", "oom-first=1"])
        .assert()
        .success();
    assert_eq!(read_failures(&out), read_failures(&clean));
    assert_same_output(&clean, &out);
    // Out of memory every time (the first try and the retry): each text is a failure, recorded
    // with its reason, and the run is still complete and sound.
    let always = dir.path().join("always");
    embed_with(&fixture("qwen2-gqa"), &input, &always, &["--id-column", "id", "--batch-tokens", "1"])
        .args(["--debug-faults", "oom-first=100000"])
        .assert()
        .success();
    let failures = read_failures(&always);
    let oom = failures
        .iter()
        .filter(|(_, r)| r.contains("also when retried after the batch budget shrank"))
        .count();
    assert_eq!(oom + read_failures(&clean).len(), 60, "{failures:?}");
    assert!(read_vectors(&always).is_empty());
    verify(&always).success();
}

#[test]
fn a_sigterm_delivered_twice_at_once_is_one_request_and_still_commits() {
    let dir = tempdir();
    let input = corpus(dir.path(), 300);
    let out = dir.path().join("out");
    let log = dir.path().join("log");
    let mut slower = SLOW;
    slower[7] = "600"; // a stop takes up to one chunk: the second signal finds it still running
    let mut child = spawn(&input, &out, &slower, &log);
    wait_for_progress(&mut child, &worker0(&out).join("checkpoint.json"), 0);
    signal(&child, libc::SIGTERM);
    // Apart enough to be two deliveries (the kernel merges signals sent closer than one is
    // handled), close enough to be the same request.
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), INTERRUPTED);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("again at once: taken as the same stop request"), "{stderr}");
    assert!(!stderr.contains("exiting now"), "{stderr}");
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(worker0(&out).join("progress.json")).unwrap()).unwrap();
    assert_eq!(progress["state"], "interrupted");
}
