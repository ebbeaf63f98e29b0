//! The local-disk side of the storage seam: plain file operations with the guarantees batch-embed
//! always had on a disk — files replaced whole through atomic.rs (temporary file, fsync, rename,
//! fsync folder), so a reader or a crash never sees half a file.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use tempfile::NamedTempFile;

fn split(path: &Path) -> Result<(&Path, &str)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((dir, name))
}

pub fn read(path: &Path) -> Result<Option<Bytes>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(Bytes::from(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn size(path: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = split(path)?;
    crate::atomic::write(dir, name, bytes)
}

pub fn delete(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

fn entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let list = || format!("cannot list {}", dir.display());
    std::fs::read_dir(dir).with_context(list)?.map(|e| e.with_context(list)).collect()
}

pub fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for e in entries(dir)? {
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(_) => continue, // removed while listing
        };
        if meta.is_file() {
            out.push((e.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    Ok(out)
}

pub fn list_folders(dir: &Path) -> Result<Vec<String>> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder {}", dir.display()))
}

/// What a new file gathers before handing it to the kernel.
/// NOTE: Parquet's writer hands over each page (~14 KB of vectors) in its own `write` (80k for
/// the 574 MB of a no-model chunked run); the kernel zeroes each fresh page-cache page a write
/// does not fill before copying into it, 5% of that run (see BENCHMARKS.md). Writes of a MiB
/// fill whole pages.
const WRITE_BUFFER: usize = 1 << 20;

/// A temporary file beside its target (`.NAME.RANDOM.tmp`, see atomic.rs), renamed into place
/// when finished.
pub struct NewLocalFile {
    tmp: BufWriter<NamedTempFile>,
    target: PathBuf,
}

impl NewLocalFile {
    pub fn new(target: &Path) -> Result<Self> {
        let (dir, name) = split(target)?;
        let tmp = BufWriter::with_capacity(WRITE_BUFFER, crate::atomic::temp_for(dir, name)?);
        Ok(NewLocalFile { tmp, target: target.to_path_buf() })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsync, rename into place, fsync the folder.
    pub fn persist(self) -> Result<()> {
        let (dir, name) = split(&self.target)?;
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", self.target.display()))?;
        crate::atomic::persist(tmp, dir, name)
    }
}

impl Write for NewLocalFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}
