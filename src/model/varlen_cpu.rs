//! Attention over packed texts on the CPU: each text attends only to its own tokens, so no
//! padding is computed and no mask is built. Used for f32 on the CPU, where candle's batched
//! matmul runs one small gemm per (text, head) with a thread barrier each, and padding showed
//! up as a third of the run time on review-length texts.
//!
//! Per text and query head the arithmetic is the textbook one (scores, max-subtracted softmax,
//! weighted sum of V), so a text's result does not depend on its batch; the loops are written
//! to vectorise (keys transposed per head, four queries a block sharing each loaded key and
//! value, eight-lane reductions, fast_math's `exp`) and run as AVX-512 or AVX2 where the CPU
//! has it.

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
    q.apply_op3_no_bwd(k, v, &VarlenAttention { spans: spans.to_vec(), visible, queries, bias: None })
}

/// [`attention`] over whole texts with an additive bias on each score that depends on the key's
/// offset from its query (MPNet's relative position bias): `bias[h * (2 * center + 1) + center +
/// (key - query)]` for head `h`, offsets within ±`center`.
pub fn attention_biased(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[(usize, usize)],
    queries: Queries,
    bias: Vec<f32>,
    center: usize,
) -> Result<Tensor> {
    let op =
        VarlenAttention { spans: spans.to_vec(), visible: Visible::All, queries, bias: Some((bias, center)) };
    q.apply_op3_no_bwd(k, v, &op)
}

struct VarlenAttention {
    spans: Vec<(usize, usize)>,
    visible: Visible,
    queries: Queries,
    bias: Option<(Vec<f32>, usize)>,
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
        // NOTE: the kernels' softmax scales the scores by 1/√d, so the bias goes in divided by it.
        let bias: Option<(Vec<f32>, usize)> =
            self.bias.as_ref().map(|(b, center)| (b.iter().map(|x| x / scale).collect(), *center));
        let bias = bias.as_ref().map(|(b, c)| (b.as_slice(), *c));
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
        let shape = Dims { heads, kv_heads, d, scale, visible, queries, bias };
        tasks.into_par_iter().for_each(|(start, len, o)| text_attention(q, k, v, o, start, len, &shape));
        Ok((CpuStorage::F32(out), Shape::from((rows, heads * d))))
    }
}

/// What every text's attention shares.
#[derive(Clone, Copy)]
struct Dims<'a> {
    heads: usize,
    kv_heads: usize,
    d: usize,
    scale: f32,
    visible: Visible,
    queries: Queries,
    /// Per head, the (already unscaled) bias of each key offset, and the offset-0 index.
    bias: Option<(&'a [f32], usize)>,
}

impl Dims<'_> {
    /// Adds the bias of head `h` to the scores of query `i` over keys `keys`, in place.
    #[inline(always)]
    fn add_bias(&self, h: usize, i: usize, keys: std::ops::Range<usize>, scores: &mut [f32]) {
        let Some((bias, center)) = self.bias else { return };
        let row = &bias[h * (2 * center + 1)..][..2 * center + 1];
        for (j, s) in keys.zip(scores.iter_mut()) {
            *s += row[center + j - i];
        }
    }
}

/// Lanes of the blocked loops: one AVX-512 vector, two AVX2 ones.
const LANES: usize = 16;
/// Queries computed together (their scores and outputs share each loaded key and value).
const BLOCK: usize = 4;

