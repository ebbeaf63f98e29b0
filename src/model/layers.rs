//! The decoder shared by the Qwen family: RMSNorm, rotary embeddings, grouped-query attention
//! and the SwiGLU MLP, run for embedding (no KV cache, one pass, pooled rows only).
//!
//! Layout: hidden states stay *packed* — `[tokens, hidden]`, the texts of a batch one after the
//! other with no padding — through every projection and the MLP; attention (attention.rs) runs
//! per text on the packed tokens on the CPU, on a padded rectangle elsewhere.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, Rotary, Visible, MAX_ATTENTION_ELEMENTS};
use super::varlen_cpu::Queries;
use super::ModelConfig;
use crate::batch::Batch;

/// The decoder's view of one batch: the shared attention layout plus each token's rotary
/// cos/sin and whether attention is causal.
struct Layout {
    attn: attention::Layout,
    /// Per-token cos/sin, `[tokens, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    visible: Visible,
}

impl Layout {
    fn new(batch: &Batch, decoder: &Decoder) -> Result<Self> {
        let visible = if decoder.causal { Visible::Causal } else { Visible::All };
        let limit = decoder.attention_limit.load(std::sync::atomic::Ordering::Relaxed);
        let attn =
            attention::Layout::new(batch, decoder.packed, &[visible], limit, decoder.dtype, &decoder.device)?;
        let positions = Tensor::new(batch.position_ids.as_slice(), &decoder.device)?;
        let (cos, sin) = decoder.rotary.lookup(&positions)?;
        Ok(Layout { attn, cos, sin, visible })
    }
}

