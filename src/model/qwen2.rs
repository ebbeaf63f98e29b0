//! Qwen2 (gte-Qwen2-1.5B/7B-instruct): biases on q/k/v, grouped-query attention.
//!
//! Weight names follow the checkpoint: `embed_tokens`, `layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}`, `norm`.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::layers::{Decoder, DecoderOptions};
use super::ModelConfig;

/// `opts` carries the run's attention choices; the architecture sets `qk_norm`.
pub fn load(cfg: &ModelConfig, vb: VarBuilder, opts: DecoderOptions) -> Result<Decoder> {
    Decoder::load(vb, cfg, DecoderOptions { qk_norm: false, ..opts })
}
