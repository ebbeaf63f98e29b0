//! A worker's folder, `OUTPUT/worker-{id:05}-of-{N:05}/`: its file names, taking it (the lock),
//! putting it back in order after a crash, and the commit — the only code that writes a part
//! into place or saves the checkpoint, and only while this process still holds the lock.
//!
//! ```text
//! lock.json         the owner and its heartbeat (lock.rs)
//! checkpoint.json   what is committed, the run's description, the owner's lock token
//! part-NNNNNN.parquet
//! failures.jsonl    one line per row that got no vector
//! progress.json     live counters for `status` (a view, not a record)
//! ```
//!
//! The fence: a commit checks, right before renaming a part and right before saving the
//! checkpoint, that `lock.json` still holds this process's token and that `checkpoint.json` names
//! it as owner (a new owner writes its token there when it opens the folder). A process that lost
//! the folder stops with [`LostFolder`] and commits nothing more.
//!
//! The folder may be on a bucket (worker_folder/bucket.rs): the same files and rules, with
//! conditional writes where a disk has renames, and part and failure files named after their
//! writer so that two owners can never write the same object.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use crate::atomic::TMP_SUFFIX;
use crate::checkpoint::{self, Checkpoint, PartRecord};
use crate::lock::{Beat, LockOptions, WorkerLock};
use crate::output::FinishedPart;
use crate::progress::WorkerProgress;
use crate::run_spec::RunSpec;
use crate::storage::object::Version;
use crate::storage::Location;

mod bucket;

pub const CHECKPOINT: &str = checkpoint::FILE_NAME;
pub const FAILURES: &str = "failures.jsonl";
pub const PROGRESS: &str = "progress.json";
pub const LOCK: &str = crate::lock::FILE_NAME;

/// `part-NNNNNN.parquet`
pub fn part_name(seq: usize) -> String {
    format!("part-{seq:06}.parquet")
}

/// `part-NNNNNN-OWNER.parquet`: a part on a bucket, named after the lock token of its writer.
pub fn owned_part_name(seq: usize, owner: &str) -> String {
    format!("part-{seq:06}-{owner}.parquet")
}

/// The sequence number of a part file name (either form), if it is one.
pub fn part_seq(name: &str) -> Option<usize> {
    let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let seq = stem.split_once('-').map_or(stem, |(seq, _)| seq);
    seq.parse().ok()
}

/// `failures-NNNNNN-OWNER.jsonl`: one commit's failure lines on a bucket.
pub fn failures_name(seq: usize, owner: &str) -> String {
    format!("failures-{seq:06}-{owner}.jsonl")
}

/// Whether a name is a failure file of the bucket form.
pub fn is_failures_file(name: &str) -> bool {
    name.starts_with("failures-") && name.ends_with(".jsonl")
}

/// `worker-00003-of-00008`
pub fn folder_name(worker_id: u64, num_workers: u64) -> String {
    format!("worker-{worker_id:05}-of-{num_workers:05}")
}

/// A worker folder name parsed: `(id, N)`.
pub fn parse_folder_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("worker-")?;
    let (id, n) = rest.split_once("-of-")?;
    Some((id.parse().ok()?, n.parse().ok()?))
}

/// The process lost its worker folder to another owner: it must stop and commit nothing more.
#[derive(Debug)]
pub struct LostFolder(pub String);

impl std::fmt::Display for LostFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; nothing more was committed by this process", self.0)
    }
}

impl std::error::Error for LostFolder {}

/// What a commit adds besides the part file.
#[derive(Debug, Default)]
pub struct CommitCounts {
    /// Rows of the embed phase (embedded or failed): they advance `embed_done`.
    pub rows: u64,
    pub embedded: u64,
    pub failed: u64,
    pub truncated: u64,
    pub tokens: u64,
    pub deduplicated: u64,
    /// Output rows of chunks (one row per chunk runs), embedded or copied.
    pub chunks: u64,
    /// Rows copied from a previous output, and where the copy now stands (source part, rows
    /// of it copied).
    pub reused: u64,
    pub reuse_cursor: Option<(usize, u64)>,
}

