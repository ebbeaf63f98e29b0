//! sentence-transformers folders (BERT, XLM-RoBERTa, ModernBERT, Qwen2 with last-token pooling)
//! against sentence-transformers' own vectors (tests/fixtures/st-*/reference.json, made by
//! scripts/make_fixtures.py): each case's flags go through the same precedence the CLI uses, and
//! every vector must match within 1e-4, batched equal alone, on both attention paths.

use batch_embed::embed::{Embedder, EmbedderOptions};
use batch_embed::model::{AttentionImpl, ModelConfig, ModelFiles};
use batch_embed::pool::PoolingMode;
use batch_embed::vector_options::{Requested, VectorOptions};
use candle_core::{DType, Device};
use predicates::str::contains;
use serde::Deserialize;

use crate::util::*;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    flags: Flags,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

#[derive(Clone, Deserialize)]
struct Flags {
    pooling: Option<String>,
    prompt: Option<String>,
    prompt_name: Option<String>,
    max_tokens: Option<usize>,
    dimensions: Option<usize>,
    normalize: Option<bool>,
}

fn reference(name: &str) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap()
}

fn pooling_mode(flag: &str) -> PoolingMode {
    match flag {
        "cls" => PoolingMode::Cls,
        "mean" => PoolingMode::Mean,
        "max" => PoolingMode::Max,
        "last" => PoolingMode::LastToken,
        "weighted-mean" => PoolingMode::WeightedMean,
        other => panic!("unknown pooling flag {other}"),
    }
}

/// The settings a case's flags resolve to, through the CLI's own precedence.
fn options(name: &str, flags: &Flags) -> (ModelFiles, ModelConfig, VectorOptions) {
    let files = ModelFiles::locate(&fixture(name)).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    let requested = Requested {
        pooling: flags.pooling.as_deref().map(pooling_mode),
        normalize: flags.normalize,
        max_tokens: flags.max_tokens,
        prompt: flags.prompt.clone(),
        prompt_name: flags.prompt_name.clone(),
        dimensions: flags.dimensions,
    };
    let vectors = VectorOptions::resolve(&requested, &files, &config).unwrap();
    (files, config, vectors)
}

fn embedder(name: &str, flags: &Flags, batch_tokens: usize, kernel: AttentionImpl, dtype: DType) -> Embedder {
    let (files, config, v) = options(name, flags);
    let opts = EmbedderOptions {
        attention: config.default_attention(),
        max_tokens: v.max_tokens,
        prompt: v.prompt,
        normalize: v.normalize,
        pooling: v.pooling,
        dimensions: v.dimensions,
        batch_tokens,
        attention_impl: kernel,
        chunking: None,
    };
    Embedder::load(&files, &config, opts, dtype, &Device::Cpu).unwrap()
}

fn check_fixture(name: &str) {
    let reference = reference(name);
    let texts: Vec<Option<&str>> = reference.texts.iter().map(|t| Some(t.as_str())).collect();
    let strs: Vec<&str> = reference.texts.iter().map(String::as_str).collect();
    for kernel in [AttentionImpl::Packed, AttentionImpl::Padded] {
        for case in &reference.cases {
            let label = format!("{name} {kernel:?} \"{}\"", case.name);
            let batched = embedder(name, &case.flags, 1 << 20, kernel, DType::F32);
            let alone = embedder(name, &case.flags, 1, kernel, DType::F32);
            let ids: Vec<Vec<u32>> = batched.tokenize(&strs).unwrap().into_iter().map(|t| t.ids).collect();
            assert_eq!(ids, case.token_ids, "{label}: token ids differ from sentence-transformers'");
            let got = batched.embed(&texts).unwrap();
            let got_alone = alone.embed(&texts).unwrap();
            assert_eq!(got.dim, case.embeddings[0].len(), "{label}: width");
            let mut worst = 0f32;
            for (i, want) in case.embeddings.iter().enumerate() {
                if case.token_ids[i].is_empty() {
                    // A text sentence-transformers tokenizes to nothing (a static model's "", with
                    // no special tokens) is a failure here, not its zero vector.
                    assert!(got.vector(i).is_err(), "{label}: text {i} has no tokens and must fail");
                    continue;
                }
                let v = got.vector(i).unwrap_or_else(|e| panic!("{label}: text {i} failed: {e:?}"));
                let d = max_abs_diff(v, want);
                worst = worst.max(d);
                assert!(d < TOLERANCE, "{label}: text {i} differs from sentence-transformers by {d}");
                let d = max_abs_diff(v, got_alone.vector(i).unwrap());
                assert!(d < 1e-5, "{label}: text {i} batched differs from alone by {d}");
            }
            eprintln!("{label}: max abs diff {worst:.2e}");
        }
    }
}

