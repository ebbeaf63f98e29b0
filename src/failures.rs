//! Failure records: one JSON line per row that got no vector, `{"row": N, "code": "…",
//! "reason": "…", "id": …}`, in a worker folder's `failures.jsonl` (on a bucket, one
//! `failures-*.jsonl` per commit). `code` is [`Failure::code`], `reason` a sentence. With an id
//! column, `id` is the row's id as JSON (arrow's JSON form of its type; `null` for a null id),
//! left out only where the id could not be read: a row of a damaged row group. `verify` counts
//! the records by reason; `changes` keys the ids of rows whose text could not be embedded, so
//! that such a row is not taken for a deleted one.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};

use crate::storage::Location;

/// Why a row got no vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    NullText,
    /// A binary text column held bytes that are not UTF-8.
    NotUtf8,
    NoTokens,
    /// The model ran out of memory on this text even in a batch of its own, twice.
    OutOfMemory,
    /// The vector holds NaN or infinite values (an overflow, e.g. of f16's range).
    NonFinite,
    /// A piece of the text does not fit in `--chunk-tokens` even alone.
    Unsplittable,
    /// The row's row group in the input file does not decode, and `--skip-damaged` is on.
    Damaged,
}

impl Failure {
    /// A stable name for scripts (the `code` of a failure record).
    pub fn code(self) -> &'static str {
        match self {
            Failure::NullText => "null_text",
            Failure::NotUtf8 => "not_utf8",
            Failure::NoTokens => "no_tokens",
            Failure::OutOfMemory => "out_of_memory",
            Failure::NonFinite => "non_finite",
            Failure::Unsplittable => "unsplittable",
            Failure::Damaged => "damaged",
        }
    }

    /// The row has no text to embed (as opposed to a text that could not be embedded): for
    /// `changes`, such a row is gone from the corpus.
    pub fn no_text(code: &str) -> bool {
        code == Failure::NullText.code() || code == Failure::NoTokens.code()
    }

    pub fn reason(self) -> &'static str {
        match self {
            Failure::NullText => "text is null",
            Failure::NotUtf8 => "text is not valid UTF-8 (a binary column holds other bytes)",
            Failure::NoTokens => "text tokenizes to no tokens",
            Failure::OutOfMemory => {
                "out of memory even in a batch of its own, also when retried after the batch budget shrank"
            }
            Failure::NonFinite => {
                "the model's output holds NaN or infinite values (an overflow? f16 has a narrow range)"
            }
            Failure::Damaged => {
                "its row group in the input file does not decode (the file is damaged); skipped by --skip-damaged"
            }
            Failure::Unsplittable => {
                "a character of the text does not fit in a chunk of --chunk-tokens with the prompt"
            }
        }
    }
}

/// Appends one record per failed row: `failed` holds (index into `rows` and `ids`, why).
pub fn write_records(
    rows: &[u64],
    failed: &[(usize, Failure)],
    ids: Option<&ArrayRef>,
    out: &mut Vec<u8>,
) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let ids = match ids {
        Some(ids) => {
            let at = UInt32Array::from_iter_values(failed.iter().map(|&(i, _)| i as u32));
            Some(ids_as_json(&arrow::compute::take(ids, &at, None)?)?)
        }
        None => None,
    };
    for (k, &(i, failure)) in failed.iter().enumerate() {
        let mut line =
            serde_json::json!({"row": rows[i], "code": failure.code(), "reason": failure.reason()});
        match &ids {
            // The row's bytes did not decode: its id is not known.
            Some(_) if failure == Failure::Damaged => {}
            Some(ids) => line["id"] = ids[k].clone().unwrap_or(serde_json::Value::Null),
            None => {}
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Each value of `ids` as arrow writes it to JSON (`None` for a null).
fn ids_as_json(ids: &ArrayRef) -> Result<Vec<Option<serde_json::Value>>> {
    let field = Field::new("id", ids.data_type().clone(), true);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![ids.clone()])?;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(&batch).context("cannot write the ids of failed rows as JSON")?;
    writer.finish()?;
    let objects: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&writer.into_inner())?;
    Ok(objects.into_iter().map(|mut o| o.remove("id")).collect())
}

