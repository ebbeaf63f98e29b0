//! The lock on a bucket, where conditional writes give what a file system lacks: a
//! compare-and-swap on `lock.json`.
//! - create: a PUT with `If-None-Match: *` (of two creators exactly one succeeds);
//! - take over: a PUT of our lock with `If-Match` the judged version's ETag, so only the lock
//!   that was judged stale can be replaced, and of two contenders exactly one succeeds;
//! - refresh: the same conditional replace of our own last version: a lock replaced meanwhile by
//!   a new owner is never overwritten;
//! - release: our lock replaced, conditionally, by a `released` copy of itself (never a delete:
//!   an unconditional DELETE could remove a newer owner's lock). A released lock is free: the
//!   next owner replaces it at once.

use anyhow::{bail, Result};
use bytes::Bytes;

use super::{lost_to, Beat, LockInfo, Seen};
use crate::storage::object::{Cond, ObjectLocation, Version};

fn bytes_of(info: &LockInfo) -> Result<Bytes> {
    Ok(Bytes::from(serde_json::to_vec_pretty(info)?))
}

/// Creates the lock with `info` if none exists: its version, or `None` when one exists.
pub(super) fn create_new(lock: &ObjectLocation, info: &LockInfo) -> Result<Option<Version>> {
    lock.put_if(bytes_of(info)?, &Cond::Absent)
}

pub(super) fn read_seen(lock: &ObjectLocation) -> Result<Option<Seen>> {
    Ok(lock.get()?.map(|(bytes, version)| {
        let bytes = bytes.to_vec();
        let info = serde_json::from_slice(&bytes).ok();
        Seen { bytes, info, version: Some(version) }
    }))
}

/// Replaces the judged lock `seen` with `mine`: its version if it worked, `None` when the lock
/// changed since it was judged (someone else moved first).
pub(super) fn take_over(lock: &ObjectLocation, seen: &Seen, mine: &LockInfo) -> Result<Option<Version>> {
    match &seen.version {
        Some(v) => lock.put_if(bytes_of(mine)?, &Cond::Unchanged(v.clone())),
        None => Ok(None),
    }
}

/// One heartbeat: `info` with its counter bumped, written only over our own last version.
pub(super) fn refresh(
    lock: &ObjectLocation,
    info: &mut LockInfo,
    version: &mut Version,
    misses: &mut u32,
) -> Result<Beat> {
    let mut next = info.clone();
    next.beat += 1;
    next.heartbeat_at = super::unix_now();
    if let Some(v) = lock.put_if(bytes_of(&next)?, &Cond::Unchanged(version.clone()))? {
        *info = next;
        *version = v;
        *misses = 0;
        return Ok(Beat::Alive);
    }
    // Our last version is not there any more: see what is.
    match read_seen(lock)? {
        Some(Seen { info: Some(on_disk), version: Some(v), .. }) if on_disk.owner == info.owner && !on_disk.released => {
            // Ours after all (an earlier write landed although its reply was lost): carry on
            // from it.
            *info = on_disk;
            *version = v;
            *misses = 0;
            Ok(Beat::Alive)
        }
        Some(Seen { info: Some(other), .. }) if other.owner != info.owner => Ok(Beat::Lost(lost_to(&lock.url(), &other))),
        Some(_) => Ok(Beat::Lost(format!(
            "the lock {} no longer holds this process's lock; stopping so that two processes never write one worker folder",
            lock.url()
        ))),
        None => {
            *misses += 1;
            if *misses >= 3 {
                return Ok(Beat::Lost(format!(
                    "the lock {} disappeared; stopping so that two processes never write one worker folder",
                    lock.url()
                )));
            }
            bail!("{} is missing", lock.url())
        }
    }
}

/// Whether the bucket still holds `owner`'s lock.
pub(super) fn check(lock: &ObjectLocation, owner: &str) -> Result<Beat> {
    Ok(match read_seen(lock)? {
        Some(Seen { info: Some(on_disk), .. }) if on_disk.owner == owner && !on_disk.released => Beat::Alive,
        Some(Seen { info: Some(other), .. }) if other.owner != owner => {
            Beat::Lost(lost_to(&lock.url(), &other))
        }
        _ => Beat::Lost(format!(
            "the lock {} is gone; stopping so that two processes never write one worker folder",
            lock.url()
        )),
    })
}