multiversion! {
    /// One text's attention (tokens `start..start + len`) into its rows of the output `o`.
    fn text_attention(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], start: usize, len: usize, s: &Dims<'_>) {
        let Dims { heads, kv_heads, d, scale, visible, queries, .. } = *s;
        let group = heads / kv_heads;
        if queries != Queries::All {
            // One query per text: dot products with each key.
            let i = if queries == Queries::Last { len - 1 } else { 0 };
            let mut scores = vec![0f32; len];
            for h in 0..heads {
                let kvh = h / group;
                let qi = &q[((start + i) * heads + h) * d..][..d];
                let keys = visible.keys(i, len);
                let scores = &mut scores[..keys.len()];
                for (j, s) in keys.clone().zip(scores.iter_mut()) {
                    *s = dot(qi, &k[((start + j) * kv_heads + kvh) * d..][..d]);
                }
                s.add_bias(h, i, keys.clone(), scores);
                softmax(scores, scale);
                let row = &mut o[h * d..][..d];
                for (j, &p) in keys.zip(scores.iter()) {
                    let vj = &v[((start + j) * kv_heads + kvh) * d..][..d];
                    for (o, x) in row.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            }
            return;
        }
        // NOTE: every query: a head's keys are laid out transposed (`[d][padded len]`, zeros
        // past the text), and BLOCK queries at a time take their scores LANES keys at a time,
        // over the head dimension in order, so each loaded key vector serves BLOCK queries and
        // nothing is summed across lanes; then BLOCK output rows take the weighted values the
        // same way, in key order. Per score and per output element the arithmetic and its
        // order are those of the textbook loop, so the result does not depend on the blocking.
        let padded = len.div_ceil(LANES) * LANES;
        let mut keys_t = vec![0f32; d * padded];
        // The block's scores, then its weights: zero outside each query's visible keys.
        let mut weights = vec![0f32; BLOCK * padded];
        for h in 0..heads {
            let kvh = h / group;
            if h % group == 0 {
                for j in 0..len {
                    let kj = &k[((start + j) * kv_heads + kvh) * d..][..d];
                    for (c, x) in kj.iter().enumerate() {
                        keys_t[c * padded + j] = *x;
                    }
                }
            }
            let mut first = 0;
            while first < len {
                let n = BLOCK.min(len - first);
                // The queries (the last repeated to fill the block) and the keys any of them sees.
                let qs: [&[f32]; BLOCK] = std::array::from_fn(|b| {
                    let i = first + b.min(n - 1);
                    &q[((start + i) * heads + h) * d..][..d]
                });
                let ranges: [std::ops::Range<usize>; BLOCK] =
                    std::array::from_fn(|b| visible.keys(first + b.min(n - 1), len));
                let lo = ranges.iter().map(|r| r.start).min().unwrap_or(0);
                let hi = ranges.iter().map(|r| r.end).max().unwrap_or(0);
                for t in lo / LANES..hi.div_ceil(LANES) {
                    let mut acc = [[0f32; LANES]; BLOCK];
                    for c in 0..d {
                        let column: &[f32; LANES] =
                            keys_t[c * padded + t * LANES..][..LANES].try_into().expect("LANES values");
                        for b in 0..BLOCK {
                            let qc = qs[b][c];
                            for l in 0..LANES {
                                acc[b][l] += qc * column[l];
                            }
                        }
                    }
                    for b in 0..BLOCK {
                        weights[b * padded + t * LANES..][..LANES].copy_from_slice(&acc[b]);
                    }
                }
                for (b, keys) in ranges.iter().enumerate() {
                    let row = &mut weights[b * padded..][..padded];
                    s.add_bias(h, first + b.min(n - 1), keys.clone(), &mut row[keys.clone()]);
                    softmax(&mut row[keys.clone()], scale);
                    row[lo..keys.start].fill(0.0);
                    row[keys.end..hi].fill(0.0);
                }
                // The block's output rows, LANES columns at a time (the rest one by one).
                let mut c0 = 0;
                while c0 < d {
                    let width = LANES.min(d - c0);
                    let mut acc = [[0f32; LANES]; BLOCK];
                    for j in lo..hi {
                        let vj = &v[((start + j) * kv_heads + kvh) * d + c0..][..width];
                        if width == LANES {
                            let vj: &[f32; LANES] = vj.try_into().expect("LANES values");
                            for b in 0..BLOCK {
                                let p = weights[b * padded + j];
                                for l in 0..LANES {
                                    acc[b][l] += p * vj[l];
                                }
                            }
                        } else {
                            for b in 0..BLOCK {
                                let p = weights[b * padded + j];
                                for l in 0..width {
                                    acc[b][l] += p * vj[l];
                                }
                            }
                        }
                    }
                    for (b, acc) in acc.iter().enumerate().take(n) {
                        o[((first + b) * heads + h) * d + c0..][..width].copy_from_slice(&acc[..width]);
                    }
                    c0 += width;
                }
                first += n;
            }
        }
    }
}

/// Scores to softmax weights, in place: `exp(scale · (s − max)) / Σ`, max-subtracted as usual
/// (scale > 0, so the max of the scaled scores is scale · max). The max and the sum run in
/// eight lanes and `exp` is the vectorisable one, so none of this goes one score at a time.
#[inline(always)]
fn softmax(scores: &mut [f32], scale: f32) {
    let max = lane_max(scores);
    for s in scores.iter_mut() {
        *s = fast_math::exp((*s - max) * scale);
    }
    let inv = 1.0 / lane_sum(scores);
    for s in scores.iter_mut() {
        *s *= inv;
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

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The textbook attention, one query at a time, in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], spans: &[(usize, usize)], s: &Dims) -> Vec<f32> {
        let Dims { heads, kv_heads, d, visible, .. } = *s;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = Vec::new();
        for &(start, len) in spans {
            for i in 0..len {
                for h in 0..heads {
                    let kvh = h / (heads / kv_heads);
                    let keys = visible.keys(i, len);
                    let at = |x: &[f32], j: usize, c: usize| x[((start + j) * kv_heads + kvh) * d + c] as f64;
                    let qi = |c: usize| q[((start + i) * heads + h) * d + c] as f64;
                    let scores: Vec<f64> = keys
                        .clone()
                        .map(|j| (0..d).map(|c| qi(c) * at(k, j, c)).sum::<f64>() * scale)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..d {
                        let x: f64 = keys.clone().zip(&e).map(|(j, w)| w / sum * at(v, j, c)).sum();
                        out.push(x as f32);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn blocked_attention_equals_the_textbook_loop() {
        let mut x = 7u64;
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
                })
                .collect()
        };
        // Lengths around the block (4) and lane (16) sizes; head sizes with and without a rest.
        let lens = [1, 3, 4, 5, 15, 16, 17, 33, 2];
        let spans: Vec<(usize, usize)> =
            lens.iter().scan(0, |at, &len| Some((std::mem::replace(at, *at + len), len))).collect();
        let tokens: usize = lens.iter().sum();
        for (heads, kv_heads, d) in [(4, 4, 16), (4, 2, 24), (2, 1, 8), (3, 3, 40)] {
            for visible in [Visible::All, Visible::Causal, Visible::Window(3)] {
                let (q, k, v) = (
                    random(tokens * heads * d),
                    random(tokens * kv_heads * d),
                    random(tokens * kv_heads * d),
                );
                let t = |x: &[f32], h: usize| Tensor::from_slice(x, (tokens, h, d), &Device::Cpu).unwrap();
                let got = attention(
                    &t(&q, heads),
                    &t(&k, kv_heads),
                    &t(&v, kv_heads),
                    &spans,
                    visible,
                    Queries::All,
                )
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
                let dims =
                    Dims { heads, kv_heads, d, scale: 0.0, visible, queries: Queries::All, bias: None };
                let want = reference(&q, &k, &v, &spans, &dims);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "heads {heads}/{kv_heads}, d {d}, {visible:?}: max difference {worst}");
            }
        }
    }
}
