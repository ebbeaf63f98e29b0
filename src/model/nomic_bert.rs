//! NomicBERT (nomic-embed-text-v1 and v1.5): word and token-type embeddings with a LayerNorm
//! (rotary positions in the attention; learned absolute ones when `rotary_emb_fraction` is 0),
//! then post-norm layers with a fused qkv projection and a gated MLP (SwiGLU in nomic-embed:
//! `silu(fc12 x) * fc11 x`) or a plain GELU one; biases only where the config asks (nomic-embed
//! has none). The computation is rotary_bert.rs's.
//!
//! Weight names follow nomic's `NomicBertModel` (the code behind `trust_remote_code` for these
//! models): `embeddings.{word,token_type,position}_embeddings`, `emb_ln`,
//! `encoder.layers.N.{attn.Wqkv,attn.out_proj,norm1,mlp.fc11,mlp.fc12,mlp.fc1,mlp.fc2,norm2}`,
//! with a task model's `bert.` or `model.` prefix or none.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::nomic::NomicConfig;
use super::config::{Activation, RopeScaling};
use super::encoder::{LayerNorm, Linear};
use super::rotary_bert::{stack, Layer, Mlp, Parts, RotaryBert};
use super::ModelConfig;

pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<RotaryBert> {
    let enc = cfg.encoder.as_ref().expect("an encoder config");
    let n: &NomicConfig = enc.nomic.as_ref().expect("a nomic_bert config");
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, enc.layer_norm_eps);
    let layers = (0..cfg.num_hidden_layers)
        .map(|l| {
            let vb = vb.pp(format!("encoder.layers.{l}"));
            let up = match n.gate {
                Some(_) => stack(
                    Linear::load(vb.pp("mlp.fc12"), h, i, n.fc1_bias)?,
                    Linear::load(vb.pp("mlp.fc11"), h, i, n.fc1_bias)?,
                )?,
                None => Linear::load(vb.pp("mlp.fc1"), h, i, n.fc1_bias)?,
            };
            Ok(Layer {
                qkv: Linear::load(vb.pp("attn.Wqkv"), h, 3 * h, n.qkv_bias)?,
                out: Linear::load(vb.pp("attn.out_proj"), h, h, n.qkv_bias)?,
                attn_norm: LayerNorm::load(vb.pp("norm1"), h, eps, true)?,
                up,
                down: Linear::load(vb.pp("mlp.fc2"), i, h, n.fc2_bias)?,
                mlp_norm: LayerNorm::load(vb.pp("norm2"), h, eps, true)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let emb = vb.pp("embeddings");
    let parts = Parts {
        emb_norm: LayerNorm::load(vb.pp("emb_ln"), h, eps, true)?,
        emb,
        type_vocab_size: enc.type_vocab_size,
        rotary: n.rotary,
        scaling: RopeScaling::None,
        // NOTE: NomicBertBlock hands a plain MLP F.gelu (exact) whatever gelu variant is named.
        mlp: n.gate.map_or(Mlp::Plain(Activation::Gelu), Mlp::Gated),
        packed,
    };
    RotaryBert::assemble(cfg, layers, parts)
}
