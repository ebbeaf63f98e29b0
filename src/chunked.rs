//! What a chunked run (`--chunk-tokens`) makes of a text's chunks: one vector per chunk (the
//! default: each chunk is a row of the output, with its byte range), or with `--chunk-pool mean`
//! one vector per text, the token-weighted mean of its chunks' vectors.
//!
//! The splitting itself is tokenize/chunk.rs; this is the bookkeeping between the model's
//! vectors (one per chunk, packed and batched like any texts) and the rows of the output.

use std::ops::Range;

use anyhow::Result;

use crate::embed::{Embedded, Failure};
use crate::pool::l2_normalize;
use crate::tokenize::chunk::{ChunkSettings, Chunker};

/// A chunked run's settings: how texts are split, and what is written for their chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    pub settings: ChunkSettings,
    pub pool: ChunkPool,
}

/// How a chunked run writes a text's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkPool {
    /// One output row per chunk (`chunk`, `chunk_start`, `chunk_end` columns).
    Rows,
    /// One output row per text: the mean of its chunks' pooled vectors, each weighted by its
    /// tokens, then normalised as configured.
    Mean,
}

impl ChunkPool {
    /// The name in the run description and part metadata (`None` for one row per chunk).
    pub fn name(self) -> Option<&'static str> {
        match self {
            ChunkPool::Rows => None,
            ChunkPool::Mean => Some("mean"),
        }
    }
}

/// Which chunks belong to which text, for vectors stored one per chunk in text order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkIndex {
    /// Text `i`'s chunks are `offsets[i]..offsets[i + 1]` (length: texts + 1).
    pub offsets: Vec<u32>,
    /// Each chunk's byte range in its text.
    pub spans: Vec<(u32, u32)>,
}

impl ChunkIndex {
    pub fn new() -> Self {
        ChunkIndex { offsets: vec![0], spans: Vec::new() }
    }

    /// Adds the next text's chunks.
    pub fn push_text(&mut self, spans: impl IntoIterator<Item = (u32, u32)>) {
        self.spans.extend(spans);
        self.offsets.push(self.spans.len() as u32);
    }

    /// Text `i`'s chunks, as indices into `spans` (and vector rows).
    pub fn range(&self, i: usize) -> Range<usize> {
        self.offsets[i] as usize..self.offsets[i + 1] as usize
    }

    pub fn texts(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn chunks(&self) -> usize {
        self.spans.len()
    }
}

/// Texts split for the model: per text, why it cannot be embedded and whether `--max-chunks`
/// cut it; its chunks (index), each chunk's ids and tokens (the weights of a mean).
pub struct SplitTexts {
    pub failures: Vec<Option<Failure>>,
    pub cut: Vec<bool>,
    pub index: ChunkIndex,
    pub weights: Vec<u32>,
    pub seqs: Vec<Vec<u32>>,
}

/// Splits `texts` (`None` for a null value) into chunks, in parallel.
pub fn split_texts(chunker: &Chunker, texts: &[Option<&str>]) -> Result<SplitTexts> {
    let present: Vec<&str> = texts.iter().filter_map(|t| *t).collect();
    let mut split = chunker.chunk_batch(&present)?.into_iter();
    let mut out = SplitTexts {
        failures: vec![None; texts.len()],
        cut: vec![false; texts.len()],
        index: ChunkIndex::new(),
        weights: Vec::new(),
        seqs: Vec::new(),
    };
    for (i, text) in texts.iter().enumerate() {
        let chunked = text.map(|_| split.next().expect("one split per present text"));
        let failure = match &chunked {
            None => Some(Failure::NullText),
            Some(c) if c.unsplittable => Some(Failure::Unsplittable),
            Some(c) if c.chunks.is_empty() => Some(Failure::NoTokens),
            Some(_) => None,
        };
        let (Some(chunked), None) = (chunked, failure) else {
            out.failures[i] = failure;
            out.index.push_text([]);
            continue;
        };
        out.cut[i] = chunked.truncated;
        out.index.push_text(chunked.chunks.iter().map(|c| (c.start, c.end)));
        for c in chunked.chunks {
            out.weights.push(c.ids.len() as u32);
            out.seqs.push(c.ids);
        }
    }
    Ok(out)
}

/// Counts texts whose chunks have all been through the model (for progress).
pub struct Finished {
    left: Vec<u32>,
    text_of: Vec<u32>,
}

impl Finished {
    pub fn new(index: &ChunkIndex) -> Self {
        let texts = 0..index.texts();
        Finished {
            left: texts.clone().map(|i| index.range(i).len() as u32).collect(),
            text_of: texts.flat_map(|i| std::iter::repeat_n(i as u32, index.range(i).len())).collect(),
        }
    }

