//! Files that appear whole or not at all: written under a temporary name in the same folder
//! (`.NAME.RANDOM.tmp`, made by `tempfile`), fsynced, renamed into place, and the folder fsynced
//! so the rename survives power loss. Every file batch-embed replaces goes through here (part
//! files, checkpoint.json, progress.json); the lock has its own protocol (lock.rs).
//!
//! A crash leaves at most a `*.tmp` file, which the next owner of the folder removes.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// Suffix of every temporary file: what recovery removes.
pub const TMP_SUFFIX: &str = ".tmp";

/// A new temporary file in `dir` that will become `dir/name`.
pub fn temp_for(dir: &Path, name: &str) -> Result<NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(TMP_SUFFIX)
        // NOTE: tempfile makes files only the owner can read; outputs are shared (a fleet's
        // bucket, a team's file system), so they get the usual rw-r--r--.
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file for {} in {}", name, dir.display()))
}

/// Makes a finished temporary file `dir/name`: fsync the data, rename, fsync the folder.
pub fn persist(tmp: NamedTempFile, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    tmp.as_file().sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(&path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Replaces `dir/name` with `bytes`, atomically and durably.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_for(dir, name)?;
    tmp.write_all(bytes).with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    persist(tmp, dir, name)
}

/// fsync a folder so a rename in it survives power loss (best effort: not every file system
/// allows opening a folder).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.json", b"one").unwrap();
        write(dir.path(), "a.json", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"two");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names, ["a.json"]);
        // An abandoned temporary file is named so that recovery finds it, and dropped ones vanish.
        let tmp = temp_for(dir.path(), "b.parquet").unwrap();
        let name = tmp.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with(".b.parquet.") && name.ends_with(TMP_SUFFIX), "{name}");
        drop(tmp);
        assert!(!dir.path().join(name).exists());
    }
}
