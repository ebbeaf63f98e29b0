//! `embed --devices cuda:0,cuda:1,…`: one worker process per device on this machine.
//!
//! The machine's own identity (flags, Kubernetes, Slurm, SkyPilot: box `b` of `B`) is split
//! over its `G` devices: device `g` runs worker `b*G + g` of `B*G`, with the usual stride rule,
//! so a fleet of multi-GPU boxes is a fleet of single-GPU workers. Each child is this binary
//! with the same arguments plus `--device`, `--worker-id` and `--num-workers`; SIGTERM/SIGINT
//! are passed on to every child. Exit code: 0 when all finished, 75 when none failed but some
//! were interrupted, 1 otherwise.
//!
//! Signals: each child runs in a process group of its own, so a signal sent to the launcher's
//! whole group (Ctrl-C in a terminal, Slurm's and Kubernetes' stop signals) reaches a child only
//! once, passed on by the launcher; a child signalled twice would exit at once without committing
//! its finished work. A child whose launcher dies (kill -9) gets SIGTERM from the kernel and
//! stops as if signalled.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::device::DeviceChoice;
use crate::identity::{Identity, ENGINE_VARIABLES};
use crate::shutdown::EXIT_INTERRUPTED;

/// Flags the launcher sets per child; the user's values (if any) are dropped from the children.
const PER_CHILD_FLAGS: &[&str] = &["--devices", "--device", "--worker-id", "--num-workers"];

/// Runs one child per device and waits for all of them.
pub fn run(devices: &[DeviceChoice], machine: &Identity, quiet: bool) -> Result<ExitCode> {
    if devices.is_empty() {
        bail!("--devices needs at least one device");
    }
    let g = devices.len() as u64;
    let total = machine.num_workers * g;
    let exe = std::env::current_exe().context("cannot find this program's path to start workers")?;
    let args = child_args(std::env::args_os().skip(1).collect());
    let children: Arc<Mutex<Vec<(u64, Child)>>> = Arc::new(Mutex::new(Vec::new()));

    // Pass signals on: each child stops gracefully on the first and at once on the second.
    // NOTE: read in the wait loop below, not on a thread of their own: a child's parent-death
    // signal comes again each time it is handed to another live thread of a dying launcher, and
    // a second SIGTERM means "exit at once"; a launcher with one thread sends exactly one.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    for (i, device) in devices.iter().enumerate() {
        let worker = machine.worker_id * g + i as u64;
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .args(["--device", &device_arg(*device), "--worker-id", &worker.to_string()])
            .args(["--num-workers", &total.to_string()])
            .env("BATCH_EMBED_PLAIN_PROGRESS", "1")
            // NOTE: the launcher resolved --model already (a Hub model is in the cache now):
            // the children read that snapshot without asking the Hub again, so all of them use
            // the commit the launcher saw.
            .env("HF_HUB_OFFLINE", "1");
        for v in ENGINE_VARIABLES.iter().chain(&["BATCH_EMBED_WORKER_ID", "BATCH_EMBED_NUM_WORKERS"]) {
            cmd.env_remove(v);
        }
        cmd.process_group(0);
        let launcher = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The launcher may have died before the line above took effect.
                if libc::getppid() != launcher {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start worker {worker}"))?;
        if !quiet {
            eprintln!(
                "batch-embed: started worker {worker} of {total} on {} (pid {}); machine {} of {} from {}",
                device_arg(*device),
                child.id(),
                machine.worker_id,
                machine.num_workers,
                machine.source
            );
        }
        children.lock().expect("children").push((worker, child));
    }
    // Wait for every child, polling, and pass signals on meanwhile.
    let mut codes: Vec<(u64, Option<i32>)> = Vec::new();
    loop {
        {
            let mut list = children.lock().expect("children");
            for _ in signals.pending() {
                for (_, child) in list.iter() {
                    // SAFETY: signalling our own child process.
                    unsafe { libc::kill(child.id() as libc::pid_t, SIGTERM) };
                }
            }
            let mut i = 0;
            while i < list.len() {
                if let Some(status) = list[i].1.try_wait()? {
                    let (worker, _) = list.remove(i);
                    codes.push((worker, status.code()));
                } else {
                    i += 1;
                }
            }
            if list.is_empty() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    codes.sort();
    let failed: Vec<String> = codes
        .iter()
        .filter(|(_, c)| *c != Some(0) && *c != Some(EXIT_INTERRUPTED.into()))
        .map(|(w, c)| {
            format!("worker {w} ({})", c.map_or("killed by a signal".into(), |c| format!("exit {c}")))
        })
        .collect();
    if !failed.is_empty() {
        eprintln!("error: {} failed", failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    if codes.iter().any(|(_, c)| *c == Some(EXIT_INTERRUPTED.into())) {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

fn device_arg(d: DeviceChoice) -> String {
    match d {
        DeviceChoice::Auto => "auto".into(),
        DeviceChoice::Cpu => "cpu".into(),
        DeviceChoice::Cuda(n) => format!("cuda:{n}"),
    }
}

/// The launcher's arguments without the per-child flags (in `--flag value` and `--flag=value`
/// forms).
fn child_args(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        let s = a.to_string_lossy();
        if PER_CHILD_FLAGS.contains(&s.as_ref()) {
            skip_value = true;
            continue;
        }
        if PER_CHILD_FLAGS.iter().any(|f| s.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_arguments_drop_the_per_child_flags() {
        let args: Vec<OsString> = [
            "embed",
            "--devices",
            "cuda:0,cuda:1",
            "--model",
            "m",
            "--worker-id=2",
            "--num-workers",
            "4",
            "--device",
            "cpu",
            "--output",
            "o",
            "in.parquet",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let kept: Vec<String> = child_args(args).iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(kept, ["embed", "--model", "m", "--output", "o", "in.parquet"]);
    }
}
