//! Reading `config.json`: both transformers shapes, each architecture, and what is refused.

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

/// e5-mistral-7b-instruct's config.json, shrunk.
const MISTRAL: &str = r#"{"model_type":"mistral","vocab_size":100,"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":32768,
    "rms_norm_eps":1e-5,"rope_theta":10000.0,"sliding_window":4096,"hidden_act":"silu",
    "torch_dtype":"float16"}"#;

#[test]
fn reads_llama_and_mistral() {
    let m = ModelConfig::from_json(MISTRAL).unwrap();
    assert_eq!(m.architecture, Architecture::Mistral);
    assert!(!m.attention_bias);
    assert_eq!(m.head_dim, 16);
    // Every Mistral layer has the window: texts are capped at it, where it hides nothing.
    assert_eq!(m.sliding_window, Some(4096));
    assert_eq!(m.max_tokens_limit(), 4096);
    assert_eq!(m.default_attention(), Attention::Causal);

    let llama = MISTRAL.replace("\"mistral\"", "\"llama\"");
    let l = ModelConfig::from_json(&llama).unwrap();
    assert_eq!(l.architecture, Architecture::Llama);
    // Llama has no sliding window (a stray key is Qwen2's rule: off without use_sliding_window).
    assert_eq!(l.max_tokens_limit(), 32768);
    let biased = llama.replace("\"hidden_act\"", "\"attention_bias\":true,\"hidden_act\"");
    let b = ModelConfig::from_json(&biased).unwrap();
    assert!(b.attention_bias && b.output_bias);
    // transformers' Mistral has no biases and no mlp_bias, whatever the file says.
    let odd_mistral =
        MISTRAL.replace("\"hidden_act\"", "\"attention_bias\":true,\"mlp_bias\":true,\"hidden_act\"");
    let o = ModelConfig::from_json(&odd_mistral).unwrap();
    assert!(!o.attention_bias && !o.output_bias);

    let mlp_bias = llama.replace("\"hidden_act\"", "\"mlp_bias\":true,\"hidden_act\"");
    let err = format!("{:#}", ModelConfig::from_json(&mlp_bias).unwrap_err());
    assert!(err.contains("mlp_bias"), "{err}");
    // Llama 3.1's rope scaling in the 4.x shape; without its bands it is refused by name.
    let llama3 = llama.replace(
        "\"hidden_act\"",
        "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\
         \"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192},\"hidden_act\"",
    );
    assert_eq!(
        ModelConfig::from_json(&llama3).unwrap().rope_scaling,
        RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original: 8192.0 }
    );
    let partial = llama.replace(
        "\"hidden_act\"",
        "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0},\"hidden_act\"",
    );
    let err = format!("{:#}", ModelConfig::from_json(&partial).unwrap_err());
    assert!(err.contains("\"llama3\" needs a positive \"low_freq_factor\""), "{err}");
    let linear = llama
        .replace("\"hidden_act\"", "\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0},\"hidden_act\"");
    assert_eq!(ModelConfig::from_json(&linear).unwrap().rope_scaling, RopeScaling::Linear { factor: 2.0 });
    assert_eq!(ModelConfig::from_json(&llama).unwrap().rope_scaling, RopeScaling::None);
}

#[test]
fn names_an_unsupported_model_type() {
    let err = ModelConfig::from_json(r#"{"model_type":"t5","hidden_size":8}"#).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("\"t5\"")
            && msg
                .contains("qwen2, qwen3, llama, mistral, gemma3_text, bert, distilbert, mpnet, xlm-roberta"),
        "{msg}"
    );
}

const BERT: &str = r#"{"model_type":"bert","vocab_size":100,"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":4,"max_position_embeddings":512,"hidden_act":"gelu",
    "layer_norm_eps":1e-12,"type_vocab_size":2,"pad_token_id":0,"position_embedding_type":"absolute"}"#;