#[test]
fn bert_mean_in_the_legacy_layout_matches_sentence_transformers() {
    // all-MiniLM's layout: models.* module names, pooling_mode_* booleans, max_seq_length in
    // sentence_bert_config.json, no 2_Normalize folder. Cases: every pooling flag, truncation,
    // --dimensions, --no-normalize.
    check_fixture("st-bert-mean");
}

#[test]
fn bert_cls_with_a_dense_layer_and_no_normalize_matches_sentence_transformers() {
    // 0_Transformer/ with `bert.`-prefixed weights, a cased tokenizer with do_lower_case, CLS
    // pooling, a Dense layer (tanh) read from pytorch_model.bin, no Normalize module.
    check_fixture("st-bert-cls-dense");
}

#[test]
fn distilbert_with_a_dense_layer_matches_sentence_transformers() {
    // DistilBERT's layer names under the `distilbert.` prefix, no token types, mean pooling, a
    // tanh Dense layer, Normalize; CLS pooling, truncation and --no-normalize.
    check_fixture("st-distilbert");
}

#[test]
fn mpnet_with_its_relative_position_bias_matches_sentence_transformers() {
    // all-mpnet-base-v2's layout (2.x folder, mean + Normalize), positions from pad + 1, the
    // relative bias over texts up to 128 tokens; CLS pooling and truncation.
    check_fixture("st-mpnet");
}

#[test]
fn gemma3_bidirectional_with_sliding_windows_and_two_dense_layers_matches_sentence_transformers() {
    // EmbeddingGemma's layout: bidirectional sliding-window (±8) and full layers with their own
    // rotary bases, GQA, head_dim and query_pre_attn_scalar that differ, sandwich and q/k
    // norms, mean pooling, two bias-free Dense layers, Normalize, named prompts; config.json in
    // the 4.x shape.
    check_fixture("st-gemma3");
}

#[test]
fn xlm_roberta_with_prompts_matches_sentence_transformers() {
    // Unigram/Metaspace tokenizer, positions from pad + 1, a default prompt, --prompt-name,
    // --prompt "" (no prompt) and an own prompt.
    check_fixture("st-xlmr-prompts");
}

/// The binary with `model` on the texts of fixture `name` (written to an input in `dir`, which
/// is returned) gives case `case`'s golden vectors.
fn binary_matches_case(
    model: &std::path::Path,
    name: &str,
    case: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let reference = reference(name);
    let case = reference.cases.iter().find(|c| c.name == case).unwrap();
    let input = dir.join("in.parquet");
    write_texts(&input, &reference.texts.iter().map(|t| Some(t.as_str())).collect::<Vec<_>>());
    let out = dir.join("out");
    embed_with(model, &input, &out, &[]).assert().success();
    let vectors = read_vectors(&out);
    // A text with no tokens (a static model's "") is a failure, not a vector.
    let tokenized = case.token_ids.iter().filter(|ids| !ids.is_empty()).count();
    assert_eq!(vectors.len(), tokenized);
    for (row, v) in &vectors {
        let d = max_abs_diff(v, &case.embeddings[*row as usize]);
        assert!(d < TOLERANCE, "{name} \"{}\" row {row}: differs from the golden vector by {d}", case.name);
    }
    input
}

/// transformers' CamembertModel is its RobertaModel under another name: the XLM-R fixture relabelled
/// `camembert` (its `config.json` only) runs as XLM-R and gives the fixture's golden vectors.
/// Loaded as a CamembertModel by sentence-transformers 6.3 / transformers 5.25, the relabelled
/// folder gave those vectors to 6e-8.
#[test]
fn camembert_runs_as_the_roberta_network_it_is() {
    let dir = tempdir();
    let model = dir.path().join("camembert");
    copy_dir(&fixture("st-xlmr-prompts"), &model);
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let relabelled =
        text.replace("\"xlm-roberta\"", "\"camembert\"").replace("XLMRobertaModel", "CamembertModel");
    assert_ne!(relabelled, text);
    std::fs::write(&config, relabelled).unwrap();
    binary_matches_case(&model, "st-xlmr-prompts", "default prompt", dir.path());
}

