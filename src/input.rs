//! Input Parquet files: finding them, checking their schema from the footer, and streaming the
//! rows a worker owns — only the text (and id) columns, skipping row groups and pages it does
//! not own — in chunks tagged with global row numbers.
//!
//! Rows are numbered over all input files taken in sorted path order; that number is the `row`
//! column of the output.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::PageIndexPolicy;

/// One input file, checked.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub rows: u64,
    /// Global number of this file's first row.
    pub first_row: u64,
    /// Rows in each row group, in order.
    row_groups: Vec<u64>,
    text_index: usize,
    id_index: Option<usize>,
}

impl InputFile {
    /// The file's rows as global row numbers.
    pub fn global_rows(&self) -> Range<u64> {
        self.first_row..self.first_row + self.rows
    }
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

/// The files with their columns checked, and the type of the id column if one was asked for.
pub struct Inputs {
    pub files: Vec<InputFile>,
    pub id_type: Option<DataType>,
}

impl Inputs {
    pub fn total_rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// Reads every file's footer and checks that it has a string column named `text_column` (and
/// a column `id_column` of one type across files). Nothing but footers is read.
pub fn open_all(paths: &[PathBuf], text_column: &str, id_column: Option<&str>) -> Result<Inputs> {
    let mut files = Vec::with_capacity(paths.len());
    let mut first_row = 0;
    let mut id_type: Option<(DataType, PathBuf)> = None;
    for path in paths {
        let builder = builder(path)?;
        let schema = builder.schema();
        let names = || {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            names.join(", ")
        };
        let Some((text_index, field)) = schema.column_with_name(text_column) else {
            bail!(
                "{} has no column \"{text_column}\" (pick one with --text-column); its columns are: {}",
                path.display(),
                names()
            );
        };
        if !is_string(field.data_type()) {
            bail!(
                "column \"{text_column}\" of {} has type {}, not a string type",
                path.display(),
                field.data_type()
            );
        }
        let id_index = match id_column {
            None => None,
            Some(id) => {
                let Some((i, field)) = schema.column_with_name(id) else {
                    bail!(
                        "{} has no column \"{id}\" (--id-column); its columns are: {}",
                        path.display(),
                        names()
                    );
                };
                match &id_type {
                    Some((t, first)) if t != field.data_type() => bail!(
                        "column \"{id}\" has type {} in {} but {} in {}; --id-column needs one type",
                        t,
                        first.display(),
                        field.data_type(),
                        path.display()
                    ),
                    Some(_) => {}
                    None => id_type = Some((field.data_type().clone(), path.clone())),
                }
                Some(i)
            }
        };
        let meta = builder.metadata();
        let rows = meta.file_metadata().num_rows() as u64;
        let row_groups = meta.row_groups().iter().map(|g| g.num_rows() as u64).collect();
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        files.push(InputFile {
            path: path.clone(),
            bytes,
            rows,
            first_row,
            row_groups,
            text_index,
            id_index,
        });
        first_row += rows;
    }
    Ok(Inputs { files, id_type: id_type.map(|(t, _)| t) })
}

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))
}

/// Consecutive owned rows of one file.
pub struct Chunk {
    /// Global row number of each row.
    pub rows: Vec<u64>,
    pub texts: StringArray,
    /// The id column's values, when asked for.
    pub ids: Option<ArrayRef>,
}

/// Streams the rows of `file` within `owned` (global row ranges, increasing, inside the file)
/// in chunks of up to `chunk_rows` rows. Row groups with no owned row are not read; within the
/// others, unowned rows are skipped by a row selection (pages are skipped where the file has a
/// page index).
pub fn read_rows(file: &InputFile, owned: &[Range<u64>], chunk_rows: usize) -> Result<Chunks> {
    let handle = File::open(&file.path).with_context(|| format!("cannot open {}", file.path.display()))?;
    // The page index (when the file has one) lets the row selection skip whole pages.
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(handle, options)
        .with_context(|| format!("{} is not a readable Parquet file", file.path.display()))?;
    let mut roots = vec![file.text_index];
    roots.extend(file.id_index);
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);

    // Local (in-file) owned ranges, and the row groups they touch.
    let local: Vec<Range<u64>> =
        owned.iter().map(|r| r.start - file.first_row..r.end - file.first_row).collect();
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    let mut group_start = 0;
    for (g, &n) in file.row_groups.iter().enumerate() {
        let group = group_start..group_start + n;
        group_start += n;
        let inside: Vec<Range<u64>> = local
            .iter()
            .filter(|r| r.start < group.end && r.end > group.start)
            .map(|r| r.start.max(group.start)..r.end.min(group.end))
            .collect();
        if inside.is_empty() {
            continue;
        }
        groups.push(g);
        let mut at = group.start;
        for r in inside {
            if r.start > at {
                selectors.push(RowSelector::skip((r.start - at) as usize));
            }
            selectors.push(RowSelector::select((r.end - r.start) as usize));
            at = r.end;
        }
        if group.end > at {
            selectors.push(RowSelector::skip((group.end - at) as usize));
        }
    }
    let reader = builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_row_selection(RowSelection::from(selectors))
        .with_batch_size(chunk_rows)
        .build()
        .with_context(|| format!("cannot read {}", file.path.display()))?;
    let rows: Vec<u64> = owned.iter().flat_map(|r| r.clone()).collect();
    Ok(Chunks {
        reader,
        rows,
        next: 0,
        path: file.path.clone(),
        has_ids: file.id_index.is_some(),
        text_first: file.id_index.is_none_or(|i| file.text_index < i),
    })
}

pub struct Chunks {
    reader: ParquetRecordBatchReader,
    rows: Vec<u64>,
    next: usize,
    path: PathBuf,
    has_ids: bool,
    /// Projected columns come in file order: whether text precedes id.
    text_first: bool,
}

impl Chunks {
    fn convert(&mut self, batch: arrow::array::RecordBatch) -> Result<Chunk> {
        let (text_col, id_col) = match (self.has_ids, self.text_first) {
            (false, _) => (0, None),
            (true, true) => (0, Some(1)),
            (true, false) => (1, Some(0)),
        };
        // Utf8View, LargeUtf8 and dictionary-encoded strings all become plain Utf8.
        let texts = arrow::compute::cast(batch.column(text_col), &DataType::Utf8)
            .with_context(|| format!("cannot read the text column of {}", self.path.display()))?
            .as_string::<i32>()
            .clone();
        let n = texts.len();
        let rows = self
            .rows
            .get(self.next..self.next + n)
            .with_context(|| format!("{} returned more rows than its footer lists", self.path.display()))?
            .to_vec();
        self.next += n;
        let ids = id_col.map(|i| batch.column(i).clone());
        Ok(Chunk { rows, texts, ids })
    }
}

impl Iterator for Chunks {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = crate::faults::read() {
            return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display())));
        }
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display()))),
        };
        Some(self.convert(batch))
    }
}
