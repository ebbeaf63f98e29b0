//! The one description of a run: everything that decides which rows a worker owns and what their
//! vectors are. The checkpoint's copy of it, every part file's metadata and `verify`'s
//! comparisons are all made from this type, so an option is added here once and reaches all
//! three.
//!
//! Two halves, because they answer different questions:
//! - [`RowSpec`]: which rows exist and who owns them (inputs with their content identity,
//!   columns and the text template, the stride rule). A worker folder is continued only by a run
//!   with the same rows.
//! - [`VectorSpec`]: what decides a row's vector (model, pooling, truncation, prompt, chunking,
//!   dtypes). Part files carry it, so a vector can be traced to what made it.
//!
//! NOTE: the text template is on the rows' side: it decides the text, and a text is matched by
//! its hash (`--reuse`, `changes`), so a vector made from the same text under another template
//! (say after a column was renamed) is still that text's vector.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every key batch-embed writes into a part file's metadata.
pub const META_PREFIX: &str = "batch_embed.";
/// The metadata key holding the whole [`PartSpec`] as JSON (the flat keys beside it are for
/// people and SQL; this one is what `verify` compares).
pub const META_SPEC: &str = "batch_embed.spec";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub rows: RowSpec,
    pub vectors: VectorSpec,
}

/// Which rows there are and which worker owns each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowSpec {
    pub inputs: Vec<InputSpec>,
    /// What a row's text is made of (`{text}` for `--text-column text`), see template.rs.
    pub text_template: String,
    /// The columns it reads, in order of first use.
    pub text_columns: Vec<String>,
    pub id_column: Option<String>,
    pub num_workers: u64,
    pub stride_block: u64,
}

/// One input file as the run saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub path: String,
    pub bytes: u64,
    pub rows: u64,
    /// SHA-256 (first 16 bytes, hex) of the Parquet footer: a file rewritten with other
    /// contents but the same size and row count is told apart without reading its data.
    pub footer: String,
}

/// What decides a row's vector, besides its text. Nothing machine-specific (the model's local
/// folder is in the part metadata, not here), so workers on machines with different caches
/// share one description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorSpec {
    /// See `ModelFiles::content_hash`: config, tokenizer, weight headers and the
    /// sentence-transformers module files.
    pub model_hash: String,
    /// The Hugging Face Hub id, when the model came from the Hub (or its cache).
    #[serde(default)]
    pub model_id: Option<String>,
    /// The Hub commit the model's files are from.
    #[serde(default)]
    pub revision: Option<String>,
    pub model_type: String,
    /// The width of the written vectors (after Dense modules and `--dimensions`).
    pub dim: usize,
    pub pooling: String,
    /// sentence-transformers Dense modules after the pooling, e.g. `768->512 tanh`.
    #[serde(default)]
    pub dense: Vec<String>,
    /// `--dimensions`: the first D dimensions kept (before normalising).
    #[serde(default)]
    pub dimensions: Option<usize>,
    pub normalized: bool,
    pub attention: String,
    pub max_tokens: usize,
    pub prompt: Option<String>,
    /// The sentence-transformers prompt name the prompt came from.
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// The compute dtype (f32, bf16, f16).
    pub dtype: String,
    pub output_dtype: String,
    /// `--chunk-tokens`: texts split into chunks of at most this many tokens (absent: texts are
    /// cut at `max_tokens`). The three below are set only with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_overlap: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chunks: Option<usize>,
    /// `--chunk-pool`: "mean" for one vector per row; absent for one row per chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_pool: Option<String>,
}

impl VectorSpec {
    /// Whether parts hold one row per chunk (`chunk`, `chunk_start`, `chunk_end` columns).
    pub fn chunk_rows(&self) -> bool {
        self.chunk_tokens.is_some() && self.chunk_pool.is_none()
    }
}

/// What every part file records about the run that wrote it: the vector half, the stride rule,
/// and the writer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartSpec {
    #[serde(flatten)]
    pub vectors: VectorSpec,
    /// The rows' text template and its columns (see [`RowSpec`]).
    #[serde(default)]
    pub text_template: String,
    #[serde(default)]
    pub text_columns: Vec<String>,
    pub num_workers: u64,
    pub stride_block: u64,
    pub worker_id: u64,
}

impl RunSpec {
    /// Names each field that differs from `earlier`, with both values, e.g.
    /// `max_tokens was 512 and is now 100`.
    pub fn differences(&self, earlier: &RunSpec) -> Vec<String> {
        let mut out = Vec::new();
        if self.rows.inputs != earlier.rows.inputs {
            out.push(describe_input_change(&earlier.rows.inputs, &self.rows.inputs));
        }
        let strip = |s: &RunSpec| {
            let mut v = serde_json::to_value(s).expect("serializable");
            v["rows"].as_object_mut().expect("object").remove("inputs");
            v
        };
        diff_values("", &strip(earlier), &strip(self), &mut out);
        out
    }

