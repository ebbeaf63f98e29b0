//! `config.json` as users have it: the transformers 4.x shape (top-level `rope_theta`,
//! `torch_dtype`, numeric `sliding_window`) and the 5.x shape (`rope_parameters`, `dtype`,
//! `layer_types`, `sliding_window: null`), read into one validated [`ModelConfig`]: the
//! decoders (Qwen2, Qwen3, Llama, Mistral) and the BERT-family encoders (BERT, XLM-RoBERTa,
//! ModernBERT).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::Attention;

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
}

const SUPPORTED: &str =
    "qwen2, qwen3, llama, mistral, gemma3_text, bert, distilbert, mpnet, xlm-roberta, roberta, modernbert";

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

/// What the BERT-family encoders need beyond the common fields.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// BERT/XLM-R: rows of `token_type_embeddings` (row 0 is added to every token).
    pub type_vocab_size: usize,
    /// XLM-R: the padding id; positions start at `pad_token_id + 1`.
    pub pad_token_id: u32,
    /// MPNet: rows of `relative_attention_bias` (`relative_attention_num_buckets`).
    pub relative_buckets: usize,
    pub modernbert: Option<ModernBertConfig>,
}

/// ModernBERT's own settings.
#[derive(Clone, Debug)]
pub struct ModernBertConfig {
    pub global_rope_theta: f64,
    pub local_rope_theta: f64,
    /// A local layer's query sees keys at most this many positions away (`local_attention / 2`).
    pub window: usize,
    /// Per layer: global (full) attention, else the sliding window.
    pub global_layers: Vec<bool>,
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
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
            // NOTE: transformers' RobertaModel and XLMRobertaModel are the same network.
            "bert" => return encoder_config(value, Architecture::Bert),
            "distilbert" => return encoder_config(distilbert_keys(value), Architecture::DistilBert),
            "gemma3_text" => return gemma3::config(value),
            "mpnet" => return encoder_config(value, Architecture::MpNet),
            "xlm-roberta" | "roberta" => return encoder_config(value, Architecture::XlmRoberta),
            "modernbert" => return encoder_config(value, Architecture::ModernBert),
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

/// `config.json` of a BERT-family encoder.
#[derive(Deserialize)]
struct RawEncoderConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    // BERT / XLM-R
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    type_vocab_size: Option<usize>,
    pad_token_id: Option<u32>,
    position_embedding_type: Option<String>,
    is_decoder: Option<bool>,
    relative_attention_num_buckets: Option<usize>,
    // ModernBERT
    hidden_activation: Option<String>,
    norm_eps: Option<f64>,
    norm_bias: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    local_attention: Option<usize>,
    global_attn_every_n_layers: Option<usize>,
    global_rope_theta: Option<f64>,
    /// Absent (the default, 10,000) and `null` (the global base, in 4.x) differ.
    #[serde(default)]
    local_rope_theta: Option<serde_json::Value>,
    layer_types: Option<Vec<String>>,
    rope_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    rope_scaling: Option<RopeParameters>,
}

fn encoder_config(value: serde_json::Value, architecture: Architecture) -> Result<ModelConfig> {
    let raw: RawEncoderConfig = serde_json::from_value(value)?;
    let heads = raw.num_attention_heads;
    if heads == 0 || !raw.hidden_size.is_multiple_of(heads) {
        bail!("hidden_size ({}) is not divisible by num_attention_heads ({heads})", raw.hidden_size);
    }
    let head_dim = raw.hidden_size / heads;
    let act_name = match architecture {
        Architecture::ModernBert => raw.hidden_activation.as_deref().unwrap_or("gelu"),
        _ => raw.hidden_act.as_deref().unwrap_or("gelu"),
    };
    let activation = Activation::from_hidden_act(act_name).with_context(|| {
        format!("hidden activation \"{act_name}\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu)")
    })?;
    if raw.is_decoder == Some(true) {
        bail!("\"is_decoder\": true: a {} decoder is not an embedding encoder", architecture.as_str());
    }
    if let Some(kind) = raw.position_embedding_type.as_deref() {
        if kind != "absolute" {
            bail!("position_embedding_type \"{kind}\" is not supported (only absolute)");
        }
    }
    let modernbert = match architecture {
        Architecture::ModernBert => Some(modernbert_config(&raw, head_dim)?),
        _ => None,
    };
    let (eps, pad) = match architecture {
        Architecture::ModernBert => (raw.norm_eps.unwrap_or(1e-5), raw.pad_token_id.unwrap_or(0)),
        // NOTE: transformers' XLMRobertaConfig defaults pad_token_id to 1, BertConfig to 0.
        Architecture::XlmRoberta => (raw.layer_norm_eps.unwrap_or(1e-12), raw.pad_token_id.unwrap_or(1)),
        // NOTE: transformers' MPNetEmbeddings fixes its padding index at 1, whatever the file says.
        Architecture::MpNet => (raw.layer_norm_eps.unwrap_or(1e-12), 1),
        _ => (raw.layer_norm_eps.unwrap_or(1e-12), raw.pad_token_id.unwrap_or(0)),
    };
    Ok(ModelConfig {
        architecture,
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        intermediate_size: raw.intermediate_size,
        num_hidden_layers: raw.num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        max_position_embeddings: raw.max_position_embeddings,
        rms_norm_eps: eps,
        rope_theta: modernbert.as_ref().map_or(10_000.0, |m| m.global_rope_theta),
        rope_scaling: RopeScaling::None,
        attention_bias: modernbert.as_ref().is_none_or(|m| m.attention_bias),
        output_bias: modernbert.as_ref().is_none_or(|m| m.attention_bias),
        is_causal: Some(false),
        sliding_window: None,
        gemma: None,
        encoder: Some(EncoderConfig {
            layer_norm_eps: eps,
            activation,
            type_vocab_size: match architecture {
                Architecture::DistilBert | Architecture::MpNet => 0,
                Architecture::Bert => raw.type_vocab_size.unwrap_or(2),
                _ => raw.type_vocab_size.unwrap_or(1),
            },
            pad_token_id: pad,
            relative_buckets: raw.relative_attention_num_buckets.unwrap_or(32),
            modernbert,
        }),
    })
}

