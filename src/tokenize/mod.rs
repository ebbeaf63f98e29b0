//! Tokenization with the model's own `tokenizer.json`, exactly as written (normalizer,
//! pre-tokenizer, post-processor), plus the run's prompt and truncation.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, Result};
use rayon::prelude::*;
use tokenizers::{
    Encoding, NormalizerWrapper, PostProcessor, Token, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

mod boundary;
mod byte_bpe;
pub mod chunk;
pub mod from_vocab;
mod normal_form;
mod wordpiece;

/// A token limit that is never reached: what a chunking run tokenizes with (its chunks are at
/// most `--chunk-tokens` by construction, nothing is cut).
pub const UNLIMITED: usize = u32::MAX as usize;

/// One text after tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// The text was longer than the token limit and was cut.
    pub truncated: bool,
}

/// A text's own tokens (no prompt, no special tokens) with their byte ranges in the text: what
/// chunking chooses its boundaries from (see chunk.rs).
#[derive(Clone, Debug, Default)]
pub struct TokenOffsets {
    /// Byte range of each token in the text, in order. Ranges may leave gaps (text no token
    /// covers, such as whitespace a tokenizer drops) and several tokens may share one range (the
    /// bytes of one character).
    pub starts: Vec<u32>,
    pub ends: Vec<u32>,
    /// Tokenizing stopped after the limit asked for: the text goes on past the last token.
    pub cut: bool,
    /// On the fast road with no prompt and no normaliser applied: the ids, and which tokens
    /// begin a piece of the pattern's split. A run of whole pieces then has exactly the ids of its
    /// own text (the split looks only forward, and each piece is tokenized on its own), so a
    /// chunk made of whole pieces is its slice of these ids; any other chunk is tokenized again.
    whole_pieces: Option<(Vec<u32>, Vec<bool>)>,
}

impl TokenOffsets {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer without its normalizer, for ASCII texts, when the normalizer is a
    /// Unicode normal form (which leaves ASCII unchanged): same ids, less work.
    ascii: Option<Tokenizer>,
    /// Our own split and piece cache for byte-level BPE tokenizers, when it gives the same ids.
    fast: Option<byte_bpe::ByteLevelBpe>,
    /// Our own normaliser, split and word cache for BERT's WordPiece tokenizers.
    wordpiece: Option<wordpiece::WordPieceRoad>,
    prompt: Option<String>,
    /// The truncation limit, special tokens included.
    max_tokens: usize,
    /// What the post-processor puts before and after a text's ids, when that is all it does
    /// (see [`affixes`]): the fast roads then skip building an `Encoding`.
    affixes: Option<(Vec<u32>, Vec<u32>)>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, cutting texts to `max_tokens` (special tokens included).
    pub fn from_file(path: &Path, max_tokens: usize, prompt: Option<String>) -> Result<Self> {
        Self::from_file_with(path, max_tokens, prompt, false, true)
    }