/// `x @ w^T + b` on a 2-D input.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: vb.get(size, "weight")?, eps: eps as f32 })
    }

    /// Gemma's: the stored weight is an offset from 1, the scale is `1 + weight`.
    pub fn load_offset(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(size, "weight")?;
        let weight = (weight.to_dtype(DType::F32)? + 1.0)?.to_dtype(weight.dtype())?;
        Ok(RmsNorm { weight, eps: eps as f32 })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

struct SelfAttention {
    /// q, k and v projections fused into one matrix `[(heads + 2 * kv_heads) * head_dim, hidden]`.
    qkv_weight: Tensor,
    qkv_bias: Option<Tensor>,
    o_weight: Tensor,
    /// Llama's and Qwen3's `o_proj` bias, there with `attention_bias` (Qwen2 has none).
    o_bias: Option<Tensor>,
    /// Qwen3's per-head RMSNorm on q and k, applied before the rotation.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, cfg: &ModelConfig, qk_norm: bool) -> Result<Self> {
        let (h, kv, d, hidden) =
            (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size);
        let q = vb.pp("q_proj");
        let k = vb.pp("k_proj");
        let v = vb.pp("v_proj");
        let qkv_weight = Tensor::cat(
            &[
                q.get((h * d, hidden), "weight")?,
                k.get((kv * d, hidden), "weight")?,
                v.get((kv * d, hidden), "weight")?,
            ],
            0,
        )?;
        let qkv_bias = if cfg.attention_bias {
            Some(Tensor::cat(&[q.get(h * d, "bias")?, k.get(kv * d, "bias")?, v.get(kv * d, "bias")?], 0)?)
        } else {
            None
        };
        let o_weight = vb.pp("o_proj").get((hidden, h * d), "weight")?;
        let o_bias = match cfg.output_bias {
            true => Some(vb.pp("o_proj").get(hidden, "bias")?),
            false => None,
        };
        let (q_norm, k_norm) = if qk_norm {
            (
                Some(RmsNorm::load(vb.pp("q_norm"), d, cfg.rms_norm_eps)?),
                Some(RmsNorm::load(vb.pp("k_norm"), d, cfg.rms_norm_eps)?),
            )
        } else {
            (None, None)
        };
        Ok(SelfAttention {
            qkv_weight,
            qkv_bias,
            o_weight,
            o_bias,
            q_norm,
            k_norm,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        })
    }

    /// One of q/k/v out of the fused projection, packed: `[tokens, heads, head_dim]`.
    fn split(&self, qkv: &Tensor, layout: &Layout, offset: usize, heads: usize) -> Result<Tensor> {
        let d = self.head_dim;
        qkv.narrow(1, offset * d, heads * d)?.contiguous()?.reshape((layout.attn.tokens, heads, d))
    }

    fn forward(&self, x: &Tensor, layout: &Layout) -> Result<Tensor> {
        self.forward_rows(x, layout, false)
    }

    /// With `last_only` (packed layout only), just each text's last row: `[texts, hidden]`.
    fn forward_rows(&self, x: &Tensor, layout: &Layout, last_only: bool) -> Result<Tensor> {
        let (h, kv) = (self.heads, self.kv_heads);
        let qkv = linear(x, &self.qkv_weight, self.qkv_bias.as_ref())?;
        let mut q = self.split(&qkv, layout, 0, h)?;
        let mut k = self.split(&qkv, layout, h, kv)?;
        let v = self.split(&qkv, layout, h + kv, kv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = attention::rope(&q, &layout.cos, &layout.sin)?;
        let k = attention::rope(&k, &layout.cos, &layout.sin)?;
        if last_only {
            let a = &layout.attn;
            let out = super::varlen_cpu::attention(&q, &k, &v, &a.spans, layout.visible, Queries::Last)?;
            return linear(&out, &self.o_weight, self.o_bias.as_ref());
        }
        let out = layout.attn.attend(&q, &k, &v, layout.visible)?;
        linear(&out, &self.o_weight, self.o_bias.as_ref())
    }
}

impl SelfAttention {
    /// The padded path for each text's last query alone (the pooled row): `[texts, hidden]`.
    /// Every token still serves as a key and value.
    fn forward_last(&self, x: &Tensor, layout: &Layout, pooled: &Tensor) -> Result<Tensor> {
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let b = layout.attn.texts;
        let qkv = linear(x, &self.qkv_weight, self.qkv_bias.as_ref())?;
        let mut q = qkv.index_select(pooled, 0)?.narrow(1, 0, h * d)?.contiguous()?.reshape((b, h, d))?;
        let mut k = self.split(&qkv, layout, h, kv)?;
        let v = self.split(&qkv, layout, h + kv, kv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let (cos, sin) = (layout.cos.index_select(pooled, 0)?, layout.sin.index_select(pooled, 0)?);
        let q = attention::rope(&q, &cos, &sin)?;
        let k = attention::rope(&k, &layout.cos, &layout.sin)?;
        let k = layout.attn.to_rect(&k, kv, d)?;
        let v = layout.attn.to_rect(&v, kv, d)?;
        // The same grouped-query layout as the full path, with one query row per text; causal
        // or not, the last query sees every real key.
        let q = (q.reshape((b, kv, h / kv, d))? * (1.0 / (d as f64).sqrt()))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match layout.attn.key_mask() {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let out = attention::softmax(&scores)?.matmul(&v)?; // [b, kv, group, d]
        linear(&out.reshape((b, h * d))?, &self.o_weight, self.o_bias.as_ref())
    }
}

struct Mlp {
    /// gate and up projections fused: `[2 * intermediate, hidden]`.
    gate_up: Tensor,
    down: Tensor,
    intermediate: usize,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (i, hidden) = (cfg.intermediate_size, cfg.hidden_size);
        let gate_up = Tensor::cat(
            &[vb.pp("gate_proj").get((i, hidden), "weight")?, vb.pp("up_proj").get((i, hidden), "weight")?],
            0,
        )?;
        let down = vb.pp("down_proj").get((hidden, i), "weight")?;
        Ok(Mlp { gate_up, down, intermediate: i })
    }

    /// `cpu_f32`: the packed CPU path, where the fused parallel kernel applies.
    fn forward(&self, x: &Tensor, cpu_f32: bool) -> Result<Tensor> {
        let gu = linear(x, &self.gate_up, None)?;
        if cpu_f32 {
            return linear(&super::cpu_ops::swiglu(&gu, self.intermediate)?, &self.down, None);
        }
        let product = {
            let gate = gu.narrow(1, 0, self.intermediate)?;
            let up = gu.narrow(1, self.intermediate, self.intermediate)?;
            (candle_nn::ops::silu(&gate)? * up)?
        };
        drop(gu); // [tokens, 2 × intermediate]: the largest activation, gone before `down`
        linear(&product, &self.down, None)
    }
}

struct DecoderLayer {
    input_norm: RmsNorm,
    attention: SelfAttention,
    post_attention_norm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn forward(&self, x: &Tensor, layout: &Layout) -> Result<Tensor> {
        let x = (x + self.attention.forward(&self.input_norm.forward(x)?, layout)?)?;
        &x + self.mlp.forward(&self.post_attention_norm.forward(&x)?, layout.attn.packed)?
    }

    /// The layer's output at the `pooled` rows only, `[texts, hidden]`. Every token still
    /// serves as a key and value, but queries, the output projection and the MLP run for the
    /// pooled rows alone: in the last layer nothing else is read.
    fn forward_pooled(&self, x: &Tensor, layout: &Layout, pooled: &Tensor) -> Result<Tensor> {
        let normed = self.input_norm.forward(x)?;
        let packed = layout.attn.packed;
        let attn = if packed {
            self.attention.forward_rows(&normed, layout, true)?
        } else {
            self.attention.forward_last(&normed, layout, pooled)?
        };
        let x = (x.index_select(pooled, 0)? + attn)?;
        &x + self.mlp.forward(&self.post_attention_norm.forward(&x)?, packed)?
    }
}

/// Which optional parts an architecture has.
pub struct DecoderOptions {
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    /// Causal (`true`) or bidirectional attention.
    pub causal: bool,
    /// Per-text attention on packed tokens (CPU f32) instead of the padded rectangle.
    pub packed: bool,
}

/// A Qwen-family decoder turned embedder.
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rotary: Rotary,
    causal: bool,
    packed: bool,
    hidden_size: usize,
    heads: usize,
    /// See [`super::EmbeddingModel::limit_attention`].
    attention_limit: std::sync::atomic::AtomicUsize,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Loads from a `VarBuilder` rooted at the decoder (`embed_tokens`, `layers.N`, `norm`).
    pub fn load(vb: VarBuilder, cfg: &ModelConfig, opts: DecoderOptions) -> Result<Self> {
        let embed_tokens = vb.pp("embed_tokens").get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(DecoderLayer {
                    input_norm: RmsNorm::load(vb.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
                    attention: SelfAttention::load(vb.pp("self_attn"), cfg, opts.qk_norm)?,
                    post_attention_norm: RmsNorm::load(
                        vb.pp("post_attention_layernorm"),
                        cfg.hidden_size,
                        cfg.rms_norm_eps,
                    )?,
                    mlp: Mlp::load(vb.pp("mlp"), cfg)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(vb.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let rotary = Rotary::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_scaling,
            cfg.max_position_embeddings,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Decoder {
            embed_tokens,
            layers,
            norm,
            rotary,
            causal: opts.causal,
            packed: opts.packed,
            hidden_size: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            attention_limit: std::sync::atomic::AtomicUsize::new(MAX_ATTENTION_ELEMENTS),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }
}

impl super::EmbeddingModel for Decoder {
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> Result<Tensor> {
        if batch.is_empty() {
            return Tensor::zeros((0, self.hidden_size), DType::F32, &self.device);
        }
        let layout = Layout::new(batch, self)?;
        let ids = Tensor::new(batch.input_ids.as_slice(), &self.device)?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        let rows_tensor = rows.map(|r| Tensor::new(r, &self.device)).transpose()?;
        let Some((last, rest)) = self.layers.split_last() else {
            let x = match &rows_tensor {
                Some(r) => x.index_select(r, 0)?,
                None => x,
            };
            return self.norm.forward(&x)?.to_dtype(DType::F32);
        };
        for layer in rest {
            x = layer.forward(&x, &layout)?;
        }
        // NOTE: when the pooling reads one row per text, the last layer computes only those
        // rows (and the final norm, being per token, too). Both attention paths compute each
        // text's last query alone, so that shortcut applies when the rows are the last tokens.
        let x = match (rows, &rows_tensor) {
            (Some(r), Some(t)) if r == batch.last_tokens().as_slice() => {
                last.forward_pooled(&x, &layout, t)?
            }
            (_, Some(t)) => last.forward(&x, &layout)?.index_select(t, 0)?,
            _ => last.forward(&x, &layout)?,
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
