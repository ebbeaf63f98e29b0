//! One `embed` run of one worker: check everything, pick up the checkpoint, then stream the
//! owned rows through four stages joined by bounded channels:
//!
//! ```text
//! reader thread ──chunks──▶ tokenizer thread ──packed batches──▶ model (this thread) ──vectors──▶ writer thread
//! (Parquet, owned rows)     (rayon, length sort)                  (candle)                     (parts, failures, checkpoint)
//! ```
//!
//! The queues hold a few chunks each, so memory stays bounded whatever the input size, and the
//! model never waits on I/O or tokenization while the queue ahead of it is full.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::{Array, UInt32Array};

use crate::checkpoint::{self, Checkpoint, Fingerprint, InputFingerprint};
use crate::config::EmbedConfig;
use crate::embed::{Embedded, Embedder, EmbedderOptions, Prepared};
use crate::heartbeat::{Heartbeat, Live};
use crate::input::{self, Chunk, InputFile};
use crate::lock::WorkerLock;
use crate::model::AttentionImpl;
use crate::output::{part_seq, ShardWriter};
use crate::pool::Pooling;
use crate::progress::{Progress, WorkerProgress};
use crate::shutdown::StopFlag;

/// Rows read and tokenized together: the window sorted by length before packing, and the
/// granularity of checkpoints.
const CHUNK_ROWS: usize = 4096;
/// On the CPU attention is packed (padding costs nothing) and a row takes far longer, so a
/// smaller window keeps checkpoints frequent.
const CPU_CHUNK_ROWS: usize = 1024;
/// `--batch-tokens` on the CPU when not given (packed attention: the budget only bounds memory).
const DEFAULT_CPU_BATCH_TOKENS: usize = 8192;
/// Chunks waiting between two stages.
const QUEUE: usize = 2;
pub const FAILURES_FILE: &str = "failures.jsonl";
/// Attempts at reading a chunk of input before giving up on the file; the waits between them
/// double from [`READ_BACKOFF`] (0.5 + 1 + 2 + 4 + 8 s in all).
const READ_ATTEMPTS: u32 = 6;
const READ_BACKOFF: Duration = Duration::from_millis(500);

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
    /// Part of `elapsed` spent loading the model.
    pub load: Duration,
    pub device: String,
    pub already_complete: bool,
    /// Stopped by a signal before the end; the checkpoint holds what was committed.
    pub interrupted: bool,
    /// Model batches split after running out of memory.
    pub oom_splits: u64,
}

