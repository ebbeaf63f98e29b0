//! Fleets: three workers through each identity source into one folder, one missing then added,
//! `status` (text and JSON) at each step, `verify` at the end; live states (running, stale,
//! interrupted, failed); the status web page in headless Chromium.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use predicates::str::contains;

use crate::util::*;

/// How one identity source names worker `id` of 3: extra flags and environment variables.
type Source = (&'static str, fn(u64) -> (Vec<String>, Vec<(String, String)>), &'static str);

fn sources() -> Vec<Source> {
    fn s(v: &[(&str, String)]) -> Vec<(String, String)> {
        v.iter().map(|(k, x)| (k.to_string(), x.clone())).collect()
    }
    vec![
        (
            "flags",
            |id| (vec!["--worker-id".into(), id.to_string(), "--num-workers".into(), "3".into()], vec![]),
            "--worker-id/--num-workers",
        ),
        (
            "batch-embed variables",
            |id| {
                (
                    vec![],
                    s(&[("BATCH_EMBED_WORKER_ID", id.to_string()), ("BATCH_EMBED_NUM_WORKERS", "3".into())]),
                )
            },
            "--worker-id/--num-workers",
        ),
        (
            "kubernetes",
            |id| {
                (
                    vec![],
                    s(&[("JOB_COMPLETION_INDEX", id.to_string()), ("BATCH_EMBED_NUM_WORKERS", "3".into())]),
                )
            },
            "JOB_COMPLETION_INDEX (Kubernetes)",
        ),
        (
            "slurm",
            |id| {
                (
                    vec![],
                    s(&[
                        ("SLURM_ARRAY_TASK_ID", (id + 1).to_string()),
                        ("SLURM_ARRAY_TASK_MIN", "1".into()),
                        ("SLURM_ARRAY_TASK_MAX", "3".into()),
                        ("SLURM_ARRAY_TASK_COUNT", "3".into()),
                    ]),
                )
            },
            "SLURM_ARRAY_TASK_ID/COUNT (Slurm)",
        ),
        (
            "skypilot",
            |id| (vec![], s(&[("SKYPILOT_NODE_RANK", id.to_string()), ("SKYPILOT_NUM_NODES", "3".into())])),
            "SKYPILOT_NODE_RANK/NUM_NODES (SkyPilot)",
        ),
    ]
}

/// A command with no worker identity inherited from the test's own environment.
pub fn clean_env(cmd: &mut assert_cmd::Command) -> &mut assert_cmd::Command {
    for v in batch_embed::identity::ENGINE_VARIABLES
        .iter()
        .chain(&["BATCH_EMBED_WORKER_ID", "BATCH_EMBED_NUM_WORKERS"])
    {
        cmd.env_remove(v);
    }
    cmd
}

