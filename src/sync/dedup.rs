//! Identical texts met by one worker are embedded once. Review corpora repeat short texts a lot
//! ("Great book!", "Don't waste your time."): 1.3% of the 579,644 IMDB review sentences are
//! repeats of another.
//!
//! Within a chunk every repeat is found (by text hash) and only the first is embedded. Across
//! chunks, short texts are remembered with bounded memory: a text is admitted to the vector
//! cache once it has been seen twice (a first sighting only leaves its hash in a "seen" list), so
//! the cache holds texts that do repeat rather than whatever came last. Both lists are LRU and
//! bounded: [`SEEN`] hashes and [`Dedup::new`]'s byte budget of vectors.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::chunked::ChunkIndex;
use crate::embed::{Embedded, Failure};

/// Texts longer than this (in bytes) are not remembered across chunks: long texts rarely repeat,
/// and a cached vector of one would push out many short ones.
pub const MAX_TEXT_BYTES: usize = 256;
/// Hashes of short texts seen once (16 bytes each, about 40 MB with the LRU's bookkeeping).
pub const SEEN: usize = 1 << 20;
/// Default memory for remembered vectors.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Where a row's vector comes from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// Embedded as text `i` of the chunk's unique texts.
    Unique(usize),
    /// The same text as unique text `i`, earlier in the chunk.
    Copy(usize),
    /// Remembered from an earlier chunk: the vector, whether the text was cut, and with chunk
    /// rows its one chunk's byte range (only texts of one chunk are remembered).
    Cached(Arc<[f32]>, bool, Option<(u32, u32)>),
    /// A null text.
    Null,
}

/// A chunk's rows mapped onto its unique texts.
pub struct ChunkPlan {
    pub origins: Vec<Origin>,
    /// Row index of each unique text (the first row holding it).
    pub unique_rows: Vec<usize>,
    /// Hash of each unique text, and whether it is short enough to remember.
    unique_hashes: Vec<(u128, bool)>,
    /// Unique texts that occur more than once in the chunk.
    repeated: Vec<bool>,
}

impl ChunkPlan {
    /// Rows not sent to the model (copies and cached), whatever their outcome.
    pub fn deduplicated(&self) -> u64 {
        self.origins.iter().filter(|o| matches!(o, Origin::Copy(_) | Origin::Cached(..))).count() as u64
    }
}

/// The cross-chunk memory of one worker.
pub struct Dedup {
    inner: Mutex<Inner>,
}

struct Inner {
    seen: LruCache<u128, ()>,
    vectors: LruCache<u128, Remembered>,
}

/// A remembered text: its vector, whether it was cut, and with chunk rows its chunk's range.
type Remembered = (Arc<[f32]>, bool, Option<(u32, u32)>);

impl Dedup {
    /// A cache of at most `cache_bytes` of `dim`-wide vectors.
    pub fn new(dim: usize, cache_bytes: usize) -> Self {
        let entries = (cache_bytes / (dim.max(1) * 4 + 64)).max(1);
        Dedup {
            inner: Mutex::new(Inner {
                seen: LruCache::new(NonZeroUsize::new(SEEN).expect("non-zero")),
                vectors: LruCache::new(NonZeroUsize::new(entries).expect("non-zero")),
            }),
        }
    }

    /// Maps a chunk's rows (their text hashes, their texts' lengths, `None` for null texts)
    /// onto unique texts and remembered vectors.
    pub fn plan(&self, hashes: &[u128], lengths: &[Option<usize>]) -> ChunkPlan {
        let mut inner = self.inner.lock().expect("dedup state");
        let mut first: HashMap<u128, usize> = HashMap::with_capacity(hashes.len());
        let mut plan = ChunkPlan {
            origins: Vec::with_capacity(hashes.len()),
            unique_rows: Vec::new(),
            unique_hashes: Vec::new(),
            repeated: Vec::new(),
        };
        for (row, (&hash, len)) in hashes.iter().zip(lengths).enumerate() {
            let Some(len) = *len else {
                plan.origins.push(Origin::Null);
                continue;
            };
            if let Some(&u) = first.get(&hash) {
                plan.repeated[u] = true;
                plan.origins.push(Origin::Copy(u));
                continue;
            }
            let short = len <= MAX_TEXT_BYTES;
            if short {
                if let Some((v, cut, span)) = inner.vectors.get(&hash) {
                    plan.origins.push(Origin::Cached(v.clone(), *cut, *span));
                    continue;
                }
            }
            let u = plan.unique_rows.len();
            first.insert(hash, u);
            plan.unique_rows.push(row);
            plan.unique_hashes.push((hash, short));
            plan.repeated.push(false);
            plan.origins.push(Origin::Unique(u));
        }
        plan
    }

