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
