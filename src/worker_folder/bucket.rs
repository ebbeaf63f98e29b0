//! A worker folder on a bucket (S3, GCS, Azure): the layout and the promises of the local one,
//! kept with what object stores offer instead of renames and appends.
//!
//! - Parts are uploaded under their final names, which carry the writer's lock token
//!   (`part-NNNNNN-OWNER.parquet`): an upload appears only when complete, and an old owner that
//!   lost the folder can never overwrite a new owner's part, because their names differ.
//! - Failures go into one small object per commit (`failures-NNNNNN-OWNER.jsonl`), since
//!   objects cannot be appended to; the checkpoint lists them.
//! - `checkpoint.json` is replaced by one conditional PUT, only over the version this owner
//!   wrote last (`If-Match`). A new owner's first act is to write its token into it, so from
//!   then on an old owner's checkpoint write fails, and it stops ([`LostFolder`]) after removing
//!   the objects it uploaded for that commit.
//! - Opening takes ownership first (the conditional write of the checkpoint), then removes part
//!   and failure objects the checkpoint does not list (an interrupted commit's, or a fenced
//!   owner's), so nothing a committed checkpoint names is ever removed.

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use super::{
    failures_name, is_failures_file, part_seq, CommitCounts, LostFolder, WorkerFolder, CHECKPOINT, FAILURES,
    PROGRESS,
};
use crate::checkpoint::{Checkpoint, PartRecord};
use crate::output::FinishedPart;
use crate::run_spec::RunSpec;
use crate::storage::object::{Cond, ObjectLocation};
use crate::storage::Location;

/// Tries at taking the checkpoint over while an old owner is still committing.
const OPEN_ATTEMPTS: usize = 5;

/// Fails unless the store honours conditional writes, on which the lock and the commit fence
/// stand (an S3-compatible server that ignored `If-None-Match`/`If-Match` would let two owners
/// write one folder without a word): a probe object is created, created again (must be refused),
/// replaced over its version (must work), replaced over that old version again (must be
/// refused), and removed.
pub(super) fn probe_conditional_writes(dir: &Location, token: &str) -> Result<()> {
    let Location::Object(dir) = dir else { return Ok(()) };
    let probe = dir.child(&format!(".conditional-write-probe-{token}"));
    let outcome = (|| {
        let v1 = probe.put_if(Bytes::from_static(b"1"), &Cond::Absent)?;
        let again = probe.put_if(Bytes::from_static(b"2"), &Cond::Absent)?;
        let Some(v1) = v1 else { return Ok(false) };
        let v2 = probe.put_if(Bytes::from_static(b"3"), &Cond::Unchanged(v1.clone()))?;
        let stale = probe.put_if(Bytes::from_static(b"4"), &Cond::Unchanged(v1))?;
        anyhow::Ok(again.is_none() && v2.is_some() && stale.is_none())
    })();
    let _ = probe.delete();
    if !outcome? {
        bail!(
            "{} does not honour conditional writes (If-None-Match / If-Match on PUT): a second create or a replace of an old version was accepted; batch-embed needs them to keep one writer per worker folder on a bucket. Use a store that supports them (S3, GCS, Azure, recent MinIO, R2), or write to a mounted folder instead",
            dir.url()
        );
    }
    Ok(())
}

fn object(folder: &WorkerFolder) -> &ObjectLocation {
    match folder.dir() {
        Location::Object(o) => o,
        Location::Local(_) => unreachable!("a bucket folder"),
    }
}