/// The ids of failure records (as [`FailureRecord::id`] holds them) read back into an array of
/// `id_type`; one that does not parse as that type is null.
pub fn ids_from_json(values: &[&serde_json::Value], id_type: &DataType) -> Result<ArrayRef> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", id_type.clone(), true)]));
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(values.len().max(1))
        .build_decoder()
        .context("ids of this type cannot be read back from JSON")?;
    let rows: Vec<serde_json::Value> = values.iter().map(|v| serde_json::json!({ "id": v })).collect();
    decoder
        .serialize(&rows)
        .context("the ids of failure records do not read back as the id column's type")?;
    let batch = decoder.flush()?.context("no ids decoded")?;
    Ok(batch.column(0).clone())
}

/// One record as read back.
#[derive(Debug, serde::Deserialize)]
pub struct FailureRecord {
    pub row: u64,
    /// [`Failure::code`]; empty in records of batch-embed before it had codes.
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub reason: String,
    /// `None` when the record has no `id` (no id column, or the id not known); `Some(Null)` for a
    /// null id.
    #[serde(default, deserialize_with = "present")]
    pub id: Option<serde_json::Value>,
}

/// A field that is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    <serde_json::Value as serde::Deserialize>::deserialize(d).map(Some)
}

/// A worker's committed failures: the rows, and how many gave each reason.
#[derive(Debug, Default)]
pub struct Failures {
    pub rows: Vec<u64>,
    pub reasons: BTreeMap<String, u64>,
}

impl Failures {
    pub fn add(&mut self, record: FailureRecord) {
        self.rows.push(record.row);
        match self.reasons.get_mut(&record.reason) {
            Some(count) => *count += 1,
            None => {
                self.reasons.insert(record.reason, 1);
            }
        }
    }
}

/// Calls `f` with each record in the first `committed` bytes of a failures file (all of it for
/// `u64::MAX`); returns how many there were.
pub fn read_records(path: &Location, committed: u64, mut f: impl FnMut(FailureRecord)) -> Result<u64> {
    if committed == 0 {
        return Ok(0);
    }
    let bytes = path.read()?.with_context(|| format!("cannot open {}: it does not exist", path.display()))?;
    let end = bytes.len().min(usize::try_from(committed).unwrap_or(usize::MAX));
    let mut n = 0;
    for line in bytes[..end].lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let record = serde_json::from_str::<FailureRecord>(&line)
            .with_context(|| format!("{} line {} is not a failure record", path.display(), n + 1))?;
        f(record);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array, StringArray};
    use arrow::datatypes::Int64Type;

    fn records(bytes: &[u8]) -> Vec<FailureRecord> {
        bytes.lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect()
    }

    #[test]
    fn records_carry_the_id_and_read_back_as_the_id_type() {
        let rows = [10, 11, 12];
        let failed = [(0, Failure::NullText), (2, Failure::Damaged)];
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), Some(8), None]));
        let mut out = Vec::new();
        write_records(&rows, &failed, Some(&ints), &mut out).unwrap();
        let r = records(&out);
        assert_eq!((r[0].row, r[0].reason.as_str()), (10, "text is null"));
        assert_eq!(r[0].id, Some(serde_json::json!(7)));
        assert_eq!((r[1].row, &r[1].id), (12, &None), "a damaged row's id is not known");
        let mut out = Vec::new();
        write_records(&rows, &[(2, Failure::NullText)], Some(&ints), &mut out).unwrap();
        assert_eq!(records(&out)[0].id, Some(serde_json::Value::Null), "a null id is null");
        let back = ids_from_json(&[r[0].id.as_ref().unwrap()], &DataType::Int64).unwrap();
        assert_eq!(back.as_primitive::<Int64Type>().value(0), 7);

        let strings: ArrayRef = Arc::new(StringArray::from(vec!["B00X", "b", "c\"q"]));
        let mut out = Vec::new();
        write_records(&rows, &[(2, Failure::NoTokens)], Some(&strings), &mut out).unwrap();
        let r = records(&out);
        assert_eq!(r[0].id, Some(serde_json::json!("c\"q")));
        let back = ids_from_json(&[r[0].id.as_ref().unwrap()], &DataType::Utf8).unwrap();
        assert_eq!(back.as_string::<i32>().value(0), "c\"q");
        assert!(!back.is_null(0));

        let mut out = Vec::new();
        write_records(&rows, &[(1, Failure::NoTokens)], None, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"code\":\"no_tokens\",\"reason\":\"text tokenizes to no tokens\",\"row\":11}\n"
        );
    }
}
