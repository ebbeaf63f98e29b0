//! `embed --reuse PREVIOUS_OUTPUT`: copy the vectors of unchanged texts from earlier outputs
//! instead of embedding them again.
//!
//! A row of this run reuses a previous vector when the previous run's vector-deciding options
//! (`RunSpec::vectors`) equal this run's and the row's key is found there with the same text
//! hash. The key is the id (`--id-column`), so a changed text under a kept id is embedded again;
//! without ids it is the text hash itself, so an identical text anywhere is reused.
//!
//! A worker's run then has two phases, both committed and resumed through the worker folder (the
//! planning is here, the copy in copy.rs):
//! 1. **copy**: for each committed part of the previous outputs (the *sources*, listed once and
//!    recorded in the checkpoint with their footer hashes, so a resumed run reads exactly the
//!    same ones), the matching rows' vectors are read (only those rows' pages) and written into
//!    this run's parts under this run's row numbers; the checkpoint's cursor says how far it got;
//! 2. **embed**: the owned rows that were not reused go through the usual pipeline.
//!
//! Memory grows with the rows this worker owns, not with the previous outputs: the owned rows'
//! keys and hashes are held (48 bytes a row while planning, 9 after), and the previous parts are
//! scanned column by column (key and hash columns, then only the matching vectors).
//!
//! With one output row per chunk (`--chunk-tokens`; the previous run must have chunked the same
//! way, which the vector half of the description says), a key stands for all of a row's chunk
//! rows: they are copied together, in chunk order, into one part.

use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::UInt32Type;
use serde::{Deserialize, Serialize};

use crate::input::{Damaged, InputFile};
use crate::output::{CHUNK, TEXT_HASH};
use crate::run_spec::RunSpec;
use crate::storage::parquet::{ParquetFile, ReadRequest};
use crate::storage::Location;

/// Rows decoded at a time from a source part.
pub(super) const COPY_BATCH: usize = 2048;

/// What the checkpoint keeps of a `--reuse` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReuseState {
    /// The previous outputs as given (absolute paths or URLs).
    pub outputs: Vec<String>,
    /// Their committed parts when this run started: the sources, in the order they are read.
    pub sources: Vec<SourcePart>,
    /// Sources copied completely.
    pub sources_done: usize,
    /// Rows of source `sources_done` already copied.
    pub source_rows_done: u64,
}

/// A committed part of a previous output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourcePart {
    /// An absolute path or a URL.
    pub path: String,
    pub rows: u64,
    /// `run_spec::footer_hash` of the part: it must not change while this run uses it.
    pub footer: String,
}

/// Lists the committed parts of the previous outputs `outputs` after checking that their
/// vectors were made as this run's will be. `note` hears about incomplete outputs.
pub fn find_sources(
    outputs: &[Location],
    current: &RunSpec,
    note: &mut dyn FnMut(&str),
) -> Result<ReuseState> {
    let mut state =
        ReuseState { outputs: Vec::new(), sources: Vec::new(), sources_done: 0, source_rows_done: 0 };
    for output in outputs {
        let shown = output.display();
        let workers =
            crate::fleet::workers_required(output, "; --reuse needs the --output of an earlier run")?;
        let mut spec: Option<RunSpec> = None;
        let (mut owned, mut done) = (0u64, 0u64);
        for w in &workers {
            let ckpt = w
                .checkpoint()
                .with_context(|| format!("--reuse {shown}"))?
                .with_context(|| format!("--reuse {shown}: {} has no checkpoint", w.dir.display()))?;
            match &spec {
                None => spec = Some(ckpt.spec.clone()),
                Some(s) if s.vectors != ckpt.spec.vectors => bail!(
                    "--reuse {shown}: its worker folders come from different runs ({} differs)",
                    w.dir.display()
                ),
                Some(_) => {}
            }
            owned += ckpt.rows_owned;
            done += ckpt.rows_done;
            for part in &ckpt.parts {
                let path = w.dir.join(&part.file);
                state.sources.push(SourcePart {
                    path: path.canonical(),
                    rows: part.rows,
                    footer: crate::run_spec::footer_hash(&path)
                        .with_context(|| format!("--reuse {shown}"))?,
                });
            }
        }
        let spec = spec.expect("at least one worker");
        let differences = current.vectors_differences(&spec);
        if !differences.is_empty() {
            bail!(
                "--reuse {shown}: its vectors were made differently ({}); reusing them would mix vectors of another model or options, so they are not used. Drop this --reuse, or run with the same model and options",
                differences.join("; ")
            );
        }
        if current.rows.id_column.is_some() && spec.rows.id_column.is_none() {
            bail!(
                "--reuse {shown}: that run had no --id-column, and this one matches rows by id; run without --id-column to match by text, or reuse an output made with ids"
            );
        }
        let total = workers.iter().map(|w| w.num_workers).max().unwrap_or(1);
        if done < owned || (workers.len() as u64) < total {
            note(&format!(
                "--reuse {shown} is incomplete ({done} of its rows are committed, in {} of {total} worker folders): what is there is reused",
                workers.len()
            ));
        }
        state.outputs.push(output.canonical());
    }
    Ok(state)
}

