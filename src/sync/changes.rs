//! `batch-embed changes PREVIOUS CURRENT --output DIR`: what a vector database holding
//! PREVIOUS's vectors must do to hold CURRENT's. Both runs need ids (`--id-column`).
//!
//! - `DIR/upserted.parquet`: `id`, `embedding`, `text_hash` for every id that is new in CURRENT
//!   or whose text changed (or every id, when the two runs' vectors were made differently);
//! - `DIR/deleted.parquet`: `id` for every id of PREVIOUS that CURRENT no longer has (a row whose
//!   text is now null, or tokenizes to nothing, counts as gone). An id whose row CURRENT has but
//!   could not embed (out of memory, NaN, bytes that are not UTF-8, …: its failure record carries
//!   the id) is neither upserted nor deleted: the database keeps what PREVIOUS gave it. A failure
//!   whose id is not known (a damaged row group) makes CURRENT count as incomplete;
//! - `DIR/duplicates.parquet` (only when there are some): ids that occur more than once in one
//!   snapshot, with the snapshot and the count. Such an id is left out of the change set: a
//!   key-value store cannot hold both rows, and picking one would be a silent merge.
//!
//! With one output row per chunk (`--chunk-tokens`), an id is all of its chunk rows: upserted
//! rows carry `chunk`, `chunk_start` and `chunk_end`, and every changed id is listed in
//! `deleted.parquet` too, because its new text may have fewer chunks than the old one and an upsert
//! on (id, chunk) would leave the old extra chunks behind. A database applies a chunked change
//! set by deleting those ids first, then upserting.
//!
//! Memory: PREVIOUS's ids and text hashes as 32 bytes each (a 128-bit key of the id and the
//! 128-bit text hash) plus a byte of bookkeeping, sorted; CURRENT is streamed part by part (its
//! new ids are kept to find repeats among them, and the rows to upsert as 20 bytes each), and
//! only the rows to upsert are read in full (their pages of the embedding column).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, UInt32Type};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use serde::Serialize;

use crate::embed::Failure;
use crate::output::{CHUNK, CHUNK_END, CHUNK_START, TEXT_HASH};
use crate::run_spec::RunSpec;
use crate::storage::parquet::{ParquetFile, ReadRequest};
use crate::storage::Location;
use output::{write_duplicates, Output};

mod output;

pub const UPSERTED: &str = "upserted.parquet";
pub const DELETED: &str = "deleted.parquet";
pub const DUPLICATES: &str = "duplicates.parquet";

/// What changed between two snapshots.
#[derive(Debug, Default, Serialize)]
pub struct ChangeReport {
    pub previous: String,
    pub current: String,
    pub unchanged: u64,
    pub changed: u64,
    pub new: u64,
    pub deleted: u64,
    /// Ids PREVIOUS has whose row failed in CURRENT: neither upserted nor deleted.
    pub failed_kept: u64,
    /// Ids that occur more than once in PREVIOUS / in CURRENT (left out of the change set).
    pub duplicate_ids_previous: u64,
    pub duplicate_ids_current: u64,
    /// The two runs' vectors were made differently (another model or options): every id of
    /// CURRENT is upserted.
    pub vectors_differ: Vec<String>,
    /// Rows written to upserted.parquet and deleted.parquet.
    pub upserted: u64,
    /// One row per chunk: changed ids, also in deleted.parquet (their old chunks go first).
    pub chunk_rows: bool,
    pub deleted_changed: u64,
    pub files: Vec<String>,
    /// Incomplete runs used with --allow-incomplete.
    pub incomplete: Vec<String>,
}

/// What happened to a CURRENT row's id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Unchanged,
    Changed,
    New,
}

/// A run's output as `changes` reads it.
struct Snapshot {
    output: Location,
    spec: RunSpec,
    parts: Vec<Location>,
    /// Rows committed (vectors and failures) and rows the run owns.
    done: u64,
    owned: u64,
    /// Parts hold one row per chunk.
    chunk_rows: bool,
}

