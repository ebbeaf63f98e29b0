//! Vector shards: Parquet files with `row` (UInt64), optionally `id` (the input's id column, its
//! own type), `text_hash` (FixedSizeBinary(16), see `sync::text_hash`) and `embedding`
//! (FixedSizeList of Float32 or Float16). This module encodes them into
//! a temporary file (on a bucket: an upload in progress); the worker folder puts a finished one
//! into place when it commits, so a reader never sees half a file.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{
    ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, UInt64Array,
};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
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

    fn arrow(self) -> DataType {
        match self {
            OutputDtype::F32 => DataType::Float32,
            OutputDtype::F16 => DataType::Float16,
        }
    }
}

/// The name of the text hash column.
pub const TEXT_HASH: &str = "text_hash";

/// Rows per Parquet row group in a part: bounds the writer's memory (≤ 4096 × dim × 4 bytes
/// buffered) while keeping groups large enough for readers.
const ROW_GROUP_ROWS: usize = 4096;

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
}

struct OpenPart {
    writer: ArrowWriter<NewFile>,
    name: String,
    rows: u64,
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
        }
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
        debug_assert_eq!(rows.len() * self.dim, values.len());
        debug_assert_eq!(rows.len(), hashes.len());
        if rows.is_empty() {
            return Ok(());
        }
        let item = Arc::new(Field::new_list_field(self.dtype.arrow(), false));
        let list = FixedSizeListArray::try_new(item, self.dim as i32, values, None)?;
        let hash_bytes: Vec<u8> = hashes.iter().flat_map(|&h| crate::sync::hash_bytes(h)).collect();
        let hashes = FixedSizeBinaryArray::new(16, Buffer::from_vec(hash_bytes), None);
        let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(rows.to_vec()))];
        columns.extend(ids);
        columns.push(Arc::new(hashes));
        columns.push(Arc::new(list));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        if self.open.is_none() {
            self.open = Some(self.start_part()?);
        }
        let open = self.open.as_mut().expect("opened above");
        let dir = &self.dir;
        open.writer
            .write(&batch)
            .with_context(|| format!("cannot write {}", dir.join(&open.name).display()))?;
        open.rows += rows.len() as u64;
        Ok(())
    }

    fn start_part(&self) -> Result<OpenPart> {
        let name = match &self.tag {
            Some(tag) => owned_part_name(self.next_part, tag),
            None => part_name(self.next_part),
        };
        let file = self.dir.join(&name).new_file()?;
        // NOTE: dictionary encoding and min/max statistics cost a hash or compare per float and
        // buy nothing for embedding values (profiled: ~15% of a no-model run); they stay on for
        // `row` and `id`, where readers use them to prune.
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_column_dictionary_enabled(ColumnPath::from("id"), true)
            .set_column_statistics_enabled(ColumnPath::from("row"), EnabledStatistics::Chunk)
            .set_column_statistics_enabled(ColumnPath::from("id"), EnabledStatistics::Chunk)
            .build();
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(props))?;
        Ok(OpenPart { writer, name, rows: 0 })
    }

    /// Rows in the open part.
    pub fn buffered_rows(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.rows as usize)
    }

    /// Closes the open part (Parquet footer written, not yet fsynced or renamed); `None` when
    /// no part is open. The next part gets the next number.
    pub fn finish_part(&mut self) -> Result<Option<FinishedPart>> {
        let Some(open) = self.open.take() else {
            return Ok(None);
        };
        let file = open.writer.into_inner().context("cannot finish a part file")?;
        self.next_part += 1;
        Ok(Some(FinishedPart { file, name: open.name, rows: open.rows }))
    }
}
