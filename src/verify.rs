//! `batch-embed verify OUTPUT`: is a run complete and sound? Reads every worker's checkpoint,
//! failures and the `row` column of its shards (plus every vector with `--deep`), and checks
//! that every row of the input is owned by exactly one worker and appears exactly once, as a
//! vector or as a recorded failure; that every shard opens; that all workers ran the same job.
//! With one output row per chunk (`--chunk-tokens`), a row appears once as its chunks 0..k−1,
//! in order, in one part (the `chunk` column is read too), and the chunks are counted.
//!
//! Reading the `row` column only keeps this quick on a 30M-row output; a bitmap of owned rows
//! per worker (one bit a row) finds duplicates and gaps.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float16Type, Float32Type, UInt32Type, UInt64Type};
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::fleet::WorkerEntry;
use crate::partition::Partition;
use crate::run_spec::PartSpec;
use crate::storage::parquet::{ParquetFile, ReadRequest};
use crate::storage::Location;
use crate::worker_folder::{is_failures_file, part_seq, CHECKPOINT};
/// With `--deep`: how far a normalised vector's norm may be from 1 (f16 output keeps ~3 digits).
const NORM_TOLERANCE: f64 = 1e-2;
/// Missing ranges listed per worker (the count is always given).
const LIST_RANGES: usize = 10;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub output: String,
    pub num_workers: u64,
    pub rows_input: u64,
    pub rows_embedded: u64,
    pub rows_failed: u64,
    /// The failed rows by the reason recorded for them.
    pub failures_by_reason: BTreeMap<String, u64>,
    pub rows_missing: u64,
    pub duplicates: u64,
    /// Output rows of chunks (one row per chunk runs; 0 otherwise).
    pub chunks: u64,
    pub workers: Vec<WorkerReport>,
    /// Everything that makes the run unsound or incomplete, one sentence each.
    pub problems: Vec<String>,
    pub deep: bool,
    /// Complete (every row once) and sound (no problem found).
    pub ok: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct WorkerReport {
    pub worker_id: u64,
    /// done, incomplete or missing (no folder).
    pub state: String,
    pub rows_owned: u64,
    pub rows_embedded: u64,
    pub rows_failed: u64,
    pub failures_by_reason: BTreeMap<String, u64>,
    pub rows_missing: u64,
    pub duplicates: u64,
    /// Global row ranges with neither a vector nor a failure (at most a few listed).
    pub missing_ranges: Vec<(u64, u64)>,
    pub parts: usize,
    /// Output rows of chunks (one row per chunk runs).
    pub chunks: u64,
    /// With `--deep`: vectors holding NaN or infinity, and (normalised runs) norms far from 1.
    pub non_finite_vectors: u64,
    pub bad_norm_vectors: u64,
}

