//! A faster road to the same ids for the common case: Qwen2-style byte-level BPE on ASCII text.
//!
//! Through `tokenizers`, each text pays for a regex engine, per-byte alignment bookkeeping in
//! the byte-level step, one `String` per token and a shared word cache behind a lock. For the
//! tokenizers gte-Qwen2 ships (a `Split` on the Qwen2/Llama-3 pattern, then `ByteLevel` without
//! its own regex, then BPE) and texts that are pure ASCII, the pattern reduces to a few byte
//! classes, so we split by hand and look each piece up in a per-thread cache of piece → ids. Only
//! a piece never seen on this thread goes to the tokenizer's own BPE model. The post-processor
//! and truncation stay the tokenizer's. Anything else (another pre-tokenizer, a normaliser other
//! than a Unicode normal form, BPE dropout, non-ASCII text, text holding an added token) takes
//! the general road; `the_fast_road_gives_the_tokenizers_ids` checks the two agree.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use aho_corasick::AhoCorasick;
use anyhow::{anyhow, Result};
use serde::Deserialize;
use tokenizers::{Model, ModelWrapper, Tokenizer};

/// The pre-tokenizer pattern of Qwen2 (and gte-Qwen2, Qwen2.5, Qwen3): one digit a piece.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's: the same with up to three digits a piece.
pub(super) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pieces longer than this are tokenized but not cached (as `tokenizers` does).
const MAX_CACHED_PIECE: usize = 64;
/// A thread's cache is emptied when it grows past this many pieces (~20 MB).
const MAX_CACHED_PIECES: usize = 200_000;

pub(super) struct ByteLevelBpe {
    /// Distinguishes this tokenizer's entries in the per-thread caches from another's.
    id: u64,
    /// Longest run of digits one piece takes (1 for Qwen2, 3 for Llama 3).
    max_digits: usize,
    /// The added tokens' texts: `tokenizers` splits them out before anything else.
    added: Option<AhoCorasick>,
    /// GPT-2's byte → printable char table, for the pieces the BPE model sees.
    byte_chars: [char; 256],
}

/// The parts of `tokenizer.json` that decide whether the fast road is exact.
#[derive(Deserialize)]
struct Layout {
    normalizer: Option<serde_json::Value>,
    pre_tokenizer: Option<serde_json::Value>,
    model: ModelLayout,
}

#[derive(Deserialize)]
struct ModelLayout {
    #[serde(rename = "type")]
    kind: Option<String>,
    dropout: Option<f64>,
}

impl ByteLevelBpe {
    /// `Some` when `tokenizer_json` (the file `tokenizer` was loaded from) has the layout this
    /// road reproduces exactly.
    pub(super) fn detect(tokenizer_json: &str, tokenizer: &Tokenizer) -> Option<Self> {
        let layout: Layout = serde_json::from_str(tokenizer_json).ok()?;
        let model_ok = layout.model.kind.as_deref().is_none_or(|k| k == "BPE")
            && layout.model.dropout.is_none_or(|d| d == 0.0)
            && matches!(tokenizer.get_model(), ModelWrapper::BPE(_));
        let normalizer_ok = match &layout.normalizer {
            None | Some(serde_json::Value::Null) => true,
            // NOTE: all four map ASCII text to itself.
            Some(n) => matches!(n["type"].as_str(), Some("NFC" | "NFD" | "NFKC" | "NFKD")),
        };
        let max_digits = split_then_byte_level(layout.pre_tokenizer.as_ref()?)?;
        if !(model_ok && normalizer_ok) {
            return None;
        }
        let added: Vec<String> =
            tokenizer.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        let added = if added.is_empty() { None } else { Some(AhoCorasick::new(&added).ok()?) };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Some(ByteLevelBpe {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max_digits,
            added,
            byte_chars: byte_chars(),
        })
    }

    /// The BPE ids of `text` before post-processing, or `None` when the text needs the general
    /// road (not ASCII, or holding an added token).
    pub(super) fn ids(&self, model: &ModelWrapper, text: &str) -> Option<Result<Vec<u32>>> {
        if !text.is_ascii() || self.added.as_ref().is_some_and(|a| a.is_match(text)) {
            return None;
        }
        Some(CACHE.with_borrow_mut(|cache| {
            if cache.owner != self.id {
                cache.pieces.clear();
                cache.owner = self.id;
            }
            let mut ids = Vec::with_capacity(text.len() / 3 + 1);
            for piece in Pieces::new(text.as_bytes(), self.max_digits) {
                if let Some(hit) = cache.pieces.get(piece) {
                    ids.extend_from_slice(hit);
                    continue;
                }
                let chars: String = piece.iter().map(|&b| self.byte_chars[b as usize]).collect();
                let tokens = model.tokenize(&chars).map_err(|e| anyhow!("tokenization failed: {e}"))?;
                let start = ids.len();
                ids.extend(tokens.iter().map(|t| t.id));
                if piece.len() <= MAX_CACHED_PIECE {
                    if cache.pieces.len() >= MAX_CACHED_PIECES {
                        cache.pieces.clear();
                    }
                    cache.pieces.insert(piece.into(), ids[start..].into());
                }
            }
            Ok(ids)
        }))
    }
}

#[derive(Default)]
struct PieceCache {
    owner: u64,
    pieces: AHashMap<Box<[u8]>, Box<[u32]>>,
}

