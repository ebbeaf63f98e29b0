//! What a worker has finished, and the description of the run that may continue it.
//!
//! `checkpoint.json` in the worker folder is replaced atomically (see atomic.rs) after each part
//! file is in place. Order of a commit: the part is renamed into place, failures.jsonl is
//! flushed, then the checkpoint names both. On restart, parts numbered at or past `next_part`
//! and failure lines past `failures_bytes` are leftovers of an interrupted commit and are removed,
//! and the first `rows_done` owned rows are skipped. So every owned row ends up exactly once.
//! Writing it is the worker folder's business (worker_folder.rs), behind the lock's fence.
//!
//! On a bucket the same record names its failure files (`failure_files`, one small object per
//! commit that had failures) instead of a length of `failures.jsonl`, since objects cannot be
//! appended to; readers take both forms.

use std::path::Path;

use crate::storage::Location;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::run_spec::RunSpec;

pub const FILE_NAME: &str = "checkpoint.json";
/// Checkpoints of other versions are refused (`--restart` starts over).
const VERSION: u32 = 4;

/// One committed part file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    pub file: String,
    pub rows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub tool_version: String,
    /// The run this worker belongs to.
    pub spec: RunSpec,
    pub worker_id: u64,
    /// The lock token of the process that owns the folder (see lock.rs): a commit refuses to
    /// go on when the checkpoint on disk names another owner.
    pub owner: String,
    /// Rows this worker owns in total.
    pub rows_owned: u64,
    /// Owned rows accounted for: a vector in a listed part (embedded or reused) or a line in
    /// failures.jsonl.
    pub rows_done: u64,
    /// Rows whose vector this run computed (repeats of an embedded text included).
    pub rows_embedded: u64,
    /// Rows whose vector was copied from a previous output (`--reuse`).
    pub rows_reused: u64,
    /// Of `rows_embedded`, rows whose text had already been embedded in this run.
    pub rows_deduplicated: u64,
    /// Rows of the embed phase done: a prefix, in order, of the owned rows that are not reused
    /// (all owned rows without `--reuse`). A resumed run skips them.
    pub embed_done: u64,
    /// With `--reuse`: where vectors are copied from, and how far the copy got.
    pub reuse: Option<crate::sync::reuse::ReuseState>,
    pub rows_failed: u64,
    /// Length of failures.jsonl that belongs to the committed rows.
    pub failures_bytes: u64,
    /// Committed failure files (on a bucket: `failures-NNNNNN-OWNER.jsonl`, rows = lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_files: Vec<PartRecord>,
    pub texts_truncated: u64,
    pub tokens: u64,
    /// With one output row per chunk: chunk rows in the committed parts (embedded or reused).
    #[serde(default)]
    pub chunks: u64,
    pub parts: Vec<PartRecord>,
    pub complete: bool,
    /// Seconds since the Unix epoch at the last commit.
    pub updated_at: u64,
}

impl Checkpoint {
    pub fn new(spec: RunSpec, worker_id: u64, owner: String, rows_owned: u64) -> Self {
        Checkpoint {
            version: VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            spec,
            worker_id,
            owner,
            rows_owned,
            rows_done: 0,
            rows_embedded: 0,
            rows_reused: 0,
            rows_deduplicated: 0,
            embed_done: 0,
            reuse: None,
            rows_failed: 0,
            failures_bytes: 0,
            failure_files: Vec::new(),
            texts_truncated: 0,
            tokens: 0,
            chunks: 0,
            parts: Vec::new(),
            complete: rows_owned == 0,
            updated_at: now(),
        }
    }

    pub fn next_part(&self) -> usize {
        self.parts.len()
    }

    pub fn load(dir: &Location) -> Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        match path.read()? {
            Some(bytes) => Self::parse(&bytes, &path).map(Some),
            None => Ok(None),
        }
    }

    /// A checkpoint from the bytes of the file at `path` (named in errors).
    pub fn parse(bytes: &[u8], path: &Location) -> Result<Self> {
        let unreadable = || {
            format!(
                "{} is not a checkpoint this version can read; use --restart to start over",
                path.display()
            )
        };
        let ckpt: Checkpoint = serde_json::from_slice(bytes).with_context(unreadable)?;
        if ckpt.version != VERSION {
            anyhow::bail!("{} (it is version {}, this is {VERSION})", unreadable(), ckpt.version);
        }
        Ok(ckpt)
    }

    /// The file's bytes, stamped with the time of writing.
    pub(crate) fn stamped_bytes(&mut self) -> Result<Vec<u8>> {
        self.updated_at = now();
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        Ok(text)
    }

    /// Writes the checkpoint atomically and durably into a local folder (callers: the worker
    /// folder, after its ownership check).
    pub(crate) fn save(&mut self, dir: &Path) -> Result<()> {
        let text = self.stamped_bytes()?;
        crate::atomic::write(dir, FILE_NAME, &text)
    }

    /// Only the `owner` of the checkpoint in `dir` (a cheap read for the commit fence).
    pub fn owner_on_disk(dir: &Path) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Owner {
            owner: Option<String>,
        }
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice::<Owner>(&bytes).ok().and_then(|o| o.owner)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::run_spec::tests::spec();
        let mut c = Checkpoint::new(spec.clone(), 1, "abc".into(), 10);
        c.rows_done = 4;
        c.save(dir.path()).unwrap();
        let here = Location::Local(dir.path().to_path_buf());
        let back = Checkpoint::load(&here).unwrap().unwrap();
        assert_eq!(back.rows_done, 4);
        assert_eq!(back.spec, spec);
        assert_eq!(Checkpoint::owner_on_disk(dir.path()).unwrap().as_deref(), Some("abc"));
        assert!(Checkpoint::load(&here.join("none")).unwrap().is_none());
        let old = std::fs::read_to_string(dir.path().join(FILE_NAME))
            .unwrap()
            .replace("\"version\": 4", "\"version\": 1");
        std::fs::write(dir.path().join(FILE_NAME), old).unwrap();
        let err = Checkpoint::load(&here).unwrap_err().to_string();
        assert!(err.contains("--restart") && err.contains("version 1"), "{err}");
    }
}