#[test]
fn reads_encoders() {
    let c = ModelConfig::from_json(BERT).unwrap();
    assert_eq!(c.architecture, Architecture::Bert);
    assert_eq!((c.head_dim, c.max_tokens_limit()), (16, 512));
    assert_eq!(c.default_attention(), Attention::Bidirectional);
    assert_eq!(c.encoder.as_ref().unwrap().activation, Activation::Gelu);
    let x = ModelConfig::from_json(
        &BERT
            .replace("\"bert\"", "\"xlm-roberta\"")
            .replace("\"pad_token_id\":0", "\"pad_token_id\":1")
            .replace("512", "514"),
    )
    .unwrap();
    assert_eq!((x.architecture, x.max_tokens_limit()), (Architecture::XlmRoberta, 512));
    let camembert = ModelConfig::from_json(&BERT.replace("\"bert\"", "\"camembert\"")).unwrap();
    assert_eq!(camembert.architecture, Architecture::XlmRoberta);
    let relative = BERT.replace("\"absolute\"", "\"relative_key\"");
    assert!(format!("{:#}", ModelConfig::from_json(&relative).unwrap_err()).contains("relative_key"));
    let act = BERT.replace("\"gelu\"", "\"quick_gelu\"");
    assert!(format!("{:#}", ModelConfig::from_json(&act).unwrap_err()).contains("quick_gelu"));
}

#[test]
fn reads_modernbert_in_both_shapes() {
    let v4 = r#"{"model_type":"modernbert","vocab_size":100,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":4,"num_attention_heads":4,"max_position_embeddings":8192,"global_rope_theta":160000.0,
        "local_rope_theta":10000.0,"local_attention":128,"global_attn_every_n_layers":3,"norm_eps":1e-5}"#;
    let c = ModelConfig::from_json(v4).unwrap();
    let m = c.encoder.as_ref().unwrap().modernbert.clone().unwrap();
    assert_eq!(m.global_layers, [true, false, false, true]);
    assert_eq!((m.global_rope_theta, m.local_rope_theta, m.window), (160000.0, 10000.0, 64));
    assert_eq!(c.max_tokens_limit(), 8192);
    let v5 = r#"{"model_type":"modernbert","vocab_size":100,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":2,"num_attention_heads":4,"max_position_embeddings":8192,"local_attention":16,
        "layer_types":["full_attention","sliding_attention"],
        "rope_parameters":{"full_attention":{"rope_theta":1000.0,"rope_type":"default"},
                           "sliding_attention":{"rope_theta":500.0,"rope_type":"default"}}}"#;
    let m = ModelConfig::from_json(v5).unwrap().encoder.unwrap().modernbert.unwrap();
    assert_eq!(m.global_layers, [true, false]);
    assert_eq!((m.global_rope_theta, m.local_rope_theta, m.window), (1000.0, 500.0, 8));
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
fn rejects_the_rope_scalings_not_implemented() {
    let err = ModelConfig::from_json(
        &V4.replace(r#""torch_dtype""#, r#""rope_scaling":{"type":"yarn","factor":4.0},"torch_dtype""#),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("yarn"));
}

#[test]
fn reads_distilbert_in_its_own_key_names() {
    let c = ModelConfig::from_json(
        r#"{"model_type":"distilbert","vocab_size":100,"dim":48,"n_layers":3,"n_heads":4,"hidden_dim":96,
        "max_position_embeddings":512,"activation":"relu","sinusoidal_pos_embds":false,"pad_token_id":0}"#,
    )
    .unwrap();
    assert_eq!(c.architecture, Architecture::DistilBert);
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size),
        (48, 3, 4, 96)
    );
    assert_eq!((c.head_dim, c.max_tokens_limit()), (12, 512));
    assert_eq!(c.default_attention(), Attention::Bidirectional);
    let enc = c.encoder.as_ref().unwrap();
    assert_eq!((enc.activation, enc.type_vocab_size, enc.layer_norm_eps), (Activation::Relu, 0, 1e-12));
}

