//! Parquet files on either side of the storage seam: the footer alone (one ranged read: what
//! planning, `verify` and the run's description need), then only the asked-for columns of the
//! asked-for row groups and rows (pages skipped where the file has a page index).
//!
//! On a disk this is parquet's synchronous reader over a file that counts the bytes it reads.
//! On a bucket it is parquet's async reader over ranged GETs (neighbouring ranges closer than
//! [`COALESCE_GAP`] merged, at most ten in flight), decoding in a task on the storage runtime
//! that runs [`READ_AHEAD`] batches ahead of the consumer, so the next row group is being
//! fetched while the current one is used.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
    RowSelection, RowSelectionPolicy,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMask, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use parquet::schema::types::SchemaDescriptor;

use super::{Location, ObjectLocation};

/// The first read of a remote file's end: footers of most files fit in it.
const FOOTER_GUESS: u64 = 64 << 10;
/// Ranges of one fetch closer than this are read in one request (the gap is read and dropped).
/// Small, so that a worker does not fetch other workers' pages to save a request.
pub const COALESCE_GAP: u64 = 64 << 10;
/// Record batches decoded ahead of the reader of a remote file.
const READ_AHEAD: usize = 2;

impl ReadRequest {
    fn mask(&self, schema: &SchemaDescriptor) -> ProjectionMask {
        match &self.leaves {
            Some(leaves) => ProjectionMask::leaves(schema, leaves.iter().copied()),
            None => ProjectionMask::roots(schema, self.columns.iter().copied()),
        }
    }
}

/// The raw Parquet footer (the Thrift metadata, without the 8-byte tail) and the file's size.
pub fn read_footer(loc: &Location) -> Result<(Bytes, u64)> {
    let bad = |why: &str| format!("{} is not a readable Parquet file ({why})", loc.display());
    let (tail, size) = match loc {
        Location::Local(path) => {
            let mut f = File::open(path)
                .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
            let size = f.metadata().with_context(|| bad("cannot stat it"))?.len();
            if size < 12 {
                bail!(bad("too short for Parquet"));
            }
            let want = size.min(FOOTER_GUESS);
            f.seek(SeekFrom::Start(size - want)).with_context(|| bad("cannot read it"))?;
            let mut buf = vec![0u8; want as usize];
            f.read_exact(&mut buf).with_context(|| bad("cannot read it"))?;
            (Bytes::from(buf), size)
        }
        Location::Object(o) => {
            let (tail, size) = o.get_suffix(FOOTER_GUESS).with_context(|| bad("cannot read it"))?;
            if size < 12 {
                bail!(bad("too short for Parquet"));
            }
            (tail, size)
        }
    };
    let n = tail.len();
    let end = &tail[n - 8..];
    let footer_len = u32::from_le_bytes(end[..4].try_into().expect("4 bytes")) as u64;
    if &end[4..] != b"PAR1" || footer_len + 8 > size {
        bail!(bad("no Parquet footer"));
    }
    if footer_len + 8 <= n as u64 {
        return Ok((tail.slice(n - 8 - footer_len as usize..n - 8), size));
    }
    // A footer larger than the first read: fetch the rest.
    let start = size - 8 - footer_len;
    let missing = start..size - n as u64;
    let head = match loc {
        Location::Local(path) => {
            let f = File::open(path).with_context(|| bad("cannot read it"))?;
            f.get_bytes(missing.start, (missing.end - missing.start) as usize)
                .with_context(|| bad("cannot read it"))?
        }
        Location::Object(o) => o.get_range(missing).with_context(|| bad("cannot read it"))?,
    };
    let mut footer = Vec::with_capacity(footer_len as usize);
    footer.extend_from_slice(&head);
    footer.extend_from_slice(&tail[..n - 8]);
    Ok((Bytes::from(footer), size))
}

/// A Parquet file whose footer has been read.
pub struct ParquetFile {
    pub location: Location,
    pub size: u64,
    /// SHA-256 of the footer (first 16 bytes, hex): the file's content identity.
    pub footer_hash: String,
    meta: ArrowReaderMetadata,
}

