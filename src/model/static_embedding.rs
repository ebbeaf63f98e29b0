//! Static embeddings: sentence-transformers' `StaticEmbedding` module (static-retrieval-mrl,
//! static-similarity-mrl, model2vec's potion models): one row per token in a table, and a text's
//! vector is the mean of its tokens' rows (a `torch.nn.EmbeddingBag` in "mean" mode). No layers,
//! no attention, no positions; the tokenizer adds no special tokens.
//!
//! The table is `embedding.weight` (`[vocab, dim]`, as sentence-transformers saves it), or
//! model2vec's `embeddings` with an optional token `mapping` (token id → row, for vocabularies
//! quantised into fewer rows) and per-token `weights` (each token's row scaled), folded into one
//! row per token at load as sentence-transformers folds them.
//!
//! As a model here it returns each token's row; the pipeline's mean pooling (pool.rs) makes the
//! bag's mean, so prompts, `--dimensions`, Dense layers and normalisation work as for any model.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::config::{Architecture, ModelConfig, RopeScaling};
use super::{weights, EmbeddingModel, ModelFiles};
use crate::batch::Batch;

const TABLE: &str = "embedding.weight";
const M2V_TABLE: &str = "embeddings";
const M2V_MAPPING: &str = "mapping";
const M2V_WEIGHTS: &str = "weights";

/// The configuration a static model's table implies: its vocabulary and width.
pub fn config(files: &ModelFiles) -> Result<ModelConfig> {
    let shapes = weights::shapes(&files.weights)?;
    let at = || files.weights.first().map_or(files.dir.display().to_string(), |w| w.display().to_string());
    let (vocab, dim) = match (shapes.get(TABLE), shapes.get(M2V_TABLE)) {
        (Some(s), _) if s.len() == 2 => (s[0], s[1]),
        (None, Some(s)) if s.len() == 2 => {
            let vocab = match shapes.get(M2V_MAPPING) {
                Some(m) if m.len() == 1 => m[0],
                Some(m) => bail!("{}: {M2V_MAPPING} has shape {m:?}, not [vocab]", at()),
                None => s[0],
            };
            if let Some(w) = shapes.get(M2V_WEIGHTS) {
                if w.as_slice() != [vocab] {
                    bail!("{}: {M2V_WEIGHTS} has shape {w:?}, not [{vocab}]", at());
                }
            }
            (vocab, s[1])
        }
        (Some(s), _) | (None, Some(s)) => bail!("{}: the embedding table has shape {s:?}, not [vocab, dim]", at()),
        (None, None) => bail!(
            "{}: a StaticEmbedding module needs an \"{TABLE}\" (or model2vec's \"{M2V_TABLE}\") tensor; it has {}",
            at(),
            shapes.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    if vocab == 0 || dim == 0 {
        bail!("{}: the embedding table is empty ({vocab} x {dim})", at());
    }
    Ok(ModelConfig {
        architecture: Architecture::Static,
        vocab_size: vocab,
        hidden_size: dim,
        intermediate_size: 0,
        num_hidden_layers: 0,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: dim,
        // NOTE: no positions, so no length limit of its own (sentence-transformers' is infinite);
        // batch-embed's 8192-token default cap applies unless --max-tokens says otherwise.
        max_position_embeddings: crate::tokenize::UNLIMITED,
        rms_norm_eps: 0.0,
        rope_theta: 0.0,
        rope_scaling: RopeScaling::None,
        attention_bias: false,
        output_bias: false,
        is_causal: None,
        sliding_window: None,
        encoder: None,
        gemma: None,
    })
}

pub struct StaticEmbedding {
    /// `[vocab, dim]`, f32.
    table: Tensor,
    device: Device,
}

/// Loads the table (folding model2vec's mapping and weights) onto `device`, in f32.
pub fn load(files: &ModelFiles, device: &Device) -> Result<StaticEmbedding> {
    let config = config(files)?;
    let vb = weights::open(files, DType::F32, &Device::Cpu)?;
    let table = if vb.contains_tensor(TABLE) {
        vb.get((config.vocab_size, config.hidden_size), TABLE)?
    } else {
        let mut rows = m2v_rows(files, &vb)?;
        if vb.contains_tensor(M2V_MAPPING) {
            let mapping = vb.get_unchecked_dtype(M2V_MAPPING, DType::I64)?;
            let max = mapping.max(0)?.to_scalar::<i64>()?;
            let min = mapping.min(0)?.to_scalar::<i64>()?;
            if min < 0 || max as usize >= rows.dim(0)? {
                bail!(
                    "{M2V_MAPPING} points at rows {min}..={max}, outside the {} rows of {M2V_TABLE}",
                    rows.dim(0)?
                );
            }
            rows = rows.index_select(&mapping, 0)?;
        }
        if vb.contains_tensor(M2V_WEIGHTS) {
            let w = vb.get(config.vocab_size, M2V_WEIGHTS)?;
            rows = rows.broadcast_mul(&w.unsqueeze(1)?)?;
        }
        rows
    };
    let table = table.to_dtype(DType::F32)?.to_device(device)?;
    Ok(StaticEmbedding { table, device: device.clone() })
}

/// model2vec's `embeddings`, also where they are stored as int8 (which candle does not read;
/// their per-token `weights` carry the scale then).
fn m2v_rows(files: &ModelFiles, vb: &candle_nn::VarBuilder) -> Result<Tensor> {
    if let [path] = files.weights.as_slice() {
        if path.extension().is_some_and(|e| e == "safetensors") {
            // SAFETY: mapped read-only, as every weight file is.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }?;
            let view = st.get(M2V_TABLE)?;
            if view.dtype() == safetensors::Dtype::I8 {
                let values: Vec<f32> = view.data().iter().map(|&b| b as i8 as f32).collect();
                return Tensor::from_vec(values, view.shape(), &Device::Cpu)
                    .with_context(|| format!("{}: {M2V_TABLE}", path.display()));
            }
        }
    }
    Ok(vb.get_unchecked(M2V_TABLE)?)
}

impl EmbeddingModel for StaticEmbedding {
    fn forward(&self, batch: &Batch, rows: Option<&[u32]>) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = match rows {
            Some(rows) => rows.iter().map(|&r| batch.input_ids[r as usize]).collect(),
            None => batch.input_ids.clone(),
        };
        let vocab = self.table.dims()[0];
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            candle_core::bail!("token id {id} has no row in the {vocab}-row embedding table (the tokenizer is larger than the table)");
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        self.table.index_select(&ids, 0)
    }

    fn hidden_size(&self) -> usize {
        self.table.dims()[1]
    }

    fn attention_heads(&self) -> usize {
        1
    }
}
