//! Texts in, vectors out: tokenize, pack by length under the token budget, run the model, pool,
//! apply a sentence-transformers folder's Dense modules, keep `--dimensions`, and normalise. The
//! pipeline feeds it chunks of rows; tests call it directly.

use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::batch::{pack_by_length, Batch, Budget};
use crate::chunked::{self, ChunkIndex, ChunkPool, Chunking};
use crate::memory::is_out_of_memory;
use crate::model::{
    self, Attention, AttentionImpl, Dense, LoadedModel, ModelConfig, ModelFiles, MAX_ATTENTION_ELEMENTS,
};
use crate::pool::{sum_of_squares, Pooling};
use crate::tokenize::chunk::Chunker;
use crate::tokenize::TextTokenizer;

/// What decides the vectors, besides the texts.
#[derive(Clone, Debug)]
pub struct EmbedderOptions {
    pub attention: Attention,
    pub max_tokens: usize,
    pub prompt: Option<String>,
    pub normalize: bool,
    pub pooling: Pooling,
    /// Keep the first D dimensions (then normalise when `normalize`).
    pub dimensions: Option<usize>,
    pub batch_tokens: usize,
    /// How attention is computed (tests pin both ways; users leave it on auto).
    pub attention_impl: AttentionImpl,
    /// `--chunk-tokens`: long texts split into chunks instead of cut at `max_tokens`.
    pub chunking: Option<Chunking>,
}

pub use crate::failures::Failure;

/// The result for a list of texts, in the order given.
#[derive(Debug, Default)]
pub struct Embedded {
    /// Row-major `[texts, dim]`, one allocation per chunk of rows; rows that failed hold zeros.
    /// With chunk rows (`chunks` set): `[chunks, dim]`, one vector per chunk.
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
    /// Per text: whether it was cut.
    pub cut: Vec<bool>,
    /// Batches split in two after running out of memory.
    pub oom_splits: u64,
    /// Texts that ran out of memory alone and were retried once after the budget shrank.
    pub oom_retries: u64,
    /// Texts whose vector was copied from an identical text of this run (sync::dedup).
    pub deduplicated: u64,
    /// With chunk rows (`--chunk-tokens` without `--chunk-pool`): each text's chunks, one vector
    /// each in `values` (a failed text's chunks are there too, and are not to be written).
    pub chunks: Option<ChunkIndex>,
    /// Chunks embedded (what `tokens` were spent on; 0 when not chunking).
    pub chunks_embedded: u64,
}

impl Embedded {
    /// Number of texts.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// Text `i`'s vector, or why it has none (with chunk rows: its first chunk's).
    pub fn vector(&self, i: usize) -> Result<&[f32], Failure> {
        let row = self.chunks.as_ref().map_or(i, |c| c.offsets[i] as usize);
        match self.failures[i] {
            Some(f) => Err(f),
            None => Ok(&self.values[row * self.dim..(row + 1) * self.dim]),
        }
    }

    /// Text `i`'s vectors (one, or one per chunk with chunk rows, `dim` values each) and, with
    /// chunk rows, their chunks' byte ranges; or why it has none.
    pub fn vectors(&self, i: usize) -> Result<TextVectors<'_>, Failure> {
        if let Some(f) = self.failures[i] {
            return Err(f);
        }
        let dim = self.dim;
        Ok(match &self.chunks {
            None => (&self.values[i * dim..(i + 1) * dim], None),
            Some(c) => {
                let r = c.range(i);
                (&self.values[r.start * dim..r.end * dim], Some(&c.spans[r]))
            }
        })
    }

    pub fn failed(&self) -> usize {
        self.failures.iter().filter(|f| f.is_some()).count()
    }
}

/// Copies a vector into its slot, L2-normalised when asked (as [`crate::pool::l2_normalize`]
/// does: a zero vector stays zero); false (and the slot untouched) when it holds NaN or an
/// infinity. One pass finds both the norm and whether every value is finite (a NaN or an
/// infinity makes the sum of squares non-finite; so can large finite values, hence the exact
/// check then).
fn place_vector(v: &[f32], dest: &mut [f32], normalize: bool) -> bool {
    let squares = sum_of_squares(v);
    if !squares.is_finite() && v.iter().any(|x| !x.is_finite()) {
        return false;
    }
    let norm = squares.sqrt();
    if normalize && norm > 0.0 {
        dest.iter_mut().zip(v).for_each(|(d, x)| *d = x / norm);
    } else {
        dest.copy_from_slice(v);
    }
    true
}