/// A folder saved before fast tokenizers: the BERT fixture with its tokenizer.json replaced by the
/// slow tokenizer's vocab.txt and a 4.x tokenizer_config.json. sentence-transformers 6.3 (its
/// transformers builds the tokenizer from vocab.txt) gave the fixture's golden vectors on that
/// folder to 1.8e-7; batch-embed, building it the same way, must too.
#[test]
fn a_bert_folder_with_only_vocab_txt_matches_sentence_transformers() {
    let dir = tempdir();
    let model = dir.path().join("slow-bert");
    slow_bert_folder(&model);

    let input = binary_matches_case(&model, "st-bert-mean", "default", dir.path());

    // A slow tokenizer of another kind is named, with how to make tokenizer.json.
    std::fs::write(model.join("tokenizer_config.json"), r#"{"tokenizer_class": "XLNetTokenizer"}"#).unwrap();
    embed_with(&model, &input, &dir.path().join("refused"), &[])
        .assert()
        .failure()
        .stderr(contains("its tokenizer is XLNetTokenizer from vocab.txt, which batch-embed does not build"))
        .stderr(contains("save_pretrained"));
}

/// A checkpoint from before safetensors: the BERT fixture's own weights as `torch.save` writes
/// them (scripts/fixtures/pytorch_bin.py, which checked that sentence-transformers gives the
/// golden vectors on these folders): one `pytorch_model.bin` with the int64 position-id buffer
/// old checkpoints carry, and two shards with an index under the task model's `bert.` prefix.
/// Safetensors win where a folder has both; the weights' identity is in the run's description.
#[test]
fn a_folder_with_pytorch_model_bin_weights_matches_sentence_transformers() {
    let dir = tempdir();
    let mut hashes = Vec::new();
    for layout in ["single", "sharded"] {
        let model = dir.path().join(layout);
        copy_dir(&fixture("st-bert-mean"), &model);
        std::fs::remove_file(model.join("model.safetensors")).unwrap();
        for entry in std::fs::read_dir(fixture("pytorch-bin").join(layout)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
        }
        let run = dir.path().join(format!("run-{layout}"));
        std::fs::create_dir(&run).unwrap();
        binary_matches_case(&model, "st-bert-mean", "default", &run);
        let meta = part_metadata(&part_files(&run.join("out"))[0]);
        hashes.push(meta["batch_embed.model_hash"].clone());
    }
    assert_ne!(hashes[0], hashes[1], "other weight files, another model hash");

    // Both formats in one folder: the safetensors are read (a damaged pickle beside them is
    // never opened).
    let both = dir.path().join("both");
    copy_dir(&fixture("st-bert-mean"), &both);
    std::fs::write(both.join("pytorch_model.bin"), b"not a zip").unwrap();
    let run = dir.path().join("run-both");
    std::fs::create_dir(&run).unwrap();
    binary_matches_case(&both, "st-bert-mean", "default", &run);

    // A pickle that is not a checkpoint is named.
    let bad = dir.path().join("bad");
    copy_dir(&fixture("st-bert-mean"), &bad);
    std::fs::remove_file(bad.join("model.safetensors")).unwrap();
    std::fs::write(bad.join("pytorch_model.bin"), b"not a zip").unwrap();
    embed_with(&bad, &run.join("in.parquet"), &dir.path().join("refused"), &[])
        .assert()
        .failure()
        .stderr(contains("pytorch_model.bin is not a PyTorch checkpoint batch-embed can read"));
}

#[test]
fn modernbert_with_prompts_left_out_of_the_pooling_matches_sentence_transformers() {
    // Global and sliding-window layers (window ±8, texts up to ~300 tokens), the 4.x config
    // shape, a byte-level BPE tokenizer, include_prompt: false with mean and with CLS.
    check_fixture("st-modernbert");
}

#[test]
fn qwen2_with_last_token_pooling_from_modules_json_matches_sentence_transformers() {
    check_fixture("st-qwen2-last");
}

#[test]
fn nomic_bert_matches_sentence_transformers_running_nomic_s_own_code() {
    // nomic-embed-text's layout (model_type nomic_bert, GPT-2 config keys): rotary base 1000,
    // SwiGLU with the gated width rounded up to 256, no biases, post-norm, a vocabulary padded to
    // 64; its reference from sentence-transformers running nomic's trust_remote_code model.
    check_fixture("st-nomic");
    // NomicBertConfig's defaults, which its code also runs: learned absolute positions, a plain
    // (exact) GELU MLP, biases everywhere, no token types.
    check_fixture("st-nomic-abs");
}

#[test]
fn gte_new_matches_sentence_transformers_running_gte_s_own_code() {
    // GTE's "new" model (gte-base-en-v1.5's layout: fixed NTK-scaled rotary, base 500,000, fused
    // qkv, GELU, CLS), and its other switches (NTK with mixed_b, separate q/k/v, SiLU, a token
    // type, mean); the reference is sentence-transformers running Alibaba-NLP/new-impl's code.
    check_fixture("st-gte");
    check_fixture("st-gte-mixed");
}

#[test]
fn static_embeddings_match_sentence_transformers() {
    // sentence-transformers' StaticEmbedding: the 6.x layout with a WordPiece tokenizer, Normalize
    // and prompts; the 3.x layout (0_StaticEmbedding/) with model2vec's clustered rows, token
    // mapping and weights, and a BPE tokenizer whose appended end-of-text token is left out.
    check_fixture("st-static");
    check_fixture("st-static-m2v");
}

/// The binary on a static model: the start line says what it is, and the flags that do not
/// apply to a lookup table are refused before anything is written.
#[test]
fn the_binary_runs_a_static_model_and_refuses_what_does_not_apply() {
    let dir = tempdir();
    let model = fixture("st-static-m2v");
    let input = binary_matches_case(&model, "st-static-m2v", "default", dir.path());
    let meta = part_metadata(&part_files(&dir.path().join("out"))[0]);
    assert_eq!(meta["batch_embed.model_type"], "static");
    assert_eq!(meta["batch_embed.pooling"], "mean");
    for (args, expect) in [
        (vec!["--pooling", "cls"], "a static-embedding model's vector is the mean of its tokens' rows"),
        (vec!["--attention", "causal"], "a static-embedding model has no attention"),
    ] {
        embed_with(&model, &input, &dir.path().join("refused"), &args)
            .assert()
            .failure()
            .stderr(contains(expect));
        assert!(
            !dir.path().join("refused").join("worker-00000-of-00001").exists(),
            "{expect}: nothing written"
        );
    }
    batch_embed()
        .args(["embed", "--model"])
        .arg(&model)
        .arg("--output")
        .arg(dir.path().join("again"))
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("(static, no attention, no special tokens, dim 12; pooling mean (StaticEmbedding)"));
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The padded path in bf16 and f16 (what CUDA runs) stays close to f32 for the encoders, on the
/// fixture texts and long ones.
#[test]
fn encoders_in_bf16_and_f16_stay_close_to_f32() {
    for name in [
        "st-bert-mean",
        "st-distilbert",
        "st-mpnet",
        "st-gemma3",
        "st-xlmr-prompts",
        "st-modernbert",
        "st-nomic",
        "st-nomic-abs",
    ] {
        let reference = reference(name);
        let mut texts = reference.texts.clone();
        texts.push(reference.texts.iter().cycle().take(40).cloned().collect::<Vec<_>>().join(" "));
        let texts: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
        let flags = &reference.cases[0].flags;
        let want = embedder(name, flags, 1 << 20, AttentionImpl::Packed, DType::F32).embed(&texts).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let got = embedder(name, flags, 1 << 20, AttentionImpl::Auto, dtype).embed(&texts).unwrap();
            let worst = (0..texts.len())
                .map(|i| cosine(want.vector(i).unwrap(), got.vector(i).unwrap()))
                .fold(1f32, f32::min);
            eprintln!("{name} {dtype:?}: min cosine to f32 {worst:.5}");
            assert!(worst >= 0.995, "{name} {dtype:?}: min cosine {worst}");
        }
    }
}

