//! The fleet launch files in examples/ (SkyPilot, Kubernetes, Slurm): parsed, and checked for
//! what decides whether a many-worker run comes out right: every worker gets its own identity
//! but the same `--output`, a preempted or interrupted worker (exit 75) is restarted without
//! counting as a failure, and nothing passes `--restart`. SkyPilot and Kubernetes come in two
//! variants each: buckets read and written directly, and buckets or claims mounted. The two shell
//! scripts are also run against stub `sky`, `scontrol` and `batch-embed` commands.

#![cfg(unix)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use yaml_rust2::{Yaml, YamlLoader};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn read(rel: &str) -> String {
    let path = examples().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn yaml_doc(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} should hold one YAML document");
    docs.remove(0)
}

/// `y` at a path of mapping keys and sequence indices (all-digit segments); panics naming the
/// path when something is missing, so a failing check says which field.
fn at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    let mut cur = y;
    for (i, key) in path.iter().enumerate() {
        cur = match key.parse::<usize>() {
            Ok(index) => &cur[index],
            Err(_) => &cur[*key],
        };
        assert!(!cur.is_badvalue(), "missing field {}", path[..=i].join("."));
    }
    cur
}

fn str_at<'a>(y: &'a Yaml, path: &[&str]) -> &'a str {
    at(y, path).as_str().unwrap_or_else(|| panic!("{} should be a string", path.join(".")))
}

fn int_at(y: &Yaml, path: &[&str]) -> i64 {
    at(y, path).as_i64().unwrap_or_else(|| panic!("{} should be an integer", path.join(".")))
}

fn vec_at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Vec<Yaml> {
    at(y, path).as_vec().unwrap_or_else(|| panic!("{} should be a list", path.join(".")))
}

/// A scalar as text, whatever YAML type it was read as (`"8"` and `8` both give "8").
fn scalar_text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading shell: enough of it for the scripts here.