/// A worker folder held by this process.
pub struct WorkerFolder {
    dir: Location,
    lock: WorkerLock,
    /// Set once the folder is known to be lost (by a heartbeat or a commit).
    lost: Mutex<Option<String>>,
    /// On a bucket: the version of `checkpoint.json` this process last wrote; the next
    /// checkpoint replaces only that version.
    written: Mutex<Option<Version>>,
}

impl WorkerFolder {
    /// Takes the folder (creating it if needed), cleans up what an interrupted run left, and
    /// returns the checkpoint to continue from. `spec` must equal the checkpoint's unless
    /// nothing was committed yet; `restart` discards everything first.
    pub fn open(
        dir: &Location,
        spec: &RunSpec,
        worker_id: u64,
        rows_owned: u64,
        restart: bool,
        lock: &LockOptions,
        note: &mut dyn FnMut(&str),
    ) -> Result<(Arc<Self>, Checkpoint)> {
        dir.create_dir_all()?;
        bucket::probe_conditional_writes(dir, &crate::lock::new_token())?;
        let lock = WorkerLock::acquire(dir, lock, note)?;
        let folder =
            WorkerFolder { dir: dir.clone(), lock, lost: Mutex::new(None), written: Mutex::new(None) };
        let ckpt = match dir {
            Location::Local(path) => {
                let mut ckpt = folder.recover(path, spec, worker_id, rows_owned, restart)?;
                // From here on, a process that held the folder before us fails its ownership check.
                ckpt.owner = folder.lock.owner();
                ckpt.save(path)?;
                ckpt
            }
            Location::Object(_) => bucket::open(&folder, spec, worker_id, rows_owned, restart)?,
        };
        Ok((Arc::new(folder), ckpt))
    }

