//! Our vectors against transformers' (tests/fixtures/*/reference.json, made by
//! scripts/make_fixtures.py), batched against alone, and the attention mode from config or flag.

use batch_embed::embed::{Embedder, EmbedderOptions, Failure};
use batch_embed::model::{Attention, AttentionImpl, ModelConfig, ModelFiles};
use batch_embed::pool::Pooling;
use candle_core::{DType, Device};
use serde::Deserialize;

use crate::util::{fixture, max_abs_diff};

/// Largest difference allowed between our f32 vectors and transformers' f32 vectors.
const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    attention: Attention,
    max_tokens: Option<usize>,
    prompt: Option<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Option<Vec<f32>>>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn embedder(
    name: &str,
    attention: Attention,
    max_tokens: Option<usize>,
    prompt: Option<String>,
    batch_tokens: usize,
) -> Embedder {
    embedder_with(name, attention, max_tokens, prompt, batch_tokens, AttentionImpl::Auto)
}

fn embedder_with(
    name: &str,
    attention: Attention,
    max_tokens: Option<usize>,
    prompt: Option<String>,
    batch_tokens: usize,
    attention_impl: AttentionImpl,
) -> Embedder {
    let files = ModelFiles::locate(&fixture(name)).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    let options = EmbedderOptions {
        attention,
        max_tokens: max_tokens.unwrap_or(config.max_position_embeddings),
        prompt,
        normalize: false,
        pooling: Pooling::last_token(),
        dimensions: None,
        batch_tokens,
        attention_impl,
        chunking: None,
    };
    Embedder::load(&files, &config, options, DType::F32, &Device::Cpu).unwrap()
}

/// Every case of a fixture: same token ids as transformers' tokenizer, vectors within TOLERANCE,
/// and the same vectors whether texts run all in one padded batch or each alone — for both
/// attention implementations (packed is the CPU default; padded is what CUDA runs).
fn check_fixture(name: &str) {
    check_fixture_with(name, AttentionImpl::Packed);
    check_fixture_with(name, AttentionImpl::Padded);
}

fn check_fixture_with(name: &str, attention_impl: AttentionImpl) {
    let reference = reference(name);
    let texts: Vec<Option<&str>> = reference.texts.iter().map(|t| Some(t.as_str())).collect();
    for case in &reference.cases {
        let label = format!(
            "{name} {attention_impl:?} {:?} max_tokens={:?} prompt={}",
            case.attention,
            case.max_tokens,
            case.prompt.is_some()
        );
        let (p, m) = (case.prompt.clone(), case.max_tokens);
        let batched = embedder_with(name, case.attention, m, p.clone(), 1 << 20, attention_impl);
        let alone = embedder_with(name, case.attention, m, p, 1, attention_impl);

        let strs: Vec<&str> = reference.texts.iter().map(String::as_str).collect();
        let ids: Vec<Vec<u32>> = batched.tokenize(&strs).unwrap().into_iter().map(|t| t.ids).collect();
        assert_eq!(ids, case.token_ids, "{label}: token ids differ from transformers'");

        let got = batched.embed(&texts).unwrap();
        let got_alone = alone.embed(&texts).unwrap();
        let mut worst = 0f32;
        for (i, want) in case.embeddings.iter().enumerate() {
            match want {
                Some(want) => {
                    let v = got.vector(i).unwrap_or_else(|e| panic!("{label}: text {i} failed: {e:?}"));
                    let d = max_abs_diff(v, want);
                    worst = worst.max(d);
                    assert!(d < TOLERANCE, "{label}: text {i} differs from transformers by {d}");
                    let a = got_alone.vector(i).unwrap();
                    let d = max_abs_diff(v, a);
                    assert!(d < 1e-5, "{label}: text {i} batched differs from alone by {d}");
                }
                None => assert_eq!(got.vector(i).err(), Some(Failure::NoTokens), "{label}: text {i}"),
            }
        }
        // Truncation is counted: texts whose full tokenization is longer than the limit.
        if let Some(limit) = case.max_tokens {
            let full = &reference.cases[0].token_ids;
            let expected = full.iter().filter(|ids| ids.len() > limit).count() as u64;
            assert!(expected > 0, "{label}: the fixture should cut some texts");
            assert_eq!(got.truncated, expected, "{label}: truncated count");
        } else {
            assert_eq!(got.truncated, 0, "{label}");
        }
        eprintln!("{label}: max abs diff {worst:.2e}");
    }
}

