//! The BERT-family encoder shared by BERT and XLM-RoBERTa: word + position + token-type
//! embeddings with a LayerNorm, then post-norm layers (self-attention with biases, residual,
//! LayerNorm; intermediate with its activation, output, residual, LayerNorm), bidirectional.
//! Also the pieces ModernBERT reuses: [`Linear`] and [`LayerNorm`].
//!
//! Weight names follow transformers' `BertModel`/`XLMRobertaModel`: `embeddings.{word,position,
//! token_type}_embeddings`, `embeddings.LayerNorm`, `encoder.layer.N.attention.self.{query,key,
//! value}`, `.attention.output.{dense,LayerNorm}`, `.intermediate.dense`, `.output.{dense,
//! LayerNorm}`; the pooler is not used.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, Visible, MAX_ATTENTION_ELEMENTS};
use super::config::{Activation, EncoderConfig};
use super::varlen_cpu::Queries;
use super::ModelConfig;
use crate::batch::Batch;

/// Whether the fused CPU kernels apply to `x` (f32 on the CPU).
pub(super) fn cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `x @ w^T (+ b)` on `[tokens, in]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(vb: VarBuilder, input: usize, output: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((output, input), "weight")?;
        let bias = if bias { Some(vb.get(output, "bias")?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// Without the bias (for a kernel that adds it itself).
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.t()?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.matmul(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `act(x @ w^T + b)`, fused after the matmul (in place) on the CPU in f32.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let y = self.matmul(x)?;
        if cpu_f32(&y) {
            return super::cpu_ops::bias_act_in_place(y, self.bias.as_ref(), act);
        }
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        act.apply(&y)
    }
}

/// LayerNorm over the last dimension, with or without a bias (ModernBERT has none).
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// `weight`/`bias`, or the `gamma`/`beta` of checkpoints converted from TensorFlow.
    pub fn load(vb: VarBuilder, size: usize, eps: f64, bias: bool) -> Result<Self> {
        let (w, b) = if vb.contains_tensor("gamma") { ("gamma", "beta") } else { ("weight", "bias") };
        let weight = vb.get(size, w)?;
        let bias = if bias { Some(vb.get(size, b)?) } else { None };
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match cpu_f32(x) {
            true => self.forward_sum(x.copy()?, None, None),
            false => self.forward_sum(x.clone(), None, None),
        }
    }

    /// `LayerNorm(x + bias + residual)`: the post-norm layers' "add & norm", one fused pass on
    /// the CPU in f32, in place: `x` must be a tensor no one else holds (a fresh matmul output).
    pub fn forward_sum(&self, x: Tensor, bias: Option<&Tensor>, residual: Option<&Tensor>) -> Result<Tensor> {
        if cpu_f32(&x) {
            return super::cpu_ops::layer_norm_in_place(
                x,
                bias,
                residual,
                &self.weight,
                self.bias.as_ref(),
                self.eps,
            );
        }
        let x = match bias {
            Some(b) => x.broadcast_add(b)?,
            None => x.clone(),
        };
        let x = match residual {
            Some(r) => (x + r)?,
            None => x,
        };
        let beta = match &self.bias {
            Some(b) => b.clone(),
            None => self.weight.zeros_like()?,
        };
        candle_nn::ops::layer_norm(&x, &self.weight, &beta, self.eps as f32)
    }
}

/// Word + position + token-type (row 0) embeddings, then LayerNorm.
struct Embeddings {
    word: Tensor,
    position: Tensor,
    /// `token_type_embeddings[0]`: every token is of type 0 (single texts).
    token_type: Option<Tensor>,
    norm: LayerNorm,
}

/// One post-norm encoder layer.
struct EncoderLayer {
    /// query, key and value fused: `[3 * hidden, hidden]`.
    qkv: Linear,
    out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// Where a checkpoint keeps each layer's tensors (the embeddings are `embeddings.*` in all).
pub struct TensorNames {
    /// The layers, numbered after a dot.
    pub layers: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_out: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
}

/// BERT's and XLM-RoBERTa's names.
pub const BERT_NAMES: TensorNames = TensorNames {
    layers: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

/// A BERT-family encoder (BERT, DistilBERT, XLM-RoBERTa) turned embedder.
pub struct Encoder {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    activation: Activation,
    /// XLM-R: the padding id; positions count real tokens from `pad + 1`, as transformers'
    /// `create_position_ids_from_input_ids` does. `None`: BERT's 0, 1, 2, …
    position_pad: Option<u32>,
    /// MPNet: `relative_attention_bias` (`[buckets, heads]`), added to every layer's scores.
    relative_bias: Option<Tensor>,
    heads: usize,
    head_dim: usize,
    hidden_size: usize,
    packed: bool,
    attention_limit: std::sync::atomic::AtomicUsize,
    dtype: DType,
    device: Device,
}

impl Encoder {
    /// Loads from a `VarBuilder` rooted at the model (`embeddings`, then the layers as `names`
    /// says). `position_pad`: XLM-R's position offset (see [`Encoder::position_pad`]).
    pub fn load(
        vb: VarBuilder,
        cfg: &ModelConfig,
        names: &TensorNames,
        packed: bool,
        position_pad: Option<u32>,
    ) -> Result<Self> {
        let enc: &EncoderConfig = cfg.encoder.as_ref().expect("an encoder config");
        let (h, eps) = (cfg.hidden_size, enc.layer_norm_eps);
        let e = vb.pp("embeddings");
        let token_type = if enc.type_vocab_size > 0 && e.contains_tensor("token_type_embeddings.weight") {
            Some(e.pp("token_type_embeddings").get((enc.type_vocab_size, h), "weight")?.get(0)?)
        } else {
            None
        };
        let embeddings = Embeddings {
            word: e.pp("word_embeddings").get((cfg.vocab_size, h), "weight")?,
            position: e.pp("position_embeddings").get((cfg.max_position_embeddings, h), "weight")?,
            token_type,
            norm: LayerNorm::load(e.pp("LayerNorm"), h, eps, true)?,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("{}.{i}", names.layers));
                let (q, k, v) = (vb.pp(names.query), vb.pp(names.key), vb.pp(names.value));
                let qkv = Linear {
                    weight: Tensor::cat(
                        &[q.get((h, h), "weight")?, k.get((h, h), "weight")?, v.get((h, h), "weight")?],
                        0,
                    )?,
                    bias: Some(Tensor::cat(&[q.get(h, "bias")?, k.get(h, "bias")?, v.get(h, "bias")?], 0)?),
                };
                Ok(EncoderLayer {
                    qkv,
                    out: Linear::load(vb.pp(names.attention_out), h, h, true)?,
                    attention_norm: LayerNorm::load(vb.pp(names.attention_norm), h, eps, true)?,
                    intermediate: Linear::load(vb.pp(names.intermediate), h, cfg.intermediate_size, true)?,
                    output: Linear::load(vb.pp(names.output), cfg.intermediate_size, h, true)?,
                    output_norm: LayerNorm::load(vb.pp(names.output_norm), h, eps, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            embeddings,
            layers,
            activation: enc.activation,
            position_pad,
            relative_bias: None,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim,
            hidden_size: h,
            packed,
            attention_limit: std::sync::atomic::AtomicUsize::new(MAX_ATTENTION_ELEMENTS),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// MPNet's relative position bias table (see mpnet.rs).
    pub fn with_relative_bias(mut self, table: Tensor) -> Self {
        self.relative_bias = Some(table);
        self
    }

    /// Each token's position id: 0, 1, 2, … per text (BERT), or XLM-R's count of non-padding
    /// tokens from `pad + 1` (a padding id inside a text keeps position `pad`).
    fn positions(&self, batch: &Batch) -> Vec<u32> {
        let Some(pad) = self.position_pad else { return batch.position_ids.clone() };
        let mut out = Vec::with_capacity(batch.input_ids.len());
        for i in 0..batch.len() {
            let (start, len) = batch.span(i);
            let mut count = 0;
            for &id in &batch.input_ids[start..start + len] {
                if id == pad {
                    out.push(pad);
                } else {
                    count += 1;
                    out.push(pad + count);
                }
            }
        }
        out
    }
}

impl EncoderLayer {
    /// The layer's output for every token, or (`rows`, with `queries` naming them) only for the
    /// pooled rows: in the last layer nothing else is read.
    fn forward(
        &self,
        x: &Tensor,
        layout: &attention::Layout,
        enc: &Encoder,
        rows: Option<(&Tensor, Queries)>,
        bias: Option<&super::mpnet::RelativeBias>,
    ) -> Result<Tensor> {
        let (n, h, d) = (layout.tokens, enc.heads, enc.head_dim);
        let (q, k, v) = split_qkv(&self.qkv, x, n, h, d)?;
        let (attn, residual) = match (rows, bias) {
            (rows, Some(bias)) => {
                let attend = |queries| super::mpnet::attend(layout, &q, &k, &v, bias, queries);
                match rows {
                    Some((rows, queries)) if layout.packed && queries != Queries::All => {
                        (attend(queries)?, x.index_select(rows, 0)?)
                    }
                    Some((rows, _)) => {
                        (attend(Queries::All)?.index_select(rows, 0)?, x.index_select(rows, 0)?)
                    }
                    None => (attend(Queries::All)?, x.clone()),
                }
            }
            (rows, None) => attention::attend_rows(layout, (&q, &k, &v), Visible::All, x, rows)?,
        };
        let x = self.attention_norm.forward_sum(
            self.out.matmul(&attn)?,
            self.out.bias.as_ref(),
            Some(&residual),
        )?;
        let up = self.intermediate.forward_act(&x, enc.activation)?;
        self.output_norm.forward_sum(self.output.matmul(&up)?, self.output.bias.as_ref(), Some(&x))
    }
}

/// q, k and v (`[tokens, heads, head_dim]` each, contiguous) from the fused projection `qkv` of
/// `x`: on the CPU in f32 one pass adds the bias and lays the three out apart; elsewhere three
/// slices of the biased projection.
pub fn split_qkv(qkv: &Linear, x: &Tensor, n: usize, h: usize, d: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let y = qkv.matmul(x)?;
    if cpu_f32(&y) {
        let parts = super::cpu_ops::split_parts(&y, qkv.bias.as_ref(), 3)?;
        let part = |i: usize| parts.get(i)?.reshape((n, h, d));
        return Ok((part(0)?, part(1)?, part(2)?));
    }
    let y = match &qkv.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let part = |i: usize| y.narrow(1, i * h * d, h * d)?.contiguous()?.reshape((n, h, d));
    Ok((part(0)?, part(1)?, part(2)?))
}

/// Which rows of a batch `rows` names: each text's first or last token (then the last layer can
/// compute just those queries), or something else.
pub fn queries_for(rows: &[u32], batch: &Batch) -> Queries {
    let firsts = batch.cu_seq_lengths[..batch.len()].iter().copied();
    if rows.len() == batch.len() && rows.iter().copied().eq(firsts) {
        Queries::First
    } else if rows == batch.last_tokens().as_slice() {
        Queries::Last
    } else {
        Queries::All
    }
}

impl super::EmbeddingModel for Encoder {
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> Result<Tensor> {
        if batch.is_empty() {
            return Tensor::zeros((0, self.hidden_size), DType::F32, &self.device);
        }
        let limit = self.attention_limit.load(std::sync::atomic::Ordering::Relaxed);
        let layout =
            attention::Layout::new(batch, self.packed, &[Visible::All], limit, self.dtype, &self.device)?;
        let ids = Tensor::new(batch.input_ids.as_slice(), &self.device)?;
        let positions = Tensor::new(self.positions(batch).as_slice(), &self.device)?;
        let e = &self.embeddings;
        let mut x = e.word.index_select(&ids, 0)?;
        if let Some(t) = &e.token_type {
            x = x.broadcast_add(t)?;
        }
        x = e.norm.forward_sum(x, None, Some(&e.position.index_select(&positions, 0)?))?;
        let rows_tensor = rows.map(|r| Tensor::new(r, &self.device)).transpose()?;
        let Some((last, rest)) = self.layers.split_last() else {
            return match &rows_tensor {
                Some(r) => x.index_select(r, 0)?.to_dtype(DType::F32),
                None => x.to_dtype(DType::F32),
            };
        };
        let bias = match &self.relative_bias {
            Some(table) => Some(super::mpnet::bias(table, batch.max_length as usize, self.packed)?),
            None => None,
        };
        let bias = bias.as_ref();
        for layer in rest {
            x = layer.forward(&x, &layout, self, None, bias)?;
        }
        let x = match (rows, &rows_tensor) {
            (Some(r), Some(t)) => last.forward(&x, &layout, self, Some((t, queries_for(r, batch))), bias)?,
            _ => last.forward(&x, &layout, self, None, bias)?,
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
