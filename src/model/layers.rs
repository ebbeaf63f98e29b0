//! The decoder shared by the Qwen family: RMSNorm, rotary embeddings, grouped-query attention
//! and the SwiGLU MLP, run for embedding (no KV cache, one pass, pooled rows only).
//!
//! Layout: hidden states stay *packed* — `[tokens, hidden]`, the texts of a batch one after the
//! other with no padding — through every projection and the MLP. Only attention needs a
//! rectangle: q/k/v are gathered into `[texts, heads, max_len, head_dim]` (padding on the right),
//! masked, and scattered back. A varlen attention kernel can later replace exactly that step.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::ModelConfig;
use crate::batch::Batch;

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
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Cos/sin tables for every position up to `max_positions`, looked up per token.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &ModelConfig, max_positions: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        // NOTE: computed in f32 like transformers (inv_freq and the angle products are f32),
        // then cast to the model dtype.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / cfg.head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?;
        Ok(Rotary { cos, sin })
    }
}

/// Everything about one batch's layout that every layer shares, built once per forward pass.
struct Layout {
    texts: usize,
    tokens: usize,
    max_len: usize,
    /// Per-token cos/sin, `[tokens, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// For each cell of the padded rectangle, the packed token it holds (padding cells repeat a
    /// real token; they are masked as keys and their query rows are dropped). `None` when the
    /// batch has no padding and packed == padded.
    to_padded: Option<Tensor>,
    /// For each packed token, its cell in the padded rectangle.
    to_packed: Option<Tensor>,
    /// Additive mask over the padded scores, `[texts, 1, 1, max_len, max_len]` or broadcastable
    /// to it; `None` when nothing needs masking.
    mask: Option<Tensor>,
    /// Additive mask of the padding keys, `[texts, 1, 1, max_len]`: all a text's last query
    /// needs. `None` when the batch has no padding.
    key_mask: Option<Tensor>,
    /// Attention runs on the packed tokens (CPU, f32) instead of the padded rectangle.
    packed: Option<Packed>,
    /// Most elements of one padded score tensor (see `padded_attention`).
    attention_limit: usize,
}

/// An additive mask from a 0/1 "blocked" tensor: -inf where blocked, 0 elsewhere.
fn blocked(is_blocked: &Tensor, dtype: DType) -> Result<Tensor> {
    let zeros = is_blocked.zeros_like()?.to_dtype(dtype)?;
    let minus_inf = (zeros.ones_like()? * f64::NEG_INFINITY)?;
    is_blocked.where_cond(&minus_inf, &zeros)
}

/// What packed attention needs: each text's (start, len).
struct Packed {
    spans: Vec<(usize, usize)>,
    causal: bool,
}

