//! What a chunked run (`--chunk-tokens`) makes of a text's chunks: one vector per chunk (the
//! default: each chunk is a row of the output, with its byte range), or with `--chunk-pool mean`
//! one vector per text, the token-weighted mean of its chunks' vectors.
//!
//! The splitting itself is tokenize/chunk.rs; this is the bookkeeping between the model's
//! vectors (one per chunk, packed and batched like any texts) and the rows of the output.

use std::ops::Range;

use crate::tokenize::chunk::ChunkSettings;

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
