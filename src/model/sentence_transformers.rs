//! sentence-transformers folders: `modules.json` and the modules it lists, read as
//! sentence-transformers 2.x–6.x write them.
//!
//! - `Transformer` (the first module; its `path` holds `config.json`, `tokenizer.json`, the
//!   weights and `sentence_bert_config.json`: `max_seq_length`, `do_lower_case`),
//! - or `StaticEmbedding` first instead (its `path` holds `tokenizer.json` and a token-embedding
//!   table; it makes the pooled vector itself, the mean of its tokens' rows, so no Pooling
//!   module follows it),
//! - `Pooling` (`config.json`: `pooling_mode` — a name or a list — or the older
//!   `pooling_mode_*_tokens` booleans, and `include_prompt`),
//! - `Dense` (`config.json`: in/out features, bias, activation, residual; weights in
//!   `model.safetensors` or `pytorch_model.bin`),
//! - `Normalize` (no files), `Dropout` (nothing at inference),
//!
//! plus `config_sentence_transformers.json` (`prompts`, `default_prompt_name`) at the top.
//! Anything else (custom code, other module types, a module reading token embeddings) fails
//! with one sentence naming what was found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::config::Activation;
use crate::pool::{Pooling, PoolingMode};

/// What a sentence-transformers folder says about making its vectors.
#[derive(Clone, Debug)]
pub struct SentenceTransformers {
    /// The Transformer (or StaticEmbedding) module's folder, relative to the model folder (`""`
    /// for most models, `0_Transformer` or `0_StaticEmbedding` for older ones).
    pub transformer_path: String,
    /// The first module is a StaticEmbedding: a token-embedding table, no transformer.
    pub static_embedding: bool,
    /// From the Pooling module (a StaticEmbedding's own mean).
    pub pooling: Pooling,
    /// Where it came from, for messages (`1_Pooling/config.json`).
    pub pooling_source: String,
    /// Dense modules after the pooling, in order.
    pub dense: Vec<DenseModule>,
    /// A Normalize module ends the pipeline.
    pub normalize: bool,
    /// `max_seq_length` from `sentence_bert_config.json`, else the tokenizer's
    /// `model_max_length` from `tokenizer_config.json` (where sentence-transformers ≥ 5 keeps
    /// it), with the file it came from.
    pub max_seq_length: Option<(usize, String)>,
    /// `do_lower_case`: texts are lowercased before tokenizing.
    pub do_lower_case: bool,
    /// `config_sentence_transformers.json`'s prompts, by name.
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    /// Every file read, relative to the model folder (for the model's hash).
    pub files: Vec<String>,
}

/// One Dense module.
#[derive(Clone, Debug)]
pub struct DenseModule {
    /// Its folder, relative to the model folder.
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub activation: Activation,
    /// sentence-transformers ≥ 6: the input is added back (through `residual.weight` when the
    /// widths differ).
    pub use_residual: bool,
    /// `model.safetensors` or, where that is missing, `pytorch_model.bin`, relative to the
    /// model folder.
    pub weights: String,
}

impl DenseModule {
    pub fn describe(&self) -> String {
        let residual = if self.use_residual { " + residual" } else { "" };
        format!("{}->{} {}{residual}", self.in_features, self.out_features, self.activation.as_str())
    }
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default, deserialize_with = "module_path")]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A module's folder as `modules.json` gives it, relative to the model folder: `""` for the
/// folder itself, which model2vec writes as `"."`.
fn module_path<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let path = String::deserialize(d)?;
    let trimmed = path.trim_start_matches("./").trim_end_matches('/');
    Ok(if trimmed == "." { String::new() } else { trimmed.to_string() })
}

/// The files a folder's `modules.json` makes necessary, relative to the folder: what a download
/// must fetch. `exists` says whether a file is there (or in the repository).
pub fn needed_files(modules_json: &str, exists: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
    let modules: Vec<ModuleEntry> =
        serde_json::from_str(modules_json).context("modules.json is not a list of modules")?;
    let mut files = Vec::new();
    for m in &modules {
        let join =
            |name: &str| if m.path.is_empty() { name.to_string() } else { format!("{}/{name}", m.path) };
        match module_kind(&m.kind)? {
            Kind::Transformer => {
                files.extend(["sentence_bert_config.json", "tokenizer_config.json"].map(join));
            }
            Kind::StaticEmbedding => {}
            Kind::Pooling => files.push(join("config.json")),
            Kind::Dense => {
                files.push(join("config.json"));
                let safetensors = join("model.safetensors");
                files.push(if exists(&safetensors) { safetensors } else { join("pytorch_model.bin") });
            }
            Kind::Normalize | Kind::Dropout => {}
        }
    }
    Ok(files)
}

