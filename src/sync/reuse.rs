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

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use serde::{Deserialize, Serialize};

use crate::heartbeat::Live;
use crate::input::InputFile;
use crate::output::TEXT_HASH;
use crate::partition::Partition;
use crate::progress::Progress;
use crate::run_spec::RunSpec;
use crate::shutdown::StopFlag;
use crate::stages::WritePlan;
use crate::storage::parquet::{Batches, ParquetFile, ReadRequest};
use crate::storage::Location;
use crate::worker_folder::CommitCounts;

/// Rows decoded at a time from a source part.
const COPY_BATCH: usize = 8192;

/// What the checkpoint keeps of a `--reuse` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReuseState {
    /// The previous outputs as given (absolute paths or URLs).
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
    /// An absolute path or a URL.
    pub path: String,
    pub rows: u64,
    /// `run_spec::footer_hash` of the part: it must not change while this run uses it.
    pub footer: String,
}

/// Lists the committed parts of the previous outputs `outputs` after checking that their
/// vectors were made as this run's will be. `note` hears about incomplete outputs.
pub fn find_sources(
    outputs: &[Location],
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
                    path: path.canonical(),
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
        state.outputs.push(output.canonical());
    }
    Ok(state)
}

/// Fails unless every source is still as it was when the run started.
pub fn check_sources(state: &ReuseState) -> Result<()> {
    for s in &state.sources[state.sources_done.min(state.sources.len())..] {
        let now = Location::parse(&s.path).and_then(|l| crate::run_spec::footer_hash(&l));
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
    /// Per source part: (row in that part, owned index), by row in part.
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
/// text hashes, then the key and hash columns of every source part, and pairs them.
pub fn plan(
    files: &[InputFile],
    plan: &[(usize, Vec<Range<u64>>)],
    by_id: bool,
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
    for (si, source) in sources.iter().enumerate() {
        let path = Location::parse(&source.path)?;
        for (row, key, hash) in source_keys(&path, by_id)? {
            let start = entries.partition_point(|e| e.key < key);
            for e in entries[start..].iter().take_while(|e| e.key == key) {
                let slot = &mut source_of[e.index as usize];
                if *slot == u64::MAX && e.hash == hash {
                    *slot = ((si as u64) << 32) | row as u64;
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
    }
    Ok(ReusePlan { copies, reused, count })
}

/// (row in part, key, text hash) of every row of a source part, reading only its key and hash
/// columns.
fn source_keys(path: &Location, by_id: bool) -> Result<Vec<(u32, u128, u128)>> {
    let unreadable = || format!("cannot read {} (a --reuse source)", path.display());
    let file = ParquetFile::open(path).with_context(unreadable)?;
    let schema = file.schema().clone();
    let hash_col = schema.index_of(TEXT_HASH).map_err(|_| {
        anyhow::anyhow!(
            "{} has no {TEXT_HASH} column: it was made by an older batch-embed and cannot be reused",
            path.display()
        )
    })?;
    let mut roots = vec![hash_col];
    let id_col = if by_id { Some(schema.index_of("id").with_context(unreadable)?) } else { None };
    roots.extend(id_col);
    let request = ReadRequest {
        columns: roots,
        row_groups: None,
        selection: None,
        batch_size: COPY_BATCH,
        page_index: false,
    };
    let reader = file.read(request).with_context(unreadable)?;
    let mut out = Vec::new();
    let mut first = 0u32;
    for batch in reader {
        let batch = batch.with_context(unreadable)?;
        let hashes = batch.column_by_name(TEXT_HASH).expect("projected").as_fixed_size_binary();
        let keys = match by_id {
            true => Some(super::id_keys(batch.column_by_name("id").expect("projected"))?),
            false => None,
        };
        for i in 0..batch.num_rows() {
            let hash = super::hash_from_bytes(hashes.value(i));
            let key = match &keys {
                Some(k) => match k[i] {
                    Some(k) => k,
                    None => continue, // a null id matches nothing
                },
                None => hash,
            };
            out.push((first + i as u32, key, hash));
        }
        first += batch.num_rows() as u32;
    }
    Ok(out)
}

/// Copies the planned rows, source by source from the checkpoint's cursor, into this run's
/// parts, committing as the write stage does. Returns false when stopped by `stop`. `delay` is
/// the test hook `--debug-chunk-delay-ms`, slept before each piece.
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
    let mut last_commit = Instant::now();
    let mut pending = 0u64;
    let mut cursor = (state.sources_done, state.source_rows_done);
    let commit = |shards: &mut crate::output::ShardWriter,
                  ckpt: &mut crate::checkpoint::Checkpoint,
                  pending: &mut u64,
                  cursor: (usize, u64)| {
        let counts = CommitCounts { reused: *pending, reuse_cursor: Some(cursor), ..CommitCounts::default() };
        folder.commit(ckpt, shards.finish_part()?, &[], &counts)?;
        live.rows_committed.store(ckpt.rows_done, Relaxed);
        *pending = 0;
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
        for batch in read_selected(&Location::parse(&source.path)?, wanted, id_type.is_some())? {
            let (owned_indices, hashes, ids, values) = batch?;
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
            // In pieces that fill the open part to --rows-per-part, checking for a stop between.
            let mut at = 0;
            while at < owned_indices.len() {
                if stop.is_set() {
                    commit(&mut shards, ckpt, &mut pending, cursor)?;
                    return Ok(false);
                }
                std::thread::sleep(delay);
                let room = rows_per_part.saturating_sub(shards.buffered_rows()).max(1);
                let n = room.min(owned_indices.len() - at);
                let rows: Vec<u64> =
                    owned_indices[at..at + n].iter().map(|&i| partition.owned_row(i as u64)).collect();
                let piece_ids = ids.as_ref().map(|ids| ids.slice(at, n));
                shards.push(&rows, &hashes[at..at + n], piece_ids, values.slice(at * dim, n * dim))?;
                at += n;
                pending += n as u64;
                copied += n as u64;
                cursor = (si, copied);
                progress.advance(n as u64, 0);
                live.rows_done.fetch_add(n as u64, Relaxed);
                live.rows_reused.fetch_add(n as u64, Relaxed);
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

/// A batch of copied rows: owned indices, text hashes, ids (when asked), flat vector values.
type CopiedBatch = (Vec<u32>, Vec<u128>, Option<ArrayRef>, ArrayRef);

/// Reads the rows `wanted` ((row in part, owned index), by row) of a source part, batch by
/// batch: only their pages of the text hash, id and embedding columns.
fn read_selected(path: &Location, wanted: &[(u32, u32)], with_ids: bool) -> Result<Selected> {
    let unreadable = || format!("cannot read {} (a --reuse source)", path.display());
    let file = ParquetFile::open(path).with_context(unreadable)?;
    let schema = file.schema().clone();
    let mut roots = vec![
        schema.index_of(TEXT_HASH).with_context(unreadable)?,
        schema.index_of("embedding").with_context(unreadable)?,
    ];
    if with_ids {
        roots.push(schema.index_of("id").with_context(unreadable)?);
    }
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
    let reader = file
        .read(ReadRequest {
            columns: roots,
            row_groups: None,
            selection: Some(RowSelection::from(selectors)),
            batch_size: COPY_BATCH,
            page_index: true,
        })
        .with_context(unreadable)?;
    Ok(Selected { reader, targets: targets.into_iter(), path: path.clone() })
}

struct Selected {
    reader: Batches,
    targets: std::collections::btree_map::IntoIter<u32, Vec<u32>>,
    path: Location,
}

impl Selected {
    fn convert(&mut self, batch: arrow::array::RecordBatch) -> Result<CopiedBatch> {
        let hashes = batch.column_by_name(TEXT_HASH).expect("projected").as_fixed_size_binary();
        let list = batch.column_by_name("embedding").expect("projected").as_fixed_size_list();
        let ids = batch.column_by_name("id").cloned();
        let mut take: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut owned: Vec<u32> = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let (_, indices) = self.targets.next().context("internal error: more rows read than selected")?;
            for idx in indices {
                take.push(i as u32);
                owned.push(idx);
            }
        }
        let dim = list.value_length() as usize;
        let hashes: Vec<u128> =
            take.iter().map(|&i| super::hash_from_bytes(hashes.value(i as usize))).collect();
        if take.len() == batch.num_rows() {
            // One owned row per source row (the usual case): no copy of the vectors.
            let values = list.values().slice(list.offset() * dim, list.len() * dim);
            return Ok((owned, hashes, ids, values));
        }
        let take = arrow::array::UInt32Array::from(take);
        let list = arrow::compute::take(list, &take, None)?;
        let list = list.as_fixed_size_list();
        let values = list.values().slice(list.offset() * dim, list.len() * dim);
        let ids = match ids {
            Some(ids) => Some(arrow::compute::take(&ids, &take, None)?),
            None => None,
        };
        Ok((owned, hashes, ids, values))
    }
}

impl Iterator for Selected {
    type Item = Result<CopiedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.reader.next()?;
        Some(
            batch
                .with_context(|| format!("cannot read {} (a --reuse source)", self.path.display()))
                .and_then(|b| self.convert(b)),
        )
    }
}
