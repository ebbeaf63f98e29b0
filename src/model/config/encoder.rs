//! The BERT-family encoders' `config.json` (BERT, DistilBERT's own key names, MPNet,
//! XLM-RoBERTa, ModernBERT in its 4.x and 5.x shapes) → [`ModelConfig`] with an
//! [`EncoderConfig`].

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{Activation, Architecture, ModelConfig, RopeParameters, RopeScaling};

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
    pub nomic: Option<super::nomic::NomicConfig>,
    pub gte: Option<super::gte::GteConfig>,
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

pub(super) fn encoder_config(value: serde_json::Value, architecture: Architecture) -> Result<ModelConfig> {
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
            nomic: None,
            gte: None,
        }),
    })
}

/// DistilBERT's `config.json` in BERT's key names (`dim`, `n_layers`, `n_heads`, `hidden_dim`,
/// `activation`); its LayerNorms' epsilon is fixed at 1e-12 in transformers, whatever the file has.
pub(super) fn distilbert_keys(mut value: serde_json::Value) -> serde_json::Value {
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
