//! `batch-embed status OUTPUT`: the fleet at a glance, from the output folder alone (so it works
//! on a bucket mount): one line per worker from its `progress.json` and `checkpoint.json`, and
//! totals, as a table or JSON. The live page (`--serve`) is status_page.rs, drawn from the same
//! [`FleetStatus`].

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::lock::unix_now;
use crate::partition::Partition;

#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    pub output: String,
    pub num_workers: u64,
    pub rows_owned: u64,
    pub rows_done: u64,
    pub rows_failed: u64,
    /// Rows whose vector was copied from a previous output (`--reuse`).
    pub rows_reused: u64,
    /// Committed rows whose vector was computed, and of them repeats of a text already
    /// embedded in the same run (embedded once).
    pub rows_embedded: u64,
    pub rows_deduplicated: u64,
    /// With one output row per chunk: chunk rows committed.
    pub chunks: u64,
    /// Sum over running workers.
    pub rows_per_s: f64,
    pub tokens_per_s: f64,
    /// Seconds to go at the current fleet rate (`None` when nothing runs).
    pub eta_s: Option<f64>,
    /// Workers per state.
    pub done: u64,
    pub running: u64,
    pub stale: u64,
    pub interrupted: u64,
    pub failed: u64,
    pub not_started: u64,
    pub complete: bool,
    pub workers: Vec<WorkerStatus>,
    /// Fleet rows done over time, `(unix time, rows)`, from the workers' progress histories.
    pub history: Vec<(u64, u64)>,
    pub generated_at: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerStatus {
    pub worker_id: u64,
    /// done, running, stale (no update for a while), interrupted (stopped by a signal, to be
    /// restarted), failed, or not started.
    pub state: String,
    pub rows_done: u64,
    pub rows_owned: u64,
    pub rows_failed: u64,
    /// Rows whose vector was copied from a previous output (`--reuse`).
    pub rows_reused: u64,
    /// Committed rows embedded, and of them repeats (see [`FleetStatus`]).
    pub rows_embedded: u64,
    pub rows_deduplicated: u64,
    /// With one output row per chunk: chunk rows committed.
    pub chunks: u64,
    pub rows_per_s: f64,
    pub host: Option<String>,
    /// Seconds since the worker last wrote its progress.
    pub updated_s_ago: Option<u64>,
    pub error: Option<String>,
}