/// Takes the checkpoint (see the module comment) and cleans up; the checkpoint to continue from.
pub(super) fn open(
    folder: &WorkerFolder,
    spec: &RunSpec,
    worker_id: u64,
    rows_owned: u64,
    restart: bool,
) -> Result<Checkpoint> {
    let dir = object(folder);
    let path = folder.dir().join(CHECKPOINT);
    let owner = folder.lock().owner();
    let start_over =
        "pass --restart to discard this worker's output and start over, or choose another --output";
    let fresh = || Checkpoint::new(spec.clone(), worker_id, owner.clone(), rows_owned);
    for _ in 0..OPEN_ATTEMPTS {
        let current = dir.child(CHECKPOINT).get()?;
        let files = dir.list_dir()?.1;
        let has_parts = files.iter().any(|(n, _)| part_seq(n).is_some());
        let mut next = match &current {
            _ if restart => fresh(),
            None if has_parts => {
                bail!("{} holds part files but no {CHECKPOINT}; {start_over}", folder.dir().display())
            }
            None => fresh(),
            Some((bytes, _)) => {
                let ckpt = Checkpoint::parse(bytes, &path)?;
                let differences = spec.differences(&ckpt.spec);
                if !differences.is_empty() {
                    if ckpt.rows_done > 0 || !ckpt.parts.is_empty() {
                        bail!(
                            "{} was written by a different run: {}; re-run with the same inputs, model and options to resume, or {start_over}",
                            path.display(),
                            differences.join("; ")
                        );
                    }
                    // Nothing was committed (say, the model failed to load): nothing to protect.
                    fresh()
                } else if ckpt.worker_id != worker_id {
                    bail!(
                        "{} belongs to worker {}, not {worker_id}; {start_over}",
                        path.display(),
                        ckpt.worker_id
                    );
                } else {
                    Checkpoint { owner: owner.clone(), ..ckpt }
                }
            }
        };
        let cond = match current {
            None => Cond::Absent,
            Some((_, version)) => Cond::Unchanged(version),
        };
        // From here on, a process that held the folder before us fails its checkpoint write.
        let Some(version) = dir.child(CHECKPOINT).put_if(Bytes::from(next.stamped_bytes()?), &cond)? else {
            continue; // an old owner committed meanwhile: look again
        };
        *folder.written.lock().expect("folder state") = Some(version);
        for listed in next.parts.iter().chain(&next.failure_files) {
            if !files.iter().any(|(n, _)| *n == listed.file) && dir.child(&listed.file).size()?.is_none() {
                bail!("{} lists {}, which is missing; {start_over}", path.display(), listed.file);
            }
        }
        if !next.failure_files.is_empty() || next.failures_bytes > 0 {
            // A folder moved from a disk keeps its failures.jsonl; a bucket never appends to it.
            if next.failures_bytes > 0 && dir.child(FAILURES).size()?.is_none() {
                bail!("{} lists failures in {FAILURES}, which is missing; {start_over}", path.display());
            }
        }
        remove_unlisted(dir, &next, restart, files)?;
        return Ok(next);
    }
    bail!(
        "{} kept changing while this process took the folder over (is another process still writing it?); try again",
        path.display()
    )
}

/// Removes part and failure objects `ckpt` does not list (and, on a restart, the old progress),
/// of `files` (the folder's listing).
fn remove_unlisted(
    dir: &ObjectLocation,
    ckpt: &Checkpoint,
    restart: bool,
    files: Vec<(String, u64)>,
) -> Result<()> {
    let listed = |name: &str| ckpt.parts.iter().chain(&ckpt.failure_files).any(|p| p.file == name);
    for (name, _) in files {
        let ours = part_seq(&name).is_some() || is_failures_file(&name);
        let stale = restart && (name == PROGRESS || (name == FAILURES && ckpt.failures_bytes == 0));
        if (ours && !listed(&name)) || stale {
            dir.child(&name).delete()?;
        }
    }
    Ok(())
}

