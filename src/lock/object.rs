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
