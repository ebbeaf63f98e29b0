//! The four stages of a worker's run, each a function that owns its channel ends, so the
//! pipeline is only wiring:
//!
//! ```text
//! read ──Chunk──▶ tokenize ──(Chunk, Prepared)──▶ model ──(Chunk, Embedded)──▶ write
//! ```
//!
//! A stage returns when its input ends or its output is gone (a later stage stopped; that stage
//! reports why). The first error is the cause; the others only saw their channel close.

use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use anyhow::Result;
use arrow::array::{Array, UInt32Array};

use crate::checkpoint::Checkpoint;
use crate::embed::{Embedded, Embedder, Prepared};
use crate::failures;
use crate::heartbeat::Live;
use crate::input::{self, Chunk, Damaged, InputFile};
use crate::output::{ChunkColumns, FinishedPart, ShardWriter};
use crate::progress::Progress;
use crate::shutdown::StopFlag;
use crate::sync::dedup::{ChunkPlan, Dedup};
use crate::worker_folder::{CommitCounts, LostFolder, WorkerFolder};

/// Attempts at reading a chunk of input before giving up on the file; the waits between them
/// double from [`READ_BACKOFF`] (0.5 + 1 + 2 + 4 + 8 s in all).
const READ_ATTEMPTS: u32 = 6;
const READ_BACKOFF: Duration = Duration::from_millis(500);

/// What the read stage reads: for each file (index into `files`), the owned global row ranges
/// still to do, in order.
pub struct ReadPlan<'a> {
    pub files: &'a [InputFile],
    pub ranges: Vec<(usize, Vec<Range<u64>>)>,
    /// Rows per chunk: the unit that is tokenized, sorted and committed together.
    pub chunk_rows: usize,
    /// What a row group that does not decode does: stop the worker, or fail its rows.
    pub damaged: Damaged,
    pub quiet: bool,
}

/// Read: sends the planned rows down `tx` in chunks. Returns the bytes read from the input.
pub fn read(plan: ReadPlan<'_>, tx: SyncSender<Chunk>) -> Result<u64> {
    let mut bytes = 0;
    for (i, ranges) in &plan.ranges {
        if !read_file(&plan.files[*i], ranges, (plan.chunk_rows, plan.damaged), &tx, plan.quiet, &mut bytes)?
        {
            break; // a later stage stopped; it reports why
        }
    }
    Ok(bytes)
}

