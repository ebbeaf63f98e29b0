//! Self-attention over a packed batch, shared by every architecture (the Qwen decoder, the
//! BERT-family encoders, ModernBERT): the batch's layout (packed per-text spans, the padded
//! rectangle and its masks), rotary tables, and the padded attention computed in pieces.
//!
//! Hidden states stay packed, `[tokens, hidden]`. On the CPU in f32 attention runs per text on
//! the packed tokens (`varlen_cpu.rs`); elsewhere q/k/v are gathered into a right-padded
//! rectangle `[texts, heads, longest, head_dim]`, masked (padding keys; the causal triangle or a
//! sliding window where the layer has one) and scattered back.

use candle_core::{DType, Device, Result, Tensor};

use super::config::RopeScaling;
use crate::batch::Batch;

/// Most elements one attention score tensor may have on the padded path. candle's CUDA softmax
/// indexes elements with 32-bit signed ints (`row * ncols + col`), and its element-wise kernels
/// are launched with 32-bit counts, so `[texts, heads, queries, keys]` stays below 2³¹.
pub const MAX_ATTENTION_ELEMENTS: usize = (1 << 31) - 1;

/// Which keys of its own text a query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visible {
    /// Every token of the text (bidirectional).
    All,
    /// Tokens up to and including the query's own position.
    Causal,
    /// Tokens at most this many positions away on either side (ModernBERT's local layers).
    Window(usize),
}

impl Visible {
    /// Whether query `i` sees key `j` (positions within one text).
    #[cfg(test)]
    pub fn sees(self, i: usize, j: usize) -> bool {
        match self {
            Visible::All => true,
            Visible::Causal => j <= i,
            Visible::Window(w) => i.abs_diff(j) <= w,
        }
    }

    /// The keys query `i` of a text of `len` tokens sees, as a range.
    #[inline]
    pub fn keys(self, i: usize, len: usize) -> std::ops::Range<usize> {
        match self {
            Visible::All => 0..len,
            Visible::Causal => 0..i + 1,
            Visible::Window(w) => i.saturating_sub(w)..(i + w + 1).min(len),
        }
    }
}

/// Cos/sin tables for every position up to `max_positions`, looked up per token.
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: RopeScaling,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq = inv_freq(head_dim, theta, scaling);
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

    /// Per-token cos and sin, `[tokens, head_dim / 2]` each, for `positions` (u32, `[tokens]`).
    pub fn lookup(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.index_select(positions, 0)?, self.sin.index_select(positions, 0)?))
    }
}

/// The rotary frequencies, rescaled as `scaling` says. NOTE: computed in f32 like transformers
/// (inv_freq, its rescaling and the angle products are f32 there), then cast to the model dtype.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: RopeScaling) -> Vec<f32> {
    let base = (0..head_dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32));
    match scaling {
        RopeScaling::None => base.collect(),
        RopeScaling::Linear { factor } => base.map(|f| f / factor as f32).collect(),
        // NOTE: GTE's NTKScalingRotaryEmbedding, in f32 as it computes it.
        RopeScaling::Ntk { factor, mixed_b: None } => {
            let base = theta as f32 * factor as f32;
            let shrink = (factor as f32).powf(2.0 / head_dim as f32);
            (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32) / shrink).collect()
        }
        RopeScaling::Ntk { factor, mixed_b: Some(b) } => {
            let a = (factor as f32).ln() / ((head_dim / 2) as f32).powf(b as f32);
            base.enumerate().map(|(i, f)| f / (a * ((i + 1) as f32).powf(b as f32)).exp()).collect()
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original } => {
            let (factor, low, high, original) =
                (factor as f32, low_freq_factor as f32, high_freq_factor as f32, original as f32);
            let (long, short) = (original / low, original / high);
            base.map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < short {
                    f
                } else if wavelen > long {
                    f / factor
                } else {
                    let smooth = (original / wavelen - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect()
        }
    }
}

/// Rotates `x` (`[tokens, heads, head_dim]`, packed) by each token's `cos`/`sin`
/// (`[tokens, head_dim / 2]`), halves rotated as in transformers' `rotate_half`: the fused
/// parallel kernel on the CPU in f32, candle's `rope_thd` elsewhere.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        super::cpu_ops::rope_packed(&x.contiguous()?, cos, sin)
    } else {
        candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)
    }
}

/// An additive mask from a 0/1 "blocked" tensor: -inf where blocked, 0 elsewhere.
fn blocked(is_blocked: &Tensor, dtype: DType) -> Result<Tensor> {
    let zeros = is_blocked.zeros_like()?.to_dtype(dtype)?;
    let minus_inf = (zeros.ones_like()? * f64::NEG_INFINITY)?;
    is_blocked.where_cond(&minus_inf, &zeros)
}

