//! Tokenization with the model's own `tokenizer.json`, exactly as written (normalizer,
//! pre-tokenizer, post-processor), plus the run's prompt and truncation.

use std::path::Path;

use anyhow::{anyhow, Result};
use tokenizers::{NormalizerWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One text after tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// The text was longer than the token limit and was cut.
    pub truncated: bool,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer without its normalizer, for ASCII texts, when the normalizer is a
    /// Unicode normal form (which leaves ASCII unchanged): same ids, less work.
    ascii: Option<Tokenizer>,
    prompt: Option<String>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, cutting texts to `max_tokens` (special tokens included).
    pub fn from_file(path: &Path, max_tokens: usize, prompt: Option<String>) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        // NOTE: truncation keeps the post-processor's tokens (the appended <|endoftext|>) and cuts
        // the text before it, as transformers does with truncation=True, max_length=N.
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
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
        let ascii = (unicode_form && prompt_ascii).then(|| {
            let mut t = inner.clone();
            t.with_normalizer(None::<NormalizerWrapper>);
            t
        });
        Ok(TextTokenizer { inner, ascii, prompt })
    }

    /// Tokenizes texts in parallel (the tokenizer fans out over rayon's pool).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Tokenized>> {
        let Some(ascii) = &self.ascii else {
            return self.encode_with(&self.inner, texts);
        };
        let (plain, other): (Vec<usize>, Vec<usize>) = (0..texts.len()).partition(|&i| texts[i].is_ascii());
        if other.is_empty() {
            return self.encode_with(ascii, texts);
        }
        let pick = |idx: &[usize]| idx.iter().map(|&i| texts[i]).collect::<Vec<_>>();
        let mut out: Vec<Option<Tokenized>> = vec![None; texts.len()];
        for (idx, tok) in [(&plain, ascii), (&other, &self.inner)] {
            for (&i, t) in idx.iter().zip(self.encode_with(tok, &pick(idx))?) {
                out[i] = Some(t);
            }
        }
        Ok(out.into_iter().map(|t| t.expect("every text encoded")).collect())
    }

    fn encode_with(&self, tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<Tokenized>> {
        let encodings = match &self.prompt {
            Some(p) => {
                let full: Vec<String> = texts.iter().map(|t| format!("{p}{t}")).collect();
                tokenizer.encode_batch_fast(full, true)
            }
            None => tokenizer.encode_batch_fast(texts.to_vec(), true),
        }
        .map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|mut e| {
                let truncated = !e.take_overflowing().is_empty();
                Tokenized { ids: e.get_ids().to_vec(), truncated }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_fast_path_gives_the_normalised_ids() {
        // The bundled tiny model's tokenizer has an NFC normalizer, like Qwen2's.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2/tokenizer.json");
        let t = TextTokenizer::from_file(&path, 64, None).unwrap();
        assert!(t.ascii.is_some(), "expected the fast path for an NFC tokenizer");
        let texts =
            ["plain ascii text, with 123 numbers!", "caf\u{e9} cafe\u{301} \u{212b}", "  spaced\tout\n", ""];
        let mixed = t.encode_batch(&texts).unwrap();
        let slow: Vec<Tokenized> =
            texts.iter().map(|x| t.encode_with(&t.inner, &[x]).unwrap().remove(0)).collect();
        assert_eq!(mixed, slow);
    }
}
