//! The embedding model: reading a model directory (a plain transformers folder or a
//! sentence-transformers one), picking the architecture from `config.json`, and the small trait
//! the rest of the program calls.
//!
//! Callers hand the model plain data (a [`Batch`] of flat token ids with per-text offsets) and the
//! token rows the pooling reads, and get those rows' final states back as f32. How the model lays
//! the batch out internally (packed per-text attention on the CPU, a padded rectangle elsewhere)
//! is its own business.

mod attention;
mod bert;
mod config;
mod cpu_ops;
mod dense;
mod distilbert;
mod encoder;
mod fast_math;
mod gemma3;
mod gte;
pub mod hub;
mod layers;
mod llama;
mod modernbert;
mod mpnet;
mod nomic_bert;
mod qwen2;
mod qwen3;
mod rotary_bert;
pub mod sentence_transformers;
pub mod source;
mod static_embedding;
mod varlen_cpu;
mod weights;
mod xlm_roberta;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::batch::Batch;
pub use attention::MAX_ATTENTION_ELEMENTS;
pub use config::{Activation, Architecture, ModelConfig};
pub use dense::Dense;
pub use sentence_transformers::SentenceTransformers;

/// Causal or bidirectional self-attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    Causal,
    Bidirectional,
}

impl Attention {
    pub fn as_str(self) -> &'static str {
        match self {
            Attention::Causal => "causal",
            Attention::Bidirectional => "bidirectional",
        }
    }
}

/// How attention is computed; both give the same vectors (within float rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionImpl {
    /// Packed on the CPU in f32, padded elsewhere.
    #[default]
    Auto,
    /// Gather q/k/v into a right-padded rectangle and mask (what runs on CUDA).
    Padded,
    /// Per-text attention over the packed tokens (CPU, f32 only).
    Packed,
}

/// What every architecture offers to the pipeline.
pub trait EmbeddingModel: Send + Sync {
    /// The final hidden states (after the last norm) of `batch`, as f32: the packed token rows
    /// `rows` in that order (`[rows.len(), hidden]`), or every token (`[tokens, hidden]`) when
    /// `rows` is `None`.
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> candle_core::Result<Tensor>;
    /// Width of the states `forward` returns.
    fn hidden_size(&self) -> usize;
    /// Attention heads (what the padded attention's score tensors are made of).
    fn attention_heads(&self) -> usize;
    /// Computes padded attention in pieces of at most `elements` score elements (memory); the
    /// kernels' own limit, [`MAX_ATTENTION_ELEMENTS`], always applies.
    fn limit_attention(&self, _elements: usize) {}
}

/// A stand-in that computes no model: the bench hook `--debug-noop-model`, to measure the
/// pipeline alone. A token's state is pseudo-random, decided by the text's ids up to it, so
/// a text always gets the same vector (repeats, reuse and resume behave as with a model) and
/// the vectors are as hard to compress as real ones (zeros would make writing parts look free).
/// NOTE: a state is a window of a fixed table of random values, moved by a per-row constant:
/// making 896 random values per row took a twentieth of a chunked run, which is the stand-in's
/// cost, not the pipeline's.
struct FakeModel {
    hidden: usize,
    heads: usize,
    device: Device,
}