impl Summary {
    /// The all-runs totals a checkpoint holds; this run's figures stay zero.
    fn totals(worker: String, ckpt: &Checkpoint, rows_before: u64, device: String) -> Self {
        Summary {
            worker,
            rows_owned: ckpt.rows_owned,
            rows_before,
            embedded: ckpt.rows_embedded,
            failed: ckpt.rows_failed,
            truncated: ckpt.texts_truncated,
            parts: ckpt.parts.len(),
            device,
            ..Summary::default()
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already_complete {
            return write!(
                f,
                "{}: already complete ({} rows: {} embedded, {} failed); nothing to do",
                self.worker, self.rows_owned, self.embedded, self.failed
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
        writeln!(f, "rows:       {} ({} embedded, {} failed)", self.rows_owned, self.embedded, self.failed)?;
        if self.rows_before > 0 {
            writeln!(f, "resumed:    {} rows were done before this run", self.rows_before)?;
        }
        writeln!(f, "truncated:  {} texts", self.truncated)?;
        writeln!(f, "tokens:     {} this run (attention padding {:.1}%)", self.tokens, padding * 100.0)?;
        writeln!(f, "parts:      {}", self.parts)?;
        if self.oom_splits > 0 {
            writeln!(f, "memory:     {} batches split after running out of memory", self.oom_splits)?;
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

/// Runs one worker to the end, or until `stop` is set (then `Summary::interrupted`).
pub fn run(cfg: &EmbedConfig, stop: &StopFlag) -> Result<Summary> {
    let started = Instant::now();
    // Check every input before anything is written.
    let paths = input::discover(&cfg.inputs)?;
    let inputs = input::open_all(&paths, &cfg.text_column, cfg.id_column.as_deref())?;
    let plan: Vec<(usize, Vec<Range<u64>>)> = inputs
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (i, cfg.partition.owned_ranges(f.global_rows())))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let rows_owned: u64 = plan.iter().flat_map(|(_, r)| r).map(|r| r.end - r.start).sum();

    let device = crate::device::open(cfg.device, cfg.cuda_lib_dir.as_deref(), &mut |note| {
        if !cfg.quiet {
            eprintln!("batch-embed: {note}");
        }
    })?;
    let dtype = crate::device::dtype(cfg.dtype, &device);
    let device_name = crate::device::describe(&device);
    let model_hash = checkpoint::model_hash(
        &cfg.model.config,
        &cfg.model.tokenizer,
        &cfg.model.weights,
        cfg.model.index.as_deref(),
    )?;
    let fingerprint = Fingerprint {
        inputs: inputs
            .files
            .iter()
            .map(|f| InputFingerprint { path: canonical(&f.path), bytes: f.bytes, rows: f.rows })
            .collect(),
        text_column: cfg.text_column.clone(),
        id_column: cfg.id_column.clone(),
        model: canonical(&cfg.model.dir),
        model_hash: model_hash.clone(),
        attention: cfg.attention.as_str().to_string(),
        max_tokens: cfg.max_tokens,
        prompt: cfg.prompt.clone(),
        normalize: cfg.normalize,
        dtype: format!("{dtype:?}").to_lowercase(),
        output_dtype: cfg.output_dtype.as_str().to_string(),
        num_workers: cfg.partition.num_workers,
        worker_id: cfg.partition.worker_id,
        stride_block: cfg.partition.block,
    };
    let dir = cfg.worker_dir();
    let worker = format!("worker {} of {}", cfg.partition.worker_id, cfg.partition.num_workers);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let lock = WorkerLock::acquire(&dir, cfg.force_unlock, cfg.lock_stale, &mut |note| {
        if !cfg.quiet {
            eprintln!("batch-embed: {note}");
        }
    })?;
    let ckpt = open_worker_dir(&dir, fingerprint, rows_owned, cfg.restart)?;
    let rows_before = ckpt.rows_done;
    let progress_file = WorkerProgress {
        worker_id: cfg.partition.worker_id,
        num_workers: cfg.partition.num_workers,
        host: lock.info().host.clone(),
        pid: lock.info().pid,
        state: if ckpt.complete { "done" } else { "running" }.to_string(),
        rows_owned,
        rows_done: ckpt.rows_done,
        rows_committed: ckpt.rows_done,
        rows_failed: ckpt.rows_failed,
        started_at: lock.info().started_at,
        updated_at: lock.info().started_at,
        history: WorkerProgress::load(&dir).map(|p| p.history).unwrap_or_default(),
        ..WorkerProgress::default()
    };
    if ckpt.complete {
        let _ = progress_file.save(&dir);
        let totals = Summary::totals(worker, &ckpt, rows_before, device_name);
        return Ok(Summary { already_complete: true, elapsed: started.elapsed(), ..totals });
    }
    let heartbeat = Heartbeat::start(dir.clone(), lock, progress_file, stop.clone());
    let ctx = RunContext { cfg, stop, started, device: &device, dtype, device_name, model_hash, worker };
    let result = run_locked(ctx, &inputs, plan, ckpt, &heartbeat);
    match &result {
        Ok(summary) if summary.interrupted => {
            let live = heartbeat.live();
            live.rows_done.store(live.rows_committed.load(Relaxed), Relaxed);
            heartbeat.finish("interrupted", None)
        }
        Ok(_) => heartbeat.finish("done", None),
        Err(e) => heartbeat.finish("failed", Some(format!("{e:#}"))),
    }
    result
}

/// What `run` settled before taking the lock, handed to `run_locked`.
struct RunContext<'a> {
    cfg: &'a EmbedConfig,
    stop: &'a StopFlag,
    started: Instant,
    device: &'a candle_core::Device,
    dtype: candle_core::DType,
    device_name: String,
    model_hash: String,
    worker: String,
}

/// The run proper, holding the worker folder's lock.
fn run_locked(
    ctx: RunContext<'_>,
    inputs: &input::Inputs,
    plan: Vec<(usize, Vec<Range<u64>>)>,
    mut ckpt: Checkpoint,
    heartbeat: &Heartbeat,
) -> Result<Summary> {
    let RunContext { cfg, stop, started, device, dtype, device_name, model_hash, worker } = ctx;
    let dir = cfg.worker_dir();
    let rows_owned = ckpt.rows_owned;
    let rows_before = ckpt.rows_done;
    let live: &Live = heartbeat.live();
    let plan = skip_owned(plan, ckpt.rows_done);

    let options = EmbedderOptions {
        attention: cfg.attention,
        max_tokens: cfg.max_tokens,
        prompt: cfg.prompt.clone(),
        normalize: cfg.normalize,
        batch_tokens: cfg.batch_tokens.unwrap_or(DEFAULT_CPU_BATCH_TOKENS),
        attention_impl: if cfg.debug_noop_model { AttentionImpl::Noop } else { AttentionImpl::Auto },
    };
    let load_started = Instant::now();
    let mut embedder = Embedder::load(&cfg.model, &cfg.model_config, options, dtype, device)?;
    let memory = crate::device::memory_info(device);
    if let (None, Some((free, _))) = (cfg.batch_tokens, memory) {
        embedder.set_batch_tokens(crate::embed::auto_batch_tokens(
            free,
            &cfg.model_config,
            dtype.size_in_bytes(),
            cfg.max_tokens,
        ));
    }
    let load = load_started.elapsed();
    let mut progress = Progress::new(rows_owned, rows_before, cfg.quiet, worker.clone());
    progress.note(&format!(
        "batch-embed: {worker} ({}): {rows_owned} of {} rows in {} files{}; model {} ({}, {} attention, dim {}) on {} {:?}, loaded in {:.1}s; batches of up to {} tokens{}",
        cfg.identity_source,
        inputs.total_rows(),
        inputs.files.len(),
        if rows_before > 0 { format!(", resuming after {rows_before} done") } else { String::new() },
        cfg.model.dir.display(),
        cfg.model_config.architecture.as_str(),
        cfg.attention.as_str(),
        embedder.dim(),
        device_name,
        dtype,
        load_started.elapsed().as_secs_f64(),
        embedder.options().batch_tokens,
        match (cfg.batch_tokens, memory) {
            (None, Some((free, _))) => format!(" (chosen for {:.1} GiB free)", free as f64 / (1u64 << 30) as f64),
            _ => String::new(),
        }
    ));

    let mut writer = ShardWriter::new(
        &dir,
        embedder.dim(),
        cfg.output_dtype,
        inputs.id_type.clone(),
        ckpt.next_part(),
        metadata(cfg, embedder.dim(), &model_hash),
    );
    let chunk_rows = if device.is_cpu() { CPU_CHUNK_ROWS } else { CHUNK_ROWS }.min(cfg.rows_per_part);
    let mut stats = RunStats::default();
    let mut interrupted = false;

    let outcome: Result<()> = std::thread::scope(|s| {
        let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(QUEUE);
        let (prep_tx, prep_rx) = sync_channel::<(Chunk, Prepared)>(QUEUE);
        let (done_tx, done_rx) = sync_channel::<(Chunk, Embedded)>(QUEUE);
        let files = &inputs.files;
        let quiet = cfg.quiet;
        let reader = s.spawn(move || -> Result<()> {
            for (i, ranges) in plan {
                if !read_file(&files[i], &ranges, chunk_rows, &chunk_tx, quiet)? {
                    return Ok(()); // a later stage stopped; it reports why
                }
            }
            Ok(())
        });
        let embedder = &embedder;
        let tokenizer = s.spawn(move || -> Result<()> {
            for chunk in chunk_rx {
                let texts: Vec<Option<&str>> = (0..chunk.texts.len())
                    .map(|i| (!chunk.texts.is_null(i)).then(|| chunk.texts.value(i)))
                    .collect();
                let prepared = embedder.prepare(&texts)?;
                drop(texts);
                if prep_tx.send((chunk, prepared)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let (ckpt, writer, dir, every, rows_per_part) =
            (&mut ckpt, &mut writer, &dir, cfg.checkpoint_every, cfg.rows_per_part);
        let writing = s.spawn(move || {
            write_stage(done_rx, writer, ckpt, dir, every, rows_per_part, live).map_err(|e| {
                e.context(format!(
                    "writing to {} failed; the checkpoint keeps the {} rows committed before, so the same command resumes once this is fixed",
                    dir.display(),
                    ckpt.rows_done
                ))
            })
        });

        let model = || -> Result<()> {
            for (chunk, prepared) in prep_rx {
                if stop.is_set() {
                    interrupted = true;
                    break;
                }
                std::thread::sleep(cfg.debug_chunk_delay);
                let embedded = embedder.run_with(prepared, |texts, tokens| {
                    progress.advance(texts, tokens);
                    live.rows_done.fetch_add(texts, Relaxed);
                    live.tokens.fetch_add(tokens, Relaxed);
                    !stop.is_set()
                })?;
                // A stop mid-chunk drops the chunk: it is not committed, and the next run redoes it.
                let Some(embedded) = embedded else {
                    interrupted = true;
                    break;
                };
                stats.tokens += embedded.tokens;
                stats.padded_tokens += embedded.padded_tokens;
                stats.oom_splits += embedded.oom_splits;
                stats.rows += chunk.rows.len() as u64;
                // Rows without a vector (failures) count as done too.
                let failed = embedded.failed() as u64;
                progress.advance(failed, 0);
                live.rows_done.fetch_add(failed, Relaxed);
                if done_tx.send((chunk, embedded)).is_err() {
                    break;
                }
            }
            Ok(())
        };
        let model_result = model();
        drop(done_tx);
        // The first stage to fail is the cause; later ones only saw their input end.
        let results = [
            reader.join().expect("reader thread panicked"),
            tokenizer.join().expect("tokenizer thread panicked"),
            model_result,
            writing.join().expect("writer thread panicked"),
        ];
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    });
    progress.finish();
    if let Some(reason) = heartbeat.lost() {
        bail!(reason);
    }
    outcome?;
    let summary = Summary {
        rows_this_run: stats.rows,
        tokens: stats.tokens,
        padded_tokens: stats.padded_tokens,
        elapsed: started.elapsed(),
        load,
        oom_splits: stats.oom_splits,
        interrupted,
        ..Summary::totals(worker, &ckpt, rows_before, device_name)
    };
    if interrupted {
        return Ok(summary);
    }
    if ckpt.rows_done != ckpt.rows_owned {
        bail!(
            "internal error: {} of {} owned rows accounted for; the checkpoint in {} is kept, run again to resume",
            ckpt.rows_done,
            ckpt.rows_owned,
            dir.display()
        );
    }
    Ok(summary)
}

#[derive(Default)]
struct RunStats {
    rows: u64,
    tokens: u64,
    padded_tokens: u64,
    oom_splits: u64,
}

/// Sends the owned rows `ranges` of `file` down `tx` in chunks. A read that fails (a flaky
/// network filesystem or bucket mount) is retried with backoff from the first row not yet
/// sent; after [`READ_ATTEMPTS`] the error names the file. Returns false when the receiver is
/// gone (a later stage stopped).
fn read_file(
    file: &InputFile,
    ranges: &[Range<u64>],
    chunk_rows: usize,
    tx: &std::sync::mpsc::SyncSender<Chunk>,
    quiet: bool,
) -> Result<bool> {
    let mut sent = 0u64;
    let mut attempt = 1;
    loop {
        let remaining = match skip_owned(vec![(0, ranges.to_vec())], sent).pop() {
            Some((_, r)) => r,
            None => return Ok(true),
        };
        let error = match input::read_rows(file, &remaining, chunk_rows) {
            Err(e) => e,
            Ok(chunks) => {
                let mut error = None;
                for chunk in chunks {
                    match chunk {
                        Ok(c) => {
                            sent += c.rows.len() as u64;
                            attempt = 1;
                            if tx.send(c).is_err() {
                                return Ok(false);
                            }
                        }
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                match error {
                    None => return Ok(true),
                    Some(e) => e,
                }
            }
        };
        if attempt >= READ_ATTEMPTS {
            return Err(error.context(format!(
                "giving up on {} after {attempt} attempts to read it",
                file.path.display()
            )));
        }
        let wait = READ_BACKOFF * 2u32.pow(attempt - 1);
        if !quiet {
            eprintln!(
                "batch-embed: {error:#}; retrying in {:.1}s (attempt {} of {READ_ATTEMPTS})",
                wait.as_secs_f64(),
                attempt + 1
            );
        }
        std::thread::sleep(wait);
        attempt += 1;
    }
}

/// The writer stage: buffers vectors and failures, and commits (part, failures, checkpoint)
/// every `rows_per_part` rows or `every` seconds, and at the end.
fn write_stage(
    done: std::sync::mpsc::Receiver<(Chunk, Embedded)>,
    writer: &mut ShardWriter,
    ckpt: &mut Checkpoint,
    dir: &Path,
    every: Duration,
    rows_per_part: usize,
    live: &Live,
) -> Result<()> {
    let failures_path = dir.join(FAILURES_FILE);
    let mut pending = Pending::default();
    let mut last_commit = Instant::now();
    let commit = |writer: &mut ShardWriter, pending: &mut Pending, ckpt: &mut Checkpoint| -> Result<()> {
        crate::faults::commit().with_context(|| format!("cannot write a part file in {}", dir.display()))?;
        if let Some(part) = writer.write_part()? {
            ckpt.parts.push(part);
        }
        if !pending.failure_lines.is_empty() {
            // NOTE: opened and closed at each commit: bucket mounts (gcsfuse, SkyPilot's
            // MOUNT_CACHED) upload a file when it is closed, and the checkpoint must not name
            // failure lines the bucket does not have.
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&failures_path)
                .and_then(|mut f| f.write_all(&pending.failure_lines).and_then(|_| f.sync_data()))
                .with_context(|| format!("cannot write {}", failures_path.display()))?;
            ckpt.failures_bytes += pending.failure_lines.len() as u64;
        }
        ckpt.rows_done += pending.rows;
        ckpt.rows_embedded += pending.embedded;
        ckpt.rows_failed += pending.failed;
        ckpt.texts_truncated += pending.truncated;
        ckpt.tokens += pending.tokens;
        ckpt.complete = ckpt.rows_done == ckpt.rows_owned;
        ckpt.save(dir)?;
        live.rows_committed.store(ckpt.rows_done, Relaxed);
        live.rows_failed.store(ckpt.rows_failed, Relaxed);
        *pending = Pending::default();
        Ok(())
    };
    for (chunk, embedded) in done {
        let Chunk { rows: chunk_rows, ids: chunk_ids, .. } = chunk;
        let total = chunk_rows.len() as u64;
        let failed = embedded.failed();
        let (rows, values, ids) = if failed == 0 {
            // The common case: every row has a vector; hand the chunk's buffers over as they are.
            (chunk_rows, embedded.values, chunk_ids)
        } else {
            let mut keep: Vec<u32> = Vec::with_capacity(chunk_rows.len() - failed);
            let mut values = Vec::with_capacity((chunk_rows.len() - failed) * embedded.dim);
            for (i, failure) in embedded.failures.iter().enumerate() {
                match failure {
                    None => {
                        keep.push(i as u32);
                        values.extend_from_slice(&embedded.values[i * embedded.dim..(i + 1) * embedded.dim]);
                    }
                    Some(f) => {
                        let line = serde_json::json!({"row": chunk_rows[i], "reason": f.reason()});
                        writeln!(pending.failure_lines, "{line}")?;
                        pending.failed += 1;
                    }
                }
            }
            let rows = keep.iter().map(|&i| chunk_rows[i as usize]).collect();
            let ids = match &chunk_ids {
                Some(ids) => Some(arrow::compute::take(ids, &UInt32Array::from(keep), None)?),
                None => None,
            };
            (rows, values, ids)
        };
        writer.push(&rows, values, ids)?;
        pending.embedded += rows.len() as u64;
        pending.rows += total;
        pending.truncated += embedded.truncated;
        pending.tokens += embedded.tokens;
        if writer.buffered_rows() >= rows_per_part || last_commit.elapsed() >= every {
            commit(writer, &mut pending, ckpt)?;
            last_commit = Instant::now();
        }
    }
    commit(writer, &mut pending, ckpt)
}

#[derive(Default)]
struct Pending {
    rows: u64,
    embedded: u64,
    failed: u64,
    truncated: u64,
    tokens: u64,
    failure_lines: Vec<u8>,
}

/// An absolute path for the fingerprint, so `data/x.parquet` and `/work/data/x.parquet` agree.
fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// Drops the first `done` owned rows from the plan.
fn skip_owned(plan: Vec<(usize, Vec<Range<u64>>)>, mut done: u64) -> Vec<(usize, Vec<Range<u64>>)> {
    let mut out = Vec::new();
    for (file, ranges) in plan {
        let mut kept = Vec::new();
        for r in ranges {
            let len = r.end - r.start;
            if done >= len {
                done -= len;
            } else {
                kept.push(r.start + done..r.end);
                done = 0;
            }
        }
        if !kept.is_empty() {
            out.push((file, kept));
        }
    }
    out
}

/// Creates or reopens a worker folder and returns the checkpoint to continue from, after
/// removing what an interrupted commit left behind.
fn open_worker_dir(
    dir: &Path,
    fingerprint: Fingerprint,
    rows_owned: u64,
    restart: bool,
) -> Result<Checkpoint> {
    if restart && dir.exists() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
            let ours = part_seq(&name).is_some()
                || name.ends_with(".tmp")
                || name == checkpoint::FILE_NAME
                || name == FAILURES_FILE
                || name == crate::progress::PROGRESS_FILE;
            if ours {
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    let start_over =
        "pass --restart to discard this worker's output and start over, or choose another --output";
    let Some(ckpt) = Checkpoint::load(dir)? else {
        let leftovers = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok())
            .any(|e| part_seq(&e.file_name().to_string_lossy()).is_some());
        if leftovers {
            bail!("{} holds part files but no {}; {start_over}", dir.display(), checkpoint::FILE_NAME);
        }
        let mut fresh = Checkpoint::new(fingerprint, rows_owned);
        let _ = std::fs::remove_file(dir.join(FAILURES_FILE));
        fresh.save(dir)?;
        return Ok(fresh);
    };
    let differences = fingerprint.differences(&ckpt.fingerprint);
    if !differences.is_empty() && ckpt.rows_done == 0 && ckpt.parts.is_empty() {
        // Nothing was committed (say, the model failed to load): nothing to protect.
        let _ = std::fs::remove_file(dir.join(FAILURES_FILE));
        let mut fresh = Checkpoint::new(fingerprint, rows_owned);
        fresh.save(dir)?;
        return Ok(fresh);
    }
    if !differences.is_empty() {
        bail!(
            "{} was written by a different run: {}; re-run with the same inputs, model and options to resume, or {start_over}",
            dir.join(checkpoint::FILE_NAME).display(),
            differences.join("; ")
        );
    }
    // Leftovers of an interrupted commit: parts past the checkpoint, temporary files, and
    // failure lines past the committed length.
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        let stray = part_seq(&name).is_some_and(|seq| seq >= ckpt.next_part()) || name.ends_with(".tmp");
        if stray {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for part in &ckpt.parts {
        if !dir.join(&part.file).is_file() {
            bail!(
                "{} lists {}, which is missing; {start_over}",
                dir.join(checkpoint::FILE_NAME).display(),
                part.file
            );
        }
    }
    let failures = dir.join(FAILURES_FILE);
    if failures.exists() || ckpt.failures_bytes > 0 {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&failures)
            .with_context(|| format!("cannot open {}", failures.display()))?;
        let len = f.metadata()?.len();
        if len < ckpt.failures_bytes {
            bail!("{} is shorter than its checkpoint says; {start_over}", failures.display());
        }
        f.set_len(ckpt.failures_bytes).with_context(|| format!("cannot truncate {}", failures.display()))?;
    }
    Ok(ckpt)
}

/// Key-value metadata stored in every shard: what produced these vectors.
fn metadata(cfg: &EmbedConfig, dim: usize, model_hash: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(format!("batch_embed.{k}"), v);
    };
    put("version", env!("CARGO_PKG_VERSION").to_string());
    put("model", cfg.model.dir.display().to_string());
    put("model_hash", model_hash.to_string());
    put("model_type", cfg.model_config.architecture.as_str().to_string());
    put("dim", dim.to_string());
    put("pooling", Pooling::LastToken.as_str().to_string());
    put("normalized", cfg.normalize.to_string());
    put("attention", cfg.attention.as_str().to_string());
    put("max_tokens", cfg.max_tokens.to_string());
    put("prompt", cfg.prompt.clone().unwrap_or_default());
    put("output_dtype", cfg.output_dtype.as_str().to_string());
    put("worker_id", cfg.partition.worker_id.to_string());
    put("num_workers", cfg.partition.num_workers.to_string());
    put("stride_block", cfg.partition.block.to_string());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn skips_the_first_done_rows_across_files() {
        let plan = vec![(0, vec![0..4, 8..12]), (1, vec![16..20])];
        assert_eq!(skip_owned(plan.clone(), 0), plan);
        assert_eq!(skip_owned(plan.clone(), 5), vec![(0, vec![9..12]), (1, vec![16..20])]);
        assert_eq!(skip_owned(plan.clone(), 8), vec![(1, vec![16..20])]);
        assert_eq!(skip_owned(plan, 12), vec![]);
    }
}