fn snapshot(output: &Location, role: &str) -> Result<Snapshot> {
    let shown = output.display();
    let workers = crate::fleet::workers_required(output, &format!("; {role} must be the --output of a run"))?;
    let mut spec: Option<RunSpec> = None;
    let (mut parts, mut done, mut owned) = (Vec::new(), 0, 0);
    let n = workers.iter().map(|w| w.num_workers).max().unwrap_or(1);
    for w in &workers {
        let ckpt = w
            .checkpoint()?
            .with_context(|| format!("{role} {shown}: {} has no checkpoint", w.dir.display()))?;
        match &spec {
            None => spec = Some(ckpt.spec.clone()),
            Some(s) if s != &ckpt.spec => {
                bail!(
                    "{role} {shown}: its worker folders come from different runs ({} differs)",
                    w.dir.display()
                )
            }
            Some(_) => {}
        }
        done += ckpt.rows_done;
        owned += ckpt.rows_owned;
        parts.extend(ckpt.parts.iter().map(|p| w.dir.join(&p.file)));
    }
    let spec = spec.expect("at least one worker");
    if spec.rows.id_column.is_none() {
        bail!("{role} {shown} was made without --id-column; `changes` matches rows by id, so both runs need one");
    }
    // Worker folders that never started own rows too.
    if (workers.len() as u64) < n {
        let total: u64 = spec.rows.inputs.iter().map(|i| i.rows).sum();
        owned = total;
    }
    let chunk_rows = spec.vectors.chunk_rows();
    Ok(Snapshot { output: output.clone(), spec, parts, done, owned, chunk_rows })
}