impl EmbeddingModel for FakeModel {
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> candle_core::Result<Tensor> {
        // splitmix64: a cheap, well-mixed step.
        let mix = |x: u64| {
            let x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        let mut prefix = vec![0u64; batch.input_ids.len()];
        for i in 0..batch.len() {
            let (start, len) = batch.span(i);
            let mut h = 0u64;
            for (state, &id) in
                prefix[start..start + len].iter_mut().zip(&batch.input_ids[start..start + len])
            {
                h = mix(h ^ u64::from(id));
                *state = h;
            }
        }
        let all: Vec<u32>;
        let rows = match rows {
            Some(r) => r,
            None => {
                all = (0..batch.input_ids.len() as u32).collect();
                &all
            }
        };
        static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
        let table = TABLE.get_or_init(|| {
            let mut x = 0u64;
            (0..1 << 16)
                .map(|_| {
                    x = mix(x);
                    (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        });
        let mut values = Vec::with_capacity(rows.len() * self.hidden);
        for &r in rows {
            let x = mix(prefix[r as usize]);
            let shift = (x >> 40) as f32 / (1u64 << 24) as f32;
            let mut at = (x as usize) % table.len();
            let mut left = self.hidden;
            while left > 0 {
                let n = left.min(table.len() - at);
                values.extend(table[at..at + n].iter().map(|v| v + shift));
                left -= n;
                at = 0;
            }
        }
        Tensor::from_vec(values, (rows.len(), self.hidden), &self.device)
    }

    fn hidden_size(&self) -> usize {
        self.hidden
    }

    fn attention_heads(&self) -> usize {
        self.heads
    }
}

/// The files of a model directory, found and checked before anything heavy is read.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The model folder (a sentence-transformers folder's top, where `modules.json` is).
    pub dir: PathBuf,
    /// `config.json` (for a StaticEmbedding model, which has none, the `modules.json` naming it).
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
    /// `model.safetensors.index.json` (or `pytorch_model.bin.index.json`) when the weights are
    /// sharded.
    pub index: Option<PathBuf>,
    /// What `modules.json` and the files it names say, for a sentence-transformers folder.
    pub sentence_transformers: Option<SentenceTransformers>,
}

impl ModelFiles {
    pub fn locate(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            anyhow::bail!("model directory {} does not exist or is not a directory", dir.display());
        }
        let st = SentenceTransformers::read(dir)?;
        // NOTE: older sentence-transformers folders keep the transformer in a subfolder
        // (`0_Transformer/`), which modules.json names.
        let model_dir = match &st {
            Some(st) if !st.transformer_path.is_empty() => dir.join(&st.transformer_path),
            _ => dir.to_path_buf(),
        };
        let is_static = st.as_ref().is_some_and(|st| st.static_embedding);
        // NOTE: a StaticEmbedding module has no config.json; modules.json, which names it, stands
        // for it (in the hash, and in messages).
        let config = match is_static {
            true => dir.join("modules.json"),
            false => model_dir.join("config.json"),
        };
        let mut tokenizer = model_dir.join("tokenizer.json");
        if !config.is_file() {
            anyhow::bail!("{} is missing from the model directory", config.display());
        }
        let slow_class = match tokenizer.is_file() {
            true => Ok(None),
            false => crate::tokenize::from_vocab::slow_class(&model_dir),
        };
        if let Ok(Some(_)) = slow_class {
            // NOTE: older BERT-family checkpoints ship only the slow tokenizer's vocab.txt, which
            // transformers converts to the fast tokenizer; tokenize/from_vocab.rs does the same.
            tokenizer = model_dir.join(crate::tokenize::from_vocab::VOCAB);
        }
        if !tokenizer.is_file() {
            // NOTE: older checkpoints ship only the slow tokenizer's files; transformers converts
            // them to the fast tokenizer that tokenizer.json holds.
            let slow: Vec<&str> =
                ["vocab.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.json"]
                    .into_iter()
                    .filter(|f| model_dir.join(f).is_file())
                    .collect();
            let how = "batch-embed reads the fast tokenizer's tokenizer.json; make it once with Python's transformers: \
                       AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)";
            let how = match slow_class {
                Err(e) => format!("{e}; {how}"),
                _ => how.to_string(),
            };
            match slow.is_empty() {
                true => anyhow::bail!("{} is missing from the model directory; {how}", tokenizer.display()),
                false => anyhow::bail!(
                    "{} is missing from the model directory, which has only the slow tokenizer's {}; {how}",
                    tokenizer.display(),
                    slow.join(", ")
                ),
            }
        }
        let (weights, index) = weights::locate(&model_dir)?;
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            weights,
            index,
            sentence_transformers: st,
        })
    }