/// The simple commands of a shell script, as words: continuation lines joined, comments and
/// here-documents dropped, quotes removed (variables stay as written), split at newlines and at
/// `;`, `&`, `|`. `$(...)` is kept whole inside its word.
fn shell_commands(script: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = script.chars().collect();
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut heredoc: Option<String> = None;
    let mut i = 0;

    fn end_word(words: &mut Vec<String>, word: &mut String, in_word: &mut bool) {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    }
    fn end_command(commands: &mut Vec<Vec<String>>, words: &mut Vec<String>) {
        if !words.is_empty() {
            commands.push(std::mem::take(words));
        }
    }

    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if chars.get(i + 1) == Some(&'\n') => i += 2,
            '\\' => {
                if let Some(&next) = chars.get(i + 1) {
                    word.push(next);
                }
                in_word = true;
                i += 2;
            }
            '\'' => {
                let close = chars[i + 1..].iter().position(|&ch| ch == '\'').expect("unclosed ' quote");
                word.extend(&chars[i + 1..i + 1 + close]);
                in_word = true;
                i += close + 2;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`')) {
                        i += 1;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
                assert!(i < chars.len(), "unclosed \" quote");
                in_word = true;
                i += 1;
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                let mut depth = 0;
                while i < chars.len() {
                    word.push(chars[i]);
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                    if depth == 0 && chars[i - 1] == ')' {
                        break;
                    }
                }
                in_word = true;
            }
            '#' if !in_word => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ' ' | '\t' => {
                end_word(&mut words, &mut word, &mut in_word);
                i += 1;
            }
            '\n' | ';' | '&' | '|' => {
                end_word(&mut words, &mut word, &mut in_word);
                if let Some(w) = words.iter().find(|w| w.starts_with("<<")) {
                    let delim = w.trim_start_matches("<<").trim_start_matches('-').to_string();
                    heredoc = Some(delim);
                }
                end_command(&mut commands, &mut words);
                i += 1;
                if c == '\n' {
                    if let Some(delim) = heredoc.take() {
                        // Skip the here-document's lines, up to and including the delimiter.
                        loop {
                            let end =
                                chars[i..].iter().position(|&ch| ch == '\n').map_or(chars.len(), |p| i + p);
                            let line: String = chars[i..end].iter().collect();
                            i = end + 1;
                            if line.trim() == delim || i >= chars.len() {
                                break;
                            }
                        }
                    }
                }
            }
            _ => {
                word.push(c);
                in_word = true;
                i += 1;
            }
        }
    }
    end_word(&mut words, &mut word, &mut in_word);
    end_command(&mut commands, &mut words);
    commands
}

/// Expands `$NAME`, `${NAME}` and `${NAME:-default}` from `vars`; unknown names stay as written
/// (a `:-` default is used instead where there is one).
fn expand(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').expect("unclosed ${");
            let body = &inner[..close];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            match (vars.get(name), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(&expand(d, vars)),
                (None, None) => out.push_str(&rest[pos..pos + 3 + close]),
            }
            rest = &inner[close + 1..];
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            match vars.get(&after[..len]) {
                Some(v) if len > 0 => out.push_str(v),
                _ => out.push_str(&rest[pos..pos + 1 + len]),
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

/// The script's commands with its own plain assignments (`NAME=value`, in order) expanded.
fn expanded_commands(script: &str) -> Vec<Vec<String>> {
    let mut vars = HashMap::new();
    let mut out = Vec::new();
    for cmd in shell_commands(script) {
        let cmd: Vec<String> = cmd.iter().map(|w| expand(w, &vars)).collect();
        if let [only] = cmd.as_slice() {
            if let Some((name, value)) = only.split_once('=') {
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    vars.insert(name.to_string(), value.to_string());
                }
            }
        }
        out.push(cmd);
    }
    out
}

/// Flags of `batch-embed embed` that take no value.
const SWITCHES: &[&str] = &["--restart", "--no-normalize", "--quiet", "-q"];

/// The arguments after `embed` of a `batch-embed embed` command.
#[derive(Debug)]
struct EmbedArgs(Vec<String>);

impl EmbedArgs {
    /// Finds the one `… batch-embed embed …` command among `commands`.
    fn find(commands: &[Vec<String>], what: &str) -> EmbedArgs {
        let found: Vec<EmbedArgs> = commands
            .iter()
            .filter_map(|cmd| {
                let pos = cmd.windows(2).position(|w| w[0].ends_with("batch-embed") && w[1] == "embed")?;
                Some(EmbedArgs(cmd[pos + 2..].to_vec()))
            })
            .collect();
        match <[EmbedArgs; 1]>::try_from(found) {
            Ok([args]) => args,
            Err(found) => panic!("{what}: expected one `batch-embed embed` command, found {found:?}"),
        }
    }

    fn from_script(script: &str, what: &str) -> EmbedArgs {
        EmbedArgs::find(&expanded_commands(script), what)
    }

    /// Every value given to `flag`, as `--flag V` or `--flag=V`.
    fn values(&self, flag: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            if a == flag {
                out.push(it.next().map_or("", String::as_str));
            } else if let Some(v) = a.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
                out.push(v);
            }
        }
        out
    }

    /// The one value of `flag`; panics when it is missing or given twice.
    fn value(&self, flag: &str) -> &str {
        match self.values(flag).as_slice() {
            [v] => v,
            other => panic!("expected {flag} once in {:?}, found {other:?}", self.0),
        }
    }

    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    }

    /// The inputs: words that are neither flags nor a flag's value.
    fn inputs(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            if a.starts_with('-') {
                if !a.contains('=') && !SWITCHES.contains(&a.as_str()) {
                    it.next();
                }
            } else {
                out.push(a.as_str());
            }
        }
        out
    }
}

/// What every example must get right about the one command all its workers run.
fn check_embed_args(args: &EmbedArgs) -> Result<(), String> {
    if args.has("--restart") {
        return Err("passes --restart: a rerun would throw away finished work instead of resuming".into());
    }
    let outputs = args.values("--output");
    let [output] = outputs.as_slice() else {
        return Err(format!("needs --output exactly once, has {outputs:?}"));
    };
    // One literal path or bucket URL for every worker: a variable left in it (a worker id, a
    // node rank, ...) would scatter the workers over different folders.
    let fixed = output.starts_with('/') || is_bucket_url(output);
    if !fixed || output.contains(['$', '%', '{', '`']) {
        return Err(format!(
            "--output {output:?} is not one fixed absolute path or bucket URL shared by all workers"
        ));
    }
    if args.values("--model").len() != 1 {
        return Err("needs --model exactly once".into());
    }
    if args.inputs().is_empty() {
        return Err("names no input".into());
    }
    Ok(())
}