pub fn verify(output: &Location, deep: bool) -> Result<Report> {
    let entries = crate::fleet::workers_required(output, "; is it the --output of a run?")?;
    let mut report = Report { output: output.display().to_string(), deep, ..Report::default() };
    let mut checkpoints: BTreeMap<(u64, u64), (WorkerEntry, Checkpoint)> = BTreeMap::new();
    let loaded = crate::storage::par_map(&entries, output.is_remote(), |e| e.checkpoint());
    for (entry, loaded) in entries.iter().zip(loaded) {
        match loaded {
            Ok(Some(c)) => {
                checkpoints.insert((entry.worker_id, entry.num_workers), (entry.clone(), c));
            }
            Ok(None) => report.problems.push(format!("{} has no {CHECKPOINT}", entry.dir.display())),
            Err(e) => report.problems.push(format!("{e:#}")),
        }
    }
    // The run's description comes from the checkpoints; they must all agree on it.
    let Some((_, (ref_entry, reference))) = checkpoints.iter().next() else {
        report.problems.push("no worker has a readable checkpoint".into());
        return Ok(report);
    };
    let (ref_dir, reference) = (ref_entry.dir.clone(), reference.spec.clone());
    for (entry, c) in checkpoints.values().skip(1) {
        let diff = c.spec.differences(&reference);
        if !diff.is_empty() {
            report.problems.push(format!(
                "{} and {} come from different runs: {}",
                ref_dir.display(),
                entry.dir.display(),
                diff.join("; ")
            ));
        }
    }
    let n = reference.rows.num_workers;
    report.num_workers = n;
    report.rows_input = reference.rows.inputs.iter().map(|i| i.rows).sum();
    for e in &entries {
        if e.num_workers != n || e.worker_id >= n {
            report.problems.push(format!("{} does not belong to a run of {n} workers", e.dir.display()));
        }
    }

    for id in 0..n {
        let partition = Partition::new(id, n, reference.rows.stride_block).map_err(anyhow::Error::msg)?;
        let owned = partition.owned_count(0..report.rows_input);
        let Some((entry, ckpt)) = checkpoints.get(&(id, n)) else {
            let missing = ranges_of(&vec![false; owned as usize], &partition);
            report.workers.push(WorkerReport {
                worker_id: id,
                state: "missing".into(),
                rows_owned: owned,
                rows_missing: owned,
                missing_ranges: missing.into_iter().take(LIST_RANGES).collect(),
                ..WorkerReport::default()
            });
            if owned > 0 {
                report.problems.push(format!("worker {id} has not written anything ({owned} rows owned)"));
            }
            continue;
        };
        let w = check_worker(entry, ckpt, &reference, &partition, owned, deep, &mut report.problems)?;
        report.workers.push(w);
    }
    for w in &report.workers {
        report.rows_embedded += w.rows_embedded;
        report.rows_failed += w.rows_failed;
        for (reason, n) in &w.failures_by_reason {
            *report.failures_by_reason.entry(reason.clone()).or_default() += n;
        }
        report.rows_missing += w.rows_missing;
        report.duplicates += w.duplicates;
        report.chunks += w.chunks;
        if w.state == "incomplete" {
            report.problems.push(format!(
                "worker {} is not complete: {} of {} rows missing",
                w.worker_id, w.rows_missing, w.rows_owned
            ));
        }
    }
    report.ok = report.problems.is_empty() && report.rows_missing == 0;
    Ok(report)
}