    /// Names each vector-deciding field (model, pooling, options, dtypes) that differs from
    /// `earlier`'s: what decides whether `earlier`'s vectors can stand for this run's. The model
    /// counts by the hash of its files: the same files named by a folder or by a Hub id make the
    /// same vectors, so `model_id` and `revision` are left out here (a resumed worker folder
    /// compares them, through [`RunSpec::differences`]).
    pub fn vectors_differences(&self, earlier: &RunSpec) -> Vec<String> {
        let strip = |s: &RunSpec| {
            let mut v = serde_json::to_value(&s.vectors).expect("serializable");
            let o = v.as_object_mut().expect("object");
            o.remove("model_id");
            o.remove("revision");
            v
        };
        let mut out = Vec::new();
        diff_values("", &strip(earlier), &strip(self), &mut out);
        out
    }

    /// What a part file written by worker `worker_id` of this run records.
    pub fn part_spec(&self, worker_id: u64) -> PartSpec {
        PartSpec {
            vectors: self.vectors.clone(),
            text_template: self.rows.text_template.clone(),
            text_columns: self.rows.text_columns.clone(),
            num_workers: self.rows.num_workers,
            stride_block: self.rows.stride_block,
            worker_id,
        }
    }

    /// The metadata of a part file written by worker `worker_id` of this run.
    pub fn part_metadata(&self, worker_id: u64, model_dir: &str) -> HashMap<String, String> {
        let spec = self.part_spec(worker_id);
        let mut m = HashMap::new();
        // Flat keys, one per field, for people and SQL (`prompt` is "" when there is none).
        let value = serde_json::to_value(&spec).expect("serializable");
        for (k, v) in value.as_object().expect("object") {
            let text = match v {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            m.insert(format!("{META_PREFIX}{k}"), text);
        }
        m.insert(META_SPEC.to_string(), value.to_string());
        m.insert(format!("{META_PREFIX}version"), env!("CARGO_PKG_VERSION").to_string());
        m.insert(format!("{META_PREFIX}model"), model_dir.to_string());
        m
    }
}

impl PartSpec {
    /// The spec a part file was written with, from its metadata.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Self> {
        let Some(json) = meta.get(META_SPEC) else {
            bail!("no {META_SPEC} in its metadata (not written by this version of batch-embed)");
        };
        serde_json::from_str(json).with_context(|| format!("{META_SPEC} is not readable"))
    }

    /// Names what differs from the run's own description (the checkpoint's).
    pub fn differences(&self, run: &RunSpec, worker_id: u64) -> Vec<String> {
        let expected = run.part_spec(worker_id);
        let mut out = Vec::new();
        diff_values(
            "",
            &serde_json::to_value(&expected).expect("serializable"),
            &serde_json::to_value(self).expect("serializable"),
            &mut out,
        );
        out
    }
}

/// Walks two JSON values and names each leaf that differs as `key was OLD and is now NEW`.
fn diff_values(key: &str, then: &serde_json::Value, now: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (then, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                diff_values(k, x, y, out);
            }
        }
        (a, b) if a != b => out.push(format!("{key} was {} and is now {}", short(a), short(b))),
        _ => {}
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn describe_input_change(then: &[InputSpec], now: &[InputSpec]) -> String {
    if then.len() != now.len() {
        return format!("the input files changed ({} files before, {} now)", then.len(), now.len());
    }
    for (a, b) in then.iter().zip(now) {
        if a.path != b.path {
            return format!("the input files changed ({} is now {})", a.path, b.path);
        }
        if (a.bytes, a.rows) != (b.bytes, b.rows) {
            return format!(
                "input {} changed ({} bytes and {} rows before, {} bytes and {} rows now)",
                a.path, a.bytes, a.rows, b.bytes, b.rows
            );
        }
        if a.footer != b.footer {
            return format!(
                "input {} changed (same size and row count, but its Parquet footer differs: the file was rewritten)",
                a.path
            );
        }
    }
    "the input files changed".to_string()
}

/// The content identity of a Parquet file: a hash of its footer (schema, row groups, column
/// chunk offsets and statistics), read from the end of the file.
pub fn footer_hash(loc: &crate::storage::Location) -> Result<String> {
    let (footer, _) = crate::storage::parquet::read_footer(loc)?;
    Ok(hex16(&Sha256::digest(&footer)))
}

