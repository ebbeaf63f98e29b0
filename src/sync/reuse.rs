//! `embed --reuse PREVIOUS_OUTPUT`: copy the vectors of unchanged texts from earlier outputs
//! instead of embedding them again.
//!
//! A row of this run reuses a previous vector when the previous run's vector-deciding options
//! (`RunSpec::vectors`) equal this run's and the row's key is found there with the same text
//! hash. The key is the id (`--id-column`), so a changed text under a kept id is embedded again;
//! without ids it is the text hash itself, so an identical text anywhere is reused.
//!
//! A worker's run then has two phases, both committed and resumed through the worker folder:
//! 1. **copy**: for each committed part of the previous outputs (the *sources*, listed once and
//!    recorded in the checkpoint with their footer hashes, so a resumed run reads exactly the
//!    same ones), the matching rows' vectors are read (only those rows' pages) and written into
//!    this run's parts under this run's row numbers; the checkpoint's cursor says how far it got;
//! 2. **embed**: the owned rows that were not reused go through the usual pipeline.
//!
//! Memory grows with the rows this worker owns, not with the previous outputs: the owned rows'
//! keys and hashes are held (48 bytes a row while planning, 9 after), and the previous parts are
//! scanned column by column (key and hash columns, then only the matching vectors).
//!
//! With one output row per chunk (`--chunk-tokens`; the previous run must have chunked the same
//! way, which the vector half of the description says), a key stands for all of a row's chunk
//! rows: they are copied together, in chunk order, into one part.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, UInt32Type};
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelectionPolicy, RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::PageIndexPolicy;
use serde::{Deserialize, Serialize};

use crate::heartbeat::Live;
use crate::input::InputFile;
use crate::output::{ChunkColumns, CHUNK, CHUNK_END, CHUNK_START, TEXT_HASH};
use crate::partition::Partition;
use crate::progress::Progress;
use crate::run_spec::RunSpec;
use crate::shutdown::StopFlag;
use crate::stages::WritePlan;
use crate::worker_folder::CommitCounts;

/// Rows decoded at a time from a source part.
const COPY_BATCH: usize = 8192;

/// What the checkpoint keeps of a `--reuse` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReuseState {
    /// The previous outputs as given (absolute paths).
    pub outputs: Vec<String>,
    /// Their committed parts when this run started: the sources, in the order they are read.
    pub sources: Vec<SourcePart>,
    /// Sources copied completely.
    pub sources_done: usize,
    /// Rows of source `sources_done` already copied.
    pub source_rows_done: u64,
}

/// A committed part of a previous output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourcePart {
    pub path: String,
    pub rows: u64,
    /// `run_spec::footer_hash` of the part: it must not change while this run uses it.
    pub footer: String,
}

/// Lists the committed parts of the previous outputs `outputs` after checking that their
/// vectors were made as this run's will be. `note` hears about incomplete outputs.
pub fn find_sources(
    outputs: &[PathBuf],
    current: &RunSpec,
    note: &mut dyn FnMut(&str),
) -> Result<ReuseState> {
    let mut state =
        ReuseState { outputs: Vec::new(), sources: Vec::new(), sources_done: 0, source_rows_done: 0 };
    for output in outputs {
        let shown = output.display();
        let workers =
            crate::fleet::workers_required(output, "; --reuse needs the --output of an earlier run")?;
        let mut spec: Option<RunSpec> = None;
        let (mut owned, mut done) = (0u64, 0u64);
        for w in &workers {
            let ckpt = w
                .checkpoint()
                .with_context(|| format!("--reuse {shown}"))?
                .with_context(|| format!("--reuse {shown}: {} has no checkpoint", w.dir.display()))?;
            match &spec {
                None => spec = Some(ckpt.spec.clone()),
                Some(s) if s.vectors != ckpt.spec.vectors => bail!(
                    "--reuse {shown}: its worker folders come from different runs ({} differs)",
                    w.dir.display()
                ),
                Some(_) => {}
            }
            owned += ckpt.rows_owned;
            done += ckpt.rows_done;
            for part in &ckpt.parts {
                let path = w.dir.join(&part.file);
                state.sources.push(SourcePart {
                    path: absolute(&path),
                    rows: part.rows,
                    footer: crate::run_spec::footer_hash(&path)
                        .with_context(|| format!("--reuse {shown}"))?,
                });
            }
        }
        let spec = spec.expect("at least one worker");
        let differences = current.vectors_differences(&spec);
        if !differences.is_empty() {
            bail!(
                "--reuse {shown}: its vectors were made differently ({}); reusing them would mix vectors of another model or options, so they are not used. Drop this --reuse, or run with the same model and options",
                differences.join("; ")
            );
        }
        if current.rows.id_column.is_some() && spec.rows.id_column.is_none() {
            bail!(
                "--reuse {shown}: that run had no --id-column, and this one matches rows by id; run without --id-column to match by text, or reuse an output made with ids"
            );
        }
        let total = workers.iter().map(|w| w.num_workers).max().unwrap_or(1);
        if done < owned || (workers.len() as u64) < total {
            note(&format!(
                "--reuse {shown} is incomplete ({done} of its rows are committed, in {} of {total} worker folders): what is there is reused",
                workers.len()
            ));
        }
        state.outputs.push(absolute(output));
    }
    Ok(state)
}

