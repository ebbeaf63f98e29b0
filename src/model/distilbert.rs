//! DistilBERT (msmarco-distilbert-base, multi-qa-distilbert-cos, distiluse-base-multilingual):
//! BERT's post-norm layers under other names, absolute positions from 0, no token types.
//!
//! Weight names: `embeddings.*`, `transformer.layer.N.{attention.{q,k,v,out}_lin, sa_layer_norm,
//! ffn.lin1, ffn.lin2, output_layer_norm}`, with the `distilbert.` prefix of the task models or
//! without it (`DistilBertModel`, which sentence-transformers saves).

use candle_core::Result;
use candle_nn::VarBuilder;

use super::encoder::{Encoder, TensorNames};
use super::ModelConfig;

const NAMES: TensorNames = TensorNames {
    layers: "transformer.layer",
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// `packed`: per-text attention on packed tokens (CPU f32) instead of the padded rectangle.
pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<Encoder> {
    Encoder::load(vb, cfg, &NAMES, packed, None)
}
