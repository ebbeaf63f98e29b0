//! One writer per worker folder: `lock.json` names its owner (a random token, pid, host) and a
//! heartbeat counter the owner bumps every few seconds while it runs.
//!
//! A second process finding the lock:
//! - same host, owner alive: refuses at once (two processes on one worker folder);
//! - same host, owner gone (pid not running, or a different process now has that pid): takes over;
//! - another host: watches the lock; if its content stays unchanged for `stale` by *this*
//!   machine's clock, the owner is taken to be gone (a preempted VM or pod, whose replacement has
//!   another host name) and the lock is taken over; if it changes, refuses and names the owner.
//!   The owner's own clock is never compared with ours, so clock skew between hosts cannot make
//!   a live lock look stale. `--force-unlock` takes the lock at once.
//!
//! These rules are the same wherever the folder is; how each step is made safe against a
//! racing contender depends on the medium: a file system has no compare-and-swap (file.rs:
//! create-exclusive, takeover by renaming aside), a bucket has conditional writes (object.rs:
//! create-if-absent, replace-if-unchanged). Committing is fenced by [`WorkerLock::check`] (see
//! worker_folder.rs).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::storage::object::{ObjectLocation, Version};
use crate::storage::Location;

mod file;
mod object;

pub const FILE_NAME: &str = "lock.json";
/// How often the owner refreshes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A lock from another host whose content has not changed for this long is taken over.
pub const DEFAULT_STALE: Duration = Duration::from_secs(60);
/// How long [`WorkerLock::check`] waits for a lock that is missing for a moment (a contender
/// that renamed it aside and is putting it back) before calling it lost.
const CHECK_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Random, new for every acquisition: what "this lock is mine" means. Also written into the
    /// checkpoint, so a commit can tell a folder taken over by a newer owner.
    pub owner: String,
    pub pid: u32,
    pub host: String,
    /// The owner's process start time (Linux: clock ticks since boot), to tell a reused pid.
    pub process_start: Option<u64>,
    /// Seconds since the Unix epoch, by the owner's clock (shown to people, never compared).
    pub started_at: u64,
    pub heartbeat_at: u64,
    /// Bumped by every heartbeat: a watcher sees the lock change.
    pub beat: u64,
    /// On a bucket, a lock is released by marking it so (never deleted): it is free to take.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl LockInfo {
    fn mine(host: &str) -> Self {
        let now = unix_now();
        LockInfo {
            owner: new_token(),
            pid: std::process::id(),
            host: host.to_string(),
            process_start: process_start(std::process::id()),
            started_at: now,
            heartbeat_at: now,
            beat: 0,
            released: false,
        }
    }

    /// "pid 123 on host gpu-7"
    pub fn describe(&self) -> String {
        format!("pid {} on host {}", self.pid, self.host)
    }
}

/// How a lock is taken.
#[derive(Clone, Debug)]
pub struct LockOptions {
    /// Take over whatever lock is there (`--force-unlock`).
    pub force: bool,
    /// Another host's lock unchanged this long is taken over (`--lock-stale`).
    pub stale: Duration,
    /// The host name written into locks (`host_name()` unless a test plays another host).
    pub host: String,
}

impl LockOptions {
    pub fn new(force: bool, stale: Duration) -> Self {
        LockOptions { force, stale, host: host_name() }
    }
}

/// Where the lock lives.
enum Medium {
    File(PathBuf),
    /// The lock object and the version this process last wrote.
    Object(ObjectLocation, Mutex<Version>),
}

/// A held lock. Dropping it releases it if it is still ours.
pub struct WorkerLock {
    medium: Medium,
    info: Mutex<LockInfo>,
    /// Heartbeats in a row that found the lock file missing or unreadable.
    misses: Mutex<u32>,
}

/// What a heartbeat or a check found.
#[derive(Debug, PartialEq)]
pub enum Beat {
    Alive,
    /// The folder is no longer ours; why.
    Lost(String),
}