fn status_json(out: &Path) -> serde_json::Value {
    let o = batch_embed().arg("status").arg(out).arg("--json").output().unwrap();
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn three_workers_through_each_identity_source_with_status_and_verify() {
    let dir = tempdir();
    let input = corpus(dir.path(), 90);
    let clean = dir.path().join("clean");
    embed_cmd(&input, &clean, &[]).assert().success();
    for (name, identity, source) in sources() {
        let out = dir.path().join(name.replace(' ', "-"));
        let run = |id: u64| {
            let (flags, env) = identity(id);
            let mut cmd = batch_embed();
            clean_env(&mut cmd);
            cmd.args(["embed", "--model"])
                .arg(fixture("qwen2-gqa"))
                .arg("--output")
                .arg(&out)
                .args(["--stride-block", "8"])
                .args(&flags)
                .envs(env)
                .arg(&input);
            cmd.assert().success().stderr(contains(format!("worker {id} of 3 ({source}")));
        };
        run(0);
        run(2);
        batch_embed()
            .arg("status")
            .arg(&out)
            .assert()
            .failure()
            .stdout(contains("3 workers: 2 done, 0 running, 0 stale, 0 interrupted, 0 failed, 1 not started"))
            .stdout(predicates::str::is_match(r"\n\s+1  not started\s+0\s+32 ").unwrap());
        let s = status_json(&out);
        assert_eq!(s["complete"], false, "{name}");
        assert_eq!(s["not_started"], 1, "{name}");
        assert_eq!(s["workers"][1]["state"], "not started", "{name}");
        assert_eq!(s["rows_owned"], 90, "{name}");
        assert_eq!(s["rows_done"], 58, "{name}: workers 0 and 2 own 32 + 26 rows");
        batch_embed().arg("verify").arg(&out).assert().failure();

        run(1);
        batch_embed().arg("status").arg(&out).assert().success().stdout(contains("90/90 rows (100.0%)"));
        let s = status_json(&out);
        assert_eq!((s["complete"].clone(), s["done"].clone()), (true.into(), 3.into()), "{name}");
        batch_embed().arg("verify").arg(&out).assert().success();
        assert_same_vectors(&read_vectors(&clean), &read_vectors(&out));
    }
}

#[test]
fn conflicting_identity_sources_are_refused() {
    let dir = tempdir();
    let input = corpus(dir.path(), 20);
    let mut cmd = batch_embed();
    clean_env(&mut cmd)
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(dir.path().join("out"))
        .args(["--worker-id", "1", "--num-workers", "3"])
        .env("JOB_COMPLETION_INDEX", "2")
        .arg(&input)
        .assert()
        .failure()
        .stderr(contains(
            "conflicting worker ids: 1 from --worker-id/--num-workers but 2 from JOB_COMPLETION_INDEX",
        ));
    assert!(!dir.path().join("out").exists(), "nothing written");
}

fn spawn(input: &Path, out: &Path, extra: &[&str]) -> Child {
    embed_child(input, out, extra).arg("--quiet").stderr(Stdio::null()).spawn().unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_tells_running_stale_interrupted_and_failed_workers_apart() {
    let dir = tempdir();
    let input = corpus(dir.path(), 200);
    let out = dir.path().join("out");
    let slow = |id: &'static str| {
        [
            "--worker-id",
            id,
            "--num-workers",
            "4",
            "--stride-block",
            "8",
            "--rows-per-part",
            "8",
            "--checkpoint-every",
            "0",
            "--debug-chunk-delay-ms",
            "100",
        ]
    };
    // Worker 0 runs; worker 1 is killed without warning; worker 2 gets SIGTERM; worker 3 fails.
    let mut slower = slow("0");
    slower[11] = "1000";
    let mut running = spawn(&input, &out, &slower);
    // Slow enough that neither finishes before the test stops it, even on a loaded machine.
    let mut one = slow("1");
    one[11] = "300";
    let mut two = slow("2");
    two[11] = "1000";
    let mut killed = spawn(&input, &out, &one);
    let mut stopped = spawn(&input, &out, &two);
    let mut failing = slow("3").to_vec();
    failing.extend(["--debug-faults", "commit=2"]);
    embed_cmd(&input, &out, &failing).assert().failure();
    let state = |id: usize| status_json(&out)["workers"][id]["state"].as_str().unwrap_or("").to_string();
    wait_for("workers to start", || (0..3).all(|i| state(i) == "running"));
    wait_for("worker 1 to commit", || done(&out.join("worker-00001-of-00004/checkpoint.json")) > 0);
    killed.kill().unwrap();
    killed.wait().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(stopped.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(stopped.wait().unwrap().code(), Some(75));
    std::thread::sleep(Duration::from_millis(2100));
    let o = batch_embed().arg("status").arg(&out).args(["--json", "--stale-after", "1"]).output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let states: Vec<&str> = (0..4).map(|i| s["workers"][i]["state"].as_str().unwrap()).collect();
    // Worker 0 keeps beating (every 5 s) but may be between beats: running or stale.
    assert!(["running", "stale"].contains(&states[0]), "{states:?}");
    assert_eq!(&states[1..], ["stale", "interrupted", "failed"], "{s}");
    assert!(s["workers"][3]["error"].as_str().unwrap().contains("no space left"));
    assert_eq!(s["complete"], false);
    let text = batch_embed().arg("status").arg(&out).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("running") && text.contains("interrupted") && text.contains("failed"), "{text}");
    assert!(text.contains("ETA"), "{text}");
    running.kill().unwrap();
    running.wait().unwrap();

    // A checkpoint damaged by hand stops that worker at its next start: status says so.
    std::fs::write(out.join("worker-00002-of-00004/checkpoint.json"), "{\"broken").unwrap();
    let s = status_json(&out);
    assert_eq!(s["workers"][2]["state"], "failed", "{s}");
    assert!(
        s["workers"][2]["error"].as_str().unwrap().contains("is not a checkpoint this version can read"),
        "{s}"
    );
}

/// Writes a finished-looking fleet with long progress histories, so the page has a chart.
fn synthetic_fleet(out: &Path, input: &Path) {
    for id in 0..3u64 {
        embed_cmd(input, out, &["--worker-id", &id.to_string(), "--num-workers", "3", "--stride-block", "8"])
            .assert()
            .success();
        let p = out.join(format!("worker-{id:05}-of-00003/progress.json"));
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let now = v["updated_at"].as_u64().unwrap();
        let history: Vec<(u64, u64)> =
            (0..40).map(|i| (now - 1200 + i * 30, i * i * 3 + i * 50 * (id + 1))).collect();
        v["history"] = serde_json::to_value(history).unwrap();
        std::fs::write(&p, v.to_string()).unwrap();
    }
}

#[test]
fn the_status_page_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| std::process::Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        // .ci/run installs Debian's chromium; a developer machine without it skips this test.
        assert!(
            std::env::var("CI_REQUIRE_CHROMIUM").is_err(),
            "CI_REQUIRE_CHROMIUM is set but chromium is missing"
        );
        eprintln!("skipped: no chromium on PATH");
        return;
    };
    let dir = tempdir();
    let input = corpus(dir.path(), 90);
    let out = dir.path().join("out");
    synthetic_fleet(&out, &input);
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin("batch-embed"))
        .arg("status")
        .arg(&out)
        .args(["--serve", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();

    // The JSON endpoint.
    let json = http_get(&format!("{url}status.json"));
    let s: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(s["done"], 3);
    assert!(s["history"].as_array().unwrap().len() > 10);

    let shot = dir.path().join("page.png");
    let run = |args: &[&str]| {
        std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1000,800",
            ])
            .args(args)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = run(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("id=\"workers\"") && dom.contains("100.0%"), "{dom}");
    assert_eq!(dom.matches("class=\"state done\"").count(), 3, "{dom}");
    assert!(dom.contains("<polyline"), "no chart: {dom}");
    let o = run(&[&format!("--screenshot={}", shot.display())]);
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    server.kill().unwrap();
    server.wait().unwrap();

    // The screenshot shows the page: its size, the chart's blue line and the green bar.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1000, 800));
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let count = |rgb: [u8; 3]| {
        pixels
            .chunks_exact(channels)
            .filter(|p| p[..3].iter().zip(rgb).all(|(a, b)| (*a as i32 - b as i32).abs() <= 12))
            .count()
    };
    let blue = count([0x25, 0x63, 0xeb]);
    let green = count([0x16, 0xa3, 0x4a]);
    assert!(blue > 500, "chart line pixels: {blue}");
    assert!(green > 2000, "progress bar pixels: {green}");
}

fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    use std::io::Write;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200"), "{head}");
    body.to_string()
}

#[test]
fn devices_run_one_worker_per_device_with_the_machines_share() {
    let dir = tempdir();
    let input = corpus(dir.path(), 100);
    let clean = dir.path().join("clean");
    embed_cmd(&input, &clean, &[]).assert().success();
    // One machine, three devices: workers 0..3 of 3.
    let out = dir.path().join("one-machine");
    let mut cmd = embed_cmd(&input, &out, &["--devices", "cpu,cpu,cpu", "--stride-block", "8"]);
    clean_env(&mut cmd).assert().success();
    for w in 0..3 {
        assert!(out.join(format!("worker-{w:05}-of-00003/checkpoint.json")).exists(), "worker {w}");
    }
    batch_embed().arg("verify").arg(&out).assert().success();
    assert_same_vectors(&read_vectors(&clean), &read_vectors(&out));

    // Two machines (Kubernetes indices) of two devices each: workers 2b, 2b+1 of 4.
    let out = dir.path().join("two-machines");
    for machine in ["1", "0"] {
        let mut cmd = embed_cmd(&input, &out, &["--devices", "cpu,cpu", "--stride-block", "8"]);
        clean_env(&mut cmd).env("JOB_COMPLETION_INDEX", machine).env("BATCH_EMBED_NUM_WORKERS", "2");
        cmd.assert().success();
        if machine == "1" {
            let s = status_json(&out);
            let states: Vec<&str> = (0..4).map(|i| s["workers"][i]["state"].as_str().unwrap()).collect();
            assert_eq!(states, ["not started", "not started", "done", "done"]);
        }
    }
    batch_embed().arg("verify").arg(&out).assert().success();
    assert_same_vectors(&read_vectors(&clean), &read_vectors(&out));
}

