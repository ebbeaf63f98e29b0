//! A faster road to the same ids for BERT's WordPiece tokenizers (all-MiniLM, BGE, E5, GTE):
//! `BertNormalizer` (or none, or with a `Lowercase`), `BertPreTokenizer`, `WordPiece`.
//!
//! Through `tokenizers`, each text pays for the normaliser's per-byte alignment bookkeeping, the
//! pre-tokenizer's splits with their offsets, one `String` per token and the model's greedy
//! search for every word. Here an ASCII text is normalised by hand (the BERT normaliser on ASCII
//! only drops control characters, turns tabs and newlines into spaces and lowercases), any other
//! text by the tokenizer's own normaliser; the split is the pre-tokenizer's rule (whitespace
//! removed, each punctuation character a word of its own, with the same character classes);
//! and each word is looked up in a per-thread cache of word → ids, only a word never seen on
//! this thread going to the tokenizer's own WordPiece model. Texts holding an added token's
//! text take the general road; `the_wordpiece_road_gives_the_tokenizers_ids` checks the two
//! agree.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use anyhow::{anyhow, Result};
use tokenizers::{Model, ModelWrapper, NormalizedString, Normalizer, Tokenizer};
use unicode_categories::UnicodeCategories;

/// Words longer than this are tokenized but not cached.
const MAX_CACHED_WORD: usize = 64;
/// A thread's cache is emptied when it grows past this many words.
const MAX_CACHED_WORDS: usize = 200_000;

pub(super) struct WordPieceRoad {
    /// Distinguishes this tokenizer's entries in the per-thread caches from another's.
    id: u64,
    /// The added tokens' texts, matched without regard to ASCII case (a lowercasing normaliser
    /// could make one appear).
    added: Option<AhoCorasick>,
    /// What the normaliser does to ASCII text.
    clean_text: bool,
    lowercase: bool,
    has_normalizer: bool,
}

/// What a normaliser entry of `tokenizer.json` does to ASCII text, or `None` when it is not
/// one this road knows.
fn ascii_effect(n: &serde_json::Value) -> Option<(bool, bool)> {
    match n["type"].as_str()? {
        // NOTE: on ASCII, handle_chinese_chars and strip_accents change nothing.
        "BertNormalizer" => {
            Some((n["clean_text"].as_bool().unwrap_or(true), n["lowercase"].as_bool().unwrap_or(true)))
        }
        "Lowercase" => Some((false, true)),
        // All four map ASCII text to itself.
        "NFC" | "NFD" | "NFKC" | "NFKD" => Some((false, false)),
        _ => None,
    }
}

impl WordPieceRoad {
    /// `Some` when `tokenizer_json` (the file `tokenizer` was loaded from) has the layout this
    /// road reproduces exactly.
    pub(super) fn detect(tokenizer_json: &str, tokenizer: &Tokenizer) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(tokenizer_json).ok()?;
        if v["model"]["type"] != "WordPiece" || !matches!(tokenizer.get_model(), ModelWrapper::WordPiece(_)) {
            return None;
        }
        if v["pre_tokenizer"]["type"] != "BertPreTokenizer" {
            return None;
        }
        let normalizer = &v["normalizer"];
        let (mut clean_text, mut lowercase) = (false, false);
        let steps: Vec<&serde_json::Value> = match normalizer["type"].as_str() {
            None if normalizer.is_null() => vec![],
            Some("Sequence") => normalizer["normalizers"].as_array()?.iter().collect(),
            Some(_) => vec![normalizer],
            None => return None,
        };
        for step in &steps {
            let (c, l) = ascii_effect(step)?;
            clean_text |= c;
            lowercase |= l;
        }
        let added: Vec<String> =
            tokenizer.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        let added = if added.is_empty() {
            None
        } else {
            Some(AhoCorasickBuilder::new().ascii_case_insensitive(true).build(&added).ok()?)
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Some(WordPieceRoad {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            added,
            clean_text,
            lowercase,
            has_normalizer: !steps.is_empty(),
        })
    }