/// The lock as read: its bytes, its content when they parse, and (on a bucket) its version.
struct Seen {
    bytes: Vec<u8>,
    info: Option<LockInfo>,
    version: Option<Version>,
}

impl WorkerLock {
    /// Takes the lock of worker folder `dir` (which must exist), following the rules above.
    /// `note` receives one line when a lock is waited for or taken over.
    pub fn acquire(dir: &Location, opts: &LockOptions, note: &mut dyn FnMut(&str)) -> Result<Self> {
        let lock = dir.join(FILE_NAME);
        let shown = dir.display().to_string();
        let mine = LockInfo::mine(&opts.host);
        let held = |medium| WorkerLock { medium, info: Mutex::new(mine.clone()), misses: Mutex::new(0) };
        let mut force = opts.force;
        // The content being watched and since when (by our clock).
        let mut watching: Option<(Vec<u8>, Instant)> = None;
        loop {
            let seen = match &lock {
                Location::Local(path) => {
                    if file::create_new(path, &mine)? {
                        return Ok(held(Medium::File(path.clone())));
                    }
                    file::read_seen(path)?
                }
                Location::Object(o) => {
                    if let Some(v) = object::create_new(o, &mine)? {
                        return Ok(held(Medium::Object(o.clone(), Mutex::new(v))));
                    }
                    object::read_seen(o)?
                }
            };
            let Some(seen) = seen else {
                continue; // vanished between our create and read: try again
            };
            // Takes over the judged lock: on a bucket that makes it ours (or fails because it
            // changed); on a disk it only removes it, and the next round creates ours.
            let take_over = |seen: &Seen| -> Result<Option<WorkerLock>> {
                match &lock {
                    Location::Local(path) => {
                        file::take_over(path, &seen.bytes, &mine.owner)?;
                        Ok(None)
                    }
                    Location::Object(o) => Ok(object::take_over(o, seen, &mine)?
                        .map(|v| held(Medium::Object(o.clone(), Mutex::new(v))))),
                }
            };
            if seen.info.as_ref().is_some_and(|i| i.released) {
                if let Some(held) = take_over(&seen)? {
                    return Ok(held);
                }
                continue;
            }
            if force {
                let owner = seen.info.as_ref().map_or("an unreadable lock".into(), LockInfo::describe);
                note(&format!("--force-unlock: taking over the lock of {owner}"));
                if let Some(held) = take_over(&seen)? {
                    return Ok(held);
                }
                force = false;
                watching = None;
                continue;
            }
            // Unchanged content since we started watching it (by our clock)?
            let unchanged_for = match &watching {
                Some((bytes, since)) if *bytes == seen.bytes => Some(since.elapsed()),
                _ => None,
            };
            let Some(held_by) = &seen.info else {
                // Being written right now, or left half-written by a crash: wait for it to
                // stay unchanged for `stale`.
                match unchanged_for {
                    Some(d) if d >= opts.stale => {
                        note(&format!(
                            "taking over {}: unreadable and unchanged for {}s",
                            lock.display(),
                            opts.stale.as_secs()
                        ));
                        if let Some(held) = take_over(&seen)? {
                            return Ok(held);
                        }
                        watching = None;
                    }
                    Some(_) => std::thread::sleep(Duration::from_millis(200)),
                    None => watching = Some((seen.bytes, Instant::now())),
                }
                continue;
            };
            let owner = held_by.describe();
            if held_by.host == mine.host {
                if alive(held_by) {
                    bail!(
                        "another batch-embed process ({owner}) is writing {shown}; stop it first, or use another --worker-id or --output"
                    );
                }
                note(&format!("taking over the lock of {owner}, which is no longer running"));
                if let Some(held) = take_over(&seen)? {
                    return Ok(held);
                }
                watching = None;
                continue;
            }
            // Another host: watch its lock by our own clock.
            match (&watching, unchanged_for) {
                (Some(_), None) => bail!(
                    "{shown} is locked by {owner}, which is still running (its heartbeat moved while we watched); stop it first, or use another --worker-id or --output. If that process is gone, pass --force-unlock"
                ),
                (Some(_), Some(d)) if d >= opts.stale => {
                    note(&format!(
                        "taking over the lock of {owner}: unchanged for {}s (a preempted machine?)",
                        d.as_secs()
                    ));
                    if let Some(held) = take_over(&seen)? {
                        return Ok(held);
                    }
                    watching = None;
                }
                (Some(_), Some(_)) => std::thread::sleep(Duration::from_millis(250)),
                (None, _) => {
                    if !opts.stale.is_zero() {
                        note(&format!(
                            "{shown} is locked by {owner}; waiting up to {}s for its heartbeat to stop, or pass --force-unlock",
                            opts.stale.as_secs()
                        ));
                    }
                    watching = Some((seen.bytes, Instant::now()));
                }
            }
        }
    }