    /// A hash of what identifies the model's computation: config.json, tokenizer.json (or vocab.txt
    /// and the slow tokenizer's configs) and the
    /// weights' index or safetensors headers (names, dtypes, shapes, offsets) and sizes, not the
    /// weight bytes, so it is quick for a 15 GB model; then, for a sentence-transformers
    /// folder, every file of its modules (configs whole, Dense weights by header, or whole for
    /// `pytorch_model.bin`). 32 hex digits.
    pub fn content_hash(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for f in [Some(&self.config), Some(&self.tokenizer), self.index.as_ref()].into_iter().flatten() {
            h.update(std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?);
        }
        // A tokenizer built from vocab.txt also follows the slow tokenizer's config files.
        if self.tokenizer.file_name().is_some_and(|n| n == crate::tokenize::from_vocab::VOCAB) {
            let dir = self.tokenizer.parent().unwrap_or(Path::new("."));
            for name in ["tokenizer_config.json", "special_tokens_map.json"] {
                if let Ok(bytes) = std::fs::read(dir.join(name)) {
                    h.update(name.as_bytes());
                    h.update(bytes);
                }
            }
        }
        for w in &self.weights {
            h.update(weights::identity(w)?);
        }
        // NOTE: appended after the files every model has, so a plain folder's hash is what it
        // was before sentence-transformers folders were read.
        for rel in self.sentence_transformers.iter().flat_map(|st| &st.files) {
            let f = self.dir.join(rel);
            h.update(rel.as_bytes());
            if rel.ends_with(".safetensors") {
                h.update(weights::identity(&f)?);
            } else {
                h.update(std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?);
            }
        }
        Ok(crate::run_spec::hex16(&h.finalize()))
    }

    /// The model is a sentence-transformers StaticEmbedding (a token-embedding table).
    pub fn is_static(&self) -> bool {
        self.sentence_transformers.as_ref().is_some_and(|st| st.static_embedding)
    }

    /// The sentence-transformers pipeline's Dense modules (none for a plain folder).
    pub fn dense_modules(&self) -> &[sentence_transformers::DenseModule] {
        self.sentence_transformers.as_ref().map_or(&[], |st| &st.dense)
    }
}

/// A loaded model with what the pipeline needs to know about it.
pub struct LoadedModel {
    pub model: Box<dyn EmbeddingModel>,
    /// Attention runs on packed tokens: padding costs nothing.
    pub packed: bool,
    pub config: ModelConfig,
    pub attention: Attention,
    pub dtype: DType,
    pub device: Device,
}