/// Everything about one batch's layout that every layer shares, built once per forward pass.
pub struct Layout {
    pub texts: usize,
    pub tokens: usize,
    pub max_len: usize,
    /// Each text's (start, len) in the packed tokens.
    pub spans: Vec<(usize, usize)>,
    /// Attention runs on the packed tokens (CPU, f32) instead of the padded rectangle.
    pub packed: bool,
    /// For each cell of the padded rectangle, the packed token it holds (padding cells repeat a
    /// real token; they are masked as keys and their query rows are dropped). `None` when the
    /// batch has no padding and packed == padded.
    to_padded: Option<Tensor>,
    /// For each packed token, its cell in the padded rectangle.
    to_packed: Option<Tensor>,
    /// Additive masks over the padded scores, `[texts, 1, 1, max_len, max_len]` or broadcastable
    /// to it, for each kind of layer the model has; `None` when nothing needs masking.
    masks: Vec<(Visible, Option<Tensor>)>,
    /// Additive mask of the padding keys, `[texts, 1, 1, max_len]`: all a text's last query
    /// needs. `None` when the batch has no padding.
    key_mask: Option<Tensor>,
    /// Most elements of one padded score tensor (see [`padded_attention`]).
    pub attention_limit: usize,
}

impl Layout {
    /// The layout of `batch` for a model whose layers see keys as `visible` says (one entry per
    /// kind of layer it has). Masks are built only on the padded path.
    pub fn new(
        batch: &Batch,
        packed: bool,
        visible: &[Visible],
        attention_limit: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let texts = batch.len();
        let tokens = batch.input_ids.len();
        let max_len = batch.max_length as usize;
        let spans: Vec<(usize, usize)> = (0..texts).map(|b| batch.span(b)).collect();
        let mut layout = Layout {
            texts,
            tokens,
            max_len,
            spans,
            packed,
            to_padded: None,
            to_packed: None,
            masks: Vec::new(),
            key_mask: None,
            attention_limit,
        };
        if packed {
            return Ok(layout);
        }

        let padded = tokens != texts * max_len;
        if padded {
            let mut to_padded = Vec::with_capacity(texts * max_len);
            let mut to_packed = Vec::with_capacity(tokens);
            for (b, &(start, len)) in layout.spans.iter().enumerate() {
                for t in 0..max_len {
                    // NOTE: right padding; a padding cell points at the text's first token,
                    // which keeps the gather in bounds and is masked out as a key.
                    to_padded.push((start + t.min(len - 1)) as u32);
                }
                for t in 0..len {
                    to_packed.push((b * max_len + t) as u32);
                }
            }
            layout.to_padded = Some(Tensor::from_vec(to_padded, texts * max_len, device)?);
            layout.to_packed = Some(Tensor::from_vec(to_packed, tokens, device)?);
        }

        // NOTE: the masks are built on the device from lengths and positions: built on the host
        // they would be texts × max_len² values to fill and copy for every batch.
        if padded {
            let lens: Vec<u32> = layout.spans.iter().map(|&(_, len)| len as u32).collect();
            let lens = Tensor::from_vec(lens, (texts, 1), device)?;
            let keys = Tensor::arange(0u32, max_len as u32, device)?.reshape((1, max_len))?;
            let mask = blocked(&keys.broadcast_ge(&lens)?, dtype)?;
            layout.key_mask = Some(mask.reshape((texts, 1, 1, max_len))?);
        }
        for &kind in visible {
            let shape = match kind {
                Visible::Causal if max_len > 1 => {
                    let keys = Tensor::arange(0u32, max_len as u32, device)?;
                    let queries = keys.reshape((max_len, 1))?;
                    Some(blocked(&keys.reshape((1, max_len))?.broadcast_gt(&queries)?, dtype)?)
                }
                Visible::Window(w) if max_len > w + 1 => {
                    let keys = Tensor::arange(0f32, max_len as f32, device)?;
                    let queries = keys.reshape((max_len, 1))?;
                    let distance = keys.reshape((1, max_len))?.broadcast_sub(&queries)?.abs()?;
                    Some(blocked(&distance.gt(w as f64)?, dtype)?)
                }
                _ => None,
            }
            .map(|m| m.reshape((1, 1, 1, max_len, max_len)))
            .transpose()?;
            let mask = match (&layout.key_mask, shape) {
                (Some(keys), Some(shape)) => Some(keys.unsqueeze(3)?.broadcast_add(&shape)?),
                (Some(keys), None) => Some(keys.unsqueeze(3)?),
                (None, shape) => shape,
            };
            layout.masks.push((kind, mask));
        }
        Ok(layout)
    }

    /// The padded path's mask for layers that see keys as `visible`.
    pub fn mask(&self, visible: Visible) -> Option<&Tensor> {
        self.masks.iter().find(|(k, _)| *k == visible).and_then(|(_, m)| m.as_ref())
    }

    /// The padding keys' mask, `[texts, 1, 1, max_len]` (`None` without padding).
    pub fn key_mask(&self) -> Option<&Tensor> {
        self.key_mask.as_ref()
    }

    /// `[tokens, width]` packed → `[texts * max_len, width]` padded.
    pub fn pad(&self, x: &Tensor) -> Result<Tensor> {
        match &self.to_padded {
            Some(idx) => x.index_select(idx, 0),
            None => Ok(x.clone()),
        }
    }

