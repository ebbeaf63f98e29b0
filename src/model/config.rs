//! `config.json` as users have it: the transformers 4.x shape (top-level `rope_theta`,
//! `torch_dtype`, numeric `sliding_window`) and the 5.x shape (`rope_parameters`, `dtype`,
//! `layer_types`, `sliding_window: null`), read into one validated [`ModelConfig`]: the
//! decoders (Qwen2, Qwen3, Llama, Mistral) here, Gemma 3 in config/gemma3.rs, the BERT-family
//! encoders (BERT, DistilBERT, MPNet, XLM-RoBERTa, ModernBERT) in config/encoder.rs.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::Attention;
pub use encoder::EncoderConfig;
use encoder::{distilbert_keys, encoder_config};

mod encoder;
mod gemma3;
pub mod gte;
pub mod nomic;

/// The architectures this build can run, keyed by `config.json`'s `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// gte-Qwen2-1.5B/7B-instruct: q/k/v biases, grouped-query attention.
    Qwen2,
    /// Qwen3-Embedding: per-head RMSNorm on q and k, explicit `head_dim`, no q/k/v bias.
    Qwen3,
    /// Llama (LLM2Vec's Llama 3, Llama-based embedders): Qwen2's decoder without q/k/v biases
    /// unless `attention_bias` says so.
    Llama,
    /// Mistral (e5-mistral-7b-instruct, SFR-Embedding-Mistral, Linq-Embed-Mistral): Llama's
    /// decoder with no biases at all, its `sliding_window` applying to every layer.
    Mistral,
    /// Gemma 3 (EmbeddingGemma): sandwich norms, q/k norms, sliding-window and full layers with
    /// their own rotary bases, bidirectional where `use_bidirectional_attention` says so.
    Gemma3,
    /// BERT (BGE, E5, all-MiniLM, classic GTE): absolute positions, post-norm layers.
    Bert,
    /// MPNet (all-mpnet-base-v2, multi-qa-mpnet-base): BERT's layers plus a learned relative
    /// position bias on the attention scores, positions from `pad + 1` as in XLM-R.
    MpNet,
    /// DistilBERT (msmarco-distilbert, multi-qa-distilbert, distiluse-base-multilingual): BERT's
    /// layers under other names, no token types.
    DistilBert,
    /// XLM-RoBERTa and RoBERTa (multilingual-e5, bge-m3's dense vectors): BERT with positions
    /// counted from `pad_token_id + 1`.
    XlmRoberta,
    /// ModernBERT (gte-modernbert, modernbert-embed): rotary, pre-norm, GeGLU, alternating
    /// global and sliding-window attention.
    ModernBert,
    /// NomicBERT (nomic-embed-text-v1/v1.5): BERT's post-norm layers with a fused qkv, rotary
    /// positions, no biases and a SwiGLU MLP, in GPT-2's config keys.
    NomicBert,
    /// GTE's "new" model (gte-base/large-en-v1.5, gte-multilingual-base, arctic-embed v2):
    /// NomicBERT's kind of layers with biases, a fused up/gate MLP and NTK-scaled rotary positions.
    GteNew,
    /// A sentence-transformers StaticEmbedding (static-retrieval-mrl, model2vec's potion
    /// models): a token-embedding table, no layers; a text's vector is the mean of its rows.
    Static,
}

const SUPPORTED: &str =
    "qwen2, qwen3, llama, mistral, gemma3_text, bert, distilbert, mpnet, xlm-roberta, roberta, camembert, modernbert, nomic_bert, new (GTE)";

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Gemma3 => "gemma3",
            Architecture::Bert => "bert",
            Architecture::DistilBert => "distilbert",
            Architecture::MpNet => "mpnet",
            Architecture::XlmRoberta => "xlm-roberta",
            Architecture::ModernBert => "modernbert",
            Architecture::NomicBert => "nomic_bert",
            Architecture::GteNew => "new",
            Architecture::Static => "static",
        }
    }

    /// A bidirectional encoder (its attention is never causal).
    pub fn is_encoder(self) -> bool {
        matches!(
            self,
            Architecture::Bert
                | Architecture::DistilBert
                | Architecture::MpNet
                | Architecture::XlmRoberta
                | Architecture::ModernBert
                | Architecture::NomicBert
                | Architecture::GteNew
                | Architecture::Static
        )
    }
}