impl Layout {
    fn new(batch: &Batch, decoder: &Decoder) -> Result<Self> {
        let (rotary, causal, packed, dtype, device) =
            (&decoder.rotary, decoder.causal, decoder.packed, decoder.dtype, &decoder.device);
        let attention_limit = decoder.attention_limit.load(std::sync::atomic::Ordering::Relaxed);
        let texts = batch.len();
        let tokens = batch.input_ids.len();
        let max_len = batch.max_length as usize;
        let positions = Tensor::new(batch.position_ids.as_slice(), device)?;
        let cos = rotary.cos.index_select(&positions, 0)?;
        let sin = rotary.sin.index_select(&positions, 0)?;
        if packed {
            let spans = (0..texts).map(|b| batch.span(b)).collect();
            let packed = Some(Packed { spans, causal });
            return Ok(Layout {
                texts,
                tokens,
                max_len,
                cos,
                sin,
                to_padded: None,
                to_packed: None,
                mask: None,
                key_mask: None,
                packed,
                attention_limit,
            });
        }

        let padded = tokens != texts * max_len;
        let (to_padded, to_packed) = if padded {
            let mut to_padded = Vec::with_capacity(texts * max_len);
            let mut to_packed = Vec::with_capacity(tokens);
            for b in 0..texts {
                let (start, len) = batch.span(b);
                for t in 0..max_len {
                    // NOTE: right padding; a padding cell points at the text's first token,
                    // which keeps the gather in bounds and is masked out as a key.
                    to_padded.push((start + t.min(len - 1)) as u32);
                }
                for t in 0..len {
                    to_packed.push((b * max_len + t) as u32);
                }
            }
            (
                Some(Tensor::from_vec(to_padded, texts * max_len, device)?),
                Some(Tensor::from_vec(to_packed, tokens, device)?),
            )
        } else {
            (None, None)
        };

        // NOTE: the masks are built on the device from lengths and positions: built on the host
        // they would be texts × max_len² values to fill and copy for every batch.
        let key_mask = if padded {
            let lens: Vec<u32> = (0..texts).map(|b| batch.span(b).1 as u32).collect();
            let lens = Tensor::from_vec(lens, (texts, 1), device)?;
            let keys = Tensor::arange(0u32, max_len as u32, device)?.reshape((1, max_len))?;
            let mask = blocked(&keys.broadcast_ge(&lens)?, dtype)?;
            Some(mask.reshape((texts, 1, 1, max_len))?)
        } else {
            None
        };
        let causal_mask = if causal && max_len > 1 {
            let keys = Tensor::arange(0u32, max_len as u32, device)?;
            let queries = keys.reshape((max_len, 1))?;
            let mask = blocked(&keys.reshape((1, max_len))?.broadcast_gt(&queries)?, dtype)?;
            Some(mask.reshape((1, 1, 1, max_len, max_len))?)
        } else {
            None
        };
        let mask = match (&key_mask, causal_mask) {
            (Some(keys), Some(causal)) => Some(keys.unsqueeze(3)?.broadcast_add(&causal)?),
            (Some(keys), None) => Some(keys.unsqueeze(3)?),
            (None, causal) => causal,
        };
        Ok(Layout {
            texts,
            tokens,
            max_len,
            cos,
            sin,
            to_padded,
            to_packed,
            mask,
            key_mask,
            packed: None,
            attention_limit,
        })
    }

    /// `[tokens, width]` packed → `[texts * max_len, width]` padded.
    fn pad(&self, x: &Tensor) -> Result<Tensor> {
        match &self.to_padded {
            Some(idx) => x.index_select(idx, 0),
            None => Ok(x.clone()),
        }
    }

    /// `[texts * max_len, width]` padded → `[tokens, width]` packed.
    fn unpad(&self, x: &Tensor) -> Result<Tensor> {
        match &self.to_packed {
            Some(idx) => x.index_select(idx, 0),
            None => Ok(x.clone()),
        }
    }
}

