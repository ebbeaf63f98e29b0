//! Streaming the rows a worker owns from one input file: only the template's columns and the id
//! column, unowned row groups and pages never fetched, in chunks tagged with global row numbers,
//! each row's text built by the template. Bytes that do not decode are named by row group
//! ([`Undecodable`]); with `--skip-damaged` the owned rows of such a row group come through as
//! failed rows instead, and reading goes on after it.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

use super::damage::{Changed, Damaged, Undecodable};
use super::{columns, InputFile};
use crate::embed::Failure;
use crate::storage::parquet::{Batches, ParquetFile, ReadRequest};
use crate::storage::Location;
use crate::template::Template;

/// Consecutive owned rows of one file.
pub struct Chunk {
    /// Global row number of each row.
    pub rows: Vec<u64>,
    pub texts: StringArray,
    /// Each text's content hash (`sync::text_hash`; 0 for a null text).
    pub hashes: Vec<u128>,
    /// The id column's values, when asked for.
    pub ids: Option<ArrayRef>,
    /// Rows (indices into this chunk) whose text is null for a reason other than a null value
    /// (a binary column held bytes that are not UTF-8, or the row's row group is damaged): their
    /// failure says so instead of "null".
    pub failed: Vec<(usize, Failure)>,
}

/// Streams the rows of `file` within `owned` (global row ranges, increasing, inside the file)
/// in chunks of up to `chunk_rows` rows. Row groups with no owned row are not read; within the
/// others, unowned rows are skipped by a row selection (pages are skipped where the file has a
/// page index).
pub fn read_rows(
    file: &InputFile,
    owned: &[Range<u64>],
    chunk_rows: usize,
    damaged: Damaged,
) -> Result<Chunks> {
    let parquet = ParquetFile::open(&file.path)?;
    if parquet.footer_hash != file.footer_hash {
        return Err(Changed { path: file.path.display().to_string() }.into());
    }
    let wanted: Vec<&columns::ColumnRef> =
        file.text_columns.iter().flatten().chain(&file.id_column).collect();
    let roots: Vec<usize> = wanted.iter().map(|c| c.root).collect();
    let mut leaves: Vec<usize> = wanted.iter().flat_map(|c| c.leaves.iter().copied()).collect();
    leaves.sort_unstable();
    leaves.dedup();
    // Projected columns come in file order: the batch's position of each column wanted.
    let mut projected = roots.clone();
    projected.sort_unstable();
    projected.dedup();
    let at = |root: usize| projected.iter().position(|&r| r == root).expect("projected");
    let rows: Vec<u64> = owned.iter().flat_map(|r| r.clone()).collect();
    let mut chunks = Chunks {
        reader: None,
        bytes_before: 0,
        parquet,
        leaves,
        end: rows.len(),
        rows,
        next: 0,
        waiting: None,
        damaged,
        chunk_rows,
        path: file.path.clone(),
        first_row: file.first_row,
        row_groups: file.row_groups.clone(),
        text_columns: file
            .text_columns
            .iter()
            .map(|c| c.as_ref().map(|c| (at(c.root), c.path.clone())))
            .collect(),
        id_column: file
            .id_column
            .as_ref()
            .zip(file.id_type.clone())
            .map(|(c, t)| (at(c.root), c.path.clone(), t)),
        template: file.template.clone(),
    };
    chunks.open(0..chunks.rows.len())?;
    Ok(chunks)
}

pub struct Chunks {
    /// The reader of `rows[next..end]`; `None` when that is empty.
    reader: Option<Batches>,
    /// Bytes read by the readers closed before it.
    bytes_before: u64,
    /// The file and the leaf columns read, to find which row group does not decode.
    parquet: ParquetFile,
    leaves: Vec<usize>,
    /// Global number of every owned row, in order. `next` is the first not yet yielded; the
    /// open reader stops at `end`, where the owned rows of a damaged row group (`waiting`,
    /// yielded as failed rows next) begin.
    rows: Vec<u64>,
    next: usize,
    end: usize,
    waiting: Option<Range<usize>>,
    damaged: Damaged,
    chunk_rows: usize,
    path: Location,
    first_row: u64,
    row_groups: Vec<u64>,
    /// Where the template's columns and the id column are in a batch read: the position of
    /// their top-level column, and the struct fields below it (and the type the ids are read as).
    text_columns: Vec<Option<(usize, Vec<String>)>>,
    id_column: Option<(usize, Vec<String>, DataType)>,
    template: Arc<Template>,
}