/// What to read of a [`ParquetFile`].
pub struct ReadRequest {
    /// Root columns to read (indices into the Arrow schema's fields).
    pub columns: Vec<usize>,
    /// When set, only these Parquet leaf columns are read (fields inside structs), and
    /// `columns` is not used.
    pub leaves: Option<Vec<usize>>,
    /// Row groups to read; `None` for all.
    pub row_groups: Option<Vec<usize>>,
    /// Rows to read within those row groups, as selectors (never a bitmap: unowned pages stay
    /// unfetched); `None` for all.
    pub selection: Option<RowSelection>,
    pub batch_size: usize,
    /// Load the offset index (where the file has one), so that unselected pages are skipped.
    pub page_index: bool,
}

impl ParquetFile {
    /// Reads the footer only. Fails with "X is not a readable Parquet file" when it is not one.
    pub fn open(loc: &Location) -> Result<Self> {
        let (footer, size) = read_footer(loc)?;
        let unreadable = || format!("{} is not a readable Parquet file", loc.display());
        let meta = ParquetMetaDataReader::decode_metadata(&footer).with_context(unreadable)?;
        let meta = ArrowReaderMetadata::try_new(Arc::new(meta), ArrowReaderOptions::new())
            .with_context(unreadable)?;
        Ok(ParquetFile {
            location: loc.clone(),
            size,
            footer_hash: crate::run_spec::hex16(&<sha2::Sha256 as sha2::Digest>::digest(&footer)),
            meta,
        })
    }

