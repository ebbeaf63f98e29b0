//! Attention over packed texts on the CPU: each text attends only to its own tokens, so no
//! padding is computed and no mask is built. Used for f32 on the CPU, where candle's batched
//! matmul runs one small gemm per (text, head) with a thread barrier each, and padding showed
//! up as a third of the run time on review-length texts.
//!
//! Per text and query head the arithmetic is the textbook one (scores, max-subtracted softmax,
//! weighted sum of V), so a text's result does not depend on its batch; the loops are written
//! to vectorise (keys transposed per head, eight-lane reductions, fast_math's `exp`) and run as
//! AVX2 where the CPU has it.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::Visible;
use super::fast_math::{self, multiversion};

/// Which query rows of each text are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queries {
    All,
    /// Each text's last token (what last-token pooling reads).
    Last,
    /// Each text's first token (what CLS pooling reads).
    First,
}

/// `q`: `[tokens, heads, d]`, `k` and `v`: `[tokens, kv_heads, d]`, all f32 and contiguous;
/// `spans`: (start, len) of each text, in order and covering every token; each query sees the
/// keys of its own text that `visible` allows. Returns `[tokens, heads * d]`, or with
/// `Queries::Last`/`First` one row per text, `[texts, heads * d]` (all the last layer needs for
/// pooling).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[(usize, usize)],
    visible: Visible,
    queries: Queries,
) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &VarlenAttention { spans: spans.to_vec(), visible, queries })
}

struct VarlenAttention {
    spans: Vec<(usize, usize)>,
    visible: Visible,
    queries: Queries,
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
        let scale = 1.0 / (d as f32).sqrt();
        let (visible, queries) = (self.visible, self.queries);
        let rows = if queries == Queries::All { tokens } else { self.spans.len() };
        let mut out = vec![0f32; rows * heads * d];
        // Each text writes its own rows: cut the output into per-text slices, then fill them
        // in parallel.
        let mut tasks = Vec::with_capacity(self.spans.len());
        let mut rest = out.as_mut_slice();
        for &(start, len) in &self.spans {
            let n = if queries == Queries::All { len } else { 1 };
            let (mine, tail) = rest.split_at_mut(n * heads * d);
            tasks.push((start, len, mine));
            rest = tail;
        }
        let shape = Dims { heads, kv_heads, d, scale, visible, queries };
        tasks.into_par_iter().for_each(|(start, len, o)| text_attention(q, k, v, o, start, len, &shape));
        Ok((CpuStorage::F32(out), Shape::from((rows, heads * d))))
    }
}

/// What every text's attention shares.
struct Dims {
    heads: usize,
    kv_heads: usize,
    d: usize,
    scale: f32,
    visible: Visible,
    queries: Queries,
}

multiversion! {
    /// One text's attention (tokens `start..start + len`) into its rows of the output `o`.
    fn text_attention(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], start: usize, len: usize, s: &Dims) {
        let Dims { heads, kv_heads, d, scale, visible, queries } = *s;
        let group = heads / kv_heads;
        let rows = match queries {
            Queries::All => 0..len,
            Queries::Last => len - 1..len,
            Queries::First => 0..1,
        };
        let first = rows.start;
        let mut scores = vec![0f32; len];
        // NOTE: with every query to compute, a head's keys are first laid out transposed
        // (`[d][len]`), so a query's scores accumulate over the head dimension eight keys per
        // vector, with no horizontal sums; one query alone takes dot products instead.
        let mut keys_t = if queries == Queries::All { vec![0f32; d * len] } else { Vec::new() };
        for h in 0..heads {
            let kvh = h / group;
            if !keys_t.is_empty() && h % group == 0 {
                for j in 0..len {
                    let kj = &k[((start + j) * kv_heads + kvh) * d..][..d];
                    for (c, x) in kj.iter().enumerate() {
                        keys_t[c * len + j] = *x;
                    }
                }
            }
            for i in rows.clone() {
                let qi = &q[((start + i) * heads + h) * d..][..d];
                let keys = visible.keys(i, len);
                let scores = &mut scores[..keys.len()];
                if keys_t.is_empty() {
                    for (j, s) in keys.clone().zip(scores.iter_mut()) {
                        *s = dot(qi, &k[((start + j) * kv_heads + kvh) * d..][..d]);
                    }
                } else {
                    scores.fill(0.0);
                    for (c, &qc) in qi.iter().enumerate() {
                        let column = &keys_t[c * len + keys.start..][..keys.len()];
                        for (s, kc) in scores.iter_mut().zip(column) {
                            *s += qc * kc;
                        }
                    }
                }
                // NOTE: softmax of the scaled scores: exp(scale · (s − max)), max-subtracted as
                // usual (scale > 0, so the max of the scaled scores is scale · max). The max and
                // the sum run in eight lanes and `exp` is the vectorisable one, so none of this
                // goes one score at a time.
                let max = lane_max(scores);
                for s in scores.iter_mut() {
                    *s = fast_math::exp((*s - max) * scale);
                }
                let inv = 1.0 / lane_sum(scores);
                let row = &mut o[((i - first) * heads + h) * d..][..d];
                for (j, s) in keys.zip(scores.iter()) {
                    let p = s * inv;
                    let vj = &v[((start + j) * kv_heads + kvh) * d..][..d];
                    for (o, x) in row.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            }
        }
    }
}

/// The largest value, in eight lanes.
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    rest.iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The sum, in eight lanes.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
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