struct SelfAttention {
    /// q, k and v projections fused into one matrix `[(heads + 2 * kv_heads) * head_dim, hidden]`.
    qkv_weight: Tensor,
    qkv_bias: Option<Tensor>,
    o_weight: Tensor,
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
            q_norm,
            k_norm,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        })
    }

    /// Projects, normalises and rotates one of q/k/v out of the fused projection, packed:
    /// `[1, tokens, heads, head_dim]`.
    fn split(&self, qkv: &Tensor, layout: &Layout, offset: usize, heads: usize) -> Result<Tensor> {
        let d = self.head_dim;
        qkv.narrow(1, offset * d, heads * d)?.contiguous()?.reshape((1, layout.tokens, heads, d))
    }

    /// `[1, tokens, heads, d]` packed → `[texts, heads, max_len, d]` padded.
    fn to_rect(&self, x: &Tensor, layout: &Layout, heads: usize) -> Result<Tensor> {
        let d = self.head_dim;
        layout
            .pad(&x.reshape((layout.tokens, heads * d))?)?
            .reshape((layout.texts, layout.max_len, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, x: &Tensor, layout: &Layout) -> Result<Tensor> {
        self.forward_rows(x, layout, false)
    }

    /// With `last_only` (packed layout only), just each text's last row: `[texts, hidden]`.
    fn forward_rows(&self, x: &Tensor, layout: &Layout, last_only: bool) -> Result<Tensor> {
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let (b, l) = (layout.texts, layout.max_len);
        let qkv = linear(x, &self.qkv_weight, self.qkv_bias.as_ref())?;
        let mut q = self.split(&qkv, layout, 0, h)?;
        let mut k = self.split(&qkv, layout, h, kv)?;
        let v = self.split(&qkv, layout, h + kv, kv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        if let Some(packed) = &layout.packed {
            let n = layout.tokens;
            let q = super::cpu_ops::rope_packed(&q.reshape((n, h, d))?, &layout.cos, &layout.sin)?;
            let k = super::cpu_ops::rope_packed(&k.reshape((n, kv, d))?, &layout.cos, &layout.sin)?;
            let out = super::varlen_cpu::attention(
                &q,
                &k,
                &v.reshape((n, kv, d))?,
                &packed.spans,
                packed.causal,
                last_only,
            )?;
            return linear(&out, &self.o_weight, None);
        }

        let q = candle_nn::rotary_emb::rope_thd(&q, &layout.cos, &layout.sin)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, &layout.cos, &layout.sin)?;
        // NOTE: 1/√d is folded into q ([texts, heads, L, d]) rather than applied to the scores
        // ([texts, heads, L, L]): fewer elements, and one score-sized tensor less.
        let q = (self.to_rect(&q, layout, h)? * (1.0 / (d as f64).sqrt()))?;
        let k = self.to_rect(&k, layout, kv)?;
        let v = self.to_rect(&v, layout, kv)?;
        let out = padded_attention(&q, &k, &v, layout.mask.as_ref(), layout.attention_limit)?; // [b, h, l, d]
        let out = out.transpose(1, 2)?.contiguous()?.reshape((b * l, h * d))?;
        linear(&layout.unpad(&out)?, &self.o_weight, None)
    }
}

/// Most elements one attention score tensor may have on the padded path. candle's CUDA softmax
/// indexes elements with 32-bit signed ints (`row * ncols + col`), and its element-wise kernels
/// are launched with 32-bit counts, so `[texts, heads, queries, keys]` stays below 2³¹.
pub const MAX_ATTENTION_ELEMENTS: usize = (1 << 31) - 1;

/// Attention over the padded rectangle: `q` (already scaled by 1/√d) `[b, heads, l, d]`, `k` and
/// `v` `[b, kv_heads, l, d]`, `mask` broadcastable to `[b, 1, 1, l, l]`; returns `[b, heads, l, d]`.
///
/// Computed in pieces — groups of texts, and for a text too long for one piece, groups of query
/// rows — so that no score tensor has more than `limit` elements (at most
/// [`MAX_ATTENTION_ELEMENTS`]); the batch budget normally makes it one piece. Each piece holds at
/// most two score-sized tensors at once.
fn padded_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    limit: usize,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    let limit = limit.clamp(1, MAX_ATTENTION_ELEMENTS);
    let per_text = h * l * l;
    let (texts_per_piece, rows_per_piece) =
        if per_text <= limit { ((limit / per_text).clamp(1, b), l) } else { (1, (limit / (h * l)).max(1)) };
    let mut texts = Vec::new();
    for t0 in (0..b).step_by(texts_per_piece) {
        let nt = texts_per_piece.min(b - t0);
        let mut rows = Vec::new();
        for r0 in (0..l).step_by(rows_per_piece) {
            let nr = rows_per_piece.min(l - r0);
            rows.push(attention_piece(q, k, v, mask, (t0, nt), (r0, nr))?);
        }
        texts.push(if rows.len() == 1 { rows.remove(0) } else { Tensor::cat(&rows, 2)? });
    }
    if texts.len() == 1 {
        Ok(texts.remove(0))
    } else {
        Tensor::cat(&texts, 0)
    }
}

