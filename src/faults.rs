//! Fault injection for tests (hidden flag `--debug-faults`), so the recovery paths that real
//! disks, mounts and GPUs trigger rarely are exercised by the suite:
//!
//! - `read=N`: the first N attempts to read a chunk of input fail like a flaky network mount;
//! - `commit=N`: the N-th commit of a part fails like a full disk;
//! - `oom-above=T`: every model batch of more than T tokens (padding included) fails like an
//!   out-of-memory allocation;
//! - `oom-first=N`: the first N model batches fail like an out-of-memory allocation, whatever
//!   their size (memory that another process held for a moment);
//! - `hog-gib=N`: N GiB of GPU memory are taken after the model loads and held for the whole
//!   run (another process on the GPU), so that big batches run out of memory for real (CUDA's
//!   own error, which must be recognised and split). Nothing happens on the CPU.
//!
//! Comma-separated, e.g. `read=2,oom-above=64`. Without the flag nothing here fires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Result};

#[derive(Debug, Default)]
struct Plan {
    read_failures: u64,
    commit_failure: Option<u64>,
    oom_above: Option<usize>,
    oom_first: u64,
    hog_gib: u64,
}

static PLAN: OnceLock<Plan> = OnceLock::new();
static READS: AtomicU64 = AtomicU64::new(0);
static COMMITS: AtomicU64 = AtomicU64::new(0);
static BATCHES: AtomicU64 = AtomicU64::new(0);
static HOG: OnceLock<candle_core::Tensor> = OnceLock::new();

/// Parses and installs a fault plan (once per process).
pub fn install(spec: &str) -> Result<()> {
    let mut plan = Plan::default();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((key, value)) = item.split_once('=') else { bail!("--debug-faults: {item:?} is not KEY=N") };
        let n: u64 =
            value.parse().map_err(|_| anyhow::anyhow!("--debug-faults: {value:?} is not a number"))?;
        match key {
            "read" => plan.read_failures = n,
            "commit" => plan.commit_failure = Some(n),
            "oom-above" => plan.oom_above = Some(n as usize),
            "oom-first" => plan.oom_first = n,
            "hog-gib" => plan.hog_gib = n,
            _ => bail!("--debug-faults: unknown fault {key:?} (read, commit, oom-above, oom-first, hog-gib)"),
        }
    }
    let _ = PLAN.set(plan);
    Ok(())
}

/// Called before each chunk read.
pub fn read() -> std::io::Result<()> {
    let Some(plan) = PLAN.get() else { return Ok(()) };
    if READS.fetch_add(1, Ordering::Relaxed) < plan.read_failures {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out (injected by --debug-faults)",
        ));
    }
    Ok(())
}

/// Called at each commit, before the part is closed.
pub fn commit() -> std::io::Result<()> {
    let Some(n) = PLAN.get().and_then(|p| p.commit_failure) else { return Ok(()) };
    if COMMITS.fetch_add(1, Ordering::Relaxed) + 1 == n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "no space left on device (injected by --debug-faults)",
        ));
    }
    Ok(())
}

/// An out-of-memory error injected by `oom-above=T`: recognised by type, as a CUDA one is.
#[derive(Debug)]
pub struct InjectedOutOfMemory {
    pub tokens: usize,
}

impl std::fmt::Display for InjectedOutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "out of memory: batch of {} tokens (injected by --debug-faults)", self.tokens)
    }
}

impl std::error::Error for InjectedOutOfMemory {}

/// Called before each model batch with its padded size.
pub fn model_batch(padded_tokens: usize) -> Result<()> {
    let Some(plan) = PLAN.get() else { return Ok(()) };
    let early = BATCHES.fetch_add(1, Ordering::Relaxed) < plan.oom_first;
    match plan.oom_above {
        _ if early => Err(InjectedOutOfMemory { tokens: padded_tokens }.into()),
        Some(limit) if padded_tokens > limit => Err(InjectedOutOfMemory { tokens: padded_tokens }.into()),
        _ => Ok(()),
    }
}

/// Called once the model is loaded: takes `hog-gib` GiB of the GPU's memory for the rest of the
/// process.
pub fn hog(device: &candle_core::Device) -> Result<()> {
    let Some(gib) = PLAN.get().map(|p| p.hog_gib).filter(|&g| g > 0) else { return Ok(()) };
    if device.is_cpu() {
        return Ok(());
    }
    let held = candle_core::Tensor::zeros((gib as usize) << 30, candle_core::DType::U8, device)?;
    let _ = HOG.set(held);
    Ok(())
}
