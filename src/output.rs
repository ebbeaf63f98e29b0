//! Vector shards: Parquet files with `row` (UInt64), optionally `id` (the input's id column, its
//! own type), with chunk rows `chunk`, `chunk_start` and `chunk_end` (UInt32: the chunk's number in
//! its row and its byte range in the row's text), `text_hash` (FixedSizeBinary(16), see
//! `sync::text_hash`) and `embedding` (FixedSizeList of Float32 or Float16). This module encodes
//! them into a temporary file (on a bucket: an upload in progress); the worker folder puts a
//! finished one into place when it commits, so a reader never sees half a file.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::AsArray;
use arrow::array::{
    ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, UInt32Array,
    UInt64Array,
};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::datatypes::{Float16Type, Float32Type};
use bytes::Bytes;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::data_type::{ByteArray, FixedLenByteArray, FixedLenByteArrayType, FloatType};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::storage::{Location, NewFile};
use crate::worker_folder::{owned_part_name, part_name};

/// Element type of the `embedding` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputDtype {
    F32,
    F16,
}

impl OutputDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputDtype::F32 => "f32",
            OutputDtype::F16 => "f16",
        }
    }

    /// Bytes of one element.
    fn bytes(self) -> usize {
        match self {
            OutputDtype::F32 => 4,
            OutputDtype::F16 => 2,
        }
    }

    fn arrow(self) -> DataType {
        match self {
            OutputDtype::F32 => DataType::Float32,
            OutputDtype::F16 => DataType::Float16,
        }
    }
}

/// The name of the text hash column.
pub const TEXT_HASH: &str = "text_hash";
/// The chunk columns of a run with one row per chunk.
pub const CHUNK: &str = "chunk";
pub const CHUNK_START: &str = "chunk_start";
pub const CHUNK_END: &str = "chunk_end";

/// The chunk columns of rows being written: per output row, its chunk's number in its input row
/// and its byte range in that row's text.
#[derive(Debug, Default)]
pub struct ChunkColumns {
    pub chunk: Vec<u32>,
    pub start: Vec<u32>,
    pub end: Vec<u32>,
}

/// Most bytes of vectors in one Parquet page (at least one vector a page). NOTE: a trade-off
/// measured on 896-dim f32 vectors (BENCHMARKS.md): pages of one vector let a reader of every
/// 8th row read an eighth of a part, but cost a `--reuse` copy ~60% more CPU time than 1 MB
/// pages; at 16 KB (4 such vectors) it reads ~40% and costs ~25% more.
const VECTOR_PAGE_BYTES: usize = 16 * 1024;

/// Rows per Parquet row group in a part: bounds the writer's memory (≤ 4096 × dim × 4 bytes
/// buffered) while keeping groups large enough for readers.
const ROW_GROUP_ROWS: usize = 4096;

/// Rows handed to a Parquet column writer at a time.
const WRITE_ROWS: usize = 256;

/// Streams vectors into part files: the open part is a temporary file in the worker folder until
/// [`ShardWriter::finish_part`] closes it and hands it to the commit.
pub struct ShardWriter {
    dir: Location,
    /// Put after the part number in part names (a bucket writer's lock token).
    tag: Option<String>,
    dim: usize,
    dtype: OutputDtype,
    next_part: usize,
    schema: Arc<Schema>,
    open: Option<OpenPart>,
    /// The parts have the chunk columns.
    chunked: bool,
    levels: VectorLevels,
}

/// A part being written: row groups go to the file as they fill; the rows of the one being
/// gathered wait as Arrow batches (no copy of their vectors).
struct OpenPart {
    file: SerializedFileWriter<NewFile>,
    columns: ArrowRowGroupWriterFactory,
    /// Slices of pushed batches, fewer than [`ROW_GROUP_ROWS`] rows in all.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    row_groups: usize,
    name: String,
    rows: u64,
}

