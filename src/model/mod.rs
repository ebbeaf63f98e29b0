//! The embedding model: reading a model directory, picking the architecture from `config.json`,
//! and the small trait the rest of the program calls.
//!
//! Callers hand the model plain data (a [`Batch`] of flat token ids with per-text offsets) and get
//! one f32 vector per text back. How the model lays the batch out internally (padded attention
//! today, a packed varlen kernel later) is its own business.

mod config;
mod cpu_ops;
mod layers;
mod qwen2;
mod qwen3;
mod varlen_cpu;
mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::batch::Batch;
pub use config::{Architecture, ModelConfig};

/// Causal or bidirectional self-attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    Causal,
    Bidirectional,
}

impl Attention {
    pub fn as_str(self) -> &'static str {
        match self {
            Attention::Causal => "causal",
            Attention::Bidirectional => "bidirectional",
        }
    }
}

/// How attention is computed; both give the same vectors (within float rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionImpl {
    /// Packed on the CPU in f32, padded elsewhere.
    #[default]
    Auto,
    /// Gather q/k/v into a right-padded rectangle and mask (what runs on CUDA).
    Padded,
    /// Per-text attention over the packed tokens (CPU, f32 only).
    Packed,
    /// No model at all: zero vectors, to measure the pipeline alone (hidden bench flag).
    Noop,
}

/// The stand-in for `AttentionImpl::Noop`.
struct Noop {
    hidden: usize,
    device: Device,
}

impl EmbeddingModel for Noop {
    fn embed(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        Tensor::zeros((batch.len(), self.hidden), DType::F32, &self.device)
    }

    fn hidden_size(&self) -> usize {
        self.hidden
    }
}

/// What every architecture offers to the pipeline.
pub trait EmbeddingModel: Send + Sync {
    /// One row per text of `batch`: the hidden state of the token named in
    /// `batch.pooled_indices`, after the final norm, as f32 of shape `[texts, hidden]`.
    fn embed(&self, batch: &Batch) -> candle_core::Result<Tensor>;
    /// Width of the vectors `embed` returns.
    fn hidden_size(&self) -> usize;
}

/// The files of a model directory, found and checked before anything heavy is read.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
    /// `model.safetensors.index.json` when the weights are sharded.
    pub index: Option<PathBuf>,
}

impl ModelFiles {
    pub fn locate(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            anyhow::bail!("model directory {} does not exist or is not a directory", dir.display());
        }
        let config = dir.join("config.json");
        let tokenizer = dir.join("tokenizer.json");
        for f in [&config, &tokenizer] {
            if !f.is_file() {
                anyhow::bail!("{} is missing from the model directory", f.display());
            }
        }
        let (weights, index) = weights::locate(dir)?;
        Ok(ModelFiles { dir: dir.to_path_buf(), config, tokenizer, weights, index })
    }
}

/// A loaded model with what the pipeline needs to know about it.
pub struct LoadedModel {
    pub model: Box<dyn EmbeddingModel>,
    /// Attention runs on packed tokens: padding costs nothing.
    pub packed: bool,
    pub config: ModelConfig,
    pub attention: Attention,
    pub dtype: DType,
}

/// Loads the weights of `files` for `config` onto `device`.
///
/// `attention` is the mode in force: the user's override, or `config.default_attention()`.
pub fn load(
    files: &ModelFiles,
    config: &ModelConfig,
    attention: Attention,
    kernel: AttentionImpl,
    dtype: DType,
    device: &Device,
) -> Result<LoadedModel> {
    let cpu_f32 = device.is_cpu() && dtype == DType::F32;
    if kernel == AttentionImpl::Noop {
        let model = Box::new(Noop { hidden: config.hidden_size, device: device.clone() });
        return Ok(LoadedModel { model, packed: true, config: config.clone(), attention, dtype });
    }
    let packed = match kernel {
        AttentionImpl::Auto => cpu_f32,
        AttentionImpl::Padded => false,
        AttentionImpl::Packed if cpu_f32 => true,
        AttentionImpl::Packed => anyhow::bail!("packed attention runs only on the CPU in f32"),
        AttentionImpl::Noop => unreachable!("handled above"),
    };
    let vb = weights::var_builder(files, dtype, device)?;
    let opts = layers::DecoderOptions { qk_norm: false, causal: attention == Attention::Causal, packed };
    let context = || format!("loading the weights of {}", files.dir.display());
    let model: Box<dyn EmbeddingModel> = match config.architecture {
        Architecture::Qwen2 => Box::new(qwen2::load(config, vb, opts).with_context(context)?),
        Architecture::Qwen3 => Box::new(qwen3::load(config, vb, opts).with_context(context)?),
    };
    Ok(LoadedModel { model, packed, config: config.clone(), attention, dtype })
}
