//! GTE's "new" model (gte-base-en-v1.5, gte-large-en-v1.5, gte-multilingual-base, Snowflake's
//! arctic-embed v2): word (+ token-type) embeddings with a LayerNorm, then post-norm layers of
//! attention from a fused qkv projection with rotary positions (NTK-scaled, fixed, in the
//! v1.5 models) and a gated MLP `act(gate) * up` from one `up_gate_proj`, all with biases but the
//! up/gate projection. The computation is rotary_bert.rs's.
//!
//! Weight names follow `NewModel` of Alibaba-NLP/new-impl (the code behind `trust_remote_code`
//! for these models): `embeddings.{word,token_type,position}_embeddings`, `embeddings.LayerNorm`,
//! `encoder.layer.N.{attention.qkv_proj (or q_proj/k_proj/v_proj),attention.o_proj,attn_ln,
//! mlp.up_gate_proj,mlp.down_proj,mlp_ln}`, with `NewForMaskedLM`'s `new.` prefix or none.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::gte::GteConfig;
use super::encoder::{LayerNorm, Linear};
use super::rotary_bert::{stack, Layer, Mlp, Parts, RotaryBert};
use super::ModelConfig;

pub fn load(cfg: &ModelConfig, vb: VarBuilder, packed: bool) -> Result<RotaryBert> {
    let enc = cfg.encoder.as_ref().expect("an encoder config");
    let g: &GteConfig = enc.gte.as_ref().expect("a GTE config");
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, enc.layer_norm_eps);
    let layers = (0..cfg.num_hidden_layers)
        .map(|l| {
            let vb = vb.pp(format!("encoder.layer.{l}"));
            let attn = vb.pp("attention");
            let qkv = match g.pack_qkv {
                true => Linear::load(attn.pp("qkv_proj"), h, 3 * h, true)?,
                false => stack(
                    stack(
                        Linear::load(attn.pp("q_proj"), h, h, true)?,
                        Linear::load(attn.pp("k_proj"), h, h, true)?,
                    )?,
                    Linear::load(attn.pp("v_proj"), h, h, true)?,
                )?,
            };
            // NOTE: `up_gate_proj` is `[up | gate]`; the kernels take the gate first.
            let up_gate = vb.pp("mlp.up_gate_proj").get((2 * i, h), "weight")?;
            let up = Linear {
                weight: candle_core::Tensor::cat(&[up_gate.narrow(0, i, i)?, up_gate.narrow(0, 0, i)?], 0)?,
                bias: None,
            };
            Ok(Layer {
                qkv,
                out: Linear::load(attn.pp("o_proj"), h, h, true)?,
                attn_norm: LayerNorm::load(vb.pp("attn_ln"), h, eps, true)?,
                up,
                down: Linear::load(vb.pp("mlp.down_proj"), i, h, true)?,
                mlp_norm: LayerNorm::load(vb.pp("mlp_ln"), h, eps, true)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let emb = vb.pp("embeddings");
    let parts = Parts {
        emb_norm: LayerNorm::load(emb.pp("LayerNorm"), h, eps, true)?,
        emb,
        type_vocab_size: enc.type_vocab_size,
        rotary: g.rotary,
        scaling: cfg.rope_scaling,
        mlp: Mlp::Gated(enc.activation),
        packed,
    };
    RotaryBert::assemble(cfg, layers, parts)
}
