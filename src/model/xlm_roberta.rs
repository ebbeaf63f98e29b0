//! XLM-RoBERTa and RoBERTa (multilingual-e5, bge-m3's dense vectors): the BERT encoder with
//! positions counted from `pad_token_id + 1` (fairseq's convention, kept by transformers: the
//! first real token is at position 2 when the padding id is 1), and a single token type.
//!
//! Weight names as BERT's, with the `roberta.` prefix of the masked-LM checkpoints or without it.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::encoder::{Encoder, BERT_NAMES};
use super::ModelConfig;

/// `packed`: per-text attention on packed tokens (CPU f32) instead of the padded rectangle.
pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<Encoder> {
    let pad = cfg.encoder.as_ref().map_or(1, |e| e.pad_token_id);
    Encoder::load(vb, cfg, &BERT_NAMES, packed, Some(pad))
}