/// DistilBERT's `config.json` in BERT's key names (`dim`, `n_layers`, `n_heads`, `hidden_dim`,
/// `activation`); its LayerNorms' epsilon is fixed at 1e-12 in transformers, whatever the file has.
fn distilbert_keys(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        for (from, to) in [
            ("dim", "hidden_size"),
            ("n_layers", "num_hidden_layers"),
            ("n_heads", "num_attention_heads"),
            ("hidden_dim", "intermediate_size"),
            ("activation", "hidden_act"),
        ] {
            if let Some(v) = map.remove(from) {
                map.insert(to.to_string(), v);
            }
        }
        map.insert("layer_norm_eps".to_string(), serde_json::json!(1e-12));
    }
    value
}

/// ModernBERT's layer kinds and rotary bases, from the 4.x keys (`global_attn_every_n_layers`,
/// `global_rope_theta`, `local_rope_theta`) or the 5.x ones (`layer_types`, `rope_parameters`
/// per layer kind).
fn modernbert_config(raw: &RawEncoderConfig, head_dim: usize) -> Result<ModernBertConfig> {
    if !head_dim.is_multiple_of(2) {
        bail!("head_dim ({head_dim}) must be even for rotary embeddings");
    }
    if let Some(rope) = &raw.rope_scaling {
        let kind = rope.rope_type.as_deref().or(rope.kind.as_deref()).unwrap_or("default");
        if kind != "default" {
            bail!("rope scaling \"{kind}\" is not supported (only the default rotary embedding)");
        }
    }
    let theta_of = |kind: &str| -> Result<Option<f64>> {
        let Some(params) = raw.rope_parameters.as_ref().and_then(|p| p.get(kind)) else { return Ok(None) };
        let rope_type = params.get("rope_type").and_then(|t| t.as_str()).unwrap_or("default");
        if rope_type != "default" {
            bail!("rope scaling \"{rope_type}\" is not supported (only the default rotary embedding)");
        }
        Ok(params.get("rope_theta").and_then(|t| t.as_f64()))
    };
    // NOTE: ModernBERT's defaults: 160,000 for global layers, 10,000 for local ones; a null
    // local_rope_theta (4.x) means the local layers use the global base.
    let global = theta_of("full_attention")?.or(raw.global_rope_theta).unwrap_or(160_000.0);
    let local = match (theta_of("sliding_attention")?, &raw.local_rope_theta) {
        (Some(t), _) => t,
        (None, Some(serde_json::Value::Null)) => global,
        (None, Some(v)) => v.as_f64().context("local_rope_theta is not a number")?,
        (None, None) => 10_000.0,
    };
    let every = raw.global_attn_every_n_layers.unwrap_or(3).max(1);
    let global_layers = match &raw.layer_types {
        Some(types) => {
            if types.len() != raw.num_hidden_layers {
                bail!(
                    "layer_types lists {} layers, num_hidden_layers is {}",
                    types.len(),
                    raw.num_hidden_layers
                );
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(true),
                    "sliding_attention" => Ok(false),
                    other => {
                        bail!("layer type \"{other}\" is not supported (full_attention, sliding_attention)")
                    }
                })
                .collect::<Result<Vec<_>>>()?
        }
        None => (0..raw.num_hidden_layers).map(|i| i % every == 0).collect(),
    };
    Ok(ModernBertConfig {
        global_rope_theta: global,
        local_rope_theta: local,
        window: raw.local_attention.unwrap_or(128) / 2,
        global_layers,
        norm_bias: raw.norm_bias.unwrap_or(false),
        attention_bias: raw.attention_bias.unwrap_or(false),
        mlp_bias: raw.mlp_bias.unwrap_or(false),
    })
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

mod gemma3;
#[cfg(test)]
mod tests;