/// Marks our lock released, if it is still our last version.
pub(super) fn release(lock: &ObjectLocation, info: &LockInfo, version: &Version) {
    let released = LockInfo { released: true, ..info.clone() };
    if let Ok(bytes) = bytes_of(&released) {
        let _ = lock.put_if(bytes, &Cond::Unchanged(version.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::super::{read, Beat, LockOptions, WorkerLock, FILE_NAME};
    use super::*;
    use crate::storage::Location;

    fn opts(host: &str, stale_ms: u64, force: bool) -> LockOptions {
        LockOptions { force, stale: Duration::from_millis(stale_ms), host: host.into() }
    }

    fn stale_lock(host: &str) -> Vec<u8> {
        let info = LockInfo {
            owner: "0123456789abcdef".into(),
            pid: 4242,
            host: host.into(),
            process_start: None,
            started_at: 1,
            heartbeat_at: 1,
            beat: 0,
            released: false,
        };
        serde_json::to_vec(&info).unwrap()
    }

    #[test]
    fn contenders_for_a_stale_bucket_lock_leave_exactly_one_owner_and_a_released_lock_is_free() {
        let bucket = crate::storage::object::memory("lock-contenders");
        let dir = Location::Object(bucket.child("worker-00000-of-00001"));
        let lock = bucket.child("worker-00000-of-00001").child(FILE_NAME);
        for round in 0..40 {
            lock.put(Bytes::from(stale_lock("gone"))).unwrap();
            let contenders = 2 + round % 3;
            let barrier = Barrier::new(contenders);
            let over = AtomicBool::new(false);
            let results: Vec<Result<Arc<WorkerLock>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..contenders)
                    .map(|i| {
                        let (barrier, over, dir) = (&barrier, &over, &dir);
                        s.spawn(move || {
                            barrier.wait();
                            let held = Arc::new(WorkerLock::acquire(
                                dir,
                                &opts(&format!("h{i}"), 150, false),
                                &mut |_| {},
                            )?);
                            let beating = held.clone();
                            s.spawn(move || {
                                while !over.load(Ordering::Relaxed) {
                                    let _ = beating.refresh();
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                            });
                            Ok(held)
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
            let owner = holders[0].owner();
            assert_eq!(read(&Location::Object(lock.clone())).unwrap().unwrap().owner, owner);
            for r in &results {
                if let Err(e) = r {
                    assert!(e.to_string().contains("still running"), "round {round}: {e}");
                }
            }
            drop(results);
            // Released by marking it so, never by a delete; the next owner takes it at once.
            let after = read(&Location::Object(lock.clone())).unwrap().unwrap();
            assert!(after.released && after.owner == owner, "round {round}: {after:?}");
        }
        let started = std::time::Instant::now();
        let next = WorkerLock::acquire(&dir, &opts("other", 60_000, false), &mut |_| {}).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "a released lock is taken without waiting");
        assert_eq!(next.check().unwrap(), Beat::Alive);
    }

    #[test]
    fn a_bucket_heartbeat_never_overwrites_a_newer_owner() {
        let bucket = crate::storage::object::memory("lock-heartbeat");
        let dir = Location::Object(bucket.child("w"));
        let first = WorkerLock::acquire(&dir, &opts("a", 60_000, false), &mut |_| {}).unwrap();
        assert_eq!(first.refresh().unwrap(), Beat::Alive);
        assert_eq!(read(&dir.join(FILE_NAME)).unwrap().unwrap().beat, 1, "the beat counter moves");
        let second = WorkerLock::acquire(&dir, &opts("b", 60_000, true), &mut |_| {}).unwrap();
        assert!(matches!(first.refresh().unwrap(), Beat::Lost(m) if m.contains("host b")));
        assert!(matches!(first.check().unwrap(), Beat::Lost(_)));
        assert_eq!(read(&dir.join(FILE_NAME)).unwrap().unwrap().owner, second.owner());
        // The loser's drop leaves the new owner's lock alone.
        drop(first);
        let on_bucket = read(&dir.join(FILE_NAME)).unwrap().unwrap();
        assert_eq!((on_bucket.owner, on_bucket.released), (second.owner(), false));
        // A refresh whose reply was lost, but which landed: the next one carries on from it.
        let mut info = second.info();
        let Location::Object(o) = dir.join(FILE_NAME) else { unreachable!() };
        info.beat += 7;
        o.put(Bytes::from(serde_json::to_vec_pretty(&info).unwrap())).unwrap();
        assert_eq!(second.refresh().unwrap(), Beat::Alive);
        assert_eq!(read(&dir.join(FILE_NAME)).unwrap().unwrap().beat, 7);
        assert_eq!(second.refresh().unwrap(), Beat::Alive);
        assert_eq!(read(&dir.join(FILE_NAME)).unwrap().unwrap().beat, 8);
    }
}