/// The first 16 bytes of a digest as 32 hex digits.
pub fn hex16(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn spec() -> RunSpec {
        RunSpec {
            rows: RowSpec {
                inputs: vec![InputSpec { path: "a.parquet".into(), bytes: 10, rows: 5, footer: "f".into() }],
                text_template: "{text}".into(),
                text_columns: vec!["text".into()],
                id_column: None,
                num_workers: 3,
                stride_block: 4096,
            },
            vectors: VectorSpec {
                model_hash: "h".into(),
                model_id: None,
                revision: None,
                model_type: "qwen2".into(),
                dim: 64,
                pooling: "last_token".into(),
                dense: Vec::new(),
                dimensions: None,
                normalized: true,
                attention: "causal".into(),
                max_tokens: 512,
                prompt: None,
                prompt_name: None,
                dtype: "f32".into(),
                output_dtype: "f32".into(),
                chunk_tokens: None,
                chunk_overlap: None,
                max_chunks: None,
                chunk_pool: None,
            },
        }
    }

    #[test]
    fn names_what_differs() {
        let a = spec();
        let mut b = spec();
        assert!(b.differences(&a).is_empty());
        b.rows.num_workers = 4;
        b.rows.inputs[0].rows = 6;
        b.vectors.prompt = Some("q: ".into());
        let d = b.differences(&a);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d.iter().any(|s| s == "num_workers was 3 and is now 4"), "{d:?}");
        assert!(d.iter().any(|s| s == "prompt was null and is now \"q: \""), "{d:?}");
        assert!(d.iter().any(|s| s.contains("input a.parquet changed")), "{d:?}");
        let mut c = spec();
        c.rows.inputs[0].footer = "g".into();
        assert!(c.differences(&a)[0].contains("footer differs"), "{:?}", c.differences(&a));
    }

    #[test]
    fn a_description_written_before_the_hub_fields_still_reads_and_compares_equal() {
        // What a checkpoint written by an earlier version holds: no model_id, revision, dense,
        // dimensions or prompt_name.
        let mut old = serde_json::to_value(spec()).unwrap();
        for key in ["model_id", "revision", "dense", "dimensions", "prompt_name"] {
            old["vectors"].as_object_mut().unwrap().remove(key);
        }
        let back: RunSpec = serde_json::from_value(old).unwrap();
        assert!(spec().differences(&back).is_empty());
        let mut hub = spec();
        hub.vectors.model_id = Some("BAAI/bge-small-en-v1.5".into());
        hub.vectors.revision = Some("5c38ec7c405ec4b44b94cc5a9bb96e735b38267a".into());
        assert_eq!(hub.differences(&spec()).len(), 2, "a worker folder compares the Hub id and commit");
        assert!(hub.vectors_differences(&spec()).is_empty(), "--reuse and changes go by the files' hash");
    }

    #[test]
    fn part_metadata_round_trips_and_has_flat_keys() {
        let run = spec();
        let meta = run.part_metadata(2, "/models/m");
        assert_eq!(meta["batch_embed.max_tokens"], "512");
        assert_eq!(meta["batch_embed.prompt"], "");
        assert_eq!(meta["batch_embed.normalized"], "true");
        assert_eq!(meta["batch_embed.worker_id"], "2");
        assert_eq!(meta["batch_embed.model"], "/models/m");
        assert_eq!(meta["batch_embed.text_template"], "{text}");
        assert_eq!(meta["batch_embed.text_columns"], "[\"text\"]");
        assert!(!meta.contains_key("batch_embed.chunk_tokens"), "no chunk keys without chunking");
        let back = PartSpec::from_metadata(&meta).unwrap();
        assert!(back.differences(&run, 2).is_empty());
        assert_eq!(back.differences(&run, 1), ["worker_id was 1 and is now 2"]);
        let mut other = run.clone();
        other.vectors.dim = 32;
        assert_eq!(back.differences(&other, 2), ["dim was 32 and is now 64"]);
        // Chunk settings are flat keys too, and decide the vectors.
        let mut chunked = run.clone();
        chunked.vectors.chunk_tokens = Some(128);
        chunked.vectors.chunk_overlap = Some(16);
        let meta = chunked.part_metadata(0, "m");
        assert_eq!(
            (meta["batch_embed.chunk_tokens"].as_str(), meta["batch_embed.chunk_overlap"].as_str()),
            ("128", "16")
        );
        assert!(chunked.vectors.chunk_rows());
        assert_eq!(
            chunked.vectors_differences(&run),
            ["chunk_overlap was null and is now 16", "chunk_tokens was null and is now 128"]
        );
    }

    #[test]
    fn footer_hash_tells_rewritten_files_apart() {
        use arrow::array::{ArrayRef, RecordBatch, StringArray};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, texts: [&str; 2]| {
            let path = dir.path().join(name);
            let col: ArrayRef = std::sync::Arc::new(StringArray::from(texts.to_vec()));
            let batch = RecordBatch::try_from_iter([("text", col)]).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(&path).unwrap(),
                batch.schema(),
                None,
            )
            .unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            path
        };
        let a = crate::storage::Location::Local(write("a.parquet", ["one", "two"]));
        let b = crate::storage::Location::Local(write("b.parquet", ["one", "tWo"]));
        assert_eq!(a.size().unwrap(), b.size().unwrap());
        assert_ne!(footer_hash(&a).unwrap(), footer_hash(&b).unwrap());
        assert_eq!(footer_hash(&a).unwrap(), footer_hash(&a).unwrap());
        std::fs::write(dir.path().join("c.parquet"), b"not parquet").unwrap();
        assert!(footer_hash(&crate::storage::Location::Local(dir.path().join("c.parquet"))).is_err());
    }
}
