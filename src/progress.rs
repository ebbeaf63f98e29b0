//! The only place that draws progress: an indicatif bar on a terminal, a plain log line every few
//! seconds otherwise (spot workers' logs are read, not watched), nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: Option<Duration>,
    total_rows: u64,
    /// Rows done by earlier runs (resume); not counted in rates.
    before: u64,
    rows: u64,
    tokens: u64,
    started: Instant,
    last_log: Instant,
    /// "worker 3 of 8", at the start of plain progress lines.
    label: String,
}

impl Progress {
    /// `total_rows` this worker owns, of which `before` were done by earlier runs.
    /// Plain lines are used instead of a bar when stderr is not a terminal or when
    /// `BATCH_EMBED_PLAIN_PROGRESS` is set (a launcher running several workers sets it).
    pub fn new(total_rows: u64, before: u64, quiet: bool, label: String) -> Self {
        let now = Instant::now();
        let mut p = Progress {
            bar: None,
            log_every: None,
            total_rows,
            before,
            rows: 0,
            tokens: 0,
            started: now,
            last_log: now,
            label,
        };
        if quiet {
            return p;
        }
        if std::io::stderr().is_terminal() && std::env::var_os("BATCH_EMBED_PLAIN_PROGRESS").is_none() {
            let bar = ProgressBar::with_draw_target(Some(total_rows), ProgressDrawTarget::stderr());
            bar.set_position(before);
            bar.reset_eta();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {msg} ETA {eta}",
                )
                .expect("valid template"),
            );
            p.bar = Some(bar);
        } else {
            p.log_every = Some(Duration::from_secs(10));
        }
        p
    }

    /// Records rows finished (embedded or failed) and the tokens they took.
    pub fn advance(&mut self, rows: u64, tokens: u64) {
        self.rows += rows;
        self.tokens += tokens;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let (rps, tps) = (self.rows as f64 / secs, self.tokens as f64 / secs);
        if let Some(bar) = &self.bar {
            bar.set_position(self.before + self.rows);
            bar.set_message(format!("{rps:.0} rows/s {tps:.0} tokens/s"));
        } else if let Some(every) = self.log_every {
            if self.last_log.elapsed() >= every {
                self.last_log = Instant::now();
                let left = self.total_rows.saturating_sub(self.before + self.rows) as f64;
                let eta = if rps > 0.0 { format!("{:.0}s", left / rps) } else { "?".into() };
                eprintln!(
                    "progress: {}: {}/{} rows, {rps:.0} rows/s, {tps:.0} tokens/s, ETA {eta}",
                    self.label,
                    self.before + self.rows,
                    self.total_rows
                );
            }
        }
    }

    /// A line that is not progress (start-up facts), shown unless quiet.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.log_every.is_some() => eprintln!("{line}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `progress.json` in a worker folder: what `batch-embed status` reads. Rewritten every few
/// seconds while the worker runs (not only at commits), and once more when it stops.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerProgress {
    pub worker_id: u64,
    pub num_workers: u64,
    pub host: String,
    pub pid: u32,
    /// running, done, interrupted or failed.
    pub state: String,
    pub rows_owned: u64,
    /// Owned rows finished, committed or not (what a progress bar shows).
    pub rows_done: u64,
    /// Owned rows in committed parts and failures (what a restart keeps).
    pub rows_committed: u64,
    pub rows_failed: u64,
    /// Owned rows whose vector was copied from a previous output (`--reuse`), committed or not.
    #[serde(default)]
    pub rows_reused: u64,
    /// Committed rows whose vector this worker computed (all runs), and of them the rows whose
    /// text had already been embedded in the same run (repeats, embedded once).
    #[serde(default)]
    pub rows_embedded: u64,
    #[serde(default)]
    pub rows_deduplicated: u64,
    /// With one output row per chunk: chunk rows committed.
    #[serde(default)]
    pub chunks: u64,
    /// Rates over the last minute of this run.
    pub rows_per_s: f64,
    pub tokens_per_s: f64,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub updated_at: u64,
    /// Why the worker failed, when it did.
    pub error: Option<String>,
    /// `(unix time, rows_done)` samples, oldest first, at most one per 30 s, for charts.
    pub history: Vec<(u64, u64)>,
}

impl WorkerProgress {
    /// The `progress.json` of a worker folder, if there is a readable one.
    pub fn load(dir: &crate::storage::Location) -> Option<Self> {
        let bytes = dir.join(crate::worker_folder::PROGRESS).read().ok()??;
        serde_json::from_slice(&bytes).ok()
    }
}