impl Chunks {
    /// Opens a reader over the owned rows `rows[span]`, which it reads up to `span.end`.
    fn open(&mut self, span: Range<usize>) -> Result<()> {
        self.bytes_before += self.reader.take().map_or(0, |r| r.bytes_read());
        self.next = span.start;
        self.end = span.end;
        if span.is_empty() {
            return Ok(());
        }
        // The owned rows as in-file ranges, and the row groups they touch.
        let mut local: Vec<Range<u64>> = Vec::new();
        for &row in &self.rows[span] {
            let row = row - self.first_row;
            match local.last_mut() {
                Some(last) if last.end == row => last.end += 1,
                _ => local.push(row..row + 1),
            }
        }
        let mut groups = Vec::new();
        let mut selectors = Vec::new();
        for (g, group) in self.group_rows().into_iter().enumerate() {
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
        self.reader = Some(self.parquet.read(ReadRequest {
            columns: Vec::new(),
            leaves: Some(self.leaves.clone()),
            row_groups: Some(groups),
            selection: Some(RowSelection::from(selectors)),
            batch_size: self.chunk_rows,
            page_index: true,
        })?);
        Ok(())
    }

    /// Each row group's rows in the file.
    fn group_rows(&self) -> Vec<Range<u64>> {
        let mut start = 0;
        self.row_groups
            .iter()
            .map(|&n| {
                start += n;
                start - n..start
            })
            .collect()
    }

    /// The error of a batch whose bytes arrived but do not decode, placed in the file: a batch
    /// may span row groups, so each one being read from the batch's first row on is read alone
    /// (only the columns wanted) until one fails the same way.
    fn undecodable(&self, e: arrow::error::ArrowError) -> Undecodable {
        let row = self.rows.get(self.next).map_or(0, |r| r - self.first_row);
        let groups = self.group_rows();
        let first = groups.iter().position(|g| g.contains(&row)).unwrap_or(0);
        let pending = &self.rows[self.next..self.end];
        let read = |g: usize| {
            let group = &groups[g];
            pending.iter().any(|r| group.contains(&(r - self.first_row)))
        };
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
        let group = (first..groups.len()).find(|&g| read(g) && fails(g)).unwrap_or(first);
        let cause = match e {
            arrow::error::ArrowError::ParquetError(m) => m,
            other => other.to_string(),
        };
        let cause = cause.strip_prefix("Parquet error: ").map(str::to_string).unwrap_or(cause);
        Undecodable {
            path: self.path.display().to_string(),
            group,
            groups: groups.len(),
            rows: groups.get(group).cloned().unwrap_or(0..0),
            cause,
        }
    }

    /// `--skip-damaged`: sets the owned rows of `damaged`'s row group aside, to be yielded as
    /// failed rows, and reads the rows before them again. Gives the error back when that row
    /// group holds none of the rows still to read (skipping it would not get past the error).
    fn skip(&mut self, damaged: Undecodable, quiet: bool) -> Result<()> {
        let group = self.first_row + damaged.rows.start..self.first_row + damaged.rows.end;
        let pending = &self.rows[self.next..self.end];
        let from = self.next + pending.partition_point(|&r| r < group.start);
        let to = self.next + pending.partition_point(|&r| r < group.end);
        if from == to {
            return Err(damaged.into());
        }
        if !quiet {
            eprintln!(
                "batch-embed: warning: {damaged}; its {} rows this worker owns are recorded as failed \
                 (--skip-damaged) and reading goes on after it",
                to - from
            );
        }
        self.waiting = Some(from..to);
        self.open(self.next..from)
    }

    /// The next piece of the waiting rows of a damaged row group: every text null, each row
    /// failed. Once they are all out, a reader opens over the rows after them.
    fn damaged_chunk(&mut self, waiting: Range<usize>) -> Result<Chunk> {
        let piece = waiting.start..waiting.end.min(waiting.start + self.chunk_rows);
        let n = piece.len();
        let rows = self.rows[piece.clone()].to_vec();
        if piece.end < waiting.end {
            self.waiting = Some(piece.end..waiting.end);
            self.next = piece.end;
            self.end = piece.end;
        } else {
            self.open(piece.end..self.rows.len())?;
        }
        Ok(Chunk {
            rows,
            texts: StringArray::new_null(n),
            hashes: vec![0; n],
            ids: self.id_column.as_ref().map(|(_, _, t)| new_null_array(t, n)),
            failed: (0..n).map(|i| (i, Failure::Damaged)).collect(),
        })
    }

    /// Bytes read from the file so far (footer, page index and the pages fetched).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_before + self.reader.as_ref().map_or(0, Batches::bytes_read)
    }