fn check_worker(
    entry: &WorkerEntry,
    ckpt: &Checkpoint,
    run: &crate::run_spec::RunSpec,
    partition: &Partition,
    owned: u64,
    deep: bool,
    problems: &mut Vec<String>,
) -> Result<WorkerReport> {
    let (id, dir) = (entry.worker_id, &entry.dir);
    let mut w =
        WorkerReport { worker_id: id, rows_owned: owned, parts: ckpt.parts.len(), ..Default::default() };
    if ckpt.rows_owned != owned {
        problems.push(format!("worker {id}'s checkpoint says it owns {} rows, not {owned}", ckpt.rows_owned));
    }
    // Part files on disk that the checkpoint does not list: a reader globbing part-*.parquet
    // would take their rows twice. (A resumed run removes them.)
    for (name, _) in dir.list_files()? {
        let unlisted_part = part_seq(&name).is_some() && !ckpt.parts.iter().any(|p| p.file == name);
        let unlisted_failures = is_failures_file(&name) && !ckpt.failure_files.iter().any(|p| p.file == name);
        if unlisted_part || unlisted_failures {
            problems.push(format!(
                "{} is not in the checkpoint (left by an interrupted run; running the worker again removes it)",
                dir.join(&name).display()
            ));
        }
    }

    if ckpt.worker_id != id {
        problems.push(format!("{}'s checkpoint belongs to worker {}", dir.display(), ckpt.worker_id));
    }
    let normalized = ckpt.spec.vectors.normalized;
    let chunked = ckpt.spec.vectors.chunk_rows();
    let shards: Vec<Result<Shard>> = crate::storage::par_map(&ckpt.parts, dir.is_remote(), |p| {
        read_shard(&dir.join(&p.file), deep, normalized, chunked)
    });
    let mut out_of_order = 0u64;
    let mut seen = vec![false; owned as usize];
    let mut foreign = 0u64;
    let mut mark = |row: u64, seen: &mut Vec<bool>, w: &mut WorkerReport| {
        if !partition.owns(row) || partition.owned_index(row) >= owned {
            foreign += 1;
            return;
        }
        let slot = &mut seen[partition.owned_index(row) as usize];
        if *slot {
            w.duplicates += 1;
        }
        *slot = true;
    };
    for (part, shard) in ckpt.parts.iter().zip(shards) {
        let path = dir.join(&part.file);
        let shard = match shard {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{e:#}"));
                continue;
            }
        };
        if shard.rows.len() as u64 != part.rows {
            problems.push(format!(
                "{} holds {} rows; the checkpoint says {}",
                path.display(),
                shard.rows.len(),
                part.rows
            ));
        }
        // Each part must say it was made by this run, as this worker.
        match PartSpec::from_metadata(&shard.meta) {
            Ok(spec) => {
                let diff = spec.differences(run, id);
                if !diff.is_empty() {
                    problems.push(format!(
                        "{} was not written by this run's worker {id}: {}",
                        path.display(),
                        diff.join("; ")
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e:#}", path.display())),
        }
        w.non_finite_vectors += shard.non_finite;
        w.bad_norm_vectors += shard.bad_norm;
        match &shard.chunks {
            None => {
                w.rows_embedded += shard.rows.len() as u64;
                for &row in &shard.rows {
                    mark(row, &mut seen, &mut w);
                }
            }
            Some(chunks) => {
                // A row is its chunks 0..k−1, one after the other, in this part.
                w.chunks += chunks.len() as u64;
                let mut previous: Option<(u64, u32)> = None;
                for (&row, &chunk) in shard.rows.iter().zip(chunks) {
                    match (chunk, previous) {
                        (0, _) => {
                            w.rows_embedded += 1;
                            mark(row, &mut seen, &mut w);
                        }
                        (c, Some((r, p))) if r == row && p + 1 == c => {}
                        _ => out_of_order += 1,
                    }
                    previous = Some((row, chunk));
                }
            }
        }
    }
    if out_of_order > 0 {
        problems.push(format!(
            "worker {id} has {out_of_order} chunk rows out of place (each row's chunks must be 0, 1, … in order, in one part)"
        ));
    }
    if chunked && w.chunks != ckpt.chunks {
        problems.push(format!(
            "worker {id}'s checkpoint counts {} chunk rows; its parts hold {}",
            ckpt.chunks, w.chunks
        ));
    }
    match entry.failures(ckpt) {
        Ok(failures) => {
            w.rows_failed = failures.rows.len() as u64;
            w.failures_by_reason = failures.reasons;
            for row in failures.rows {
                mark(row, &mut seen, &mut w);
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    if foreign > 0 {
        problems.push(format!("worker {id} wrote {foreign} rows it does not own"));
    }
    if w.duplicates > 0 {
        problems.push(format!("worker {id} has {} rows more than once", w.duplicates));
    }
    if w.non_finite_vectors > 0 {
        problems
            .push(format!("worker {id} has {} vectors with NaN or infinite values", w.non_finite_vectors));
    }
    if w.bad_norm_vectors > 0 {
        problems.push(format!(
            "worker {id} has {} vectors whose norm is not 1 (±{NORM_TOLERANCE}) in a normalised run",
            w.bad_norm_vectors
        ));
    }
    let missing = ranges_of(&seen, partition);
    w.rows_missing = missing.iter().map(|(a, b)| b - a).sum();
    w.missing_ranges = missing.into_iter().take(LIST_RANGES).collect();
    w.state = if w.rows_missing == 0 && ckpt.complete { "done" } else { "incomplete" }.into();
    if w.rows_missing == 0 && !ckpt.complete {
        problems.push(format!("worker {id} has every row but its checkpoint is not marked complete"));
    }
    Ok(w)
}

/// The global row ranges of the owned rows not marked in `seen`.
fn ranges_of(seen: &[bool], partition: &Partition) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
        let row = partition.owned_row(i as u64);
        match out.last_mut() {
            Some((_, end)) if *end == row => *end += 1,
            _ => out.push((row, row + 1)),
        }
    }
    out
}

struct Shard {
    rows: Vec<u64>,
    /// The `chunk` column, for one row per chunk runs.
    chunks: Option<Vec<u32>>,
    meta: HashMap<String, String>,
    non_finite: u64,
    bad_norm: u64,
}

/// Reads a shard's metadata and `row` column (with `chunked`, its `chunk` column; deep, its
/// vectors).
fn read_shard(path: &Location, deep: bool, normalized: bool, chunked: bool) -> Result<Shard> {
    let unreadable = || format!("{} does not open as a vector shard", path.display());
    let file = ParquetFile::open(path).with_context(unreadable)?;
    let meta: HashMap<String, String> =
        file.schema().metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let schema = file.schema().clone();
    let (Some((row_i, _)), Some((emb_i, _))) =
        (schema.column_with_name("row"), schema.column_with_name("embedding"))
    else {
        bail!("{} lacks the row or embedding column", path.display());
    };
    let mut roots = vec![row_i];
    if deep {
        roots.push(emb_i);
    }
    if chunked {
        let Some((chunk_i, _)) = schema.column_with_name(crate::output::CHUNK) else {
            bail!("{} lacks the chunk column of a run with one row per chunk", path.display());
        };
        roots.push(chunk_i);
    }
    let reader = file
        .read(ReadRequest {
            columns: roots,
            leaves: None,
            row_groups: None,
            selection: None,
            batch_size: 8192,
            page_index: false,
        })
        .with_context(unreadable)?;
    let mut shard =
        Shard { rows: Vec::new(), chunks: chunked.then(Vec::new), meta, non_finite: 0, bad_norm: 0 };
    for batch in reader {
        let batch = batch.with_context(unreadable)?;
        let rows = batch
            .column_by_name("row")
            .and_then(|c| c.as_primitive_opt::<UInt64Type>())
            .with_context(unreadable)?;
        shard.rows.extend(rows.values().iter().copied());
        if let Some(chunks) = shard.chunks.as_mut() {
            let column =
                batch.column_by_name(crate::output::CHUNK).and_then(|c| c.as_primitive_opt::<UInt32Type>());
            chunks.extend(column.with_context(unreadable)?.values().iter().copied());
        }
        if deep {
            let list = batch
                .column_by_name("embedding")
                .and_then(|c| c.as_fixed_size_list_opt())
                .with_context(unreadable)?;
            let dim = list.value_length() as usize;
            let values: Vec<f64> = match list.values().data_type() {
                DataType::Float32 => {
                    list.values().as_primitive::<Float32Type>().values().iter().map(|&v| v as f64).collect()
                }
                DataType::Float16 => {
                    list.values().as_primitive::<Float16Type>().values().iter().map(|v| v.to_f64()).collect()
                }
                t => bail!("{}: embedding values are {t}, not Float32 or Float16", path.display()),
            };
            for v in values.chunks_exact(dim.max(1)) {
                if v.iter().any(|x| !x.is_finite()) {
                    shard.non_finite += 1;
                } else if normalized
                    && (v.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() > NORM_TOLERANCE
                {
                    shard.bad_norm += 1;
                }
            }
        }
    }
    Ok(shard)
}

pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let owned: u64 = r.workers.iter().map(|w| w.rows_owned).sum();
    let done = r.workers.iter().filter(|w| w.state == "done").count();
    let _ = writeln!(s, "{}: {} workers, {done} done", r.output, r.num_workers);
    let _ = writeln!(
        s,
        "rows: {} in the input, {owned} owned; {} embedded, {} failed, {} missing, {} duplicated{}",
        r.rows_input,
        r.rows_embedded,
        r.rows_failed,
        r.rows_missing,
        r.duplicates,
        if r.chunks > 0 { format!("; {} chunk rows", r.chunks) } else { String::new() }
    );
    if !r.failures_by_reason.is_empty() {
        // Most frequent first.
        let mut reasons: Vec<(&String, &u64)> = r.failures_by_reason.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(s, "failed rows by reason:");
        for (reason, n) in reasons {
            let _ =
                writeln!(s, "  {n:>10}  {}", if reason.is_empty() { "(no reason given)" } else { reason });
        }
    }
    for w in &r.workers {
        let _ = write!(
            s,
            "  worker {:>5}: {:<10} {} owned, {} embedded, {} failed",
            w.worker_id, w.state, w.rows_owned, w.rows_embedded, w.rows_failed
        );
        if w.rows_missing > 0 {
            let ranges: Vec<String> = w.missing_ranges.iter().map(|(a, b)| format!("{a}..{b}")).collect();
            let more = if w.rows_missing > 0 && w.missing_ranges.len() == LIST_RANGES { ", …" } else { "" };
            let _ = write!(s, ", {} missing (rows {}{more})", w.rows_missing, ranges.join(", "));
        }
        let _ = writeln!(s);
    }
    if !r.deep {
        let _ = writeln!(s, "vectors: not read (pass --deep to check NaN and norms)");
    }
    if r.problems.is_empty() {
        let _ = writeln!(s, "{}", if r.ok { "OK: complete and sound" } else { "NOT OK" });
    } else {
        let _ = writeln!(s, "NOT OK: {} problems", r.problems.len());
        for p in &r.problems {
            let _ = writeln!(s, "  - {p}");
        }
    }
    s
}
