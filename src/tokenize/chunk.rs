//! `--chunk-tokens N --chunk-overlap M`: a text longer than the model should see at once is split
//! into chunks of at most N tokens, each embedded as a text of its own, instead of being cut.
//!
//! N counts what the model sees for a chunk — the prompt, the chunk's tokens and the special
//! tokens — so a chunk fits exactly as a row's text would. A chunk is a byte range of the text,
//! and the ids embedded for it are those of that range's text embedded alone as a row (prompt and
//! special tokens included): a chunk's vector is the vector of `text[start..end]`.
//!
//! How: the text is tokenized once with byte offsets ([`TextTokenizer::offsets`]). Chunk by
//! chunk, the end is chosen among the token boundaries of a window of at most N minus the
//! prompt and special tokens, preferring, in this order, a paragraph break (a blank line), a
//! sentence end (Unicode's sentence boundaries, UAX #29, from `unicode-segmentation`; a line break
//! is one too), whitespace, and then any boundary that does not split a character. Only the later
//! half of the window is searched first, so a break near the start does not make a tiny chunk.
//! The chosen range's ids come from [`TextTokenizer::encode_part`] (a slice of the text's ids
//! where that is exact, else the range tokenized again); if they are over N (the prompt can merge
//! with the chunk's first word), the window shrinks and the end is chosen again. The next chunk
//! starts about M tokens before the end, at a word start when one is within two tokens.
//!
//! NOTE: text-splitter (0.33, which sizes chunks with a `tokenizers` tokenizer) was measured first:
//! on 2,000 IMDB reviews it chunked 284–312 texts/s sized by `tokenizers` and 1,117 sized by our
//! fast road, against 4,129–5,875 texts/s for one tokenization of the same texts (BENCHMARKS.md),
//! because it measures candidate chunks by tokenizing them again and again. Tokenizing once with
//! offsets and choosing boundaries here keeps chunking at about the cost of tokenizing.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::boundary::Cuts;
use super::TextTokenizer;

/// The chunk settings of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSettings {
    /// Most tokens the model sees for one chunk: prompt, text and special tokens.
    pub tokens: usize,
    /// Tokens a chunk shares with the one before it, about.
    pub overlap: usize,
    /// Most chunks of one text; the rest of the text is dropped and the text counted as cut.
    pub max_chunks: Option<usize>,
}

/// Fewest tokens of text a chunk must have room for: any character (at most 4 byte-level tokens)
/// then fits, with room to spare for a prompt that merges with the text.
pub const MIN_ROOM: usize = 8;

/// One chunk of a text: its byte range and the ids the model sees for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextChunk {
    pub start: u32,
    pub end: u32,
    pub ids: Vec<u32>,
}

/// A text split into chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunked {
    /// In text order. Empty when the text has no tokens at all, or could not be split.
    pub chunks: Vec<TextChunk>,
    /// `--max-chunks` left part of the text out.
    pub truncated: bool,
    /// Some piece of the text does not fit in a chunk even alone (a prompt leaving less room than
    /// one character needs); the text cannot be embedded in chunks.
    pub unsplittable: bool,
}

/// Splits texts with one tokenizer and one set of settings.
pub struct Chunker<'a> {
    tokenizer: &'a TextTokenizer,
    settings: ChunkSettings,
    /// Tokens an empty text gets (prompt and special tokens).
    overhead: usize,
    /// Tokens of text a chunk has room for: `settings.tokens - overhead`.
    room: usize,
}

impl<'a> Chunker<'a> {
    /// Checks the settings against what the tokenizer adds to every text: the prompt and the
    /// special tokens must leave room for text, and the overlap must be less than that room.
    pub fn new(tokenizer: &'a TextTokenizer, settings: ChunkSettings) -> Result<Self> {
        let overhead = tokenizer.encode("")?.ids.len();
        let n = settings.tokens;
        let room = n.saturating_sub(overhead);
        if room < MIN_ROOM {
            let prompt = match tokenizer.prompt() {
                Some(_) => "the prompt and the special tokens take",
                None => "the special tokens take",
            };
            bail!(
                "--chunk-tokens {n} leaves {room} tokens for text ({prompt} {overhead}); a chunk needs room for at least {MIN_ROOM}: raise --chunk-tokens"
            );
        }
        if settings.overlap >= room {
            bail!(
                "--chunk-overlap {} must be less than the {room} tokens of text a chunk of --chunk-tokens {n} holds (after {overhead} for the prompt and special tokens)",
                settings.overlap
            );
        }
        if settings.max_chunks == Some(0) {
            bail!("--max-chunks must be at least 1");
        }
        Ok(Chunker { tokenizer, settings, overhead, room })
    }

