//! Memory: recognising an out-of-memory error (by type, so a batch can be split and retried),
//! and the batch budget a GPU's free memory allows.

use crate::batch::Budget;
use crate::model::{ModelConfig, MAX_ATTENTION_ELEMENTS};

/// Whether an error is an allocation failure that a smaller batch may avoid: CUDA's
/// `CUDA_ERROR_OUT_OF_MEMORY` or cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`, recognised by type (see
/// device.rs), or one injected by `--debug-faults`. An error that merely says "out of memory" in
/// its text is not one.
pub fn is_out_of_memory(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<crate::faults::InjectedOutOfMemory>().is_some()
            || e.downcast_ref::<candle_core::Error>().is_some_and(candle_out_of_memory)
    })
}

fn candle_out_of_memory(e: &candle_core::Error) -> bool {
    use candle_core::Error;
    match e {
        Error::WithBacktrace { inner, .. } | Error::Context { inner, .. } | Error::WithPath { inner, .. } => {
            candle_out_of_memory(inner)
        }
        Error::Cuda(inner) => crate::device::is_cuda_out_of_memory(inner.as_ref()),
        Error::WrappedContext { wrapped, .. } => crate::device::is_cuda_out_of_memory(wrapped.as_ref()),
        _ => false,
    }
}

/// The batch budget on a GPU with `free` bytes after the weights are loaded.
///
/// Half of the free memory is used (the rest is for the allocator, cuBLAS workspaces and
/// fragmentation), split evenly between:
/// - activations: per padded token, one layer at a time holds about 6 hidden-size vectors
///   (residual, norm, q, attention out, projections), k and v, and 3 MLP-width vectors (gate, up,
///   product) in the compute dtype;
/// - attention scores: per element of `texts × heads × longest²`, two score-sized tensors are
///   alive at once (scores and probabilities) in the compute dtype, and never more than
///   [`MAX_ATTENTION_ELEMENTS`] per tensor (the kernels' limit).
///
/// So short texts are bounded by tokens and long ones by attention: 16 texts of 8192 tokens
/// never share a batch on 12 heads. An out-of-memory error halves both for the rest of the run.
pub fn auto_budget(free: usize, config: &ModelConfig, dtype_bytes: usize) -> Budget {
    let kv = config.num_key_value_heads * config.head_dim;
    let activations = (6 * config.hidden_size + 3 * config.intermediate_size + 2 * kv) * dtype_bytes;
    let share = free / 4;
    let tokens = (share / activations.max(1) / 1024 * 1024).clamp(2048, 131_072);
    let elements = (share / (2 * dtype_bytes).max(1)).clamp(1 << 20, MAX_ATTENTION_ELEMENTS);
    Budget { tokens, attention: Some((config.num_attention_heads, elements)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ModelConfig {
        ModelConfig::from_json(json).unwrap()
    }

    fn gte_1_5b() -> ModelConfig {
        config(
            r#"{"model_type":"qwen2","vocab_size":151646,"hidden_size":1536,"intermediate_size":8960,
                "num_hidden_layers":28,"num_attention_heads":12,"num_key_value_heads":2,
                "max_position_embeddings":32768,"rms_norm_eps":1e-6}"#,
        )
    }

    fn gte_7b() -> ModelConfig {
        config(
            r#"{"model_type":"qwen2","vocab_size":151646,"hidden_size":3584,"intermediate_size":18944,
                "num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,
                "max_position_embeddings":32768,"rms_norm_eps":1e-6}"#,
        )
    }

    #[test]
    fn the_automatic_budget_follows_free_memory_model_size_and_the_kernels_limit() {
        const GB: usize = 1 << 30;
        let (small, big) = (gte_1_5b(), gte_7b());
        // An H100 after gte-Qwen2-1.5B's weights (~74 GB free): 1/4 for activations of
        // (6·1536 + 3·8960 + 2·256)·2 B = 73 KB per token → 259 k, capped at 131,072.
        let h100_small = auto_budget(74 * GB, &small, 2);
        assert_eq!(h100_small.tokens, 131_072);
        // ... and 1/4 for scores at 4 B per element = 4.9 G, capped at the kernels' 2³¹ − 1.
        assert_eq!(h100_small.attention, Some((12, MAX_ATTENTION_ELEMENTS)));
        // The 7B model: (6·3584 + 3·18944 + 2·512)·2 B = 155 KB per token; 15 GB / 155 KB = 94 k.
        let h100_big = auto_budget(60 * GB, &big, 2);
        assert_eq!(h100_big.tokens, 15 * GB / 158_720 / 1024 * 1024);
        // On 8 GB free, 2 GB of scores: 536 M elements, fewer than one 8192-token text needs
        // on 28 heads (1.88 G): that text runs alone, its attention in pieces.
        let small_gpu = auto_budget(8 * GB, &big, 2);
        assert_eq!(small_gpu.attention, Some((28, 2 * GB / 4)));
        assert!(!small_gpu.fits(1, 8192) && small_gpu.fits(1, 4096));
        // Review-length batches are bounded by tokens, long ones by attention.
        assert!(h100_small.fits(256, 512));
        assert!(h100_small.fits(2, 8192) && !h100_small.fits(3, 8192), "12 × 8192² = 805 M per text");
        // Never below a useful minimum, always a multiple of 1024.
        assert_eq!(auto_budget(GB / 10, &big, 2).tokens, 2048);
        assert_eq!(auto_budget(10 * GB, &small, 2).tokens % 1024, 0);
    }

    #[test]
    fn out_of_memory_is_recognised_by_type_not_by_text() {
        let injected = anyhow::Error::new(crate::faults::InjectedOutOfMemory { tokens: 10 })
            .context("model forward pass failed");
        assert!(is_out_of_memory(&injected));
        let text_only = anyhow::anyhow!("CUDA_ERROR_OUT_OF_MEMORY: out of memory (just a message)");
        assert!(!is_out_of_memory(&text_only));
        let candle_msg = anyhow::Error::new(candle_core::Error::Msg("out of memory".into()));
        assert!(!is_out_of_memory(&candle_msg));
    }
}