    fn recover(
        &self,
        dir: &Path,
        spec: &RunSpec,
        worker_id: u64,
        rows_owned: u64,
        restart: bool,
    ) -> Result<Checkpoint> {
        let fresh = || Checkpoint::new(spec.clone(), worker_id, self.lock.owner(), rows_owned);
        let here = &self.dir;
        if restart {
            remove_files(dir, |name| {
                part_seq(name).is_some()
                    || name.ends_with(TMP_SUFFIX)
                    || [CHECKPOINT, FAILURES, PROGRESS].contains(&name)
            })?;
        }
        let start_over =
            "pass --restart to discard this worker's output and start over, or choose another --output";
        let Some(ckpt) = Checkpoint::load(here)? else {
            if names(dir)?.iter().any(|n| part_seq(n).is_some()) {
                bail!("{} holds part files but no {CHECKPOINT}; {start_over}", dir.display());
            }
            remove_files(dir, |name| name == FAILURES || name.ends_with(TMP_SUFFIX))?;
            return Ok(fresh());
        };
        let differences = spec.differences(&ckpt.spec);
        if !differences.is_empty() {
            if ckpt.rows_done == 0 && ckpt.parts.is_empty() {
                // Nothing was committed (say, the model failed to load): nothing to protect.
                remove_files(dir, |name| name == FAILURES || name.ends_with(TMP_SUFFIX))?;
                return Ok(fresh());
            }
            bail!(
                "{} was written by a different run: {}; re-run with the same inputs, model and options to resume, or {start_over}",
                dir.join(CHECKPOINT).display(),
                differences.join("; ")
            );
        }
        if ckpt.worker_id != worker_id {
            bail!(
                "{} belongs to worker {}, not {worker_id}; {start_over}",
                dir.join(CHECKPOINT).display(),
                ckpt.worker_id
            );
        }
        // Leftovers of an interrupted commit: parts past the checkpoint, temporary files.
        let next = ckpt.next_part();
        remove_files(dir, |name| {
            part_seq(name).is_some_and(|seq| seq >= next) || name.ends_with(TMP_SUFFIX)
        })?;
        for part in &ckpt.parts {
            if !dir.join(&part.file).is_file() {
                bail!(
                    "{} lists {}, which is missing; {start_over}",
                    here.join(CHECKPOINT).display(),
                    part.file
                );
            }
        }
        // Failure lines past the committed length.
        let failures = dir.join(FAILURES);
        if failures.exists() || ckpt.failures_bytes > 0 {
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&failures)
                .with_context(|| format!("cannot open {}", failures.display()))?;
            let len = f.metadata()?.len();
            if len < ckpt.failures_bytes {
                bail!("{} is shorter than its checkpoint says; {start_over}", failures.display());
            }
            f.set_len(ckpt.failures_bytes)
                .with_context(|| format!("cannot truncate {}", failures.display()))?;
        }
        Ok(ckpt)
    }

    pub fn dir(&self) -> &Location {
        &self.dir
    }

    /// What part file names carry after their number: on a bucket, this owner's lock token
    /// (parts of two owners never share a name); on a disk, nothing.
    pub fn part_tag(&self) -> Option<String> {
        self.dir.is_remote().then(|| self.lock.owner())
    }

    pub fn lock(&self) -> &WorkerLock {
        &self.lock
    }

    /// Records that the folder was lost (a heartbeat found another owner).
    pub fn mark_lost(&self, why: String) {
        self.lost.lock().expect("folder state").get_or_insert(why);
    }

    /// Why the folder was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().expect("folder state").clone()
    }

    /// Fails with [`LostFolder`] unless this process still holds the folder: its token in
    /// `lock.json` and as the checkpoint's owner.
    pub fn ensure_owner(&self) -> Result<()> {
        if let Some(why) = self.lost() {
            return Err(LostFolder(why).into());
        }
        let why = match self.lock.check()? {
            Beat::Lost(why) => Some(why),
            // On a bucket the checkpoint is replaced only over this owner's own last version,
            // which fences it better than reading it here.
            Beat::Alive if self.dir.is_remote() => None,
            Beat::Alive => match Checkpoint::owner_on_disk(self.dir.local().expect("a local folder"))? {
                Some(owner) if owner != self.lock.owner() => Some(format!(
                    "{} now names another owner (lock token {owner}); stopping so that two processes never write one worker folder",
                    self.dir.join(CHECKPOINT).display()
                )),
                _ => None,
            },
        };
        match why {
            Some(why) => {
                self.mark_lost(why.clone());
                Err(LostFolder(why).into())
            }
            None => Ok(()),
        }
    }

    /// Commits: renames `part` into place as the next part, appends `failure_lines`, adds
    /// `counts` and saves the checkpoint — each step only after checking that the folder is
    /// still ours. On any error the checkpoint on disk still describes what is in place.
    pub fn commit(
        &self,
        ckpt: &mut Checkpoint,
        part: Option<FinishedPart>,
        failure_lines: &[u8],
        counts: &CommitCounts,
    ) -> Result<()> {
        let result = self.commit_steps(ckpt, part, failure_lines, counts);
        // A step that failed because a new owner cleaned the folder is reported as the loss.
        match result {
            Err(e) if e.downcast_ref::<LostFolder>().is_none() && self.ensure_owner().is_err() => {
                Err(LostFolder(self.lost().unwrap_or_default()).into())
            }
            other => other,
        }
    }

    fn commit_steps(
        &self,
        ckpt: &mut Checkpoint,
        part: Option<FinishedPart>,
        failure_lines: &[u8],
        counts: &CommitCounts,
    ) -> Result<()> {
        crate::faults::commit()
            .with_context(|| format!("cannot write a part file in {}", self.dir.display()))?;
        let dir = match &self.dir {
            Location::Local(dir) => dir,
            Location::Object(_) => return bucket::commit(self, ckpt, part, failure_lines, counts),
        };
        let mut next = ckpt.clone();
        if let Some(part) = part {
            let name = part_name(next.next_part());
            debug_assert_eq!(part.name, name);
            self.ensure_owner()?;
            part.file.finish()?;
            next.parts.push(PartRecord { file: name, rows: part.rows });
        }
        if !failure_lines.is_empty() {
            let path = dir.join(FAILURES);
            self.ensure_owner()?;
            // NOTE: opened and closed at each commit: bucket mounts (gcsfuse, SkyPilot's
            // MOUNT_CACHED) upload a file when it is closed, and the checkpoint must not name
            // failure lines the bucket does not have.
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(failure_lines).and_then(|_| f.sync_data()))
                .with_context(|| format!("cannot write {}", path.display()))?;
            next.failures_bytes += failure_lines.len() as u64;
        }
        counts.apply(&mut next);
        self.ensure_owner()?;
        next.save(dir)?;
        *ckpt = next;
        if ckpt.complete {
            // Nothing can be pending any more: part files no checkpoint lists (a process that
            // lost the folder may have left one) would be read twice by a glob.
            let parts = ckpt.next_part();
            remove_files(dir, |name| part_seq(name).is_some_and(|seq| seq >= parts))?;
        }
        Ok(())
    }

    /// Saves the checkpoint as it is (after a change that commits no rows), if the folder is
    /// still ours.
    pub fn save_checkpoint(&self, ckpt: &mut Checkpoint) -> Result<()> {
        self.ensure_owner()?;
        match &self.dir {
            Location::Local(dir) => ckpt.save(dir),
            Location::Object(_) => bucket::save_checkpoint(self, ckpt),
        }
    }

    /// Replaces `progress.json` (skipped once the folder is lost: it is the new owner's now).
    pub fn save_progress(&self, progress: &WorkerProgress) -> Result<()> {
        if self.lost().is_some() {
            return Ok(());
        }
        self.dir.join(PROGRESS).write(&serde_json::to_vec_pretty(progress)?)
    }
}