/// The commit on a bucket: part upload completed → failure object → conditional checkpoint.
pub(super) fn commit(
    folder: &WorkerFolder,
    ckpt: &mut Checkpoint,
    part: Option<FinishedPart>,
    failure_lines: &[u8],
    counts: &CommitCounts,
) -> Result<()> {
    let dir = object(folder);
    let owner = folder.lock().owner();
    let mut next = ckpt.clone();
    let mut uploaded: Vec<ObjectLocation> = Vec::new();
    let result = (|| {
        folder.ensure_owner()?;
        if let Some(part) = part {
            uploaded.push(dir.child(&part.name));
            part.file.finish()?;
            next.parts.push(PartRecord { file: part.name, rows: part.rows });
        }
        if !failure_lines.is_empty() {
            let name = failures_name(next.failure_files.len(), &owner);
            let lines = failure_lines.iter().filter(|&&b| b == b'\n').count() as u64;
            uploaded.push(dir.child(&name));
            dir.child(&name).put(Bytes::copy_from_slice(failure_lines))?;
            next.failure_files.push(PartRecord { file: name, rows: lines });
        }
        counts.apply(&mut next);
        write_checkpoint(folder, &mut next)
    })();
    if let Err(e) = result {
        if e.downcast_ref::<LostFolder>().is_some() {
            // Fenced off: what this commit uploaded is nobody's; leave the folder as the new
            // owner has it (best effort: the new owner removes leftovers too).
            for o in &uploaded {
                let _ = o.delete();
            }
        }
        return Err(e);
    }
    *ckpt = next;
    if ckpt.complete {
        // Nothing can be pending any more: objects no checkpoint lists would be read twice by
        // a glob.
        remove_unlisted(dir, ckpt, false, dir.list_dir()?.1)?;
    }
    Ok(())
}

/// Replaces the checkpoint only over the version this process wrote last.
fn write_checkpoint(folder: &WorkerFolder, next: &mut Checkpoint) -> Result<()> {
    let dir = object(folder);
    let mut written = folder.written.lock().expect("folder state");
    let last = written.clone().context("internal error: a bucket checkpoint written before it was taken")?;
    match dir.child(CHECKPOINT).put_if(Bytes::from(next.stamped_bytes()?), &Cond::Unchanged(last))? {
        Some(version) => {
            *written = Some(version);
            Ok(())
        }
        None => {
            let who = match Checkpoint::load(folder.dir()) {
                Ok(Some(c)) => format!("another owner (lock token {})", c.owner),
                _ => "another process".to_string(),
            };
            let why = format!(
                "{} was replaced by {who}; stopping so that two processes never write one worker folder",
                folder.dir().join(CHECKPOINT).display()
            );
            folder.mark_lost(why.clone());
            Err(LostFolder(why).into())
        }
    }
}

