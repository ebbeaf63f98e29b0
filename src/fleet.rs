//! A run's output folder read from outside, by `status` and `verify`: the worker folders with
//! their checkpoints, progress and committed failures. Read-only; nothing here takes a lock.
//! The output may be local or on a bucket (storage/).

use std::io::BufRead;

use anyhow::{bail, Context, Result};

use crate::checkpoint::Checkpoint;
use crate::progress::WorkerProgress;
use crate::storage::Location;
use crate::worker_folder::{parse_folder_name, FAILURES};

/// One worker folder of an output.
#[derive(Clone, Debug)]
pub struct WorkerEntry {
    pub worker_id: u64,
    pub num_workers: u64,
    pub dir: Location,
}

impl WorkerEntry {
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        Checkpoint::load(&self.dir)
    }

    pub fn progress(&self) -> Option<WorkerProgress> {
        WorkerProgress::load(&self.dir)
    }

    /// The rows of the committed failures: the first `failures_bytes` of failures.jsonl (a
    /// folder on a disk) and every failure file the checkpoint lists (on a bucket).
    pub fn failed_rows(&self, ckpt: &Checkpoint) -> Result<Vec<u64>> {
        let mut rows = read_failures(&self.dir.join(FAILURES), ckpt.failures_bytes)?;
        for file in &ckpt.failure_files {
            let path = self.dir.join(&file.file);
            let found = read_failures(&path, u64::MAX)?;
            if found.len() as u64 != file.rows {
                bail!(
                    "{} holds {} failure records; the checkpoint says {}",
                    path.display(),
                    found.len(),
                    file.rows
                );
            }
            rows.extend(found);
        }
        Ok(rows)
    }
}

/// The worker folders (`worker-ID-of-N`) under `output`, sorted by (N, id). Fails when `output`
/// cannot be listed.
pub fn workers(output: &Location) -> Result<Vec<WorkerEntry>> {
    let mut out = Vec::new();
    for name in output.list_folders()? {
        if let Some((worker_id, num_workers)) = parse_folder_name(&name) {
            out.push(WorkerEntry { worker_id, num_workers, dir: output.join(&name) });
        }
    }
    out.sort_by_key(|w| (w.num_workers, w.worker_id));
    Ok(out)
}

/// [`workers`], failing with one sentence when there are none.
pub fn workers_required(output: &Location, what: &str) -> Result<Vec<WorkerEntry>> {
    let found = workers(output)?;
    if found.is_empty() {
        bail!("{} holds no worker folders (worker-ID-of-N){what}", output.display());
    }
    Ok(found)
}

/// The rows of the first `committed` bytes of a failures file (all of it for `u64::MAX`).
fn read_failures(path: &Location, committed: u64) -> Result<Vec<u64>> {
    if committed == 0 {
        return Ok(Vec::new());
    }
    let bytes = path.read()?.with_context(|| format!("cannot open {}: it does not exist", path.display()))?;
    let end = bytes.len().min(usize::try_from(committed).unwrap_or(usize::MAX));
    let mut rows = Vec::new();
    for (n, line) in bytes[..end].lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let row = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("row")?.as_u64())
            .with_context(|| format!("{} line {} is not a failure record", path.display(), n + 1))?;
        rows.push(row);
    }
    Ok(rows)
}