    /// Refreshes the heartbeat (called every [`HEARTBEAT`] while the run goes on). An error is
    /// a passing I/O problem (a flaky mount or network): the caller warns and tries again at the
    /// next beat. [`Beat::Lost`] means another process owns the folder now, or the lock stayed
    /// missing for three beats: the run must stop. Never writes a lock that is not this
    /// process's own.
    pub fn refresh(&self) -> Result<Beat> {
        let mut misses = self.misses.lock().expect("lock state");
        let mut info = self.info.lock().expect("lock state");
        match &self.medium {
            Medium::File(path) => file::refresh(path, &mut info, &mut misses),
            Medium::Object(o, version) => {
                object::refresh(o, &mut info, &mut version.lock().expect("lock state"), &mut misses)
            }
        }
    }

    /// Whether this process still holds the lock, read from its file or object now. Commits
    /// call this right before each part is put in place.
    pub fn check(&self) -> Result<Beat> {
        let owner = self.owner();
        match &self.medium {
            Medium::File(path) => file::check(path, &owner),
            Medium::Object(o, _) => object::check(o, &owner),
        }
    }

    pub fn info(&self) -> LockInfo {
        self.info.lock().expect("lock state").clone()
    }

    /// The random token of this acquisition.
    pub fn owner(&self) -> String {
        self.info.lock().expect("lock state").owner.clone()
    }
}

impl Drop for WorkerLock {
    fn drop(&mut self) {
        let info = self.info();
        match &self.medium {
            Medium::File(path) => file::release(path, &info.owner),
            Medium::Object(o, version) => object::release(o, &info, &version.lock().expect("lock state")),
        }
    }
}

fn lost_to(lock: &str, other: &LockInfo) -> String {
    format!(
        "lost the lock {lock}: it now belongs to {}; stopping so that two processes never write one worker folder",
        other.describe()
    )
}