    /// `[texts * max_len, width]` padded → `[tokens, width]` packed.
    pub fn unpad(&self, x: &Tensor) -> Result<Tensor> {
        match &self.to_packed {
            Some(idx) => x.index_select(idx, 0),
            None => Ok(x.clone()),
        }
    }

    /// `[tokens, heads, d]` (or `[1, tokens, heads, d]`) packed → `[texts, heads, max_len, d]`.
    pub fn to_rect(&self, x: &Tensor, heads: usize, d: usize) -> Result<Tensor> {
        self.pad(&x.reshape((self.tokens, heads * d))?)?
            .reshape((self.texts, self.max_len, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Attention of every token: q `[tokens, heads, d]`, k and v `[tokens, kv_heads, d]`, packed
    /// and already rotated; returns `[tokens, heads * d]` (before the output projection).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, visible: Visible) -> Result<Tensor> {
        let (n, h, d) = q.dims3()?;
        let kv = k.dim(1)?;
        if self.packed {
            return super::varlen_cpu::attention(
                &q.contiguous()?,
                &k.contiguous()?,
                &v.reshape((n, kv, d))?.contiguous()?,
                &self.spans,
                visible,
                super::varlen_cpu::Queries::All,
            );
        }
        // NOTE: 1/√d is folded into q ([texts, heads, L, d]) rather than applied to the scores
        // ([texts, heads, L, L]): fewer elements, and one score-sized tensor less.
        let q = (self.to_rect(q, h, d)? * (1.0 / (d as f64).sqrt()))?;
        let k = self.to_rect(k, kv, d)?;
        let v = self.to_rect(v, kv, d)?;
        let out = padded_attention(&q, &k, &v, self.mask(visible), self.attention_limit)?; // [b, h, l, d]
        let out = out.transpose(1, 2)?.contiguous()?.reshape((self.texts * self.max_len, h * d))?;
        self.unpad(&out)
    }
}

/// A layer's attention and the residual rows it joins: every token's, or (`rows`, with `queries`
/// naming them) only the pooled rows' — all the last layer needs; the packed path then computes
/// just those queries.
pub fn attend_rows(
    layout: &Layout,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    visible: Visible,
    x: &Tensor,
    rows: Option<(&Tensor, super::varlen_cpu::Queries)>,
) -> Result<(Tensor, Tensor)> {
    use super::varlen_cpu::Queries;
    Ok(match rows {
        Some((rows, queries)) if layout.packed && queries != Queries::All => (
            super::varlen_cpu::attention(q, k, v, &layout.spans, visible, queries)?,
            x.index_select(rows, 0)?,
        ),
        Some((rows, _)) => {
            (layout.attend(q, k, v, visible)?.index_select(rows, 0)?, x.index_select(rows, 0)?)
        }
        None => (layout.attend(q, k, v, visible)?, x.clone()),
    })
}

/// Attention over the padded rectangle: `q` (already scaled by 1/√d) `[b, heads, l, d]`, `k` and
/// `v` `[b, kv_heads, l, d]`, `mask` broadcastable to `[b, 1, 1, l, l]`; returns `[b, heads, l, d]`.
///
/// Computed in pieces — groups of texts, and for a text too long for one piece, groups of query
/// rows — so that no score tensor has more than `limit` elements (at most
/// [`MAX_ATTENTION_ELEMENTS`]); the batch budget normally makes it one piece. Each piece holds at
/// most two score-sized tensors at once.
pub fn padded_attention(
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
pub fn softmax(x: &Tensor) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_keys_match_the_rule() {
        for kind in [Visible::All, Visible::Causal, Visible::Window(0), Visible::Window(2)] {
            for len in 1..7 {
                for i in 0..len {
                    let want: Vec<usize> = (0..len).filter(|&j| kind.sees(i, j)).collect();
                    assert_eq!(kind.keys(i, len).collect::<Vec<_>>(), want, "{kind:?} len {len} query {i}");
                }
            }
        }
    }

    /// The padded path with a window mask equals the packed CPU path.
    #[test]
    fn windowed_padded_attention_equals_the_packed_path() {
        let dev = Device::Cpu;
        let batch = Batch::new(&[&[1; 9], &[2; 3], &[3; 6]]);
        let (n, h, d) = (batch.input_ids.len(), 2, 4);
        let q = Tensor::randn(0f32, 1.0, (n, h, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (n, h, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (n, h, d), &dev).unwrap();
        for visible in [Visible::All, Visible::Causal, Visible::Window(2)] {
            let packed =
                Layout::new(&batch, true, &[visible], MAX_ATTENTION_ELEMENTS, DType::F32, &dev).unwrap();
            let padded =
                Layout::new(&batch, false, &[visible], MAX_ATTENTION_ELEMENTS, DType::F32, &dev).unwrap();
            let a = packed.attend(&q, &k, &v, visible).unwrap();
            let b = padded.attend(&q, &k, &v, visible).unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{visible:?}: {diff}");
        }
    }
}
