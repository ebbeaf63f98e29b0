//! Vector shards: Parquet files with `row` (UInt64) and `embedding` (FixedSizeList<Float32>),
//! each written under a temporary name and renamed into place, so a reader never sees half a file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Buffers vectors and writes them out as `part-NNNNNN.parquet` files of `rows_per_part` rows.
pub struct ShardWriter {
    dir: PathBuf,
    dim: usize,
    rows_per_part: usize,
    next_part: usize,
    schema: Arc<Schema>,
    rows: Vec<u64>,
    values: Vec<f32>,
    written: Vec<PathBuf>,
}

impl ShardWriter {
    /// `metadata` becomes the key-value metadata of every part's schema.
    pub fn new(dir: &Path, dim: usize, rows_per_part: usize, metadata: HashMap<String, String>) -> Self {
        let item = Field::new_list_field(DataType::Float32, false);
        let schema = Schema::new(vec![
            Field::new("row", DataType::UInt64, false),
            Field::new("embedding", DataType::FixedSizeList(Arc::new(item), dim as i32), false),
        ])
        .with_metadata(metadata);
        ShardWriter {
            dir: dir.to_path_buf(),
            dim,
            rows_per_part: rows_per_part.max(1),
            next_part: 0,
            schema: Arc::new(schema),
            rows: Vec::new(),
            values: Vec::new(),
            written: Vec::new(),
        }
    }

    /// Adds one vector; writes a part when enough rows are buffered.
    pub fn push(&mut self, row: u64, vector: &[f32]) -> Result<()> {
        debug_assert_eq!(vector.len(), self.dim);
        self.rows.push(row);
        self.values.extend_from_slice(vector);
        if self.rows.len() >= self.rows_per_part {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes whatever is buffered as one part.
    pub fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let name = format!("part-{:06}.parquet", self.next_part);
        let path = self.dir.join(&name);
        let rows = UInt64Array::from(std::mem::take(&mut self.rows));
        let values = Float32Array::from(std::mem::take(&mut self.values));
        let item = Arc::new(Field::new_list_field(DataType::Float32, false));
        let list = FixedSizeListArray::try_new(item, self.dim as i32, Arc::new(values), None)?;
        let batch =
            RecordBatch::try_new(self.schema.clone(), vec![Arc::new(rows) as ArrayRef, Arc::new(list)])?;
        write_atomically(&path, &batch).with_context(|| format!("cannot write {}", path.display()))?;
        self.next_part += 1;
        self.written.push(path);
        Ok(())
    }

    /// Flushes and returns the parts written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        self.flush()?;
        Ok(self.written)
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
    Ok(())
}
