//! The binary as a user runs it: README's quickstart, the output format, flags, and the errors
//! for bad model directories and bad input.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use predicates::str::contains;
use serde::Deserialize;

use crate::util::*;

#[test]
fn readme_quickstart_embeds_the_bundled_sample() {
    let out = tempdir();
    batch_embed()
        .args(["embed", "--model"])
        .arg(tiny_model())
        .arg("--output")
        .arg(out.path())
        .arg(root().join("examples/reviews.parquet"))
        .assert()
        .success()
        .stderr(contains("400 embedded, 0 failed"));
    let vectors = read_vectors(out.path());
    assert_eq!(vectors.len(), 400);
    for (i, (row, v)) in vectors.iter().enumerate() {
        assert_eq!(*row, i as u64, "each row exactly once, numbered from 0");
        assert_eq!(v.len(), 64);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {row} has norm {norm}");
    }
}

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    attention: String,
    max_tokens: Option<usize>,
    prompt: Option<String>,
    embeddings: Vec<Option<Vec<f32>>>,
}

/// Runs the binary over the fixture texts (two files, to check row numbering across files) and
/// compares with the reference case picked by `pick`.
fn run_against_reference(model: &str, extra: &[&str], pick: impl Fn(&Case) -> bool) {
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture(model).join("reference.json")).unwrap())
            .unwrap();
    let case = reference.cases.iter().find(|c| pick(c)).expect("case");
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let texts: Vec<Option<&str>> = reference.texts.iter().map(|t| Some(t.as_str())).collect();
    let (a, b) = texts.split_at(5);
    write_texts(&input.join("b.parquet"), b);
    write_texts(&input.join("a.parquet"), a); // sorted path order: a first
    let out = dir.path().join("out");
    batch_embed()
        .args(["embed", "--quiet", "--no-normalize", "--batch-tokens", "64", "--model"])
        .arg(fixture(model))
        .arg("--output")
        .arg(&out)
        .args(extra)
        .arg(&input)
        .assert()
        .success();
    let got = read_vectors(&out);
    let want: Vec<(u64, &Vec<f32>)> =
        case.embeddings.iter().enumerate().filter_map(|(i, e)| e.as_ref().map(|e| (i as u64, e))).collect();
    assert_eq!(got.len(), want.len());
    for ((row, v), (want_row, w)) in got.iter().zip(want) {
        assert_eq!(*row, want_row);
        let d = max_abs_diff(v, w);
        assert!(d < 1e-4, "{model} {extra:?}: row {row} differs by {d}");
    }
    let failed = case.embeddings.iter().filter(|e| e.is_none()).count();
    assert_eq!(read_failures(&out).len(), failed);
}

#[test]
fn attention_follows_config_unless_overridden() {
    // qwen2-gqa has no is_causal: causal by default, bidirectional on request.
    run_against_reference("qwen2-gqa", &[], |c| {
        c.attention == "causal" && c.max_tokens.is_none() && c.prompt.is_none()
    });
    run_against_reference("qwen2-gqa", &["--attention", "bidirectional"], |c| c.attention == "bidirectional");
    // qwen2-mha-bidir says is_causal: false: bidirectional by default, causal on request.
    run_against_reference("qwen2-mha-bidir", &[], |c| c.attention == "bidirectional");
    run_against_reference("qwen2-mha-bidir", &["--attention", "causal"], |c| {
        c.attention == "causal" && c.max_tokens.is_none() && c.prompt.is_none()
    });
}

#[test]
fn max_tokens_and_prompt_flags_match_the_reference() {
    run_against_reference("qwen3", &["--max-tokens", "12"], |c| c.max_tokens == Some(12));
    let prompt = "Instruct: Given a review, retrieve similar reviews\nQuery: ";
    run_against_reference("qwen3", &["--prompt", prompt], |c| c.prompt.is_some());
}