/// An element-wise activation, as `config.json` (`hidden_act`) or a sentence-transformers Dense
/// module (`activation_function`) names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Tanh,
    Relu,
    /// The exact GELU, `x · Φ(x)` with the error function (transformers' "gelu").
    Gelu,
    /// The tanh approximation of GELU ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh,
    Silu,
    Sigmoid,
}

impl Activation {
    /// transformers' `hidden_act` names.
    pub fn from_hidden_act(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            "linear" | "identity" => Activation::Identity,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
        }
    }

    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Identity => Ok(x.clone()),
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Silu => x.silu(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
        }
    }
}

/// The validated model configuration the layers are built from.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Whether q/k/v projections carry a bias.
    pub attention_bias: bool,
    /// Whether the attention's output projection carries one too (Llama's and Qwen3's
    /// `attention_bias`; never in Qwen2).
    pub output_bias: bool,
    /// `is_causal` from the file; absent means causal (as transformers and TEI read it).
    pub is_causal: Option<bool>,
    /// Texts longer than this would reach a sliding-window layer, which this build does not
    /// implement; `None` when every layer attends to the full text.
    pub sliding_window: Option<usize>,
    /// The encoders' settings (`None` for the Qwen decoders).
    pub encoder: Option<EncoderConfig>,
    /// Gemma 3's own settings (`None` for every other architecture).
    pub gemma: Option<gemma3::GemmaConfig>,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<RopeParameters>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    is_causal: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    /// The 4.x spelling of `rope_type`.
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

/// How the rotary frequencies are rescaled for contexts longer than the model was trained on
/// (`rope_type` in `rope_parameters` or `rope_scaling`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every frequency divided by `factor` (positions interpolated).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's: wavelengths above `original / low_freq_factor` divided by `factor`, below
    /// `original / high_freq_factor` kept, and blended in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original: f64,
    },
    /// GTE's fixed NTK scaling (`{"type": "ntk", "factor": f}`): the base times `f` and every
    /// frequency divided by `f^(2/d)`; with `mixed_b`, the base kept and frequency `k` (from 1)
    /// divided by `exp(ln f · (k / (d/2))^b)`.
    Ntk {
        factor: f64,
        mixed_b: Option<f64>,
    },
}

impl RopeParameters {
    fn scaling(&self) -> Result<RopeScaling> {
        let kind = self.rope_type.as_deref().or(self.kind.as_deref()).unwrap_or("default");
        let need = |v: Option<f64>, key: &str| {
            v.filter(|x| x.is_finite() && *x > 0.0)
                .with_context(|| format!("rope scaling \"{kind}\" needs a positive \"{key}\""))
        };
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need(self.factor, "factor")? },
            "llama3" => {
                let (low, high) =
                    (need(self.low_freq_factor, "low_freq_factor")?, need(self.high_freq_factor, "high_freq_factor")?);
                if high <= low {
                    bail!("rope scaling \"llama3\" needs high_freq_factor ({high}) above low_freq_factor ({low})");
                }
                RopeScaling::Llama3 {
                    factor: need(self.factor, "factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original: need(self.original_max_position_embeddings, "original_max_position_embeddings")?,
                }
            }
            other => bail!(
                "rope scaling \"{other}\" is not supported (the default rotary embedding, linear and llama3 are)"
            ),
        })
    }
}

