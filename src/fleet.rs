//! A run's output folder read from outside, by `status` and `verify`: the worker folders with
//! their checkpoints, progress and committed failures. Read-only; nothing here takes a lock.
//! The output may be local or on a bucket (storage/).

use anyhow::{bail, Result};

use crate::checkpoint::Checkpoint;
use crate::failures::{self, FailureRecord, Failures};
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

    /// Calls `f` with each committed failure record: the first `failures_bytes` of
    /// failures.jsonl (a folder on a disk) and every failure file the checkpoint lists (on a
    /// bucket).
    pub fn for_each_failure(&self, ckpt: &Checkpoint, mut f: impl FnMut(FailureRecord)) -> Result<()> {
        failures::read_records(&self.dir.join(FAILURES), ckpt.failures_bytes, &mut f)?;
        for file in &ckpt.failure_files {
            let path = self.dir.join(&file.file);
            let found = failures::read_records(&path, u64::MAX, &mut f)?;
            if found != file.rows {
                bail!("{} holds {found} failure records; the checkpoint says {}", path.display(), file.rows);
            }
        }
        Ok(())
    }

    /// The committed failures' rows, counted by reason.
    pub fn failures(&self, ckpt: &Checkpoint) -> Result<Failures> {
        let mut failures = Failures::default();
        self.for_each_failure(ckpt, |r| failures.add(r))?;
        Ok(failures)
    }

    /// The rows of [`WorkerEntry::failures`].
    pub fn failed_rows(&self, ckpt: &Checkpoint) -> Result<Vec<u64>> {
        Ok(self.failures(ckpt)?.rows)
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
