//! Pooling and normalisation: from the model's token states to one vector per text.
//!
//! The model is asked for the token rows a pooling reads ([`Pooling::rows`]); when that is one
//! row per text (last-token or CLS pooling), the model may compute only those rows in its last
//! layer. [`Pooling::pool`] then turns what it returned into `[texts, width]`, as
//! sentence-transformers' `Pooling` module does: several modes are concatenated in the order
//! given, and with `include_prompt: false` the prompt's tokens are left out.

use candle_core::{DType, Result, Tensor};

use crate::batch::Batch;

/// One way to take a vector from a text's token states (sentence-transformers' names in
/// parentheses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state (`cls`): BGE, gte-modernbert.
    Cls,
    /// The average of the token states (`mean`): all-MiniLM, E5, multilingual-e5.
    Mean,
    /// The element-wise maximum (`max`).
    Max,
    /// The sum divided by √tokens (`mean_sqrt_len_tokens`).
    MeanSqrtLen,
    /// Weighted by position, 1, 2, 3, … (`weightedmean`).
    WeightedMean,
    /// The last real token's state (`lasttoken`): gte-Qwen2, Qwen3-Embedding. With a tokenizer
    /// whose post-processor appends `<|endoftext|>` (gte-Qwen2), that appended token.
    LastToken,
}

impl PoolingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Mean => "mean",
            PoolingMode::Max => "max",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len",
            PoolingMode::WeightedMean => "weighted_mean",
            PoolingMode::LastToken => "last_token",
        }
    }

    /// sentence-transformers' name (`1_Pooling/config.json`'s `pooling_mode`).
    pub fn from_st_name(name: &str) -> Option<Self> {
        Some(match name {
            "cls" => PoolingMode::Cls,
            "mean" => PoolingMode::Mean,
            "max" => PoolingMode::Max,
            "mean_sqrt_len_tokens" => PoolingMode::MeanSqrtLen,
            "weightedmean" => PoolingMode::WeightedMean,
            "lasttoken" => PoolingMode::LastToken,
            _ => return None,
        })
    }

    /// Reads one row per text (so the model may compute only those rows in its last layer).
    fn one_row(self) -> bool {
        matches!(self, PoolingMode::Cls | PoolingMode::LastToken)
    }
}

/// How a text's vector is taken from its token states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pooling {
    /// One mode, or several whose vectors are concatenated in this order.
    pub modes: Vec<PoolingMode>,
    /// Whether the prompt's tokens are pooled too (sentence-transformers' `include_prompt`).
    pub include_prompt: bool,
}

impl Pooling {
    pub fn new(mode: PoolingMode) -> Self {
        Pooling { modes: vec![mode], include_prompt: true }
    }

    /// gte-Qwen2 and Qwen3-Embedding's pooling.
    pub fn last_token() -> Self {
        Pooling::new(PoolingMode::LastToken)
    }

    /// The name recorded in the run's description: `mean`, `cls+mean`, and ` (prompt
    /// excluded)` when the prompt's tokens are left out.
    pub fn describe(&self, prompt_excluded: bool) -> String {
        let names: Vec<&str> = self.modes.iter().map(|m| m.as_str()).collect();
        let mut s = names.join("+");
        if prompt_excluded {
            s.push_str(" (prompt excluded)");
        }
        s
    }

    /// Width of the pooled vector for token states of width `hidden`.
    pub fn width(&self, hidden: usize) -> usize {
        self.modes.len() * hidden
    }

    /// The first token of text `i` that is pooled: past the `skip` prompt tokens, unless the
    /// text has nothing else (then its first token, as sentence-transformers does for CLS).
    fn first_row(batch: &Batch, i: usize, skip: usize) -> u32 {
        let (start, len) = batch.span(i);
        (start + if skip < len { skip } else { 0 }) as u32
    }

    /// The packed token rows this pooling reads (one per text and mode, mode by mode), or
    /// `None` when it reads every token. `skip`: prompt tokens left out (0 when included).
    pub fn rows(&self, batch: &Batch, skip: usize) -> Option<Vec<u32>> {
        if !self.modes.iter().all(|m| m.one_row()) {
            return None;
        }
        let mut rows = Vec::with_capacity(self.modes.len() * batch.len());
        for mode in &self.modes {
            match mode {
                PoolingMode::LastToken => rows.extend(batch.last_tokens()),
                _ => rows.extend((0..batch.len()).map(|i| Self::first_row(batch, i, skip))),
            }
        }
        Some(rows)
    }

