//! NomicBERT's `config.json` (`model_type: nomic_bert`: nomic-embed-text-v1/v1.5, the models
//! of nomic-ai/nomic-bert-2048's code) → [`ModelConfig`]. Its keys are GPT-2's (`n_embd`,
//! `n_layer`, `n_head`, `n_inner`, `n_positions`, `layer_norm_epsilon`, `activation_function`)
//! plus NomicBERT's own (`rotary_emb_*`, `qkv_proj_bias`, `mlp_fc1_bias`, `mlp_fc2_bias`,
//! `prenorm`, `pad_vocab_size_multiple`, `rotary_scaling_factor`, `max_trained_positions`).
//! Defaults are `NomicBertConfig`'s and, under it, `GPT2Config`'s.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{Activation, Architecture, EncoderConfig, ModelConfig, RopeScaling};

/// What NomicBERT needs beyond the shared encoder settings.
#[derive(Clone, Debug)]
pub struct NomicConfig {
    /// Rotary positions on the whole head (`rotary_emb_fraction: 1`); else learned absolute
    /// positions (`rotary_emb_fraction: 0`).
    pub rotary: bool,
    /// A gated MLP (`fc11` value, `fc12` gate): `act(fc12 x) * fc11 x`; `None`: `fc1`, GELU, `fc2`.
    pub gate: Option<Activation>,
    pub qkv_bias: bool,
    pub fc1_bias: bool,
    pub fc2_bias: bool,
}

#[derive(Deserialize)]
struct RawNomicConfig {
    #[serde(default = "gpt2_vocab")]
    vocab_size: usize,
    #[serde(alias = "hidden_size", default = "gpt2_width")]
    n_embd: usize,
    #[serde(alias = "num_hidden_layers", default = "gpt2_layers")]
    n_layer: usize,
    #[serde(alias = "num_attention_heads", default = "gpt2_layers")]
    n_head: usize,
    n_inner: Option<usize>,
    #[serde(alias = "max_position_embeddings", default = "gpt2_positions")]
    n_positions: usize,
    #[serde(default = "gpt2_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "gpt2_activation")]
    activation_function: String,
    #[serde(default = "one")]
    pad_vocab_size_multiple: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default)]
    rotary_emb_fraction: f64,
    #[serde(default = "ten_thousand")]
    rotary_emb_base: f64,
    #[serde(default)]
    rotary_emb_interleaved: bool,
    rotary_emb_scale_base: Option<f64>,
    rotary_scaling_factor: Option<f64>,
    #[serde(default = "trained_positions")]
    max_trained_positions: usize,
    #[serde(default = "yes")]
    qkv_proj_bias: bool,
    #[serde(default = "yes")]
    mlp_fc1_bias: bool,
    #[serde(default = "yes")]
    mlp_fc2_bias: bool,
    #[serde(default)]
    prenorm: bool,
    #[serde(default)]
    parallel_block: bool,
    #[serde(default)]
    use_rms_norm: bool,
    #[serde(default)]
    causal: bool,
    num_heads_kv: Option<usize>,
}