/// Every f16 value's two bytes, little-endian, at twice its bit pattern.
static F16_LE_BYTES: [u8; 1 << 17] = {
    let mut table = [0u8; 1 << 17];
    let mut bits = 0;
    while bits < 1 << 16 {
        table[2 * bits] = (bits & 0xff) as u8;
        table[2 * bits + 1] = (bits >> 8) as u8;
        bits += 1;
    }
    table
};

/// The levels of [`WRITE_ROWS`] vectors in Parquet's encoding of a list column, made once
/// per part: every value is present (definition level 1), and each vector's first value starts
/// a new row (repetition level 0, the others 1).
struct VectorLevels {
    def: Vec<i16>,
    rep: Vec<i16>,
}

impl VectorLevels {
    fn new(dim: usize) -> Self {
        let mut rep = vec![1i16; WRITE_ROWS * dim];
        for row in rep.chunks_mut(dim.max(1)) {
            row[0] = 0;
        }
        VectorLevels { def: vec![1i16; WRITE_ROWS * dim], rep }
    }
}

/// A closed part file, not yet in place: the commit puts it there.
pub struct FinishedPart {
    pub file: NewFile,
    /// Its file name in the worker folder.
    pub name: String,
    pub rows: u64,
}

impl ShardWriter {
    /// `id_type` adds an `id` column; `metadata` becomes every part's schema metadata.
    pub fn new(
        dir: &Location,
        dim: usize,
        dtype: OutputDtype,
        id_type: Option<DataType>,
        next_part: usize,
        metadata: HashMap<String, String>,
    ) -> Self {
        let mut fields = vec![Field::new("row", DataType::UInt64, false)];
        if let Some(t) = id_type {
            fields.push(Field::new("id", t, true));
        }
        fields.push(Field::new(TEXT_HASH, DataType::FixedSizeBinary(16), false));
        let item = Field::new_list_field(dtype.arrow(), false);
        fields.push(Field::new("embedding", DataType::FixedSizeList(Arc::new(item), dim as i32), false));
        ShardWriter {
            dir: dir.clone(),
            tag: None,
            dim,
            dtype,
            next_part,
            schema: Arc::new(Schema::new(fields).with_metadata(metadata)),
            open: None,
            chunked: false,
            levels: VectorLevels::new(dim),
        }
    }

    /// The same writer for one row per chunk: `chunk`, `chunk_start` and `chunk_end` after `row`
    /// and `id`.
    pub fn with_chunk_columns(mut self) -> Self {
        let mut fields: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let at = fields.iter().position(|f| f.name() == TEXT_HASH).expect("a text hash column");
        for (i, name) in [CHUNK, CHUNK_START, CHUNK_END].into_iter().enumerate() {
            fields.insert(at + i, Field::new(name, DataType::UInt32, false));
        }
        self.schema = Arc::new(Schema::new(fields).with_metadata(self.schema.metadata().clone()));
        self.chunked = true;
        self
    }

    /// Whether the parts have the chunk columns.
    pub fn chunked(&self) -> bool {
        self.chunked
    }

    /// Names parts `part-NNNNNN-TAG.parquet` (a bucket folder's owner token, see worker_folder).
    pub fn with_tag(mut self, tag: Option<String>) -> Self {
        self.tag = tag;
        self
    }

    /// The output's element array for row-major `[rows, dim]` f32 values (taken over without a
    /// copy for f32 output).
    pub fn values(&self, values: Vec<f32>) -> ArrayRef {
        match self.dtype {
            OutputDtype::F32 => Arc::new(Float32Array::from(values)),
            OutputDtype::F16 => {
                Arc::new(Float16Array::from_iter_values(values.into_iter().map(half::f16::from_f32)))
            }
        }
    }

    /// Appends one vector per row to the open part: `values` is the flat `[rows × dim]` array of
    /// the output's element type (see [`ShardWriter::values`]); `hashes` are the rows' text
    /// hashes; `ids` (if the run has an id column) holds one value per row.
    pub fn push(
        &mut self,
        rows: &[u64],
        hashes: &[u128],
        ids: Option<ArrayRef>,
        values: ArrayRef,
    ) -> Result<()> {
        self.push_chunks(rows, None, hashes, ids, values)
    }

