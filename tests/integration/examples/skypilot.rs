//! examples/skypilot: the tasks (buckets direct, and mounted) and launch.sh against a stub `sky`.

use super::*;

/// The two SkyPilot variants: buckets read and written directly, and buckets mounted.
const SKYPILOT_TASKS: [&str; 2] = ["skypilot/embed.yaml", "skypilot/embed-mount.yaml"];

/// The embed command of a task's `run`, with the task's own `envs` expanded (all but the
/// worker's identity, which launch.sh sets per job).
fn skypilot_embed_args(task: &Yaml, rel: &str) -> EmbedArgs {
    let mut vars = HashMap::new();
    if let Some(envs) = task["envs"].as_hash() {
        for (k, v) in envs {
            if let (Some(k), Some(v)) = (k.as_str(), scalar_text(v)) {
                vars.insert(k.to_string(), v);
            }
        }
    }
    let args = EmbedArgs::from_script(str_at(task, &["run"]), rel);
    EmbedArgs(args.0.iter().map(|w| expand(w, &vars)).collect())
}

#[test]
fn skypilot_task_is_one_spot_worker_on_any_of_several_gpus() {
    for rel in SKYPILOT_TASKS {
        let task = yaml_doc(rel);
        let res = at(&task, &["resources"]);
        assert_eq!(at(res, &["use_spot"]).as_bool(), Some(true));
        let mut gpus: Vec<&str> = vec_at(res, &["any_of"])
            .iter()
            .map(|r| str_at(r, &["accelerators"]))
            .map(|a| a.split(':').next().unwrap())
            .collect();
        gpus.sort_unstable();
        gpus.dedup();
        assert!(gpus.len() >= 2, "{rel}: several GPU types widen the spot pool: {gpus:?}");
        assert!(task["num_nodes"].is_badvalue() || int_at(&task, &["num_nodes"]) == 1, "one node per worker");

        let recovery = at(res, &["job_recovery"]);
        assert!(["FAILOVER", "EAGER_NEXT_REGION"].contains(&str_at(recovery, &["strategy"])));
        assert!(int_at(recovery, &["max_restarts_on_errors"]) >= 1);
        let codes = at(recovery, &["recover_on_exit_codes"]);
        let recovers_75 =
            codes.as_i64() == Some(75) || codes.as_vec().is_some_and(|v| v.contains(&Yaml::Integer(75)));
        assert!(recovers_75, "{rel}: exit 75 (interrupted after saving) should always be recovered");
    }
}

#[test]
fn skypilot_worker_identity_comes_from_the_launcher() {
    for rel in SKYPILOT_TASKS {
        let task = yaml_doc(rel);
        let envs = at(&task, &["envs"]);
        for name in ["WORKER_ID", "NUM_WORKERS"] {
            // Declared without a value: `sky jobs launch` then refuses to start unless --env sets it.
            assert!(
                at(envs, &[name]).is_null(),
                "{rel}: envs.{name} should be declared empty, set by launch.sh"
            );
        }
        let args = skypilot_embed_args(&task, rel);
        assert!(["$WORKER_ID", "${WORKER_ID}"].contains(&args.value("--worker-id")));
        assert!(["$NUM_WORKERS", "${NUM_WORKERS}"].contains(&args.value("--num-workers")));
    }
}

fn uploads_binary(task: &Yaml) -> bool {
    let mounts = at(task, &["file_mounts"]);
    mounts.as_hash().unwrap().values().any(|v| v.as_str() == Some("target/cuda/batch-embed"))
}

#[test]
fn skypilot_direct_variant_reads_and_writes_buckets_without_mounts() {
    let rel = "skypilot/embed.yaml";
    let task = yaml_doc(rel);
    let args = skypilot_embed_args(&task, rel);
    assert_embed_args(&args, rel);
    assert!(is_bucket_url(args.value("--output")), "{rel}: the output should be a bucket URL");
    assert!(args.inputs().iter().all(|i| is_bucket_url(i)), "{rel}: inputs should be bucket URLs");
    let mounts = at(&task, &["file_mounts"]);
    let mounted: Vec<&str> = mounts.as_hash().unwrap().keys().filter_map(|k| k.as_str()).collect();
    for path in args.inputs().into_iter().chain([args.value("--output")]) {
        assert!(!mounted.contains(&path), "{rel}: {path} is read directly, not mounted");
    }
    // The model is read whole at start-up: copied to local disk.
    let model = at(mounts, &[args.value("--model")]);
    assert_eq!(str_at(model, &["mode"]), "COPY", "{rel}: the model should be copied to local disk");
    assert!(uploads_binary(&task), "the task should upload the CUDA build from target/cuda/batch-embed");
}