#[test]
fn reads_gemma3_in_both_shapes() {
    // EmbeddingGemma's 4.x shape: top-level bases, the layer pattern from _sliding_window_pattern.
    let v4 = r#"{"model_type":"gemma3_text","vocab_size":100,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":6,"num_attention_heads":4,"num_key_value_heads":1,"head_dim":32,
        "max_position_embeddings":2048,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
        "rope_scaling":null,"sliding_window":512,"_sliding_window_pattern":3,"query_pre_attn_scalar":32,
        "use_bidirectional_attention":true,"hidden_activation":"gelu_pytorch_tanh","attn_logit_softcapping":null}"#;
    let c = ModelConfig::from_json(v4).unwrap();
    assert_eq!(c.architecture, Architecture::Gemma3);
    let g = c.gemma.as_ref().unwrap();
    assert_eq!(g.global_layers, [false, false, true, false, false, true]);
    assert_eq!((c.rope_theta, g.local_rope_theta, g.half_window), (1e6, 1e4, 256));
    assert_eq!((c.default_attention(), c.max_tokens_limit()), (Attention::Bidirectional, 2048));
    assert_eq!(g.activation, Activation::GeluTanh);

    // 5.x: rope_parameters per layer kind, layer_types; causal Gemma caps texts at the window.
    let v5 = r#"{"model_type":"gemma3_text","vocab_size":100,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":2,"num_attention_heads":4,"max_position_embeddings":8192,"sliding_window":1024,
        "layer_types":["sliding_attention","full_attention"],
        "rope_parameters":{"full_attention":{"rope_type":"linear","factor":8.0,"rope_theta":1000000.0},
        "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}}"#;
    let c = ModelConfig::from_json(v5).unwrap();
    assert_eq!(c.head_dim, 256);
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!((c.default_attention(), c.max_tokens_limit()), (Attention::Causal, 1024));

    let capped = v4.replace(r#""attn_logit_softcapping":null"#, r#""attn_logit_softcapping":50.0"#);
    let err = format!("{:#}", ModelConfig::from_json(&capped).unwrap_err());
    assert!(err.contains("attn_logit_softcapping"), "{err}");
}

#[test]
fn reads_mpnet() {
    // all-mpnet-base-v2's config.json: 514 positions, of which pad + 1 = 2 are never used.
    let c = ModelConfig::from_json(
        r#"{"model_type":"mpnet","vocab_size":30527,"hidden_size":768,"num_hidden_layers":12,
        "num_attention_heads":12,"intermediate_size":3072,"hidden_act":"gelu","layer_norm_eps":1e-05,
        "max_position_embeddings":514,"relative_attention_num_buckets":32,"pad_token_id":1}"#,
    )
    .unwrap();
    assert_eq!((c.architecture, c.max_tokens_limit()), (Architecture::MpNet, 512));
    let enc = c.encoder.as_ref().unwrap();
    assert_eq!((enc.pad_token_id, enc.type_vocab_size, enc.relative_buckets), (1, 0, 32));
    assert_eq!(enc.layer_norm_eps, 1e-5);
    assert_eq!(c.default_attention(), Attention::Bidirectional);
}

