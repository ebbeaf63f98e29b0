//! Input Parquet files: finding them, checking their schema from the footer, and streaming the
//! text column (only that column) in chunks tagged with global row numbers.
//!
//! Rows are numbered over all input files taken in sorted path order; that number is the `row`
//! column of the output.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

/// One input file, checked.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub rows: u64,
    /// Global number of this file's first row.
    pub first_row: u64,
    /// Index of the text column among the file's top-level columns.
    text_index: usize,
}

/// Expands files and folders (searched recursively for `*.parquet`) into a sorted, de-duplicated
/// list of files.
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut files).with_context(|| format!("cannot list {}", input.display()))?;
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            bail!("input {} does not exist", input.display());
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        bail!("no Parquet files (*.parquet) found in {}", names.join(", "));
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a column of this type can be read as text.
fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, value) => is_string(value),
        _ => false,
    }
}

/// Reads every file's footer and checks that it has a string column named `text_column`.
/// Nothing but footers is read.
pub fn open_all(paths: &[PathBuf], text_column: &str) -> Result<Vec<InputFile>> {
    let mut files = Vec::with_capacity(paths.len());
    let mut first_row = 0;
    for path in paths {
        let builder = builder(path)?;
        let schema = builder.schema();
        let Some((text_index, field)) = schema.column_with_name(text_column) else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            bail!(
                "{} has no column \"{text_column}\" (pick one with --text-column); its columns are: {}",
                path.display(),
                names.join(", ")
            );
        };
        if !is_string(field.data_type()) {
            bail!(
                "column \"{text_column}\" of {} has type {}, not a string type",
                path.display(),
                field.data_type()
            );
        }
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        files.push(InputFile { path: path.clone(), rows, first_row, text_index });
        first_row += rows;
    }
    Ok(files)
}

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))
}

/// Consecutive rows of one file's text column.
pub struct TextChunk {
    /// Global number of the chunk's first row.
    pub first_row: u64,
    pub texts: StringArray,
}

/// Streams the text column of `file` in chunks of up to `chunk_rows` rows.
pub fn read_texts(file: &InputFile, chunk_rows: usize) -> Result<TextChunks> {
    let builder = builder(&file.path)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [file.text_index]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(chunk_rows)
        .build()
        .with_context(|| format!("cannot read {}", file.path.display()))?;
    Ok(TextChunks { reader, next_row: file.first_row, path: file.path.clone() })
}

pub struct TextChunks {
    reader: ParquetRecordBatchReader,
    next_row: u64,
    path: PathBuf,
}

impl Iterator for TextChunks {
    type Item = Result<TextChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display()))),
        };
        let column = batch.column(0);
        // Utf8View, LargeUtf8 and dictionary-encoded strings all become plain Utf8.
        let texts = match arrow::compute::cast(column, &DataType::Utf8) {
            Ok(a) => a.as_string::<i32>().clone(),
            Err(e) => {
                return Some(
                    Err(e).with_context(|| format!("cannot read the text column of {}", self.path.display())),
                )
            }
        };
        let chunk = TextChunk { first_row: self.next_row, texts };
        self.next_row += chunk.texts.len() as u64;
        Some(Ok(chunk))
    }
}
