//! Qwen3 (Qwen3-Embedding): Qwen2's decoder plus a per-head RMSNorm on q and k before the
//! rotation (`self_attn.q_norm`, `self_attn.k_norm`), an explicit `head_dim`, and no q/k/v
//! biases unless `attention_bias` says so.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::layers::{Decoder, DecoderOptions};
use super::ModelConfig;

/// `opts` carries the run's attention choices; the architecture sets `qk_norm`.
pub fn load(cfg: &ModelConfig, vb: VarBuilder, opts: DecoderOptions) -> Result<Decoder> {
    Decoder::load(vb, cfg, DecoderOptions { qk_norm: true, ..opts })
}