#[test]
fn reads_nomic_bert() {
    // nomic-embed-text-v1.5's config.json (its keys that matter): GPT-2's names, a padded
    // vocabulary, SwiGLU without biases, rotary on the whole head.
    let v15 = r#"{"model_type":"nomic_bert","activation_function":"swiglu","n_embd":768,"n_head":12,
        "n_inner":3072,"n_layer":12,"n_positions":8192,"vocab_size":30528,"pad_vocab_size_multiple":64,
        "layer_norm_epsilon":1e-12,"rotary_emb_base":1000,"rotary_emb_fraction":1.0,
        "rotary_emb_interleaved":false,"rotary_emb_scale_base":null,"rotary_scaling_factor":null,
        "max_trained_positions":2048,"qkv_proj_bias":false,"mlp_fc1_bias":false,"mlp_fc2_bias":false,
        "prenorm":false,"causal":false,"type_vocab_size":2,"attn_pdrop":0.0}"#;
    let c = ModelConfig::from_json(v15).unwrap();
    assert_eq!((c.architecture, c.max_tokens_limit()), (Architecture::NomicBert, 8192));
    assert_eq!((c.hidden_size, c.intermediate_size, c.head_dim, c.vocab_size), (768, 3072, 64, 30528));
    assert_eq!((c.rope_theta, c.default_attention()), (1000.0, Attention::Bidirectional));
    let n = c.encoder.as_ref().unwrap().nomic.as_ref().unwrap();
    assert!(n.rotary && n.gate == Some(Activation::Silu) && !n.qkv_bias && !n.fc1_bias && !n.fc2_bias);
    // The gated width rounds up to 256, the vocabulary to its multiple; dynamic NTK keeps texts
    // within the trained length.
    let small = v15
        .replace(r#""n_inner":3072"#, r#""n_inner":100"#)
        .replace(r#""vocab_size":30528"#, r#""vocab_size":30522"#);
    let c = ModelConfig::from_json(&small).unwrap();
    assert_eq!((c.intermediate_size, c.vocab_size), (256, 30528));
    let ntk = v15.replace(r#""rotary_scaling_factor":null"#, r#""rotary_scaling_factor":2"#);
    assert_eq!(ModelConfig::from_json(&ntk).unwrap().max_tokens_limit(), 2048);
    // NomicBertConfig's own defaults: learned positions, GELU, biases.
    let plain =
        ModelConfig::from_json(r#"{"model_type":"nomic_bert","n_embd":32,"n_head":4,"n_layer":2}"#).unwrap();
    let n = plain.encoder.as_ref().unwrap().nomic.as_ref().unwrap();
    assert!(!n.rotary && n.gate.is_none() && n.qkv_bias && n.fc1_bias);
    assert_eq!((plain.intermediate_size, plain.max_tokens_limit(), plain.vocab_size), (128, 1024, 50257));
    for (from, to, expect) in [
        (r#""prenorm":false"#, r#""prenorm":true"#, "\"prenorm\": true is not supported"),
        (r#""rotary_emb_fraction":1.0"#, r#""rotary_emb_fraction":0.5"#, "rotary_emb_fraction 0.5"),
        (r#""rotary_emb_interleaved":false"#, r#""rotary_emb_interleaved":true"#, "rotary_emb_interleaved"),
        (
            r#""activation_function":"swiglu""#,
            r#""activation_function":"relu""#,
            "activation_function \"relu\"",
        ),
    ] {
        let err = format!("{:#}", ModelConfig::from_json(&v15.replace(from, to)).unwrap_err());
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn reads_gte_new() {
    // gte-base-en-v1.5's config.json (its keys that matter).
    let v15 = r#"{"model_type":"new","vocab_size":30528,"hidden_size":768,"num_hidden_layers":12,
        "num_attention_heads":12,"intermediate_size":3072,"hidden_act":"gelu","max_position_embeddings":8192,
        "type_vocab_size":0,"layer_norm_type":"layer_norm","layer_norm_eps":1e-12,"position_embedding_type":"rope",
        "rope_theta":500000,"rope_scaling":{"factor":2.0,"type":"ntk"},"pack_qkv":true,"unpad_inputs":false,
        "use_memory_efficient_attention":false,"logn_attention_scale":false}"#;
    let c = ModelConfig::from_json(v15).unwrap();
    assert_eq!((c.architecture, c.max_tokens_limit(), c.head_dim), (Architecture::GteNew, 8192, 64));
    assert_eq!(c.rope_scaling, RopeScaling::Ntk { factor: 2.0, mixed_b: None });
    let g = c.encoder.as_ref().unwrap().gte.as_ref().unwrap();
    assert!(g.rotary && g.pack_qkv);
    assert_eq!(c.encoder.as_ref().unwrap().type_vocab_size, 0);
    // Snowflake's arctic-embed v2 names the same code "gte".
    assert_eq!(
        ModelConfig::from_json(&v15.replace(r#""new""#, r#""gte""#)).unwrap().architecture,
        Architecture::GteNew
    );
    for (from, to, expect) in [
        (r#""logn_attention_scale":false"#, r#""logn_attention_scale":true"#, "logn_attention_scale"),
        (
            r#""layer_norm_type":"layer_norm""#,
            r#""layer_norm_type":"rms_norm""#,
            "layer_norm_type \"rms_norm\"",
        ),
        (r#""type":"ntk""#, r#""type":"dynamic""#, "rope_scaling type \"dynamic\""),
    ] {
        let err = format!("{:#}", ModelConfig::from_json(&v15.replace(from, to)).unwrap_err());
        assert!(err.contains(expect), "{err}");
    }
}
