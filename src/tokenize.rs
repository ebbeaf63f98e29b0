//! Tokenization with the model's own `tokenizer.json`, exactly as written (normalizer,
//! pre-tokenizer, post-processor), plus the run's prompt and truncation.

use std::path::Path;

use anyhow::{anyhow, Result};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One text after tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// The text was longer than the token limit and was cut.
    pub truncated: bool,
}

pub struct TextTokenizer {
    inner: Tokenizer,
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
        Ok(TextTokenizer { inner, prompt })
    }

    /// Tokenizes texts in parallel (the tokenizer fans out over rayon's pool).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Tokenized>> {
        let encodings = match &self.prompt {
            Some(p) => {
                let full: Vec<String> = texts.iter().map(|t| format!("{p}{t}")).collect();
                self.inner.encode_batch_fast(full, true)
            }
            None => self.inner.encode_batch_fast(texts.to_vec(), true),
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