    /// [`TextTokenizer::from_file`], lowercasing texts first when `lowercase` (a
    /// sentence-transformers folder's `do_lower_case`), and without the post-processor's special
    /// tokens when `special_tokens` is false (a StaticEmbedding tokenizes with
    /// `add_special_tokens=False`).
    pub fn from_file_with(
        path: &Path,
        max_tokens: usize,
        prompt: Option<String>,
        lowercase: bool,
        special_tokens: bool,
    ) -> Result<Self> {
        // A folder from before fast tokenizers has only the slow tokenizer's vocab.txt.
        let mut json = match path.file_name().is_some_and(|n| n == from_vocab::VOCAB) {
            true => from_vocab::tokenizer_json(path)?,
            false => std::fs::read_to_string(path)
                .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?,
        };
        if lowercase {
            json = with_lowercase(&json)
                .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        }
        if !special_tokens {
            json = without_post_processor(&json)
                .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        }
        let mut inner = Tokenizer::from_str(&json)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        // NOTE: the tokenizer itself stops one token past the limit (tokenizers ≥ 0.23 stops
        // tokenizing a long text once it has enough tokens, and then cannot tell a text of
        // exactly the limit from a longer one); `finish` cuts to the limit and knows which texts
        // were cut.
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens + 1,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("cannot set truncation to {max_tokens} tokens: {e}"))?;
        // Batching is ours: a padding setting in the file would only add pad tokens.
        inner.with_padding(None);
        // NOTE: NFC/NFD/NFKC/NFKD map every ASCII string to itself, and the normalizer is a
        // large share of encoding time for review text (it rebuilds the per-byte alignments).
        let unicode_form = matches!(
            inner.get_normalizer(),
            Some(
                NormalizerWrapper::NFC(_)
                    | NormalizerWrapper::NFD(_)
                    | NormalizerWrapper::NFKC(_)
                    | NormalizerWrapper::NFKD(_)
            )
        );
        let prompt_ascii = prompt.as_deref().is_none_or(|p| p.is_ascii());
        let fast = byte_bpe::ByteLevelBpe::detect(&json, &inner);
        let wordpiece = wordpiece::WordPieceRoad::detect(&json, &inner);
        // Only the general road uses it: no second copy of the vocabulary when the fast road serves.
        let ascii = (fast.is_none() && wordpiece.is_none() && unicode_form && prompt_ascii)
            .then(|| {
                let mut t = inner.clone();
                t.with_normalizer(None::<NormalizerWrapper>).ok()?;
                Some(t)
            })
            .flatten();
        let affixes = affixes(&inner);
        Ok(TextTokenizer { inner, ascii, fast, wordpiece, prompt, max_tokens, affixes })
    }

    /// How many tokens the prompt takes at the start of every text, as sentence-transformers
    /// counts them for `include_prompt: false`: the prompt tokenized alone, special tokens
    /// included, less a special token the post-processor appends at its end.
    pub fn prompt_tokens(&self) -> Result<usize> {
        let Some(prompt) = &self.prompt else { return Ok(0) };
        let encoding = self.finish(
            self.inner
                .encode_fast(prompt.as_str(), false)
                .map_err(|e| anyhow!("tokenization failed: {e}"))?,
        )?;
        let specials = self.inner.get_added_tokens_decoder();
        let last_special = encoding.ids.last().is_some_and(|id| specials.get(id).is_some_and(|t| t.special));
        Ok(encoding.ids.len() - last_special as usize)
    }

    /// Tokenizes texts in parallel on rayon's pool.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Tokenized>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// The prompt this tokenizer puts before every text.
    pub fn prompt(&self) -> Option<&str> {
        self.prompt.as_deref()
    }

    /// The tokens of `text` itself (no prompt, no special tokens, no truncation) with their byte
    /// ranges; tokenizing may stop once there are more than `limit` (then `cut`).
    pub fn offsets(&self, text: &str, limit: usize) -> Result<TokenOffsets> {
        if let Some(fast) = self.fast.as_ref().and_then(|f| f.offsets(&self.inner, text, limit)) {
            let fast = fast?;
            let cut = fast.ends.last().is_some_and(|&e| (e as usize) < text.len());
            let mut starts = Vec::with_capacity(fast.ends.len());
            starts.push(0);
            starts.extend_from_slice(&fast.ends[..fast.ends.len().saturating_sub(1)]);
            starts.truncate(fast.ends.len());
            let whole_pieces =
                (fast.unnormalized && self.prompt.is_none()).then_some((fast.ids, fast.piece_starts));
            return Ok(TokenOffsets { starts, ends: fast.ends, cut, whole_pieces });
        }
        let encoding = self.inner.encode(text, false).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        let (starts, ends) = encoding.get_offsets().iter().map(|&(a, b)| (a as u32, b as u32)).unzip();
        Ok(TokenOffsets { starts, ends, cut: false, whole_pieces: None })
    }

    /// The ids the model sees for `text[bytes]` embedded on its own (prompt, special tokens, no
    /// truncation), where `bytes` runs from the start of token `tokens.start` of `offsets` (the
    /// text's) to the end of token `tokens.end - 1`: the slice of the text's ids when that is
    /// exact (see [`TokenOffsets`]), else that text tokenized.
    pub fn encode_part(
        &self,
        text: &str,
        bytes: Range<usize>,
        offsets: &TokenOffsets,
        tokens: Range<usize>,
    ) -> Result<Vec<u32>> {
        if let Some((ids, piece_starts)) = &offsets.whole_pieces {
            let starts_piece = |k: usize| k == ids.len() || piece_starts[k];
            if starts_piece(tokens.start) && starts_piece(tokens.end) {
                return Ok(self.finish_ids(ids[tokens].to_vec())?.ids);
            }
        }
        Ok(self.encode(&text[bytes])?.ids)
    }

    fn encode(&self, text: &str) -> Result<Tokenized> {
        let text = match &self.prompt {
            Some(p) => Cow::Owned(format!("{p}{text}")),
            None => Cow::Borrowed(text),
        };
        let fast = match (&self.fast, &self.wordpiece) {
            (Some(f), _) => f.ids(&self.inner, &text, self.max_tokens),
            (None, Some(w)) => w.ids(&self.inner, &text, self.max_tokens),
            (None, None) => None,
        };
        match fast {
            Some(ids) => self.finish_ids(ids?),
            None => self.finish(
                self.general(&text)
                    .encode_fast(text.as_ref(), false)
                    .map_err(|e| anyhow!("tokenization failed: {e}"))?,
            ),
        }
    }

    /// Cuts the text's tokens (no special tokens yet, at most one past the limit) so that with
    /// the post-processor's tokens (an appended end-of-text token) they make `max_tokens`, and
    /// runs the post-processor. NOTE: the post-processor's tokens are kept and the text is cut
    /// before them, as transformers does with truncation=True, max_length=N.
    fn finish(&self, mut encoding: Encoding) -> Result<Tokenized> {
        let added = self.inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        let keep = self.max_tokens.saturating_sub(added);
        let truncated = encoding.len() > keep;
        if truncated {
            encoding.truncate(keep, 0, TruncationDirection::Right);
            encoding.take_overflowing();
        }
        let encoding =
            self.inner.post_process(encoding, None, true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(Tokenized { ids: encoding.get_ids().to_vec(), truncated })
    }

    /// [`TextTokenizer::finish`] for the plain ids of a fast road: with the post-processor's
    /// [`affixes`] where they are known (the same cut and ids, without an `Encoding`), else
    /// through an `Encoding` made of the ids.
    fn finish_ids(&self, mut ids: Vec<u32>) -> Result<Tokenized> {
        let Some((before, after)) = &self.affixes else {
            let tokens = ids.into_iter().map(|id| Token::new(id, String::new(), (0, 0))).collect();
            return self.finish(Encoding::from_tokens(tokens, 0));
        };
        let keep = self.max_tokens.saturating_sub(before.len() + after.len());
        let truncated = ids.len() > keep;
        ids.truncate(keep);
        if !before.is_empty() {
            let mut all = Vec::with_capacity(before.len() + ids.len() + after.len());
            all.extend_from_slice(before);
            all.append(&mut ids);
            ids = all;
        }
        ids.extend_from_slice(after);
        Ok(Tokenized { ids, truncated })
    }

    /// The `tokenizers` road for `text`.
    fn general(&self, text: &str) -> &Tokenizer {
        match &self.ascii {
            Some(ascii) if text.is_ascii() => ascii,
            _ => &self.inner,
        }
    }
}

