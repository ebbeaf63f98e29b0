//! The copy phase of `embed --reuse` (reuse.rs plans it): for each source part from the
//! checkpoint's cursor, the planned rows' text hashes, ids, chunk columns and vectors are read
//! (only their pages) and written into this run's parts under this run's row numbers, committed
//! as the write stage commits. A row's chunk rows (with one row per chunk) are read, ordered and
//! committed together, in one part.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, UInt32Type};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

use super::reuse::{ReusePlan, ReuseState, COPY_BATCH};
use crate::heartbeat::Live;
use crate::id_types::{cast_to, key_type};
use crate::output::{ChunkColumns, CHUNK, CHUNK_END, CHUNK_START, TEXT_HASH};
use crate::partition::Partition;
use crate::progress::Progress;
use crate::shutdown::StopFlag;
use crate::stages::WritePlan;
use crate::storage::parquet::{Batches, ParquetFile, ReadRequest};
use crate::storage::Location;
use crate::worker_folder::CommitCounts;

/// What the copy phase did.
pub struct Copied {
    /// False when stopped by a signal before the end.
    pub finished: bool,
    /// Bytes read from the sources (the copied rows' pages).
    pub source_bytes: u64,
}

/// Copies the planned rows, source by source from the checkpoint's cursor, into this run's
/// parts, committing as the write stage does (a row's chunk rows always into one part).
/// `delay` is the test hook `--debug-chunk-delay-ms`, slept before each piece.
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
) -> Result<Copied> {
    let WritePlan { folder, ckpt, mut shards, every, rows_per_part } = write;
    let bytes = Arc::new(AtomicU64::new(0));
    let stopped = |bytes: &Arc<AtomicU64>| Copied { finished: false, source_bytes: bytes.load(Relaxed) };
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
        live.committed(ckpt);
        *pending = (0, 0);
        anyhow::Ok(())
    };
    // NOTE: the sources are read (decoded) on a thread of their own while this one writes
    // (encodes) the parts: the two halves of the copy take about as long each.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Piece>>(2);
        let reader = scope.spawn(|| read_sources(&state, plan, id_type.is_some(), chunked, &bytes, tx));
        let mut copied = state.source_rows_done;
        for piece in rx {
            let (si, batch) = match piece? {
                Piece::Done(si) => {
                    cursor = (si + 1, 0);
                    copied = 0;
                    continue;
                }
                Piece::Batch(si, batch) => (si, batch),
            };
            let CopiedRows { owned: owned_indices, hashes, mut ids, values, chunks } = batch;
            if let (Some(got), Some(want)) = (&ids, id_type) {
                // Ids of another width or string layout are the same ids: written as this run's.
                if key_type(got.data_type()) != key_type(want) {
                    bail!(
                        "{}: its id column is {}, this run's is {want}; they cannot be matched",
                        state.sources[si].path,
                        got.data_type()
                    );
                }
                ids = Some(cast_to(got, want).with_context(|| state.sources[si].path.clone())?);
            }
            let dim = values.len() / owned_indices.len().max(1);
            // In pieces that fill the open part to --rows-per-part, checking for a stop between;
            // a piece ends where a row ends (its chunk rows stay together).
            let mut at = 0;
            while at < owned_indices.len() {
                if stop.is_set() {
                    commit(&mut shards, ckpt, &mut pending, cursor)?;
                    return Ok(stopped(&bytes));
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
        reader.join().expect("reuse reader panicked");
        commit(&mut shards, ckpt, &mut pending, cursor)?;
        Ok(Copied { finished: true, source_bytes: bytes.load(Relaxed) })
    })
}

/// What the reader of the sources hands the copy: a batch of source `si`, or the end of it.
enum Piece {
    Batch(usize, CopiedRows),
    Done(usize),
}

