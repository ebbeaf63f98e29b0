//! One writer per worker folder: `lock.json` holds the owner's pid, host and a heartbeat the
//! owner refreshes every few seconds while it runs.
//!
//! A second process finding the lock:
//! - same host, owner alive: refuses at once (two processes on one worker folder);
//! - same host, owner gone (pid not running, or a different process now has that pid): takes over;
//! - another host: waits while watching the heartbeat; if it stays still for `stale` the owner
//!   is taken to be gone (a preempted VM or pod, whose replacement has another host name) and
//!   the lock is taken over; if it moves, refuses and names the owner. `--force-unlock` takes
//!   the lock at once.
//!
//! The lock is a plain file created with O_EXCL, so it also works on shared and bucket-mounted
//! folders, where flock is unreliable.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "lock.json";
/// How often the owner refreshes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A lock from another host whose heartbeat has not moved for this long is taken over.
pub const DEFAULT_STALE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    /// The owner's process start time (Linux: clock ticks since boot), to tell a reused pid.
    pub process_start: Option<u64>,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub heartbeat_at: u64,
}

impl LockInfo {
    fn mine() -> Self {
        let now = unix_now();
        LockInfo {
            pid: std::process::id(),
            host: host_name(),
            process_start: process_start(std::process::id()),
            started_at: now,
            heartbeat_at: now,
        }
    }

    fn same_owner(&self, other: &LockInfo) -> bool {
        self.pid == other.pid && self.host == other.host && self.started_at == other.started_at
    }
}

/// A held lock; dropping it removes the file (if it is still ours).
pub struct WorkerLock {
    path: PathBuf,
    info: LockInfo,
    /// Heartbeats in a row that found the lock file missing or unreadable.
    misses: u32,
}

/// What a heartbeat found.
#[derive(Debug, PartialEq)]
pub enum Beat {
    Alive,
    /// The folder is no longer ours; why.
    Lost(String),
}

impl WorkerLock {
    /// Takes the lock of worker folder `dir` (which must exist), following the rules above.
    /// `note` receives one line when an abandoned lock is taken over.
    pub fn acquire(dir: &Path, force: bool, stale: Duration, note: &mut dyn FnMut(&str)) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let mine = LockInfo::mine();
        let mut watching: Option<(LockInfo, Instant)> = None;
        let mut force = force;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let text = serde_json::to_string_pretty(&mine)?;
                    f.write_all(text.as_bytes())
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    crate::checkpoint::sync_dir(dir);
                    return Ok(WorkerLock { path, info: mine, misses: 0 });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
            let held = match read(&path)? {
                Some(info) => info,
                // Vanished or half-written (its owner is creating it right now): look again.
                None => {
                    if watching.is_none() && file_age(&path) > stale {
                        note(&format!(
                            "taking over {}: unreadable and untouched for {}s",
                            path.display(),
                            stale.as_secs()
                        ));
                        remove(&path)?;
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    continue;
                }
            };
            let owner = format!("pid {} on host {}", held.pid, held.host);
            if force {
                note(&format!("--force-unlock: taking over the lock of {owner}"));
                remove(&path)?;
                force = false;
                continue;
            }
            if held.host == mine.host {
                if held.pid != mine.pid && alive(&held) {
                    bail!(
                        "another batch-embed process ({owner}) is writing {}; stop it first, or use another --worker-id or --output",
                        dir.display()
                    );
                }
                note(&format!("taking over the lock of {owner}, which is no longer running"));
                remove(&path)?;
                continue;
            }
            // Another host: watch its heartbeat.
            let age = Duration::from_secs(unix_now().saturating_sub(held.heartbeat_at));
            match &watching {
                Some((first, _)) if first.heartbeat_at != held.heartbeat_at || !first.same_owner(&held) => {
                    bail!(
                        "{} is locked by {owner}, which is still running (heartbeat {}s ago); stop it first, or use another --worker-id or --output. If that process is gone, pass --force-unlock",
                        dir.display(),
                        age.as_secs()
                    );
                }
                Some((_, since)) if since.elapsed() >= stale || age > stale => {
                    note(&format!(
                        "taking over the lock of {owner}: no heartbeat for {}s (a preempted machine?)",
                        age.as_secs().max(since.elapsed().as_secs())
                    ));
                    remove(&path)?;
                    watching = None;
                }
                Some(_) => std::thread::sleep(Duration::from_millis(500)),
                None => {
                    if age < stale {
                        note(&format!(
                            "{} is locked by {owner} (heartbeat {}s ago); waiting up to {}s for it to go stale, or pass --force-unlock",
                            dir.display(),
                            age.as_secs(),
                            stale.as_secs()
                        ));
                    }
                    watching = Some((held, Instant::now()));
                }
            }
        }
    }

    /// Refreshes the heartbeat (called every [`HEARTBEAT`] while the run goes on). An error is
    /// a passing I/O problem (a flaky mount): the caller warns and tries again at the next beat.
    /// [`Beat::Lost`] means another process owns the folder now, or the lock stayed missing for
    /// three beats: the run must stop.
    pub fn refresh(&mut self) -> Result<Beat> {
        match read(&self.path)? {
            Some(on_disk) if on_disk.same_owner(&self.info) => self.misses = 0,
            Some(other) => {
                return Ok(Beat::Lost(format!(
                    "lost the lock {}: it now belongs to pid {} on host {}; stopping so that two processes never write one worker folder",
                    self.path.display(),
                    other.pid,
                    other.host
                )))
            }
            None => {
                self.misses += 1;
                if self.misses >= 3 {
                    return Ok(Beat::Lost(format!(
                        "the lock {} disappeared; stopping so that two processes never write one worker folder",
                        self.path.display()
                    )));
                }
                bail!("{} is missing or unreadable", self.path.display());
            }
        }
        self.info.heartbeat_at = unix_now();
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&self.info)?)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .with_context(|| format!("cannot refresh {}", self.path.display()))?;
        Ok(Beat::Alive)
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }
}