/// A URL batch-embed reads and writes itself.
fn is_bucket_url(s: &str) -> bool {
    ["s3://", "gs://", "az://"].iter().any(|p| s.strip_prefix(p).is_some_and(|rest| rest.len() > 1))
}

fn assert_embed_args(args: &EmbedArgs, what: &str) {
    if let Err(e) = check_embed_args(args) {
        panic!("{what}: the embed command {e}: {:?}", args.0);
    }
}

#[test]
fn shell_reader_finds_the_embed_command_and_the_checks_can_fail() {
    let script = "#!/bin/bash\nOUT=/data/out  # where\nBIN=${BIN:-/opt/batch-embed}\n\
                  cat <<EOF\nnot a 'command\nEOF\n\"$BIN\" embed --model /m \\\n  --output \"$OUT\" --restart /in &\n";
    let args = EmbedArgs::from_script(script, "sample");
    assert_eq!(args.0, ["--model", "/m", "--output", "/data/out", "--restart", "/in"]);
    assert_eq!(args.inputs(), ["/in"]);
    assert!(check_embed_args(&args).unwrap_err().contains("--restart"));

    for bad_output in ["/data/out/$WORKER_ID", "out", "/data/${SLURM_ARRAY_TASK_ID}", "/logs/%a"] {
        let args = EmbedArgs(vec![
            "--model".into(),
            "/m".into(),
            "--output".into(),
            bad_output.into(),
            "/in".into(),
        ]);
        assert!(check_embed_args(&args).is_err(), "{bad_output} should be refused");
    }
    let good = EmbedArgs(vec!["--model=/m".into(), "--output=/data/out".into(), "/in".into()]);
    assert_eq!(check_embed_args(&good), Ok(()));
    let bucket = EmbedArgs(vec!["--model=/m".into(), "--output=s3://b/out".into(), "s3://b/in".into()]);
    assert_eq!(check_embed_args(&bucket), Ok(()));
    for bad_output in ["s3://b/out-$WORKER_ID", "s3://", "http://b/out"] {
        let args = EmbedArgs(vec!["--model=/m".into(), format!("--output={bad_output}"), "/in".into()]);
        assert!(check_embed_args(&args).is_err(), "{bad_output} should be refused");
    }
}

