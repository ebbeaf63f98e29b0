//! examples/slurm: the array script's options, identity and requeue, against stub commands.

use super::*;

/// The `#SBATCH` options: those before the script's first command (sbatch reads no further).
fn sbatch_options(script: &str) -> HashMap<String, String> {
    let mut opts = HashMap::new();
    for line in script.lines().map(str::trim) {
        if let Some(opt) = line.strip_prefix("#SBATCH") {
            let opt = opt.split_whitespace().next().expect("an option after #SBATCH");
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            opts.insert(key.to_string(), value.to_string());
        } else if !line.is_empty() && !line.starts_with('#') {
            break;
        }
    }
    opts
}

/// Task ids of an `--array` value: `0-7`, `0-63%16`, `1,3,5-9:2`.
fn array_tasks(spec: &str) -> Vec<u32> {
    let spec = spec.split('%').next().unwrap();
    let mut ids = Vec::new();
    for part in spec.split(',') {
        let (range, step) = part.split_once(':').unwrap_or((part, "1"));
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (a, b, step): (u32, u32, usize) = (a.parse().unwrap(), b.parse().unwrap(), step.parse().unwrap());
        ids.extend((a..=b).step_by(step));
    }
    ids
}

#[test]
fn slurm_array_parser_reads_the_forms_sbatch_takes() {
    assert_eq!(array_tasks("0-7"), (0..8).collect::<Vec<_>>());
    assert_eq!(array_tasks("0-3%2"), [0, 1, 2, 3]);
    assert_eq!(array_tasks("1,3,5-9:2"), [1, 3, 5, 7, 9]);
}

#[test]
fn slurm_script_is_a_gpu_array_that_requeues() {
    bash_syntax_ok("slurm/embed.sbatch");
    let opts = sbatch_options(&read("slurm/embed.sbatch"));
    let tasks = array_tasks(opts.get("--array").expect("#SBATCH --array"));
    // batch-embed numbers workers from SLURM_ARRAY_TASK_MIN, over SLURM_ARRAY_TASK_COUNT tasks.
    assert_eq!(tasks, (0..8).collect::<Vec<_>>(), "--array=0-7: eight workers, ids 0..7 without gaps");
    assert!(opts.get("--gres").is_some_and(|g| g.starts_with("gpu")), "each task needs a GPU: {opts:?}");
    assert!(opts.contains_key("--requeue"));
    assert_eq!(opts.get("--open-mode").map(String::as_str), Some("append"), "requeued runs keep their log");
    let signal = opts.get("--signal").expect("#SBATCH --signal, a warning before the time limit");
    assert!(
        signal.starts_with("B:") && signal.contains('@'),
        "--signal={signal}: to the batch shell, ahead of time"
    );
    let log = opts.get("--output").expect("#SBATCH --output");
    assert!(log.contains("%a"), "one log per array task: {log}");
}

#[test]
fn slurm_script_takes_identity_from_the_array_and_shares_one_output() {
    let script = read("slurm/embed.sbatch");
    let args = EmbedArgs::from_script(&script, "slurm/embed.sbatch");
    assert_embed_args(&args, "slurm/embed.sbatch");
    assert!(!args.has("--worker-id") && !args.has("--num-workers"), "{:?}", args.0);
    for cmd in shell_commands(&script) {
        for w in &cmd {
            assert!(
                !w.starts_with("BATCH_EMBED_WORKER_ID=") && !w.starts_with("BATCH_EMBED_NUM_WORKERS="),
                "the script must not set the worker identity itself: {cmd:?}"
            );
        }
    }
}

/// Runs examples/slurm/embed.sbatch as Slurm would start array task 4 of 0-7 (job 123), with a
/// stub batch-embed and a stub scontrol that log to `log`.
struct SlurmRun {
    dir: tempfile::TempDir,
}

/// The stub batch-embed: logs its arguments; with FAKE_WAIT_TERM, says it is ready, logs each
/// SIGTERM and exits 75 shortly after the first (as the real one does after saving); otherwise
/// exits FAKE_EXIT.
const FAKE_BATCH_EMBED: &str = r#"echo "args: $*" >> "$FAKE_LOG"
if [[ -n ${FAKE_WAIT_TERM:-} ]]; then
    got=0
    trap 'echo TERM >> "$FAKE_LOG"; got=1' TERM
    : > "$FAKE_READY"
    while [[ $got == 0 ]]; do sleep 0.05; done
    sleep 0.5
    exit 75