impl CommitCounts {
    /// Adds these counts (and the reuse cursor) to the checkpoint to be written.
    fn apply(&self, next: &mut Checkpoint) {
        next.rows_done += self.rows + self.reused;
        next.embed_done += self.rows;
        next.rows_embedded += self.embedded;
        next.rows_reused += self.reused;
        next.rows_deduplicated += self.deduplicated;
        if let (Some(state), Some((source, rows))) = (next.reuse.as_mut(), self.reuse_cursor) {
            state.sources_done = source;
            state.source_rows_done = rows;
        }
        next.rows_failed += self.failed;
        next.texts_truncated += self.truncated;
        next.tokens += self.tokens;
        next.chunks += self.chunks;
        next.complete = next.rows_done == next.rows_owned;
    }
}

/// The names in a local folder.
fn names(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut names = Vec::new();
    for e in entries {
        names.push(
            e.with_context(|| format!("cannot list {}", dir.display()))?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok(names)
}

/// Removes the files of a local folder that `which` picks.
fn remove_files(dir: &Path, which: impl Fn(&str) -> bool) -> Result<()> {
    for name in names(dir)? {
        if which(&name) {
            let path = dir.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lock_as(host: &str, force: bool) -> LockOptions {
        LockOptions { force, stale: Duration::from_secs(60), host: host.into() }
    }

    fn part(folder: &WorkerFolder, seq: usize) -> FinishedPart {
        let mut file = folder.dir().join(&part_name(seq)).new_file().unwrap();
        file.write_all(b"vectors").unwrap();
        FinishedPart { file, name: part_name(seq), rows: 2 }
    }

    fn here(dir: &Path) -> Location {
        Location::Local(dir.to_path_buf())
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(part_name(7), "part-000007.parquet");
        assert_eq!(part_seq("part-000007.parquet"), Some(7));
        assert_eq!(part_seq(".part-000007.parquet.x1.tmp"), None);
        assert_eq!(part_seq(&owned_part_name(7, "0123456789abcdef")), Some(7));
        assert_eq!(owned_part_name(7, "ab"), "part-000007-ab.parquet");
        assert!(is_failures_file(&failures_name(3, "ab")) && !is_failures_file(FAILURES));
        assert_eq!(part_seq("checkpoint.json"), None);
        assert_eq!(parse_folder_name(&folder_name(3, 8)), Some((3, 8)));
        assert_eq!(parse_folder_name("worker-x-of-2"), None);
    }

    #[test]
    fn a_process_that_lost_the_folder_commits_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::run_spec::tests::spec();
        let counts = CommitCounts { rows: 2, embedded: 2, ..Default::default() };
        let (first, mut ckpt1) =
            WorkerFolder::open(&here(dir.path()), &spec, 0, 10, false, &lock_as("a", false), &mut |_| {})
                .unwrap();
        first.commit(&mut ckpt1, Some(part(&first, 0)), b"", &counts).unwrap();
        let pending = part(&first, 1);

        // Another host forces the lock and opens the folder: it continues from the first commit.
        let (second, mut ckpt2) =
            WorkerFolder::open(&here(dir.path()), &spec, 0, 10, false, &lock_as("b", true), &mut |_| {})
                .unwrap();
        assert_eq!(ckpt2.rows_done, 2);
        let err = first.commit(&mut ckpt1, Some(pending), b"{\"row\": 5}\n", &counts).unwrap_err();
        assert!(err.downcast_ref::<LostFolder>().is_some(), "{err:#}");
        assert!(format!("{err:#}").contains("host b"), "{err:#}");
        assert_eq!(ckpt1.rows_done, 2, "the loser's in-memory checkpoint did not advance");
        assert!(!dir.path().join(part_name(1)).exists(), "the loser renamed a part");
        assert!(!dir.path().join(FAILURES).exists(), "the loser appended failures");

        second.commit(&mut ckpt2, Some(part(&second, 1)), b"", &counts).unwrap();
        let on_disk = Checkpoint::load(&here(dir.path())).unwrap().unwrap();
        assert_eq!((on_disk.rows_done, on_disk.parts.len()), (4, 2));
        assert_eq!(on_disk.owner, second.lock().owner());
        // The loser's progress writes are dropped too.
        first.save_progress(&WorkerProgress { state: "failed".into(), ..Default::default() }).unwrap();
        assert!(!dir.path().join(PROGRESS).exists());
    }

    #[test]
    fn a_checkpoint_naming_another_owner_stops_a_commit_even_with_the_lock_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::run_spec::tests::spec();
        let (folder, mut ckpt) =
            WorkerFolder::open(&here(dir.path()), &spec, 0, 10, false, &lock_as("a", false), &mut |_| {})
                .unwrap();
        let mut other = ckpt.clone();
        other.owner = "someone-else".into();
        other.save(dir.path()).unwrap();
        let err =
            folder.commit(&mut ckpt, Some(part(&folder, 0)), b"", &CommitCounts::default()).unwrap_err();
        assert!(format!("{err:#}").contains("names another owner"), "{err:#}");
        assert!(!dir.path().join(part_name(0)).exists());
    }

    #[test]
    fn reopening_removes_what_an_interrupted_commit_left() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::run_spec::tests::spec();
        let counts = CommitCounts { rows: 2, failed: 1, embedded: 1, ..Default::default() };
        {
            let (folder, mut ckpt) =
                WorkerFolder::open(&here(dir.path()), &spec, 0, 10, false, &lock_as("a", false), &mut |_| {})
                    .unwrap();
            folder.commit(&mut ckpt, Some(part(&folder, 0)), b"{\"row\":1}\n", &counts).unwrap();
            // A crash mid-commit: a part renamed but not in the checkpoint, failure lines
            // appended, a temporary file.
            std::fs::write(dir.path().join(part_name(1)), b"x").unwrap();
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(FAILURES))
                .unwrap()
                .write_all(b"{\"row\":3}\n")
                .unwrap();
            std::fs::write(dir.path().join(".part-000002.parquet.x1y2.tmp"), b"half").unwrap();
        }
        let (_folder, ckpt) =
            WorkerFolder::open(&here(dir.path()), &spec, 0, 10, false, &lock_as("a", false), &mut |_| {})
                .unwrap();
        assert_eq!(ckpt.rows_done, 2);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        names.sort();
        assert_eq!(names, [CHECKPOINT, FAILURES, LOCK, &part_name(0)]);
        assert_eq!(std::fs::read(dir.path().join(FAILURES)).unwrap(), b"{\"row\":1}\n");
    }
}