#[test]
fn null_and_empty_texts_are_recorded_as_failures() {
    let dir = tempdir();
    let input = dir.path().join("t.parquet");
    write_texts(&input, &[Some("good"), None, Some(""), Some("fine")]);
    let out = dir.path().join("out");
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-mha-bidir"))
        .arg("--output")
        .arg(&out)
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("2 embedded, 2 failed"));
    let rows: Vec<u64> = read_vectors(&out).iter().map(|(r, _)| *r).collect();
    assert_eq!(rows, vec![0, 3]);
    let failures = std::fs::read_to_string(worker0(&out).join("failures.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = failures.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["row"], 1);
    assert_eq!(lines[0]["reason"], "text is null");
    assert_eq!(lines[1]["row"], 2);
    assert_eq!(lines[1]["reason"], "text tokenizes to no tokens");
}

/// Runs `embed` with `model` on a one-row input and expects failure with `message`.
fn fails_with(model: &std::path::Path, extra: &[&str], message: &str) {
    let dir = tempdir();
    let input = dir.path().join("t.parquet");
    write_texts(&input, &[Some("hello")]);
    batch_embed()
        .args(["embed", "--model"])
        .arg(model)
        .arg("--output")
        .arg(dir.path().join("out"))
        .args(extra)
        .arg(&input)
        .assert()
        .failure()
        .stderr(contains(message));
}

#[test]
fn bad_model_directories_fail_naming_the_problem() {
    let dir = tempdir();
    let missing = dir.path().join("nope");
    fails_with(&missing, &[], "does not exist");

    let copy = |name: &str| {
        let d = dir.path().join(name);
        copy_dir(&fixture("qwen2-gqa"), &d);
        d
    };
    let no_config = copy("no-config");
    std::fs::remove_file(no_config.join("config.json")).unwrap();
    fails_with(&no_config, &[], "config.json is missing");

    let no_tokenizer = copy("no-tokenizer");
    std::fs::remove_file(no_tokenizer.join("tokenizer.json")).unwrap();
    fails_with(&no_tokenizer, &[], "tokenizer.json is missing");

    let no_weights = copy("no-weights");
    for f in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::remove_file(no_weights.join(f)).unwrap();
    }
    fails_with(&no_weights, &[], "expected model.safetensors or model.safetensors.index.json");

    let missing_shard = copy("missing-shard");
    std::fs::remove_file(missing_shard.join("model-00002-of-00002.safetensors")).unwrap();
    fails_with(&missing_shard, &[], "model-00002-of-00002.safetensors, which is missing");

    let corrupt = copy("corrupt");
    std::fs::write(corrupt.join("model-00001-of-00002.safetensors"), b"not a safetensors file").unwrap();
    fails_with(&corrupt, &[], "model-00001-of-00002.safetensors is not a readable safetensors file");

    // A known encoder type over a Qwen2 folder: its weights are not BERT's, and the error says
    // which tensor is missing.
    let bert = copy("bert");
    let cfg = std::fs::read_to_string(bert.join("config.json")).unwrap().replace("\"qwen2\"", "\"bert\"");
    std::fs::write(bert.join("config.json"), cfg).unwrap();
    fails_with(&bert, &[], "have no \"embeddings.word_embeddings.weight\"");

    let gpt2 = copy("gpt2");
    let cfg = std::fs::read_to_string(gpt2.join("config.json")).unwrap().replace("\"qwen2\"", "\"gpt2\"");
    std::fs::write(gpt2.join("config.json"), cfg).unwrap();
    fails_with(&gpt2, &[], "model_type \"gpt2\" is not supported; supported model types: qwen2, qwen3, llama, mistral, gemma3_text, bert, distilbert, mpnet, xlm-roberta, roberta, camembert, modernbert");

    let bad_json = copy("bad-json");
    std::fs::write(bad_json.join("config.json"), "{ not json").unwrap();
    fails_with(&bad_json, &[], "bad-json/config.json");

    let bad_tokenizer = copy("bad-tokenizer");
    std::fs::write(bad_tokenizer.join("tokenizer.json"), "{}").unwrap();
    fails_with(&bad_tokenizer, &[], "cannot load tokenizer");

    let wrong_shape = copy("wrong-shape");
    let cfg = std::fs::read_to_string(wrong_shape.join("config.json"))
        .unwrap()
        .replace("\"hidden_size\": 64", "\"hidden_size\": 96");
    std::fs::write(wrong_shape.join("config.json"), cfg).unwrap();
    fails_with(&wrong_shape, &[], "loading the weights of");
}

