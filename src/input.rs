//! Input Parquet files: finding them, checking their schema from the footer, and streaming the
//! rows a worker owns — only the text template's columns (and the id column), skipping row groups
//! and pages it does not own — in chunks tagged with global row numbers, each row's text built
//! from its columns (template.rs).
//!
//! Rows are numbered over all input files taken in sorted path order (local paths, then URLs);
//! that number is the `row` column of the output. Files may be local or in a bucket (see
//! storage/): the reading itself is storage/parquet.rs.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

use crate::storage::parquet::{Batches, ParquetFile, ReadRequest};
use crate::storage::Location;
use crate::template::Template;
use columns::ColumnRef;

mod columns;

/// One input file, checked.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: Location,
    pub bytes: u64,
    pub rows: u64,
    /// The content identity of the file: a hash of its Parquet footer (`run_spec::footer_hash`).
    pub footer_hash: String,
    /// Global number of this file's first row.
    pub first_row: u64,
    /// Rows in each row group, in order.
    row_groups: Vec<u64>,
    /// The template's columns, in the template's order.
    text_columns: Vec<ColumnRef>,
    id_column: Option<ColumnRef>,
    template: Arc<Template>,
}

impl InputFile {
    /// The file's rows as global row numbers.
    pub fn global_rows(&self) -> Range<u64> {
        self.first_row..self.first_row + self.rows
    }
}

