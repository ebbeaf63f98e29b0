//! What a worker has finished, and the fingerprint of the run that may continue it.
//!
//! `checkpoint.json` in the worker folder is rewritten (temporary file, fsync, rename) after each
//! part file is in place. Order of a commit: the part is renamed into place, failures.jsonl is
//! flushed, then the checkpoint names both. On restart, parts numbered at or past `next_part`
//! and failure lines past `failures_bytes` are leftovers of an interrupted commit and are removed,
//! and the first `rows_done` owned rows are skipped. So every owned row ends up exactly once.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FILE_NAME: &str = "checkpoint.json";

/// Everything that decides which rows a worker owns and what their vectors are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub inputs: Vec<InputFingerprint>,
    pub text_column: String,
    pub id_column: Option<String>,
    pub model: String,
    pub model_hash: String,
    pub attention: String,
    pub max_tokens: usize,
    pub prompt: Option<String>,
    pub normalize: bool,
    pub dtype: String,
    pub output_dtype: String,
    pub num_workers: u64,
    pub worker_id: u64,
    pub stride_block: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputFingerprint {
    pub path: String,
    pub bytes: u64,
    pub rows: u64,
}

impl Fingerprint {
    /// Names each field that differs from `earlier`, with both values.
    pub fn differences(&self, earlier: &Fingerprint) -> Vec<String> {
        let now = serde_json::to_value(self).expect("serializable");
        let then = serde_json::to_value(earlier).expect("serializable");
        let (now, then) = (now.as_object().unwrap(), then.as_object().unwrap());
        let mut out = Vec::new();
        for (key, new) in now {
            let old = then.get(key).unwrap_or(&serde_json::Value::Null);
            if old == new {
                continue;
            }
            if key == "inputs" {
                out.push(describe_input_change(&earlier.inputs, &self.inputs));
            } else {
                out.push(format!("{key} was {} and is now {}", short(old), short(new)));
            }
        }
        out
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn describe_input_change(then: &[InputFingerprint], now: &[InputFingerprint]) -> String {
    if then.len() != now.len() {
        return format!("the input files changed ({} files before, {} now)", then.len(), now.len());
    }
    for (a, b) in then.iter().zip(now) {
        if a.path != b.path {
            return format!("the input files changed ({} is now {})", a.path, b.path);
        }
        if a != b {
            return format!(
                "input {} changed ({} bytes and {} rows before, {} bytes and {} rows now)",
                a.path, a.bytes, a.rows, b.bytes, b.rows
            );
        }
    }
    "the input files changed".to_string()
}

/// A hash of what identifies the model's computation: config.json, tokenizer.json and the
/// weights' index or safetensors headers (names, dtypes, shapes, offsets), not the weight bytes,
/// so it is quick for a 15 GB model.
pub fn model_hash(
    config: &Path,
    tokenizer: &Path,
    weights: &[PathBuf],
    index: Option<&Path>,
) -> Result<String> {
    let mut h = Sha256::new();
    for f in [Some(config), Some(tokenizer), index].into_iter().flatten() {
        h.update(std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?);
    }
    for w in weights {
        h.update(
            safetensors_header(w)
                .with_context(|| format!("{} is not a readable safetensors file", w.display()))?,
        );
    }
    let digest = h.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

fn safetensors_header(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len).min(100 << 20);
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let size = f.metadata()?.len();
    header.extend_from_slice(&size.to_le_bytes());
    Ok(header)
}

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
    pub fingerprint: Fingerprint,
    /// Rows this worker owns in total.
    pub rows_owned: u64,
    /// Owned rows accounted for, in owned-row order: a vector in a listed part or a line in
    /// failures.jsonl.
    pub rows_done: u64,
    pub rows_embedded: u64,
    pub rows_failed: u64,
    /// Length of failures.jsonl that belongs to the committed rows.
    pub failures_bytes: u64,
    pub texts_truncated: u64,
    pub tokens: u64,
    pub parts: Vec<PartRecord>,
    pub complete: bool,
    /// Seconds since the Unix epoch at the last commit.
    pub updated_at: u64,
}

impl Checkpoint {
    pub fn new(fingerprint: Fingerprint, rows_owned: u64) -> Self {
        Checkpoint {
            version: 1,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            fingerprint,
            rows_owned,
            rows_done: 0,
            rows_embedded: 0,
            rows_failed: 0,
            failures_bytes: 0,
            texts_truncated: 0,
            tokens: 0,
            parts: Vec::new(),
            complete: rows_owned == 0,
            updated_at: now(),
        }
    }

    pub fn next_part(&self) -> usize {
        self.parts.len()
    }

    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a checkpoint this version can read; use --restart to start over",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the checkpoint atomically and durably.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        self.updated_at = now();
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut f, self)?;
        f.write_all(b"\n")?;
        f.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        sync_dir(dir);
        Ok(())
    }
}

/// fsync a folder so a rename in it survives power loss (best effort: not every filesystem
/// allows opening a folder).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        Fingerprint {
            inputs: vec![InputFingerprint { path: "a.parquet".into(), bytes: 10, rows: 5 }],
            text_column: "text".into(),
            id_column: None,
            model: "m".into(),
            model_hash: "h".into(),
            attention: "causal".into(),
            max_tokens: 512,
            prompt: None,
            normalize: true,
            dtype: "f32".into(),
            output_dtype: "f32".into(),
            num_workers: 3,
            worker_id: 1,
            stride_block: 4096,
        }
    }

    #[test]
    fn names_what_differs() {
        let a = fp();
        let mut b = fp();
        assert!(b.differences(&a).is_empty());
        b.num_workers = 4;
        b.inputs[0].rows = 6;
        let d = b.differences(&a);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|s| s == "num_workers was 3 and is now 4"), "{d:?}");
        assert!(d.iter().any(|s| s.contains("input a.parquet changed")), "{d:?}");
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoint::new(fp(), 10);
        c.rows_done = 4;
        c.save(dir.path()).unwrap();
        let back = Checkpoint::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.rows_done, 4);
        assert_eq!(back.fingerprint, fp());
        assert!(Checkpoint::load(&dir.path().join("none")).unwrap().is_none());
    }
}