#[test]
fn flags_are_checked() {
    fails_with(
        &fixture("qwen2-gqa"),
        &["--max-tokens", "100000"],
        "--max-tokens 100000 is more than the model accepts (512",
    );
    fails_with(&fixture("qwen2-gqa"), &["--max-tokens", "0"], "--max-tokens must be at least 1");
    fails_with(&fixture("qwen2-gqa"), &["--device", "gpu"], "expected auto, cpu, cuda or cuda:N");
    if !cfg!(feature = "cuda") {
        fails_with(&fixture("qwen2-gqa"), &["--device", "cuda"], "built without CUDA support");
    }
}

#[test]
fn bad_input_fails_before_writing() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let run = |input: &std::path::Path, extra: &[&str], message: &str| {
        batch_embed()
            .args(["embed", "--model"])
            .arg(tiny_model())
            .arg("--output")
            .arg(&out)
            .args(extra)
            .arg(input)
            .assert()
            .failure()
            .stderr(contains(message));
        assert!(!out.exists(), "nothing may be written for bad input");
    };
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    run(&empty, &[], "no Parquet files (*.parquet) found in");

    let cols = dir.path().join("cols.parquet");
    write_parquet(
        &cols,
        vec![
            ("body", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ],
    );
    run(&cols, &[], "has no column \"text\" (pick one with --text-column); its columns are: body, n");
    run(&cols, &["--text-column", "n"], "column \"n\" of");
    run(&cols, &["--text-column", "n"], "has type Int64, not a string or binary type");

    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"this is not parquet at all").unwrap();
    run(&junk, &[], "junk.parquet is not a readable Parquet file");
}

#[test]
fn f16_is_refused_for_a_model_that_overflows_it_and_works_for_one_that_does_not() {
    // A copy of the fixture whose token embeddings are scaled by 1e7: RMSNorm makes the model
    // indifferent to the scale in f32, but the residual stream passes f16's 65504.
    let dir = tempdir();
    let model = dir.path().join("huge");
    std::fs::create_dir(&model).unwrap();
    let source = fixture("qwen2-gqa");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(source.join(f), model.join(f)).unwrap();
    }
    let mut tensors = std::collections::HashMap::new();
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        for (name, t) in
            candle_core::safetensors::load(source.join(shard), &candle_core::Device::Cpu).unwrap()
        {
            let t = if name.ends_with("embed_tokens.weight") { (t * 1e7).unwrap() } else { t };
            tensors.insert(name, t);
        }
    }
    candle_core::safetensors::save(&tensors, model.join("model.safetensors")).unwrap();
    let input = corpus(dir.path(), 20);
    // f32 is fine with it.
    embed_with(&model, &input, &dir.path().join("f32"), &[]).assert().success();
    // f16 is refused before any vector is written.
    let out = dir.path().join("f16");
    embed_with(&model, &input, &out, &["--dtype", "f16"])
        .assert()
        .failure()
        .stderr(contains("this model overflows f16"))
        .stderr(contains("--dtype bf16"));
    assert!(part_files(&out).is_empty());
    // The fixture itself runs in f16 (on the padded path), close to f32.
    let ok = dir.path().join("fixture-f16");
    embed_with(&fixture("qwen2-gqa"), &input, &ok, &["--dtype", "f16"]).assert().success();
    let f32_out = dir.path().join("fixture-f32");
    embed_cmd(&input, &f32_out, &[]).assert().success();
    for ((_, a), (_, b)) in read_vectors(&ok).iter().zip(read_vectors(&f32_out)) {
        assert!(max_abs_diff(a, &b) < 1e-2);
    }
    batch_embed().arg("verify").arg(&ok).assert().success();
}
