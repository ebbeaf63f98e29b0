//! Gemma 3 (EmbeddingGemma): token embeddings scaled by √hidden, then layers with a norm on
//! each side of the attention and of the MLP (RMSNorms scaling by `1 + weight`), per-head
//! RMSNorm on q and k, rotary positions with one base for the full layers and another for the
//! sliding-window ones, GQA, scores scaled by `query_pre_attn_scalar ^ -0.5`, a GeLU-tanh gated
//! MLP, then a final norm. Bidirectional (EmbeddingGemma) sliding layers see ±`sliding_window / 2`
//! tokens; causal Gemma caps texts at the window (config.rs), where it hides nothing.
//!
//! Weight names follow transformers' `Gemma3TextModel`: `embed_tokens`, `layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm, post_attention_layernorm,
//! pre_feedforward_layernorm, mlp.{gate,up,down}_proj, post_feedforward_layernorm}`, `norm`, with
//! the `model.` prefix of `Gemma3ForCausalLM` checkpoints or without it.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, Rotary, Visible, MAX_ATTENTION_ELEMENTS};
use super::config::{Activation, RopeScaling};
use super::encoder::{cpu_f32, queries_for, Linear};
use super::layers::{DecoderOptions, RmsNorm};
use super::varlen_cpu::Queries;
use super::ModelConfig;
use crate::batch::Batch;

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attention_norm: RmsNorm,
    pre_mlp_norm: RmsNorm,
    /// gate and up projections fused: `[2 * intermediate, hidden]`.
    gate_up: Linear,
    down: Linear,
    post_mlp_norm: RmsNorm,
    global: bool,
}

pub struct Gemma3 {
    embed_tokens: Tensor,
    embed_scale: f64,
    layers: Vec<Layer>,
    norm: RmsNorm,
    global_rotary: Rotary,
    local_rotary: Rotary,
    global_visible: Visible,
    local_visible: Visible,
    /// `√head_dim / √query_pre_attn_scalar`: the attention kernels scale by `1/√head_dim`.
    query_factor: f64,
    activation: Activation,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    hidden_size: usize,
    intermediate: usize,
    packed: bool,
    attention_limit: std::sync::atomic::AtomicUsize,
    dtype: DType,
    device: Device,
}

/// One batch's layout, with both rotary tables looked up.
struct Step {
    layout: attention::Layout,
    global: (Tensor, Tensor),
    local: (Tensor, Tensor),
}