    /// [`ShardWriter::push`] with, for a writer [`with_chunk_columns`](Self::with_chunk_columns),
    /// the chunk columns of every output row.
    pub fn push_chunks(
        &mut self,
        rows: &[u64],
        chunks: Option<ChunkColumns>,
        hashes: &[u128],
        ids: Option<ArrayRef>,
        values: ArrayRef,
    ) -> Result<()> {
        debug_assert_eq!(rows.len() * self.dim, values.len());
        debug_assert_eq!(rows.len(), hashes.len());
        anyhow::ensure!(
            chunks.is_some() == self.chunked,
            "internal error: chunk columns do not match the parts"
        );
        if rows.is_empty() {
            return Ok(());
        }
        let item = Arc::new(Field::new_list_field(self.dtype.arrow(), false));
        let list = FixedSizeListArray::try_new(item, self.dim as i32, values, None)?;
        let hash_bytes: Vec<u8> = hashes.iter().flat_map(|&h| crate::sync::hash_bytes(h)).collect();
        let hashes = FixedSizeBinaryArray::new(16, Buffer::from_vec(hash_bytes), None);
        let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(rows.to_vec()))];
        columns.extend(ids);
        if let Some(c) = chunks {
            debug_assert!(
                c.chunk.len() == rows.len() && c.start.len() == rows.len() && c.end.len() == rows.len()
            );
            for values in [c.chunk, c.start, c.end] {
                columns.push(Arc::new(UInt32Array::from(values)));
            }
        }
        columns.push(Arc::new(hashes));
        columns.push(Arc::new(list));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        if self.open.is_none() {
            self.open = Some(self.start_part()?);
        }
        let mut at = 0;
        while at < batch.num_rows() {
            let open = self.open.as_mut().expect("opened above");
            let take = (ROW_GROUP_ROWS - open.pending_rows).min(batch.num_rows() - at);
            open.pending.push(batch.slice(at, take));
            open.pending_rows += take;
            at += take;
            if open.pending_rows == ROW_GROUP_ROWS {
                self.write_row_group()?;
            }
        }
        self.open.as_mut().expect("opened above").rows += rows.len() as u64;
        Ok(())
    }

    /// Writes the open part's gathered rows as one row group.
    fn write_row_group(&mut self) -> Result<()> {
        let levels = &self.levels;
        let open = self.open.as_mut().expect("a part is open");
        if open.pending_rows == 0 {
            return Ok(());
        }
        let pending = std::mem::take(&mut open.pending);
        open.pending_rows = 0;
        let path = self.dir.join(&open.name);
        let failed = || format!("cannot write {}", path.display());
        let mut writers =
            open.columns.create_column_writers(open.row_groups).with_context(failed)?.into_iter();
        open.row_groups += 1;
        // Every column but the vectors (the last) goes through the Arrow column writers, which
        // work out each array's Parquet levels.
        let fields = self.schema.fields();
        let vectors = fields.len() - 1;
        let mut chunks = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            if i == vectors {
                break;
            }
            let mut leaves_of_field = Vec::new();
            for batch in &pending {
                // NOTE: the levels of a list are two per value; a few hundred rows at a time
                // keep them small and in cache.
                for at in (0..batch.num_rows()).step_by(WRITE_ROWS) {
                    let column = batch.column(i).slice(at, WRITE_ROWS.min(batch.num_rows() - at));
                    let leaves = compute_leaves(field, &column).with_context(failed)?;
                    if leaves_of_field.is_empty() {
                        leaves_of_field = (0..leaves.len())
                            .map(|_| writers.next())
                            .collect::<Option<Vec<_>>>()
                            .context("internal error: fewer Parquet columns than Arrow leaves")?;
                    }
                    for (writer, leaf) in leaves_of_field.iter_mut().zip(&leaves) {
                        writer.write(leaf).with_context(failed)?;
                    }
                }
            }
            for writer in leaves_of_field {
                chunks.push(writer.close().with_context(failed)?);
            }
        }
        let mut group = open.file.next_row_group().with_context(failed)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut group).with_context(failed)?;
        }
        // NOTE: the vectors go straight to their column writer with levels made once: working
        // out two levels and an index per value, then copying the encoded pages into the file,
        // was most of the write thread's time with one row per chunk (profiled, BENCHMARKS.md).
        let mut column =
            group.next_column().with_context(failed)?.context("internal error: no vector column")?;
        let per_write = (WRITE_ROWS * self.dim).max(1);
        match self.dtype {
            OutputDtype::F32 => {
                let writer = column.typed::<FloatType>();
                for batch in &pending {
                    let list = batch.column(vectors).as_fixed_size_list();
                    for rows in list.values().as_primitive::<Float32Type>().values().chunks(per_write) {
                        let n = rows.len();
                        writer
                            .write_batch(rows, Some(&levels.def[..n]), Some(&levels.rep[..n]))
                            .with_context(failed)?;
                    }
                }
            }
            OutputDtype::F16 => {
                // Parquet stores f16 as 2-byte fixed-length values, each its own `Bytes`: taken
                // from a static table of every f16's bytes, they cost no reference count (one
                // per value was half of an f16 run's CPU time).
                let writer = column.typed::<FixedLenByteArrayType>();
                let mut fixed: Vec<FixedLenByteArray> = Vec::with_capacity(per_write);
                for batch in &pending {
                    let list = batch.column(vectors).as_fixed_size_list();
                    for rows in list.values().as_primitive::<Float16Type>().values().chunks(per_write) {
                        let n = rows.len();
                        fixed.clear();
                        fixed.extend(rows.iter().map(|v| {
                            let at = 2 * v.to_bits() as usize;
                            FixedLenByteArray::from(ByteArray::from(Bytes::from_static(
                                &F16_LE_BYTES[at..at + 2],
                            )))
                        }));
                        writer
                            .write_batch(&fixed, Some(&levels.def[..n]), Some(&levels.rep[..n]))
                            .with_context(failed)?;
                    }
                }
            }
        }
        column.close().with_context(failed)?;
        group.close().with_context(failed)?;
        Ok(())
    }

    fn start_part(&self) -> Result<OpenPart> {
        let name = match &self.tag {
            Some(tag) => owned_part_name(self.next_part, tag),
            None => part_name(self.next_part),
        };
        let file = self.dir.join(&name).new_file()?;
        let (file, columns) = ArrowWriter::try_new(file, self.schema.clone(), Some(self.properties()))?
            .into_serialized_writer()?;
        let vectors = file.schema_descr().columns().last().expect("a vector column");
        anyhow::ensure!(
            vectors.max_def_level() == 1 && vectors.max_rep_level() == 1,
            "internal error: the vector column's Parquet levels are not those of a list of values"
        );
        Ok(OpenPart { file, columns, pending: Vec::new(), pending_rows: 0, row_groups: 0, name, rows: 0 })
    }

    /// How parts are encoded.
    fn properties(&self) -> WriterProperties {
        // NOTE: dictionary encoding and min/max statistics cost a hash or compare per float and
        // buy nothing for embedding values (profiled: ~15% of a no-model run); they stay on for
        // `row` and `id`, where readers use them to prune.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_column_dictionary_enabled(ColumnPath::from("id"), true)
            .set_column_statistics_enabled(ColumnPath::from("row"), EnabledStatistics::Chunk)
            .set_column_statistics_enabled(ColumnPath::from("id"), EnabledStatistics::Chunk)
            .set_column_statistics_enabled(ColumnPath::from(CHUNK), EnabledStatistics::Chunk);
        // NOTE: the vectors are most of a part, and floats barely compress: on 896-dim vectors
        // zstd saved 6-9% and lz4 after byte-stream-split 1%, for 1.1-1.8× the CPU time of a
        // `--reuse` copy (measured, see BENCHMARKS.md). So they are stored plain, in pages of a
        // few rows (with the offset index every part has), which lets `--reuse` read mostly the
        // pages of the vectors it copies even when they are scattered (a reordered snapshot).
        let vectors = ColumnPath::new(vec!["embedding".into(), "list".into(), "item".into()]);
        let row_bytes = self.dim * self.dtype.bytes();
        props = props
            .set_column_compression(vectors.clone(), Compression::UNCOMPRESSED)
            .set_column_encoding(vectors.clone(), Encoding::PLAIN)
            .set_column_data_page_row_count_limit(vectors, (VECTOR_PAGE_BYTES / row_bytes.max(1)).max(1))
            // The page limit is checked after each batch of values written, extended to the end
            // of a vector: batches shorter than a vector let a page end after any vector.
            .set_write_batch_size(256);
        props.build()
    }

    /// Rows in the open part.
    pub fn buffered_rows(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.rows as usize)
    }

    /// Closes the open part (Parquet footer written, not yet fsynced or renamed); `None` when
    /// no part is open. The next part gets the next number.
    pub fn finish_part(&mut self) -> Result<Option<FinishedPart>> {
        if self.open.is_none() {
            return Ok(None);
        }
        self.write_row_group()?;
        let open = self.open.take().expect("open");
        let file = open.file.into_inner().context("cannot finish a part file")?;
        self.next_part += 1;
        Ok(Some(FinishedPart { file, name: open.name, rows: open.rows }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::{Path, PathBuf};

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float32Type;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::metadata::PageIndexPolicy;

    /// Writes `rows` vectors of `dim` and returns the finished part's path (kept in `dir`).
    fn write_part(dir: &Path, dim: usize, dtype: OutputDtype, rows: usize) -> PathBuf {
        let dir = dir.join(format!("p-{dim}-{}", dtype.as_str()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = ShardWriter::new(&Location::Local(dir.clone()), dim, dtype, None, 0, HashMap::new());
        let values: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let row_numbers: Vec<u64> = (0..rows as u64).collect();
        let hashes: Vec<u128> = (0..rows as u128).collect();
        let array = w.values(values);
        w.push(&row_numbers, &hashes, None, array).unwrap();
        let part = w.finish_part().unwrap().unwrap();
        let path = dir.join(&part.name);
        part.file.finish().unwrap();
        path
    }

    #[test]
    fn parts_are_what_parquets_arrow_writer_makes_of_the_same_rows() {
        // The vectors skip the Arrow writer (levels made once, values handed over as they are);
        // the file must still be the one it writes, byte for byte, across row groups, with an id
        // column and chunk columns, for f32 and f16.
        let dir = tempfile::tempdir().unwrap();
        for (dtype, chunked) in
            [(OutputDtype::F32, true), (OutputDtype::F32, false), (OutputDtype::F16, true)]
        {
            let at = dir.path().join(format!("{}-{chunked}", dtype.as_str()));
            std::fs::create_dir_all(&at).unwrap();
            let dim = 24;
            let mut w = ShardWriter::new(
                &Location::Local(at.clone()),
                dim,
                dtype,
                Some(DataType::Utf8),
                0,
                HashMap::new(),
            );
            if chunked {
                w = w.with_chunk_columns();
            }
            let mut next = 0u64;
            // Pushes that straddle row groups (4096 rows) and end with a short one.
            const PUSHES: [usize; 5] = [1000, 3500, 4096, 4000, 17];
            for rows in PUSHES {
                let row_numbers: Vec<u64> = (next..next + rows as u64).collect();
                let hashes: Vec<u128> = row_numbers.iter().map(|&r| r as u128 * 7919).collect();
                let ids: ArrayRef = Arc::new(arrow::array::StringArray::from_iter_values(
                    row_numbers.iter().map(|r| format!("doc-{r}")),
                ));
                let values: Vec<f32> =
                    (0..rows * dim).map(|i| ((i as u64 + next * 31) % 997) as f32 / 997.0 - 0.5).collect();
                let chunks = chunked.then(|| ChunkColumns {
                    chunk: row_numbers.iter().map(|&r| (r % 3) as u32).collect(),
                    start: row_numbers.iter().map(|&r| r as u32).collect(),
                    end: row_numbers.iter().map(|&r| r as u32 + 5).collect(),
                });
                let array = w.values(values);
                w.push_chunks(&row_numbers, chunks, &hashes, Some(ids), array).unwrap();
                next += rows as u64;
            }
            let part = w.finish_part().unwrap().unwrap();
            let ours = at.join(&part.name);
            part.file.finish().unwrap();
            // The same rows through ArrowWriter, in the same write calls, with the same properties.
            let file = std::fs::read(&ours).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file.clone())).unwrap();
            assert_eq!(reader.metadata().num_row_groups(), 4);
            assert_eq!(reader.metadata().file_metadata().num_rows(), next as i64);
            let all: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
            let all = arrow::compute::concat_batches(&all[0].schema(), &all).unwrap();
            let mut theirs = Vec::new();
            let mut writer =
                ArrowWriter::try_new(&mut theirs, w.schema.clone(), Some(w.properties())).unwrap();
            // Each push is cut where a row group ends, and each piece handed over 256 rows at a
            // time (where pages may end).
            let (mut pushed, mut in_group) = (0, 0);
            for rows in PUSHES {
                let mut done = 0;
                while done < rows {
                    let piece = (ROW_GROUP_ROWS - in_group).min(rows - done);
                    for at in (0..piece).step_by(WRITE_ROWS) {
                        writer.write(&all.slice(pushed + done + at, WRITE_ROWS.min(piece - at))).unwrap();
                    }
                    done += piece;
                    in_group = (in_group + piece) % ROW_GROUP_ROWS;
                }
                pushed += rows;
            }
            writer.close().unwrap();
            assert!(file == theirs, "{dtype:?} chunked {chunked}: {} bytes vs {}", file.len(), theirs.len());
        }
    }

    #[test]
    fn vectors_are_written_plain_in_pages_of_a_few_rows_that_readers_can_skip() {
        let dir = tempfile::tempdir().unwrap();
        for (dim, dtype) in [(896, OutputDtype::F32), (384, OutputDtype::F16), (4096, OutputDtype::F32)] {
            let rows = 300;
            let path = write_part(dir.path(), dim, dtype, rows);
            let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
            let builder =
                ParquetRecordBatchReaderBuilder::try_new_with_options(File::open(&path).unwrap(), options)
                    .unwrap();
            let meta = builder.metadata().clone();
            let leaf = meta
                .row_group(0)
                .columns()
                .iter()
                .position(|c| c.column_path().string() == "embedding.list.item");
            let leaf = leaf.expect("the vector column's leaf");
            let per_row = dim * dtype.bytes();
            let want_rows = (VECTOR_PAGE_BYTES / per_row).max(1);
            let pages = meta.page_index().unwrap().offset_index(0, leaf).unwrap().page_locations().len();
            // The row limit is checked after each write batch (1024 values), so a page may run a
            // little past it.
            assert!(pages >= rows / (2 * want_rows), "{dim} {dtype:?}: {pages} pages for {rows} rows");
            assert!(pages <= rows, "{dim} {dtype:?}: more pages than rows");
            assert_eq!(meta.row_group(0).column(leaf).compression(), Compression::UNCOMPRESSED);
            // And the values come back as written.
            let batch = builder.build().unwrap().next().unwrap().unwrap();
            let list = batch.column_by_name("embedding").unwrap().as_fixed_size_list();
            assert_eq!(list.len(), rows);
            if dtype == OutputDtype::F32 {
                let v = list.values().as_primitive::<Float32Type>();
                assert_eq!(v.value(7 * dim + 3), ((((7 * dim + 3) * 7919) % 1000) as f32) / 1000.0 - 0.5);
            }
        }
    }
}