/// A text's vectors (`dim` values each) and, with chunk rows, their chunks' byte ranges.
pub type TextVectors<'a> = (&'a [f32], Option<&'a [(u32, u32)]>);

/// Texts tokenized and packed, ready for the model.
pub struct Prepared {
    /// Per text: why it cannot be embedded, or `None`.
    failures: Vec<Option<Failure>>,
    /// Each batch with, per sequence in it, its slot: the index of its text in the input, or
    /// when chunking, of its chunk in `chunks`.
    batches: Vec<(Batch, Vec<usize>)>,
    truncated: u64,
    cut: Vec<bool>,
    /// When chunking: each text's chunks, and each chunk's tokens (the weights of a mean).
    chunks: Option<(ChunkIndex, Vec<u32>)>,
}

pub struct Embedder {
    tokenizer: TextTokenizer,
    model: LoadedModel,
    options: EmbedderOptions,
    pooling: Pooling,
    /// sentence-transformers Dense modules after the pooling.
    dense: Vec<Dense>,
    /// Prompt tokens at the start of every text left out of the pooling (`include_prompt:
    /// false` with a prompt), else 0.
    prompt_skip: usize,
    /// The width of the vectors returned.
    dim: usize,
    /// Score elements one padded batch may hold (memory): `None` when attention is packed.
    attention_budget: Option<usize>,
    /// The budget learned from out-of-memory errors: once a batch of some size has failed,
    /// later batches are packed (or split before running) at half that size, instead of
    /// failing and splitting every time.
    learned: Mutex<Learned>,
}

/// Upper bounds learned from out-of-memory errors (unbounded until one happens).
#[derive(Clone, Copy, Debug)]
struct Learned {
    tokens: usize,
    elements: usize,
}

impl Embedder {
    pub fn load(
        files: &ModelFiles,
        config: &ModelConfig,
        options: EmbedderOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tokenizer = Self::tokenizer(files, &options)?;
        Self::load_with_tokenizer(files, config, tokenizer, options, dtype, device)
    }

    /// [`Embedder::load`] with the tokenizer already loaded by [`Embedder::tokenizer`] for the
    /// same files and options.
    pub fn load_with_tokenizer(
        files: &ModelFiles,
        config: &ModelConfig,
        tokenizer: TextTokenizer,
        options: EmbedderOptions,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let model = model::load(files, config, options.attention, options.attention_impl, dtype, device)?;
        Self::with_model(files, model, tokenizer, options)
    }

    /// An embedder whose model computes nothing (pseudo-random vectors): the pipeline alone, for
    /// benchmarks (`--debug-noop-model`).
    pub fn without_model(
        files: &ModelFiles,
        config: &ModelConfig,
        tokenizer: TextTokenizer,
        options: EmbedderOptions,
        device: &Device,
    ) -> Result<Self> {
        Self::with_model(files, model::fake(config, options.attention, device), tokenizer, options)
    }

    /// The tokenizer an embedder with these files and options uses, with the chunk settings
    /// checked against it (the prompt and special tokens must leave room for text): loaded
    /// on its own so that a run can check it before it writes anything, and then handed to
    /// [`Embedder::load_with_tokenizer`].
    pub fn tokenizer(files: &ModelFiles, options: &EmbedderOptions) -> Result<TextTokenizer> {
        let lowercase = files.sentence_transformers.as_ref().is_some_and(|st| st.do_lower_case);
        // NOTE: when chunking, nothing is cut: a chunk is at most --chunk-tokens by construction.
        let max_tokens =
            if options.chunking.is_some() { crate::tokenize::UNLIMITED } else { options.max_tokens };
        let special_tokens = !files.is_static();
        let tokenizer = TextTokenizer::from_file_with(
            &files.tokenizer,
            max_tokens,
            options.prompt.clone(),
            lowercase,
            special_tokens,
        )?;
        if let Some(chunking) = &options.chunking {
            Chunker::new(&tokenizer, chunking.settings)?;
        } else if let Some(prompt) = tokenizer.prompt() {
            // NOTE: a prompt that fills the whole length limit leaves every text cut to nothing:
            // each row would get the prompt's vector (or none, with `include_prompt: false`).
            let empty = tokenizer.encode_batch(&[""])?.remove(0);
            if empty.truncated || empty.ids.len() >= max_tokens {
                anyhow::bail!(
                    "the prompt {prompt:?} and the special tokens take all of the {max_tokens} tokens a text is cut to, so no text would be left: raise --max-tokens or shorten the prompt (--prompt)"
                );
            }
        }
        Ok(tokenizer)
    }

