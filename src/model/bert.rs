//! BERT (BGE, E5, all-MiniLM, classic GTE): the shared encoder with absolute positions
//! 0, 1, 2, … per text and token type 0 everywhere.
//!
//! Weight names: `embeddings.*`, `encoder.layer.N.*` (see encoder.rs), with the `bert.` prefix
//! of `BertForMaskedLM`/`BertForPreTraining` checkpoints or without it (`BertModel`, which
//! sentence-transformers saves).

use candle_core::Result;
use candle_nn::VarBuilder;

use super::encoder::{Encoder, BERT_NAMES};
use super::ModelConfig;

/// `packed`: per-text attention on packed tokens (CPU f32) instead of the padded rectangle.
pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<Encoder> {
    Encoder::load(vb, cfg, &BERT_NAMES, packed, None)
}