/// Softmax over the last dimension, summed in f32. candle's CUDA kernel sums bf16 and f16 rows
/// in f32; its CPU kernel sums in the element type, which over hundreds of keys is off by
/// several percent (rows summing to 1.07 at 512 keys, 2.6 at 4096, in bf16), so on the CPU the
/// scores go through f32 — and the CPU runs of the padded path check the numbers CUDA computes.
fn softmax(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() != DType::F32 {
        candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// One piece of [`padded_attention`]: texts `t0..t0 + nt`, query rows `r0..r0 + nr`.
fn attention_piece(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    (t0, nt): (usize, usize),
    (r0, nr): (usize, usize),
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let group = h / kv;
    let slice = |x: &Tensor, dim: usize, start: usize, len: usize| -> Result<Tensor> {
        if x.dim(dim)? == 1 || (start == 0 && len == x.dim(dim)?) {
            Ok(x.clone())
        } else {
            x.narrow(dim, start, len)
        }
    };
    let q = slice(&slice(q, 0, t0, nt)?, 2, r0, nr)?.contiguous()?;
    let (k, v) = (slice(k, 0, t0, nt)?, slice(v, 0, t0, nt)?);
    // NOTE: grouped-query attention without repeating K/V: the `group` query heads that share
    // a KV head are stacked along the row axis, so one matmul per KV head serves them all
    // (query head i uses KV head i / group, as transformers' repeat_kv does).
    let q = q.reshape((nt, kv, group * nr, d))?;
    let scores = q.matmul(&k.t()?)?; // [nt, kv, group * nr, l]
    let probs = match mask {
        Some(mask) => {
            let mask = slice(&slice(mask, 0, t0, nt)?, 3, r0, nr)?;
            let masked = scores.reshape((nt, kv, group, nr, l))?.broadcast_add(&mask)?;
            drop(scores);
            softmax(&masked)?
        }
        None => softmax(&scores)?,
    };
    let out = probs.reshape((nt, kv, group * nr, l))?.matmul(&v)?; // [nt, kv, group * nr, d]
    drop(probs);
    debug_assert!(nt <= b);
    out.reshape((nt, h, nr, d))
}

impl SelfAttention {
    /// The padded path for each text's last query alone (the pooled row): `[texts, hidden]`.
    /// Every token still serves as a key and value.
    fn forward_last(&self, x: &Tensor, layout: &Layout, pooled: &Tensor) -> Result<Tensor> {
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let b = layout.texts;
        let qkv = linear(x, &self.qkv_weight, self.qkv_bias.as_ref())?;
        let mut q = qkv.index_select(pooled, 0)?.narrow(1, 0, h * d)?.contiguous()?.reshape((1, b, h, d))?;
        let mut k = self.split(&qkv, layout, h, kv)?;
        let v = self.split(&qkv, layout, h + kv, kv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let (cos, sin) = (layout.cos.index_select(pooled, 0)?, layout.sin.index_select(pooled, 0)?);
        let q = candle_nn::rotary_emb::rope_thd(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_thd(&k, &layout.cos, &layout.sin)?;
        let k = self.to_rect(&k, layout, kv)?;
        let v = self.to_rect(&v, layout, kv)?;
        // The same grouped-query layout as the full path, with one query row per text; causal
        // or not, the last query sees every real key.
        let q = (q.reshape((b, kv, h / kv, d))? * (1.0 / (d as f64).sqrt()))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match &layout.key_mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let out = softmax(&scores)?.matmul(&v)?; // [b, kv, group, d]
        linear(&out.reshape((b, h * d))?, &self.o_weight, None)
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
        &x + self.mlp.forward(&self.post_attention_norm.forward(&x)?, layout.packed.is_some())?
    }

    /// The layer's output at the `pooled` rows only, `[texts, hidden]`. Every token still
    /// serves as a key and value, but queries, the output projection and the MLP run for the
    /// pooled rows alone: in the last layer nothing else is read.
    fn forward_pooled(&self, x: &Tensor, layout: &Layout, pooled: &Tensor) -> Result<Tensor> {
        let normed = self.input_norm.forward(x)?;
        let packed = layout.packed.is_some();
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
        let rotary = Rotary::new(cfg, cfg.max_position_embeddings, vb.dtype(), vb.device())?;
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