#[test]
fn qwen2_gqa_sharded_prefixed_4x_config_matches_transformers() {
    check_fixture("qwen2-gqa");
}

#[test]
fn qwen2_mha_bidirectional_5x_config_matches_transformers() {
    check_fixture("qwen2-mha-bidir");
}

#[test]
fn qwen3_matches_transformers() {
    check_fixture("qwen3");
}

#[test]
fn mistral_with_a_sentencepiece_tokenizer_matches_transformers() {
    check_fixture("mistral");
}

#[test]
fn llama_with_biases_and_a_normalizer_tokenizer_matches_transformers() {
    check_fixture("llama");
}

#[test]
fn attention_default_comes_from_config() {
    let gqa = ModelConfig::from_file(&fixture("qwen2-gqa").join("config.json")).unwrap();
    assert_eq!(gqa.default_attention(), Attention::Causal, "is_causal absent means causal");
    let bidir = ModelConfig::from_file(&fixture("qwen2-mha-bidir").join("config.json")).unwrap();
    assert_eq!(bidir.default_attention(), Attention::Bidirectional, "is_causal: false");
}

#[test]
fn eos_appending_tokenizer_pools_the_appended_token() {
    // gte-Qwen2 style: the post-processor appends <|endoftext|>; the plain one does not.
    let with_eos = embedder("qwen2-gqa", Attention::Causal, None, None, 1 << 20);
    let plain = embedder("qwen2-mha-bidir", Attention::Causal, None, None, 1 << 20);
    let a = with_eos.tokenize(&["hello world"]).unwrap().remove(0).ids;
    let b = plain.tokenize(&["hello world"]).unwrap().remove(0).ids;
    assert_eq!(a.len(), b.len() + 1);
    assert_eq!(&a[..b.len()], &b[..]);
    assert_eq!(*a.last().unwrap(), 0, "<|endoftext|> is id 0 in the fixture tokenizers");
}

#[test]
fn normalized_vectors_are_the_reference_scaled_to_unit_length() {
    let reference = reference("qwen3");
    let files = ModelFiles::locate(&fixture("qwen3")).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    let options = EmbedderOptions {
        attention: Attention::Causal,
        max_tokens: 512,
        prompt: None,
        normalize: true,
        pooling: Pooling::last_token(),
        dimensions: None,
        batch_tokens: 4096,
        attention_impl: AttentionImpl::Auto,
        chunking: None,
    };
    let e = Embedder::load(&files, &config, options, DType::F32, &Device::Cpu).unwrap();
    let got = e.embed(&[Some(reference.texts[0].as_str())]).unwrap();
    let v = got.vector(0).unwrap();
    let want = reference.cases[0].embeddings[0].as_ref().unwrap();
    let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = want.iter().map(|x| x / norm).collect();
    assert!(max_abs_diff(v, &want) < TOLERANCE);
    let len = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((len - 1.0).abs() < 1e-5);
}

#[test]
fn null_texts_fail_without_stopping_the_rest() {
    let e = embedder("qwen2-mha-bidir", Attention::Bidirectional, None, None, 4096);
    let got = e.embed(&[Some("fine"), None, Some(""), Some("also fine")]).unwrap();
    assert!(got.vector(0).is_ok());
    assert_eq!(got.vector(1).err(), Some(Failure::NullText));
    assert_eq!(got.vector(2).err(), Some(Failure::NoTokens));
    assert!(got.vector(3).is_ok());
}

