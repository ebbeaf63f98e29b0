//! Attention over packed texts on the CPU: each text attends only to its own tokens, so no
//! padding is computed and no mask is built. Used for f32 on the CPU, where candle's batched
//! matmul runs one small gemm per (text, head) with a thread barrier each, and padding showed
//! up as a third of the run time on review-length texts.
//!
//! Per text and query head the arithmetic is the textbook one (scores, max-subtracted softmax,
//! weighted sum of V), so a text's result does not depend on its batch.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `q`: `[tokens, heads, d]`, `k` and `v`: `[tokens, kv_heads, d]`, all f32 and contiguous;
/// `spans`: (start, len) of each text, in order and covering every token. Returns
/// `[tokens, heads * d]`, or with `last_only` just each text's last query, `[texts, heads * d]`
/// (all the last layer needs for pooling).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[(usize, usize)],
    causal: bool,
    last_only: bool,
) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &VarlenAttention { spans: spans.to_vec(), causal, last_only })
}

struct VarlenAttention {
    spans: Vec<(usize, usize)>,
    causal: bool,
    last_only: bool,
}

impl CustomOp3 for VarlenAttention {
    fn name(&self) -> &'static str {
        "varlen-attention-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use super::cpu_ops::contiguous_f32;
        let op = self.name();
        let (q, k, v) =
            (contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?, contiguous_f32(s3, l3, op)?);
        let (tokens, heads, d) = l1.shape().dims3()?;
        let (_, kv_heads, _) = l2.shape().dims3()?;
        let group = heads / kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let (causal, last_only) = (self.causal, self.last_only);
        let rows = if last_only { self.spans.len() } else { tokens };
        let mut out = vec![0f32; rows * heads * d];
        // Each text writes its own rows: cut the output into per-text slices, then fill them
        // in parallel.
        let mut tasks = Vec::with_capacity(self.spans.len());
        let mut rest = out.as_mut_slice();
        for &(start, len) in &self.spans {
            let n = if last_only { 1 } else { len };
            let (mine, tail) = rest.split_at_mut(n * heads * d);
            tasks.push((start, len, mine));
            rest = tail;
        }
        tasks.into_par_iter().for_each(|(start, len, o)| {
            let first = if last_only { len - 1 } else { 0 };
            let mut scores = vec![0f32; len];
            for h in 0..heads {
                let kvh = h / group;
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
                    let row = &mut o[((i - first) * heads + h) * d..][..d];
                    for (j, s) in scores[..keys].iter().enumerate() {
                        let p = s / sum;
                        let vj = &v[((start + j) * kv_heads + kvh) * d..][..d];
                        for (o, x) in row.iter_mut().zip(vj) {
                            *o += p * x;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, heads * d))))
    }
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