/// The run's settings and their precedence: flags over the sentence-transformers files over
/// config.json.
#[test]
fn flags_override_the_sentence_transformers_files() {
    let none = Flags {
        pooling: None,
        prompt: None,
        prompt_name: None,
        max_tokens: None,
        dimensions: None,
        normalize: None,
    };
    let (_, _, v) = options("st-xlmr-prompts", &none);
    assert_eq!((v.prompt.as_deref(), v.prompt_name.as_deref()), (Some("query: "), Some("query")));
    assert_eq!((v.max_tokens, v.normalize, v.dim), (128, true, 32));
    let (_, _, v) = options("st-xlmr-prompts", &Flags { prompt: Some(String::new()), ..none.clone() });
    assert_eq!((v.prompt, v.prompt_name), (None, None), "--prompt \"\" turns the default prompt off");
    let (_, _, v) = options("st-bert-cls-dense", &none);
    assert_eq!((v.normalize, v.dim, v.max_tokens), (false, 24, 64), "no Normalize module; the Dense width");
    let (_, _, v) = options("st-bert-cls-dense", &Flags { dimensions: Some(8), ..none.clone() });
    assert_eq!((v.normalize, v.dim), (true, 8), "--dimensions normalises after the cut");
    let (_, _, v) =
        options("st-bert-cls-dense", &Flags { dimensions: Some(8), normalize: Some(false), ..none.clone() });
    assert!(!v.normalize, "--no-normalize wins over --dimensions");
    // A plain transformers folder: config.json decides (Qwen: last token, normalised).
    let files = ModelFiles::locate(&tiny_model()).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    let v = VectorOptions::resolve(&Requested::default(), &files, &config).unwrap();
    assert_eq!((v.pooling.describe(false).as_str(), v.normalize, v.max_tokens), ("last_token", true, 512));
    // Refusals, each naming what to change.
    let files = ModelFiles::locate(&fixture("st-bert-mean")).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    for (req, expect) in [
        (
            Requested { dimensions: Some(33), ..Requested::default() },
            "--dimensions 33 is more than the model's 32",
        ),
        (Requested { prompt_name: Some("query".into()), ..Requested::default() }, "names no prompts"),
        (Requested { max_tokens: Some(129), ..Requested::default() }, "more than the model accepts (128"),
    ] {
        let err = format!("{:#}", VectorOptions::resolve(&req, &files, &config).unwrap_err());
        assert!(err.contains(expect), "{err}");
    }
    let files = ModelFiles::locate(&fixture("st-xlmr-prompts")).unwrap();
    let config = ModelConfig::load(&files).unwrap();
    let req = Requested { prompt_name: Some("nosuch".into()), ..Requested::default() };
    let err = format!("{:#}", VectorOptions::resolve(&req, &files, &config).unwrap_err());
    assert!(err.contains("the model's prompts are document, passage, query"), "{err}");
}