/// Reads the output folder. Workers whose progress is older than `stale` while "running" are
/// reported stale (killed or preempted without a chance to say so).
pub fn collect(output: &crate::storage::Location, stale: Duration) -> Result<FleetStatus> {
    let entries = crate::fleet::workers_required(output, " yet")?;
    let now = unix_now();
    // Every worker's checkpoint and progress, read once (many at a time on a bucket).
    let loaded = crate::storage::par_map(&entries, output.is_remote(), |e| {
        let checkpoint = e.checkpoint();
        let unreadable = checkpoint.as_ref().err().map(|e| format!("{e:#}"));
        (checkpoint.ok().flatten(), e.progress(), unreadable)
    });
    // The fleet's shape from the first checkpoint (all workers of a run share it).
    let reference = loaded.iter().find_map(|(c, _, _)| c.clone()).map(|c| c.spec.rows);
    let n = reference
        .as_ref()
        .map(|f| f.num_workers)
        .unwrap_or_else(|| entries.iter().map(|e| e.num_workers).max().unwrap_or(1));
    let total_rows = reference.as_ref().map(|f| f.inputs.iter().map(|i| i.rows).sum::<u64>());
    let block = reference.as_ref().map(|f| f.stride_block).unwrap_or(crate::partition::DEFAULT_BLOCK);

    let mut workers = Vec::new();
    let mut histories = Vec::new();
    for id in 0..n {
        let owned_by_rule =
            total_rows.and_then(|rows| Some(Partition::new(id, n, block).ok()?.owned_count(0..rows)));
        let entry = entries.iter().position(|e| e.worker_id == id && e.num_workers == n);
        let ckpt = entry.and_then(|i| loaded[i].0.clone());
        let progress = entry.and_then(|i| loaded[i].1.clone());
        let Some(ckpt) = ckpt else {
            // A checkpoint that does not read (damaged by hand, or of another version) stops
            // the worker at its next start: say so instead of "not started".
            let unreadable = entry.and_then(|i| loaded[i].2.clone());
            workers.push(WorkerStatus {
                worker_id: id,
                state: if unreadable.is_some() { "failed" } else { "not started" }.into(),
                rows_done: 0,
                rows_owned: owned_by_rule.unwrap_or(0),
                rows_failed: 0,
                rows_reused: 0,
                rows_embedded: 0,
                rows_deduplicated: 0,
                chunks: 0,
                rows_per_s: 0.0,
                host: None,
                updated_s_ago: None,
                error: unreadable,
            });
            continue;
        };
        let age = progress.as_ref().map(|p| now.saturating_sub(p.updated_at));
        let state = if ckpt.complete {
            "done"
        } else {
            match progress.as_ref().map(|p| p.state.as_str()) {
                Some("running") if age.is_some_and(|a| a > stale.as_secs()) => "stale",
                Some("running") => "running",
                Some("failed") => "failed",
                Some("interrupted") => "interrupted",
                // A checkpoint without progress: an earlier version, or killed before the first beat.
                _ => "stale",
            }
        };
        let running = state == "running";
        let (rows_done, rows_failed, rows_reused, rows_embedded, rows_deduplicated) = match &progress {
            Some(p) if running => (
                p.rows_done.max(ckpt.rows_done),
                p.rows_failed.max(ckpt.rows_failed),
                p.rows_reused.max(ckpt.rows_reused),
                p.rows_embedded.max(ckpt.rows_embedded),
                p.rows_deduplicated.max(ckpt.rows_deduplicated),
            ),
            _ => (
                ckpt.rows_done,
                ckpt.rows_failed,
                ckpt.rows_reused,
                ckpt.rows_embedded,
                ckpt.rows_deduplicated,
            ),
        };
        if let Some(p) = &progress {
            histories.push(p.history.clone());
        }
        workers.push(WorkerStatus {
            worker_id: id,
            state: state.into(),
            rows_done,
            rows_owned: ckpt.rows_owned,
            rows_failed,
            rows_reused,
            rows_embedded,
            rows_deduplicated,
            chunks: progress.as_ref().filter(|_| running).map_or(ckpt.chunks, |p| p.chunks.max(ckpt.chunks)),
            rows_per_s: if running { progress.as_ref().map_or(0.0, |p| p.rows_per_s) } else { 0.0 },
            host: progress.as_ref().map(|p| p.host.clone()),
            updated_s_ago: age.or_else(|| Some(now.saturating_sub(ckpt.updated_at))),
            error: progress.as_ref().and_then(|p| p.error.clone()),
        });
    }
    let count = |s: &str| workers.iter().filter(|w| w.state == s).count() as u64;
    let rows_owned: u64 = workers.iter().map(|w| w.rows_owned).sum();
    let rows_done: u64 = workers.iter().map(|w| w.rows_done).sum();
    let rows_per_s: f64 = workers.iter().fold(0.0, |a, w| a + w.rows_per_s);
    let tokens_per_s = loaded
        .iter()
        .filter_map(|(_, p, _)| p.as_ref())
        .filter(|p| p.state == "running" && now.saturating_sub(p.updated_at) <= stale.as_secs())
        .fold(0.0, |a, p| a + p.tokens_per_s);
    let left = rows_owned.saturating_sub(rows_done) as f64;
    Ok(FleetStatus {
        output: output.display().to_string(),
        num_workers: n,
        rows_owned,
        rows_done,
        rows_failed: workers.iter().map(|w| w.rows_failed).sum(),
        rows_reused: workers.iter().map(|w| w.rows_reused).sum(),
        rows_embedded: workers.iter().map(|w| w.rows_embedded).sum(),
        rows_deduplicated: workers.iter().map(|w| w.rows_deduplicated).sum(),
        chunks: workers.iter().map(|w| w.chunks).sum(),
        rows_per_s,
        tokens_per_s,
        eta_s: if left == 0.0 {
            Some(0.0)
        } else if rows_per_s > 0.0 {
            Some(left / rows_per_s)
        } else {
            None
        },
        done: count("done"),
        running: count("running"),
        stale: count("stale"),
        interrupted: count("interrupted"),
        failed: count("failed"),
        not_started: count("not started"),
        complete: count("done") == n,
        history: fleet_history(&histories),
        generated_at: now,
        workers,
    })
}

