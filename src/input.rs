//! Input Parquet files: finding them, checking their schema from the footer, and streaming the
//! rows a worker owns — only the text template's columns (and the id column), skipping row groups
//! and pages it does not own — in chunks tagged with global row numbers, each row's text built
//! from its columns (template.rs).
//!
//! Rows are numbered over all input files taken in sorted path order; that number is the `row`
//! column of the output.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelectionPolicy, RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::reader::{ChunkReader, Length};

use crate::template::Template;

/// One input file, checked.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub rows: u64,
    /// The content identity of the file: a hash of its Parquet footer (`run_spec::footer_hash`).
    pub footer_hash: String,
    /// Global number of this file's first row.
    pub first_row: u64,
    /// Rows in each row group, in order.
    row_groups: Vec<u64>,
    /// Root column indices of the template's columns, in the template's order.
    text_indices: Vec<usize>,
    id_index: Option<usize>,
    template: Arc<Template>,
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

/// Reads every file's footer and checks that it has a string column for each of `template`'s
/// columns (and a column `id_column` of one type across files). Nothing but footers is read.
pub fn open_all(paths: &[PathBuf], template: &Template, id_column: Option<&str>) -> Result<Inputs> {
    let template = Arc::new(template.clone());
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
        let mut text_indices = Vec::with_capacity(template.columns().len());
        for column in template.columns() {
            let pick = match template.single_column() {
                Some(_) => "pick one with --text-column".to_string(),
                None => format!("named in --text-template {:?}", template.source()),
            };
            let Some((index, field)) = schema.column_with_name(column) else {
                bail!("{} has no column \"{column}\" ({pick}); its columns are: {}", path.display(), names());
            };
            if !is_string(field.data_type()) {
                bail!(
                    "column \"{column}\" of {} has type {}, not a string type ({pick}); its columns are: {}",
                    path.display(),
                    field.data_type(),
                    names()
                );
            }
            text_indices.push(index);
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
            footer_hash: crate::run_spec::footer_hash(path)?,
            first_row,
            row_groups,
            text_indices,
            id_index,
            template: template.clone(),
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

/// A Parquet file that counts the bytes read from it: what `read_rows` fetches is what a
/// worker pays for on a network file system or bucket, and the tests check that pages a worker
/// does not own are not among it. `--reuse` reads earlier outputs through it too.
pub struct CountingFile {
    file: File,
    bytes: Arc<AtomicU64>,
}

impl CountingFile {
    /// Opens `path`, adding every byte read from it to `bytes`.
    pub fn open(path: &Path, bytes: Arc<AtomicU64>) -> std::io::Result<Self> {
        Ok(CountingFile { file: File::open(path)?, bytes })
    }
}

/// A reader of a [`CountingFile`] from some offset.
pub struct CountingRead {
    file: File,
    bytes: Arc<AtomicU64>,
}

impl Read for CountingRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Length for CountingFile {
    fn len(&self) -> u64 {
        self.file.len()
    }
}

impl ChunkReader for CountingFile {
    type T = std::io::BufReader<CountingRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(start))?;
        Ok(std::io::BufReader::new(CountingRead { file, bytes: self.bytes.clone() }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        let data = self.file.get_bytes(start, length)?;
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }
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
}

/// Streams the rows of `file` within `owned` (global row ranges, increasing, inside the file)
/// in chunks of up to `chunk_rows` rows. Row groups with no owned row are not read; within the
/// others, unowned rows are skipped by a row selection (pages are skipped where the file has a
/// page index).
pub fn read_rows(file: &InputFile, owned: &[Range<u64>], chunk_rows: usize) -> Result<Chunks> {
    let handle = CountingFile::open(&file.path, Arc::new(AtomicU64::new(0)))
        .with_context(|| format!("cannot open {}", file.path.display()))?;
    let bytes_read = handle.bytes.clone();
    // The page index (when the file has one) lets the row selection skip whole pages.
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(handle, options)
        .with_context(|| format!("{} is not a readable Parquet file", file.path.display()))?;
    let mut roots = file.text_indices.clone();
    roots.extend(file.id_index);
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());

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
    // NOTE: selectors, never a mask: parquet's automatic choice reads every page and filters
    // rows afterwards when the selected runs are short (under 32 rows), and fetching pages of
    // rows another worker owns is what this reader exists to avoid.
    let reader = builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_row_selection(RowSelection::from(selectors))
        .with_row_selection_policy(RowSelectionPolicy::Selectors)
        .with_batch_size(chunk_rows)
        .build()
        .with_context(|| format!("cannot read {}", file.path.display()))?;
    let rows: Vec<u64> = owned.iter().flat_map(|r| r.clone()).collect();
    // Projected columns come in file order: the batch's position of each column wanted.
    let mut projected = roots.clone();
    projected.sort_unstable();
    projected.dedup();
    let at = |root: usize| projected.iter().position(|&r| r == root).expect("projected");
    Ok(Chunks {
        reader,
        bytes_read,
        rows,
        next: 0,
        path: file.path.clone(),
        text_columns: file.text_indices.iter().map(|&r| at(r)).collect(),
        id_column: file.id_index.map(at),
        template: file.template.clone(),
    })
}

pub struct Chunks {
    reader: ParquetRecordBatchReader,
    bytes_read: Arc<AtomicU64>,
    rows: Vec<u64>,
    next: usize,
    path: PathBuf,
    /// Where the template's columns and the id column are in a batch read.
    text_columns: Vec<usize>,
    id_column: Option<usize>,
    template: Arc<Template>,
}

impl Chunks {
    /// Bytes read from the file so far (footer, page index and the pages fetched).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    fn convert(&mut self, batch: arrow::array::RecordBatch) -> Result<Chunk> {
        // Utf8View, LargeUtf8 and dictionary-encoded strings all become plain Utf8.
        let columns = self
            .text_columns
            .iter()
            .zip(self.template.columns())
            .map(|(&i, name)| {
                let cast = arrow::compute::cast(batch.column(i), &DataType::Utf8).with_context(|| {
                    format!("cannot read the text column \"{name}\" of {}", self.path.display())
                })?;
                Ok(cast.as_string::<i32>().clone())
            })
            .collect::<Result<Vec<StringArray>>>()?;
        let texts = match self.template.single_column() {
            Some(_) => columns.into_iter().next().expect("one column"),
            None => render(&self.template, &columns),
        };
        let n = texts.len();
        let rows = self
            .rows
            .get(self.next..self.next + n)
            .with_context(|| format!("{} returned more rows than its footer lists", self.path.display()))?
            .to_vec();
        self.next += n;
        let ids = self.id_column.map(|i| batch.column(i).clone());
        let hashes = texts.iter().map(|t| t.map_or(0, crate::sync::text_hash)).collect();
        Ok(Chunk { rows, texts, hashes, ids })
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
            Err(e) => return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display()))),
        };
        Some(self.convert(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Partition;
    use arrow::array::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

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
        let file =
            open_all(std::slice::from_ref(&path), &Template::column("text"), None).unwrap().files.remove(0);
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