    /// The WordPiece ids of `text` before post-processing, or `None` when the text needs the
    /// general road. Stops once there are more than `limit` ids (each word is tokenized on its
    /// own, so the words before a cut give the same ids whatever follows).
    pub(super) fn ids(&self, tokenizer: &Tokenizer, text: &str, limit: usize) -> Option<Result<Vec<u32>>> {
        let holds_added = |t: &str| self.added.as_ref().is_some_and(|a| a.is_match(t));
        if holds_added(text) {
            return None;
        }
        CACHE.with_borrow_mut(|cache| {
            if cache.owner != self.id {
                cache.words.clear();
                cache.owner = self.id;
            }
            let mut normalized = std::mem::take(&mut cache.text);
            normalized.clear();
            if text.is_ascii() {
                self.normalize_ascii(text, &mut normalized);
            } else {
                match tokenizer.get_normalizer() {
                    Some(n) if self.has_normalizer => {
                        let mut s = NormalizedString::from(text);
                        if let Err(e) = n.normalize(&mut s) {
                            return Some(Err(anyhow!("tokenization failed: {e}")));
                        }
                        normalized.push_str(s.get());
                    }
                    _ => normalized.push_str(text),
                }
            }
            if holds_added(&normalized) {
                cache.text = normalized;
                return None;
            }
            let ids = self.lookup(tokenizer.get_model(), &normalized, limit, &mut cache.words);
            if normalized.capacity() <= 1 << 16 {
                cache.text = normalized;
            }
            Some(ids)
        })
    }

    /// The BERT normaliser on ASCII text: control characters (and NUL) dropped and tabs,
    /// newlines and carriage returns made spaces (`clean_text`), letters lowercased.
    fn normalize_ascii(&self, text: &str, out: &mut String) {
        out.reserve(text.len());
        for &b in text.as_bytes() {
            let b = if self.clean_text {
                match b {
                    b'\t' | b'\n' | b'\r' => b' ',
                    0..=0x1f | 0x7f => continue,
                    _ => b,
                }
            } else {
                b
            };
            out.push(if self.lowercase { b.to_ascii_lowercase() } else { b } as char);
        }
    }

    fn lookup(
        &self,
        model: &ModelWrapper,
        text: &str,
        limit: usize,
        words: &mut AHashMap<Box<str>, Box<[u32]>>,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity((text.len() / 4).min(limit) + 1);
        for word in split(text) {
            if ids.len() > limit {
                break;
            }
            if let Some(hit) = words.get(word) {
                ids.extend_from_slice(hit);
                continue;
            }
            let tokens = model.tokenize(word).map_err(|e| anyhow!("tokenization failed: {e}"))?;
            let start = ids.len();
            ids.extend(tokens.iter().map(|t| t.id));
            if word.len() <= MAX_CACHED_WORD {
                if words.len() >= MAX_CACHED_WORDS {
                    words.clear();
                }
                words.insert(word.into(), ids[start..].into());
            }
        }
        Ok(ids)
    }
}

/// `BertPreTokenizer`'s punctuation: ASCII punctuation and Unicode's P* categories.
fn is_bert_punc(c: char) -> bool {
    c.is_ascii_punctuation() || (!c.is_ascii() && c.is_punctuation())
}

/// The words `BertPreTokenizer` cuts a normalised text into: split on whitespace (removed),
/// then each punctuation character on its own.
fn split(text: &str) -> impl Iterator<Item = &str> + '_ {
    let mut rest = text;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(char::is_whitespace);
        let c = rest.chars().next()?;
        let len = if is_bert_punc(c) {
            c.len_utf8()
        } else {
            rest.find(|c: char| c.is_whitespace() || is_bert_punc(c)).unwrap_or(rest.len())
        };
        let (word, tail) = rest.split_at(len);
        rest = tail;
        Some(word)
    })
}

#[derive(Default)]
struct WordCache {
    owner: u64,
    words: AHashMap<Box<str>, Box<[u32]>>,
    /// The normalised text (a buffer kept between texts).
    text: String,
}

thread_local! {
    static CACHE: RefCell<WordCache> = RefCell::new(WordCache::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_the_bert_pre_tokenizer() {
        let words: Vec<&str> =
            split("Hey friend!     How are you?!? don't \u{3000}caf\u{e9}\u{2014}ok").collect();
        assert_eq!(
            words,
            [
                "Hey",
                "friend",
                "!",
                "How",
                "are",
                "you",
                "?",
                "!",
                "?",
                "don",
                "'",
                "t",
                "caf\u{e9}",
                "\u{2014}",
                "ok"
            ]
        );
        assert_eq!(split("  ").count(), 0);
    }
}
