//! Llama and Mistral (e5-mistral-7b-instruct, SFR-Embedding-Mistral, LLM2Vec's Llama 3): the
//! Qwen2 decoder with no q/k/v biases (config.rs reads `attention_bias`, off by default) and the
//! same weight names; Llama 3.1's rotary scaling is attention.rs's `inv_freq`. Mistral's sliding
//! window is met by capping texts at its length, where a window leaves every earlier token in
//! view.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::layers::{Decoder, DecoderOptions};
use super::ModelConfig;

/// `opts` carries the run's attention choices; the architecture sets `qk_norm`.
pub fn load(cfg: &ModelConfig, vb: VarBuilder, opts: DecoderOptions) -> Result<Decoder> {
    Decoder::load(vb, cfg, DecoderOptions { qk_norm: false, ..opts })
}
