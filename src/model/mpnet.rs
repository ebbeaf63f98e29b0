//! MPNet (all-mpnet-base-v2, multi-qa-mpnet-base-dot-v1): the shared BERT encoder under MPNet's
//! tensor names, positions counted from `pad + 1` (pad is 1) as XLM-R's, no token types, and a
//! learned relative position bias added to every layer's attention scores: T5's bidirectional
//! buckets of the key's offset from the query (32 buckets, exact below 8, logarithmic to 128),
//! one value per head and bucket, shared by all layers. On the packed CPU path the attention
//! kernel adds it per key offset (varlen_cpu.rs); on the padded path it joins the padding mask.
//!
//! Weight names: `embeddings.*`, `encoder.layer.N.{attention.attn.{q,k,v,o}, attention.LayerNorm,
//! intermediate.dense, output.dense, output.LayerNorm}`, `encoder.relative_attention_bias`, with
//! the `mpnet.` prefix of `MPNetForMaskedLM` checkpoints or without it.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{self, Layout, Visible};
use super::encoder::{Encoder, TensorNames};
use super::varlen_cpu::{self, Queries};
use super::ModelConfig;

const NAMES: TensorNames = TensorNames {
    layers: "encoder.layer",
    query: "attention.attn.q",
    key: "attention.attn.k",
    value: "attention.attn.v",
    attention_out: "attention.attn.o",
    attention_norm: "attention.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

/// NOTE: transformers buckets with 32 whatever `relative_attention_num_buckets` says (the table
/// has that many rows; 32 in every released checkpoint).
const BUCKETS: i64 = 32;
const MAX_DISTANCE: f32 = 128.0;

/// `packed`: per-text attention on packed tokens (CPU f32) instead of the padded rectangle.
pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<Encoder> {
    let rows = cfg.encoder.as_ref().map_or(BUCKETS as usize, |e| e.relative_buckets);
    let table = vb.get((rows, cfg.num_attention_heads), "encoder.relative_attention_bias.weight")?;
    Ok(Encoder::load(vb, cfg, &NAMES, packed, Some(1))?.with_relative_bias(table))
}

/// The bucket of a key `offset` positions after its query (negative: before), as transformers'
/// `MPNetEncoder.relative_position_bucket` computes it (in f32, truncated).
fn bucket(offset: i64) -> u32 {
    let half = BUCKETS / 2;
    let n = -offset;
    let base = if n < 0 { half } else { 0 };
    let n = n.abs();
    let exact = half / 2;
    let within = if n < exact {
        n
    } else {
        let log = (n as f32 / exact as f32).ln() / (MAX_DISTANCE / exact as f32).ln() * (half - exact) as f32;
        (exact + log as i64).min(half - 1)
    };
    (base + within) as u32
}

/// One batch's bias, in the form its attention path reads.
pub enum RelativeBias {
    /// The packed CPU path: per head, the bias of each key offset `-center..=center`.
    Offsets { values: Vec<f32>, center: usize },
    /// The padded path: every (query, key) pair of the rectangle, `[heads, len, len]`.
    Grid(Tensor),
}

/// The bias for texts up to `len` tokens, for the packed path or the padded one.
pub fn bias(table: &Tensor, len: usize, packed: bool) -> Result<RelativeBias> {
    if packed {
        let rows: Vec<Vec<f32>> = table.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        let heads = table.dim(1)?;
        let center = len.saturating_sub(1);
        let values = (0..heads)
            .flat_map(|h| {
                let rows = &rows;
                (-(center as i64)..=center as i64).map(move |o| rows[bucket(o) as usize][h])
            })
            .collect();
        return Ok(RelativeBias::Offsets { values, center });
    }
    let ids: Vec<u32> = (0..len).flat_map(|i| (0..len).map(move |j| bucket(j as i64 - i as i64))).collect();
    let ids = Tensor::new(ids.as_slice(), table.device())?;
    let heads = table.dim(1)?;
    Ok(RelativeBias::Grid(
        table.index_select(&ids, 0)?.reshape((len, len, heads))?.permute((2, 0, 1))?.contiguous()?,
    ))
}

/// Attention with the relative bias: q, k, v `[tokens, heads, d]` packed; returns
/// `[tokens, heads * d]`, or on the packed path with `Queries::First`/`Last` one row per text.
/// The packed path runs the CPU kernel with the bias per key offset; the padded one the batch's
/// rectangle with the bias folded into the padding mask.
pub fn attend(
    layout: &Layout,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &RelativeBias,
    queries: Queries,
) -> Result<Tensor> {
    let (_, h, d) = q.dims3()?;
    let grid = match bias {
        RelativeBias::Offsets { values, center } => {
            let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
            return varlen_cpu::attention_biased(&q, &k, &v, &layout.spans, queries, values.clone(), *center);
        }
        RelativeBias::Grid(grid) => grid,
    };
    let scale = 1.0 / (d as f64).sqrt();
    let (texts, len) = (layout.spans.len(), grid.dim(1)?);
    let bias = grid;
    let q = (layout.to_rect(q, h, d)? * scale)?;
    let (k, v) = (layout.to_rect(k, h, d)?, layout.to_rect(v, h, d)?);
    let bias = bias.reshape((1, h, 1, len, len))?;
    let mask = match layout.mask(Visible::All) {
        Some(m) => bias.broadcast_add(m)?,
        None => bias,
    };
    let out = attention::padded_attention(&q, &k, &v, Some(&mask), layout.attention_limit)?; // [b, h, l, d]
    let out = out.transpose(1, 2)?.contiguous()?.reshape((texts * len, h * d))?;
    layout.unpad(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_t5s_bidirectional_ones() {
        // transformers: relative_position_bucket(torch.tensor([...])) for these key offsets.
        let offsets = [0, 1, -1, 7, -7, 8, -8, 12, -12, 20, 64, -64, 127, 128, -128, 500, -500];
        let want = [0, 17, 1, 23, 7, 24, 8, 25, 9, 26, 30, 14, 31, 31, 15, 31, 15];
        let got: Vec<u32> = offsets.iter().map(|&o| bucket(o)).collect();
        assert_eq!(got, want.to_vec(), "{offsets:?}");
    }
}