#[test]
fn the_device_launcher_passes_sigterm_on_and_exits_with_the_resume_code() {
    let dir = tempdir();
    let input = corpus(dir.path(), 200);
    let out = dir.path().join("out");
    let slow =
        ["--devices", "cpu,cpu", "--stride-block", "8", "--rows-per-part", "8", "--checkpoint-every", "0"];
    let mut launcher = embed_child(&input, &out, &slow)
        .args(["--quiet", "--debug-chunk-delay-ms", "200"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("both workers to commit", || {
        (0..2).all(|w| done(&out.join(format!("worker-{w:05}-of-00002/checkpoint.json"))) > 0)
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut launcher, Duration::from_secs(10)), 75);
    let s = status_json(&out);
    assert_eq!(s["interrupted"], 2, "{s}");
    embed_cmd(&input, &out, &["--devices", "cpu,cpu", "--stride-block", "8", "--rows-per-part", "8"])
        .assert()
        .success();
    batch_embed().arg("verify").arg(&out).assert().success();
}

#[test]
fn watch_redraws_until_done_and_status_of_a_non_run_is_an_error() {
    let dir = tempdir();
    let input = corpus(dir.path(), 30);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &[]).assert().success();
    // A finished run: one frame (screen cleared first), exit 0.
    batch_embed()
        .arg("status")
        .arg(&out)
        .args(["--watch", "0.5"])
        .timeout(Duration::from_secs(20))
        .assert()
        .success()
        .stdout(predicates::str::starts_with("\u{1b}[2J\u{1b}[H"))
        .stdout(contains("1 workers: 1 done"));
    batch_embed()
        .arg("status")
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(contains("holds no worker folders"));
}

#[test]
fn device_workers_commit_when_the_whole_process_group_is_signalled_or_the_launcher_dies() {
    use std::os::unix::process::CommandExt;
    let dir = tempdir();
    // 300 rows a worker in chunks of 8, 150 ms each: none can finish before it is stopped, even
    // on a loaded machine.
    let input = corpus(dir.path(), 900);
    let slow = [
        "--devices",
        "cpu,cpu,cpu",
        "--stride-block",
        "8",
        "--rows-per-part",
        "8",
        "--checkpoint-every",
        "0",
    ];
    let folders = |out: &std::path::Path| -> Vec<std::path::PathBuf> {
        (0..3).map(|w| out.join(format!("worker-{w:05}-of-00003"))).collect()
    };
    // 1. SIGTERM to the launcher's whole process group, as Ctrl-C, Slurm and Kubernetes do.
    let out = dir.path().join("group");
    let log = dir.path().join("group.log");
    let mut launcher = embed_child(&input, &out, &slow)
        .args(["--debug-chunk-delay-ms", "150"])
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_for("every worker to commit", || folders(&out).iter().all(|f| done(&f.join("checkpoint.json")) > 0));
    // SAFETY: signalling the process group our child leads.
    assert_eq!(unsafe { libc::kill(-(launcher.id() as libc::pid_t), libc::SIGTERM) }, 0);
    assert_eq!(wait_exit(&mut launcher, Duration::from_secs(20)), 75);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        !stderr.contains("second SIGTERM")
            && !stderr.contains("exiting now")
            && !stderr.contains("again at once"),
        "a worker was signalled twice: {stderr}"
    );
    for f in folders(&out) {
        let progress: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.join("progress.json")).unwrap()).unwrap();
        assert_eq!(progress["state"], "interrupted", "{}: {stderr}", f.display());
        assert_eq!(progress["rows_done"], progress["rows_committed"], "{}", f.display());
    }
    embed_cmd(&input, &out, &slow).assert().success();
    batch_embed().arg("verify").arg(&out).assert().success();

    // 2. The launcher killed outright: its workers are told by the kernel and stop cleanly.
    let out = dir.path().join("orphans");
    let log = dir.path().join("orphans.log");
    let mut launcher = embed_child(&input, &out, &slow)
        .args(["--debug-chunk-delay-ms", "150"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("every worker to commit", || folders(&out).iter().all(|f| done(&f.join("checkpoint.json")) > 0));
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let states = || -> Vec<String> {
        folders(&out)
            .iter()
            .map(|f| {
                std::fs::read_to_string(f.join("progress.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .map_or("none".into(), |p| p["state"].as_str().unwrap_or("?").to_string())
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while states().iter().any(|s| s != "interrupted") {
        assert!(
            Instant::now() < deadline,
            "the workers did not all stop when their launcher died: {:?}\n{}",
            states(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    embed_cmd(&input, &out, &slow).assert().success();
    batch_embed().arg("verify").arg(&out).assert().success();
}