fn embedder_in(name: &str, dtype: DType, attention_impl: AttentionImpl, max_tokens: usize) -> Embedder {
    let files = ModelFiles::locate(&fixture(name)).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    let options = EmbedderOptions {
        attention: config.default_attention(),
        max_tokens,
        prompt: None,
        normalize: true,
        pooling: Pooling::last_token(),
        dimensions: None,
        batch_tokens: 1 << 20,
        attention_impl,
        chunking: None,
    };
    Embedder::load(&files, &config, options, dtype, &Device::Cpu).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Texts of a few thousand tokens for the tiny fixtures' tokenizer, made of the fixture texts.
fn long_texts(name: &str, count: usize, repeat: usize) -> Vec<String> {
    let texts = reference(name).texts;
    (0..count)
        .map(|i| (0..repeat).map(|j| texts[(i + j) % texts.len()].as_str()).collect::<Vec<_>>().join(" "))
        .collect()
}

/// The padded path in bf16 and f16 (what CUDA runs) against f32, on the fixtures' texts and on
/// long ones. transformers' own bf16 reaches ~0.9988 against its f32 on these models.
#[test]
fn the_padded_path_in_bf16_and_f16_stays_close_to_f32() {
    for name in ["qwen2-gqa", "qwen2-mha-bidir", "qwen3", "mistral", "llama"] {
        let mut texts = reference(name).texts;
        texts.extend(long_texts(name, 3, 40));
        let texts: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
        let want = embedder_in(name, DType::F32, AttentionImpl::Packed, 512).embed(&texts).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let got = embedder_in(name, dtype, AttentionImpl::Auto, 512).embed(&texts).unwrap();
            let mut worst = 1f32;
            for i in 0..texts.len() {
                match (want.vector(i), got.vector(i)) {
                    (Ok(a), Ok(b)) => worst = worst.min(cosine(a, b)),
                    (a, b) => assert_eq!(a.err(), b.err(), "{name} {dtype:?} text {i}"),
                }
            }
            eprintln!("{name} {dtype:?}: min cosine to f32 {worst:.5}");
            assert!(worst >= 0.998, "{name} {dtype:?}: min cosine {worst}");
        }
    }
}

/// Attention computed in pieces (groups of texts, groups of query rows) under a small element
/// limit equals attention in one piece; the budget packs no batch past the limit.
#[test]
fn padded_attention_in_pieces_equals_one_piece() {
    use batch_embed::batch::Budget;
    let name = "qwen2-gqa";
    let mut texts = reference(name).texts;
    texts.extend(long_texts(name, 2, 6));
    let texts: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let whole = embedder_in(name, DType::F32, AttentionImpl::Padded, 512).embed(&texts).unwrap();
    let mut pieces = embedder_in(name, DType::F32, AttentionImpl::Padded, 512);
    // 4 heads: a text of 100 tokens has 40,000 score elements; 3,000 forces query-row pieces.
    pieces.set_budget(Budget { tokens: 1 << 20, attention: Some((4, 3000)) });
    assert_eq!(pieces.budget().attention, Some((4, 3000)));
    let split = pieces.embed(&texts).unwrap();
    for i in 0..texts.len() {
        let d = max_abs_diff(whole.vector(i).unwrap(), split.vector(i).unwrap());
        assert!(d < 1e-5, "text {i}: pieces differ by {d}");
    }
}

/// An 8192-token text on the padded path (its 4 × 8192² scores computed in pieces of at most 2²⁴
/// elements) gives the vector of the packed CPU path.
#[test]
fn an_8192_token_text_on_the_padded_path_matches_the_packed_path() {
    use batch_embed::batch::Budget;
    let dir = tempfile::tempdir().unwrap();
    crate::util::copy_dir(&fixture("qwen2-gqa"), dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("\"max_position_embeddings\": 512", "\"max_position_embeddings\": 8192");
    assert!(config.contains("8192"));
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let files = ModelFiles::locate(dir.path()).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    let load = |kernel| {
        let options = EmbedderOptions {
            attention: Attention::Causal,
            max_tokens: 8192,
            prompt: None,
            normalize: true,
            pooling: Pooling::last_token(),
            dimensions: None,
            batch_tokens: 1 << 20,
            attention_impl: kernel,
            chunking: None,
        };
        Embedder::load(&files, &config, options, DType::F32, &Device::Cpu).unwrap()
    };
    let text = long_texts("qwen2-gqa", 1, 400).remove(0);
    let packed = load(AttentionImpl::Packed);
    let tokens = packed.tokenize(&[text.as_str()]).unwrap().remove(0);
    assert_eq!(tokens.ids.len(), 8192, "the text fills the window");
    let mut padded = load(AttentionImpl::Padded);
    padded.set_budget(Budget { tokens: 1 << 20, attention: Some((4, 1 << 24)) });
    let a = packed.embed(&[Some(text.as_str())]).unwrap();
    let b = padded.embed(&[Some(text.as_str())]).unwrap();
    let d = max_abs_diff(a.vector(0).unwrap(), b.vector(0).unwrap());
    assert!(d < 1e-4, "differs by {d}");
}