/// Computes the change set from `previous` to `current` into `dir`.
pub fn changes(
    previous: &Location,
    current: &Location,
    dir: &Location,
    allow_incomplete: bool,
) -> Result<ChangeReport> {
    let prev = snapshot(previous, "PREVIOUS")?;
    let cur = snapshot(current, "CURRENT")?;
    let mut report = ChangeReport {
        previous: previous.display().to_string(),
        current: current.display().to_string(),
        ..ChangeReport::default()
    };
    for (s, role) in [(&prev, "PREVIOUS"), (&cur, "CURRENT")] {
        if s.done < s.owned {
            let what =
                format!("{role} {} is incomplete ({} of {} rows)", s.output.display(), s.done, s.owned);
            if !allow_incomplete {
                bail!("{what}; pass --allow-incomplete to use what is there (ids of rows not yet embedded then look deleted or new)");
            }
            report.incomplete.push(what);
        }
    }
    if prev.chunk_rows != cur.chunk_rows {
        let shape = |s: &Snapshot| if s.chunk_rows { "one row per chunk" } else { "one row per input row" };
        bail!(
            "PREVIOUS has {} and CURRENT {}: a database loaded from one cannot be brought to the other by a change set; load CURRENT afresh",
            shape(&prev),
            shape(&cur)
        );
    }
    let chunked = cur.chunk_rows;
    report.chunk_rows = chunked;
    report.vectors_differ = cur.spec.vectors_differences(&prev.spec);
    let id_type = part_id_type(&cur)?;
    let prev_id_type = part_id_type(&prev)?;
    if let (Some(a), Some(b)) = (&prev_id_type, &id_type) {
        if crate::id_types::key_type(a) != crate::id_types::key_type(b) {
            bail!("the ids are {a} in PREVIOUS and {b} in CURRENT; they cannot be matched");
        }
    }
    // CURRENT's failed rows: their ids stay as PREVIOUS has them.
    let (failed, unknown) = match id_type.as_ref().or(prev_id_type.as_ref()) {
        Some(t) => failed_ids(current, t)?,
        None => (HashSet::new(), 0),
    };
    if unknown > 0 {
        let what = format!(
            "CURRENT {} has {unknown} failed rows whose id is not known (their row group of the input did not decode, or an older batch-embed wrote no ids in failure records)",
            current.display()
        );
        if !allow_incomplete {
            bail!("{what}; any of them that PREVIOUS holds would look deleted: fix the input and run CURRENT again, or pass --allow-incomplete to go on so");
        }
        report.incomplete.push(what);
    }
    dir.create_dir_all()?;

    // PREVIOUS's (id key, text hash), sorted; duplicate keys marked.
    let mut keys: Vec<(u128, u128)> = Vec::new();
    for part in &prev.parts {
        scan(part, chunked, |_, key, hash| keys.push((key, hash)))?;
    }
    keys.sort_unstable();
    let mut dup_prev: HashSet<u128> = HashSet::new();
    for w in keys.windows(2) {
        if w[0].0 == w[1].0 {
            dup_prev.insert(w[0].0);
        }
    }
    keys.dedup_by_key(|k| k.0);
    report.duplicate_ids_previous = dup_prev.len() as u64;

    // CURRENT, part by part: which rows to upsert; which PREVIOUS ids it still has. An id met
    // twice is found by `seen` (ids PREVIOUS has) or by the set of new ids (usually few).
    let mut seen = vec![false; keys.len()];
    // PREVIOUS ids whose text changed: with chunk rows they are deleted before the upsert.
    let mut changed = vec![false; if chunked { keys.len() } else { 0 }];
    let mut new_keys: HashSet<u128> = HashSet::new();
    let mut dup_cur: HashSet<u128> = HashSet::new();
    let mut upsert: Vec<Vec<(u32, u128)>> = Vec::with_capacity(cur.parts.len());
    let differ = !report.vectors_differ.is_empty();
    let classify = |key: u128, hash: u128| match keys.binary_search_by_key(&key, |k| k.0) {
        Ok(j) if differ || keys[j].1 != hash => (Some(j), Change::Changed),
        Ok(j) => (Some(j), Change::Unchanged),
        Err(_) => (None, Change::New),
    };
    for part in &cur.parts {
        let mut rows = Vec::new();
        scan(part, chunked, |row, key, hash| {
            let (j, change) = classify(key, hash);
            if let (Some(j), Change::Changed, true) = (j, change, chunked) {
                changed[j] = true;
            }
            let again = match j {
                Some(j) => std::mem::replace(&mut seen[j], true),
                None => !new_keys.insert(key),
            };
            if again {
                dup_cur.insert(key);
            }
            match change {
                Change::Unchanged => report.unchanged += 1,
                Change::Changed => report.changed += 1,
                Change::New => report.new += 1,
            }
            if change != Change::Unchanged {
                rows.push((row, key));
            }
        })?;
        upsert.push(rows);
    }
    drop(new_keys);
    report.duplicate_ids_current = dup_cur.len() as u64;
    let left_out = |key: &u128| dup_prev.contains(key) || dup_cur.contains(key);
    // The counts are of ids in the change set: take the left-out ids' rows back out.
    if !dup_prev.is_empty() || !dup_cur.is_empty() {
        for part in &cur.parts {
            scan(part, chunked, |_, key, hash| {
                if left_out(&key) {
                    match classify(key, hash).1 {
                        Change::Unchanged => report.unchanged -= 1,
                        Change::Changed => report.changed -= 1,
                        Change::New => report.new -= 1,
                    }
                }
            })?;
        }
    }

    // upserted.parquet
    let columns: &[&str] = match chunked {
        true => &["id", CHUNK, CHUNK_START, CHUNK_END, "embedding", TEXT_HASH],
        false => &["id", "embedding", TEXT_HASH],
    };
    let mut upserted = Output::new(dir, UPSERTED, change_schema(&cur, columns)?)?;
    for (part, rows) in cur.parts.iter().zip(&upsert) {
        let mut rows: Vec<u32> = rows.iter().filter(|(_, k)| !left_out(k)).map(|(r, _)| *r).collect();
        if chunked {
            rows = chunk_rows_of(part, &rows)?;
        }
        if !rows.is_empty() {
            upserted.copy_rows(part, &rows, columns)?;
        }
    }
    report.upserted = upserted.rows;
    upserted.finish()?;

    // deleted.parquet, and the duplicated ids' values, from a second pass over PREVIOUS.
    let id_only = change_schema(&prev, &["id"])?.or(change_schema(&cur, &["id"])?).map(|s| {
        Arc::new(Schema::new(s.fields().clone())) // no vector metadata on a list of ids
    });
    let mut deleted = Output::new(dir, DELETED, id_only)?;
    let mut duplicates: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for part in &prev.parts {
        let mut rows = Vec::new();
        scan(part, chunked, |row, key, _| {
            let j = keys.binary_search_by_key(&key, |k| k.0).expect("every key was kept");
            if left_out(&key) {
                return;
            }
            if !seen[j] && failed.contains(&key) {
                report.failed_kept += 1;
                seen[j] = true;
            } else if !seen[j] {
                rows.push(row);
                report.deleted += 1;
                seen[j] = true; // once, even for a duplicated id
            } else if chunked && std::mem::replace(&mut changed[j], false) {
                rows.push(row);
                report.deleted_changed += 1;
            }
        })?;
        if !rows.is_empty() {
            deleted.copy_ids(part, &rows)?;
        }
        for (id, n) in duplicate_values(part, chunked, |k| dup_prev.contains(k))? {
            *duplicates.entry(("previous", id)).or_default() += n;
        }
    }
    deleted.finish()?;
    for part in &cur.parts {
        for (id, n) in duplicate_values(part, chunked, |k| dup_cur.contains(k))? {
            *duplicates.entry(("current", id)).or_default() += n;
        }
    }
    report.files = vec![dir.join(UPSERTED).display().to_string(), dir.join(DELETED).display().to_string()];
    let dup_path = dir.join(DUPLICATES);
    if duplicates.is_empty() {
        let _ = dup_path.delete();
    } else {
        write_duplicates(dir, &duplicates)?;
        report.files.push(dup_path.display().to_string());
    }
    Ok(report)
}

