//! A faster road to the same ids for the common case: Qwen2-style byte-level BPE.
//!
//! Through `tokenizers`, each text pays for a regex engine, per-byte alignment bookkeeping in
//! the byte-level step, one `String` per token and a shared word cache behind a lock. For the
//! tokenizers gte-Qwen2 ships (a `Split` on the Qwen2/Llama-3 pattern, then `ByteLevel` without
//! its own regex, then BPE) the pattern reduces to a few character classes, so we split by hand
//! and look each piece up in a per-thread cache of piece → ids. Only a piece never seen on this
//! thread goes to the tokenizer's own BPE model. The classes come from the same regex engine
//! (Oniguruma) asked once per character; the normaliser, truncation and post-processor stay the
//! tokenizer's. Anything else (another pre-tokenizer, BPE dropout, text holding an added token,
//! a character that case-folds onto a contraction letter) takes the general road;
//! `the_fast_road_gives_the_tokenizers_ids` checks the two agree.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::LazyLock;

use ahash::AHashMap;
use aho_corasick::AhoCorasick;
use anyhow::{anyhow, Result};
use serde::Deserialize;
use tokenizers::utils::SysRegex;
use tokenizers::{Model, ModelWrapper, NormalizedString, Normalizer, NormalizerWrapper, Tokenizer};

use super::normal_form::NormalForm;

/// The pre-tokenizer pattern of Qwen2 (and gte-Qwen2, Qwen2.5, Qwen3): one digit a piece.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's: the same with up to three digits a piece.
pub(super) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pieces longer than this are tokenized but not cached (as `tokenizers` does).
const MAX_CACHED_PIECE: usize = 64;
/// A thread's cache is emptied when it grows past this many pieces (~25 MB).
const MAX_CACHED_PIECES: usize = 200_000;
/// A thread keeps its buffer of classified chars between texts up to this many (12 MB).
const MAX_KEPT_CHARS: usize = 1 << 20;

pub(super) struct ByteLevelBpe {
    /// Distinguishes this tokenizer's entries in the per-thread caches from another's.
    id: u64,
    /// Longest run of digits one piece takes (1 for Qwen2, 3 for Llama 3).
    max_digits: usize,
    /// The added tokens' texts: `tokenizers` splits them out before anything else.
    added: Option<AhoCorasick>,
    /// What the normaliser is, when it is none or a Unicode normal form (which leave ASCII text
    /// as it is); `None` for any other.
    normal_form: Option<NormalForm>,
    /// GPT-2's byte → printable char table, for the pieces the BPE model sees.
    byte_chars: [char; 256],
    /// Each BPE id's length in bytes of the text (a byte-level token's chars stand for one byte
    /// each), for token offsets.
    token_bytes: Vec<u16>,
}

/// A text's tokens on the fast road, with where each ends (see [`ByteLevelBpe::offsets`]).
pub(super) struct FastOffsets {
    pub ids: Vec<u32>,
    /// End byte of each token in the text (tokens are contiguous from byte 0).
    pub ends: Vec<u32>,
    /// Whether each token begins a piece of the pattern's split.
    pub piece_starts: Vec<bool>,
    /// The text went through no normaliser (none is set, or a Unicode normal form that it is
    /// already in, which every part of it is in too): the ids of a run of whole pieces are then
    /// those of that run's text alone.
    pub unnormalized: bool,
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
        let normal_form = NormalForm::of(layout.normalizer.as_ref());
        let max_digits = split_then_byte_level(layout.pre_tokenizer.as_ref()?)?;
        if !model_ok {
            return None;
        }
        let added: Vec<String> =
            tokenizer.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        let added = if added.is_empty() { None } else { Some(AhoCorasick::new(&added).ok()?) };
        let vocab = tokenizer.get_model().get_vocab();
        let mut token_bytes = vec![0u16; vocab.values().max().map_or(0, |&m| m as usize + 1)];
        for (token, id) in &vocab {
            token_bytes[*id as usize] = token.chars().count().min(u16::MAX as usize) as u16;
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Some(ByteLevelBpe {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max_digits,
            added,
            normal_form,
            byte_chars: byte_chars(),
            token_bytes,
        })
    }