thread_local! {
    static CACHE: RefCell<PieceCache> = RefCell::new(PieceCache::default());
}

/// Whether `pre_tokenizer` is a `Split` on a known pattern (isolated pieces) followed by a
/// `ByteLevel` that adds no prefix space and has no regex of its own; returns the pattern's
/// digit run length.
fn split_then_byte_level(pre_tokenizer: &serde_json::Value) -> Option<usize> {
    let steps = match pre_tokenizer["type"].as_str()? {
        "Sequence" => pre_tokenizer["pretokenizers"].as_array()?,
        _ => return None,
    };
    let [split, byte_level] = steps.as_slice() else { return None };
    let split_ok = split["type"] == "Split"
        && split["behavior"] == "Isolated"
        && split["invert"].as_bool() == Some(false);
    let byte_level_ok = byte_level["type"] == "ByteLevel"
        && byte_level["add_prefix_space"].as_bool() == Some(false)
        && byte_level["use_regex"].as_bool() == Some(false);
    if !(split_ok && byte_level_ok) {
        return None;
    }
    match split["pattern"]["Regex"].as_str()? {
        QWEN2_PATTERN => Some(1),
        LLAMA3_PATTERN => Some(3),
        _ => None,
    }
}

/// GPT-2's reversible byte → char map: printable Latin-1 bytes stand for themselves, the others
/// take the chars from U+0100 on, in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

fn is_letter(b: u8) -> bool {
    b.is_ascii_alphabetic()
}

fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

/// `\s` of the pattern, restricted to ASCII (Unicode White_Space).
fn is_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

fn is_newline(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// `[^\s\p{L}\p{N}]`
fn is_other(b: u8) -> bool {
    !is_space(b) && !is_letter(b) && !is_digit(b)
}

/// The pieces the pattern cuts ASCII text into, in order, covering all of it.
struct Pieces<'a> {
    text: &'a [u8],
    at: usize,
    max_digits: usize,
}

impl<'a> Pieces<'a> {
    fn new(text: &'a [u8], max_digits: usize) -> Self {
        Pieces { text, at: 0, max_digits }
    }

    /// Length of the piece starting at `i`: the first alternative of the pattern that matches
    /// there, each greedy, with the backtracking the regex would do.
    fn piece_len(&self, i: usize) -> usize {
        let t = self.text;
        let n = t.len();
        let at = |k: usize| if k < n { Some(t[k]) } else { None };
        let run = |from: usize, class: fn(u8) -> bool| (from..n).find(|&k| !class(t[k])).unwrap_or(n);
        let b = t[i];
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if b == b'\'' {
            let next = at(i + 1).map(|c| c.to_ascii_lowercase());
            let after = at(i + 2).map(|c| c.to_ascii_lowercase());
            match (next, after) {
                (Some(b's' | b't' | b'm' | b'd'), _) => return 2,
                (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => return 3,
                _ => {}
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if is_letter(b) {
            return run(i, is_letter) - i;
        }
        if !is_newline(b) && !is_digit(b) && at(i + 1).is_some_and(is_letter) {
            return run(i + 1, is_letter) - i;
        }
        // \p{N} or \p{N}{1,3}
        if is_digit(b) {
            return run(i, is_digit).min(i + self.max_digits) - i;
        }
        // ' '?[^\s\p{L}\p{N}]+[\r\n]*
        let others_from = if is_other(b) {
            Some(i)
        } else if b == b' ' && at(i + 1).is_some_and(is_other) {
            Some(i + 1)
        } else {
            None
        };
        if let Some(from) = others_from {
            return run(run(from, is_other), is_newline) - i;
        }
        // What is left starts with whitespace.
        let end = run(i, is_space);
        // \s*[\r\n]+ : up to the last newline of the run
        if let Some(last) = (i..end).rev().find(|&k| is_newline(t[k])) {
            return last + 1 - i;
        }
        // \s+(?!\S) : all of the run at the end of the text, else all but its last char
        if end == n {
            return end - i;
        }
        if end - i > 1 {
            return end - 1 - i;
        }
        // \s+
        end - i
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.at >= self.text.len() {
            return None;
        }
        let start = self.at;
        self.at += self.piece_len(start);
        Some(&self.text[start..self.at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str, max_digits: usize) -> Vec<&str> {
        Pieces::new(text.as_bytes(), max_digits).map(|p| std::str::from_utf8(p).unwrap()).collect()
    }

    #[test]
    fn pieces_follow_the_pattern() {
        assert_eq!(pieces("Hello world", 1), ["Hello", " world"]);
        assert_eq!(
            pieces("I'LL say it's 1234!", 1),
            ["I", "'LL", " say", " it", "'s", " ", "1", "2", "3", "4", "!"]
        );
        assert_eq!(pieces("1234", 3), ["123", "4"]);
        assert_eq!(pieces("a  b", 1), ["a", " ", " b"]);
        assert_eq!(pieces("a \n\n b\t", 1), ["a", " \n\n", " b", "\t"]);
        assert_eq!(pieces("(wow) ...\n\nyes", 1), ["(wow", ")", " ...\n\n", "yes"]);
        assert_eq!(pieces("x'y 'q", 1), ["x", "'y", " '", "q"]);
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b' ' as usize], '\u{120}'); // Ġ
        assert_eq!(t[b'\n' as usize], '\u{10A}'); // Ċ
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[0xAD], '\u{143}');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
