//! Texts in, vectors out: tokenize, pack by length under the token budget, run the model, pool
//! and normalise. The pipeline feeds it chunks of rows; tests call it directly.

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::batch::{pack_by_length, Batch};
use crate::model::{self, Attention, AttentionImpl, LoadedModel, ModelConfig, ModelFiles};
use crate::pool::l2_normalize;
use crate::tokenize::TextTokenizer;

/// What decides the vectors, besides the texts.
#[derive(Clone, Debug)]
pub struct EmbedderOptions {
    pub attention: Attention,
    pub max_tokens: usize,
    pub prompt: Option<String>,
    pub normalize: bool,
    pub batch_tokens: usize,
    /// How attention is computed (tests pin both ways; users leave it on auto).
    pub attention_impl: AttentionImpl,
}

/// Why a row got no vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    NullText,
    NoTokens,
    /// The model ran out of memory on this text even in a batch of its own.
    OutOfMemory,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::NullText => "text is null",
            Failure::NoTokens => "text tokenizes to no tokens",
            Failure::OutOfMemory => "out of memory even in a batch of its own",
        }
    }
}

/// The result for a list of texts, in the order given.
#[derive(Debug, Default)]
pub struct Embedded {
    /// Row-major `[texts, dim]`, one allocation per chunk; rows that failed hold zeros.
    pub values: Vec<f32>,
    pub dim: usize,
    /// Per text: why it has no vector, or `None`.
    pub failures: Vec<Option<Failure>>,
    /// Real tokens run through the model.
    pub tokens: u64,
    /// Tokens of the padded attention rectangles (≥ `tokens`).
    pub padded_tokens: u64,
    /// Texts cut to `max_tokens`.
    pub truncated: u64,
    /// Batches split in two after running out of memory.
    pub oom_splits: u64,
}

impl Embedded {
    /// Number of texts.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// Text `i`'s vector, or why it has none.
    pub fn vector(&self, i: usize) -> Result<&[f32], Failure> {
        match self.failures[i] {
            Some(f) => Err(f),
            None => Ok(&self.values[i * self.dim..(i + 1) * self.dim]),
        }
    }

    pub fn failed(&self) -> usize {
        self.failures.iter().filter(|f| f.is_some()).count()
    }
}

/// Texts tokenized and packed, ready for the model.
pub struct Prepared {
    /// Per text: why it cannot be embedded, or `None`.
    failures: Vec<Option<Failure>>,
    /// Each batch with, per text in it, the index of that text in the input.
    batches: Vec<(Batch, Vec<usize>)>,
    truncated: u64,
}

pub struct Embedder {
    tokenizer: TextTokenizer,
    model: LoadedModel,
    options: EmbedderOptions,
}

impl Embedder {
    pub fn load(
        files: &ModelFiles,
        config: &ModelConfig,
        options: EmbedderOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tokenizer =
            TextTokenizer::from_file(&files.tokenizer, options.max_tokens, options.prompt.clone())?;
        let model = model::load(files, config, options.attention, options.attention_impl, dtype, device)?;
        Ok(Embedder { tokenizer, model, options })
    }

    pub fn dim(&self) -> usize {
        self.model.model.hidden_size()
    }

    pub fn options(&self) -> &EmbedderOptions {
        &self.options
    }

    /// Changes the token budget of a model batch (chosen after the weights are on the device).
    pub fn set_batch_tokens(&mut self, tokens: usize) {
        self.options.batch_tokens = tokens.max(1);
    }

    /// Embeds `texts` (`None` for a null value).
    pub fn embed(&self, texts: &[Option<&str>]) -> Result<Embedded> {
        self.run(self.prepare(texts)?)
    }

    /// The host half: tokenize, sort by length and pack into batches. Runs on a different
    /// thread than [`Embedder::run`] in the pipeline.
    pub fn prepare(&self, texts: &[Option<&str>]) -> Result<Prepared> {
        let present: Vec<&str> = texts.iter().filter_map(|t| *t).collect();
        let mut tokenized = self.tokenizer.encode_batch(&present)?.into_iter();
        let mut failures = vec![None; texts.len()];
        let mut truncated = 0;
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        let mut slots: Vec<usize> = Vec::new(); // seqs[i] belongs to texts[slots[i]]
        for (i, text) in texts.iter().enumerate() {
            if text.is_none() {
                failures[i] = Some(Failure::NullText);
                continue;
            }
            let t = tokenized.next().expect("one encoding per present text");
            if t.ids.is_empty() {
                failures[i] = Some(Failure::NoTokens);
                continue;
            }
            truncated += t.truncated as u64;
            seqs.push(t.ids);
            slots.push(i);
        }
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let batches = pack_by_length(&lengths, self.options.batch_tokens)
            .into_iter()
            .map(|group| {
                let refs: Vec<&[u32]> = group.iter().map(|&i| seqs[i].as_slice()).collect();
                (Batch::last_token(&refs), group.iter().map(|&i| slots[i]).collect())
            })
            .collect();
        Ok(Prepared { failures, batches, truncated })
    }

    /// The device half: run the prepared batches through the model, pool and normalise.
    pub fn run(&self, prepared: Prepared) -> Result<Embedded> {
        Ok(self.run_with(prepared, |_, _| true)?.expect("never stopped"))
    }