    /// [`ParquetFile::open`] for many files at once (object stores: several footers in flight),
    /// in the given order.
    pub fn open_all(locs: &[Location]) -> Result<Vec<Self>> {
        if !locs.iter().any(Location::is_remote) {
            return locs.iter().map(ParquetFile::open).collect();
        }
        const IN_FLIGHT: usize = 16;
        std::thread::scope(|s| {
            let mut out = Vec::with_capacity(locs.len());
            for group in locs.chunks(IN_FLIGHT) {
                let handles: Vec<_> = group.iter().map(|l| s.spawn(move || ParquetFile::open(l))).collect();
                for h in handles {
                    out.push(h.join().expect("footer reader panicked")?);
                }
            }
            Ok(out)
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        self.meta.schema()
    }

    pub fn parquet_schema(&self) -> &SchemaDescriptor {
        self.meta.parquet_schema()
    }

    pub fn metadata(&self) -> &Arc<ParquetMetaData> {
        self.meta.metadata()
    }

    /// Streams the requested rows as record batches.
    pub fn read(&self, req: ReadRequest) -> Result<Batches> {
        let unreadable = || format!("{} is not a readable Parquet file", self.location.display());
        let bytes = Arc::new(AtomicU64::new(0));
        let io_failed = Arc::new(AtomicBool::new(false));
        match &self.location {
            Location::Local(path) => {
                let handle = CountingFile {
                    file: File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
                    bytes: bytes.clone(),
                    io_failed: io_failed.clone(),
                };
                let policy = if req.page_index { PageIndexPolicy::Optional } else { PageIndexPolicy::Skip };
                let options = ArrowReaderOptions::new().with_page_index_policy(policy);
                let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(handle, options)
                    .with_context(unreadable)?;
                let mask = req.mask(builder.parquet_schema());
                let mut builder = builder.with_projection(mask).with_batch_size(req.batch_size);
                if let Some(groups) = req.row_groups {
                    builder = builder.with_row_groups(groups);
                }
                if let Some(selection) = req.selection {
                    // NOTE: selectors, never a mask: parquet's automatic choice reads every page
                    // and filters rows afterwards when the selected runs are short (under 32
                    // rows), and fetching pages of rows another worker owns is what this reader
                    // exists to avoid.
                    builder = builder
                        .with_row_selection(selection)
                        .with_row_selection_policy(RowSelectionPolicy::Selectors);
                }
                let reader = builder.build().with_context(|| format!("cannot read {}", path.display()))?;
                Ok(Batches { inner: Inner::Local(reader), bytes, io_failed })
            }
            Location::Object(o) => self.read_remote(o, req, bytes, io_failed),
        }
    }

    fn read_remote(
        &self,
        o: &ObjectLocation,
        req: ReadRequest,
        bytes: Arc<AtomicU64>,
        io_failed: Arc<AtomicBool>,
    ) -> Result<Batches> {
        let mask = req.mask(self.parquet_schema());
        let mut reader = ObjectReader {
            location: o.clone(),
            size: self.size,
            bytes: bytes.clone(),
            io_failed: io_failed.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let meta = self.metadata().clone();
        let page_index = req.page_index;
        let columns = ColumnChunkMask::from_projection(&mask, self.parquet_schema());
        super::object::runtime().spawn(async move {
            let stream = async {
                let meta = if page_index {
                    // Only the offset index of the projected columns: where their pages are.
                    let mut r = ParquetMetaDataReader::new_with_metadata((*meta).clone())
                        .with_column_index_policy(PageIndexPolicy::Skip)
                        .with_offset_index_policy(PageIndexPolicy::Optional)
                        .with_offset_index_mask(columns);
                    r.load_page_index(&mut reader).await?;
                    Arc::new(r.finish()?)
                } else {
                    meta
                };
                let meta = ArrowReaderMetadata::try_new(meta, ArrowReaderOptions::new())?;
                let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
                    .with_projection(mask)
                    .with_batch_size(req.batch_size);
                if let Some(groups) = req.row_groups {
                    builder = builder.with_row_groups(groups);
                }
                if let Some(selection) = req.selection {
                    builder = builder
                        .with_row_selection(selection)
                        .with_row_selection_policy(RowSelectionPolicy::Selectors);
                }
                builder.build()
            };
            let mut stream = match stream.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Batches { inner: Inner::Remote(rx), bytes, io_failed })
    }
}

/// The record batches of a [`ParquetFile::read`], in order.
pub struct Batches {
    inner: Inner,
    bytes: Arc<AtomicU64>,
    /// Set when a read of the file's bytes failed (as opposed to decoding bytes that arrived).
    io_failed: Arc<AtomicBool>,
}

enum Inner {
    Local(ParquetRecordBatchReader),
    Remote(tokio::sync::mpsc::Receiver<parquet::errors::Result<RecordBatch>>),
}

impl Batches {
    /// Bytes read from the file so far (page index and pages; the footer for local files).
    pub fn bytes_read(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether reading the file's bytes has failed. An error from a reader whose reads all
    /// succeeded is the file's own: its bytes do not decode, and reading them again cannot help.
    pub fn io_failed(&self) -> bool {
        self.io_failed.load(Ordering::Relaxed)
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch, arrow::error::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Local(reader) => reader.next(),
            Inner::Remote(rx) => rx.blocking_recv().map(|r| r.map_err(arrow::error::ArrowError::from)),
        }
    }
}

/// A local input file that counts the bytes read from it: what a worker reads is what it pays
/// for on a network file system or bucket, and the tests check that pages a worker does not own
/// are not among it.
struct CountingFile {
    file: File,
    bytes: Arc<AtomicU64>,
    io_failed: Arc<AtomicBool>,
}

/// A reader of a [`CountingFile`] from some offset.
struct CountingRead {
    file: File,
    bytes: Arc<AtomicU64>,
    io_failed: Arc<AtomicBool>,
}

/// Notes an I/O error in `flag` on its way through.
fn noted<T, E>(flag: &AtomicBool, r: std::result::Result<T, E>) -> std::result::Result<T, E> {
    if r.is_err() {
        flag.store(true, Ordering::Relaxed);
    }
    r
}

impl Read for CountingRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = noted(&self.io_failed, self.file.read(buf))?;
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
        let mut file = noted(&self.io_failed, self.file.try_clone())?;
        noted(&self.io_failed, file.seek(SeekFrom::Start(start)))?;
        let (bytes, io_failed) = (self.bytes.clone(), self.io_failed.clone());
        Ok(std::io::BufReader::new(CountingRead { file, bytes, io_failed }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let data = noted(&self.io_failed, self.file.get_bytes(start, length))?;
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }
}

/// Parquet's async reader over an object: ranged GETs, counted.
struct ObjectReader {
    location: ObjectLocation,
    size: u64,
    bytes: Arc<AtomicU64>,
    io_failed: Arc<AtomicBool>,
}

fn external(e: anyhow::Error) -> ParquetError {
    ParquetError::External(format!("{e:#}").into())
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let b = noted(&self.io_failed, self.location.get_range_async(range).await).map_err(external)?;
            self.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(b)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let (location, bytes, io_failed) = (&self.location, &self.bytes, &self.io_failed);
            // Counted as fetched, gaps between merged ranges included.
            let fetch = |r: Range<u64>| async move {
                let b = noted(io_failed, location.get_range_async(r).await)?;
                bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                anyhow::Ok(b)
            };
            object_store::coalesce_ranges(&ranges, fetch, COALESCE_GAP).await.map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let meta = ParquetMetaDataReader::new().load_and_finish(&mut *self, size).await?;
            Ok(Arc::new(meta))
        }
        .boxed()
    }
}
