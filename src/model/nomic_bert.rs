//! NomicBERT (nomic-embed-text-v1 and v1.5): word and token-type embeddings with a LayerNorm
//! (rotary positions in the attention; learned absolute ones when `rotary_emb_fraction` is 0),
//! then post-norm layers as BERT's — attention, residual, LayerNorm; MLP, residual, LayerNorm —
//! with a fused qkv projection, and a gated MLP (SwiGLU in nomic-embed: `silu(fc12 x) * fc11 x`)
//! or a plain GELU one. Biases only where the config asks (nomic-embed has none).
//!
//! Weight names follow nomic's `NomicBertModel` (the code behind `trust_remote_code` for these
//! models): `embeddings.{word,token_type,position}_embeddings`, `emb_ln`,
//! `encoder.layers.N.{attn.Wqkv,attn.out_proj,norm1,mlp.fc11,mlp.fc12,mlp.fc1,mlp.fc2,norm2}`,
//! with a task model's `bert.` or `model.` prefix or none.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, Rotary, Visible, MAX_ATTENTION_ELEMENTS};
use super::config::nomic::NomicConfig;
use super::config::{Activation, RopeScaling};
use super::encoder::{cpu_f32, queries_for, split_qkv, LayerNorm, Linear};
use super::varlen_cpu::Queries;
use super::ModelConfig;
use crate::batch::Batch;

struct Layer {
    wqkv: Linear,
    out_proj: Linear,
    norm1: LayerNorm,
    /// Gated: `[gate (fc12) | value (fc11)]`, `[2 * intermediate, hidden]`; plain: `fc1`.
    fc1: Linear,
    fc2: Linear,
    norm2: LayerNorm,
}

pub struct NomicBert {
    word_embeddings: Tensor,
    /// Row 0 of `token_type_embeddings`, added to every token (`None` without token types).
    token_type: Option<Tensor>,
    /// Learned positions (`rotary_emb_fraction: 0`).
    position_embeddings: Option<Tensor>,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    rotary: Option<Rotary>,
    gate: Option<Activation>,
    intermediate: usize,
    heads: usize,
    head_dim: usize,
    hidden_size: usize,
    packed: bool,
    attention_limit: std::sync::atomic::AtomicUsize,
    dtype: DType,
    device: Device,
}

pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<NomicBert> {
    let enc = cfg.encoder.as_ref().expect("an encoder config");
    let n: &NomicConfig = enc.nomic.as_ref().expect("a nomic_bert config");
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, enc.layer_norm_eps);
    let layers = (0..cfg.num_hidden_layers)
        .map(|l| {
            let vb = vb.pp(format!("encoder.layers.{l}"));
            let fc1 = match n.gate {
                // NOTE: one matmul for both halves; the gate first, as the fused kernels take it.
                Some(_) => {
                    let gate = Linear::load(vb.pp("mlp.fc12"), h, i, n.fc1_bias)?;
                    let value = Linear::load(vb.pp("mlp.fc11"), h, i, n.fc1_bias)?;
                    let bias = match (gate.bias, value.bias) {
                        (Some(g), Some(v)) => Some(Tensor::cat(&[g, v], 0)?),
                        _ => None,
                    };
                    Linear { weight: Tensor::cat(&[gate.weight, value.weight], 0)?, bias }
                }
                None => Linear::load(vb.pp("mlp.fc1"), h, i, n.fc1_bias)?,
            };
            Ok(Layer {
                wqkv: Linear::load(vb.pp("attn.Wqkv"), h, 3 * h, n.qkv_bias)?,
                out_proj: Linear::load(vb.pp("attn.out_proj"), h, h, n.qkv_bias)?,
                norm1: LayerNorm::load(vb.pp("norm1"), h, eps, true)?,
                fc1,
                fc2: Linear::load(vb.pp("mlp.fc2"), i, h, n.fc2_bias)?,
                norm2: LayerNorm::load(vb.pp("norm2"), h, eps, true)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (dtype, device) = (vb.dtype(), vb.device().clone());
    let emb = vb.pp("embeddings");
    let token_type = match enc.type_vocab_size {
        0 => None,
        t => Some(emb.pp("token_type_embeddings").get((t, h), "weight")?.get(0)?),
    };
    let (rotary, position_embeddings) = match n.rotary {
        true => (
            Some(Rotary::new(
                cfg.head_dim,
                cfg.rope_theta,
                RopeScaling::None,
                cfg.max_position_embeddings,
                dtype,
                &device,
            )?),
            None,
        ),
        false => (None, Some(emb.pp("position_embeddings").get((cfg.max_position_embeddings, h), "weight")?)),
    };
    Ok(NomicBert {
        word_embeddings: emb.pp("word_embeddings").get((cfg.vocab_size, h), "weight")?,
        token_type,
        position_embeddings,
        emb_ln: LayerNorm::load(vb.pp("emb_ln"), h, eps, true)?,
        layers,
        rotary,
        gate: n.gate,
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

impl NomicBert {
    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let hidden = match self.gate {
            None => layer.fc1.forward_act(x, Activation::Gelu)?,
            Some(act) => {
                let y = layer.fc1.forward(x)?;
                match act {
                    Activation::Silu if cpu_f32(&y) => super::cpu_ops::swiglu(&y, self.intermediate)?,
                    Activation::Gelu if cpu_f32(&y) => super::cpu_ops::geglu(&y, self.intermediate)?,
                    _ => {
                        let gate = y.narrow(1, 0, self.intermediate)?;
                        let value = y.narrow(1, self.intermediate, self.intermediate)?;
                        (act.apply(&gate)? * value)?
                    }
                }
            }
        };
        layer.fc2.matmul(&hidden)
    }

    /// One post-norm layer for every token, or (`rows`) only for the pooled rows.
    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        layout: &attention::Layout,
        rope: Option<&(Tensor, Tensor)>,
        rows: Option<(&Tensor, Queries)>,
    ) -> Result<Tensor> {
        let (n, h, d) = (layout.tokens, self.heads, self.head_dim);
        let (q, k, v) = split_qkv(&layer.wqkv, x, n, h, d)?;
        let (q, k) = match rope {
            Some((cos, sin)) => (attention::rope(&q, cos, sin)?, attention::rope(&k, cos, sin)?),
            None => (q, k),
        };
        let (attn, residual) = attention::attend_rows(layout, (&q, &k, &v), Visible::All, x, rows)?;
        let x = layer.norm1.forward_sum(
            layer.out_proj.matmul(&attn)?,
            layer.out_proj.bias.as_ref(),
            Some(&residual),
        )?;
        let mlp = self.mlp(layer, &x)?;
        layer.norm2.forward_sum(mlp, layer.fc2.bias.as_ref(), Some(&x))
    }
}

impl super::EmbeddingModel for NomicBert {
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> Result<Tensor> {
        if batch.is_empty() {
            return Tensor::zeros((0, self.hidden_size), DType::F32, &self.device);
        }
        let limit = self.attention_limit.load(std::sync::atomic::Ordering::Relaxed);
        let layout =
            attention::Layout::new(batch, self.packed, &[Visible::All], limit, self.dtype, &self.device)?;
        let positions = Tensor::new(batch.position_ids.as_slice(), &self.device)?;
        let rope = self.rotary.as_ref().map(|r| r.lookup(&positions)).transpose()?;
        let ids = Tensor::new(batch.input_ids.as_slice(), &self.device)?;
        let mut x = self.word_embeddings.index_select(&ids, 0)?;
        if let Some(t) = &self.token_type {
            x = x.broadcast_add(t)?;
        }
        if let Some(p) = &self.position_embeddings {
            x = (x + p.index_select(&positions, 0)?)?;
        }
        let mut x = self.emb_ln.forward(&x)?;
        let rows_tensor = rows.map(|r| Tensor::new(r, &self.device)).transpose()?;
        let Some((last, rest)) = self.layers.split_last() else {
            let x = match &rows_tensor {
                Some(r) => x.index_select(r, 0)?,
                None => x,
            };
            return x.to_dtype(DType::F32);
        };
        for layer in rest {
            x = self.layer(layer, &x, &layout, rope.as_ref(), None)?;
        }
        let x = match (rows, &rows_tensor) {
            (Some(r), Some(t)) => {
                self.layer(last, &x, &layout, rope.as_ref(), Some((t, queries_for(r, batch))))?
            }
            _ => self.layer(last, &x, &layout, rope.as_ref(), None)?,
        };
        x.to_dtype(DType::F32)
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