/// Expands files and folders (searched recursively for `*.parquet`) into a sorted, de-duplicated
/// list of files. On a bucket, a URL naming an object is that file, and any other URL is a
/// prefix listed recursively.
pub fn discover(inputs: &[Location]) -> Result<Vec<Location>> {
    let mut files = Vec::new();
    for input in inputs {
        match input {
            Location::Local(input) if input.is_dir() => {
                let mut found = Vec::new();
                walk(input, &mut found).with_context(|| format!("cannot list {}", input.display()))?;
                files.extend(found.into_iter().map(Location::Local));
            }
            Location::Local(input) if input.is_file() => files.push(Location::Local(input.clone())),
            Location::Local(input) => bail!("input {} does not exist", input.display()),
            Location::Object(o) => {
                if !o.is_root() && o.size()?.is_some() {
                    files.push(input.clone());
                } else {
                    let found = o.list_all()?;
                    files.extend(
                        found
                            .into_iter()
                            .filter(|(f, _)| f.name().ends_with(".parquet"))
                            .map(|(f, _)| Location::Object(f)),
                    );
                }
            }
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

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
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

/// Whether a column of this type can be read as text: strings, and the binary columns older
/// writers (Hive, Impala, Spark before 1.5's `binaryAsString`) store strings in without the
/// UTF-8 annotation; a value there that is not UTF-8 is that row's failure.
fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Dictionary(_, value) => is_text(value),
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

/// Reads every file's footer and checks that it has a string column for each of `template`'s
/// columns (and a column `id_column` of one type across files). Nothing but footers is read.
pub fn open_all(paths: &[Location], template: &Template, id_column: Option<&str>) -> Result<Inputs> {
    let template = Arc::new(template.clone());
    let mut files = Vec::with_capacity(paths.len());
    let mut first_row = 0;
    let mut id_type: Option<(DataType, Location)> = None;
    for (path, parquet) in paths.iter().zip(ParquetFile::open_all(paths)?) {
        let schema = parquet.schema();
        let names = || columns::names(schema);
        let find = |name: &str| columns::find(schema, parquet.parquet_schema(), name);
        let mut text_columns = Vec::with_capacity(template.columns().len());
        for column in template.columns() {
            let pick = match template.single_column() {
                Some(_) => "pick one with --text-column".to_string(),
                None => format!("named in --text-template {:?}", template.source()),
            };
            let Some(found) = find(column) else {
                bail!("{} has no column \"{column}\" ({pick}); its columns are: {}", path.display(), names());
            };
            let field = &found.field;
            if !is_text(field.data_type()) {
                bail!(
                    "column \"{column}\" of {} has type {}, not a string or binary type ({pick}); its columns are: {}",
                    path.display(),
                    field.data_type(),
                    names()
                );
            }
            text_columns.push(found);
        }
        let id_column = match id_column {
            None => None,
            Some(id) => {
                let Some(found) = find(id) else {
                    bail!(
                        "{} has no column \"{id}\" (--id-column); its columns are: {}",
                        path.display(),
                        names()
                    );
                };
                let field = &found.field;
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
                Some(found)
            }
        };
        let meta = parquet.metadata();
        let rows = meta.file_metadata().num_rows() as u64;
        let row_groups = meta.row_groups().iter().map(|g| g.num_rows() as u64).collect();
        files.push(InputFile {
            path: path.clone(),
            bytes: parquet.size,
            rows,
            footer_hash: parquet.footer_hash.clone(),
            first_row,
            row_groups,
            text_columns,
            id_column,
            template: template.clone(),
        });
        first_row += rows;
    }
    Ok(Inputs { files, id_type: id_type.map(|(t, _)| t) })
}

/// Consecutive owned rows of one file.
pub struct Chunk {
    /// Global row number of each row.
    pub rows: Vec<u64>,
    pub texts: StringArray,
    /// Each text's content hash (`sync::text_hash`; 0 for a null text).
    pub hashes: Vec<u128>,
    /// The id column's values, when asked for.
    pub ids: Option<ArrayRef>,
    /// Rows (indices into this chunk) whose text is null because a binary column held bytes
    /// that are not UTF-8; their failure says so instead of "null".
    pub not_utf8: Vec<usize>,
}

/// Streams the rows of `file` within `owned` (global row ranges, increasing, inside the file)
/// in chunks of up to `chunk_rows` rows. Row groups with no owned row are not read; within the
/// others, unowned rows are skipped by a row selection (pages are skipped where the file has a
/// page index).
pub fn read_rows(file: &InputFile, owned: &[Range<u64>], chunk_rows: usize) -> Result<Chunks> {
    let parquet = ParquetFile::open(&file.path)?;
    let wanted: Vec<&ColumnRef> = file.text_columns.iter().chain(&file.id_column).collect();
    let roots: Vec<usize> = wanted.iter().map(|c| c.root).collect();
    let mut leaves: Vec<usize> = wanted.iter().flat_map(|c| c.leaves.iter().copied()).collect();
    leaves.sort_unstable();
    leaves.dedup();

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
    // The page index (when the file has one) lets the row selection skip whole pages.
    let reader = parquet.read(ReadRequest {
        columns: Vec::new(),
        leaves: Some(leaves.clone()),
        row_groups: Some(groups),
        selection: Some(RowSelection::from(selectors)),
        batch_size: chunk_rows,
        page_index: true,
    })?;
    let rows: Vec<u64> = owned.iter().flat_map(|r| r.clone()).collect();
    // Projected columns come in file order: the batch's position of each column wanted.
    let mut projected = roots.clone();
    projected.sort_unstable();
    projected.dedup();
    let at = |root: usize| projected.iter().position(|&r| r == root).expect("projected");
    Ok(Chunks {
        reader,
        parquet,
        leaves,
        rows,
        next: 0,
        path: file.path.clone(),
        first_row: file.first_row,
        row_groups: file.row_groups.clone(),
        text_columns: file.text_columns.iter().map(|c| (at(c.root), c.path.clone())).collect(),
        id_column: file.id_column.as_ref().map(|c| (at(c.root), c.path.clone())),
        template: file.template.clone(),
    })
}

/// Rows whose bytes were read but do not decode: the file is damaged (or is not what its footer
/// says), and reading it again would give the same, so it is not retried.
#[derive(Debug)]
pub struct Undecodable {
    path: String,
    /// The row group that does not decode, counted from 0, and its rows in the file.
    group: usize,
    groups: usize,
    rows: Range<u64>,
    cause: String,
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: row group {} of {} (rows {}..{} of the file, both counted from 0) does not decode \
             ({}); the file is damaged or uses what this reader does not support, and reading it \
             again gives the same",
            self.path, self.group, self.groups, self.rows.start, self.rows.end, self.cause
        )
    }
}

impl std::error::Error for Undecodable {}

pub struct Chunks {
    reader: Batches,
    /// The file and the leaf columns read, to find which row group does not decode.
    parquet: ParquetFile,
    leaves: Vec<usize>,
    rows: Vec<u64>,
    next: usize,
    path: Location,
    first_row: u64,
    row_groups: Vec<u64>,
    /// Where the template's columns and the id column are in a batch read: the position of
    /// their top-level column, and the struct fields below it.
    text_columns: Vec<(usize, Vec<String>)>,
    id_column: Option<(usize, Vec<String>)>,
    template: Arc<Template>,
}

impl Chunks {
    /// The error of a batch whose bytes arrived but do not decode, placed in the file: a batch
    /// may span row groups, so each from the batch's first row on is read alone (only the
    /// columns wanted) until one fails the same way.
    fn undecodable(&self, e: arrow::error::ArrowError) -> Undecodable {
        let row = self.rows.get(self.next).map_or(0, |r| r - self.first_row);
        let starts: Vec<u64> =
            self.row_groups.iter().scan(0, |at, &n| Some(std::mem::replace(at, *at + n))).collect();
        let first = starts.iter().rposition(|&s| s <= row).unwrap_or(0);
        let fails = |g: usize| {
            let request = ReadRequest {
                columns: Vec::new(),
                leaves: Some(self.leaves.clone()),
                row_groups: Some(vec![g]),
                selection: None,
                batch_size: 1024,
                page_index: false,
            };
            match self.parquet.read(request) {
                Err(_) => true,
                Ok(mut batches) => batches.any(|b| b.is_err()) && !batches.io_failed(),
            }
        };
        let group = (first..self.row_groups.len()).find(|&g| fails(g)).unwrap_or(first);
        let cause = match e {
            arrow::error::ArrowError::ParquetError(m) => m,
            other => other.to_string(),
        };
        let cause = cause.strip_prefix("Parquet error: ").map(str::to_string).unwrap_or(cause);
        let start = starts.get(group).copied().unwrap_or(0);
        Undecodable {
            path: self.path.display().to_string(),
            group,
            groups: self.row_groups.len(),
            rows: start..start + self.row_groups.get(group).copied().unwrap_or(0),
            cause,
        }
    }

    /// Bytes read from the file so far (footer, page index and the pages fetched).
    pub fn bytes_read(&self) -> u64 {
        self.reader.bytes_read()
    }

    fn convert(&mut self, batch: arrow::array::RecordBatch) -> Result<Chunk> {
        // Utf8View, LargeUtf8, binary and dictionary-encoded values all become plain Utf8; a
        // binary value that is not UTF-8 becomes null (the cast's `safe` mode) and is noted.
        let mut not_utf8 = None::<Vec<bool>>;
        let columns = self
            .text_columns
            .iter()
            .zip(self.template.columns())
            .map(|((i, path), name)| {
                let column = &columns::descend(batch.column(*i), path);
                let cast = arrow::compute::cast(column, &DataType::Utf8).with_context(|| {
                    format!("cannot read the text column \"{name}\" of {}", self.path.display())
                })?;
                if cast.null_count() > column.logical_null_count() {
                    let was_null = column.logical_nulls();
                    let was_null = |row| was_null.as_ref().is_some_and(|n| n.is_null(row));
                    let marks = not_utf8.get_or_insert_with(|| vec![false; column.len()]);
                    for (row, mark) in marks.iter_mut().enumerate() {
                        *mark |= cast.is_null(row) && !was_null(row);
                    }
                }
                Ok(cast.as_string::<i32>().clone())
            })
            .collect::<Result<Vec<StringArray>>>()?;
        let mut texts = match self.template.single_column() {
            Some(_) => columns.into_iter().next().expect("one column"),
            None => render(&self.template, &columns),
        };
        let not_utf8 = match not_utf8 {
            None => Vec::new(),
            Some(marks) => {
                // A row with any column not UTF-8 has no text, whatever the others hold.
                let nulled = arrow::compute::nullif(&texts, &BooleanArray::from(marks.clone()))?;
                texts = nulled.as_string::<i32>().clone();
                marks.iter().enumerate().filter_map(|(row, &bad)| bad.then_some(row)).collect()
            }
        };
        let n = texts.len();
        let rows = self
            .rows
            .get(self.next..self.next + n)
            .with_context(|| format!("{} returned more rows than its footer lists", self.path.display()))?
            .to_vec();
        self.next += n;
        let ids = self.id_column.as_ref().map(|(i, path)| columns::descend(batch.column(*i), path));
        let hashes = texts.iter().map(|t| t.map_or(0, crate::sync::text_hash)).collect();
        Ok(Chunk { rows, texts, hashes, ids, not_utf8 })
    }
}

/// Each row's text from the template's columns (null when all of them are null).
fn render(template: &Template, columns: &[StringArray]) -> StringArray {
    let rows = columns.first().map_or(0, |c| c.len());
    let bytes: usize = columns.iter().map(|c| c.value_data().len()).sum();
    let mut out = StringBuilder::with_capacity(rows, bytes + rows * 8);
    let mut text = String::new();
    let mut values: Vec<Option<&str>> = Vec::with_capacity(columns.len());
    for row in 0..rows {
        values.clear();
        values.extend(columns.iter().map(|c| (!c.is_null(row)).then(|| c.value(row))));
        match template.render_into(&values, &mut text) {
            true => out.append_value(&text),
            false => out.append_null(),
        }
    }
    out.finish()
}

impl Iterator for Chunks {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = crate::faults::read() {
            return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display())));
        }
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) if self.reader.io_failed() => {
                return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display())))
            }
            Err(e) => return Some(Err(self.undecodable(e).into())),
        };
        Some(self.convert(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Partition;
    use arrow::array::RecordBatch;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::properties::WriterProperties;
    use std::fs::File;
    use std::sync::Arc;

    /// 4 row groups of 64 rows, pages of 8 rows, ~300 bytes of text per row, with a page index.
    fn pages_file(path: &Path) {
        let mut rng = 7u64;
        let texts: Vec<String> = (0..256)
            .map(|i| {
                let noise: String = (0..300)
                    .map(|_| {
                        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        char::from(b'a' + (rng >> 59) as u8 % 26)
                    })
                    .collect();
                format!("row {i} {noise}")
            })
            .collect();
        let batch =
            RecordBatch::try_from_iter([("text", Arc::new(StringArray::from(texts)) as ArrayRef)]).unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_max_row_group_row_count(Some(64))
            .set_data_page_row_count_limit(8)
            .set_write_batch_size(8)
            .build();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    fn read_owned(file: &InputFile, partition: &Partition) -> (Vec<u64>, u64) {
        let owned = partition.owned_ranges(file.global_rows());
        let mut chunks = read_rows(file, &owned, 100).unwrap();
        let mut rows = Vec::new();
        for c in chunks.by_ref() {
            rows.extend(c.unwrap().rows);
        }
        (rows, chunks.bytes_read())
    }

    #[test]
    fn a_worker_reads_only_the_pages_it_owns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.parquet");
        pages_file(&path);
        let file = open_all(&[Location::Local(path.clone())], &Template::column("text"), None)
            .unwrap()
            .files
            .remove(0);
        let (all_rows, all_bytes) = read_owned(&file, &Partition::new(0, 1, 4096).unwrap());
        assert_eq!(all_rows, (0..256).collect::<Vec<u64>>());

        // Worker 1 of 4 with blocks of 16 rows owns rows 16..32 of each group of 64: two pages
        // of eight per row group.
        let partition = Partition::new(1, 4, 16).unwrap();
        let (rows, bytes) = read_owned(&file, &partition);
        assert_eq!(rows, (0..256).filter(|r| partition.owns(*r)).collect::<Vec<u64>>());
        // What it may read: the footer and page index, and the pages holding its rows.
        let meta = ParquetRecordBatchReaderBuilder::try_new_with_options(
            File::open(&path).unwrap(),
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
        )
        .unwrap()
        .metadata()
        .clone();
        let index = meta.page_index().expect("the test file has a page index");
        let mut data_bytes = 0u64;
        let mut owned_page_bytes = 0u64;
        let mut first_row = 0u64;
        for (g, group) in meta.row_groups().iter().enumerate() {
            data_bytes += group.column(0).compressed_size() as u64;
            let pages = index.offset_index(g, 0).unwrap().page_locations();
            for (p, page) in pages.iter().enumerate() {
                let start = first_row + page.first_row_index as u64;
                let end = pages
                    .get(p + 1)
                    .map_or(first_row + group.num_rows() as u64, |n| first_row + n.first_row_index as u64);
                if (start..end).any(|r| partition.owns(r)) {
                    owned_page_bytes += page.compressed_page_size as u64;
                }
            }
            first_row += group.num_rows() as u64;
        }
        let metadata_bytes = std::fs::metadata(&path).unwrap().len() - data_bytes;
        assert!(owned_page_bytes * 4 >= data_bytes - 100, "a quarter of the pages are owned");
        assert!(
            bytes <= metadata_bytes + owned_page_bytes,
            "read {bytes} bytes; the footer, page index and owned pages are {}",
            metadata_bytes + owned_page_bytes
        );
        assert!(all_bytes >= data_bytes, "a worker of one reads every page");
    }
}
