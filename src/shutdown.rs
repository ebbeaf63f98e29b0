//! SIGTERM / SIGINT: the first signal asks the run to stop at the next batch boundary, commit
//! what is finished and exit with [`EXIT_INTERRUPTED`]; a second signal, or `--stop-timeout`
//! passing, exits at once (a second SIGTERM within a second of the first is taken as the same
//! request, delivered twice). Either way the last checkpoint stays valid (see checkpoint.rs), so
//! the same command resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A SIGTERM this soon after the first is the same request delivered twice.
const DUPLICATE: Duration = Duration::from_secs(1);

/// Exit code of a run stopped by a signal (or a second signal): "interrupted, run me again".
/// 75 is EX_TEMPFAIL in sysexits.h; launchers match on it to restart without counting a failure.
pub const EXIT_INTERRUPTED: u8 = 75;

/// Shared "please stop" flag, set by the signal thread (or by tests of the pipeline).
#[derive(Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        StopFlag::default()
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

/// Installs the signal handlers. Until this runs, signals keep their default action (exit at
/// once), which is as safe as kill -9.
pub fn install(timeout: Duration, quiet: bool) -> Result<StopFlag> {
    let stop = StopFlag::new();
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first: Option<(i32, Instant)> = None;
            for signal in signals.forever() {
                let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
                match first {
                    // NOTE: the same stop notice can arrive twice at once (a launcher passing on
                    // a signal that its process group also got, a parent's death signal beside a
                    // supervisor's); a repeated SIGTERM within DUPLICATE is not a demand to hurry.
                    Some((SIGTERM, at)) if signal == SIGTERM && at.elapsed() < DUPLICATE => {
                        if !quiet {
                            eprintln!("batch-embed: {name} again at once: taken as the same stop request");
                        }
                        continue;
                    }
                    Some(_) => {
                        eprintln!("batch-embed: second {name}: exiting now; the last checkpoint is kept");
                        std::process::exit(EXIT_INTERRUPTED.into());
                    }
                    None => first = Some((signal, Instant::now())),
                }
                flag.set();
                if !quiet {
                    eprintln!(
                        "batch-embed: {name}: finishing the batch in flight, saving the checkpoint (at most {}s; signal again to exit at once)",
                        timeout.as_secs_f64()
                    );
                }
                std::thread::spawn(move || {
                    std::thread::sleep(timeout);
                    eprintln!(
                        "batch-embed: still busy {}s after {name}: exiting now; the last checkpoint is kept",
                        timeout.as_secs_f64()
                    );
                    std::process::exit(EXIT_INTERRUPTED.into());
                });
            }
        })
        .context("cannot start the signal thread")?;
    Ok(stop)
}