/// Fails unless every source is still as it was when the run started.
pub fn check_sources(state: &ReuseState) -> Result<()> {
    for s in &state.sources[state.sources_done.min(state.sources.len())..] {
        let now = crate::run_spec::footer_hash(Path::new(&s.path));
        if now.as_deref().ok() != Some(s.footer.as_str()) {
            bail!(
                "{} changed or vanished since this run started reusing it; run again with --restart to plan the reuse anew",
                s.path
            );
        }
    }
    Ok(())
}

/// Which owned rows are reused, and from where.
pub struct ReusePlan {
    /// Per source part: (row in that part, owned index), in the order they are written: by the
    /// source row's first row in the part, then owned index, then (chunk rows) chunk.
    pub copies: Vec<Vec<(u32, u32)>>,
    /// Per owned index: reused or not.
    pub reused: Vec<bool>,
    pub count: u64,
}

impl ReusePlan {
    /// The planned ranges (file, owned global row ranges in order) without the reused rows.
    pub fn remaining(&self, plan: &[(usize, Vec<Range<u64>>)]) -> Vec<(usize, Vec<Range<u64>>)> {
        let mut index = 0usize;
        let mut out = Vec::new();
        for (file, ranges) in plan {
            let mut kept: Vec<Range<u64>> = Vec::new();
            for r in ranges {
                for row in r.clone() {
                    if !self.reused[index] {
                        match kept.last_mut() {
                            Some(last) if last.end == row => last.end += 1,
                            _ => kept.push(row..row + 1),
                        }
                    }
                    index += 1;
                }
            }
            if !kept.is_empty() {
                out.push((*file, kept));
            }
        }
        out
    }
}

/// One owned row's key (id or text hash), text hash and owned index.
#[derive(Clone, Copy)]
struct Entry {
    key: u128,
    hash: u128,
    index: u32,
}