    /// Tokens of text each chunk has room for.
    pub fn room(&self) -> usize {
        self.room
    }

    /// Splits texts in parallel on rayon's pool.
    pub fn chunk_batch(&self, texts: &[&str]) -> Result<Vec<Chunked>> {
        texts.par_iter().map(|t| self.chunk(t)).collect()
    }

    /// Splits one text (a text that fits is one chunk: all of it, with the ids an unchunked run
    /// gives it).
    pub fn chunk(&self, text: &str) -> Result<Chunked> {
        let n_max = self.settings.tokens;
        // With --max-chunks K, the text past K windows is never looked at.
        let limit =
            self.settings.max_chunks.map_or(usize::MAX, |k| k.saturating_mul(self.room).saturating_add(2));
        let offsets = self.tokenizer.offsets(text, limit)?;
        let n = offsets.len();
        if !offsets.cut && n + self.overhead <= n_max + 2 {
            let ids = self.tokenizer.encode_part(text, 0..text.len(), &offsets, 0..n)?;
            if ids.len() <= n_max {
                let chunks = match ids.is_empty() {
                    true => Vec::new(),
                    false => vec![TextChunk { start: 0, end: text.len() as u32, ids }],
                };
                return Ok(Chunked { chunks, ..Chunked::default() });
            }
        }
        let cuts = Cuts::new(text, &offsets);
        let max_chunks = self.settings.max_chunks.unwrap_or(usize::MAX);
        let mut out = Chunked::default();
        let mut a = 0;
        loop {
            if out.chunks.len() == max_chunks {
                out.truncated = true;
                break;
            }
            let mut window = self.room;
            let (b, ids) = loop {
                let b = if !offsets.cut && n - a <= window {
                    n
                } else {
                    cuts.best_end(a, window, self.settings.overlap)
                };
                let bytes = cuts.bytes(a, b);
                let ids = self.tokenizer.encode_part(text, bytes, &offsets, a..b)?;
                if ids.len() <= n_max {
                    break (b, ids);
                }
                let over = ids.len() - n_max;
                if window <= 1 || b <= cuts.first_after(a) {
                    return Ok(Chunked { unsplittable: true, ..Chunked::default() });
                }
                window = window.saturating_sub(over).max(1).min(b - a - 1);
            };
            let bytes = cuts.bytes(a, b);
            out.chunks.push(TextChunk { start: bytes.start as u32, end: bytes.end as u32, ids });
            if b >= n {
                out.truncated = offsets.cut;
                break;
            }
            a = cuts.next_start(a, b, self.settings.overlap);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use super::*;

    fn tokenizer(json: &str, prompt: Option<&str>) -> TextTokenizer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        TextTokenizer::from_file(&path, crate::tokenize::UNLIMITED, prompt.map(String::from)).unwrap()
    }

    fn tiny_qwen2() -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2/tokenizer.json"),
        )
        .unwrap()
    }

    /// The same tokenizer with a pattern the fast road does not know: the general road.
    fn general_road() -> String {
        let mut v: serde_json::Value = serde_json::from_str(&tiny_qwen2()).unwrap();
        v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\S+".into();
        v.to_string()
    }

    /// The same tokenizer with no normaliser: the fast road takes every text unchanged, so
    /// chunks of whole pieces are slices of the text's ids.
    fn no_normalizer() -> String {
        let mut v: serde_json::Value = serde_json::from_str(&tiny_qwen2()).unwrap();
        v["normalizer"] = serde_json::Value::Null;
        v.to_string()
    }

    /// A small BERT-style WordPiece tokenizer: lower-casing normaliser, whitespace that no token
    /// covers, [CLS] and [SEP] around every text, [UNK] for what the vocabulary lacks.
    fn wordpiece() -> String {
        let words = [
            "the", "book", "was", "slow", "but", "ending", "cafe", "naive", "loved", "it", "page", "##s",
            "word", "line", "one", "two", "three", "short", "leading", "and", "trailing", "spaces", ".", ",",
            "!", "?", "a", "##a", "query", ":", "instruct", "'", "reader", "by",
        ];
        let mut vocab = serde_json::json!({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3});
        for (i, w) in words.iter().enumerate() {
            vocab[*w] = (4 + i).into();
        }
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100, "vocab": vocab}
        })
        .to_string()
    }

    /// What `tokenizers` itself gives `text` embedded alone (prompt, special tokens, no cut).
    fn reference(t: &TextTokenizer, text: &str) -> Vec<u32> {
        let mut whole = t.inner.clone();
        whole.with_truncation(None).unwrap();
        let full = format!("{}{text}", t.prompt().unwrap_or(""));
        whole.encode_fast(full.as_str(), true).unwrap().get_ids().to_vec()
    }

    /// Tokens of `text` alone, without prompt or special tokens.
    fn own_tokens(t: &TextTokenizer, text: &str) -> usize {
        let mut whole = t.inner.clone();
        whole.with_truncation(None).unwrap();
        whole.encode_fast(text, false).unwrap().len()
    }

    /// Texts of the kinds chunking must handle: prose with paragraphs and sentences, no sentence
    /// ends, one giant word, CJK without spaces, emoji, whitespace runs, short texts.
    pub(crate) fn texts(seed: u64) -> Vec<String> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let words =
            ["the", "book", "was", "slow", "but", "the", "ending", "café", "naïve", "loved", "it", "pages"];
        let mut out = vec![
            String::new(),
            "Short.".to_string(),
            "a".repeat(700),
            "\u{4f60}\u{597d}\u{4e16}\u{754c}\u{3002}\u{6211}\u{559c}\u{6b22}\u{8fd9}\u{672c}\u{4e66}\u{ff01}".repeat(12),
            "\u{1f600}\u{1f44d}\u{1f3fd} \u{2764}\u{fe0f}".repeat(30),
            "word ".repeat(150),
            "  leading and trailing spaces   ".repeat(10),
            "line one\nline two\r\nline three\n\n\n".repeat(15),
        ];
        for _ in 0..30 {
            let mut s = String::new();
            for _ in 0..rng.usize(1..5) {
                for _ in 0..rng.usize(1..6) {
                    let n = rng.usize(1..25);
                    let sentence: Vec<&str> = (0..n).map(|_| words[rng.usize(..words.len())]).collect();
                    s.push_str(&sentence.join(" "));
                    s.push_str([". ", "! ", "? ", ", ", " "][rng.usize(..5)]);
                }
                s.push_str(["\n\n", "\n", " ", "\r\n\r\n"][rng.usize(..4)]);
            }
            out.push(s);
        }
        out
    }

    /// Every property chunking promises, for one text.
    fn check(t: &TextTokenizer, settings: ChunkSettings, text: &str) -> Chunked {
        let chunker = Chunker::new(t, settings).unwrap();
        let got = chunker.chunk(text).unwrap();
        assert!(!got.unsplittable, "{text:?}");
        let whole = reference(t, text);
        if whole.len() <= settings.tokens {
            // A text that fits is one chunk, all of it, with the ids of an unchunked run.
            let want = match whole.is_empty() {
                true => vec![],
                false => vec![TextChunk { start: 0, end: text.len() as u32, ids: whole }],
            };
            assert_eq!(got.chunks, want, "{text:?}");
            return got;
        }
        for (i, c) in got.chunks.iter().enumerate() {
            let part = &text[c.start as usize..c.end as usize];
            assert_eq!(c.ids, reference(t, part), "chunk {i} {part:?} of {text:?}");
            assert!(c.ids.len() <= settings.tokens, "chunk {i} has {} tokens: {part:?}", c.ids.len());
            if i > 0 {
                let prev = &got.chunks[i - 1];
                assert!(c.start > prev.start && c.end > prev.end, "chunks out of order in {text:?}");
                if settings.overlap == 0 {
                    assert!(c.start >= prev.end, "overlap without --chunk-overlap in {text:?}");
                } else {
                    let shared = own_tokens(t, &text[c.start as usize..prev.end.max(c.start) as usize]);
                    assert!(
                        shared.abs_diff(settings.overlap) <= 2,
                        "chunks {} and {i} share {shared} tokens, not about {}: {text:?}",
                        i - 1,
                        settings.overlap
                    );
                }
            }
        }
        if !got.truncated {
            // Every byte that is not whitespace is in some chunk.
            let mut covered = vec![false; text.len()];
            for c in &got.chunks {
                covered[c.start as usize..c.end as usize].iter_mut().for_each(|b| *b = true);
            }
            for (at, ch) in text.char_indices() {
                assert!(ch.is_whitespace() || covered[at], "byte {at} ({ch:?}) is in no chunk of {text:?}");
            }
        }
        got
    }

    #[test]
    fn chunks_fit_cover_the_text_overlap_as_asked_and_are_their_own_texts() {
        let roads = [
            ("fast", tiny_qwen2()),
            ("fast, no normaliser", no_normalizer()),
            ("general", general_road()),
            ("wordpiece", wordpiece()),
        ];
        for (road, json) in roads {
            for (tokens, overlap, prompt) in
                [(16, 0, None), (24, 4, None), (40, 8, Some("query: ")), (33, 5, Some("Instruct: it's\n"))]
            {
                let t = tokenizer(&json, prompt);
                assert_eq!(t.fast.is_some(), road.starts_with("fast"));
                let settings = ChunkSettings { tokens, overlap, max_chunks: None };
                let mut multi = 0;
                for text in texts(tokens as u64) {
                    multi += (check(&t, settings, &text).chunks.len() > 1) as usize;
                }
                assert!(multi > 20, "{road}, {tokens}: only {multi} texts were split");
            }
        }
    }

    #[test]
    fn chunks_end_at_the_best_boundary_in_the_window() {
        let t = tokenizer(&tiny_qwen2(), None);
        let settings = ChunkSettings { tokens: 48, overlap: 0, max_chunks: None };
        let chunker = Chunker::new(&t, settings).unwrap();
        let sentence = "The slow book was loved by the reader";
        // Paragraphs shorter than a chunk: every chunk but the last ends at a paragraph break.
        let paragraphs = vec![format!("{sentence}. {sentence}."); 6].join("\n\n");
        let got = chunker.chunk(&paragraphs).unwrap();
        assert!(got.chunks.len() > 2);
        for c in &got.chunks[..got.chunks.len() - 1] {
            assert!(
                paragraphs[c.end as usize..].starts_with("\n\n"),
                "{:?}",
                &paragraphs[c.start as usize..c.end as usize]
            );
        }
        // One long paragraph: chunks end at sentence ends (UAX #29: a full stop before a
        // capital; "x. the" is no sentence end).
        let prose = [sentence; 12].join(". ") + ".";
        for c in &chunker.chunk(&prose).unwrap().chunks {
            assert!(prose[..c.end as usize].ends_with('.'), "{:?}", &prose[c.start as usize..c.end as usize]);
        }
        // No sentence ends: at whitespace, so no word is split.
        let words = vec!["pages"; 80].join(" ");
        for c in &chunker.chunk(&words).unwrap().chunks {
            let part = &words[c.start as usize..c.end as usize];
            assert!(part.trim().split(' ').all(|w| w == "pages"), "{part:?}");
        }
        // CJK without spaces: at the ideographic full stops.
        let cjk = "\u{6211}\u{559c}\u{6b22}\u{8fd9}\u{672c}\u{4e66}\u{3002}".repeat(20);
        for c in &chunker.chunk(&cjk).unwrap().chunks[..1] {
            assert!(
                cjk[..c.end as usize].ends_with('\u{3002}'),
                "{:?}",
                &cjk[c.start as usize..c.end as usize]
            );
        }
    }

    #[test]
    fn max_chunks_keeps_the_first_chunks_and_says_the_text_was_cut() {
        let t = tokenizer(&tiny_qwen2(), None);
        let text = "the book was slow. ".repeat(200);
        let all = Chunker::new(&t, ChunkSettings { tokens: 32, overlap: 4, max_chunks: None })
            .unwrap()
            .chunk(&text)
            .unwrap();
        let first = Chunker::new(&t, ChunkSettings { tokens: 32, overlap: 4, max_chunks: Some(3) })
            .unwrap()
            .chunk(&text)
            .unwrap();
        assert!(all.chunks.len() > 3 && !all.truncated);
        assert_eq!(first.chunks, all.chunks[..3]);
        assert!(first.truncated);
        let fits = Chunker::new(&t, ChunkSettings { tokens: 32, overlap: 4, max_chunks: Some(1) })
            .unwrap()
            .chunk("short")
            .unwrap();
        assert!(!fits.truncated && fits.chunks.len() == 1);
    }

    #[test]
    fn settings_that_leave_no_room_are_refused() {
        let json = tiny_qwen2();
        let prompt =
            "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ";
        let t = tokenizer(&json, Some(prompt));
        let err = Chunker::new(&t, ChunkSettings { tokens: 16, overlap: 0, max_chunks: None })
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--chunk-tokens 16 leaves") && err.contains("the prompt"), "{err}");
        let t = tokenizer(&json, None);
        let err = Chunker::new(&t, ChunkSettings { tokens: 16, overlap: 15, max_chunks: None })
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--chunk-overlap 15 must be less than the 15 tokens"), "{err}");
        assert!(Chunker::new(&t, ChunkSettings { tokens: 16, overlap: 14, max_chunks: None }).is_ok());
    }
}
