//! GTE's "new" model's `config.json` (`model_type: new`, or `gte` in Snowflake's arctic-embed
//! v2: gte-base-en-v1.5, gte-large-en-v1.5, gte-multilingual-base), the code of
//! Alibaba-NLP/new-impl behind `trust_remote_code` → [`ModelConfig`]. Defaults are its
//! `NewConfig`'s.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{Activation, Architecture, EncoderConfig, ModelConfig, RopeScaling};

/// What GTE's model needs beyond the shared encoder settings.
#[derive(Clone, Debug)]
pub struct GteConfig {
    /// Rotary positions (`position_embedding_type: rope`); else learned absolute ones.
    pub rotary: bool,
    /// One `qkv_proj`, or separate `q_proj`, `k_proj`, `v_proj` (`pack_qkv: false`).
    pub pack_qkv: bool,
}

#[derive(Deserialize)]
struct RawGteConfig {
    #[serde(default = "vocab")]
    vocab_size: usize,
    #[serde(default = "width")]
    hidden_size: usize,
    #[serde(default = "twelve")]
    num_hidden_layers: usize,
    #[serde(default = "twelve")]
    num_attention_heads: usize,
    #[serde(default = "intermediate")]
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "positions")]
    max_position_embeddings: usize,
    #[serde(default = "one")]
    type_vocab_size: usize,
    #[serde(default = "layer_norm")]
    layer_norm_type: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default = "rope")]
    position_embedding_type: String,
    #[serde(default = "theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "yes")]
    pack_qkv: bool,
    #[serde(default)]
    logn_attention_scale: bool,
}

fn vocab() -> usize {
    30528
}
fn width() -> usize {
    768
}
fn twelve() -> usize {
    12
}
fn intermediate() -> usize {
    3072
}
fn gelu() -> String {
    "gelu".into()
}
fn positions() -> usize {
    2048
}
fn one() -> usize {
    1
}
fn layer_norm() -> String {
    "layer_norm".into()
}
fn eps() -> f64 {
    1e-12
}
fn rope() -> String {
    "rope".into()
}
fn theta() -> f64 {
    10_000.0
}
fn yes() -> bool {
    true
}

pub(super) fn config(value: serde_json::Value) -> Result<ModelConfig> {
    let raw: RawGteConfig = serde_json::from_value(value)?;
    let (h, heads) = (raw.hidden_size, raw.num_attention_heads);
    if heads == 0 || !h.is_multiple_of(heads) {
        bail!("hidden_size ({h}) is not divisible by num_attention_heads ({heads})");
    }
    let head_dim = h / heads;
    let activation = Activation::from_hidden_act(&raw.hidden_act).with_context(|| {
        format!("hidden_act \"{}\" is not supported (gelu, gelu_new, relu, silu)", raw.hidden_act)
    })?;
    if raw.layer_norm_type != "layer_norm" {
        bail!(
            "layer_norm_type \"{}\" is not supported for GTE's model (only layer_norm)",
            raw.layer_norm_type
        );
    }
    if raw.logn_attention_scale {
        bail!("logn_attention_scale is not supported for GTE's model");
    }
    let rotary = match raw.position_embedding_type.as_str() {
        "rope" => true,
        "absolute" => false,
        other => bail!("position_embedding_type \"{other}\" is not supported (rope, absolute)"),
    };
    if rotary && !head_dim.is_multiple_of(2) {
        bail!("head_dim ({head_dim}) must be even for rotary embeddings");
    }
    // NOTE: GTE's NTKScalingRotaryEmbedding builds its tables once, rescaled, for every length:
    // a fixed scaling, whatever the text's length.
    let rope_scaling = match &raw.rope_scaling {
        None | Some(serde_json::Value::Null) => RopeScaling::None,
        Some(s) => {
            let kind = s.get("type").or_else(|| s.get("rope_type")).and_then(|t| t.as_str()).unwrap_or("");
            let factor = s
                .get("factor")
                .and_then(|f| f.as_f64())
                .filter(|f| f.is_finite() && *f > 0.0)
                .context("rope_scaling needs a positive \"factor\"")?;
            match kind {
                "ntk" => RopeScaling::Ntk { factor, mixed_b: s.get("mixed_b").and_then(|b| b.as_f64()) },
                other => bail!("rope_scaling type \"{other}\" is not supported for GTE's model (only ntk)"),
            }
        }
    };
    Ok(ModelConfig {
        architecture: Architecture::GteNew,
        vocab_size: raw.vocab_size,
        hidden_size: h,
        intermediate_size: raw.intermediate_size,
        num_hidden_layers: raw.num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        max_position_embeddings: raw.max_position_embeddings,
        rms_norm_eps: raw.layer_norm_eps,
        rope_theta: raw.rope_theta,
        rope_scaling,
        attention_bias: true,
        output_bias: true,
        is_causal: Some(false),
        sliding_window: None,
        gemma: None,
        encoder: Some(EncoderConfig {
            layer_norm_eps: raw.layer_norm_eps,
            activation,
            type_vocab_size: raw.type_vocab_size,
            pad_token_id: 0,
            relative_buckets: 0,
            modernbert: None,
            nomic: None,
            gte: Some(GteConfig { rotary, pack_qkv: raw.pack_qkv }),
        }),
    })
}