/// Saves the checkpoint as it is (the caller checked ownership).
pub(super) fn save_checkpoint(folder: &WorkerFolder, ckpt: &mut Checkpoint) -> Result<()> {
    write_checkpoint(folder, ckpt)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::super::{owned_part_name, WorkerFolder, LOCK};
    use super::*;
    use crate::lock::LockOptions;

    fn lock_as(host: &str, force: bool) -> LockOptions {
        LockOptions { force, stale: Duration::from_secs(60), host: host.into() }
    }

    fn part(folder: &WorkerFolder, seq: usize) -> FinishedPart {
        let name = owned_part_name(seq, &folder.lock().owner());
        let mut file = folder.dir().join(&name).new_file().unwrap();
        file.write_all(b"vectors").unwrap();
        FinishedPart { file, name, rows: 2 }
    }

    fn names(dir: &Location) -> Vec<String> {
        let mut n: Vec<String> = dir.list_files().unwrap().into_iter().map(|(n, _)| n).collect();
        n.sort();
        n
    }

    #[test]
    fn on_a_bucket_a_fenced_owner_commits_nothing_and_removes_what_it_uploaded() {
        let dir =
            Location::Object(crate::storage::object::memory("fenced").child("out/worker-00000-of-00001"));
        let spec = crate::run_spec::tests::spec();
        let counts = CommitCounts { rows: 2, embedded: 2, ..Default::default() };
        let (first, mut ckpt1) =
            WorkerFolder::open(&dir, &spec, 0, 10, false, &lock_as("a", false), &mut |_| {}).unwrap();
        first.commit(&mut ckpt1, Some(part(&first, 0)), b"", &counts).unwrap();
        assert_eq!(ckpt1.parts[0].file, owned_part_name(0, &first.lock().owner()));

        // Another host forces the folder while the first still runs; the first's next commit
        // finds the lock gone before uploading anything.
        let (second, mut ckpt2) =
            WorkerFolder::open(&dir, &spec, 0, 10, false, &lock_as("b", true), &mut |_| {}).unwrap();
        assert_eq!(ckpt2.rows_done, 2);
        let err = first.commit(&mut ckpt1, Some(part(&first, 1)), b"{\"row\": 5}\n", &counts).unwrap_err();
        assert!(err.downcast_ref::<LostFolder>().is_some(), "{err:#}");
        assert_eq!(ckpt1.rows_done, 2);

        // Even past the lock check (a takeover landing between the check and the upload), its
        // checkpoint write fails, and the part it uploaded is removed again.
        let stale_lock = dir.join(LOCK).read().unwrap().unwrap();
        let before = names(&dir);
        let mut info: crate::lock::LockInfo = serde_json::from_slice(&stale_lock).unwrap();
        info.owner = first.lock().owner();
        dir.join(LOCK).write(&serde_json::to_vec(&info).unwrap()).unwrap();
        *first.lost.lock().unwrap() = None;
        let err = first.commit(&mut ckpt1, Some(part(&first, 1)), b"{\"row\": 5}\n", &counts).unwrap_err();
        assert!(format!("{err:#}").contains("was replaced by another owner"), "{err:#}");
        assert_eq!(names(&dir), before, "the fenced commit left nothing behind");
        dir.join(LOCK).write(&stale_lock).unwrap();

        second.commit(&mut ckpt2, Some(part(&second, 1)), b"{\"row\": 7}\n", &counts).unwrap();
        let on_bucket = Checkpoint::load(&dir).unwrap().unwrap();
        assert_eq!((on_bucket.rows_done, on_bucket.parts.len(), on_bucket.failure_files.len()), (4, 2, 1));
        assert_eq!(on_bucket.owner, second.lock().owner());
        assert!(on_bucket.parts[1].file.contains(&second.lock().owner()));
    }

    #[test]
    fn reopening_a_bucket_folder_removes_unlisted_objects_and_keeps_what_the_checkpoint_lists() {
        let dir =
            Location::Object(crate::storage::object::memory("reopen").child("out/worker-00000-of-00001"));
        let spec = crate::run_spec::tests::spec();
        let counts = CommitCounts { rows: 2, failed: 1, embedded: 1, ..Default::default() };
        let listed = {
            let (folder, mut ckpt) =
                WorkerFolder::open(&dir, &spec, 0, 10, false, &lock_as("a", false), &mut |_| {}).unwrap();
            folder.commit(&mut ckpt, Some(part(&folder, 0)), b"{\"row\":1}\n", &counts).unwrap();
            // A crash mid-commit: a part and a failure file uploaded but never in a checkpoint.
            dir.join(&owned_part_name(1, "deadbeefdeadbeef")).write(b"x").unwrap();
            dir.join(&failures_name(1, &folder.lock().owner())).write(b"{\"row\":3}\n").unwrap();
            let mut listed: Vec<String> =
                ckpt.parts.iter().chain(&ckpt.failure_files).map(|p| p.file.clone()).collect();
            listed.extend([
                "checkpoint.json".to_string(),
                "lock.json".to_string(),
                "progress.json".to_string(),
            ]);
            listed.sort();
            std::mem::forget(folder); // killed: no release, no progress
            listed
        };
        let (_folder, ckpt) =
            WorkerFolder::open(&dir, &spec, 0, 10, false, &lock_as("b", true), &mut |_| {}).unwrap();
        assert_eq!(ckpt.rows_done, 2);
        let mut expected = listed;
        expected.retain(|n| n != "progress.json");
        assert_eq!(names(&dir), expected);
        let entry = crate::fleet::WorkerEntry { worker_id: 0, num_workers: 1, dir: dir.clone() };
        assert_eq!(entry.failed_rows(&ckpt).unwrap(), [1]);
    }
}