    /// After the chunks `slots` are done: how many texts that finished.
    pub fn after(&mut self, slots: &[usize]) -> u64 {
        let mut finished = 0;
        for &slot in slots {
            let left = &mut self.left[self.text_of[slot] as usize];
            *left -= 1;
            finished += (*left == 0) as u64;
        }
        finished
    }
}

/// `out` holds one result per chunk: turns it into one per text. A text fails with its first
/// failed chunk (`failures` are the texts' own: null, no tokens). With `mean`, each text's vector
/// is the token-weighted mean of its chunks' (not yet normalised) vectors, normalised when
/// `normalize`; else the chunks stay, one vector each, with their index.
pub fn back_to_texts(
    out: &mut Embedded,
    mut failures: Vec<Option<Failure>>,
    index: ChunkIndex,
    weights: &[u32],
    mean: bool,
    normalize: bool,
) {
    for (i, f) in failures.iter_mut().enumerate() {
        if f.is_none() {
            *f = index.range(i).find_map(|c| out.failures[c]);
        }
    }
    out.failures = failures;
    out.chunks_embedded = index.chunks() as u64;
    if mean {
        let dim = out.dim;
        out.values = weighted_means(&out.values, dim, &index, weights);
        if normalize {
            out.values.chunks_exact_mut(dim.max(1)).for_each(l2_normalize);
        }
    } else {
        out.chunks = Some(index);
    }
}

/// The token-weighted mean of each text's chunk vectors: `values` holds one vector of `dim`
/// per chunk of `index`, `weights` each chunk's tokens. Returns one vector per text (a text
/// without chunks gets zeros); the caller normalises.
pub fn weighted_means(values: &[f32], dim: usize, index: &ChunkIndex, weights: &[u32]) -> Vec<f32> {
    let mut out = vec![0f32; index.texts() * dim];
    for (i, mean) in out.chunks_exact_mut(dim.max(1)).enumerate() {
        let range = index.range(i);
        let total: f64 = weights[range.clone()].iter().map(|&w| w as f64).sum();
        if total == 0.0 {
            continue;
        }
        // NOTE: summed in f64 so that a row of many chunks loses nothing to the order of sums.
        let mut acc = vec![0f64; dim];
        for c in range {
            let w = weights[c] as f64 / total;
            for (a, &v) in acc.iter_mut().zip(&values[c * dim..(c + 1) * dim]) {
                *a += w * v as f64;
            }
        }
        for (m, a) in mean.iter_mut().zip(acc) {
            *m = a as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_weigh_chunks_by_their_tokens() {
        let mut index = ChunkIndex::new();
        index.push_text([(0, 5), (3, 9)]);
        index.push_text([]);
        index.push_text([(0, 2)]);
        assert_eq!((index.texts(), index.chunks()), (3, 3));
        assert_eq!(index.range(1), 2..2);
        let values = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0];
        let means = weighted_means(&values, 2, &index, &[3, 1, 7]);
        assert_eq!(means, vec![0.75, 0.25, 0.0, 0.0, 2.0, 2.0]);
    }
}