fi
exit "${FAKE_EXIT:-0}"
"#;

impl SlurmRun {
    fn new() -> SlurmRun {
        let dir = tempfile::tempdir().unwrap();
        write_script(&dir.path().join("bin/batch-embed"), FAKE_BATCH_EMBED);
        write_script(&dir.path().join("bin/scontrol"), "echo \"scontrol $*\" >> \"$FAKE_LOG\"\n");
        SlurmRun { dir }
    }

    fn command(&self, env: &[(&str, &str)]) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("bash");
        cmd.arg(examples().join("slurm/embed.sbatch"))
            .env("PATH", path_with(&d.join("bin")))
            .env("BATCH_EMBED_BIN", d.join("bin/batch-embed"))
            .env("FAKE_LOG", d.join("log"))
            .env("FAKE_READY", d.join("ready"))
            .env_remove("BATCH_EMBED_WORKER_ID")
            .env_remove("BATCH_EMBED_NUM_WORKERS")
            .env_remove("EMBED_MODEL")
            .env_remove("EMBED_INPUT")
            .env_remove("EMBED_OUTPUT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in [
            ("SLURM_ARRAY_JOB_ID", "123"),
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ] {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn log(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        text.lines().map(String::from).collect()
    }

    /// Starts the script, waits until the stub batch-embed runs, sends `signal` with `kill`
    /// (`-SIG PID`, or `-SIG -- -PGID` for the whole process group), and returns the exit code.
    fn run_and_signal(&self, signal: &str, whole_group: bool) -> Option<i32> {
        use std::os::unix::process::CommandExt;
        let mut child = self.command(&[("FAKE_WAIT_TERM", "1")]).process_group(0).spawn().unwrap();
        let ready = self.dir.path().join("ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the stub batch-embed never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let target = if whole_group { format!("-- -{}", child.id()) } else { child.id().to_string() };
        let sent = Command::new("bash").arg("-c").arg(format!("kill -{signal} {target}")).status().unwrap();
        assert!(sent.success());
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("embed.sbatch did not exit after SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn slurm_script_requeues_only_after_exit_75() {
    let expected_args = "args: embed --model /shared/models/gte-Qwen2-7B-instruct --output \
                         /shared/embeddings/reviews-gte7b --id-column id --text-column text /shared/corpus/reviews";
    for (exit, script_exit, requeued) in [("0", 0, false), ("1", 1, false), ("75", 0, true)] {
        let run = SlurmRun::new();
        let out = run.command(&[("FAKE_EXIT", exit)]).output().unwrap();
        let mut expected = vec![expected_args.to_string()];
        if requeued {
            expected.push("scontrol requeue 123_4".into());
        }
        assert_eq!(run.log(), expected, "batch-embed exiting {exit}");
        assert_eq!(out.status.code(), Some(script_exit), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn slurm_time_limit_warning_becomes_one_sigterm_and_a_requeue() {
    let run = SlurmRun::new();
    let code = run.run_and_signal("USR1", false);
    let log = run.log();
    assert_eq!(log[1..], ["TERM", "scontrol requeue 123_4"], "{log:?}");
    assert_eq!(code, Some(0));
}

#[test]
fn slurm_sigterm_to_the_whole_job_is_not_forwarded_twice_nor_requeued() {
    // scancel and preemption signal every process of the job; a second SIGTERM from the
    // script would make batch-embed exit without finishing its batch.
    let run = SlurmRun::new();
    let code = run.run_and_signal("TERM", true);
    let log = run.log();
    assert_eq!(log[1..], ["TERM"], "exactly one SIGTERM reached batch-embed, and no requeue: {log:?}");
    assert_eq!(code, Some(75));
}

#[test]
fn slurm_script_refuses_a_partial_array_or_an_explicit_identity() {
    for env in [
        &[("SLURM_ARRAY_TASK_MIN", "3"), ("SLURM_ARRAY_TASK_MAX", "3"), ("SLURM_ARRAY_TASK_COUNT", "1")][..],
        &[("BATCH_EMBED_NUM_WORKERS", "8")],
    ] {
        let run = SlurmRun::new();
        let out = run.command(env).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{env:?} should be refused");
        assert!(run.log().is_empty(), "{env:?}: batch-embed must not start");
    }
}
