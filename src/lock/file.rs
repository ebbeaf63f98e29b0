//! The lock on a file system, which offers no compare-and-swap: each step is built to never
//! destroy a lock it did not judge.
//! - create: `O_CREAT | O_EXCL`, so of two creators exactly one succeeds;
//! - take over: the judged lock is *renamed aside* (atomic: of two contenders one gets it), then
//!   its content is compared with what was judged; if it is a newer lock (a third process took
//!   over in between) it is put back where no newer lock exists, and the contender starts again;
//! - refresh: the owner opens the lock, checks through that handle that it is still its own and
//!   rewrites it in place through the same handle, so a lock that was replaced meanwhile is never
//!   overwritten (the write lands in the owner's old file, not the new owner's).
//!
//! The lock is a plain file, so it also works on shared and bucket-mounted folders, where flock
//! is unreliable.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{lost_to, Beat, LockInfo, Seen, CHECK_PATIENCE, FILE_NAME};

/// Creates the lock file with `info` if none exists; false when one does.
pub(super) fn create_new(path: &Path, info: &LockInfo) -> Result<bool> {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut f) => {
            let text = serde_json::to_vec_pretty(info)?;
            f.write_all(&text)
                .and_then(|_| f.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            if let Some(dir) = path.parent() {
                crate::atomic::sync_dir(dir);
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

pub(super) fn read_seen(path: &Path) -> Result<Option<Seen>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let info = serde_json::from_slice(&bytes).ok();
            Ok(Some(Seen { bytes, info, version: None }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Removes the lock at `path` if and only if it still holds `judged` (the bytes the caller
/// decided to take over). The file is renamed aside first, which only one process can do; if
/// what was moved is not what was judged (a newer owner's lock), it is put back, unless an even
/// newer lock exists by then. `token` makes the aside name ours alone.
pub(super) fn take_over(path: &Path, judged: &[u8], token: &str) -> Result<()> {
    let aside = path.with_file_name(format!("{FILE_NAME}.{token}.aside"));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()), // someone else moved it
        Err(e) => return Err(e).with_context(|| format!("cannot move {} aside", path.display())),
    }
    let moved = std::fs::read(&aside).unwrap_or_default();
    if moved != judged {
        put_back(&aside, path);
    }
    let _ = std::fs::remove_file(&aside);
    Ok(())
}

/// Moves `aside` back to `path` unless a file exists there (then `aside` is left to be removed).
fn put_back(aside: &Path, path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(from), Ok(to)) = (
        std::ffi::CString::new(aside.as_os_str().as_bytes()),
        std::ffi::CString::new(path.as_os_str().as_bytes()),
    ) else {
        return;
    };
    // SAFETY: two NUL-terminated paths; renameat2 with RENAME_NOREPLACE fails if `path` exists.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return;
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return;
    }
    // A file system without RENAME_NOREPLACE: a hard link also fails when `path` exists.
    let _ = std::fs::hard_link(aside, path);
}

/// One heartbeat: bumps `info`'s counter in the file if the file is still ours.
pub(super) fn refresh(path: &Path, info: &mut LockInfo, misses: &mut u32) -> Result<Beat> {
    let opened = OpenOptions::new().read(true).write(true).open(path);
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            *misses += 1;
            if *misses >= 3 {
                return Ok(Beat::Lost(format!(
                    "the lock {} disappeared; stopping so that two processes never write one worker folder",
                    path.display()
                )));
            }
            bail!("{} is missing", path.display());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_slice::<LockInfo>(&bytes) {
        Ok(on_disk) if on_disk.owner == info.owner => *misses = 0,
        Ok(other) => return Ok(Beat::Lost(lost_to(&path.display().to_string(), &other))),
        Err(_) => {
            *misses += 1;
            bail!("{} is unreadable", path.display());
        }
    }
    // NOTE: written through the handle that showed our own content: if a contender renamed
    // the file aside meanwhile, this lands in our old file, never in a new owner's.
    info.beat += 1;
    info.heartbeat_at = super::unix_now();
    let text = serde_json::to_vec_pretty(&*info)?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&text))
        .and_then(|_| file.set_len(text.len() as u64))
        .with_context(|| format!("cannot refresh {}", path.display()))?;
    Ok(Beat::Alive)
}

/// Whether the file still holds `owner`'s lock (a missing lock is waited for briefly: a
/// contender may be putting it back).
pub(super) fn check(path: &Path, owner: &str) -> Result<Beat> {
    let deadline = Instant::now() + CHECK_PATIENCE;
    loop {
        match read_seen(path)? {
            Some(Seen { info: Some(on_disk), .. }) if on_disk.owner == owner => return Ok(Beat::Alive),
            Some(Seen { info: Some(other), .. }) => {
                return Ok(Beat::Lost(lost_to(&path.display().to_string(), &other)))
            }
            _ if Instant::now() >= deadline => {
                return Ok(Beat::Lost(format!(
                    "the lock {} is gone; stopping so that two processes never write one worker folder",
                    path.display()
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Removes `owner`'s lock, through the same rename-aside step as a takeover: never a newer lock.
pub(super) fn release(path: &Path, owner: &str) {
    if let Ok(Some(Seen { bytes, info: Some(on_disk), .. })) = read_seen(path) {
        if on_disk.owner == owner {
            let _ = take_over(path, &bytes, owner);
        }
    }
}