    fn convert(&mut self, batch: arrow::array::RecordBatch) -> Result<Chunk> {
        // Utf8View, LargeUtf8, binary, dictionary-encoded and (in a template) number, date and time
        // values all become plain Utf8; a binary value that is not UTF-8 becomes null (the cast's
        // `safe` mode) and is noted.
        let mut not_utf8 = None::<Vec<bool>>;
        let columns = self
            .text_columns
            .iter()
            .zip(self.template.columns())
            .map(|(at, name)| {
                let Some((i, path)) = at else {
                    return Ok(StringArray::new_null(batch.num_rows()));
                };
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
        let failed = match not_utf8 {
            None => Vec::new(),
            Some(marks) => {
                // A row with any column not UTF-8 has no text, whatever the others hold.
                let nulled = arrow::compute::nullif(&texts, &BooleanArray::from(marks.clone()))?;
                texts = nulled.as_string::<i32>().clone();
                let bad = marks.iter().enumerate().filter_map(|(row, &bad)| bad.then_some(row));
                bad.map(|row| (row, Failure::NotUtf8)).collect()
            }
        };
        let n = texts.len();
        let rows = self
            .rows
            .get(self.next..self.next + n)
            .filter(|_| self.next + n <= self.end)
            .with_context(|| format!("{} returned more rows than its footer lists", self.path.display()))?
            .to_vec();
        self.next += n;
        let ids = match &self.id_column {
            Some((i, path, t)) => {
                Some(crate::id_types::cast_to(&columns::descend(batch.column(*i), path), t)?)
            }
            None => None,
        };
        let hashes = texts.iter().map(|t| t.map_or(0, crate::sync::text_hash)).collect();
        Ok(Chunk { rows, texts, hashes, ids, failed })
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
        loop {
            if self.next == self.end {
                let waiting = self.waiting.take()?;
                return Some(self.damaged_chunk(waiting));
            }
            let reader = self.reader.as_mut().expect("a reader while rows are left");
            let error = match reader.next()? {
                Ok(batch) => return Some(self.convert(batch)),
                Err(e) if reader.io_failed() => {
                    return Some(Err(e).with_context(|| format!("cannot read {}", self.path.display())))
                }
                Err(e) => self.undecodable(e),
            };
            match self.damaged {
                Damaged::Fail => return Some(Err(error.into())),
                Damaged::Skip { quiet } => {
                    if let Err(e) = self.skip(error, quiet) {
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::open_all;
    use crate::partition::Partition;
    use arrow::array::RecordBatch;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::properties::WriterProperties;
    use std::fs::File;
    use std::path::Path;
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
        let mut chunks = read_rows(file, &owned, 100, Damaged::Fail).unwrap();
        let mut rows = Vec::new();
        for c in chunks.by_ref() {
            rows.extend(c.unwrap().rows);
        }
        (rows, chunks.bytes_read())
    }

    /// [`pages_file`] with the header of row group 2's first page (rows 128..136) overwritten.
    fn damaged_pages_file(path: &Path) {
        pages_file(path);
        let meta = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let at = meta.metadata().row_group(2).column(0).data_page_offset() as usize;
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at..at + 24].fill(0xff);
        std::fs::write(path, bytes).unwrap();
    }

    /// Rows in order, and which came through as damaged.
    fn read_skipping(file: &InputFile, partition: &Partition, chunk_rows: usize) -> (Vec<u64>, Vec<u64>) {
        let owned = partition.owned_ranges(file.global_rows());
        let (mut rows, mut damaged) = (Vec::new(), Vec::new());
        for c in read_rows(file, &owned, chunk_rows, Damaged::Skip { quiet: true }).unwrap() {
            let c = c.unwrap();
            assert!(c.rows.len() <= chunk_rows);
            for &(i, f) in &c.failed {
                assert_eq!(f, Failure::Damaged);
                assert!(c.texts.is_null(i));
                damaged.push(c.rows[i]);
            }
            rows.extend(c.rows);
        }
        (rows, damaged)
    }

    #[test]
    fn skipping_a_damaged_row_group_yields_its_owned_rows_as_failed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.parquet");
        damaged_pages_file(&path);
        let file = open_all(&[Location::Local(path.clone())], &Template::column("text"), None)
            .unwrap()
            .files
            .remove(0);
        let all = Partition::new(0, 1, 4096).unwrap();
        let owned = all.owned_ranges(file.global_rows());
        let error = read_rows(&file, &owned, 100, Damaged::Fail).unwrap().find_map(Result::err).unwrap();
        assert!(error.to_string().contains("row group 2 of 4 (rows 128..192"), "{error}");

        // Batches of 100 and 30 rows span row groups; the rows before the damaged group in the
        // failing batch are read again, the group's rows come next, then the rest.
        for chunk_rows in [100, 30, 64, 1000] {
            let (rows, damaged) = read_skipping(&file, &all, chunk_rows);
            assert_eq!(rows, (0..256).collect::<Vec<u64>>(), "chunks of {chunk_rows}");
            assert_eq!(damaged, (128..192).collect::<Vec<u64>>(), "chunks of {chunk_rows}");
        }
        // A worker whose pages of the group are not the damaged one reads them all; one that
        // owns rows of the damaged page loses the whole group's owned rows.
        let worker = |w| Partition::new(w, 4, 16).unwrap();
        let (rows, damaged) = read_skipping(&file, &worker(1), 100);
        assert_eq!(rows, (0..256).filter(|&r| worker(1).owns(r)).collect::<Vec<u64>>());
        assert!(damaged.is_empty(), "worker 1 never reads the damaged page");
        let (rows, damaged) = read_skipping(&file, &worker(0), 100);
        assert_eq!(rows, (0..256).filter(|&r| worker(0).owns(r)).collect::<Vec<u64>>());
        assert_eq!(damaged, (128..144).collect::<Vec<u64>>());
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
