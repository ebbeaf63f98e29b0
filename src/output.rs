//! Vector shards: Parquet files with `row` (UInt64), optionally `id` (the input's id column, its
//! own type) and `embedding` (FixedSizeList of Float32 or Float16), each written under a temporary
//! name, fsynced and renamed into place, so a reader never sees half a file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::checkpoint::{sync_dir, PartRecord};

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

/// `part-NNNNNN.parquet`
pub fn part_name(seq: usize) -> String {
    format!("part-{seq:06}.parquet")
}

/// The sequence number of a part file name, if it is one.
pub fn part_seq(name: &str) -> Option<usize> {
    name.strip_prefix("part-")?.strip_suffix(".parquet")?.parse().ok()
}

/// Buffers vectors and writes them out as numbered part files.
pub struct ShardWriter {
    dir: PathBuf,
    dim: usize,
    dtype: OutputDtype,
    next_part: usize,
    schema: Arc<Schema>,
    rows: Vec<u64>,
    values: Vec<f32>,
    ids: Vec<ArrayRef>,
}

impl ShardWriter {
    /// `id_type` adds an `id` column; `metadata` becomes every part's schema metadata.
    pub fn new(
        dir: &Path,
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
        let item = Field::new_list_field(dtype.arrow(), false);
        fields.push(Field::new("embedding", DataType::FixedSizeList(Arc::new(item), dim as i32), false));
        ShardWriter {
            dir: dir.to_path_buf(),
            dim,
            dtype,
            next_part,
            schema: Arc::new(Schema::new(fields).with_metadata(metadata)),
            rows: Vec::new(),
            values: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// Buffers one vector per row; `ids` (if the run has an id column) holds one value per row.
    pub fn push(&mut self, rows: &[u64], vectors: &[&[f32]], ids: Option<ArrayRef>) {
        debug_assert_eq!(rows.len(), vectors.len());
        self.rows.extend_from_slice(rows);
        for v in vectors {
            debug_assert_eq!(v.len(), self.dim);
            self.values.extend_from_slice(v);
        }
        self.ids.extend(ids);
    }

    pub fn buffered_rows(&self) -> usize {
        self.rows.len()
    }

    /// Writes the buffered rows as the next part and returns its record; `None` when empty.
    pub fn write_part(&mut self) -> Result<Option<PartRecord>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let name = part_name(self.next_part);
        let path = self.dir.join(&name);
        let n = self.rows.len() as u64;
        let rows = UInt64Array::from(std::mem::take(&mut self.rows));
        let values = std::mem::take(&mut self.values);
        let values: ArrayRef = match self.dtype {
            OutputDtype::F32 => Arc::new(Float32Array::from(values)),
            OutputDtype::F16 => {
                Arc::new(Float16Array::from_iter_values(values.into_iter().map(half::f16::from_f32)))
            }
        };
        let item = Arc::new(Field::new_list_field(self.dtype.arrow(), false));
        let list = FixedSizeListArray::try_new(item, self.dim as i32, values, None)?;
        let mut columns: Vec<ArrayRef> = vec![Arc::new(rows)];
        if self.schema.fields().len() == 3 {
            let pieces: Vec<&dyn arrow::array::Array> = self.ids.iter().map(|a| a.as_ref()).collect();
            columns.push(arrow::compute::concat(&pieces)?);
            self.ids.clear();
        }
        columns.push(Arc::new(list));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        write_atomically(&path, &batch).with_context(|| format!("cannot write {}", path.display()))?;
        self.next_part += 1;
        Ok(Some(PartRecord { file: name, rows: n }))
    }
}

fn write_atomically(path: &Path, batch: &RecordBatch) -> Result<()> {
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp)?;
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    writer.write(batch)?;
    let file = writer.into_inner()?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip() {
        assert_eq!(part_name(7), "part-000007.parquet");
        assert_eq!(part_seq("part-000007.parquet"), Some(7));
        assert_eq!(part_seq("part-000007.parquet.tmp"), None);
        assert_eq!(part_seq("checkpoint.json"), None);
    }
}
