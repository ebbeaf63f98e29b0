//! Gemma 3's `config.json` (`model_type: gemma3_text`, what EmbeddingGemma ships) in the 4.x
//! shape (`rope_theta` for the full layers, `rope_local_base_freq` for the sliding ones,
//! `sliding_window_pattern`) and the 5.x one (`rope_parameters` per layer kind, `layer_types`).

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{Activation, Architecture, ModelConfig, RopeParameters, RopeScaling};

/// What Gemma 3 has that the other decoders do not.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    /// Per layer: full attention (`true`) or a sliding window.
    pub global_layers: Vec<bool>,
    /// Rotary base of the sliding-window layers (the full ones use `rope_theta`).
    pub local_rope_theta: f64,
    /// Bidirectional: a sliding layer's query sees keys within ±`half_window` positions
    /// (transformers' `|q - k| < sliding_window / 2 + 1`).
    pub half_window: usize,
    /// Scores are scaled by `query_pre_attn_scalar ^ -0.5` rather than `head_dim ^ -0.5`.
    pub query_pre_attn_scalar: f64,
    /// The MLP's gate activation (`hidden_activation`, GeLU-tanh in every Gemma 3).
    pub activation: Activation,
}

#[derive(Deserialize)]
struct RawGemma {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_scaling: Option<RopeParameters>,
    rope_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    #[serde(rename = "_sliding_window_pattern")]
    sliding_window_pattern_private: Option<usize>,
    use_bidirectional_attention: Option<bool>,
    hidden_activation: Option<String>,
    attn_logit_softcapping: Option<f64>,
    attention_bias: Option<bool>,
}

pub(super) fn config(value: serde_json::Value) -> Result<ModelConfig> {
    let raw: RawGemma = serde_json::from_value(value)?;
    let heads = raw.num_attention_heads;
    let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!(
            "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
        );
    }
    // NOTE: transformers' Gemma3TextConfig defaults head_dim to 256, not hidden / heads.
    let head_dim = raw.head_dim.unwrap_or(256);
    if !head_dim.is_multiple_of(2) {
        bail!("head_dim ({head_dim}) must be even for rotary embeddings");
    }
    if let Some(cap) = raw.attn_logit_softcapping {
        bail!("attn_logit_softcapping ({cap}) is not supported (Gemma 3 checkpoints have none)");
    }
    if raw.attention_bias == Some(true) {
        bail!("attention_bias is not supported for gemma3_text");
    }
    let act = raw.hidden_activation.as_deref().unwrap_or("gelu_pytorch_tanh");
    let activation = Activation::from_hidden_act(act)
        .with_context(|| format!("hidden_activation \"{act}\" is not supported"))?;

    let pattern = raw.sliding_window_pattern.or(raw.sliding_window_pattern_private).unwrap_or(6).max(1);
    let global_layers: Vec<bool> = match &raw.layer_types {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(true),
                "sliding_attention" => Ok(false),
                other => bail!("layer type \"{other}\" is not supported (full_attention, sliding_attention)"),
            })
            .collect::<Result<_>>()?,
        None => (0..raw.num_hidden_layers).map(|i| (i + 1) % pattern == 0).collect(),
    };
    if global_layers.len() != raw.num_hidden_layers {
        bail!(
            "layer_types names {} layers, num_hidden_layers {}",
            global_layers.len(),
            raw.num_hidden_layers
        );
    }

    // 5.x: one entry per layer kind; 4.x: the full layers' base and scaling at the top level.
    let per_kind = |kind: &str| -> Result<Option<RopeParameters>> {
        match raw.rope_parameters.as_ref().and_then(|p| p.get(kind)) {
            Some(v) => Ok(Some(serde_json::from_value(v.clone())?)),
            None => Ok(None),
        }
    };
    let (full, local) = (per_kind("full_attention")?, per_kind("sliding_attention")?);
    let rope_theta = full.as_ref().and_then(|r| r.rope_theta).or(raw.rope_theta).unwrap_or(1_000_000.0);
    let local_rope_theta =
        local.as_ref().and_then(|r| r.rope_theta).or(raw.rope_local_base_freq).unwrap_or(10_000.0);
    let rope_scaling = match full.as_ref().or(raw.rope_scaling.as_ref()) {
        Some(r) => r.scaling()?,
        None => RopeScaling::None,
    };
    if let Some(r) = &local {
        if r.scaling()? != RopeScaling::None {
            bail!("rope scaling on the sliding-window layers is not supported");
        }
    }

    let bidirectional = raw.use_bidirectional_attention.unwrap_or(false);
    let window = raw.sliding_window.unwrap_or(4096);
    let any_sliding = global_layers.iter().any(|g| !g);
    Ok(ModelConfig {
        architecture: Architecture::Gemma3,
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        intermediate_size: raw.intermediate_size,
        num_hidden_layers: raw.num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        max_position_embeddings: raw.max_position_embeddings,
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta,
        rope_scaling,
        attention_bias: false,
        output_bias: false,
        is_causal: Some(!bidirectional),
        // NOTE: a causal sliding window hides nothing from texts no longer than it, so causal
        // Gemma caps texts there; the bidirectional window is computed.
        sliding_window: (any_sliding && !bidirectional).then_some(window),
        encoder: None,
        gemma: Some(GemmaConfig {
            global_layers,
            local_rope_theta,
            half_window: window / 2,
            query_pre_attn_scalar: raw.query_pre_attn_scalar.unwrap_or(256.0),
            activation,
        }),
    })
}