pub fn load(cfg: &ModelConfig, vb: VarBuilder, opts: DecoderOptions) -> Result<Gemma3> {
    let g = cfg.gemma.as_ref().expect("a gemma config");
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
    let (heads, kv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let any_sliding = g.global_layers.iter().any(|global| !global);
    if opts.causal && any_sliding && cfg.sliding_window.is_none() {
        // A bidirectional checkpoint run causally: its sliding layers would need a causal window
        // longer than the texts may be.
        candle_core::bail!(
            "causal attention is not supported for this bidirectional Gemma 3 (use --attention auto)"
        );
    }
    let layers = (0..cfg.num_hidden_layers)
        .map(|n| {
            let vb = vb.pp(format!("layers.{n}"));
            let a = vb.pp("self_attn");
            let norm = |name: &str, size: usize| RmsNorm::load_offset(vb.pp(name), size, eps);
            Ok(Layer {
                input_norm: norm("input_layernorm", h)?,
                q: Linear::load(a.pp("q_proj"), h, heads * d, false)?,
                k: Linear::load(a.pp("k_proj"), h, kv * d, false)?,
                v: Linear::load(a.pp("v_proj"), h, kv * d, false)?,
                o: Linear::load(a.pp("o_proj"), heads * d, h, false)?,
                q_norm: RmsNorm::load_offset(a.pp("q_norm"), d, eps)?,
                k_norm: RmsNorm::load_offset(a.pp("k_norm"), d, eps)?,
                post_attention_norm: norm("post_attention_layernorm", h)?,
                pre_mlp_norm: norm("pre_feedforward_layernorm", h)?,
                gate_up: Linear {
                    weight: Tensor::cat(
                        &[
                            vb.pp("mlp.gate_proj").get((i, h), "weight")?,
                            vb.pp("mlp.up_proj").get((i, h), "weight")?,
                        ],
                        0,
                    )?,
                    bias: None,
                },
                down: Linear::load(vb.pp("mlp.down_proj"), i, h, false)?,
                post_mlp_norm: norm("post_feedforward_layernorm", h)?,
                global: g.global_layers[n],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (dtype, device) = (vb.dtype(), vb.device().clone());
    let rotary = |theta, scaling| Rotary::new(d, theta, scaling, cfg.max_position_embeddings, dtype, &device);
    let (global_visible, local_visible) = match opts.causal {
        true => (Visible::Causal, Visible::Causal),
        false => (Visible::All, Visible::Window(g.half_window)),
    };
    Ok(Gemma3 {
        embed_tokens: vb.pp("embed_tokens").get((cfg.vocab_size, h), "weight")?,
        // NOTE: transformers multiplies by √hidden rounded to the weights' dtype.
        embed_scale: (h as f32).sqrt() as f64,
        layers,
        norm: RmsNorm::load_offset(vb.pp("norm"), h, eps)?,
        global_rotary: rotary(cfg.rope_theta, cfg.rope_scaling)?,
        local_rotary: rotary(g.local_rope_theta, RopeScaling::None)?,
        global_visible,
        local_visible,
        query_factor: ((d as f64) / g.query_pre_attn_scalar).sqrt(),
        activation: g.activation,
        heads,
        kv_heads: kv,
        head_dim: d,
        hidden_size: h,
        intermediate: i,
        packed: opts.packed,
        attention_limit: std::sync::atomic::AtomicUsize::new(MAX_ATTENTION_ELEMENTS),
        dtype,
        device,
    })
}

impl Gemma3 {
    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let normed = layer.pre_mlp_norm.forward(x)?;
        let gate_up = layer.gate_up.matmul(&normed)?;
        let i = self.intermediate;
        let gated = if cpu_f32(&gate_up) && self.activation == Activation::GeluTanh {
            // One parallel pass, with a vectorised tanh (libm's was a fifth of the run).
            super::cpu_ops::geglu_tanh(&gate_up, i)?
        } else {
            (self.activation.apply(&gate_up.narrow(1, 0, i)?)? * gate_up.narrow(1, i, i)?)?
        };
        drop(gate_up); // [tokens, 2 × intermediate]: the largest activation, gone before `down`
        layer.post_mlp_norm.forward(&layer.down.forward(&gated)?)
    }

    /// One layer for every token, or (`rows`) only for the pooled rows.
    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        step: &Step,
        rows: Option<(&Tensor, Queries)>,
    ) -> Result<Tensor> {
        let (n, d) = (step.layout.tokens, self.head_dim);
        let normed = layer.input_norm.forward(x)?;
        let q = layer.q.forward(&normed)?.reshape((n, self.heads, d))?;
        let k = layer.k.forward(&normed)?.reshape((n, self.kv_heads, d))?;
        let v = layer.v.forward(&normed)?.reshape((n, self.kv_heads, d))?.contiguous()?;
        let (q, k) = (layer.q_norm.forward(&q)?, layer.k_norm.forward(&k)?);
        let (cos, sin) = if layer.global { &step.global } else { &step.local };
        let q = attention::rope(&q, cos, sin)?;
        let k = attention::rope(&k, cos, sin)?;
        let q = if (self.query_factor - 1.0).abs() > f64::EPSILON { (q * self.query_factor)? } else { q };
        let visible = if layer.global { self.global_visible } else { self.local_visible };
        let (attn, residual) = attention::attend_rows(&step.layout, (&q, &k, &v), visible, x, rows)?;
        let x = (residual + layer.post_attention_norm.forward(&layer.o.forward(&attn)?)?)?;
        &x + self.mlp(layer, &x)?
    }
}

impl super::EmbeddingModel for Gemma3 {
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> Result<Tensor> {
        if batch.is_empty() {
            return Tensor::zeros((0, self.hidden_size), DType::F32, &self.device);
        }
        let limit = self.attention_limit.load(std::sync::atomic::Ordering::Relaxed);
        let visible = [self.global_visible, self.local_visible];
        let layout = attention::Layout::new(batch, self.packed, &visible, limit, self.dtype, &self.device)?;
        let positions = Tensor::new(batch.position_ids.as_slice(), &self.device)?;
        let step = Step {
            layout,
            global: self.global_rotary.lookup(&positions)?,
            local: self.local_rotary.lookup(&positions)?,
        };
        let ids = Tensor::new(batch.input_ids.as_slice(), &self.device)?;
        let mut x = (self.embed_tokens.index_select(&ids, 0)? * self.embed_scale)?;
        let rows_tensor = rows.map(|r| Tensor::new(r, &self.device)).transpose()?;
        let Some((last, rest)) = self.layers.split_last() else {
            let x = match &rows_tensor {
                Some(r) => x.index_select(r, 0)?,
                None => x,
            };
            return self.norm.forward(&x)?.to_dtype(DType::F32);
        };
        for layer in rest {
            x = self.layer(layer, &x, &step, None)?;
        }
        let x = match (rows, &rows_tensor) {
            (Some(r), Some(t)) => self.layer(last, &x, &step, Some((t, queries_for(r, batch))))?,
            _ => self.layer(last, &x, &step, None)?,
        };
        self.norm.forward(&x)?.to_dtype(DType::F32)
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn attention_heads(&self) -> usize {
        self.heads
    }

    fn limit_attention(&self, elements: usize) {
        self.attention_limit
            .store(elements.clamp(1, MAX_ATTENTION_ELEMENTS), std::sync::atomic::Ordering::Relaxed);
    }
}