/// What `tokenizer`'s post-processor does to one text's ids when all it does is put the same
/// ids before and after them (none, `[CLS] … [SEP]`, `<s> … </s>`, an appended end-of-text),
/// found by running it on made-up ids of three lengths and on none; `None` when it does anything else.
fn affixes(tokenizer: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let added = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
    let run = |ids: &[u32]| -> Option<Vec<u32>> {
        let tokens = ids.iter().map(|&id| Token::new(id, String::new(), (0, 0))).collect();
        let out = tokenizer.post_process(Encoding::from_tokens(tokens, 0), None, true).ok()?;
        Some(out.get_ids().to_vec())
    };
    let mut found: Option<(Vec<u32>, Vec<u32>)> = None;
    for n in [1usize, 5, 2] {
        // Ids no vocabulary has, so they cannot be confused with the ones added.
        let probe: Vec<u32> = (0..n as u32).map(|i| u32::MAX - 7 + i).collect();
        let out = run(&probe)?;
        if out.len() != n + added {
            return None;
        }
        let at = (0..=out.len() - n).find(|&i| out[i..i + n] == probe[..])?;
        let pair = (out[..at].to_vec(), out[at + n..].to_vec());
        if found.as_ref().is_some_and(|f| *f != pair) {
            return None;
        }
        found = Some(pair);
    }
    // An empty text gets the affixes alone.
    let (before, after) = found?;
    (run(&[])? == [before.as_slice(), after.as_slice()].concat()).then_some((before, after))
}

/// `tokenizer.json` with no post-processor: the ids of the text alone, as `tokenizers` gives
/// them with `add_special_tokens=False`.
fn without_post_processor(json: &str) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(json)?;
    v["post_processor"] = serde_json::Value::Null;
    Ok(v.to_string())
}

/// `tokenizer.json` with a Lowercase normaliser put first, as sentence-transformers does for
/// `do_lower_case` (unless the normaliser is, or its sequence holds, a Lowercase already).
fn with_lowercase(json: &str) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(json)?;
    let lowercase = serde_json::json!({"type": "Lowercase"});
    let normalizer = v.get("normalizer").cloned().unwrap_or(serde_json::Value::Null);
    let kind = normalizer.get("type").and_then(|t| t.as_str());
    let parts: Vec<serde_json::Value> = match kind {
        Some("Lowercase") => return Ok(json.to_string()),
        Some("Sequence") => {
            let parts = normalizer["normalizers"].as_array().cloned().unwrap_or_default();
            if parts.iter().any(|n| n["type"] == "Lowercase") {
                return Ok(json.to_string());
            }
            parts
        }
        Some(_) => vec![normalizer],
        None => vec![],
    };
    let mut all = vec![lowercase];
    all.extend(parts);
    v["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": all});
    Ok(v.to_string())
}

#[cfg(test)]
mod tests;