fn gpt2_vocab() -> usize {
    50257
}
fn gpt2_width() -> usize {
    768
}
fn gpt2_layers() -> usize {
    12
}
fn gpt2_positions() -> usize {
    1024
}
fn gpt2_eps() -> f64 {
    1e-5
}
fn gpt2_activation() -> String {
    "gelu_new".into()
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn ten_thousand() -> f64 {
    10_000.0
}
fn trained_positions() -> usize {
    2048
}
fn yes() -> bool {
    true
}

pub(super) fn config(value: serde_json::Value) -> Result<ModelConfig> {
    let raw: RawNomicConfig = serde_json::from_value(value)?;
    let (h, heads) = (raw.n_embd, raw.n_head);
    if heads == 0 || !h.is_multiple_of(heads) {
        bail!("n_embd ({h}) is not divisible by n_head ({heads})");
    }
    let head_dim = h / heads;
    for (on, what) in [
        (raw.prenorm, "prenorm"),
        (raw.parallel_block, "parallel_block"),
        (raw.use_rms_norm, "use_rms_norm"),
        (raw.causal, "causal"),
        (raw.rotary_emb_interleaved, "rotary_emb_interleaved"),
    ] {
        if on {
            bail!("\"{what}\": true is not supported for nomic_bert (nomic-embed's layout: post-norm LayerNorm layers, bidirectional, halves rotated)");
        }
    }
    if raw.rotary_emb_scale_base.is_some() {
        bail!("rotary_emb_scale_base (xPos) is not supported for nomic_bert");
    }
    if raw.num_heads_kv.is_some_and(|kv| kv != heads) {
        bail!("num_heads_kv differs from n_head: grouped attention is not supported for nomic_bert");
    }
    let rotary = match raw.rotary_emb_fraction {
        0.0 => false,
        1.0 => true,
        f => bail!(
            "rotary_emb_fraction {f} is not supported for nomic_bert (1: rotary, 0: absolute positions)"
        ),
    };
    if rotary && !head_dim.is_multiple_of(2) {
        bail!("head_dim ({head_dim}) must be even for rotary embeddings");
    }
    // NOTE: NomicBertBlock passes F.gelu (exact) to a plain MLP whatever the gelu variant named,
    // and F.silu, F.gelu or F.sigmoid as the gate of swiglu, geglu and glu.
    let gate = match raw.activation_function.as_str() {
        "gelu" | "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => None,
        "swiglu" => Some(Activation::Silu),
        "geglu" => Some(Activation::Gelu),
        "glu" => Some(Activation::Sigmoid),
        other => bail!(
            "activation_function \"{other}\" is not supported for nomic_bert (gelu, gelu_new, gelu_fast, gelu_pytorch_tanh, swiglu, geglu, glu)"
        ),
    };
    // NOTE: the gated MLP rounds its width up to a multiple of 256 (NomciBertGatedMLP's
    // `multiple_of`), from n_inner or 8/3 of the width; the plain one uses n_inner or 4×.
    let intermediate = match gate {
        Some(_) => raw.n_inner.unwrap_or(8 * h / 3).div_ceil(256) * 256,
        None => raw.n_inner.unwrap_or(4 * h),
    };
    // NOTE: NomicBertModel pads the vocabulary to a multiple of pad_vocab_size_multiple.
    let vocab =
        raw.vocab_size.div_ceil(raw.pad_vocab_size_multiple.max(1)) * raw.pad_vocab_size_multiple.max(1);
    // NOTE: with rotary_scaling_factor, nomic's code rescales the rotary base (dynamic NTK) when
    // a batch's padded length passes max_trained_positions, which makes a text's vector depend on
    // its batch; texts are kept within it.
    let limit = match (rotary, raw.rotary_scaling_factor) {
        (true, Some(_)) => raw.max_trained_positions,
        _ => raw.n_positions,
    };
    Ok(ModelConfig {
        architecture: Architecture::NomicBert,
        vocab_size: vocab,
        hidden_size: h,
        intermediate_size: intermediate,
        num_hidden_layers: raw.n_layer,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        max_position_embeddings: limit,
        rms_norm_eps: raw.layer_norm_epsilon,
        rope_theta: raw.rotary_emb_base,
        rope_scaling: RopeScaling::None,
        attention_bias: raw.qkv_proj_bias,
        output_bias: raw.qkv_proj_bias,
        is_causal: Some(false),
        sliding_window: None,
        gemma: None,
        encoder: Some(EncoderConfig {
            layer_norm_eps: raw.layer_norm_epsilon,
            activation: gate.unwrap_or(Activation::Gelu),
            type_vocab_size: raw.type_vocab_size,
            pad_token_id: 0,
            relative_buckets: 0,
            modernbert: None,
            gte: None,
            nomic: Some(NomicConfig {
                rotary,
                gate,
                qkv_bias: raw.qkv_proj_bias,
                fc1_bias: raw.mlp_fc1_bias,
                fc2_bias: raw.mlp_fc2_bias,
            }),
        }),
    })
}