    /// [`ByteLevelBpe::ids`] with where each token ends in `text` and which tokens begin a
    /// piece, for chunking. `None` when the text needs the general road, or when the normaliser
    /// changes it (the offsets would be into another text).
    pub(super) fn offsets(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        limit: usize,
    ) -> Option<Result<FastOffsets>> {
        if self.added.as_ref().is_some_and(|a| a.is_match(text)) {
            return None;
        }
        let unnormalized = match tokenizer.get_normalizer() {
            Some(n) if !self.unchanged(text) => match normalize(n, text) {
                Ok(t) if t == text => false,
                Ok(_) => return None,
                Err(e) => return Some(Err(e)),
            },
            _ => true,
        };
        CACHE.with_borrow_mut(|cache| {
            if cache.owner != self.id {
                cache.pieces.clear();
                cache.owner = self.id;
            }
            // About a token per 4 bytes of English: room for most texts without growing.
            let room = text.len().min(limit.saturating_mul(8)) / 3 + 1;
            let mut out = FastOffsets {
                ids: Vec::with_capacity(room),
                ends: Vec::with_capacity(room),
                piece_starts: Vec::with_capacity(room),
                unnormalized,
            };
            let found = classify(text, &mut cache.chars).then(|| {
                let offsets = Some((&mut out.ends, &mut out.piece_starts));
                self.lookup_into(tokenizer.get_model(), text, limit, cache, &mut out.ids, offsets)
            });
            if cache.chars.capacity() > MAX_KEPT_CHARS {
                cache.chars = Vec::new();
            }
            match found? {
                Ok(true) => Some(Ok(out)),
                Ok(false) => None, // token lengths that do not add up: leave it to the general road
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// The BPE ids of `text` before post-processing, or `None` when the text needs the general
    /// road. `tokenizer` is the one `detect` accepted. Stops once there are more than `limit`
    /// ids: truncation keeps only the first ones, and since each piece is tokenized on its own,
    /// the pieces before a cut give the same ids whatever follows (a long text costs no more
    /// than its first `limit` tokens' worth of BPE).
    pub(super) fn ids(&self, tokenizer: &Tokenizer, text: &str, limit: usize) -> Option<Result<Vec<u32>>> {
        let holds_added = |t: &str| self.added.as_ref().is_some_and(|a| a.is_match(t));
        if holds_added(text) {
            return None;
        }
        let text = match tokenizer.get_normalizer() {
            Some(n) if !self.unchanged(text) => match normalize(n, text) {
                Ok(t) if holds_added(&t) => return None,
                Ok(t) => Cow::Owned(t),
                Err(e) => return Some(Err(e)),
            },
            _ => Cow::Borrowed(text),
        };
        CACHE.with_borrow_mut(|cache| {
            if cache.owner != self.id {
                cache.pieces.clear();
                cache.owner = self.id;
            }
            let ids = classify(&text, &mut cache.chars)
                .then(|| self.lookup(tokenizer.get_model(), &text, limit, cache));
            if cache.chars.capacity() > MAX_KEPT_CHARS {
                cache.chars = Vec::new(); // not kept after a huge text
            }
            ids
        })
    }

    /// Whether the normaliser certainly leaves `text` as it is (see normal_form.rs).
    fn unchanged(&self, text: &str) -> bool {
        self.normal_form.is_some_and(|form| form.leaves_unchanged(text))
    }

    fn lookup(
        &self,
        model: &ModelWrapper,
        text: &str,
        limit: usize,
        cache: &mut PieceCache,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity((text.len() / 3).min(limit) + 1);
        self.lookup_into(model, text, limit, cache, &mut ids, None)?;
        Ok(ids)
    }

    /// Appends the ids of `text`'s pieces to `ids` until there are more than `limit`; with
    /// `offsets`, also each token's end byte and whether it begins a piece. Returns false when
    /// a piece's token lengths do not add up to the piece (a vocabulary this road cannot
    /// place), and the offsets are then not to be used.
    fn lookup_into(
        &self,
        model: &ModelWrapper,
        text: &str,
        limit: usize,
        cache: &mut PieceCache,
        ids: &mut Vec<u32>,
        mut offsets: Option<(&mut Vec<u32>, &mut Vec<bool>)>,
    ) -> Result<bool> {
        let mut fresh: Vec<u32> = Vec::new();
        for bytes in pieces(&cache.chars, text.len(), self.max_digits) {
            if ids.len() > limit {
                break;
            }
            let piece = &text.as_bytes()[bytes.clone()];
            let entry: &[u32] = match cache.pieces.get(piece) {
                Some(hit) => hit,
                None => {
                    let mapped: String = piece.iter().map(|&b| self.byte_chars[b as usize]).collect();
                    let tokens = model.tokenize(&mapped).map_err(|e| anyhow!("tokenization failed: {e}"))?;
                    fresh.clear();
                    fresh.extend(tokens.iter().map(|t| t.id));
                    let mut end = 0u32;
                    for t in &tokens {
                        end += self.token_bytes.get(t.id as usize).copied().unwrap_or(0) as u32;
                        fresh.push(end);
                    }
                    if piece.len() <= MAX_CACHED_PIECE {
                        if cache.pieces.len() >= MAX_CACHED_PIECES {
                            cache.pieces.clear();
                        }
                        cache.pieces.insert(piece.into(), fresh.as_slice().into());
                    }
                    &fresh
                }
            };
            let (piece_ids, piece_ends) = entry.split_at(entry.len() / 2);
            let start = ids.len();
            ids.extend_from_slice(piece_ids);
            if let Some((ends, piece_starts)) = offsets.as_mut() {
                let base = bytes.start as u32;
                ends.extend(piece_ends.iter().map(|&e| base + e));
                if piece_ends.last().map_or(0, |&e| base + e) != bytes.end as u32 {
                    return Ok(false);
                }
                piece_starts.push(true);
                piece_starts.extend(std::iter::repeat_n(false, ids.len() - start - 1));
            }
        }
        Ok(true)
    }
}

fn normalize(normalizer: &NormalizerWrapper, text: &str) -> Result<String> {
    let mut n = NormalizedString::from(text);
    normalizer.normalize(&mut n).map_err(|e| anyhow!("tokenization failed: {e}"))?;
    Ok(n.get().to_owned())
}

#[derive(Default)]
struct PieceCache {
    owner: u64,
    /// A piece's ids, then where each of its tokens ends (bytes from the piece's start): the
    /// ends come with the ids from one lookup. NOTE: reading each token's length from
    /// `token_bytes` instead missed the cache on most tokens of a vocabulary of 150k (~3% of a
    /// chunking run's samples).
    pieces: AHashMap<Box<[u8]>, Box<[u32]>>,
    /// The current text's characters (a buffer kept between texts).
    chars: Vec<Char>,
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

/// A character of the text with its class in the pattern.
#[derive(Clone, Copy)]
struct Char {
    /// Byte offset in the text.
    at: u32,
    c: char,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// `\p{L}`
    Letter = 1,
    /// `\p{N}`
    Number,
    /// `\s`
    Space,
    /// none of the above
    Other,
    /// Not ASCII and matched by one of `s t r e v m l d` under case folding (U+017F ſ): the
    /// contractions alternative could take it, so the text takes the general road.
    Folds,
}

/// The class of every char seen so far (0: not asked yet), filled from Oniguruma itself.
static KINDS: [AtomicU8; 0x11_0000] = [const { AtomicU8::new(0) }; 0x11_0000];

fn kind(c: char) -> Kind {
    match KINDS[c as usize].load(Ordering::Relaxed) {
        1 => Kind::Letter,
        2 => Kind::Number,
        3 => Kind::Space,
        4 => Kind::Other,
        5 => Kind::Folds,
        _ => {
            let kind = ask_oniguruma(c);
            KINDS[c as usize].store(kind as u8, Ordering::Relaxed);
            kind
        }
    }
}

fn ask_oniguruma(c: char) -> Kind {
    static CLASSES: LazyLock<[SysRegex; 4]> = LazyLock::new(|| {
        [r"\p{L}", r"\p{N}", r"\s", r"(?i:s|t|r|e|v|m|l|d)"]
            .map(|p| SysRegex::new(p).expect("a valid class pattern"))
    });
    let mut buf = [0u8; 4];
    let one = c.encode_utf8(&mut buf);
    let whole = |r: &SysRegex| r.find_iter(one).next() == Some((0, one.len()));
    let [letter, number, space, folds] = &*CLASSES;
    if !c.is_ascii() && whole(folds) {
        Kind::Folds
    } else if whole(letter) {
        Kind::Letter
    } else if whole(number) {
        Kind::Number
    } else if whole(space) {
        Kind::Space
    } else {
        Kind::Other
    }
}

/// Fills `out` with the characters of `text`; false when one of them sends the text down the
/// general road.
fn classify(text: &str, out: &mut Vec<Char>) -> bool {
    out.clear();
    for (at, c) in text.char_indices() {
        let kind = kind(c);
        if kind == Kind::Folds {
            return false;
        }
        out.push(Char { at: at as u32, c, kind });
    }
    true
}

fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// The byte ranges of the pieces the pattern cuts a text of `len` bytes into, in order.
fn pieces(chars: &[Char], len: usize, max_digits: usize) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = chars.get(at)?.at as usize;
        at += piece_len(chars, at, max_digits);
        Some(start..chars.get(at).map_or(len, |c| c.at as usize))
    })
}

/// Length in chars of the piece starting at `i`: the first alternative of the pattern that
/// matches there, each greedy, with the backtracking the regex would do.
fn piece_len(t: &[Char], i: usize, max_digits: usize) -> usize {
    let n = t.len();
    let is = |k: usize, kind: Kind| k < n && t[k].kind == kind;
    let run = |from: usize, keep: &dyn Fn(&Char) -> bool| (from..n).find(|&k| !keep(&t[k])).unwrap_or(n);
    let c = t[i].c;
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c == '\'' {
        let lower = |k: usize| t.get(k).map(|x| x.c.to_ascii_lowercase());
        match (lower(i + 1), lower(i + 2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => return 2,
            (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => return 3,
            _ => {}
        }
    }
    let letters = |from| run(from, &|x: &Char| x.kind == Kind::Letter);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if t[i].kind == Kind::Letter {
        return letters(i) - i;
    }
    if !is_newline(c) && t[i].kind != Kind::Number && is(i + 1, Kind::Letter) {
        return letters(i + 1) - i;
    }
    // \p{N} or \p{N}{1,3}
    if t[i].kind == Kind::Number {
        return run(i, &|x: &Char| x.kind == Kind::Number).min(i + max_digits) - i;
    }
    // ' '?[^\s\p{L}\p{N}]+[\r\n]*
    let others_from = if t[i].kind == Kind::Other {
        Some(i)
    } else if c == ' ' && is(i + 1, Kind::Other) {
        Some(i + 1)
    } else {
        None
    };
    if let Some(from) = others_from {
        let others = run(from, &|x: &Char| x.kind == Kind::Other);
        return run(others, &|x: &Char| is_newline(x.c)) - i;
    }
    // What is left starts with whitespace.
    let end = run(i, &|x: &Char| x.kind == Kind::Space);
    // \s*[\r\n]+ : up to the last newline of the run
    if let Some(last) = (i..end).rev().find(|&k| is_newline(t[k].c)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str, max_digits: usize) -> Vec<&str> {
        let mut chars = Vec::new();
        assert!(classify(text, &mut chars));
        pieces(&chars, text.len(), max_digits).map(|r| &text[r]).collect()
    }

    #[test]
    fn pieces_follow_the_pattern() {
        assert_eq!(split("Hello world", 1), ["Hello", " world"]);
        assert_eq!(
            split("I'LL say it's 1234!", 1),
            ["I", "'LL", " say", " it", "'s", " ", "1", "2", "3", "4", "!"]
        );
        assert_eq!(split("1234", 3), ["123", "4"]);
        assert_eq!(split("a  b", 1), ["a", " ", " b"]);
        assert_eq!(split("a \n\n b\t", 1), ["a", " \n\n", " b", "\t"]);
        assert_eq!(split("(wow) ...\n\nyes", 1), ["(wow", ")", " ...\n\n", "yes"]);
        assert_eq!(split("x'y 'q", 1), ["x", "'y", " '", "q"]);
        assert_eq!(
            split("caf\u{e9}\u{a0}\u{4e2d}\u{6587} \u{663}\u{b2}!", 1),
            ["caf\u{e9}", "\u{a0}\u{4e2d}\u{6587}", " ", "\u{663}", "\u{b2}", "!"]
        );
    }

    #[test]
    fn classes_come_from_oniguruma() {
        assert!(kind('a') == Kind::Letter && kind('\u{4e2d}') == Kind::Letter);
        assert!(kind('7') == Kind::Number && kind('\u{b2}') == Kind::Number);
        assert!(kind('\u{a0}') == Kind::Space && kind('\u{3000}') == Kind::Space);
        assert!(kind('\u{301}') == Kind::Other && kind('\u{1f600}') == Kind::Other);
        assert!(kind('\u{17f}') == Kind::Folds);
        let mut chars = Vec::new();
        assert!(!classify("it'\u{17f} odd", &mut chars));
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