impl ModelConfig {
    /// The configuration of the model in `files`: its `config.json`, or for a static-embedding
    /// model (which has none) what its table's shape says.
    pub fn load(files: &super::ModelFiles) -> Result<Self> {
        match files.is_static() {
            true => super::static_embedding::config(files),
            false => Self::from_file(&files.config),
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid model config {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        // Read `model_type` on its own first, so an unsupported model fails on that, not on
        // whichever field it happens to lack.
        let value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let architecture = match model_type {
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            // NOTE: transformers' RobertaModel, XLMRobertaModel and CamembertModel are one network.
            "bert" => return encoder_config(value, Architecture::Bert),
            "distilbert" => return encoder_config(distilbert_keys(value), Architecture::DistilBert),
            "gemma3_text" => return gemma3::config(value),
            "mpnet" => return encoder_config(value, Architecture::MpNet),
            "xlm-roberta" | "roberta" | "camembert" => {
                return encoder_config(value, Architecture::XlmRoberta)
            }
            "modernbert" => return encoder_config(value, Architecture::ModernBert),
            "nomic_bert" => return nomic::config(value),
            // NOTE: GTE's own model (Alibaba-NLP/new-impl); Snowflake's arctic-embed v2 names it "gte".
            "new" | "gte" => return gte::config(value),
            "" => bail!("config.json has no \"model_type\"; supported model types: {SUPPORTED}"),
            other => bail!("model_type \"{other}\" is not supported; supported model types: {SUPPORTED}"),
        };
        let raw: RawConfig = serde_json::from_value(value)?;

        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                bail!("hidden_act \"{act}\" is not supported (only silu)");
            }
        }
        // NOTE: 5.x names the scaling in rope_parameters, 4.x in rope_scaling; one of them is set.
        let mut rope_scaling = RopeScaling::None;
        for rope in [&raw.rope_parameters, &raw.rope_scaling].into_iter().flatten() {
            match rope.scaling()? {
                RopeScaling::None => {}
                s => rope_scaling = s,
            }
        }
        // NOTE: transformers 5 nests rope_theta in rope_parameters; 4.x keeps it top-level.
        let rope_theta =
            raw.rope_parameters.as_ref().and_then(|r| r.rope_theta).or(raw.rope_theta).unwrap_or(10_000.0);
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            bail!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            );
        }
        let head_dim = match (raw.head_dim, architecture) {
            (Some(d), _) => d,
            // NOTE: transformers' Qwen3Config defaults head_dim to 128, not hidden/heads.
            (None, Architecture::Qwen3) => 128,
            (None, _) => {
                if !raw.hidden_size.is_multiple_of(heads) {
                    bail!(
                        "hidden_size ({}) is not divisible by num_attention_heads ({heads}) and no head_dim is given",
                        raw.hidden_size
                    );
                }
                raw.hidden_size / heads
            }
        };
        if !head_dim.is_multiple_of(2) {
            bail!("head_dim ({head_dim}) must be even for rotary embeddings");
        }
        // NOTE: only transformers' Llama reads mlp_bias; Qwen's and Mistral's MLPs never have one.
        if architecture == Architecture::Llama && raw.mlp_bias == Some(true) {
            bail!("mlp_bias is not supported (the MLP's projections carry no bias here)");
        }
        let sliding_window = match architecture {
            // NOTE: Mistral has no use_sliding_window: a numeric window applies to every layer.
            Architecture::Mistral => raw.sliding_window,
            _ => sliding_limit(&raw),
        };
        // NOTE: transformers' Qwen2 always has q/k/v biases; Qwen3 and Llama read attention_bias
        // (default off); Mistral has none.
        let attention_bias = match architecture {
            Architecture::Mistral => false,
            Architecture::Qwen3 | Architecture::Llama => raw.attention_bias.unwrap_or(false),
            _ => true,
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            attention_bias,
            output_bias: attention_bias && architecture != Architecture::Qwen2,
            is_causal: raw.is_causal,
            sliding_window,
            encoder: None,
            gemma: None,
        })
    }

    /// The attention mode the config asks for: encoders are bidirectional.
    pub fn default_attention(&self) -> Attention {
        match self.is_causal {
            _ if self.architecture.is_encoder() => Attention::Bidirectional,
            Some(false) => Attention::Bidirectional,
            _ => Attention::Causal,
        }
    }

    /// The longest text the model accepts: `max_position_embeddings`, or the sliding window
    /// when some layer uses one; for XLM-R, the positions left after the `pad_token_id + 1`
    /// offset (512 of 514).
    pub fn max_tokens_limit(&self) -> usize {
        if matches!(self.architecture, Architecture::XlmRoberta | Architecture::MpNet) {
            let offset = self.encoder.as_ref().map_or(0, |e| e.pad_token_id as usize + 1);
            return self.max_position_embeddings.saturating_sub(offset).max(1);
        }
        match self.sliding_window {
            Some(w) => w.min(self.max_position_embeddings),
            None => self.max_position_embeddings,
        }
    }
}

/// The window of the first sliding-window layer, if any layer has one.
fn sliding_limit(raw: &RawConfig) -> Option<usize> {
    let window = raw.sliding_window?;
    if let Some(types) = &raw.layer_types {
        // NOTE: 5.x configs list each layer's kind; only "sliding_attention" layers use the window.
        return types.iter().any(|t| t == "sliding_attention").then_some(window);
    }
    // NOTE: 4.x Qwen2 uses the window only with use_sliding_window, from layer max_window_layers on.
    let used =
        raw.use_sliding_window.unwrap_or(false) && raw.max_window_layers.unwrap_or(0) < raw.num_hidden_layers;
    used.then_some(window)
}

#[cfg(test)]
mod tests;
