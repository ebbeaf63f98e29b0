//! Attention over packed texts on the CPU: each text attends only to its own tokens, so no
//! padding is computed and no mask is built. Used for f32 on the CPU, where candle's batched
//! matmul runs one small gemm per (text, head) with a thread barrier each, and padding showed
//! up as a third of the run time on review-length texts.
//!
//! Per text and query head the arithmetic is the textbook one (scores, max-subtracted softmax,
//! weighted sum of V), so a text's result does not depend on its batch.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// `q`: `[tokens, heads, d]`, `k` and `v`: `[tokens, kv_heads, d]`, all f32 and contiguous;
/// `spans`: (start, len) of each text. Returns `[tokens, heads * d]`, or with `last_only` just
/// each text's last query, `[texts, heads * d]` (all the last layer needs for pooling).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[(usize, usize)],
    causal: bool,
    last_only: bool,
) -> Result<Tensor> {
    let (tokens, heads, d) = q.dims3()?;
    let (_, kv_heads, _) = k.dims3()?;
    let group = heads / kv_heads;
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let k = k.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    let scale = 1.0 / (d as f32).sqrt();
    // One task per (text, head); each returns that head's rows of the text.
    let parts: Vec<Vec<f32>> = spans
        .par_iter()
        .flat_map_iter(|&(start, len)| (0..heads).map(move |h| (start, len, h)))
        .map(|(start, len, h)| {
            let kvh = h / group;
            let first = if last_only { len - 1 } else { 0 };
            let mut out = vec![0f32; (len - first) * d];
            let mut scores = vec![0f32; len];
            for i in first..len {
                let qi = &q[((start + i) * heads + h) * d..][..d];
                let keys = if causal { i + 1 } else { len };
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores[..keys].iter_mut().enumerate() {
                    let kj = &k[((start + j) * kv_heads + kvh) * d..][..d];
                    *s = dot(qi, kj) * scale;
                    max = max.max(*s);
                }
                let mut sum = 0f32;
                for s in &mut scores[..keys] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[(i - first) * d..][..d];
                for (j, s) in scores[..keys].iter().enumerate() {
                    let p = s / sum;
                    let vj = &v[((start + j) * kv_heads + kvh) * d..][..d];
                    for (o, x) in o.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            }
            out
        })
        .collect();
    // Scatter (text, head) blocks into [rows, heads, d].
    let rows = if last_only { spans.len() } else { tokens };
    let mut out = vec![0f32; rows * heads * d];
    let mut it = parts.into_iter();
    for (b, &(start, len)) in spans.iter().enumerate() {
        for h in 0..heads {
            let block = it.next().expect("one block per text and head");
            for (i, row) in block.chunks_exact(d).enumerate() {
                let r = if last_only { b } else { start + i };
                debug_assert!(last_only || i < len);
                out[(r * heads + h) * d..][..d].copy_from_slice(row);
            }
        }
    }
    Tensor::from_vec(out, (rows, heads * d), &candle_core::Device::Cpu)
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes, summed at the end, so the compiler vectorises it.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