/// The id keys of CURRENT's rows whose text could not be embedded (ids read back from their
/// failure records as `id_type`; rows with no text, null or no tokens, are not among them: those
/// are deletions), and how many such records have no id.
fn failed_ids(output: &Location, id_type: &DataType) -> Result<(HashSet<u128>, u64)> {
    const BATCH: usize = 8192;
    let mut keys = HashSet::new();
    let mut unknown = 0;
    let mut pending: Vec<serde_json::Value> = Vec::new();
    let flush = |pending: &mut Vec<serde_json::Value>, keys: &mut HashSet<u128>| -> Result<()> {
        let values: Vec<&serde_json::Value> = pending.iter().collect();
        let ids = crate::failures::ids_from_json(&values, id_type)?;
        keys.extend(super::id_keys(&ids)?.into_iter().flatten());
        pending.clear();
        Ok(())
    };
    for w in crate::fleet::workers(output)? {
        let Some(ckpt) = w.checkpoint()? else { continue };
        let mut error = None;
        w.for_each_failure(&ckpt, |r| match r.id {
            // A row with no text is gone from the corpus, whatever its id.
            _ if Failure::no_text(&r.code) => {}
            None => unknown += 1,
            Some(serde_json::Value::Null) => {}
            Some(id) => {
                pending.push(id);
                if pending.len() == BATCH && error.is_none() {
                    error = flush(&mut pending, &mut keys).err();
                }
            }
        })?;
        if let Some(e) = error {
            return Err(e.context(format!("cannot read the ids of {}'s failure records", w.dir.display())));
        }
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut keys)?;
    }
    Ok((keys, unknown))
}

