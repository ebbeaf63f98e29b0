//! The post-norm BERT variants with rotary positions and gated MLPs, which NomicBERT
//! (nomic_bert.rs) and GTE's "new" model (gte.rs) both are: word (+ token-type, + learned
//! position) embeddings and a LayerNorm, then per layer attention from a fused qkv projection with
//! rotary positions, residual, LayerNorm; MLP (gated: `act(gate) * value`, or plain), residual,
//! LayerNorm. Each architecture's file loads its tensors under its own names into these parts;
//! the computation is here.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, Rotary, Visible, MAX_ATTENTION_ELEMENTS};
use super::config::{Activation, RopeScaling};
use super::encoder::{cpu_f32, queries_for, split_qkv, LayerNorm, Linear};
use super::varlen_cpu::Queries;
use super::ModelConfig;
use crate::batch::Batch;

/// One layer's tensors.
pub struct Layer {
    /// `[q | k | v]`: `[3 * hidden, hidden]`.
    pub qkv: Linear,
    pub out: Linear,
    pub attn_norm: LayerNorm,
    /// Gated: `[gate | value]`, `[2 * intermediate, hidden]` (the gate first, as the fused CPU
    /// kernels take it); plain: `[intermediate, hidden]`.
    pub up: Linear,
    pub down: Linear,
    pub mlp_norm: LayerNorm,
}

/// The MLP's kind.
#[derive(Clone, Copy, Debug)]
pub enum Mlp {
    /// `act(gate) * value`.
    Gated(Activation),
    /// `act(up)`.
    Plain(Activation),
}

pub struct RotaryBert {
    word_embeddings: Tensor,
    /// Row 0 of the token-type table, added to every token (`None` without token types).
    token_type: Option<Tensor>,
    /// Learned absolute positions, where the model has no rotary ones.
    position_embeddings: Option<Tensor>,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    rotary: Option<Rotary>,
    mlp: Mlp,
    intermediate: usize,
    heads: usize,
    head_dim: usize,
    hidden_size: usize,
    packed: bool,
    attention_limit: std::sync::atomic::AtomicUsize,
    dtype: DType,
    device: Device,
}

/// The embedding parts every architecture here names alike under `emb`
/// (`token_type_embeddings`, `position_embeddings`): token type 0's row (none without token
/// types), and rotary tables of `scaling` (`rotary`) or the learned position table.
fn positions_and_types(
    emb: &VarBuilder,
    cfg: &ModelConfig,
    type_vocab_size: usize,
    rotary: bool,
    scaling: RopeScaling,
) -> Result<(Option<Tensor>, Option<Rotary>, Option<Tensor>)> {
    let h = cfg.hidden_size;
    let token_type = match type_vocab_size {
        0 => None,
        t => Some(emb.pp("token_type_embeddings").get((t, h), "weight")?.get(0)?),
    };
    Ok(match rotary {
        true => {
            let (dtype, device) = (emb.dtype(), emb.device());
            let table = Rotary::new(
                cfg.head_dim,
                cfg.rope_theta,
                scaling,
                cfg.max_position_embeddings,
                dtype,
                device,
            )?;
            (token_type, Some(table), None)
        }
        false => {
            let table = emb.pp("position_embeddings").get((cfg.max_position_embeddings, h), "weight")?;
            (token_type, None, Some(table))
        }
    })
}

/// What each architecture's file hands over besides its layers: how the embedding parts are
/// found and what the model does.
pub struct Parts<'a> {
    /// The embeddings' folder (`word_embeddings`, `token_type_embeddings`,
    /// `position_embeddings` under it).
    pub emb: VarBuilder<'a>,
    pub emb_norm: LayerNorm,
    pub type_vocab_size: usize,
    /// Rotary positions of `scaling`; else learned ones.
    pub rotary: bool,
    pub scaling: RopeScaling,
    pub mlp: Mlp,
    pub packed: bool,
}

impl RotaryBert {
    /// The model of `cfg` from its layers and `parts`.
    pub fn assemble(cfg: &ModelConfig, layers: Vec<Layer>, parts: Parts<'_>) -> Result<Self> {
        let Parts { emb, emb_norm, type_vocab_size, rotary, scaling, mlp, packed } = parts;
        let (token_type, rotary, position_embeddings) =
            positions_and_types(&emb, cfg, type_vocab_size, rotary, scaling)?;
        Ok(RotaryBert {
            word_embeddings: emb.pp("word_embeddings").get((cfg.vocab_size, cfg.hidden_size), "weight")?,
            token_type,
            position_embeddings,
            emb_norm,
            layers,
            rotary,
            mlp,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim,
            hidden_size: cfg.hidden_size,
            packed,
            attention_limit: std::sync::atomic::AtomicUsize::new(MAX_ATTENTION_ELEMENTS),
            dtype: emb.dtype(),
            device: emb.device().clone(),
        })
    }
}

/// `[a | b]` of two projections of the same input, as one (rows of `a` first).
pub fn stack(a: Linear, b: Linear) -> Result<Linear> {
    let bias = match (a.bias, b.bias) {
        (Some(x), Some(y)) => Some(Tensor::cat(&[x, y], 0)?),
        (None, None) => None,
        _ => candle_core::bail!("one half of a fused projection has a bias and the other not"),
    };
    Ok(Linear { weight: Tensor::cat(&[a.weight, b.weight], 0)?, bias })
}

impl RotaryBert {
    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let hidden = match self.mlp {
            Mlp::Plain(act) => layer.up.forward_act(x, act)?,
            Mlp::Gated(act) => {
                let y = layer.up.forward(x)?;
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
        layer.down.matmul(&hidden)
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
        let (q, k, v) = split_qkv(&layer.qkv, x, n, h, d)?;
        let (q, k) = match rope {
            Some((cos, sin)) => (attention::rope(&q, cos, sin)?, attention::rope(&k, cos, sin)?),
            None => (q, k),
        };
        let (attn, residual) = attention::attend_rows(layout, (&q, &k, &v), Visible::All, x, rows)?;
        let x = layer.attn_norm.forward_sum(
            layer.out.matmul(&attn)?,
            layer.out.bias.as_ref(),
            Some(&residual),
        )?;
        let mlp = self.mlp(layer, &x)?;
        layer.mlp_norm.forward_sum(mlp, layer.down.bias.as_ref(), Some(&x))
    }
}

impl super::EmbeddingModel for RotaryBert {
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
        let mut x = self.emb_norm.forward(&x)?;
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
