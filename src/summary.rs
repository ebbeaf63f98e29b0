//! The closing summary of a worker's run.

use std::time::Duration;

use crate::checkpoint::Checkpoint;

/// What a run did, for the closing summary.
#[derive(Debug, Default)]
pub struct Summary {
    pub worker: String,
    /// Rows this worker owns.
    pub rows_owned: u64,
    /// Owned rows already done by earlier runs (resumed).
    pub rows_before: u64,
    /// Totals over all runs of this worker.
    pub embedded: u64,
    pub failed: u64,
    pub truncated: u64,
    /// This run only.
    pub rows_this_run: u64,
    pub tokens: u64,
    pub padded_tokens: u64,
    pub parts: usize,
    pub elapsed: Duration,
    /// Part of `elapsed` spent loading the model (its tokenizer included).
    pub load: Duration,
    pub device: String,
    pub already_complete: bool,
    /// Stopped by a signal before the end; the checkpoint holds what was committed.
    pub interrupted: bool,
    /// Model batches split after running out of memory.
    pub oom_splits: u64,
    /// Texts that ran out of memory alone and were retried after the budget shrank.
    pub oom_retries: u64,
    /// Bytes read from the input files this run (footers, page indexes, owned pages).
    pub input_bytes: u64,
    /// Rows of this run whose text had already been embedded in it (repeats).
    pub deduplicated: u64,
    /// Rows whose vector was copied from a previous output: all runs, and this run.
    pub reused: u64,
    pub reused_this_run: u64,
    /// Bytes read from the earlier outputs of `--reuse` (key and hash columns, then the pages
    /// of the copied vectors), and the time the reuse phase (plan and copy) took.
    pub reuse_source_bytes: u64,
    pub reuse_time: Duration,
    /// With `--chunk-tokens`: what a chunk becomes ("rows" or "mean"), the chunk rows written
    /// (all runs; one row per chunk only) and the chunks embedded this run.
    pub chunking: Option<&'static str>,
    pub chunks: u64,
    pub chunks_this_run: u64,
    /// Object store requests and bytes of this process (none when everything is local).
    pub buckets: Option<crate::storage::object::Meter>,
}

impl Summary {
    /// The all-runs totals a checkpoint holds; this run's figures stay zero.
    pub fn totals(worker: String, ckpt: &Checkpoint, rows_before: u64, device: String) -> Self {
        Summary {
            worker,
            rows_owned: ckpt.rows_owned,
            rows_before,
            embedded: ckpt.rows_embedded,
            reused: ckpt.rows_reused,
            failed: ckpt.rows_failed,
            truncated: ckpt.texts_truncated,
            chunking: match (&ckpt.spec.vectors.chunk_tokens, &ckpt.spec.vectors.chunk_pool) {
                (None, _) => None,
                (Some(_), None) => Some("rows"),
                (Some(_), Some(_)) => Some("mean"),
            },
            chunks: ckpt.chunks,
            parts: ckpt.parts.len(),
            device,
            buckets: crate::storage::object::meter_if_used(),
            ..Summary::default()
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already_complete {
            return write!(
                f,
                "{}: already complete ({} rows: {} embedded, {} reused, {} failed{}); nothing to do",
                self.worker,
                self.rows_owned,
                self.embedded,
                self.reused,
                self.failed,
                if self.chunking == Some("rows") {
                    format!("; {} chunks", self.chunks)
                } else {
                    String::new()
                }
            );
        }
        if self.interrupted {
            return write!(
                f,
                "{}: interrupted; {} of {} rows are committed ({} this run); run the same command to resume",
                self.worker,
                self.embedded + self.failed,
                self.rows_owned,
                self.embedded + self.failed - self.rows_before
            );
        }
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let padding =
            if self.padded_tokens > 0 { 1.0 - self.tokens as f64 / self.padded_tokens as f64 } else { 0.0 };
        writeln!(f, "{}: done", self.worker)?;
        if self.reused > 0 {
            writeln!(
                f,
                "rows:       {} ({} embedded, {} reused, {} failed)",
                self.rows_owned, self.embedded, self.reused, self.failed
            )?;
        } else {
            writeln!(
                f,
                "rows:       {} ({} embedded, {} failed)",
                self.rows_owned, self.embedded, self.failed
            )?;
        }
        if self.rows_before > 0 {
            writeln!(f, "resumed:    {} rows were done before this run", self.rows_before)?;
        }
        if self.reuse_time > Duration::ZERO {
            let t = self.reuse_time.as_secs_f64().max(1e-9);
            writeln!(
                f,
                "reuse:      {} rows copied this run in {:.2}s ({:.0} rows/s, planning included); {:.1} MiB read from earlier outputs",
                self.reused_this_run,
                t,
                self.reused_this_run as f64 / t,
                self.reuse_source_bytes as f64 / (1u64 << 20) as f64
            )?;
        }
        match self.chunking {
            Some("rows") => writeln!(
                f,
                "chunks:     {} rows of chunks ({:.2} per embedded row); {} chunks embedded this run",
                self.chunks,
                self.chunks as f64 / (self.embedded + self.reused).max(1) as f64,
                self.chunks_this_run
            )?,
            Some(_) => writeln!(
                f,
                "chunks:     {} embedded this run, pooled into one vector per row (token-weighted mean)",
                self.chunks_this_run
            )?,
            None => {}
        }
        match self.chunking {
            Some(_) => writeln!(f, "truncated:  {} texts (more than --max-chunks chunks)", self.truncated)?,
            None => writeln!(f, "truncated:  {} texts", self.truncated)?,
        }
        writeln!(
            f,
            "repeats:    {} rows had a text already embedded in this run (embedded once)",
            self.deduplicated
        )?;
        writeln!(f, "tokens:     {} this run (attention padding {:.1}%)", self.tokens, padding * 100.0)?;
        writeln!(f, "parts:      {}", self.parts)?;
        writeln!(
            f,
            "input:      {:.1} MiB read ({} bytes)",
            self.input_bytes as f64 / (1u64 << 20) as f64,
            self.input_bytes
        )?;
        if let Some(m) = &self.buckets {
            writeln!(
                f,
                "buckets:    {} requests ({} GET, {} HEAD, {} PUT, {} multipart, {} LIST, {} DELETE); {:.1} MiB read, {:.1} MiB written",
                m.requests(),
                m.gets,
                m.heads,
                m.puts,
                m.multipart_requests,
                m.lists,
                m.deletes,
                m.bytes_read as f64 / (1u64 << 20) as f64,
                m.bytes_written as f64 / (1u64 << 20) as f64
            )?;
        }
        if self.oom_splits > 0 || self.oom_retries > 0 {
            writeln!(
                f,
                "memory:     {} batches split after running out of memory; {} texts retried alone after the batch budget shrank",
                self.oom_splits, self.oom_retries
            )?;
        }
        let work = (secs - self.load.as_secs_f64()).max(1e-9);
        write!(
            f,
            "time:       {:.2}s on {} (model load {:.2}s); after load {:.1} rows/s, {:.0} tokens/s",
            secs,
            self.device,
            self.load.as_secs_f64(),
            self.rows_this_run as f64 / work,
            self.tokens as f64 / work
        )
    }
}
