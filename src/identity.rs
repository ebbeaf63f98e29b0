//! Which worker this process is: from `--worker-id`/`--num-workers` (or `BATCH_EMBED_WORKER_ID` /
//! `BATCH_EMBED_NUM_WORKERS`), else from the launcher's own environment, so the same command
//! line serves every worker of a fleet:
//!
//! - Kubernetes Indexed Job: `JOB_COMPLETION_INDEX` (the count must come from `--num-workers`
//!   or `BATCH_EMBED_NUM_WORKERS`: a pod is not told the Job's completions);
//! - Slurm job array: `SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`
//!   (the array must be contiguous: `--array=0-7` or `1-8`, not `0-14:2`);
//! - SkyPilot multi-node task: `SKYPILOT_NODE_RANK` of `SKYPILOT_NUM_NODES` (ignored for a
//!   one-node task, where SkyPilot always sets rank 0 of 1).
//!
//! Sources that are present must agree; a disagreement is an error naming both.

use anyhow::{bail, Result};

/// The worker's place in the fleet and where it came from (printed at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub worker_id: u64,
    pub num_workers: u64,
    pub source: String,
}

/// Engine variables that name a worker; a launcher of several workers removes them from its
/// children's environment (it passes explicit flags instead).
pub const ENGINE_VARIABLES: &[&str] = &[
    "JOB_COMPLETION_INDEX",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SKYPILOT_NODE_RANK",
    "SKYPILOT_NUM_NODES",
];

struct Claim {
    source: &'static str,
    id: Option<u64>,
    count: Option<u64>,
}