/// Plans the reuse: reads this worker's owned rows (`plan`, over `files`) for their keys and
/// text hashes, then the key and hash columns of every source part, and pairs them. With
/// `chunk_rows`, a source row is its run of chunk rows.
pub fn plan(
    files: &[InputFile],
    plan: &[(usize, Vec<Range<u64>>)],
    by_id: bool,
    chunk_rows: bool,
    sources: &[SourcePart],
) -> Result<ReusePlan> {
    // 1. The owned rows' keys.
    let mut entries: Vec<Entry> = Vec::new();
    let mut index = 0u32;
    for (file, ranges) in plan {
        for chunk in crate::input::read_rows(&files[*file], ranges, COPY_BATCH)? {
            let chunk = chunk?;
            let keys: Vec<Option<u128>> = match (&chunk.ids, by_id) {
                (Some(ids), true) => super::id_keys(ids)?,
                _ => chunk.hashes.iter().map(|&h| Some(h)).collect(),
            };
            for (i, key) in keys.into_iter().enumerate() {
                if let (Some(key), false) = (key, chunk.texts.is_null(i)) {
                    entries.push(Entry { key, hash: chunk.hashes[i], index: index + i as u32 });
                }
            }
            index += chunk.rows.len() as u32;
        }
    }
    let owned = index as usize;
    entries.sort_unstable_by_key(|e| (e.key, e.index));

    // 2. The sources' keys: each owned row takes the first source row with its key and hash.
    let mut source_of: Vec<u64> = vec![u64::MAX; owned];
    let mut rows_of: Vec<u32> = vec![1; if chunk_rows { owned } else { 0 }];
    for (si, source) in sources.iter().enumerate() {
        let path = Path::new(&source.path);
        for (row, rows, key, hash) in source_keys(path, by_id, chunk_rows)? {
            let start = entries.partition_point(|e| e.key < key);
            for e in entries[start..].iter().take_while(|e| e.key == key) {
                let slot = &mut source_of[e.index as usize];
                if *slot == u64::MAX && e.hash == hash {
                    *slot = ((si as u64) << 32) | row as u64;
                    if chunk_rows {
                        rows_of[e.index as usize] = rows;
                    }
                }
            }
        }
    }
    drop(entries);

    // 3. Per source, the rows to copy in order.
    let mut copies: Vec<Vec<(u32, u32)>> = vec![Vec::new(); sources.len()];
    let mut reused = vec![false; owned];
    let mut count = 0;
    for (index, &s) in source_of.iter().enumerate() {
        if s != u64::MAX {
            copies[(s >> 32) as usize].push((s as u32, index as u32));
            reused[index] = true;
            count += 1;
        }
    }
    for c in &mut copies {
        c.sort_unstable();
        if chunk_rows {
            // Each owned row takes all of its source row's chunk rows, one after the other.
            *c = c.iter().flat_map(|&(row, index)| (0..rows_of[index as usize]).map(move |j| (row + j, index))).collect();
        }
    }
    Ok(ReusePlan { copies, reused, count })
}

/// (row in part, rows, key, text hash) of every row of a source part, reading only its key and
/// hash columns (and with `chunk_rows` its chunk column: a row is then its chunk 0's row and the
/// number of its chunk rows; otherwise rows is 1).
fn source_keys(path: &Path, by_id: bool, chunk_rows: bool) -> Result<Vec<(u32, u32, u128, u128)>> {
    let unreadable = || format!("cannot read {} (a --reuse source)", path.display());
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).with_context(unreadable)?)
        .with_context(unreadable)?;
    let schema = builder.schema().clone();
    let hash_col = schema.index_of(TEXT_HASH).map_err(|_| {
        anyhow::anyhow!(
            "{} has no {TEXT_HASH} column: it was made by an older batch-embed and cannot be reused",
            path.display()
        )
    })?;
    let mut roots = vec![hash_col];
    let id_col = if by_id { Some(schema.index_of("id").with_context(unreadable)?) } else { None };
    roots.extend(id_col);
    if chunk_rows {
        roots.push(schema.index_of(CHUNK).map_err(|_| {
            anyhow::anyhow!("{} has no {CHUNK} column: it does not hold one row per chunk", path.display())
        })?);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader =
        builder.with_projection(mask).with_batch_size(COPY_BATCH).build().with_context(unreadable)?;
    let mut out: Vec<(u32, u32, u128, u128)> = Vec::new();
    let mut first = 0u32;
    // Whether the row whose chunks are being read was kept (a null id is not).
    let mut kept = false;
    for batch in reader {
        let batch = batch.with_context(unreadable)?;
        let hashes = batch.column_by_name(TEXT_HASH).expect("projected").as_fixed_size_binary();
        let keys = match by_id {
            true => Some(super::id_keys(batch.column_by_name("id").expect("projected"))?),
            false => None,
        };
        let chunks = batch.column_by_name(CHUNK).map(|c| c.as_primitive::<UInt32Type>().clone());
        for i in 0..batch.num_rows() {
            if chunks.as_ref().is_some_and(|c| c.value(i) > 0) {
                // A later chunk of the row before (which may have been in the batch before).
                if let (true, Some(last)) = (kept, out.last_mut()) {
                    last.1 += 1;
                }
                continue;
            }
            let hash = super::hash_from_bytes(hashes.value(i));
            let key = match &keys {
                Some(k) => match k[i] {
                    Some(k) => k,
                    None => {
                        kept = false;
                        continue; // a null id matches nothing
                    }
                },
                None => hash,
            };
            out.push((first + i as u32, 1, key, hash));
            kept = true;
        }
        first += batch.num_rows() as u32;
    }
    Ok(out)
}