/// The lock's content, or `None` when it is missing or not (yet) complete JSON.
pub fn read(lock: &Location) -> Result<Option<LockInfo>> {
    let seen = match lock {
        Location::Local(path) => file::read_seen(path)?,
        Location::Object(o) => object::read_seen(o)?,
    };
    Ok(seen.and_then(|s| s.info))
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

/// 16 random hex digits from the operating system.
pub(crate) fn new_token() -> String {
    let n = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness (never seen): time and pid still make two processes differ.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
    });
    format!("{n:016x}")
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
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::{Arc, Barrier};

    fn here(dir: &std::path::Path) -> Location {
        Location::Local(dir.to_path_buf())
    }

    fn opts(host: &str, stale_ms: u64) -> LockOptions {
        LockOptions { force: false, stale: Duration::from_millis(stale_ms), host: host.into() }
    }

    fn other_host(pid: u32, heartbeat_at: u64) -> LockInfo {
        LockInfo {
            owner: "0123456789abcdef".into(),
            pid,
            host: "elsewhere".into(),
            process_start: None,
            started_at: heartbeat_at,
            heartbeat_at,
            beat: 0,
            released: false,
        }
    }

    #[test]
    fn a_held_lock_refuses_a_second_owner_on_this_host_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock =
            WorkerLock::acquire(&here(dir.path()), &LockOptions::new(false, DEFAULT_STALE), &mut |_| {})
                .unwrap();
        // A second acquisition on this host while the first is alive (this very process).
        let err =
            WorkerLock::acquire(&here(dir.path()), &LockOptions::new(false, DEFAULT_STALE), &mut |_| {})
                .err()
                .unwrap();
        assert!(err.to_string().contains("another batch-embed process (pid"), "{err}");
        // Pretend another live process of this host holds it: pid 1, say.
        let mut other = lock.info();
        other.owner = "ffff".into();
        other.pid = 1;
        other.process_start = process_start(1);
        std::fs::write(dir.path().join(FILE_NAME), serde_json::to_string(&other).unwrap()).unwrap();
        assert!(matches!(lock.check().unwrap(), Beat::Lost(m) if m.contains("pid 1 on host")));
        // Our lock is no longer ours: dropping it must leave the other owner's file alone.
        drop(lock);
        assert_eq!(read(&here(&dir.path().join(FILE_NAME))).unwrap().unwrap().owner, "ffff");
    }

    #[test]
    fn a_heartbeat_notices_a_new_owner_and_tolerates_a_passing_miss() {
        let dir = tempfile::tempdir().unwrap();
        let lock =
            WorkerLock::acquire(&here(dir.path()), &LockOptions::new(false, DEFAULT_STALE), &mut |_| {})
                .unwrap();
        assert_eq!(lock.refresh().unwrap(), Beat::Alive);
        let path = dir.path().join(FILE_NAME);
        assert_eq!(read(&here(&path)).unwrap().unwrap().beat, 1, "the beat counter moves");
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(lock.refresh().is_err(), "one miss is a passing problem");
        std::fs::write(&path, &saved).unwrap();
        assert_eq!(lock.refresh().unwrap(), Beat::Alive);
        let mut other = lock.info();
        other.owner = "new-owner".into();
        other.host = "elsewhere".into();
        std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
        assert!(matches!(lock.refresh().unwrap(), Beat::Lost(m) if m.contains("host elsewhere")));
        // Refresh did not touch the new owner's lock.
        assert_eq!(read(&here(&path)).unwrap().unwrap(), other);
    }

    #[test]
    fn a_refresh_racing_a_takeover_never_overwrites_the_new_owner() {
        // The owner has opened its lock; a contender renames it aside and creates its own; the
        // owner's write must land in its old file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let lock = WorkerLock::acquire(&here(dir.path()), &opts("a", 60_000), &mut |_| {}).unwrap();
        let mut handle = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        std::fs::rename(&path, dir.path().join("aside")).unwrap();
        let newer = WorkerLock::acquire(&here(dir.path()), &opts("b", 60_000), &mut |_| {}).unwrap();
        handle.write_all(b"{}").unwrap();
        assert_eq!(read(&here(&path)).unwrap().unwrap().owner, newer.owner());
        assert!(matches!(lock.refresh().unwrap(), Beat::Lost(_)));
        assert_eq!(read(&here(&path)).unwrap().unwrap().owner, newer.owner());
    }

    #[test]
    fn a_dead_owner_on_this_host_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut dead = other_host(pid, 1);
        dead.host = host_name();
        std::fs::write(dir.path().join(FILE_NAME), serde_json::to_string(&dead).unwrap()).unwrap();
        let mut notes = Vec::new();
        let lock =
            WorkerLock::acquire(&here(dir.path()), &LockOptions::new(false, DEFAULT_STALE), &mut |n| {
                notes.push(n.to_string())
            })
            .unwrap();
        assert_eq!(lock.info().pid, std::process::id());
        assert!(notes[0].contains("no longer running"), "{notes:?}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("aside")),
            "the aside file is removed"
        );
    }

    #[test]
    fn another_hosts_lock_is_taken_over_once_unchanged_for_the_stale_time_by_our_clock() {
        let dir = tempfile::tempdir().unwrap();
        // Its clock runs an hour ahead: its heartbeat time looks fresh forever. Only our own
        // timer counts.
        let ahead = other_host(4242, unix_now() + 3600);
        std::fs::write(dir.path().join(FILE_NAME), serde_json::to_string(&ahead).unwrap()).unwrap();
        let started = Instant::now();
        let mut notes = Vec::new();
        let lock =
            WorkerLock::acquire(&here(dir.path()), &opts("here", 1000), &mut |n| notes.push(n.to_string()))
                .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1), "took over before the stale time");
        assert_eq!(lock.info().host, "here");
        assert!(notes.iter().any(|n| n.contains("unchanged for")), "{notes:?}");
    }

    #[test]
    fn a_live_lock_from_a_host_whose_clock_is_behind_is_not_taken() {
        // Its clock runs an hour behind: its heartbeat time looks an hour old, but it moves.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut behind = other_host(4242, unix_now() - 3600);
        std::fs::write(&path, serde_json::to_string(&behind).unwrap()).unwrap();
        let beating = {
            let path = path.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    std::thread::sleep(Duration::from_millis(300));
                    behind.beat += 1;
                    behind.heartbeat_at += 5;
                    std::fs::write(&path, serde_json::to_string(&behind).unwrap()).unwrap();
                }
            })
        };
        let err = WorkerLock::acquire(&here(dir.path()), &opts("here", 30_000), &mut |_| {}).err().unwrap();
        beating.join().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("pid 4242 on host elsewhere") && msg.contains("--force-unlock"), "{msg}");
        let forced = LockOptions { force: true, ..opts("here", 30_000) };
        let lock = WorkerLock::acquire(&here(dir.path()), &forced, &mut |_| {}).unwrap();
        assert_eq!(lock.info().host, "here");
    }

    #[test]
    fn contenders_for_a_stale_lock_at_the_same_instant_leave_exactly_one_owner() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        for round in 0..100 {
            // A stale lock: another host's (taken over after 200 ms unchanged), or a dead
            // process's on host h0 (taken over at once by contender 0, which plays h0).
            let stale = if round % 2 == 0 {
                other_host(4242, 1)
            } else {
                LockInfo { host: "h0".into(), pid: dead_pid, ..other_host(0, 1) }
            };
            std::fs::write(&path, serde_json::to_string(&stale).unwrap()).unwrap();
            let contenders = 2 + round % 3;
            let barrier = Barrier::new(contenders);
            let over = AtomicBool::new(false);
            let results: Vec<Result<Arc<WorkerLock>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..contenders)
                    .map(|i| {
                        let (barrier, over, dir) = (&barrier, &over, dir.path());
                        let host = format!("h{i}");
                        s.spawn(move || {
                            barrier.wait();
                            let lock =
                                Arc::new(WorkerLock::acquire(&here(dir), &opts(&host, 200), &mut |_| {})?);
                            // A winner beats like a live worker until every contender is done.
                            let beating = lock.clone();
                            s.spawn(move || {
                                while !over.load(Ordering::Relaxed) {
                                    let _ = beating.refresh();
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                            });
                            Ok(lock)
                        })
                    })
                    .collect();
                let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
                over.store(true, Ordering::Relaxed);
                out
            });
            let holders: Vec<&Arc<WorkerLock>> = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter(|l| l.check().unwrap() == Beat::Alive)
                .collect();
            assert_eq!(holders.len(), 1, "round {round}: {} holders", holders.len());
            assert_eq!(read(&here(&path)).unwrap().unwrap().owner, holders[0].owner(), "round {round}");
            for r in &results {
                if let Err(e) = r {
                    let msg = e.to_string();
                    assert!(msg.contains("still running") || msg.contains("another batch-embed"), "{msg}");
                }
            }
            drop(results);
            assert!(!path.exists(), "round {round}: the holder's drop removes its lock");
        }
    }
}
