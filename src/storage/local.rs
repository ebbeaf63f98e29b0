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

/// How much of a new file may wait in the page cache before its writeback to disk is started.
/// NOTE: otherwise the kernel holds most of a part dirty until the commit's fsync writes it all:
/// 0.42 s for the 368 MB first part of a 3.2 s no-model chunked run (BENCHMARKS.md). The
/// committer thread (stages.rs) keeps that wait off the pipeline; starting the writeback as the
/// part grows shortens it (0.26 s there), and the last part's, which a run does wait for.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// A file that asks the kernel to start writing its data to disk every [`WRITEBACK_BYTES`]
/// (Linux `sync_file_range`, which does not wait for the writes; elsewhere nothing). Durability
/// still comes from the fsync in atomic.rs.
struct Writeback {
    file: NamedTempFile,
    written: u64,
    started: u64,
}

impl Writeback {
    fn new(file: NamedTempFile) -> Self {
        Writeback { file, written: 0, started: 0 }
    }

    /// Starts writing back what was written since the last call. An error is only reported (to
    /// tests): the fsync at the end writes the data anyway.
    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (offset, len) = (self.started as libc::off64_t, (self.written - self.started) as libc::off64_t);
        self.started = self.written;
        // SAFETY: the descriptor stays open while `self.file` lives; the call only starts the
        // writeback of a range of it.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_file().as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) -> std::io::Result<()> {
        self.started = self.written;
        Ok(())
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Through the plain file: `NamedTempFile`'s own errors add the temporary path, which
        // the message would then show twice beside the part's real name.
        let n = self.file.as_file_mut().write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_BYTES {
            let _ = self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_file_mut().flush()
    }
}

/// A temporary file beside its target (`.NAME.RANDOM.tmp`, see atomic.rs), renamed into place
/// when finished.
pub struct NewLocalFile {
    tmp: BufWriter<Writeback>,
    target: PathBuf,
}

impl NewLocalFile {
    pub fn new(target: &Path) -> Result<Self> {
        let (dir, name) = split(target)?;
        let tmp = Writeback::new(crate::atomic::temp_for(dir, name)?);
        Ok(NewLocalFile { tmp: BufWriter::with_capacity(WRITE_BUFFER, tmp), target: target.to_path_buf() })
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
        crate::atomic::persist(tmp.file, dir, name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_starts_its_writeback_every_few_mib_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("big.bin");
        let mut file = NewLocalFile::new(&target).unwrap();
        // 20.5 MiB in uneven writes: two writebacks started, the rest left to the fsync.
        let block: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
        let blocks = (20 << 20) / block.len() + 6;
        for _ in 0..blocks {
            file.write_all(&block).unwrap();
        }
        file.flush().unwrap();
        let inner = file.tmp.get_mut();
        assert_eq!(inner.written, (blocks * block.len()) as u64);
        assert!(inner.started >= 2 * WRITEBACK_BYTES && inner.started < inner.written, "{}", inner.started);
        // The range asked for is valid (an error would only have been dropped in `write`).
        inner.start_writeback().unwrap();
        assert_eq!(inner.started, inner.written);
        file.persist().unwrap();
        let back = std::fs::read(&target).unwrap();
        assert_eq!(back.len(), blocks * block.len());
        assert!(back.chunks(block.len()).all(|c| c == block.as_slice()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