/// Sends the owned rows `ranges` of `file` down `tx` in chunks. A read that fails (a flaky
/// network filesystem or bucket mount) is retried with backoff from the first row not yet
/// sent; after [`READ_ATTEMPTS`] the error names the file. Bytes that arrived but do not decode
/// ([`input::Undecodable`]) end the read at once, as reading them again gives the same, unless
/// `damaged` says to skip them; so does a file replaced since the run was planned
/// ([`input::Changed`]). Returns false when the receiver is gone.
fn read_file(
    file: &InputFile,
    ranges: &[Range<u64>],
    (chunk_rows, damaged): (usize, Damaged),
    tx: &SyncSender<Chunk>,
    quiet: bool,
    bytes: &mut u64,
) -> Result<bool> {
    let mut sent = 0u64;
    let mut attempt = 1;
    loop {
        let remaining = match skip_owned(vec![(0, ranges.to_vec())], sent).pop() {
            Some((_, r)) => r,
            None => return Ok(true),
        };
        let error = match input::read_rows(file, &remaining, chunk_rows, damaged) {
            Err(e) => e,
            Ok(mut chunks) => {
                let mut error = None;
                for chunk in chunks.by_ref() {
                    match chunk {
                        Ok(c) => {
                            sent += c.rows.len() as u64;
                            attempt = 1;
                            if tx.send(c).is_err() {
                                *bytes += chunks.bytes_read();
                                return Ok(false);
                            }
                        }
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                *bytes += chunks.bytes_read();
                match error {
                    None => return Ok(true),
                    Some(e) => e,
                }
            }
        };
        if error.downcast_ref::<input::Undecodable>().is_some()
            || error.downcast_ref::<input::Changed>().is_some()
        {
            return Err(error);
        }
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

/// Drops the first `done` owned rows from a plan of (file, ranges).
pub fn skip_owned(plan: Vec<(usize, Vec<Range<u64>>)>, mut done: u64) -> Vec<(usize, Vec<Range<u64>>)> {
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

/// A chunk on its way to the model: its rows mapped onto unique texts (dedup.rs), and those
/// texts tokenized and packed.
pub struct Tokenized {
    pub chunk: Chunk,
    pub plan: ChunkPlan,
    pub prepared: Prepared,
}

/// Tokenize: each chunk's unique texts (repeats and remembered texts left out) tokenized,
/// sorted by length and packed into batches.
pub fn tokenize(
    embedder: &Embedder,
    dedup: &Dedup,
    rx: Receiver<Chunk>,
    tx: SyncSender<Tokenized>,
) -> Result<()> {
    for chunk in rx {
        let texts: Vec<Option<&str>> =
            (0..chunk.texts.len()).map(|i| (!chunk.texts.is_null(i)).then(|| chunk.texts.value(i))).collect();
        let lengths: Vec<Option<usize>> = texts.iter().map(|t| t.map(str::len)).collect();
        let plan = dedup.plan(&chunk.hashes, &lengths);
        let unique: Vec<Option<&str>> = plan.unique_rows.iter().map(|&r| texts[r]).collect();
        let prepared = embedder.prepare(&unique)?;
        drop((texts, unique));
        if tx.send(Tokenized { chunk, plan, prepared }).is_err() {
            break;
        }
    }
    Ok(())
}

/// What the model stage did.
#[derive(Debug, Default)]
pub struct ModelStats {
    pub rows: u64,
    pub tokens: u64,
    pub padded_tokens: u64,
    pub oom_splits: u64,
    pub oom_retries: u64,
    /// Rows whose text was already embedded in this run (a repeat).
    pub deduplicated: u64,
    /// Chunks embedded (with `--chunk-tokens`).
    pub chunks: u64,
    /// Bytes read from the input files (set by the pipeline from the read stage).
    pub input_bytes: u64,
    /// Stopped by `stop` before its input ended.
    pub interrupted: bool,
}

/// Model: runs each chunk's batches (on the calling thread, which owns the device), checking
/// `stop` between batches. A chunk cut off by a stop is dropped: it is not committed, and the
/// next run redoes it.
#[allow(clippy::too_many_arguments)]
pub fn model(
    embedder: &Embedder,
    dedup: &Dedup,
    rx: Receiver<Tokenized>,
    tx: SyncSender<(Chunk, Embedded)>,
    stop: &StopFlag,
    progress: &mut Progress,
    live: &Live,
    delay: Duration,
) -> Result<ModelStats> {
    let mut stats = ModelStats::default();
    for Tokenized { chunk, plan, prepared } in rx {
        if stop.is_set() {
            stats.interrupted = true;
            break;
        }
        std::thread::sleep(delay);
        let mut counted = 0;
        let unique = embedder.run_with(prepared, |texts, tokens| {
            counted += texts;
            progress.advance(texts, tokens);
            live.rows_done.fetch_add(texts, Relaxed);
            live.tokens.fetch_add(tokens, Relaxed);
            !stop.is_set()
        })?;
        let Some(unique) = unique else {
            stats.interrupted = true;
            break;
        };
        let mut embedded = dedup.expand(&plan, unique);
        for &(row, failure) in &chunk.failed {
            embedded.failures[row] = Some(failure); // read as null, for a better reason
        }
        stats.tokens += embedded.tokens;
        stats.padded_tokens += embedded.padded_tokens;
        stats.oom_splits += embedded.oom_splits;
        stats.oom_retries += embedded.oom_retries;
        stats.deduplicated += embedded.deduplicated;
        stats.chunks += embedded.chunks_embedded;
        stats.rows += chunk.rows.len() as u64;
        // Rows not counted batch by batch (failures, repeats) are done too.
        let rest = chunk.rows.len() as u64 - counted;
        progress.advance(rest, 0);
        live.rows_done.fetch_add(rest, Relaxed);
        if tx.send((chunk, embedded)).is_err() {
            break;
        }
    }
    Ok(stats)
}

/// Where and when the write stage commits.
pub struct WritePlan<'a> {
    pub folder: &'a WorkerFolder,
    /// The checkpoint on disk, advanced by each commit.
    pub ckpt: &'a mut Checkpoint,
    pub shards: ShardWriter,
    /// Commit at least this often,
    pub every: Duration,
    /// and whenever the open part holds this many rows.
    pub rows_per_part: usize,
}

/// Write: buffers vectors into the open part and failure lines, and commits through the worker
/// folder every `rows_per_part` rows or `every`, and at the end: on a committer thread, one
/// commit at a time and in order, while this thread fills the next part.
pub fn write(rx: Receiver<(Chunk, Embedded)>, plan: WritePlan<'_>, live: &Live) -> Result<()> {
    let WritePlan { folder, ckpt, mut shards, every, rows_per_part } = plan;
    let result = write_chunks(rx, folder, ckpt, &mut shards, (every, rows_per_part), live);
    result.map_err(|e| {
        if e.downcast_ref::<LostFolder>().is_some() {
            return e;
        }
        e.context(format!(
            "writing to {} failed; the checkpoint keeps the {} rows committed before, so the same command resumes once this is fixed",
            folder.dir().display(),
            ckpt.rows_done
        ))
    })
}

fn write_chunks(
    rx: Receiver<(Chunk, Embedded)>,
    folder: &WorkerFolder,
    ckpt: &mut Checkpoint,
    writer: &mut ShardWriter,
    (every, rows_per_part): (Duration, usize),
    live: &Live,
) -> Result<()> {
    let commit_failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        // NOTE: a rendezvous channel: the committer takes a commit only once it has finished the
        // one before, so at most one commit is in flight while the writer fills the next part,
        // and commits keep their order.
        let (commits, to_commit) = sync_channel::<Commit>(0);
        let committer = s.spawn(|| commit_all(to_commit, folder, ckpt, live, &commit_failed));
        let written = write_parts(rx, writer, commits, (every, rows_per_part), &commit_failed);
        let committed = committer.join().expect("committer thread panicked");
        // A failed commit stopped the writer: it is the cause.
        committed.and(written)
    })
}

/// What the writer hands to the committer: the finished part (if any rows went into one) and
/// what else the commit adds.
struct Commit {
    part: Option<FinishedPart>,
    failure_lines: Vec<u8>,
    counts: CommitCounts,
}

/// Commits in order as the writer hands them over (fsync, rename, checkpoint: worker_folder.rs),
/// so the writer goes on with the next part while the disk or the bucket takes the last one.
/// On an error it sets `commit_failed`, which stops the writer at its next chunk.
fn commit_all(
    commits: Receiver<Commit>,
    folder: &WorkerFolder,
    ckpt: &mut Checkpoint,
    live: &Live,
    commit_failed: &AtomicBool,
) -> Result<()> {
    for Commit { part, failure_lines, counts } in commits {
        if let Err(e) = folder.commit(ckpt, part, &failure_lines, &counts) {
            commit_failed.store(true, Relaxed);
            return Err(e);
        }
        live.committed(ckpt);
    }
    Ok(())
}

/// Buffers vectors into the open part and failure lines, and hands a commit to the committer
/// every `rows_per_part` rows or `every`, and at the end. Stops early when a commit failed.
fn write_parts(
    rx: Receiver<(Chunk, Embedded)>,
    writer: &mut ShardWriter,
    commits: SyncSender<Commit>,
    (every, rows_per_part): (Duration, usize),
    commit_failed: &AtomicBool,
) -> Result<()> {
    let mut pending = CommitCounts::default();
    let mut failure_lines: Vec<u8> = Vec::new();
    let mut last_commit = Instant::now();
    let commit = |writer: &mut ShardWriter, pending: &mut CommitCounts, lines: &mut Vec<u8>| {
        let commit = Commit {
            part: writer.finish_part()?,
            failure_lines: std::mem::take(lines),
            counts: std::mem::take(pending),
        };
        // A closed channel: the committer failed, and reports why.
        let _ = commits.send(commit);
        anyhow::Ok(())
    };
    for (chunk, mut embedded) in rx {
        if commit_failed.load(Relaxed) {
            return Ok(());
        }
        let Chunk { rows: chunk_rows, ids: chunk_ids, hashes: chunk_hashes, .. } = chunk;
        let total = chunk_rows.len() as u64;
        let failed = embedded.failed();
        if embedded.chunks.is_some() {
            let piece = chunk_rows_of(
                &chunk_rows,
                &chunk_hashes,
                chunk_ids.as_ref(),
                &mut embedded,
                &mut failure_lines,
            )?;
            pending.failed += failed as u64;
            pending.chunks += piece.rows.len() as u64;
            let values = writer.values(piece.values);
            writer.push_chunks(&piece.rows, Some(piece.chunks), &piece.hashes, piece.ids, values)?;
        } else {
            let (rows, hashes, values, ids) = if failed == 0 {
                // The common case: every row has a vector; hand the chunk's buffers over as they are.
                (chunk_rows, chunk_hashes, embedded.values, chunk_ids)
            } else {
                let mut keep: Vec<u32> = Vec::with_capacity(chunk_rows.len() - failed);
                let mut values = Vec::with_capacity((chunk_rows.len() - failed) * embedded.dim);
                let mut failures = Vec::with_capacity(failed);
                for (i, failure) in embedded.failures.iter().enumerate() {
                    match failure {
                        None => {
                            keep.push(i as u32);
                            values.extend_from_slice(
                                &embedded.values[i * embedded.dim..(i + 1) * embedded.dim],
                            );
                        }
                        Some(f) => failures.push((i, *f)),
                    }
                }
                failures::write_records(&chunk_rows, &failures, chunk_ids.as_ref(), &mut failure_lines)?;
                pending.failed += failures.len() as u64;
                let rows = keep.iter().map(|&i| chunk_rows[i as usize]).collect();
                let hashes = keep.iter().map(|&i| chunk_hashes[i as usize]).collect();
                let ids = match &chunk_ids {
                    Some(ids) => Some(arrow::compute::take(ids, &UInt32Array::from(keep), None)?),
                    None => None,
                };
                (rows, hashes, values, ids)
            };
            let values = writer.values(values);
            writer.push(&rows, &hashes, ids, values)?;
        }
        pending.embedded += total - failed as u64;
        pending.rows += total;
        pending.truncated += embedded.truncated;
        pending.tokens += embedded.tokens;
        pending.deduplicated += embedded.deduplicated;
        if writer.buffered_rows() >= rows_per_part || last_commit.elapsed() >= every {
            commit(writer, &mut pending, &mut failure_lines)?;
            last_commit = Instant::now();
        }
    }
    commit(writer, &mut pending, &mut failure_lines)
}

/// The output rows of a chunk of input rows written one row per text chunk.
struct ChunkRows {
    rows: Vec<u64>,
    chunks: ChunkColumns,
    hashes: Vec<u128>,
    ids: Option<arrow::array::ArrayRef>,
    values: Vec<f32>,
}

/// Spreads each embedded row over its chunks (row, id and text hash repeated, chunk number and
/// byte range), and appends a failure line for each row that failed.
fn chunk_rows_of(
    rows: &[u64],
    hashes: &[u128],
    ids: Option<&arrow::array::ArrayRef>,
    embedded: &mut Embedded,
    failure_lines: &mut Vec<u8>,
) -> Result<ChunkRows> {
    let index = embedded.chunks.as_ref().expect("chunk rows");
    let mut out = ChunkRows {
        rows: Vec::with_capacity(index.chunks()),
        chunks: ChunkColumns::default(),
        hashes: Vec::with_capacity(index.chunks()),
        ids: None,
        values: Vec::new(),
    };
    let mut take: Vec<u32> = Vec::with_capacity(index.chunks());
    let every_row = embedded.failed() == 0;
    let mut failed = Vec::new();
    for (i, &row) in rows.iter().enumerate() {
        match embedded.vectors(i) {
            Err(f) => failed.push((i, f)),
            Ok((v, spans)) => {
                for (j, &(start, end)) in spans.unwrap_or_default().iter().enumerate() {
                    out.rows.push(row);
                    out.chunks.chunk.push(j as u32);
                    out.chunks.start.push(start);
                    out.chunks.end.push(end);
                    out.hashes.push(hashes[i]);
                    take.push(i as u32);
                }
                if !every_row {
                    out.values.extend_from_slice(v);
                }
            }
        }
    }
    failures::write_records(rows, &failed, ids, failure_lines)?;
    if every_row {
        // Every row's chunks, in order: the model stage's buffer as it is.
        out.values = std::mem::take(&mut embedded.values);
    }
    out.ids = match ids {
        Some(ids) => Some(arrow::compute::take(ids, &UInt32Array::from(take), None)?),
        None => None,
    };
    Ok(out)
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