    fn with_model(
        files: &ModelFiles,
        model: LoadedModel,
        tokenizer: TextTokenizer,
        options: EmbedderOptions,
    ) -> Result<Self> {
        let pooling = options.pooling.clone();
        let pooled = pooling.width(model.model.hidden_size());
        let dense = model::load_dense(files, pooled, model.device())?;
        let width = dense.last().map_or(pooled, |d| d.out_features);
        let dim = match options.dimensions {
            Some(d) if d == 0 || d > width => {
                anyhow::bail!("--dimensions {d} is outside the model's 1..={width} dimensions")
            }
            Some(d) => d,
            None => width,
        };
        let prompt_skip = match (&options.prompt, pooling.include_prompt) {
            (Some(_), false) => tokenizer.prompt_tokens()?,
            _ => 0,
        };
        let attention_budget = (!model.packed).then_some(MAX_ATTENTION_ELEMENTS);
        let learned = Mutex::new(Learned { tokens: usize::MAX, elements: usize::MAX });
        Ok(Embedder {
            tokenizer,
            model,
            options,
            pooling,
            dense,
            prompt_skip,
            dim,
            attention_budget,
            learned,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Prompt tokens left out of the pooling (`include_prompt: false`), else 0.
    pub fn prompt_skip(&self) -> usize {
        self.prompt_skip
    }

    pub fn options(&self) -> &EmbedderOptions {
        &self.options
    }

    pub fn pooling(&self) -> &Pooling {
        &self.pooling
    }

    /// Changes the token budget of a model batch (chosen after the weights are on the device).
    pub fn set_batch_tokens(&mut self, tokens: usize) {
        self.options.batch_tokens = tokens.max(1);
    }

    /// Sets the batch budget: tokens, and (padded attention only) score elements.
    pub fn set_budget(&mut self, budget: Budget) {
        self.set_batch_tokens(budget.tokens);
        if let (Some(b), Some((_, elements))) = (self.attention_budget.as_mut(), budget.attention) {
            *b = elements.clamp(1, MAX_ATTENTION_ELEMENTS);
        }
    }

    /// What a model batch may hold now: the configured budget, lowered by out-of-memory errors.
    pub fn budget(&self) -> Budget {
        let learned = *self.learned.lock().expect("budget");
        let tokens = self.options.batch_tokens.min(learned.tokens).max(1);
        let attention = self
            .attention_budget
            .map(|b| (self.model.model.attention_heads(), b.min(learned.elements).max(1)));
        Budget { tokens, attention }
    }

    /// After a batch of `padded` tokens and `elements` score elements ran out of memory: later
    /// batches get half of that.
    fn shrink_budget(&self, padded: usize, elements: usize) {
        let mut learned = self.learned.lock().expect("budget");
        learned.tokens = learned.tokens.min((padded / 2).max(1));
        learned.elements = learned.elements.min((elements / 2).max(1));
    }

    /// Embeds `texts` (`None` for a null value).
    pub fn embed(&self, texts: &[Option<&str>]) -> Result<Embedded> {
        self.run(self.prepare(texts)?)
    }

    /// The host half: tokenize, sort by length and pack into batches. Runs on a different
    /// thread than [`Embedder::run`] in the pipeline.
    pub fn prepare(&self, texts: &[Option<&str>]) -> Result<Prepared> {
        if let Some(chunking) = &self.options.chunking {
            return self.prepare_chunks(texts, chunking);
        }
        let present: Vec<&str> = texts.iter().filter_map(|t| *t).collect();
        let mut tokenized = self.tokenizer.encode_batch(&present)?.into_iter();
        let mut failures = vec![None; texts.len()];
        let mut truncated = 0;
        let mut cut = vec![false; texts.len()];
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
            cut[i] = t.truncated;
            seqs.push(t.ids);
            slots.push(i);
        }
        let batches = self.pack(&seqs, &slots);
        Ok(Prepared { failures, batches, truncated, cut, chunks: None })
    }

    /// [`Embedder::prepare`] when chunking: each text split into chunks, and the chunks of all
    /// texts sorted by length and packed together, as texts are.
    fn prepare_chunks(&self, texts: &[Option<&str>], chunking: &Chunking) -> Result<Prepared> {
        let split = chunked::split_texts(&Chunker::new(&self.tokenizer, chunking.settings)?, texts)?;
        let slots: Vec<usize> = (0..split.seqs.len()).collect();
        let batches = self.pack(&split.seqs, &slots);
        let truncated = split.cut.iter().filter(|&&c| c).count() as u64;
        let chunks = Some((split.index, split.weights));
        Ok(Prepared { failures: split.failures, batches, truncated, cut: split.cut, chunks })
    }

    /// Sequences sorted by length and packed under the budget, each batch with its slots.
    fn pack(&self, seqs: &[Vec<u32>], slots: &[usize]) -> Vec<(Batch, Vec<usize>)> {
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        pack_by_length(&lengths, self.budget())
            .into_iter()
            .map(|group| {
                let refs: Vec<&[u32]> = group.iter().map(|&i| seqs[i].as_slice()).collect();
                (Batch::new(&refs), group.iter().map(|&i| slots[i]).collect())
            })
            .collect()
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
        let Prepared { failures, batches, truncated, cut, chunks } = prepared;
        // One slot per text, or per chunk when chunking; a chunk's failure is its text's.
        let slots = chunks.as_ref().map_or(failures.len(), |(index, _)| index.chunks());
        let mut out = Embedded {
            values: vec![0.0; slots * dim],
            dim,
            failures: vec![None; slots],
            truncated,
            cut,
            ..Embedded::default()
        };
        // Chunks pooled into one vector per text are normalised after the mean, not before.
        let mean = self.options.chunking.as_ref().is_some_and(|c| c.pool == ChunkPool::Mean);
        // Texts that ran out of memory alone: retried once at the end, after the budget shrank.
        let mut retry: Vec<(Batch, usize)> = Vec::new();
        // Progress counts texts: with chunks, a text once its last chunk is in.
        let mut finished = chunks.as_ref().map(|(index, _)| chunked::Finished::new(index));
        for (batch, slots) in &batches {
            out.tokens += batch.input_ids.len() as u64;
            out.padded_tokens +=
                if self.model.packed { batch.input_ids.len() } else { batch.padded_tokens() } as u64;
            self.embed_into(batch, slots, &mut out, &mut retry, !mean)?;
            let texts = match finished.as_mut() {
                None => batch.len() as u64,
                Some(f) => f.after(slots),
            };
            if !after_batch(texts, batch.input_ids.len() as u64) {
                return Ok(None);
            }
        }
        for (batch, slot) in retry {
            out.oom_retries += 1;
            match self.embed_batch(&batch) {
                Ok(vector) => self.place(&vector, &[slot], &mut out, !mean),
                Err(e) if is_out_of_memory(&e) => out.failures[slot] = Some(Failure::OutOfMemory),
                Err(e) => return Err(e),
            }
        }
        match chunks {
            // Texts that failed before the model (no text, no tokens) keep that reason; the
            // others keep what embedding found (out of memory, non-finite values).
            None => {
                for (slot, f) in out.failures.iter_mut().zip(failures) {
                    if f.is_some() {
                        *slot = f;
                    }
                }
            }
            Some((index, weights)) => {
                chunked::back_to_texts(&mut out, failures, index, &weights, mean, self.options.normalize)
            }
        }
        Ok(Some(out))
    }

    /// Embeds one batch into `out` at `slots`. A batch over the current budget (lowered by an
    /// earlier out-of-memory error) is split before it runs; one that runs out of memory is
    /// split in two and each half retried; a single text that does not fit goes to `retry`.
    fn embed_into(
        &self,
        batch: &Batch,
        slots: &[usize],
        out: &mut Embedded,
        retry: &mut Vec<(Batch, usize)>,
        normalize: bool,
    ) -> Result<()> {
        let split = |out: &mut Embedded, retry: &mut Vec<(Batch, usize)>| -> Result<()> {
            let (a, b) = batch.split_half();
            let (slots_a, slots_b) = slots.split_at(a.len());
            self.embed_into(&a, slots_a, out, retry, normalize)?;
            self.embed_into(&b, slots_b, out, retry, normalize)
        };
        if batch.len() > 1 && !self.budget().fits(batch.len(), batch.max_length as usize) {
            return split(out, retry);
        }
        match self.embed_batch(batch) {
            Ok(vectors) => {
                self.place(&vectors, slots, out, normalize);
                Ok(())
            }
            Err(e) if is_out_of_memory(&e) => {
                self.shrink_budget(
                    batch.padded_tokens(),
                    batch.attention_elements(self.model.model.attention_heads()),
                );
                if batch.len() == 1 {
                    retry.push((batch.clone(), slots[0]));
                    return Ok(());
                }
                out.oom_splits += 1;
                split(out, retry)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies vectors (row-major, one per slot) into `out`, normalised when `normalize`; a
    /// vector with NaN or infinite values becomes a failure instead.
    fn place(&self, vectors: &[f32], slots: &[usize], out: &mut Embedded, normalize: bool) {
        let dim = out.dim;
        let normalize = normalize && self.options.normalize;
        for (&slot, v) in slots.iter().zip(vectors.chunks_exact(dim)) {
            if !place_vector(v, &mut out.values[slot * dim..(slot + 1) * dim], normalize) {
                out.failures[slot] = Some(Failure::NonFinite);
            }
        }
    }

    /// Runs one batch through the model and the pooling: row-major `[texts, dim]` f32, not
    /// normalised.
    pub fn embed_batch(&self, batch: &Batch) -> Result<Vec<f32>> {
        crate::faults::model_batch(if self.model.packed {
            batch.input_ids.len()
        } else {
            batch.padded_tokens()
        })?;
        if let Some((_, elements)) = self.budget().attention {
            self.model.model.limit_attention(elements);
        }
        let rows = self.pooling.rows(batch, self.prompt_skip);
        let states = self.model.model.forward(batch, rows.as_deref()).context("model forward pass failed")?;
        let mut pooled = self.pooling.pool(&states, batch, self.prompt_skip)?;
        drop(states);
        for dense in &self.dense {
            pooled = dense.forward(&pooled)?;
        }
        if pooled.dim(1)? != self.dim {
            pooled = pooled.narrow(1, 0, self.dim)?;
        }
        Ok(pooled.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Tokenizes texts as the model sees them (prompt, special tokens, truncation).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<crate::tokenize::Tokenized>> {
        self.tokenizer.encode_batch(texts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::l2_normalize;

    fn placed(v: &[f32], normalize: bool) -> Option<Vec<f32>> {
        let mut dest = vec![7.0; v.len()];
        place_vector(v, &mut dest, normalize).then_some(dest)
    }

    #[test]
    fn a_vector_is_placed_normalised_as_l2_normalize_does() {
        let v: Vec<f32> = (0..37).map(|i| (i as f32 * 0.61).cos() * 3.0).collect();
        let mut want = v.clone();
        l2_normalize(&mut want);
        let got = placed(&v, true).unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6), "{got:?} vs {want:?}");
        assert_eq!(placed(&v, false).unwrap(), v);
        assert_eq!(placed(&[0.0; 5], true).unwrap(), vec![0.0; 5]);
    }

    #[test]
    fn nan_and_infinity_are_refused_and_large_finite_values_are_not() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = vec![0.25f32; 20];
            v[19] = bad;
            assert_eq!(placed(&v, true), None);
            assert_eq!(placed(&v, false), None);
        }
        // Squares past f32's range, every value finite: placed, as before the one-pass check.
        let big = vec![3e30f32; 4];
        assert_eq!(placed(&big, false).unwrap(), big);
        let mut want = big.clone();
        l2_normalize(&mut want);
        assert_eq!(placed(&big, true).unwrap(), want);
    }
}