/// Reads the planned rows of every source from the checkpoint's cursor on, in order, into
/// `tx`; stops quietly when the receiver is gone, and sends the first error.
fn read_sources(
    state: &ReuseState,
    plan: &ReusePlan,
    with_ids: bool,
    chunked: bool,
    bytes: &Arc<AtomicU64>,
    tx: std::sync::mpsc::SyncSender<Result<Piece>>,
) {
    for si in state.sources_done..state.sources.len() {
        let skip = if si == state.sources_done { state.source_rows_done as usize } else { 0 };
        let wanted = &plan.copies[si][skip.min(plan.copies[si].len())..];
        if !wanted.is_empty() {
            let batches = match Location::parse(&state.sources[si].path)
                .and_then(|path| read_selected(&path, wanted, with_ids, chunked, bytes))
            {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for batch in batches {
                let failed = batch.is_err();
                if tx.send(batch.map(|b| Piece::Batch(si, b))).is_err() || failed {
                    return;
                }
            }
        }
        if tx.send(Ok(Piece::Done(si))).is_err() {
            return;
        }
    }
}

/// A batch of copied output rows: owned index, text hash, id (when asked), chunk columns (chunk
/// rows), and the flat vector values, one row each.
struct CopiedRows {
    owned: Vec<u32>,
    hashes: Vec<u128>,
    ids: Option<ArrayRef>,
    values: ArrayRef,
    chunks: Option<ChunkColumns>,
}

/// Reads the rows `wanted` ((row in part, owned index), in the order of [`ReusePlan::copies`])
/// of a source part, batch by batch: only their pages of the text hash, id, chunk and embedding
/// columns.
fn read_selected(
    path: &Location,
    wanted: &[(u32, u32)],
    with_ids: bool,
    chunked: bool,
    bytes: &Arc<AtomicU64>,
) -> Result<Selected> {
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
    if chunked {
        for c in [CHUNK, CHUNK_START, CHUNK_END] {
            roots.push(schema.index_of(c).with_context(unreadable)?);
        }
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
    // The offset index lets the selection fetch only the pages holding the wanted rows.
    let reader = file
        .read(ReadRequest {
            columns: roots,
            leaves: None,
            row_groups: None,
            selection: Some(RowSelection::from(selectors)),
            batch_size: COPY_BATCH,
            page_index: true,
        })
        .with_context(unreadable)?;
    Ok(Selected {
        reader,
        targets: targets.into_iter(),
        path: path.clone(),
        chunked,
        carry: None,
        bytes: bytes.clone(),
    })
}

struct Selected {
    reader: Batches,
    targets: std::collections::btree_map::IntoIter<u32, Vec<u32>>,
    path: Location,
    /// Rows are chunk rows: a source row is its run of chunk rows, all copied together.
    chunked: bool,
    /// The chunk rows of a source row that a batch boundary cut, for the next batch.
    carry: Option<arrow::array::RecordBatch>,
    /// Where the bytes read are added up, when the reader is done with.
    bytes: Arc<AtomicU64>,
}

impl Drop for Selected {
    fn drop(&mut self) {
        self.bytes.fetch_add(self.reader.bytes_read(), Relaxed);
    }
}

impl Selected {
    fn convert(&mut self, batch: arrow::array::RecordBatch) -> Result<CopiedRows> {
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
                    let end = (i + 1..batch.num_rows())
                        .find(|&k| numbers.value(k) == 0)
                        .unwrap_or(batch.num_rows());
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
        let identity =
            take.iter().enumerate().all(|(k, &i)| k == i as usize) && take.len() == batch.num_rows();
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
            return Ok(CopiedRows { owned, hashes, ids, values, chunks });
        };
        let list = arrow::compute::take(list, &picks, None)?;
        let list = list.as_fixed_size_list();
        let values = list.values().slice(list.offset() * dim, list.len() * dim);
        let ids = match ids {
            Some(ids) => Some(arrow::compute::take(&ids, &picks, None)?),
            None => None,
        };
        Ok(CopiedRows { owned, hashes, ids, values, chunks })
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
    type Item = Result<CopiedRows>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.next_whole()?;
        Some(
            batch
                .with_context(|| format!("cannot read {} (a --reuse source)", self.path.display()))
                .and_then(|b| self.convert(b)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputDtype, ShardWriter};

    /// Element `j` of row `i`'s vector: made up, and as incompressible as real vectors.
    fn value(i: usize, j: usize) -> f32 {
        ((i * 7919 + j * 104_729) % 100_003) as f32 / 100_003.0
    }

    /// A part of `rows` 896-dim vectors, as a finished file in `dir`.
    fn part(dir: &std::path::Path, rows: usize) -> std::path::PathBuf {
        let dim = 896;
        let mut w = ShardWriter::new(
            &Location::Local(dir.to_path_buf()),
            dim,
            OutputDtype::F32,
            None,
            0,
            Default::default(),
        );
        let values: Vec<f32> = (0..rows * dim).map(|k| value(k / dim, k % dim)).collect();
        let numbers: Vec<u64> = (0..rows as u64).collect();
        let hashes: Vec<u128> = (0..rows as u128).collect();
        let values = w.values(values);
        w.push(&numbers, &hashes, None, values).unwrap();
        let part = w.finish_part().unwrap().unwrap();
        let path = dir.join(&part.name);
        part.file.finish().unwrap();
        path
    }

    /// Copies `wanted` from `path`; returns (owned index, hash, element 5) per row and the bytes read.
    fn copy_rows(path: &std::path::Path, wanted: &[(u32, u32)]) -> (Vec<(u32, u128, f32)>, u64) {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut got = Vec::new();
        let path = Location::Local(path.to_path_buf());
        for batch in read_selected(&path, wanted, false, false, &bytes).unwrap() {
            let CopiedRows { owned, hashes, values, .. } = batch.unwrap();
            let values = values.as_primitive::<arrow::datatypes::Float32Type>();
            for (k, (&i, &h)) in owned.iter().zip(&hashes).enumerate() {
                got.push((i, h, values.value(k * 896 + 5)));
            }
        }
        (got, bytes.load(Relaxed))
    }

    #[test]
    fn copying_some_rows_reads_the_pages_that_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = part(dir.path(), 4000);
        let size = std::fs::metadata(&path).unwrap().len();
        // A worker of 8 over the same snapshot (its rows in runs) and over a reordered one
        // (every 8th row): both copy an eighth of the rows, with the right values.
        let runs: Vec<u32> = (0..4000u32).filter(|r| (r / 100) % 8 == 3).collect();
        let scattered: Vec<u32> = (0..500u32).map(|i| i * 8 + 3).collect();
        let mut reads = Vec::new();
        for rows in [runs, scattered] {
            let wanted: Vec<(u32, u32)> = rows.iter().enumerate().map(|(i, &r)| (r, i as u32)).collect();
            let (got, read) = copy_rows(&path, &wanted);
            let want: Vec<(u32, u128, f32)> =
                rows.iter().enumerate().map(|(i, &r)| (i as u32, r as u128, value(r as usize, 5))).collect();
            assert_eq!(got, want);
            reads.push(read);
        }
        // Runs: their pages (an eighth), plus the footer, page index and hash column.
        assert!(reads[0] < size / 6, "read {} of {size} bytes for runs of an eighth of the rows", reads[0]);
        // Scattered: pages of 16 KB hold 4 of these vectors, so ~1 − (7/8)⁴ = 41% of them.
        assert!(reads[1] < size * 6 / 10, "read {} of {size} bytes for every 8th row", reads[1]);
        assert!(reads[0] > size / 10, "read {} of {size} bytes: too little to hold the vectors", reads[0]);
    }
}