    /// Spreads the unique texts' results over the chunk's rows (failures and cuts included; with
    /// chunk rows, a repeated text's chunks are copies of the first's), and remembers the vectors
    /// of short texts that have now been seen twice.
    pub fn expand(&self, plan: &ChunkPlan, unique: Embedded) -> Embedded {
        let out = self.spread(plan, unique);
        let dim = out.dim;
        let mut inner = self.inner.lock().expect("dedup state");
        for (u, &(hash, short)) in plan.unique_hashes.iter().enumerate() {
            // NOTE: only texts with one vector, so that the cache's entries stay one vector each.
            let row = plan.unique_rows[u];
            let Ok((v, spans)) = out.vectors(row) else { continue };
            if !short || v.len() != dim {
                continue;
            }
            if plan.repeated[u] || inner.seen.pop(&hash).is_some() {
                let span = spans.and_then(|s| s.first().copied());
                inner.vectors.put(hash, (Arc::from(v), out.cut[row], span));
            } else {
                inner.seen.put(hash, ());
            }
        }
        out
    }

    /// The unique texts' results spread over the chunk's rows.
    fn spread(&self, plan: &ChunkPlan, mut unique: Embedded) -> Embedded {
        let dim = unique.dim;
        let rows = plan.origins.len();
        if plan.origins.iter().enumerate().all(|(r, o)| matches!(o, Origin::Unique(u) if *u == r)) {
            // No repeat, no null (the common case): the rows are the unique texts, as they are.
            unique.truncated = unique.cut.iter().filter(|&&c| c).count() as u64;
            unique.deduplicated = 0;
            return unique;
        }
        let chunked = unique.chunks.is_some();
        // With chunk rows the values are appended: room for all of them first, so that growing
        // copies nothing.
        let values = match chunked {
            true => Vec::with_capacity(
                plan.origins
                    .iter()
                    .map(|origin| match origin {
                        Origin::Null => 0,
                        Origin::Unique(u) | Origin::Copy(u) => unique.vectors(*u).map_or(0, |(v, _)| v.len()),
                        Origin::Cached(v, ..) => v.len(),
                    })
                    .sum(),
            ),
            false => vec![0.0; rows * dim],
        };
        let mut out = Embedded {
            values,
            dim,
            failures: vec![None; rows],
            cut: vec![false; rows],
            tokens: unique.tokens,
            padded_tokens: unique.padded_tokens,
            oom_splits: unique.oom_splits,
            oom_retries: unique.oom_retries,
            deduplicated: 0,
            truncated: 0,
            chunks: chunked.then(ChunkIndex::new),
            chunks_embedded: unique.chunks_embedded,
        };
        for (row, origin) in plan.origins.iter().enumerate() {
            let (vectors, spans) = match origin {
                Origin::Null => (Err(Failure::NullText), None),
                Origin::Unique(u) | Origin::Copy(u) => match unique.vectors(*u) {
                    Ok((v, spans)) => (Ok(v), spans),
                    Err(f) => (Err(f), None),
                },
                Origin::Cached(v, _, span) => (Ok(&v[..]), span.as_ref().map(std::slice::from_ref)),
            };
            match (vectors, out.chunks.as_mut()) {
                (Err(f), index) => {
                    out.failures[row] = Some(f);
                    if let Some(index) = index {
                        index.push_text([]);
                    }
                }
                (Ok(v), None) => out.values[row * dim..(row + 1) * dim].copy_from_slice(v),
                (Ok(v), Some(index)) => {
                    out.values.extend_from_slice(v);
                    index.push_text(spans.unwrap_or_default().iter().copied());
                }
            }
            out.cut[row] = match origin {
                Origin::Unique(u) | Origin::Copy(u) => unique.cut[*u],
                Origin::Cached(_, cut, _) => *cut,
                Origin::Null => false,
            };
        }
        out.truncated = out.cut.iter().filter(|&&c| c).count() as u64;
        out.deduplicated = plan
            .origins
            .iter()
            .zip(&out.failures)
            .filter(|(o, f)| matches!(o, Origin::Copy(_) | Origin::Cached(..)) && f.is_none())
            .count() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::text_hash;

    /// "Embeds" unique texts as a vector holding the text's length, for the plan's rows.
    fn embed(plan: &ChunkPlan, texts: &[Option<&str>]) -> Embedded {
        let n = plan.unique_rows.len();
        let mut e = Embedded {
            values: Vec::new(),
            dim: 2,
            failures: vec![None; n],
            cut: vec![false; n],
            ..Embedded::default()
        };
        for (u, &row) in plan.unique_rows.iter().enumerate() {
            let t = texts[row].unwrap();
            e.values.extend([t.len() as f32, 1.0]);
            if t.is_empty() {
                e.failures[u] = Some(Failure::NoTokens);
            }
            e.cut[u] = t.len() > 8;
        }
        e
    }

    fn run(d: &Dedup, texts: &[Option<&str>]) -> (ChunkPlan, Embedded) {
        let hashes: Vec<u128> = texts.iter().map(|t| t.map_or(0, text_hash)).collect();
        let lengths: Vec<Option<usize>> = texts.iter().map(|t| t.map(str::len)).collect();
        let plan = d.plan(&hashes, &lengths);
        let unique = embed(&plan, texts);
        let out = d.expand(&plan, unique);
        (plan, out)
    }

    #[test]
    fn repeats_in_a_chunk_are_embedded_once_and_copied_with_their_failures_and_cuts() {
        let d = Dedup::new(2, DEFAULT_CACHE_BYTES);
        let texts = [
            Some("great"),
            Some("a long review"),
            None,
            Some("great"),
            Some(""),
            Some(""),
            Some("a long review"),
        ];
        let (plan, out) = run(&d, &texts);
        assert_eq!(plan.unique_rows, vec![0, 1, 4]);
        assert_eq!(plan.deduplicated(), 3);
        assert_eq!(out.vector(3).unwrap(), &[5.0, 1.0]);
        assert_eq!(out.vector(6).unwrap(), &[13.0, 1.0]);
        assert_eq!(out.vector(2), Err(Failure::NullText));
        assert_eq!(out.vector(5), Err(Failure::NoTokens));
        assert_eq!(out.truncated, 2, "both copies of the long text count as cut");
    }

    #[test]
    fn short_texts_seen_twice_are_remembered_across_chunks() {
        let d = Dedup::new(2, DEFAULT_CACHE_BYTES);
        // First sighting: only the hash is kept.
        let (plan, _) = run(&d, &[Some("five stars")]);
        assert_eq!(plan.deduplicated(), 0);
        // Second sighting: embedded again, now remembered.
        let (plan, _) = run(&d, &[Some("five stars")]);
        assert_eq!(plan.deduplicated(), 0);
        let (plan, out) = run(&d, &[Some("five stars"), Some("new")]);
        assert_eq!(plan.deduplicated(), 1);
        assert!(matches!(plan.origins[0], Origin::Cached(..)));
        assert_eq!(out.vector(0).unwrap(), &[10.0, 1.0]);
        assert_eq!(out.truncated, 1, "the cached text was cut, and still counts");
        // A repeat within one chunk is remembered at once; a long text never is.
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        run(&d, &[Some("twice"), Some("twice"), Some(long.as_str()), Some(long.as_str())]);
        let (plan, _) = run(&d, &[Some("twice"), Some(long.as_str())]);
        assert!(matches!(plan.origins[0], Origin::Cached(..)));
        assert!(matches!(plan.origins[1], Origin::Unique(_)));
    }

    #[test]
    fn the_vector_cache_is_bounded() {
        // Room for two vectors of dim 2 (8 bytes each + bookkeeping).
        let d = Dedup::new(2, 2 * (2 * 4 + 64));
        for t in ["a", "b", "c"] {
            run(&d, &[Some(t), Some(t)]);
        }
        let (plan, _) = run(&d, &[Some("a"), Some("b"), Some("c")]);
        assert_eq!(plan.deduplicated(), 2, "the least recently used text was evicted");
    }
}