/// The Transformer (or StaticEmbedding) module's folder named by `modules.json` (`""` when it is
/// the model folder), and whether it is a StaticEmbedding (which has no `config.json`).
pub fn transformer_path(modules_json: &str) -> Result<(String, bool)> {
    let modules: Vec<ModuleEntry> =
        serde_json::from_str(modules_json).context("modules.json is not a list of modules")?;
    for m in &modules {
        match module_kind(&m.kind)? {
            Kind::Transformer => return Ok((m.path.clone(), false)),
            Kind::StaticEmbedding => return Ok((m.path.clone(), true)),
            _ => {}
        }
    }
    bail!("modules.json has no Transformer module")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Transformer,
    StaticEmbedding,
    Pooling,
    Dense,
    Normalize,
    Dropout,
}

/// `sentence_transformers.models.Pooling`, `sentence_transformers.sentence_transformer.modules.
/// pooling.Pooling`, … → the module's kind.
fn module_kind(kind: &str) -> Result<Kind> {
    let name = kind.rsplit('.').next().unwrap_or(kind);
    if !kind.starts_with("sentence_transformers.") {
        bail!(
            "modules.json names the module \"{kind}\", which is custom code (trust_remote_code); batch-embed runs only sentence-transformers' own Transformer, StaticEmbedding, Pooling, Dense and Normalize modules"
        );
    }
    Ok(match name {
        "Transformer" => Kind::Transformer,
        "StaticEmbedding" => Kind::StaticEmbedding,
        "Pooling" => Kind::Pooling,
        "Dense" => Kind::Dense,
        "Normalize" => Kind::Normalize,
        "Dropout" => Kind::Dropout,
        _ => bail!(
            "modules.json names the module \"{kind}\", which batch-embed does not run (it runs Transformer, StaticEmbedding, Pooling, Dense and Normalize)"
        ),
    })
}

fn read_json(dir: &Path, rel: &str) -> Result<Option<serde_json::Value>> {
    let path = dir.join(rel);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?))
}

