//! `config.json` as users have it: the transformers 4.x shape (top-level `rope_theta`,
//! `torch_dtype`, numeric `sliding_window`) and the 5.x shape (`rope_parameters`, `dtype`,
//! `layer_types`, `sliding_window: null`), read into one validated [`ModelConfig`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::Attention;

/// The architectures this build can run, keyed by `config.json`'s `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// gte-Qwen2-1.5B/7B-instruct: q/k/v biases, grouped-query attention.
    Qwen2,
    /// Qwen3-Embedding: per-head RMSNorm on q and k, explicit `head_dim`, no q/k/v bias.
    Qwen3,
}

const SUPPORTED: &str = "qwen2, qwen3";

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// The validated model configuration the layers are built from.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Whether q/k/v projections carry a bias.
    pub attention_bias: bool,
    /// `is_causal` from the file; absent means causal (as transformers and TEI read it).
    pub is_causal: Option<bool>,
    /// Texts longer than this would reach a sliding-window layer, which this build does not
    /// implement; `None` when every layer attends to the full text.
    pub sliding_window: Option<usize>,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<RopeParameters>,
    attention_bias: Option<bool>,
    is_causal: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    /// The 4.x spelling of `rope_type`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid model config {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        // Read `model_type` on its own first, so an unsupported model fails on that, not on
        // whichever field it happens to lack.
        let value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let architecture = match model_type {
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "" => bail!("config.json has no \"model_type\"; supported model types: {SUPPORTED}"),
            other => bail!("model_type \"{other}\" is not supported; supported model types: {SUPPORTED}"),
        };
        let raw: RawConfig = serde_json::from_value(value)?;

        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                bail!("hidden_act \"{act}\" is not supported (only silu)");
            }
        }
        for rope in [&raw.rope_parameters, &raw.rope_scaling].into_iter().flatten() {
            let kind = rope.rope_type.as_deref().or(rope.kind.as_deref()).unwrap_or("default");
            if kind != "default" {
                bail!("rope scaling \"{kind}\" is not supported (only the default rotary embedding)");
            }
        }
        // NOTE: transformers 5 nests rope_theta in rope_parameters; 4.x keeps it top-level.
        let rope_theta =
            raw.rope_parameters.as_ref().and_then(|r| r.rope_theta).or(raw.rope_theta).unwrap_or(10_000.0);
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            bail!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            );
        }
        let head_dim = match (raw.head_dim, architecture) {
            (Some(d), _) => d,
            // NOTE: transformers' Qwen3Config defaults head_dim to 128, not hidden/heads.
            (None, Architecture::Qwen3) => 128,
            (None, Architecture::Qwen2) => {
                if !raw.hidden_size.is_multiple_of(heads) {
                    bail!(
                        "hidden_size ({}) is not divisible by num_attention_heads ({heads}) and no head_dim is given",
                        raw.hidden_size
                    );
                }
                raw.hidden_size / heads
            }
        };
        if !head_dim.is_multiple_of(2) {
            bail!("head_dim ({head_dim}) must be even for rotary embeddings");
        }
        let sliding_window = sliding_limit(&raw);
        // NOTE: transformers' Qwen2 always has q/k/v biases; Qwen3 reads attention_bias (default off).
        let attention_bias = match architecture {
            Architecture::Qwen2 => true,
            Architecture::Qwen3 => raw.attention_bias.unwrap_or(false),
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            attention_bias,
            is_causal: raw.is_causal,
            sliding_window,
        })
    }

    /// The attention mode the config asks for.
    pub fn default_attention(&self) -> Attention {
        match self.is_causal {
            Some(false) => Attention::Bidirectional,
            _ => Attention::Causal,
        }
    }

    /// The longest text the model accepts: `max_position_embeddings`, or the sliding window
    /// when some layer uses one.
    pub fn max_tokens_limit(&self) -> usize {
        match self.sliding_window {
            Some(w) => w.min(self.max_position_embeddings),
            None => self.max_position_embeddings,
        }
    }
}

/// The window of the first sliding-window layer, if any layer has one.
fn sliding_limit(raw: &RawConfig) -> Option<usize> {
    let window = raw.sliding_window?;
    if let Some(types) = &raw.layer_types {
        // NOTE: 5.x configs list each layer's kind; only "sliding_attention" layers use the window.
        return types.iter().any(|t| t == "sliding_attention").then_some(window);
    }
    // NOTE: 4.x Qwen2 uses the window only with use_sliding_window, from layer max_window_layers on.
    let used =
        raw.use_sliding_window.unwrap_or(false) && raw.max_window_layers.unwrap_or(0) < raw.num_hidden_layers;
    used.then_some(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = r#"{"model_type":"qwen2","vocab_size":100,"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":512,
        "rms_norm_eps":1e-6,"rope_theta":1000000.0,"sliding_window":512,"use_sliding_window":false,
        "max_window_layers":2,"torch_dtype":"float32"}"#;

    #[test]
    fn reads_the_4x_shape() {
        let c = ModelConfig::from_json(V4).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.head_dim, 16);
        assert!(c.attention_bias);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.default_attention(), Attention::Causal);
    }

    #[test]
    fn reads_the_5x_shape() {
        let c = ModelConfig::from_json(
            r#"{"model_type":"qwen3","vocab_size":100,"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":32,
            "max_position_embeddings":512,"rms_norm_eps":1e-6,"sliding_window":null,"dtype":"bfloat16",
            "rope_parameters":{"rope_theta":5000.0,"rope_type":"default"},"is_causal":false,
            "layer_types":["full_attention","full_attention"]}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!(c.rope_theta, 5000.0);
        assert_eq!(c.head_dim, 32);
        assert!(!c.attention_bias);
        assert_eq!(c.default_attention(), Attention::Bidirectional);
        assert_eq!(c.max_tokens_limit(), 512);
    }

    #[test]
    fn names_an_unsupported_model_type() {
        let err = ModelConfig::from_json(r#"{"model_type":"bert","hidden_size":8}"#).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("\"bert\"") && msg.contains("qwen2, qwen3"), "{msg}");
    }

    #[test]
    fn sliding_window_layers_cap_the_length() {
        let c = ModelConfig::from_json(
            &V4.replace(r#""use_sliding_window":false"#, r#""use_sliding_window":true"#)
                .replace(r#""max_window_layers":2"#, r#""max_window_layers":1"#),
        )
        .unwrap();
        assert_eq!(c.sliding_window, Some(512));
    }

    #[test]
    fn rejects_scaled_rope() {
        let err = ModelConfig::from_json(
            &V4.replace(r#""torch_dtype""#, r#""rope_scaling":{"type":"yarn","factor":4.0},"torch_dtype""#),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("yarn"));
    }
}
