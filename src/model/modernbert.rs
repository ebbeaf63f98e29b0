//! ModernBERT (gte-modernbert, modernbert-embed): token embeddings with a bias-free LayerNorm,
//! then pre-norm layers — the first without its attention norm — of fused-qkv attention with
//! rotary positions and a GeGLU MLP, then a final norm. Layers alternate between global
//! attention (every `global_attn_every_n_layers`-th, rotary base `global_rope_theta`) and a
//! sliding window of ±`local_attention / 2` tokens (rotary base `local_rope_theta`).
//!
//! Weight names follow transformers' `ModernBertModel`: `embeddings.{tok_embeddings,norm}`,
//! `layers.N.{attn_norm,attn.Wqkv,attn.Wo,mlp_norm,mlp.Wi,mlp.Wo}`, `final_norm`, with the
//! `model.` prefix of `ModernBertForMaskedLM` checkpoints or without it.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, Rotary, Visible, MAX_ATTENTION_ELEMENTS};
use super::config::{Activation, RopeScaling};
use super::encoder::{queries_for, split_qkv, LayerNorm, Linear};
use super::varlen_cpu::Queries;
use super::ModelConfig;
use crate::batch::Batch;

struct Layer {
    /// `None` in layer 0 (transformers' `nn.Identity`).
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    /// `[input | gate]`: `[2 * intermediate, hidden]`.
    wi: Linear,
    wo_mlp: Linear,
    global: bool,
}

pub struct ModernBert {
    tok_embeddings: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    global_rotary: Rotary,
    local_rotary: Rotary,
    window: usize,
    activation: Activation,
    intermediate: usize,
    heads: usize,
    head_dim: usize,
    hidden_size: usize,
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

pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<ModernBert> {
    let enc = cfg.encoder.as_ref().expect("an encoder config");
    let m = enc.modernbert.as_ref().expect("a modernbert config");
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, enc.layer_norm_eps);
    let layers = (0..cfg.num_hidden_layers)
        .map(|n| {
            let vb = vb.pp(format!("layers.{n}"));
            let attn_norm =
                if n == 0 { None } else { Some(LayerNorm::load(vb.pp("attn_norm"), h, eps, m.norm_bias)?) };
            Ok(Layer {
                attn_norm,
                wqkv: Linear::load(vb.pp("attn.Wqkv"), h, 3 * h, m.attention_bias)?,
                wo: Linear::load(vb.pp("attn.Wo"), h, h, m.attention_bias)?,
                mlp_norm: LayerNorm::load(vb.pp("mlp_norm"), h, eps, m.norm_bias)?,
                wi: Linear::load(vb.pp("mlp.Wi"), h, 2 * i, m.mlp_bias)?,
                wo_mlp: Linear::load(vb.pp("mlp.Wo"), i, h, m.mlp_bias)?,
                global: m.global_layers[n],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (dtype, device) = (vb.dtype(), vb.device().clone());
    let rotary = |theta| {
        Rotary::new(cfg.head_dim, theta, RopeScaling::None, cfg.max_position_embeddings, dtype, &device)
    };
    Ok(ModernBert {
        tok_embeddings: vb.pp("embeddings.tok_embeddings").get((cfg.vocab_size, h), "weight")?,
        embed_norm: LayerNorm::load(vb.pp("embeddings.norm"), h, eps, m.norm_bias)?,
        layers,
        final_norm: LayerNorm::load(vb.pp("final_norm"), h, eps, m.norm_bias)?,
        global_rotary: rotary(m.global_rope_theta)?,
        local_rotary: rotary(m.local_rope_theta)?,
        window: m.window,
        activation: enc.activation,
        intermediate: i,
        heads: cfg.num_attention_heads,
        head_dim: cfg.head_dim,
        hidden_size: h,
        packed,
        attention_limit: std::sync::atomic::AtomicUsize::new(MAX_ATTENTION_ELEMENTS),
        dtype,
        device,
    })
}

impl ModernBert {
    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let wi = layer.wi.forward(&layer.mlp_norm.forward(x)?)?;
        let product = if x.device().is_cpu() && x.dtype() == DType::F32 && self.activation == Activation::Gelu
        {
            super::cpu_ops::geglu(&wi, self.intermediate)?
        } else {
            let input = wi.narrow(1, 0, self.intermediate)?;
            let gate = wi.narrow(1, self.intermediate, self.intermediate)?;
            (self.activation.apply(&input)? * gate)?
        };
        layer.wo_mlp.forward(&product)
    }

    /// One layer for every token, or (`rows`) only for the pooled rows.
    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        step: &Step,
        rows: Option<(&Tensor, Queries)>,
    ) -> Result<Tensor> {
        let (n, h, d) = (step.layout.tokens, self.heads, self.head_dim);
        let normed = match &layer.attn_norm {
            Some(norm) => norm.forward(x)?,
            None => x.clone(),
        };
        let (q, k, v) = split_qkv(&layer.wqkv, &normed, n, h, d)?;
        let (cos, sin) = if layer.global { &step.global } else { &step.local };
        let q = attention::rope(&q, cos, sin)?;
        let k = attention::rope(&k, cos, sin)?;
        let visible = if layer.global { Visible::All } else { Visible::Window(self.window) };
        let (attn, residual) = attention::attend_rows(&step.layout, (&q, &k, &v), visible, x, rows)?;
        let x = (residual + layer.wo.forward(&attn)?)?;
        &x + self.mlp(layer, &x)?
    }
}

impl super::EmbeddingModel for ModernBert {
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> Result<Tensor> {
        if batch.is_empty() {
            return Tensor::zeros((0, self.hidden_size), DType::F32, &self.device);
        }
        let limit = self.attention_limit.load(std::sync::atomic::Ordering::Relaxed);
        let visible = [Visible::All, Visible::Window(self.window)];
        let layout = attention::Layout::new(batch, self.packed, &visible, limit, self.dtype, &self.device)?;
        let positions = Tensor::new(batch.position_ids.as_slice(), &self.device)?;
        let step = Step {
            layout,
            global: self.global_rotary.lookup(&positions)?,
            local: self.local_rotary.lookup(&positions)?,
        };
        let ids = Tensor::new(batch.input_ids.as_slice(), &self.device)?;
        let mut x = self.embed_norm.forward(&self.tok_embeddings.index_select(&ids, 0)?)?;
        let rows_tensor = rows.map(|r| Tensor::new(r, &self.device)).transpose()?;
        let Some((last, rest)) = self.layers.split_last() else {
            let x = match &rows_tensor {
                Some(r) => x.index_select(r, 0)?,
                None => x,
            };
            return self.final_norm.forward(&x)?.to_dtype(DType::F32);
        };
        for layer in rest {
            x = self.layer(layer, &x, &step, None)?;
        }
        let x = match (rows, &rows_tensor) {
            (Some(r), Some(t)) => self.layer(last, &x, &step, Some((t, queries_for(r, batch))))?,
            _ => self.layer(last, &x, &step, None)?,
        };
        self.final_norm.forward(&x)?.to_dtype(DType::F32)
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