/// The binary on a sentence-transformers folder: the settings in the part metadata and the start
/// line, f16 output, and the flags it refuses.
#[test]
fn the_binary_records_pooling_prompt_dense_and_dimensions() {
    let reference = reference("st-bert-cls-dense");
    let case = reference.cases.iter().find(|c| c.name == "dimensions 8").unwrap();
    let dir = tempdir();
    let input = dir.path().join("in.parquet");
    let texts: Vec<Option<&str>> = reference.texts.iter().map(|t| Some(t.as_str())).collect();
    write_texts(&input, &texts);
    let out = dir.path().join("out");
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("st-bert-cls-dense"))
        .args(["--dimensions", "8", "--output-dtype", "f16", "--output"])
        .arg(&out)
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("pooling cls (1_Pooling/config.json)"))
        .stderr(contains("first 8 dimensions, then normalised (--dimensions)"));
    let vectors = read_vectors(&out);
    assert_eq!(vectors.len(), texts.len());
    for (row, v) in &vectors {
        let d = max_abs_diff(v, &case.embeddings[*row as usize]);
        assert!(d < 2e-3, "row {row}: f16 vector differs by {d}");
    }
    let meta = part_metadata(&part_files(&out)[0]);
    assert_eq!(meta["batch_embed.pooling"], "cls");
    assert_eq!(meta["batch_embed.dim"], "8");
    assert_eq!(meta["batch_embed.dimensions"], "8");
    assert_eq!(meta["batch_embed.dense"], r#"["32->24 tanh"]"#);
    assert_eq!(meta["batch_embed.normalized"], "true");
    assert_eq!(meta["batch_embed.model_type"], "bert");
    // verify --deep checks the norms of a normalised run.
    batch_embed().args(["verify", "--deep"]).arg(&out).assert().success();

    for (args, expect) in [
        (vec!["--dimensions", "25"], "--dimensions 25 is more than the model's 24 dimensions"),
        (vec!["--attention", "causal"], "bert is a bidirectional encoder"),
        (vec!["--prompt-name", "query"], "names no prompts"),
        (vec!["--prompt", "x", "--prompt-name", "query"], "cannot be used with"),
        // A prompt that fills the length limit would leave every text cut to nothing.
        (
            vec!["--max-tokens", "4", "--prompt", "represent this review for retrieval: "],
            "take all of the 4 tokens a text is cut to, so no text would be left",
        ),
    ] {
        batch_embed()
            .args(["embed", "--model"])
            .arg(fixture("st-bert-cls-dense"))
            .args(&args)
            .arg("--output")
            .arg(dir.path().join("refused"))
            .arg(&input)
            .assert()
            .failure()
            .stderr(contains(expect));
        assert!(
            !dir.path().join("refused").join("worker-00000-of-00001").exists(),
            "{expect}: nothing written"
        );
    }
}