/// Fails unless every source is still as it was when the run started.
pub fn check_sources(state: &ReuseState) -> Result<()> {
    for s in &state.sources[state.sources_done.min(state.sources.len())..] {
        let now = Location::parse(&s.path).and_then(|l| crate::run_spec::footer_hash(&l));
        if now.as_deref().ok() != Some(s.footer.as_str()) {
            bail!(
                "{} changed or vanished since this run started reusing it; run again with --restart to plan the reuse anew",
                s.path
            );
        }
    }
    Ok(())
}

/// Which owned rows are reused, and from where.
pub struct ReusePlan {
    /// Per source part: (row in that part, owned index), in the order they are written: by the
    /// source row's first row in the part, then owned index, then (chunk rows) chunk.
    pub copies: Vec<Vec<(u32, u32)>>,
    /// Per owned index: reused or not.
    pub reused: Vec<bool>,
    pub count: u64,
    /// Bytes read while planning: from the input (the owned rows' key and text columns) and
    /// from the sources (their key and hash columns).
    pub input_bytes: u64,
    pub source_bytes: u64,
}

impl ReusePlan {
    /// The planned ranges (file, owned global row ranges in order) without the reused rows.
    pub fn remaining(&self, plan: &[(usize, Vec<Range<u64>>)]) -> Vec<(usize, Vec<Range<u64>>)> {
        let mut index = 0usize;
        let mut out = Vec::new();
        for (file, ranges) in plan {
            let mut kept: Vec<Range<u64>> = Vec::new();
            for r in ranges {
                for row in r.clone() {
                    if !self.reused[index] {
                        match kept.last_mut() {
                            Some(last) if last.end == row => last.end += 1,
                            _ => kept.push(row..row + 1),
                        }
                    }
                    index += 1;
                }
            }
            if !kept.is_empty() {
                out.push((*file, kept));
            }
        }
        out
    }
}

/// One owned row's key (id or text hash), text hash and owned index.
#[derive(Clone, Copy)]
struct Entry {
    key: u128,
    hash: u128,
    index: u32,
}

/// Plans the reuse: reads this worker's owned rows (`plan`, over `files`) for their keys and
/// text hashes (rows of a damaged row group skipped as `damaged` says: they are not reused),
/// then the key and hash columns of every source part, and pairs them. With
/// `chunk_rows`, a source row is its run of chunk rows.
pub fn plan(
    files: &[InputFile],
    plan: &[(usize, Vec<Range<u64>>)],
    damaged: Damaged,
    by_id: bool,
    chunk_rows: bool,
    sources: &[SourcePart],
) -> Result<ReusePlan> {
    // 1. The owned rows' keys.
    let mut entries: Vec<Entry> = Vec::new();
    let mut index = 0u32;
    let mut input_bytes = 0;
    for (file, ranges) in plan {
        let mut chunks = crate::input::read_rows(&files[*file], ranges, COPY_BATCH, damaged)?;
        for chunk in chunks.by_ref() {
            let chunk = chunk?;
            let keys: Vec<Option<u128>> = match (&chunk.ids, by_id) {
                (Some(ids), true) => super::id_keys(ids)?,
                _ => chunk.hashes.iter().map(|&h| Some(h)).collect(),
            };
            for (i, key) in keys.into_iter().enumerate() {
                if let (Some(key), false) = (key, chunk.texts.is_null(i)) {
                    entries.push(Entry { key, hash: chunk.hashes[i], index: index + i as u32 });
                }
            }
            index += chunk.rows.len() as u32;
        }
        input_bytes += chunks.bytes_read();
    }
    let owned = index as usize;
    entries.sort_unstable_by_key(|e| (e.key, e.index));

    // 2. The sources' keys: each owned row takes the first source row with its key and hash.
    let mut source_of: Vec<u64> = vec![u64::MAX; owned];
    let mut rows_of: Vec<u32> = vec![1; if chunk_rows { owned } else { 0 }];
    let source_bytes = AtomicU64::new(0);
    for (si, source) in sources.iter().enumerate() {
        let path = Location::parse(&source.path)?;
        for (row, rows, key, hash) in source_keys(&path, by_id, chunk_rows, &source_bytes)? {
            let start = entries.partition_point(|e| e.key < key);
            for e in entries[start..].iter().take_while(|e| e.key == key) {
                let slot = &mut source_of[e.index as usize];
                if *slot == u64::MAX && e.hash == hash {
                    *slot = ((si as u64) << 32) | row as u64;
                    if chunk_rows {
                        rows_of[e.index as usize] = rows;
                    }
                }
            }
        }
    }
    drop(entries);

    // 3. Per source, the rows to copy in order.
    let mut copies: Vec<Vec<(u32, u32)>> = vec![Vec::new(); sources.len()];
    let mut reused = vec![false; owned];
    let mut count = 0;
    for (index, &s) in source_of.iter().enumerate() {
        if s != u64::MAX {
            copies[(s >> 32) as usize].push((s as u32, index as u32));
            reused[index] = true;
            count += 1;
        }
    }
    for c in &mut copies {
        c.sort_unstable();
        if chunk_rows {
            // Each owned row takes all of its source row's chunk rows, one after the other.
            *c = c
                .iter()
                .flat_map(|&(row, index)| (0..rows_of[index as usize]).map(move |j| (row + j, index)))
                .collect();
        }
    }
    Ok(ReusePlan { copies, reused, count, input_bytes, source_bytes: source_bytes.load(Relaxed) })
}

