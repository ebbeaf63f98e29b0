//! A run's output folder read from outside, by `status` and `verify`: the worker folders with
//! their checkpoints, progress and committed failures. Read-only; nothing here takes a lock.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::checkpoint::Checkpoint;
use crate::progress::WorkerProgress;
use crate::worker_folder::{parse_folder_name, FAILURES};

/// One worker folder of an output.
#[derive(Clone, Debug)]
pub struct WorkerEntry {
    pub worker_id: u64,
    pub num_workers: u64,
    pub dir: PathBuf,
}

impl WorkerEntry {
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        Checkpoint::load(&self.dir)
    }

    pub fn progress(&self) -> Option<WorkerProgress> {
        WorkerProgress::load(&self.dir)
    }

    /// The rows of the committed failure lines (the first `committed` bytes of failures.jsonl).
    pub fn failed_rows(&self, committed: u64) -> Result<Vec<u64>> {
        read_failures(&self.dir.join(FAILURES), committed)
    }
}

/// The worker folders (`worker-ID-of-N`) under `output`, sorted by (N, id). Fails when `output`
/// cannot be listed.
pub fn workers(output: &Path) -> Result<Vec<WorkerEntry>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(output).with_context(|| format!("cannot list {}", output.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", output.display()))?;
        if let Some((worker_id, num_workers)) = parse_folder_name(&e.file_name().to_string_lossy()) {
            if e.path().is_dir() {
                out.push(WorkerEntry { worker_id, num_workers, dir: e.path() });
            }
        }
    }
    out.sort_by_key(|w| (w.num_workers, w.worker_id));
    Ok(out)
}

/// [`workers`], failing with one sentence when there are none.
pub fn workers_required(output: &Path, what: &str) -> Result<Vec<WorkerEntry>> {
    let found = workers(output)?;
    if found.is_empty() {
        bail!("{} holds no worker folders (worker-ID-of-N){what}", output.display());
    }
    Ok(found)
}

/// The rows of the first `committed` bytes of a failures.jsonl.
fn read_failures(path: &Path, committed: u64) -> Result<Vec<u64>> {
    if committed == 0 {
        return Ok(Vec::new());
    }
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in BufReader::new(f.take(committed)).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let row = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("row")?.as_u64())
            .with_context(|| format!("{} line {} is not a failure record", path.display(), n + 1))?;
        rows.push(row);
    }
    Ok(rows)
}