impl Drop for WorkerLock {
    fn drop(&mut self) {
        if let Ok(Some(on_disk)) = read(&self.path) {
            if on_disk.same_owner(&self.info) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The lock's content, or `None` when it is missing or not (yet) complete JSON.
pub fn read(path: &Path) -> Result<Option<LockInfo>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(serde_json::from_str(&text).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

fn file_age(path: &Path) -> Duration {
    std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).unwrap_or_default()
}

/// Whether the lock's owner (on this host) is still running.
fn alive(info: &LockInfo) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(info.pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // The pid may belong to another process now (a restarted container reuses low pids).
    match (info.process_start, process_start(info.pid)) {
        (Some(then), Some(now)) => then == now,
        _ => true,
    }
}

/// The host name written into locks: `BATCH_EMBED_HOSTNAME` if set, else the system's.
pub fn host_name() -> String {
    if let Ok(h) = std::env::var("BATCH_EMBED_HOSTNAME") {
        if !h.is_empty() {
            return h;
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Start time of a process (field 22 of /proc/PID/stat), where there is a /proc.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_owner_on_this_host_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = WorkerLock::acquire(dir.path(), false, DEFAULT_STALE, &mut |_| {}).unwrap();
        assert!(dir.path().join(FILE_NAME).exists());
        // Pretend another live process of this host holds it: our parent shell, say pid 1.
        let mut other = lock.info().clone();
        other.pid = 1;
        other.process_start = process_start(1);
        std::fs::write(dir.path().join(FILE_NAME), serde_json::to_string(&other).unwrap()).unwrap();
        let err = WorkerLock::acquire(dir.path(), false, DEFAULT_STALE, &mut |_| {}).err().unwrap();
        assert!(err.to_string().contains("another batch-embed process (pid 1 on host"), "{err}");
        // Our lock is no longer ours: dropping it must leave the other owner's file alone.
        drop(lock);
        assert!(dir.path().join(FILE_NAME).exists());
    }

    #[test]
    fn a_heartbeat_notices_a_new_owner_and_tolerates_a_passing_miss() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = WorkerLock::acquire(dir.path(), false, DEFAULT_STALE, &mut |_| {}).unwrap();
        assert_eq!(lock.refresh().unwrap(), Beat::Alive);
        let path = dir.path().join(FILE_NAME);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(lock.refresh().is_err(), "one miss is a passing problem");
        std::fs::write(&path, &saved).unwrap();
        assert_eq!(lock.refresh().unwrap(), Beat::Alive);
        let mut other = lock.info().clone();
        other.host = "elsewhere".into();
        std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
        assert!(matches!(lock.refresh().unwrap(), Beat::Lost(m) if m.contains("host elsewhere")));
    }

    #[test]
    fn a_dead_owner_on_this_host_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = LockInfo { pid, host: host_name(), process_start: None, started_at: 1, heartbeat_at: 1 };
        std::fs::write(dir.path().join(FILE_NAME), serde_json::to_string(&dead).unwrap()).unwrap();
        let mut notes = Vec::new();
        let lock = WorkerLock::acquire(dir.path(), false, DEFAULT_STALE, &mut |n| notes.push(n.to_string()))
            .unwrap();
        assert_eq!(lock.info().pid, std::process::id());
        assert!(notes[0].contains("no longer running"), "{notes:?}");
    }

    #[test]
    fn another_hosts_lock_is_taken_over_once_its_heartbeat_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        let other = LockInfo {
            pid: 4242,
            host: "elsewhere".into(),
            process_start: None,
            started_at: now,
            heartbeat_at: now,
        };
        std::fs::write(dir.path().join(FILE_NAME), serde_json::to_string(&other).unwrap()).unwrap();
        let started = Instant::now();
        let mut notes = Vec::new();
        let lock = WorkerLock::acquire(dir.path(), false, Duration::from_secs(1), &mut |n| {
            notes.push(n.to_string())
        })
        .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1), "took over a fresh lock at once");
        assert_eq!(lock.info().host, host_name());
        assert!(notes.iter().any(|n| n.contains("no heartbeat")), "{notes:?}");
    }

    #[test]
    fn another_hosts_live_lock_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut other = LockInfo {
            pid: 4242,
            host: "elsewhere".into(),
            process_start: None,
            started_at: unix_now(),
            heartbeat_at: unix_now(),
        };
        std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
        // A live owner: its heartbeat moves while we watch.
        let beating = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(700));
                other.heartbeat_at += 5;
                std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
            })
        };
        let err = WorkerLock::acquire(dir.path(), false, Duration::from_secs(30), &mut |_| {}).err().unwrap();
        beating.join().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("pid 4242 on host elsewhere") && msg.contains("--force-unlock"), "{msg}");
        let lock = WorkerLock::acquire(dir.path(), true, Duration::from_secs(30), &mut |_| {}).unwrap();
        assert_eq!(lock.info().pid, std::process::id());
    }
}