/// The type of a run's `id` column, from its first part.
fn part_id_type(s: &Snapshot) -> Result<Option<DataType>> {
    let Some(part) = s.parts.first() else { return Ok(None) };
    let builder = reader(part)?;
    Ok(builder.schema().field_with_name("id").ok().map(|f| f.data_type().clone()))
}

fn reader(part: &Location) -> Result<ParquetFile> {
    ParquetFile::open(part).with_context(|| format!("cannot read {}", part.display()))
}

/// Calls `f(row in part, id key, text hash)` for every row of a part with a non-null id
/// (with `chunked`, for each row's first chunk row only), reading only the id and text hash
/// columns (and the chunk column).
fn scan(part: &Location, chunked: bool, mut f: impl FnMut(u32, u128, u128)) -> Result<()> {
    let file = reader(part)?;
    let schema = file.schema().clone();
    let missing = |c: &str| format!("{} has no {c} column (made by an older batch-embed?)", part.display());
    let mut roots = vec![
        schema.index_of("id").with_context(|| missing("id"))?,
        schema.index_of(TEXT_HASH).with_context(|| missing(TEXT_HASH))?,
    ];
    if chunked {
        roots.push(schema.index_of(CHUNK).with_context(|| missing(CHUNK))?);
    }
    let mut first = 0u32;
    let request = ReadRequest {
        columns: roots,
        leaves: None,
        row_groups: None,
        selection: None,
        batch_size: 8192,
        page_index: false,
    };
    for batch in file.read(request)? {
        let batch = batch.with_context(|| format!("cannot read {}", part.display()))?;
        let keys = super::id_keys(batch.column_by_name("id").expect("projected"))?;
        let hashes = batch.column_by_name(TEXT_HASH).expect("projected").as_fixed_size_binary();
        let chunks = batch.column_by_name(CHUNK).map(|c| c.as_primitive::<UInt32Type>().clone());
        for (i, key) in keys.into_iter().enumerate() {
            if chunks.as_ref().is_some_and(|c| c.value(i) > 0) {
                continue;
            }
            if let Some(key) = key {
                f(first + i as u32, key, super::hash_from_bytes(hashes.value(i)));
            }
        }
        first += batch.num_rows() as u32;
    }
    Ok(())
}

/// The rows of a chunk-row part that hold the chunks of the rows whose first chunk row is in
/// `firsts` (increasing): each first row and the rows after it up to the next chunk 0.
fn chunk_rows_of(part: &Location, firsts: &[u32]) -> Result<Vec<u32>> {
    if firsts.is_empty() {
        return Ok(Vec::new());
    }
    let file = reader(part)?;
    let index =
        file.schema().index_of(CHUNK).with_context(|| format!("{} has no {CHUNK} column", part.display()))?;
    let mut out = Vec::new();
    let (mut next, mut taking, mut row) = (0usize, false, 0u32);
    let request = ReadRequest {
        columns: vec![index],
        leaves: None,
        row_groups: None,
        selection: None,
        batch_size: 8192,
        page_index: false,
    };
    for batch in file.read(request)? {
        let batch = batch.with_context(|| format!("cannot read {}", part.display()))?;
        for &chunk in batch.column(0).as_primitive::<UInt32Type>().values() {
            if chunk == 0 {
                taking = firsts.get(next) == Some(&row);
                if taking {
                    next += 1;
                }
            }
            if taking {
                out.push(row);
            }
            row += 1;
        }
    }
    Ok(out)
}

/// The values of the ids of a part whose key `dup` says is duplicated, with their counts.
fn duplicate_values(
    part: &Location,
    chunked: bool,
    dup: impl Fn(&u128) -> bool,
) -> Result<Vec<(String, u64)>> {
    let mut rows = Vec::new();
    scan(part, chunked, |row, key, _| {
        if dup(&key) {
            rows.push(row);
        }
    })?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for batch in read_rows(part, &rows, &["id"])? {
        let ids = batch.column_by_name("id").expect("projected");
        let shown = arrow::compute::cast(ids, &DataType::Utf8)?;
        for v in shown.as_string::<i32>().iter().flatten() {
            *out.entry(v.to_string()).or_default() += 1;
        }
    }
    Ok(out.into_iter().collect())
}