    /// [`Embedder::run`], calling `after_batch(texts, tokens)` after each model batch; when it
    /// returns false the rest is skipped and the result is `None` (a stop was requested).
    pub fn run_with(
        &self,
        prepared: Prepared,
        mut after_batch: impl FnMut(u64, u64) -> bool,
    ) -> Result<Option<Embedded>> {
        let dim = self.dim();
        let mut out = Embedded {
            values: vec![0.0; prepared.failures.len() * dim],
            dim,
            failures: prepared.failures,
            truncated: prepared.truncated,
            ..Embedded::default()
        };
        for (batch, slots) in &prepared.batches {
            out.tokens += batch.input_ids.len() as u64;
            out.padded_tokens +=
                if self.model.packed { batch.input_ids.len() } else { batch.padded_tokens() } as u64;
            self.embed_into(batch, slots, &mut out)?;
            if !after_batch(batch.len() as u64, batch.input_ids.len() as u64) {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// Embeds one batch into `out` at `slots`. A batch that runs out of memory is split in two
    /// and each half retried; a single text that still does not fit is recorded as failed.
    fn embed_into(&self, batch: &Batch, slots: &[usize], out: &mut Embedded) -> Result<()> {
        let dim = out.dim;
        match self.embed_batch(batch) {
            Ok(vectors) => {
                for (&slot, v) in slots.iter().zip(vectors.chunks_exact(dim)) {
                    let dest = &mut out.values[slot * dim..(slot + 1) * dim];
                    dest.copy_from_slice(v);
                    if self.options.normalize {
                        l2_normalize(dest);
                    }
                }
                Ok(())
            }
            Err(e) if is_out_of_memory(&e) => {
                if batch.len() == 1 {
                    out.failures[slots[0]] = Some(Failure::OutOfMemory);
                    return Ok(());
                }
                out.oom_splits += 1;
                let (a, b) = batch.split_half();
                let (slots_a, slots_b) = slots.split_at(a.len());
                self.embed_into(&a, slots_a, out)?;
                self.embed_into(&b, slots_b, out)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one batch through the model: row-major `[texts, dim]` f32, not normalised.
    pub fn embed_batch(&self, batch: &Batch) -> Result<Vec<f32>> {
        crate::faults::model_batch(if self.model.packed {
            batch.input_ids.len()
        } else {
            batch.padded_tokens()
        })?;
        let tensor = self.model.model.embed(batch).context("model forward pass failed")?;
        Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Tokenizes texts as the model sees them (prompt, special tokens, truncation).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<crate::tokenize::Tokenized>> {
        self.tokenizer.encode_batch(texts)
    }
}

/// Whether an error is an allocation failure (CUDA's CUDA_ERROR_OUT_OF_MEMORY, cuBLAS's
/// CUBLAS_STATUS_ALLOC_FAILED, or an injected one), which a smaller batch may avoid.
pub fn is_out_of_memory(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}").to_ascii_lowercase();
    ["out of memory", "out_of_memory", "alloc_failed", "cannot allocate memory"]
        .iter()
        .any(|p| text.contains(p))
}

/// Default `--batch-tokens` on a GPU with `free` bytes after the weights are loaded.
///
/// Per padded token, one layer at a time holds about 6 hidden-size vectors (residual, norm, q,
/// attention out, projections), k and v, 3 MLP-width vectors (gate, up, product) in the compute
/// dtype, and two f32 rows of attention scores per head over the batch's longest text (taken
/// as 2048 here; longer batches that do not fit are split by the out-of-memory retry). Half of
/// the free memory is used, leaving room for the allocator and kernels' workspaces.
pub fn auto_batch_tokens(free: usize, config: &ModelConfig, dtype_bytes: usize, max_tokens: usize) -> usize {
    let kv = config.num_key_value_heads * config.head_dim;
    let activations = (6 * config.hidden_size + 3 * config.intermediate_size + 2 * kv) * dtype_bytes;
    let scores = 2 * config.num_attention_heads * max_tokens.min(2048) * 4;
    let tokens = free / 2 / (activations + scores).max(1);
    (tokens / 1024 * 1024).clamp(2048, 131_072)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_batch_tokens_follows_free_memory_and_model_size() {
        let small = ModelConfig::from_json(
            r#"{"model_type":"qwen2","vocab_size":151646,"hidden_size":1536,"intermediate_size":8960,
                "num_hidden_layers":28,"num_attention_heads":12,"num_key_value_heads":2,
                "max_position_embeddings":32768,"rms_norm_eps":1e-6}"#,
        )
        .unwrap();
        let big = ModelConfig::from_json(
            r#"{"model_type":"qwen2","vocab_size":151646,"hidden_size":3584,"intermediate_size":18944,
                "num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,
                "max_position_embeddings":32768,"rms_norm_eps":1e-6}"#,
        )
        .unwrap();
        const GB: usize = 1 << 30;
        // An H100 after gte-Qwen2-1.5B's weights (~74 GB free), at review lengths.
        let h100_small = auto_batch_tokens(74 * GB, &small, 2, 512);
        assert!((100_000..=131_072).contains(&h100_small), "{h100_small}");
        // The 7B model leaves less room and costs more per token.
        let h100_big = auto_batch_tokens(60 * GB, &big, 2, 512);
        assert!(h100_big < h100_small && h100_big >= 32_768, "{h100_big}");
        // Long texts cost more attention memory per token.
        assert!(auto_batch_tokens(20 * GB, &big, 2, 8192) < auto_batch_tokens(20 * GB, &big, 2, 512));
        // Never below a useful minimum, always a multiple of 1024.
        assert_eq!(auto_batch_tokens(GB / 10, &big, 2, 512), 2048);
        assert_eq!(auto_batch_tokens(10 * GB, &small, 2, 512) % 1024, 0);
    }
}