/// Resolves the identity from the explicit values (flags or `BATCH_EMBED_*`, already merged by
/// clap) and the environment `env`.
pub fn resolve(
    worker_id: Option<u64>,
    num_workers: Option<u64>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Identity> {
    let number = |name: &str| -> Result<Option<u64>> {
        match env(name) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => match v.trim().parse() {
                Ok(n) => Ok(Some(n)),
                Err(_) => bail!("{name}={v:?} is not a whole number"),
            },
        }
    };
    let mut claims = Vec::new();
    if worker_id.is_some() || num_workers.is_some() {
        claims.push(Claim { source: "--worker-id/--num-workers", id: worker_id, count: num_workers });
    }
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        claims.push(Claim { source: "JOB_COMPLETION_INDEX (Kubernetes)", id: Some(index), count: None });
    }
    if let Some(task) = number("SLURM_ARRAY_TASK_ID")? {
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let Some(count) = number("SLURM_ARRAY_TASK_COUNT")? else {
            bail!("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --worker-id and --num-workers");
        };
        if let Some(max) = number("SLURM_ARRAY_TASK_MAX")? {
            if max < min || max - min + 1 != count {
                bail!(
                    "the Slurm array {min}-{max} has {count} tasks, not one per index: use a contiguous array (--array={min}-{}) or pass --worker-id and --num-workers",
                    min + count - 1
                );
            }
        }
        if task < min {
            bail!("SLURM_ARRAY_TASK_ID {task} is below SLURM_ARRAY_TASK_MIN {min}");
        }
        claims.push(Claim {
            source: "SLURM_ARRAY_TASK_ID/COUNT (Slurm)",
            id: Some(task - min),
            count: Some(count),
        });
    }
    if let (Some(rank), Some(nodes)) = (number("SKYPILOT_NODE_RANK")?, number("SKYPILOT_NUM_NODES")?) {
        if nodes > 1 {
            claims.push(Claim {
                source: "SKYPILOT_NODE_RANK/NUM_NODES (SkyPilot)",
                id: Some(rank),
                count: Some(nodes),
            });
        }
    }

    let agree = |what: &str, pick: &dyn Fn(&Claim) -> Option<u64>| -> Result<Option<(u64, &'static str)>> {
        let mut found: Option<(u64, &'static str)> = None;
        for c in &claims {
            if let Some(v) = pick(c) {
                match found {
                    Some((w, source)) if w != v => bail!(
                        "conflicting {what}: {w} from {source} but {v} from {}; set only one, or make them agree",
                        c.source
                    ),
                    Some(_) => {}
                    None => found = Some((v, c.source)),
                }
            }
        }
        Ok(found)
    };
    let id = agree("worker ids", &|c| c.id)?;
    let count = agree("worker counts", &|c| c.count)?;
    let identity = match (id, count) {
        (None, None) => Identity { worker_id: 0, num_workers: 1, source: "no worker id given".into() },
        (Some((id, source)), None) => {
            if id != 0 || !source.starts_with("--") {
                bail!(
                    "worker id {id} comes from {source} but the worker count is not given: pass --num-workers or set BATCH_EMBED_NUM_WORKERS"
                );
            }
            Identity { worker_id: 0, num_workers: 1, source: source.into() }
        }
        (None, Some((n, source))) => {
            if n != 1 {
                bail!(
                    "{n} workers ({source}) but no worker id: pass --worker-id or set BATCH_EMBED_WORKER_ID (Kubernetes, Slurm arrays and SkyPilot set it for you)"
                );
            }
            Identity { worker_id: 0, num_workers: 1, source: source.into() }
        }
        (Some((id, id_source)), Some((n, n_source))) => Identity {
            worker_id: id,
            num_workers: n,
            source: if id_source == n_source {
                id_source.into()
            } else {
                format!("{id_source} and {n_source}")
            },
        },
    };
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)], id: Option<u64>, n: Option<u64>) -> Result<Identity> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(id, n, &|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn flags_and_nothing() {
        assert_eq!(with(&[], None, None).unwrap().num_workers, 1);
        let i = with(&[], Some(2), Some(5)).unwrap();
        assert_eq!((i.worker_id, i.num_workers), (2, 5));
        assert!(with(&[], None, Some(5)).unwrap_err().to_string().contains("no worker id"));
        assert!(with(&[], Some(3), None).unwrap_err().to_string().contains("worker count is not given"));
        // SkyPilot's one-node variables are always there and mean nothing.
        let i = with(&[("SKYPILOT_NODE_RANK", "0"), ("SKYPILOT_NUM_NODES", "1")], Some(4), Some(8)).unwrap();
        assert_eq!((i.worker_id, i.num_workers), (4, 8));
    }

    #[test]
    fn kubernetes_index_with_count_from_flags() {
        let i = with(&[("JOB_COMPLETION_INDEX", "3")], None, Some(8)).unwrap();
        assert_eq!((i.worker_id, i.num_workers), (3, 8));
        assert!(i.source.contains("JOB_COMPLETION_INDEX"), "{}", i.source);
        let e = with(&[("JOB_COMPLETION_INDEX", "3")], None, None).unwrap_err().to_string();
        assert!(e.contains("--num-workers"), "{e}");
    }

    #[test]
    fn slurm_array_from_any_start() {
        let vars = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        let i = with(&vars, None, None).unwrap();
        assert_eq!((i.worker_id, i.num_workers), (4, 8));
        let strided = [
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "14"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert!(with(&strided, None, None).unwrap_err().to_string().contains("contiguous"));
    }

    #[test]
    fn skypilot_nodes() {
        let i = with(&[("SKYPILOT_NODE_RANK", "2"), ("SKYPILOT_NUM_NODES", "4")], None, None).unwrap();
        assert_eq!((i.worker_id, i.num_workers), (2, 4));
    }

    #[test]
    fn conflicts_are_errors_and_agreement_is_fine() {
        let e = with(&[("JOB_COMPLETION_INDEX", "3")], Some(2), Some(8)).unwrap_err().to_string();
        assert!(
            e.contains(
                "conflicting worker ids: 2 from --worker-id/--num-workers but 3 from JOB_COMPLETION_INDEX"
            ),
            "{e}"
        );
        let slurm = [("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "4")];
        let e = with(&slurm, None, Some(8)).unwrap_err().to_string();
        assert!(e.contains("conflicting worker counts"), "{e}");
        assert_eq!(with(&slurm, Some(1), Some(4)).unwrap().worker_id, 1);
        assert!(with(&[("JOB_COMPLETION_INDEX", "x")], None, Some(2)).is_err());
    }
}