impl LoadedModel {
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Loads the weights of `files` for `config` onto `device`.
///
/// `attention` is the mode in force: the user's override, or `config.default_attention()`.
pub fn load(
    files: &ModelFiles,
    config: &ModelConfig,
    attention: Attention,
    kernel: AttentionImpl,
    dtype: DType,
    device: &Device,
) -> Result<LoadedModel> {
    let cpu_f32 = device.is_cpu() && dtype == DType::F32;
    let packed = match kernel {
        AttentionImpl::Auto => cpu_f32,
        AttentionImpl::Padded => false,
        AttentionImpl::Packed if cpu_f32 => true,
        AttentionImpl::Packed => anyhow::bail!("packed attention runs only on the CPU in f32"),
    };
    if config.architecture.is_encoder() && attention == Attention::Causal {
        anyhow::bail!(
            "{} is a bidirectional encoder; causal attention is not defined for it",
            config.architecture.as_str()
        );
    }
    let context = || format!("loading the weights of {}", files.dir.display());
    // NOTE: hub checkpoints name tensors with the task model's prefix (`model.` for
    // Qwen2ForCausalLM and ModernBertForMaskedLM, `bert.`/`distilbert.`/`roberta.` for the
    // masked-LM encoders), while `*Model.save_pretrained` (and sentence-transformers) write none.
    let model: Box<dyn EmbeddingModel> = match config.architecture {
        Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Llama | Architecture::Mistral => {
            let vb = weights::var_builder(files, dtype, device, "embed_tokens.weight", &["model.", ""])?;
            let opts =
                layers::DecoderOptions { qk_norm: false, causal: attention == Attention::Causal, packed };
            match config.architecture {
                Architecture::Qwen2 => Box::new(qwen2::load(config, vb, opts).with_context(context)?),
                Architecture::Llama | Architecture::Mistral => {
                    Box::new(llama::load(config, vb, opts).with_context(context)?)
                }
                _ => Box::new(qwen3::load(config, vb, opts).with_context(context)?),
            }
        }
        Architecture::Gemma3 => {
            let vb = weights::var_builder(files, dtype, device, "embed_tokens.weight", &["", "model."])?;
            let opts =
                layers::DecoderOptions { qk_norm: true, causal: attention == Attention::Causal, packed };
            Box::new(gemma3::load(config, vb, opts).with_context(context)?)
        }
        Architecture::Bert => {
            let anchor = "embeddings.word_embeddings.weight";
            let vb = weights::var_builder(files, dtype, device, anchor, &["", "bert."])?;
            Box::new(bert::load(config, vb, packed).with_context(context)?)
        }
        Architecture::DistilBert => {
            let anchor = "embeddings.word_embeddings.weight";
            let vb = weights::var_builder(files, dtype, device, anchor, &["", "distilbert."])?;
            Box::new(distilbert::load(config, vb, packed).with_context(context)?)
        }
        Architecture::MpNet => {
            let anchor = "embeddings.word_embeddings.weight";
            let vb = weights::var_builder(files, dtype, device, anchor, &["", "mpnet."])?;
            Box::new(mpnet::load(config, vb, packed).with_context(context)?)
        }
        Architecture::XlmRoberta => {
            let anchor = "embeddings.word_embeddings.weight";
            let vb = weights::var_builder(files, dtype, device, anchor, &["", "roberta.", "xlm-roberta."])?;
            Box::new(xlm_roberta::load(config, vb, packed).with_context(context)?)
        }
        Architecture::ModernBert => {
            let anchor = "embeddings.tok_embeddings.weight";
            let vb = weights::var_builder(files, dtype, device, anchor, &["", "model."])?;
            Box::new(modernbert::load(config, vb, packed).with_context(context)?)
        }
        Architecture::NomicBert => {
            let anchor = "embeddings.word_embeddings.weight";
            let vb = weights::var_builder(files, dtype, device, anchor, &["", "bert.", "model."])?;
            Box::new(nomic_bert::load(config, vb, packed).with_context(context)?)
        }
        Architecture::GteNew => {
            let anchor = "embeddings.word_embeddings.weight";
            let vb = weights::var_builder(files, dtype, device, anchor, &["", "new."])?;
            Box::new(gte::load(config, vb, packed).with_context(context)?)
        }
        // NOTE: a lookup table has no attention to pack or pad; its rows stay f32 (a mean of
        // a few hundred rows gains nothing from bf16).
        Architecture::Static => Box::new(static_embedding::load(files, device).with_context(context)?),
    };
    // A table lookup has no attention: never bounded by the padded path's score elements.
    let packed = packed || config.architecture == Architecture::Static;
    Ok(LoadedModel { model, packed, config: config.clone(), attention, dtype, device: device.clone() })
}

/// The Dense modules of a sentence-transformers folder (none for a plain folder), the first
/// one checked against the pooled width `pooled`.
pub fn load_dense(files: &ModelFiles, pooled: usize, device: &Device) -> Result<Vec<Dense>> {
    dense::load_all(&files.dir, files.dense_modules(), pooled, device)
}

/// A model of `config`'s width that computes nothing (pseudo-random vectors): the pipeline alone.
pub fn fake(config: &ModelConfig, attention: Attention, device: &Device) -> LoadedModel {
    let model = Box::new(FakeModel {
        hidden: config.hidden_size,
        heads: config.num_attention_heads,
        device: device.clone(),
    });
    LoadedModel {
        model,
        packed: true,
        config: config.clone(),
        attention,
        dtype: DType::F32,
        device: device.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::ModelFiles;

    #[test]
    fn a_folder_with_only_the_slow_tokenizer_says_how_to_make_tokenizer_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = format!("{:#}", ModelFiles::locate(dir.path()).unwrap_err());
        assert!(err.contains("tokenizer.json is missing") && err.contains("save_pretrained"), "{err}");
        std::fs::write(dir.path().join("sentencepiece.bpe.model"), "").unwrap();
        let err = format!("{:#}", ModelFiles::locate(dir.path()).unwrap_err());
        assert!(err.contains("has only the slow tokenizer's sentencepiece.bpe.model"), "{err}");
        // A vocab.txt of a kind tokenize/from_vocab.rs does not build.
        std::fs::write(dir.path().join("vocab.txt"), "[PAD]\n").unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"tokenizer_class": "XLNetTokenizer"}"#)
            .unwrap();
        let err = format!("{:#}", ModelFiles::locate(dir.path()).unwrap_err());
        assert!(err.contains("its tokenizer is XLNetTokenizer") && err.contains("save_pretrained"), "{err}");
    }
}