/// Reads rows `rows` (increasing) of a part, columns `columns` only, skipping other pages.
fn read_rows(part: &Location, rows: &[u32], columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let file = reader(part)?;
    let schema = file.schema().clone();
    let roots: Vec<usize> = columns
        .iter()
        .map(|c| schema.index_of(c).with_context(|| format!("{} has no {c} column", part.display())))
        .collect::<Result<_>>()?;
    let mut selectors: Vec<RowSelector> = Vec::new();
    let mut at = 0u32;
    for &r in rows {
        if r > at {
            selectors.push(RowSelector::skip((r - at) as usize));
        }
        match selectors.last_mut() {
            Some(last) if !last.skip && r == at && at > 0 => last.row_count += 1,
            _ => selectors.push(RowSelector::select(1)),
        }
        at = r + 1;
    }
    let reader = file.read(ReadRequest {
        columns: roots,
        leaves: None,
        row_groups: None,
        selection: Some(RowSelection::from(selectors)),
        batch_size: 8192,
        page_index: true,
    })?;
    reader.map(|b| b.with_context(|| format!("cannot read {}", part.display()))).collect()
}

/// The schema of a change-set file: the named columns of a run's parts, with the parts'
/// metadata (what made the vectors). `None` when the run has no part.
fn change_schema(s: &Snapshot, columns: &[&str]) -> Result<Option<Arc<Schema>>> {
    let Some(part) = s.parts.first() else { return Ok(None) };
    let schema = reader(part)?.schema().clone();
    let fields = columns
        .iter()
        .map(|c| {
            schema
                .field_with_name(c)
                .cloned()
                .with_context(|| format!("{} has no {c} column", part.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Arc::new(Schema::new(fields).with_metadata(schema.metadata().clone()))))
}

/// The report as the command prints it.
pub fn render(r: &ChangeReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "changes from {} to {}:", r.previous, r.current);
    let _ = writeln!(
        s,
        "ids: {} unchanged, {} changed, {} new, {} deleted",
        r.unchanged, r.changed, r.new, r.deleted
    );
    if r.failed_kept > 0 {
        let _ = writeln!(
            s,
            "note: {} ids of PREVIOUS have a row in CURRENT that got no vector (see its failures); they are neither upserted nor deleted, so the database keeps their old vectors",
            r.failed_kept
        );
    }
    if !r.vectors_differ.is_empty() {
        let _ = writeln!(
            s,
            "note: the two runs' vectors were made differently ({}): every id of CURRENT is upserted",
            r.vectors_differ.join("; ")
        );
    }
    for w in &r.incomplete {
        let _ = writeln!(s, "note: {w}");
    }
    if r.duplicate_ids_previous + r.duplicate_ids_current > 0 {
        let _ = writeln!(
            s,
            "warning: {} ids occur more than once in PREVIOUS and {} in CURRENT; they are left out of the change set and listed in {DUPLICATES}",
            r.duplicate_ids_previous, r.duplicate_ids_current
        );
    }
    if r.chunk_rows {
        let _ = writeln!(
            s,
            "one row per chunk: delete the {} ids in deleted.parquet first ({} gone, {} changed), then upsert {} chunk rows on (id, chunk): {}",
            r.deleted + r.deleted_changed,
            r.deleted,
            r.deleted_changed,
            r.upserted,
            r.files.join(", ")
        );
    } else {
        let _ = writeln!(s, "upsert {} rows, delete {} ids: {}", r.upserted, r.deleted, r.files.join(", "));
    }
    s
}
