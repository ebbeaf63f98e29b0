//! The change set's Parquet files: each written to a temporary file and renamed when finished,
//! rows copied from a run's parts (ids only for deleted.parquet), and duplicates.parquet.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};
use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::Schema;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{read_rows, DUPLICATES};
use crate::storage::{Location, NewFile};

/// One Parquet file of the change set, written to a temporary file and renamed when finished
/// (an empty change gives a file with no rows).
pub(super) struct Output {
    dir: Location,
    name: &'static str,
    writer: Option<(ArrowWriter<NewFile>, Arc<Schema>)>,
    pub(super) rows: u64,
}

impl Output {
    pub(super) fn new(dir: &Location, name: &'static str, schema: Option<Arc<Schema>>) -> Result<Self> {
        let writer = match schema {
            Some(schema) => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let file = dir.join(name).new_file()?;
                Some((ArrowWriter::try_new(file, schema.clone(), Some(props))?, schema))
            }
            None => None,
        };
        Ok(Output { dir: dir.clone(), name, writer, rows: 0 })
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some((writer, schema)) = self.writer.as_mut() else {
            bail!("internal error: rows for {} without a schema", self.name);
        };
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
        writer.write(&batch)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Copies rows `rows` of a part: the columns `columns`, in that order.
    pub(super) fn copy_rows(&mut self, part: &Location, rows: &[u32], columns: &[&str]) -> Result<()> {
        for batch in read_rows(part, rows, columns)? {
            let out = RecordBatch::try_from_iter(
                columns.iter().map(|&c| (c, batch.column_by_name(c).expect("projected").clone())),
            )?;
            self.write(&out)?;
        }
        Ok(())
    }

    /// Copies the ids of rows `rows` of a part.
    pub(super) fn copy_ids(&mut self, part: &Location, rows: &[u32]) -> Result<()> {
        for batch in read_rows(part, rows, &["id"])? {
            let out =
                RecordBatch::try_from_iter([("id", batch.column_by_name("id").expect("projected").clone())])?;
            self.write(&out)?;
        }
        Ok(())
    }

    /// Renames the file into place (no file, and an older one removed, when there was no
    /// schema: a run without any part).
    pub(super) fn finish(self) -> Result<()> {
        match self.writer {
            Some((w, _)) => w.into_inner()?.finish(),
            None => self.dir.join(self.name).delete(),
        }
    }
}

pub(super) fn write_duplicates(dir: &Location, duplicates: &BTreeMap<(&str, String), u64>) -> Result<()> {
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(duplicates.keys().map(|(_, id)| id.as_str())));
    let snapshot: ArrayRef = Arc::new(StringArray::from_iter_values(duplicates.keys().map(|(s, _)| *s)));
    let rows: ArrayRef = Arc::new(UInt64Array::from_iter_values(duplicates.values().copied()));
    let batch = RecordBatch::try_from_iter([("id", ids), ("snapshot", snapshot), ("rows", rows)])?;
    let mut out = Output::new(dir, DUPLICATES, Some(batch.schema()))?;
    out.write(&batch)?;
    out.finish()
}