/// Copies the planned rows, source by source from the checkpoint's cursor, into this run's
/// parts, committing as the write stage does (a row's chunk rows always into one part). Returns
/// false when stopped by `stop`. `delay` is the test hook `--debug-chunk-delay-ms`, slept before
/// each piece.
#[allow(clippy::too_many_arguments)]
pub fn copy(
    plan: &ReusePlan,
    partition: &Partition,
    id_type: Option<&DataType>,
    write: WritePlan<'_>,
    live: &Live,
    progress: &mut Progress,
    stop: &StopFlag,
    delay: std::time::Duration,
) -> Result<bool> {
    let WritePlan { folder, ckpt, mut shards, every, rows_per_part } = write;
    let state = ckpt.reuse.clone().context("internal error: a reuse plan without reuse state")?;
    let chunked = shards.chunked();
    let mut last_commit = Instant::now();
    // Rows and chunk rows copied since the last commit.
    let mut pending = (0u64, 0u64);
    let mut cursor = (state.sources_done, state.source_rows_done);
    let commit = |shards: &mut crate::output::ShardWriter,
                  ckpt: &mut crate::checkpoint::Checkpoint,
                  pending: &mut (u64, u64),
                  cursor: (usize, u64)| {
        let counts = CommitCounts {
            reused: pending.0,
            chunks: pending.1,
            reuse_cursor: Some(cursor),
            ..CommitCounts::default()
        };
        folder.commit(ckpt, shards.finish_part()?, &[], &counts)?;
        live.rows_committed.store(ckpt.rows_done, Relaxed);
        live.chunks.store(ckpt.chunks, Relaxed);
        *pending = (0, 0);
        anyhow::Ok(())
    };
    for si in state.sources_done..state.sources.len() {
        let source = &state.sources[si];
        let skip = if si == state.sources_done { state.source_rows_done as usize } else { 0 };
        let wanted = &plan.copies[si][skip.min(plan.copies[si].len())..];
        let mut copied = skip as u64;
        if wanted.is_empty() {
            cursor = (si + 1, 0);
            continue;
        }
        for batch in read_selected(Path::new(&source.path), wanted, id_type.is_some(), chunked)? {
            let Copied { owned: owned_indices, hashes, ids, values, chunks } = batch?;
            if let (Some(ids), Some(want)) = (&ids, id_type) {
                if ids.data_type() != want {
                    bail!(
                        "{}: its id column is {}, this run's is {want}; they cannot be matched",
                        source.path,
                        ids.data_type()
                    );
                }
            }
            let dim = values.len() / owned_indices.len().max(1);
            // In pieces that fill the open part to --rows-per-part, checking for a stop between;
            // a piece ends where a row ends (its chunk rows stay together).
            let mut at = 0;
            while at < owned_indices.len() {
                if stop.is_set() {
                    commit(&mut shards, ckpt, &mut pending, cursor)?;
                    return Ok(false);
                }
                std::thread::sleep(delay);
                let room = rows_per_part.saturating_sub(shards.buffered_rows()).max(1);
                let mut n = room.min(owned_indices.len() - at);
                while at + n < owned_indices.len() && owned_indices[at + n] == owned_indices[at + n - 1] {
                    n += 1;
                }
                let piece = &owned_indices[at..at + n];
                let rows: Vec<u64> = piece.iter().map(|&i| partition.owned_row(i as u64)).collect();
                let piece_ids = ids.as_ref().map(|ids| ids.slice(at, n));
                let piece_chunks = chunks.as_ref().map(|c| ChunkColumns {
                    chunk: c.chunk[at..at + n].to_vec(),
                    start: c.start[at..at + n].to_vec(),
                    end: c.end[at..at + n].to_vec(),
                });
                let copied_rows = match &piece_chunks {
                    Some(c) => c.chunk.iter().filter(|&&j| j == 0).count() as u64,
                    None => n as u64,
                };
                let values = values.slice(at * dim, n * dim);
                shards.push_chunks(&rows, piece_chunks, &hashes[at..at + n], piece_ids, values)?;
                at += n;
                pending.0 += copied_rows;
                pending.1 += if chunked { n as u64 } else { 0 };
                copied += n as u64;
                cursor = (si, copied);
                progress.advance(copied_rows, 0);
                live.rows_done.fetch_add(copied_rows, Relaxed);
                live.rows_reused.fetch_add(copied_rows, Relaxed);
                if shards.buffered_rows() >= rows_per_part || last_commit.elapsed() >= every {
                    commit(&mut shards, ckpt, &mut pending, cursor)?;
                    last_commit = Instant::now();
                }
            }
        }
        cursor = (si + 1, 0);
    }
    commit(&mut shards, ckpt, &mut pending, cursor)?;
    Ok(true)
}