impl SentenceTransformers {
    /// Reads the sentence-transformers files of `dir`; `None` when it has no `modules.json`
    /// (a plain transformers folder).
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let Some(modules) = read_json(dir, "modules.json")? else { return Ok(None) };
        let at = |m: &str| format!("{} ({m})", dir.join("modules.json").display());
        let modules: Vec<ModuleEntry> =
            serde_json::from_value(modules).with_context(|| at("not a list of modules"))?;
        let mut files = vec!["modules.json".to_string()];
        let mut transformer_path = None;
        let mut static_embedding = false;
        let mut pooling = None;
        let mut dense = Vec::new();
        let mut normalize = false;
        for (i, m) in modules.iter().enumerate() {
            let kind = module_kind(&m.kind).with_context(|| at("its modules"))?;
            let join =
                |name: &str| if m.path.is_empty() { name.to_string() } else { format!("{}/{name}", m.path) };
            if normalize && kind != Kind::Dropout {
                bail!("{}: a {:?} module after Normalize is not supported", at("module order"), kind);
            }
            match kind {
                Kind::Transformer if i == 0 => transformer_path = Some(m.path.clone()),
                Kind::StaticEmbedding if i == 0 => {
                    // NOTE: sentence-transformers' StaticEmbedding is an EmbeddingBag in "mean"
                    // mode: the sentence vector is the mean of the text's token rows.
                    transformer_path = Some(m.path.clone());
                    static_embedding = true;
                    pooling = Some((Pooling::new(PoolingMode::Mean), "StaticEmbedding".to_string()));
                }
                Kind::Transformer | Kind::StaticEmbedding => {
                    bail!("{}: the {:?} module must come first", at("module order"), kind)
                }
                _ if transformer_path.is_none() => {
                    bail!("{}: the first module must be a Transformer", at("module order"))
                }
                Kind::Pooling if static_embedding => {
                    bail!(
                        "{}: a Pooling module after StaticEmbedding, which pools itself",
                        at("module order")
                    )
                }
                Kind::Pooling if pooling.is_some() => bail!("{}: two Pooling modules", at("module order")),
                Kind::Pooling => {
                    let rel = join("config.json");
                    let json = read_json(dir, &rel)?.with_context(|| {
                        format!(
                            "{} is missing (modules.json names a Pooling module there)",
                            dir.join(&rel).display()
                        )
                    })?;
                    pooling = Some((
                        pooling_from_config(&json)
                            .with_context(|| format!("in {}", dir.join(&rel).display()))?,
                        rel.clone(),
                    ));
                    files.push(rel);
                }
                Kind::Dense if pooling.is_none() => {
                    bail!("{}: a Dense module before the Pooling module", at("module order"))
                }
                Kind::Dense => {
                    let module = dense_module(dir, &m.path)?;
                    files.push(join("config.json"));
                    files.push(module.weights.clone());
                    dense.push(module);
                }
                Kind::Normalize => normalize = true,
                Kind::Dropout => {}
            }
        }
        let transformer_path = transformer_path.with_context(|| at("no Transformer module"))?;
        let Some((pooling, pooling_source)) = pooling else {
            bail!("{}: no Pooling module, so it makes token vectors, not one vector per text", at("modules"));
        };
        let tjoin = |name: &str| {
            if transformer_path.is_empty() {
                name.to_string()
            } else {
                format!("{transformer_path}/{name}")
            }
        };
        let sbert_rel = tjoin("sentence_bert_config.json");
        let sbert = read_json(dir, &sbert_rel)?;
        let mut max_seq_length = None;
        let mut do_lower_case = false;
        if let Some(sbert) = &sbert {
            files.push(sbert_rel.clone());
            max_seq_length =
                sbert.get("max_seq_length").and_then(|v| v.as_u64()).map(|n| (n as usize, sbert_rel.clone()));
            do_lower_case = sbert.get("do_lower_case").and_then(|v| v.as_bool()).unwrap_or(false);
        }
        if static_embedding {
            // NOTE: a StaticEmbedding tokenizes with its tokenizer.json as saved, so the file's
            // own truncation (all-MiniLM's keeps `max_length: 128`) is its length limit; with none
            // it has no limit.
            let rel = tjoin("tokenizer.json");
            if let Some(tj) = read_json(dir, &rel)? {
                if let Some(n) =
                    tj.pointer("/truncation/max_length").and_then(|v| v.as_u64()).filter(|n| *n > 0)
                {
                    max_seq_length = Some((n as usize, format!("{rel}'s truncation")));
                }
            }
        }
        if max_seq_length.is_none() && !static_embedding {
            // NOTE: sentence-transformers ≥ 5 saves max_seq_length as the tokenizer's
            // model_max_length; transformers writes ~1e30 there for "no limit".
            let rel = tjoin("tokenizer_config.json");
            if let Some(tc) = read_json(dir, &rel)? {
                if let Some(n) =
                    tc.get("model_max_length").and_then(|v| v.as_f64()).filter(|n| *n >= 1.0 && *n < 1e9)
                {
                    max_seq_length = Some((n as usize, rel.clone()));
                    files.push(rel);
                }
            }
        }
        let mut prompts = BTreeMap::new();
        let mut default_prompt_name = None;
        if let Some(c) = read_json(dir, "config_sentence_transformers.json")? {
            files.push("config_sentence_transformers.json".into());
            if let Some(p) = c.get("prompts").and_then(|p| p.as_object()) {
                for (name, text) in p {
                    if let Some(t) = text.as_str() {
                        prompts.insert(name.clone(), t.to_string());
                    }
                }
            }
            default_prompt_name = c.get("default_prompt_name").and_then(|v| v.as_str()).map(String::from);
            if let Some(name) = &default_prompt_name {
                if !prompts.contains_key(name) {
                    bail!(
                        "{}: default_prompt_name \"{name}\" is not among its prompts ({})",
                        dir.join("config_sentence_transformers.json").display(),
                        prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        Ok(Some(SentenceTransformers {
            transformer_path,
            static_embedding,
            pooling,
            pooling_source,
            dense,
            normalize,
            max_seq_length,
            do_lower_case,
            prompts,
            default_prompt_name,
            files,
        }))
    }
}

/// `1_Pooling/config.json`: `pooling_mode` (a name or a list, sentence-transformers ≥ 6), else
/// the `pooling_mode_*` booleans in their concatenation order (none set means mean).
fn pooling_from_config(json: &serde_json::Value) -> Result<Pooling> {
    let include_prompt = json.get("include_prompt").and_then(|v| v.as_bool()).unwrap_or(true);
    let names: Vec<String> = match json.get("pooling_mode") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        Some(other) => bail!("pooling_mode {other} is neither a name nor a list of names"),
        None => {
            // NOTE: the order sentence-transformers concatenates the legacy modes in.
            let legacy = [
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_max_tokens", "max"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                ("pooling_mode_weightedmean_tokens", "weightedmean"),
                ("pooling_mode_lasttoken", "lasttoken"),
            ];
            let on: Vec<String> = legacy
                .iter()
                .filter(|(k, _)| json.get(*k).and_then(|v| v.as_bool()).unwrap_or(false))
                .map(|(_, n)| n.to_string())
                .collect();
            if on.is_empty() {
                vec!["mean".to_string()]
            } else {
                on
            }
        }
    };
    if names.is_empty() {
        bail!("pooling_mode lists no mode");
    }
    let modes = names
        .iter()
        .map(|n| {
            PoolingMode::from_st_name(n).with_context(|| {
                format!("pooling mode \"{n}\" is not known (cls, mean, max, mean_sqrt_len_tokens, weightedmean, lasttoken)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Pooling { modes, include_prompt })
}

/// A Dense module's `config.json` and where its weights are.
fn dense_module(dir: &Path, path: &str) -> Result<DenseModule> {
    let join = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}/{name}") };
    let rel = join("config.json");
    let shown = dir.join(&rel);
    let json = read_json(dir, &rel)?.with_context(|| {
        format!("{} is missing (modules.json names a Dense module there)", shown.display())
    })?;
    let at = |what: &str| format!("{}: {what}", shown.display());
    let features = |key: &str| -> Result<usize> {
        json.get(key)
            .and_then(|v| v.as_u64())
            .map(|n| n as usize)
            .with_context(|| at(&format!("no \"{key}\"")))
    };
    for key in ["module_input_name", "module_output_name"] {
        if let Some(name) = json.get(key).and_then(|v| v.as_str()) {
            if name != "sentence_embedding" {
                bail!(
                    "{}",
                    at(&format!("{key} \"{name}\": only Dense layers over the pooled vector are supported"))
                );
            }
        }
    }
    // NOTE: sentence-transformers' Dense defaults to Tanh when the config names no activation.
    let activation = match json.get("activation_function").and_then(|v| v.as_str()) {
        None => Activation::Tanh,
        Some(name) => dense_activation(name).with_context(|| {
            at(&format!("activation \"{name}\" is not supported (Identity, Tanh, ReLU, GELU, SiLU, Sigmoid)"))
        })?,
    };
    let weights = if dir.join(join("model.safetensors")).is_file() {
        join("model.safetensors")
    } else if dir.join(join("pytorch_model.bin")).is_file() {
        join("pytorch_model.bin")
    } else {
        bail!("{} has no model.safetensors or pytorch_model.bin", dir.join(path).display());
    };
    Ok(DenseModule {
        path: path.to_string(),
        in_features: features("in_features")?,
        out_features: features("out_features")?,
        bias: json.get("bias").and_then(|v| v.as_bool()).unwrap_or(true),
        activation,
        use_residual: json.get("use_residual").and_then(|v| v.as_bool()).unwrap_or(false),
        weights,
    })
}

/// torch's module paths for the activations sentence-transformers' Dense takes.
fn dense_activation(name: &str) -> Option<Activation> {
    let short = name.rsplit('.').next()?;
    if !name.starts_with("torch.") {
        return None;
    }
    Some(match short {
        "Identity" => Activation::Identity,
        "Tanh" => Activation::Tanh,
        "ReLU" => Activation::Relu,
        "GELU" => Activation::Gelu,
        "SiLU" => Activation::Silu,
        "Sigmoid" => Activation::Sigmoid,
        _ => return None,
    })
}

/// The weights file of a Dense module as a full path.
pub fn dense_weights(dir: &Path, module: &DenseModule) -> PathBuf {
    dir.join(&module.weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const MODULES: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn reads_the_modules_and_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "modules.json", MODULES);
        write(
            d,
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#,
        );
        write(
            d,
            "2_Dense/config.json",
            r#"{"in_features": 16, "out_features": 4, "bias": false, "activation_function": "torch.nn.modules.linear.Identity"}"#,
        );
        write(d, "2_Dense/pytorch_model.bin", "x");
        write(d, "sentence_bert_config.json", r#"{"max_seq_length": 128, "do_lower_case": true}"#);
        write(
            d,
            "config_sentence_transformers.json",
            r#"{"prompts": {"query": "q: ", "doc": ""}, "default_prompt_name": "query"}"#,
        );
        let st = SentenceTransformers::read(d).unwrap().unwrap();
        assert_eq!(st.pooling.modes, [PoolingMode::Cls, PoolingMode::Mean]);
        assert!(st.pooling.include_prompt && st.normalize && st.do_lower_case);
        assert_eq!(st.max_seq_length, Some((128, "sentence_bert_config.json".to_string())));
        assert_eq!(st.dense.len(), 1);
        assert_eq!(st.dense[0].describe(), "16->4 identity");
        assert_eq!(st.dense[0].weights, "2_Dense/pytorch_model.bin");
        assert_eq!(st.default_prompt_name.as_deref(), Some("query"));
        assert_eq!(st.prompts["query"], "q: ");
        let exists = |f: &str| d.join(f).is_file();
        assert_eq!(
            needed_files(MODULES, &exists).unwrap(),
            [
                "sentence_bert_config.json",
                "tokenizer_config.json",
                "1_Pooling/config.json",
                "2_Dense/config.json",
                "2_Dense/pytorch_model.bin"
            ]
        );
        // A plain transformers folder.
        assert!(SentenceTransformers::read(&d.join("1_Pooling")).unwrap().is_none());
    }

    #[test]
    fn the_new_pooling_keys_and_the_tokenizer_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "modules.json", &MODULES.replace(",\n        {\"idx\": 2, \"name\": \"2\", \"path\": \"2_Dense\", \"type\": \"sentence_transformers.base.modules.dense.Dense\"}", ""));
        write(
            d,
            "1_Pooling/config.json",
            r#"{"embedding_dimension": 8, "pooling_mode": "lasttoken", "include_prompt": false}"#,
        );
        write(d, "tokenizer_config.json", r#"{"model_max_length": 64}"#);
        let st = SentenceTransformers::read(d).unwrap().unwrap();
        assert_eq!(st.pooling, Pooling { modes: vec![PoolingMode::LastToken], include_prompt: false });
        assert_eq!(st.max_seq_length, Some((64, "tokenizer_config.json".to_string())));
        assert!(st.dense.is_empty() && st.normalize);
        write(d, "tokenizer_config.json", r#"{"model_max_length": 1000000000000000019884624838656}"#);
        assert_eq!(SentenceTransformers::read(d).unwrap().unwrap().max_seq_length, None);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "1_Pooling/config.json", r#"{"pooling_mode": "mean"}"#);
        for (modules, expect) in [
            (
                r#"[{"path": "", "type": "sentence_transformers.models.Transformer"}, {"path": "1", "type": "sentence_transformers.models.LSTM"}]"#,
                "LSTM",
            ),
            (r#"[{"path": "", "type": "my_package.CustomPooling"}]"#, "custom code"),
            (r#"[{"path": "", "type": "sentence_transformers.models.Transformer"}]"#, "no Pooling"),
            (r#"[{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#, "first module"),
            (
                r#"[{"path": "", "type": "sentence_transformers.models.StaticEmbedding"}, {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
                "a Pooling module after StaticEmbedding",
            ),
            (
                r#"[{"path": "", "type": "sentence_transformers.models.Transformer"}, {"path": "", "type": "sentence_transformers.models.StaticEmbedding"}]"#,
                "the StaticEmbedding module must come first",
            ),
        ] {
            write(d, "modules.json", modules);
            let err = format!("{:#}", SentenceTransformers::read(d).unwrap_err());
            assert!(err.contains(expect), "{err}");
        }
        write(d, "modules.json", &MODULES.replace("2_Dense", "2_Missing"));
        let err = format!("{:#}", SentenceTransformers::read(d).unwrap_err());
        assert!(err.contains("2_Missing/config.json is missing"), "{err}");
    }

    #[test]
    fn a_static_embedding_module_pools_itself_and_keeps_its_tokenizer_s_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // model2vec writes the folder itself as ".".
        write(
            d,
            "modules.json",
            r#"[{"path": ".", "type": "sentence_transformers.models.StaticEmbedding"},
                {"path": "1_Normalize", "type": "sentence_transformers.models.Normalize"}]"#,
        );
        write(d, "tokenizer.json", r#"{"truncation": {"max_length": 128, "direction": "Right"}}"#);
        let st = SentenceTransformers::read(d).unwrap().unwrap();
        assert!(st.static_embedding && st.normalize);
        assert_eq!(st.transformer_path, "");
        assert_eq!(
            (st.pooling.clone(), st.pooling_source.as_str()),
            (Pooling::new(PoolingMode::Mean), "StaticEmbedding")
        );
        assert_eq!(st.max_seq_length, Some((128, "tokenizer.json's truncation".to_string())));
        write(d, "tokenizer.json", r#"{"truncation": null}"#);
        assert_eq!(SentenceTransformers::read(d).unwrap().unwrap().max_seq_length, None, "no limit");
        let modules = std::fs::read_to_string(d.join("modules.json")).unwrap();
        assert_eq!(transformer_path(&modules).unwrap(), (String::new(), true));
    }
}