fn bash_syntax_ok(rel: &str) {
    let out = Command::new("bash").arg("-n").arg(examples().join(rel)).output().expect("bash runs");
    assert!(out.status.success(), "bash -n {rel}: {}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// The two Kubernetes variants: buckets read and written directly, and claims mounted.
const KUBERNETES_JOBS: [&str; 2] = ["kubernetes/embed-job.yaml", "kubernetes/embed-job-pvc.yaml"];

/// The Job of a file that may hold other documents too (a ServiceAccount).
fn job_doc(rel: &str) -> Yaml {
    let mut jobs: Vec<Yaml> =
        yaml_docs(rel).into_iter().filter(|d| d["kind"].as_str() == Some("Job")).collect();
    assert_eq!(jobs.len(), 1, "{rel} should hold one Job");
    jobs.remove(0)
}

#[test]
fn kubernetes_job_is_indexed_with_one_worker_count() {
    for rel in KUBERNETES_JOBS {
        kubernetes_job_is_indexed(rel);
    }
}

fn kubernetes_job_is_indexed(rel: &str) {
    let job = job_doc(rel);
    assert_eq!(str_at(&job, &["apiVersion"]), "batch/v1");
    assert_eq!(str_at(&job, &["kind"]), "Job");
    let spec = at(&job, &["spec"]);
    assert_eq!(str_at(spec, &["completionMode"]), "Indexed");
    let completions = int_at(spec, &["completions"]);
    assert!(completions >= 2, "a fleet example should have several workers");
    assert_eq!(int_at(spec, &["parallelism"]), completions, "as shipped, every worker runs at once");

    let pod = at(spec, &["template", "spec"]);
    let containers = vec_at(pod, &["containers"]);
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let env = vec_at(c, &["env"]);
    let env_value = |name: &str| {
        env.iter().find(|e| e["name"].as_str() == Some(name)).map(|e| scalar_text(&e["value"]).unwrap())
    };
    assert_eq!(
        env_value("BATCH_EMBED_NUM_WORKERS"),
        Some(completions.to_string()),
        "BATCH_EMBED_NUM_WORKERS must equal completions, or rows go unowned or owned twice"
    );
    // The worker id must come from JOB_COMPLETION_INDEX, which differs per pod.
    assert_eq!(
        env_value("BATCH_EMBED_WORKER_ID"),
        None,
        "a fixed worker id would give every pod the same rows"
    );
    let args = kubernetes_embed_args(c, rel);
    assert_embed_args(&args, rel);
    assert!(
        !args.has("--worker-id") && !args.has("--num-workers"),
        "identity comes from the Job: {:?}",
        args.0
    );

    let gpus = scalar_text(at(c, &["resources", "limits", "nvidia.com/gpu"])).unwrap();
    assert!(gpus.parse::<u32>().unwrap() >= 1, "each pod needs a GPU");
}

fn kubernetes_embed_args(container: &Yaml, rel: &str) -> EmbedArgs {
    let words: Vec<String> = ["command", "args"]
        .iter()
        .filter_map(|k| container[*k].as_vec())
        .flatten()
        .map(|w| scalar_text(w).expect("command and args are scalars"))
        .collect();
    EmbedArgs::find(&[words], rel)
}

#[test]
fn kubernetes_preempted_or_interrupted_pods_restart_without_counting_as_failures() {
    for rel in KUBERNETES_JOBS {
        kubernetes_pods_restart_after_preemption(rel);
    }
}

fn kubernetes_pods_restart_after_preemption(rel: &str) {
    let job = job_doc(rel);
    let spec = at(&job, &["spec"]);
    assert!(int_at(spec, &["backoffLimitPerIndex"]) >= 1, "genuine failures deserve a retry");
    let max_failed = int_at(spec, &["maxFailedIndexes"]);
    assert!((0..=int_at(spec, &["completions"])).contains(&max_failed));
    assert_eq!(str_at(spec, &["podReplacementPolicy"]), "Failed", "one pod per index at a time");

    let pod = at(spec, &["template", "spec"]);
    assert_eq!(str_at(pod, &["restartPolicy"]), "Never", "required by backoffLimitPerIndex");
    assert!(int_at(pod, &["terminationGracePeriodSeconds"]) >= 30, "batch-embed needs time to save");
    let container_name = str_at(pod, &["containers", "0", "name"]);

    let rules = vec_at(spec, &["podFailurePolicy", "rules"]);
    let ignores_disruption = rules.iter().any(|r| {
        r["action"].as_str() == Some("Ignore")
            && r["onPodConditions"]
                .as_vec()
                .is_some_and(|cs| cs.iter().any(|c| c["type"].as_str() == Some("DisruptionTarget")))
    });
    assert!(ignores_disruption, "evicted or preempted pods must not count as failures");
    let ignores_75 = rules.iter().any(|r| {
        let codes = &r["onExitCodes"];
        r["action"].as_str() == Some("Ignore")
            && codes["operator"].as_str() == Some("In")
            && codes["values"].as_vec().is_some_and(|v| v.contains(&Yaml::Integer(75)))
            && (codes["containerName"].is_badvalue()
                || codes["containerName"].as_str() == Some(container_name))
    });
    assert!(ignores_75, "exit 75 (interrupted after saving) must restart the index, not fail it");
}

#[test]
fn kubernetes_direct_variant_reads_and_writes_buckets_with_the_pods_service_account() {
    let rel = "kubernetes/embed-job.yaml";
    let job = job_doc(rel);
    let pod = at(&job, &["spec", "template", "spec"]);
    let c = at(pod, &["containers", "0"]);
    let args = kubernetes_embed_args(c, rel);
    assert!(is_bucket_url(args.value("--output")), "{rel}: the output should be a bucket URL");
    assert!(args.inputs().iter().all(|i| is_bucket_url(i)), "{rel}: inputs should be bucket URLs");
    // Credentials from the pod's service account, which the file defines.
    let account = str_at(pod, &["serviceAccountName"]);
    let defined = yaml_docs(rel).iter().any(|d| {
        d["kind"].as_str() == Some("ServiceAccount") && d["metadata"]["name"].as_str() == Some(account)
    });
    assert!(defined, "{rel}: no ServiceAccount {account}");
    // No claim at all; the model (read whole at start-up) is copied to the pod's disk first.
    let volumes = vec_at(pod, &["volumes"]);
    assert!(volumes.iter().all(|v| v["persistentVolumeClaim"].is_badvalue()), "{rel}: no claims");
    let model = args.value("--model");
    let mount = vec_at(c, &["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(model))
        .unwrap_or_else(|| panic!("{rel}: nothing is mounted at {model}"));
    let volume = str_at(mount, &["name"]);
    assert!(
        volumes.iter().any(|v| v["name"].as_str() == Some(volume) && !v["emptyDir"].is_badvalue()),
        "{rel}: the model lives on an emptyDir"
    );
    let fills = vec_at(pod, &["initContainers"]).iter().any(|i| {
        i["volumeMounts"].as_vec().is_some_and(|ms| ms.iter().any(|m| m["name"].as_str() == Some(volume)))
            && i["args"].as_vec().is_some_and(|a| a.iter().any(|w| w.as_str().is_some_and(is_bucket_url)))
    });
    assert!(fills, "{rel}: an init container copies the model from its bucket");
}

#[test]
fn kubernetes_output_is_one_shared_writable_claim_and_inputs_are_read_only() {
    let rel = "kubernetes/embed-job-pvc.yaml";
    let job = job_doc(rel);
    let pod = at(&job, &["spec", "template", "spec"]);
    let c = at(pod, &["containers", "0"]);
    let args = kubernetes_embed_args(c, rel);
    assert_embed_args(&args, rel);

    let mounts = vec_at(c, &["volumeMounts"]);
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("nothing is mounted at {path}, which the embed command uses"))
    };
    let volume_of = |name: &str| {
        vec_at(pod, &["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    };

    let out = mount_of(args.value("--output"));
    assert_ne!(out["readOnly"].as_bool(), Some(true), "the output mount must be writable");
    let out_volume = volume_of(str_at(out, &["name"]));
    assert_ne!(out_volume["persistentVolumeClaim"]["readOnly"].as_bool(), Some(true));
    let claim = str_at(out_volume, &["persistentVolumeClaim", "claimName"]);

    for path in args.inputs().into_iter().chain([args.value("--model")]) {
        assert_eq!(mount_of(path)["readOnly"].as_bool(), Some(true), "{path} should be mounted read-only");
    }

    // Pods on different nodes write the same folder: the claim must be ReadWriteMany.
    let pvcs = yaml_docs("kubernetes/pvc.yaml");
    let pvc = pvcs
        .iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(claim))
        .unwrap_or_else(|| panic!("kubernetes/pvc.yaml does not define the claim {claim}"));
    assert_eq!(str_at(pvc, &["kind"]), "PersistentVolumeClaim");
    assert!(vec_at(pvc, &["spec", "accessModes"]).contains(&Yaml::String("ReadWriteMany".into())));
}

// ---------------------------------------------------------------------------------------------
// SkyPilot

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

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
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

// ---------------------------------------------------------------------------------------------
// Slurm

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