/// Sums per-worker `(time, rows_done)` samples into fleet totals on a common time grid: at each
/// sample time, each worker counts with its latest sample at or before it.
fn fleet_history(histories: &[Vec<(u64, u64)>]) -> Vec<(u64, u64)> {
    let mut times: Vec<u64> = histories.iter().flatten().map(|&(t, _)| t).collect();
    times.sort_unstable();
    times.dedup();
    // At most ~200 points.
    let step = times.len().div_ceil(200).max(1);
    let picked: Vec<u64> = times.iter().copied().step_by(step).chain(times.last().copied()).collect();
    let mut out: Vec<(u64, u64)> = picked
        .into_iter()
        .map(|t| {
            let rows = histories
                .iter()
                .map(|h| h.iter().take_while(|&&(ts, _)| ts <= t).last().map_or(0, |&(_, r)| r))
                .sum();
            (t, rows)
        })
        .collect();
    out.dedup_by_key(|p| p.0);
    out
}

impl WorkerStatus {
    /// "12s ago", or "-" when the worker never wrote anything.
    pub fn updated_text(&self) -> String {
        self.updated_s_ago.map_or("-".into(), |a| format!("{} ago", human_duration(a as f64)))
    }
}

pub fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Why there is no ETA: no worker running, or none has a rate yet.
pub fn eta_unknown(s: &FleetStatus) -> &'static str {
    match s.running {
        0 => "unknown (nothing running)",
        _ => "unknown (no rate yet)",
    }
}

pub fn render(s: &FleetStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pct = if s.rows_owned > 0 { 100.0 * s.rows_done as f64 / s.rows_owned as f64 } else { 100.0 };
    let _ = writeln!(
        out,
        "{}: {} workers: {} done, {} running, {} stale, {} interrupted, {} failed, {} not started",
        s.output, s.num_workers, s.done, s.running, s.stale, s.interrupted, s.failed, s.not_started
    );
    let _ = writeln!(
        out,
        "progress: {}/{} rows ({pct:.1}%): {} embedded ({} of them repeats), {} reused, {} failed{}; {:.0} rows/s, {:.0} tokens/s; ETA {}",
        s.rows_done,
        s.rows_owned,
        s.rows_embedded,
        s.rows_deduplicated,
        s.rows_reused,
        s.rows_failed,
        if s.chunks > 0 { format!(", {} chunk rows committed", s.chunks) } else { String::new() },
        s.rows_per_s,
        s.tokens_per_s,
        s.eta_s.map_or(eta_unknown(s).to_string(), human_duration)
    );
    let _ = writeln!(
        out,
        "{:>6}  {:<12} {:>12} {:>12} {:>8} {:>10} {:>10} {:>10}  host",
        "worker", "state", "rows done", "owned", "failed", "reused", "rows/s", "updated"
    );
    for w in &s.workers {
        let _ = writeln!(
            out,
            "{:>6}  {:<12} {:>12} {:>12} {:>8} {:>10} {:>10.1} {:>10}  {}{}",
            w.worker_id,
            w.state,
            w.rows_done,
            w.rows_owned,
            w.rows_failed,
            w.rows_reused,
            w.rows_per_s,
            w.updated_text(),
            w.host.as_deref().unwrap_or("-"),
            w.error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_history_sums_latest_samples() {
        let a = vec![(100, 10), (130, 40)];
        let b = vec![(110, 5), (140, 25)];
        assert_eq!(fleet_history(&[a, b]), vec![(100, 10), (110, 15), (130, 45), (140, 65)]);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(42.0), "42s");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(7300.0), "2h01m");
    }
}