/// A batch of copied output rows: owned index, text hash, id (when asked), chunk columns (chunk
/// rows), and the flat vector values, one row each.
struct Copied {
    owned: Vec<u32>,
    hashes: Vec<u128>,
    ids: Option<ArrayRef>,
    values: ArrayRef,
    chunks: Option<ChunkColumns>,
}

/// Reads the rows `wanted` ((row in part, owned index), in the order of [`ReusePlan::copies`])
/// of a source part, batch by batch: only their pages of the text hash, id, chunk and embedding
/// columns.
fn read_selected(path: &Path, wanted: &[(u32, u32)], with_ids: bool, chunked: bool) -> Result<Selected> {
    let unreadable = || format!("cannot read {} (a --reuse source)", path.display());
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
        File::open(path).with_context(unreadable)?,
        options,
    )
    .with_context(unreadable)?;
    let schema = builder.schema().clone();
    let mut roots = vec![
        schema.index_of(TEXT_HASH).with_context(unreadable)?,
        schema.index_of("embedding").with_context(unreadable)?,
    ];
    if with_ids {
        roots.push(schema.index_of("id").with_context(unreadable)?);
    }
    if chunked {
        for c in [CHUNK, CHUNK_START, CHUNK_END] {
            roots.push(schema.index_of(c).with_context(unreadable)?);
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    // Owned indices per selected source row (several owned rows may copy one source row).
    let mut targets: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(r, i) in wanted {
        targets.entry(r).or_default().push(i);
    }
    let mut selectors = Vec::new();
    let mut at = 0u32;
    for &r in targets.keys() {
        if r > at {
            selectors.push(RowSelector::skip((r - at) as usize));
        }
        match selectors.last_mut() {
            Some(last) if !last.skip && r == at && at > 0 => last.row_count += 1,
            _ => selectors.push(RowSelector::select(1)),
        }
        at = r + 1;
    }
    let reader = builder
        .with_projection(mask)
        .with_row_selection(RowSelection::from(selectors))
        .with_row_selection_policy(RowSelectionPolicy::Selectors)
        .with_batch_size(COPY_BATCH)
        .build()
        .with_context(unreadable)?;
    Ok(Selected { reader, targets: targets.into_iter(), path: path.to_path_buf(), chunked, carry: None })
}

struct Selected {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    targets: std::collections::btree_map::IntoIter<u32, Vec<u32>>,
    path: PathBuf,
    /// Rows are chunk rows: a source row is its run of chunk rows, all copied together.
    chunked: bool,
    /// The chunk rows of a source row that a batch boundary cut, for the next batch.
    carry: Option<arrow::array::RecordBatch>,
}

impl Selected {
    fn convert(&mut self, batch: arrow::array::RecordBatch) -> Result<Copied> {
        let hashes = batch.column_by_name(TEXT_HASH).expect("projected").as_fixed_size_binary();
        let list = batch.column_by_name("embedding").expect("projected").as_fixed_size_list();
        let ids = batch.column_by_name("id").cloned();
        let mut take: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut owned: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let chunk_numbers = batch.column_by_name(CHUNK).map(|c| c.as_primitive::<UInt32Type>().clone());
        match &chunk_numbers {
            None => {
                for i in 0..batch.num_rows() {
                    let (_, indices) =
                        self.targets.next().context("internal error: more rows read than selected")?;
                    for idx in indices {
                        take.push(i as u32);
                        owned.push(idx);
                    }
                }
            }
            Some(numbers) => {
                // Each source row's chunk rows, once for each owned row that copies it.
                let mut i = 0;
                while i < batch.num_rows() {
                    let end = (i + 1..batch.num_rows()).find(|&k| numbers.value(k) == 0).unwrap_or(batch.num_rows());
                    let (_, indices) =
                        self.targets.next().context("internal error: more rows read than selected")?;
                    for _ in i + 1..end {
                        self.targets.next().context("internal error: more rows read than selected")?;
                    }
                    for idx in indices {
                        take.extend(i as u32..end as u32);
                        owned.extend(std::iter::repeat_n(idx, end - i));
                    }
                    i = end;
                }
            }
        }
        let dim = list.value_length() as usize;
        let hashes: Vec<u128> =
            take.iter().map(|&i| super::hash_from_bytes(hashes.value(i as usize))).collect();
        let identity = take.iter().enumerate().all(|(k, &i)| k == i as usize) && take.len() == batch.num_rows();
        let u32s = |name: &str, take: &Option<arrow::array::UInt32Array>| -> Vec<u32> {
            let column = batch.column_by_name(name).expect("projected").as_primitive::<UInt32Type>();
            match take {
                None => column.values().to_vec(),
                Some(t) => t.values().iter().map(|&i| column.value(i as usize)).collect(),
            }
        };
        let picks = (!identity).then(|| arrow::array::UInt32Array::from(take.clone()));
        let chunks = chunk_numbers.as_ref().map(|_| ChunkColumns {
            chunk: u32s(CHUNK, &picks),
            start: u32s(CHUNK_START, &picks),
            end: u32s(CHUNK_END, &picks),
        });
        let Some(picks) = picks else {
            // One owned row per source row (the usual case): no copy of the vectors.
            let values = list.values().slice(list.offset() * dim, list.len() * dim);
            return Ok(Copied { owned, hashes, ids, values, chunks });
        };
        let list = arrow::compute::take(list, &picks, None)?;
        let list = list.as_fixed_size_list();
        let values = list.values().slice(list.offset() * dim, list.len() * dim);
        let ids = match ids {
            Some(ids) => Some(arrow::compute::take(&ids, &picks, None)?),
            None => None,
        };
        Ok(Copied { owned, hashes, ids, values, chunks })
    }

    /// The next batch as read, joined to what the batch before left over; with chunk rows, cut
    /// after its last complete source row (the rest is carried to the next batch).
    fn next_whole(&mut self) -> Option<Result<arrow::array::RecordBatch>> {
        loop {
            let batch = match self.reader.next() {
                None => return self.carry.take().map(Ok),
                Some(Err(e)) => return Some(Err(e.into())),
                Some(Ok(b)) => b,
            };
            let batch = match self.carry.take() {
                Some(c) => match arrow::compute::concat_batches(&batch.schema(), [&c, &batch]) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e.into())),
                },
                None => batch,
            };
            if !self.chunked {
                return Some(Ok(batch));
            }
            let numbers = batch.column_by_name(CHUNK).expect("projected").as_primitive::<UInt32Type>();
            let last_start = (0..batch.num_rows()).rev().find(|&i| numbers.value(i) == 0).unwrap_or(0);
            if last_start == 0 {
                self.carry = Some(batch);
                continue;
            }
            self.carry = Some(batch.slice(last_start, batch.num_rows() - last_start));
            return Some(Ok(batch.slice(0, last_start)));
        }
    }
}

impl Iterator for Selected {
    type Item = Result<Copied>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.next_whole()?;
        Some(
            batch
                .with_context(|| format!("cannot read {} (a --reuse source)", self.path.display()))
                .and_then(|b| self.convert(b)),
        )
    }
}

fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}
