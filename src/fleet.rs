//! A run's output folder read from outside, by `status` and `verify`: the worker folders with
//! their checkpoints, progress and committed failures. Read-only; nothing here takes a lock.
//! The output may be local or on a bucket (storage/).

use std::collections::BTreeMap;
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

    /// The committed failures: the first `failures_bytes` of failures.jsonl (a folder on a
    /// disk) and every failure file the checkpoint lists (on a bucket).
    pub fn failures(&self, ckpt: &Checkpoint) -> Result<Failures> {
        let mut failures = Failures::default();
        read_failures(&self.dir.join(FAILURES), ckpt.failures_bytes, &mut failures)?;
        for file in &ckpt.failure_files {
            let path = self.dir.join(&file.file);
            let before = failures.rows.len();
            read_failures(&path, u64::MAX, &mut failures)?;
            let found = failures.rows.len() - before;
            if found as u64 != file.rows {
                bail!("{} holds {found} failure records; the checkpoint says {}", path.display(), file.rows);
            }
        }
        Ok(failures)
    }

    /// The rows of [`WorkerEntry::failures`].
    pub fn failed_rows(&self, ckpt: &Checkpoint) -> Result<Vec<u64>> {
        Ok(self.failures(ckpt)?.rows)
    }
}

/// A worker's committed failures: the rows, and how many gave each reason.
#[derive(Debug, Default)]
pub struct Failures {
    pub rows: Vec<u64>,
    pub reasons: BTreeMap<String, u64>,
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

/// The records in the first `committed` bytes of a failures file (all of it for `u64::MAX`),
/// added to `out`.
fn read_failures(path: &Location, committed: u64, out: &mut Failures) -> Result<()> {
    if committed == 0 {
        return Ok(());
    }
    let bytes = path.read()?.with_context(|| format!("cannot open {}: it does not exist", path.display()))?;
    let end = bytes.len().min(usize::try_from(committed).unwrap_or(usize::MAX));
    #[derive(serde::Deserialize)]
    struct Record {
        row: u64,
        #[serde(default)]
        reason: String,
    }
    for (n, line) in bytes[..end].lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let record = serde_json::from_str::<Record>(&line)
            .with_context(|| format!("{} line {} is not a failure record", path.display(), n + 1))?;
        out.rows.push(record.row);
        match out.reasons.get_mut(&record.reason) {
            Some(count) => *count += 1,
            None => {
                out.reasons.insert(record.reason, 1);
            }
        }
    }
    Ok(())
}