#[test]
fn skypilot_mount_variant_output_is_a_writable_shared_bucket_mount() {
    let rel = "skypilot/embed-mount.yaml";
    let task = yaml_doc(rel);
    let args = skypilot_embed_args(&task, rel);
    assert_embed_args(&args, rel);
    let mounts = at(&task, &["file_mounts"]);
    let mount = |path: &str| at(mounts, &[path]);

    let out = mount(args.value("--output"));
    let source = str_at(out, &["source"]);
    assert!(source.contains("://") || source.starts_with("${"), "the output should be a bucket: {source}");
    // COPY is a read-only snapshot; MOUNT and MOUNT_CACHED write back to the bucket.
    assert!(["MOUNT", "MOUNT_CACHED"].contains(&str_at(out, &["mode"])));
    assert_ne!(out["config"]["mount"]["read_only"].as_bool(), Some(true));

    mount(args.value("--model"));
    for input in args.inputs() {
        mount(input);
    }
    assert!(uploads_binary(&task), "the task should upload the CUDA build from target/cuda/batch-embed");
}

#[test]
fn skypilot_launch_script_passes_bash_syntax_and_the_worker_count() {
    bash_syntax_ok("skypilot/launch.sh");
    let script = read("skypilot/launch.sh");
    let launches: Vec<Vec<String>> = shell_commands(&script)
        .into_iter()
        .filter(|c| c.starts_with(&["sky".into(), "jobs".into()]))
        .collect();
    assert_eq!(launches.len(), 1, "one `sky jobs launch` line, inside the loop");
    let words = &launches[0];
    assert!(words.iter().any(|w| w.starts_with("NUM_WORKERS=")), "{words:?}");
    assert!(words.iter().any(|w| w.starts_with("WORKER_ID=")), "{words:?}");
    assert!(!words.iter().any(|w| w == "--restart"));
}

/// A copy of examples/skypilot with a stub `sky` first on PATH that logs its arguments, and a
/// stand-in for the CUDA binary when `with_binary`.
struct SkyStub {
    dir: tempfile::TempDir,
}

impl SkyStub {
    fn new(with_binary: bool) -> SkyStub {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("examples/skypilot")).unwrap();
        for f in ["launch.sh", "embed.yaml", "embed-mount.yaml"] {
            std::fs::copy(examples().join("skypilot").join(f), root.join("examples/skypilot").join(f))
                .unwrap();
        }
        if with_binary {
            std::fs::create_dir_all(root.join("target/cuda")).unwrap();
            std::fs::write(root.join("target/cuda/batch-embed"), "").unwrap();
        }
        write_script(&root.join("bin/sky"), "printf '%s\\n' \"$*\" >> \"$SKY_LOG\"\n");
        SkyStub { dir }
    }

    fn launch(&self, args: &[&str]) -> (Output, Vec<String>) {
        let root = self.dir.path();
        let log = root.join("sky.log");
        let out = Command::new("bash")
            .arg(root.join("examples/skypilot/launch.sh"))
            .args(args)
            .env("PATH", path_with(&root.join("bin")))
            .env("SKY_LOG", &log)
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(&log).unwrap_or_default().lines().map(String::from).collect();
        (out, calls)
    }
}

#[test]
fn skypilot_launch_starts_one_managed_job_per_worker() {
    let stub = SkyStub::new(true);
    let (out, calls) = stub.launch(&["3"]);
    assert!(out.status.success(), "launch.sh 3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let task = stub.dir.path().join("examples/skypilot/embed.yaml");
    let expected: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "jobs launch -y --async -n embed-w{i} --env WORKER_ID={i} --env NUM_WORKERS=3 {}",
                task.display()
            )
        })
        .collect();
    assert_eq!(calls, expected, "workers 0..N-1, each told N");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sky jobs queue"), "it says how to watch");

    // The mount variant, named as the second argument.
    let stub = SkyStub::new(true);
    let mount = stub.dir.path().join("examples/skypilot/embed-mount.yaml");
    let (out, calls) = stub.launch(&["2", &mount.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.ends_with(&mount.display().to_string())), "{calls:?}");
}

#[test]
fn skypilot_launch_refuses_a_bad_count_or_a_missing_binary() {
    let stub = SkyStub::new(true);
    for bad in [&[][..], &["0"], &["x"], &["-1"], &["2", "no-such.yaml"]] {
        let (out, calls) = stub.launch(bad);
        assert_eq!(out.status.code(), Some(2), "launch.sh {bad:?} should be refused");
        assert!(calls.is_empty(), "launch.sh {bad:?} must launch nothing");
    }
    let (out, calls) = SkyStub::new(false).launch(&["2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/build-cuda.sh"));
    assert!(calls.is_empty());
}