/// (row in part, rows, key, text hash) of every row of a source part, reading only its key and
/// hash columns (and with `chunk_rows` its chunk column: a row is then its chunk 0's row and the
/// number of its chunk rows; otherwise rows is 1).
fn source_keys(
    path: &Location,
    by_id: bool,
    chunk_rows: bool,
    bytes: &AtomicU64,
) -> Result<Vec<(u32, u32, u128, u128)>> {
    let unreadable = || format!("cannot read {} (a --reuse source)", path.display());
    let file = ParquetFile::open(path).with_context(unreadable)?;
    let schema = file.schema().clone();
    let hash_col = schema.index_of(TEXT_HASH).map_err(|_| {
        anyhow::anyhow!(
            "{} has no {TEXT_HASH} column: it was made by an older batch-embed and cannot be reused",
            path.display()
        )
    })?;
    let mut roots = vec![hash_col];
    let id_col = if by_id { Some(schema.index_of("id").with_context(unreadable)?) } else { None };
    roots.extend(id_col);
    if chunk_rows {
        roots.push(schema.index_of(CHUNK).map_err(|_| {
            anyhow::anyhow!("{} has no {CHUNK} column: it does not hold one row per chunk", path.display())
        })?);
    }
    let request = ReadRequest {
        columns: roots,
        leaves: None,
        row_groups: None,
        selection: None,
        batch_size: COPY_BATCH,
        page_index: false,
    };
    let mut reader = file.read(request).with_context(unreadable)?;
    let mut out: Vec<(u32, u32, u128, u128)> = Vec::new();
    let mut first = 0u32;
    // Whether the row whose chunks are being read was kept (a null id is not).
    let mut kept = false;
    for batch in reader.by_ref() {
        let batch = batch.with_context(unreadable)?;
        let hashes = batch.column_by_name(TEXT_HASH).expect("projected").as_fixed_size_binary();
        let keys = match by_id {
            true => Some(super::id_keys(batch.column_by_name("id").expect("projected"))?),
            false => None,
        };
        let chunks = batch.column_by_name(CHUNK).map(|c| c.as_primitive::<UInt32Type>().clone());
        for i in 0..batch.num_rows() {
            if chunks.as_ref().is_some_and(|c| c.value(i) > 0) {
                // A later chunk of the row before (which may have been in the batch before).
                if let (true, Some(last)) = (kept, out.last_mut()) {
                    last.1 += 1;
                }
                continue;
            }
            let hash = super::hash_from_bytes(hashes.value(i));
            let key = match &keys {
                Some(k) => match k[i] {
                    Some(k) => k,
                    None => {
                        kept = false;
                        continue; // a null id matches nothing
                    }
                },
                None => hash,
            };
            out.push((first + i as u32, 1, key, hash));
            kept = true;
        }
        first += batch.num_rows() as u32;
    }
    bytes.fetch_add(reader.bytes_read(), Relaxed);
    Ok(out)
}