    /// One vector per text from the model's output for `batch` (f32): the rows asked for by
    /// [`Pooling::rows`], or every token (`[tokens, hidden]`) when it asked for none. `skip`:
    /// the prompt tokens at the start of every text that are left out.
    pub fn pool(&self, states: &Tensor, batch: &Batch, skip: usize) -> Result<Tensor> {
        let texts = batch.len();
        let all_tokens = self.rows(batch, skip).is_none();
        let device = states.device();
        let mut parts = Vec::with_capacity(self.modes.len());
        for (m, mode) in self.modes.iter().enumerate() {
            let part = match mode {
                PoolingMode::Cls | PoolingMode::LastToken if !all_tokens => {
                    states.narrow(0, m * texts, texts)?
                }
                PoolingMode::Cls => {
                    let rows: Vec<u32> = (0..texts).map(|i| Self::first_row(batch, i, skip)).collect();
                    states.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?
                }
                PoolingMode::LastToken => {
                    states.index_select(&Tensor::new(batch.last_tokens().as_slice(), device)?, 0)?
                }
                PoolingMode::Max => {
                    let mut rows = Vec::with_capacity(texts);
                    for i in 0..texts {
                        let (start, len) = batch.span(i);
                        // NOTE: a text that is all prompt has nothing left to pool: -inf, as
                        // sentence-transformers gives (then recorded as a non-finite failure).
                        let kept = len.saturating_sub(skip);
                        rows.push(if kept == 0 {
                            Tensor::full(f32::NEG_INFINITY, (1, states.dim(1)?), device)?
                        } else {
                            states.narrow(0, start + skip.min(len), kept)?.max_keepdim(0)?
                        });
                    }
                    Tensor::cat(&rows, 0)?
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen | PoolingMode::WeightedMean => {
                    self.weighted_sum(states, batch, skip, *mode)?
                }
            };
            parts.push(part);
        }
        if parts.len() == 1 {
            Ok(parts.remove(0))
        } else {
            Tensor::cat(&parts, 1)
        }
    }

    /// The mean-like modes: a per-token weight (0 for skipped prompt tokens; the position + 1
    /// for weighted mean), the weighted states summed per text, divided by the text's
    /// denominator — the order of sentence-transformers' arithmetic.
    fn weighted_sum(&self, states: &Tensor, batch: &Batch, skip: usize, mode: PoolingMode) -> Result<Tensor> {
        let (texts, tokens) = (batch.len(), batch.input_ids.len());
        let device = states.device();
        let mut text_of = Vec::with_capacity(tokens);
        let mut weights = Vec::with_capacity(tokens);
        let mut denominators = Vec::with_capacity(texts);
        for i in 0..texts {
            let (_, len) = batch.span(i);
            let mut total = 0f32;
            for p in 0..len {
                text_of.push(i as u32);
                let w = match (p < skip, mode) {
                    (true, _) => 0.0,
                    (false, PoolingMode::WeightedMean) => (p + 1) as f32,
                    (false, _) => 1.0,
                };
                weights.push(w);
                total += w;
            }
            // NOTE: clamped at 1e-9 as sentence-transformers does: a text with nothing pooled
            // gets a zero vector.
            let total = total.max(1e-9);
            denominators.push(if mode == PoolingMode::MeanSqrtLen { total.sqrt() } else { total });
        }
        let weighted = match (skip, mode) {
            (0, PoolingMode::Mean | PoolingMode::MeanSqrtLen) => states.clone(),
            _ => states.broadcast_mul(&Tensor::from_vec(weights, (tokens, 1), device)?)?,
        };
        let text_of = Tensor::from_vec(text_of, tokens, device)?;
        let sums =
            Tensor::zeros((texts, states.dim(1)?), DType::F32, device)?.index_add(&text_of, &weighted, 0)?;
        sums.broadcast_div(&Tensor::from_vec(denominators, (texts, 1), device)?)
    }
}

/// The sum of `v`'s squares, added in 16 lanes so that it vectorises (a left-to-right sum is one
/// chain of dependent additions; with it, placing vectors fell from 4.0% to 0.9% of a no-model
/// chunked run's samples). Any NaN or infinity in `v` makes it non-finite.
pub fn sum_of_squares(v: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut blocks = v.chunks_exact(16);
    for block in &mut blocks {
        for (lane, x) in lanes.iter_mut().zip(block) {
            *lane += x * x;
        }
    }
    let tail: f32 = blocks.remainder().iter().map(|x| x * x).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Scales `v` to unit L2 norm; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = sum_of_squares(v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_squares_in_lanes_as_a_plain_sum_would() {
        for n in [0, 1, 15, 16, 17, 33, 896] {
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let plain: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            assert!((f64::from(sum_of_squares(&v)) - plain).abs() <= 1e-5 * plain.max(1.0), "n = {n}");
        }
        let mut v = vec![0.5f32; 40];
        v[37] = f32::NAN;
        assert!(sum_of_squares(&v).is_nan());
        v[37] = f32::NEG_INFINITY;
        assert_eq!(sum_of_squares(&v), f32::INFINITY);
    }

    #[test]
    fn normalizes_to_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }

    #[test]
    fn last_token_pooling_reads_each_texts_last_row() {
        let batch = Batch::new(&[&[5, 6, 7], &[8], &[9, 10]]);
        assert_eq!(Pooling::last_token().rows(&batch, 0), Some(vec![2, 3, 5]));
        assert_eq!(Pooling::new(PoolingMode::Cls).rows(&batch, 0), Some(vec![0, 3, 4]));
        // Past a 2-token prompt, but a text with nothing else keeps its first token.
        assert_eq!(Pooling::new(PoolingMode::Cls).rows(&batch, 2), Some(vec![2, 3, 4]));
        assert_eq!(Pooling::new(PoolingMode::Mean).rows(&batch, 0), None);
        let both = Pooling { modes: vec![PoolingMode::Cls, PoolingMode::LastToken], include_prompt: true };
        assert_eq!(both.rows(&batch, 0), Some(vec![0, 3, 4, 2, 3, 5]));
    }

    /// Every mode against the arithmetic written out by hand, with and without skipped tokens.
    #[test]
    fn modes_pool_as_sentence_transformers_defines_them() {
        let dev = Device::Cpu;
        let batch = Batch::new(&[&[1, 2, 3], &[4], &[5, 6]]);
        let rows: Vec<Vec<f32>> = (0..6).map(|t| vec![t as f32, (t * t) as f32 - 3.0]).collect();
        let states = Tensor::new(rows.clone(), &dev).unwrap();
        let text = |i: usize| -> Vec<Vec<f32>> {
            let (s, l) = batch.span(i);
            rows[s..s + l].to_vec()
        };
        let pooled = |p: &Pooling, skip: usize| -> Vec<Vec<f32>> {
            let input = match p.rows(&batch, skip) {
                Some(r) => states.index_select(&Tensor::new(r.as_slice(), &dev).unwrap(), 0).unwrap(),
                None => states.clone(),
            };
            p.pool(&input, &batch, skip).unwrap().to_vec2().unwrap()
        };
        for skip in [0, 1] {
            let mut want_mean = Vec::new();
            let mut want_sqrt = Vec::new();
            let mut want_weighted = Vec::new();
            let mut want_max = Vec::new();
            for i in 0..3 {
                let t = text(i);
                let kept: Vec<(usize, &Vec<f32>)> =
                    t.iter().enumerate().filter(|(p, _)| *p >= skip).collect();
                let n = kept.len() as f32;
                let sum = |w: &dyn Fn(usize) -> f32| -> Vec<f32> {
                    (0..2).map(|d| kept.iter().map(|(p, r)| w(*p) * r[d]).sum::<f32>()).collect()
                };
                let s = sum(&|_| 1.0);
                want_mean.push(s.iter().map(|x| x / n.max(1e-9)).collect::<Vec<_>>());
                want_sqrt.push(s.iter().map(|x| x / n.max(1e-9).sqrt()).collect::<Vec<_>>());
                let wsum: f32 = kept.iter().map(|(p, _)| (*p + 1) as f32).sum();
                want_weighted
                    .push(sum(&|p| (p + 1) as f32).iter().map(|x| x / wsum.max(1e-9)).collect::<Vec<_>>());
                want_max.push(
                    (0..2)
                        .map(|d| kept.iter().map(|(_, r)| r[d]).fold(f32::NEG_INFINITY, f32::max))
                        .collect::<Vec<_>>(),
                );
            }
            assert_eq!(pooled(&Pooling::new(PoolingMode::Mean), skip), want_mean, "skip {skip}");
            assert_eq!(pooled(&Pooling::new(PoolingMode::MeanSqrtLen), skip), want_sqrt, "skip {skip}");
            assert_eq!(pooled(&Pooling::new(PoolingMode::WeightedMean), skip), want_weighted, "skip {skip}");
            assert_eq!(pooled(&Pooling::new(PoolingMode::Max), skip), want_max, "skip {skip}");
        }
        // The one-token text with its only token skipped: zeros for mean, -inf for max.
        assert_eq!(pooled(&Pooling::new(PoolingMode::Mean), 1)[1], vec![0.0, 0.0]);
        assert_eq!(pooled(&Pooling::new(PoolingMode::Max), 1)[1], vec![f32::NEG_INFINITY; 2]);
        let cls_last =
            Pooling { modes: vec![PoolingMode::Cls, PoolingMode::LastToken], include_prompt: true };
        assert_eq!(pooled(&cls_last, 0)[2], vec![4.0, 13.0, 5.0, 22.0]);
        let cls_mean = Pooling { modes: vec![PoolingMode::Cls, PoolingMode::Mean], include_prompt: true };
        assert_eq!(pooled(&cls_mean, 0)[0], vec![0.0, -3.0, 1.0, -4.0 / 3.0]);
        assert_eq!(cls_mean.describe(true), "cls+mean (prompt excluded)");
        assert_eq!(cls_mean.width(8), 16);
    }
}
