//! examples/kubernetes: the Indexed Jobs (buckets direct, and claims mounted).

use super::*;

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
