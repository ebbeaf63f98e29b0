//! Hub ids: the Hugging Face cache as the Python library lays it out (symlinked snapshots and
//! plain copies), offline runs, and downloads from a local HTTP server standing in for the Hub
//! (`HF_ENDPOINT`), which records every request so the test can tell what was fetched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use predicates::str::contains;
use sha2::{Digest, Sha256};

use crate::util::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const ID: &str = "test-org/tiny-bert";

/// The files of a fixture folder, by path relative to it (reference.json left out).
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.file_name().unwrap() != "reference.json" {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Lays `files` out in `cache` as huggingface_hub does: blobs named by hash, the snapshot's
/// files as relative symlinks into them (or plain copies), `refs/<revision>`.
fn lay_out_cache(cache: &Path, files: &BTreeMap<String, Vec<u8>>, symlinks: bool, refs: &[&str]) -> PathBuf {
    let repo = cache.join(format!("models--{}", ID.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(COMMIT);
    for (rel, bytes) in files {
        let dest = snapshot.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if symlinks {
            let blob = repo.join("blobs").join(sha256(bytes));
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::write(&blob, bytes).unwrap();
            let depth = rel.matches('/').count() + 2;
            let target = format!("{}blobs/{}", "../".repeat(depth), sha256(bytes));
            std::os::unix::fs::symlink(target, &dest).unwrap();
        } else {
            std::fs::write(&dest, bytes).unwrap();
        }
    }
    for r in refs {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join(r), COMMIT).unwrap();
    }
    snapshot
}

/// `batch-embed embed` with a clean Hugging Face environment pointing at `cache`.
fn embed_hub(
    model: &str,
    cache: &Path,
    input: &Path,
    out: &Path,
    env: &[(&str, &str)],
) -> assert_cmd::Command {
    let mut cmd = batch_embed();
    cmd.args(["embed", "--model", model, "--output"]).arg(out).arg(input);
    for v in [
        "HF_HOME",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HF_HUB_CACHE", cache).env("HF_HOME", cache.join("no-home"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn texts_file(dir: &Path) -> PathBuf {
    let path = dir.join("in.parquet");
    write_texts(&path, &[Some("a first review"), Some("Zürich, café — naïve!"), Some("third")]);
    path
}

#[test]
fn a_hub_id_is_read_from_a_python_laid_out_cache_offline() {
    let dir = tempdir();
    let input = texts_file(dir.path());
    let files = files_of(&fixture("st-bert-mean"));
    // The same model by its folder: the vectors to expect.
    let plain = dir.path().join("plain");
    embed_with(&fixture("st-bert-mean"), &input, &plain, &[]).assert().success();
    let want = read_vectors(&plain);
    for (symlinks, refs, model) in [
        (true, &["main"][..], ID.to_string()),
        (false, &["main", "v1.0"][..], format!("{ID}@v1.0")),
        (false, &[][..], format!("{ID}@{COMMIT}")),
    ] {
        let cache = dir.path().join(format!("cache-{symlinks}-{}", refs.len()));
        let snapshot = lay_out_cache(&cache, &files, symlinks, refs);
        let out = dir.path().join(format!("out-{symlinks}-{}", refs.len()));
        embed_hub(&model, &cache, &input, &out, &[("HF_HUB_OFFLINE", "1")])
            .assert()
            .success()
            .stderr(contains(format!("{ID}@{}", &COMMIT[..12])));
        assert_same_vectors(&read_vectors(&out), &want);
        let meta = part_metadata(&part_files(&out)[0]);
        assert_eq!(meta["batch_embed.model_id"], ID);
        assert_eq!(meta["batch_embed.revision"], COMMIT);
        assert_eq!(
            PathBuf::from(&meta["batch_embed.model"]),
            snapshot,
            "the local snapshot, in the metadata only"
        );
        // The snapshot folder given as a path is the same model: the finished run is complete.
        embed_hub(snapshot.to_str().unwrap(), &cache, &input, &out, &[("HF_HUB_OFFLINE", "1")])
            .assert()
            .success()
            .stderr(contains("already complete"));
    }
}

/// A static-embedding model from the cache: its folder has no config.json, and none is asked for.
#[test]
fn a_cached_static_embedding_model_is_read_offline() {
    let dir = tempdir();
    let input = texts_file(dir.path());
    let plain = dir.path().join("plain");
    embed_with(&fixture("st-static-m2v"), &input, &plain, &[]).assert().success();
    let cache = dir.path().join("cache");
    lay_out_cache(&cache, &files_of(&fixture("st-static-m2v")), true, &["main"]);
    let out = dir.path().join("out");
    embed_hub(ID, &cache, &input, &out, &[("HF_HUB_OFFLINE", "1")]).assert().success();
    assert_same_vectors(&read_vectors(&out), &read_vectors(&plain));

    // model2vec's own save_pretrained names the folder itself "." (and leaves a config.json of
    // its own, model_type "model2vec", which the StaticEmbedding module does not read).
    let mut files = files_of(&fixture("st-static-m2v"));
    let moved: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("0_StaticEmbedding/")?.to_string(), v.clone())))
        .collect();
    files.retain(|k, _| !k.starts_with("0_StaticEmbedding/"));
    files.extend(moved);
    let modules = String::from_utf8(files["modules.json"].clone()).unwrap().replace("0_StaticEmbedding", ".");
    files.insert("modules.json".into(), modules.into_bytes());
    files.insert("config.json".into(), br#"{"model_type": "model2vec", "normalize": false}"#.to_vec());
    let cache = dir.path().join("cache-m2v");
    lay_out_cache(&cache, &files, true, &["main"]);
    let out = dir.path().join("out-m2v");
    embed_hub(ID, &cache, &input, &out, &[("HF_HUB_OFFLINE", "1")]).assert().success();
    assert_same_vectors(&read_vectors(&out), &read_vectors(&plain));
}

#[test]
fn a_cached_model_with_only_the_slow_tokenizer_is_read_offline() {
    let dir = tempdir();
    let input = texts_file(dir.path());
    let folder = dir.path().join("slow");
    slow_bert_folder(&folder);
    let plain = dir.path().join("plain");
    embed_with(&folder, &input, &plain, &[]).assert().success();
    let cache = dir.path().join("cache");
    lay_out_cache(&cache, &files_of(&folder), true, &["main"]);
    let out = dir.path().join("out");
    embed_hub(ID, &cache, &input, &out, &[("HF_HUB_OFFLINE", "1")]).assert().success();
    assert_same_vectors(&read_vectors(&out), &read_vectors(&plain));
}

#[test]
fn offline_a_missing_file_or_model_names_the_cache_folder() {
    let dir = tempdir();
    let input = texts_file(dir.path());
    let cache = dir.path().join("cache");
    let mut files = files_of(&fixture("st-bert-mean"));
    files.remove("model.safetensors");
    let snapshot = lay_out_cache(&cache, &files, true, &["main"]);
    let out = dir.path().join("out");
    embed_hub(ID, &cache, &input, &out, &[("HF_HUB_OFFLINE", "1")])
        .assert()
        .failure()
        .stderr(contains("HF_HUB_OFFLINE is set"))
        .stderr(contains("no model.safetensors"))
        .stderr(contains(snapshot.display().to_string()));
    embed_hub("test-org/not-cached", &cache, &input, &out, &[("HF_HUB_OFFLINE", "1")])
        .assert()
        .failure()
        .stderr(contains(format!(
            "the Hugging Face cache {} has no snapshot of test-org/not-cached",
            cache.display()
        )));
    assert!(!out.exists(), "nothing written");
}

/// A stand-in for the Hub: the model listing and `resolve` routes hf-hub uses, with the
/// headers it reads (`x-repo-commit`, `etag`/`x-linked-etag`, `content-range`), a token check,
/// and a log of the files requested.
struct FakeHub {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn fake_hub(files: BTreeMap<String, Vec<u8>>, token: &'static str) -> FakeHub {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (s, log) = (server.clone(), requests.clone());
    std::thread::spawn(move || {
        for rq in s.incoming_requests() {
            let url = rq.url().to_string();
            let header = |name: &str| {
                rq.headers()
                    .iter()
                    .find(|h| h.field.to_string().eq_ignore_ascii_case(name))
                    .map(|h| h.value.as_str().to_string())
            };
            let authorized = header("Authorization").as_deref() == Some(&format!("Bearer {token}"));
            let h = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap();
            if !authorized {
                let _ = rq.respond(tiny_http::Response::from_string("unauthorized").with_status_code(401));
                continue;
            }
            if let Some(rest) = url.strip_prefix(&format!("/api/models/{ID}/revision/")) {
                assert!(rest == "main" || rest == COMMIT, "revision {rest}");
                let siblings: Vec<_> = files.keys().map(|k| serde_json::json!({"rfilename": k})).collect();
                let body = serde_json::json!({"id": ID, "sha": COMMIT, "siblings": siblings}).to_string();
                let _ = rq.respond(
                    tiny_http::Response::from_string(body).with_header(h("Content-Type", "application/json")),
                );
                continue;
            }
            let prefix_main = format!("/{ID}/resolve/main/");
            let prefix_commit = format!("/{ID}/resolve/{COMMIT}/");
            let rel = url.strip_prefix(&prefix_main).or_else(|| url.strip_prefix(&prefix_commit));
            let Some(bytes) = rel.and_then(|r| files.get(r)) else {
                let _ = rq.respond(tiny_http::Response::from_string("not found").with_status_code(404));
                continue;
            };
            let range = header("Range").unwrap_or_default();
            let from: usize =
                range.trim_start_matches("bytes=").split('-').next().unwrap_or("0").parse().unwrap_or(0);
            let to = if range.ends_with("-0") { 0 } else { bytes.len() - 1 };
            if to != 0 || bytes.len() == 1 {
                log.lock().unwrap().push(rel.unwrap().to_string());
            }
            let rel = rel.unwrap();
            let lfs = rel.ends_with(".safetensors") || rel.ends_with(".bin");
            let etag = if lfs { sha256(bytes) } else { sha256(bytes)[..40].to_string() };
            let response = tiny_http::Response::from_data(bytes[from..=to.max(from)].to_vec())
                .with_status_code(206)
                .with_header(h("x-repo-commit", COMMIT))
                .with_header(h(if lfs { "x-linked-etag" } else { "etag" }, &format!("\"{etag}\"")))
                .with_header(h("Content-Range", &format!("bytes {from}-{}/{}", to.max(from), bytes.len())));
            let _ = rq.respond(response);
        }
    });
    FakeHub { port, requests, server }
}

#[test]
fn a_hub_id_is_downloaded_into_the_cache_once_and_only_what_it_needs() {
    let dir = tempdir();
    let input = texts_file(dir.path());
    let mut files = files_of(&fixture("st-bert-cls-dense"));
    // What a Hub repository also holds and a run must not fetch.
    files.insert("0_Transformer/pytorch_model.bin".into(), vec![1; 1000]);
    files.insert("onnx/model.onnx".into(), vec![2; 1000]);
    files.insert("README.md".into(), b"# tiny".to_vec());
    files.insert("2_Dense/model.safetensors".into(), {
        // The Dense weights as safetensors too: preferred over pytorch_model.bin.
        let out = dir.path().join("dense.safetensors");
        let st =
            batch_embed_dense_as_safetensors(&fixture("st-bert-cls-dense/2_Dense/pytorch_model.bin"), &out);
        std::fs::read(st).unwrap()
    });
    let hub = fake_hub(files.clone(), "hf_secret_test_token");
    let endpoint = format!("http://127.0.0.1:{}", hub.port);
    let cache = dir.path().join("cache");
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", "hf_secret_test_token")];

    // No token: refused, and the message says what to do.
    embed_hub(ID, &cache, &input, &dir.path().join("refused"), &[("HF_ENDPOINT", endpoint.as_str())])
        .assert()
        .failure()
        .stderr(contains("HTTP 401"))
        .stderr(contains("HF_TOKEN"));

    let out = dir.path().join("out");
    let run = embed_hub(ID, &cache, &input, &out, &env).assert().success();
    let output = run.get_output();
    let shown =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!shown.contains("hf_secret_test_token"), "the token is never printed:\n{shown}");
    assert!(shown.contains("downloading 0_Transformer/model.safetensors"), "{shown}");
    let fetched: Vec<String> = hub.requests.lock().unwrap().clone();
    let mut want = vec![
        "modules.json",
        "0_Transformer/config.json",
        "0_Transformer/tokenizer.json",
        "0_Transformer/model.safetensors",
        "0_Transformer/sentence_bert_config.json",
        "0_Transformer/tokenizer_config.json",
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "config_sentence_transformers.json",
    ];
    let mut got: Vec<&str> = fetched.iter().map(String::as_str).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "only what the model needs, safetensors not pytorch_model.bin");

    // The cache as huggingface_hub lays it out.
    let repo = cache.join("models--test-org--tiny-bert");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap().trim(), COMMIT);
    let snapshot = repo.join("snapshots").join(COMMIT);
    for rel in &want {
        let link = std::fs::read_link(snapshot.join(rel)).unwrap_or_else(|_| panic!("{rel} is a symlink"));
        let target = snapshot.join(rel).parent().unwrap().join(&link);
        assert!(link.starts_with(".."), "{rel}: relative link {}", link.display());
        assert_eq!(std::fs::read(&target).unwrap(), files[*rel], "{rel}");
        assert!(std::fs::canonicalize(&target)
            .unwrap()
            .starts_with(std::fs::canonicalize(repo.join("blobs")).unwrap()));
    }
    let meta = part_metadata(&part_files(&out)[0]);
    assert_eq!((meta["batch_embed.model_id"].as_str(), meta["batch_embed.revision"].as_str()), (ID, COMMIT));
    let vectors = read_vectors(&out);

    // Again, online: nothing downloaded a second time; offline: the Hub is not asked at all.
    let again = dir.path().join("again");
    embed_hub(ID, &cache, &input, &again, &env).assert().success();
    assert_eq!(hub.requests.lock().unwrap().len(), fetched.len(), "no file fetched twice");
    drop(hub);
    let offline = dir.path().join("offline");
    embed_hub(
        ID,
        &cache,
        &input,
        &offline,
        &[("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", "http://127.0.0.1:9")],
    )
    .assert()
    .success();
    assert_same_vectors(&read_vectors(&offline), &vectors);
    // The Hub unreachable and not offline: the cache is used, and the run says so.
    let unreachable = dir.path().join("unreachable");
    embed_hub(ID, &cache, &input, &unreachable, &[("HF_ENDPOINT", "http://127.0.0.1:9")])
        .assert()
        .success()
        .stderr(contains("cannot reach the Hub"));
    assert_same_vectors(&read_vectors(&unreachable), &vectors);
}

/// A repository from before safetensors (only sharded `pytorch_model-*.bin` and their index):
/// the index and its shards are downloaded, nothing else of the weights, and the vectors are the
/// ones the same weights give from safetensors.
#[test]
fn a_hub_model_with_only_pytorch_weights_is_downloaded_and_read() {
    let dir = tempdir();
    let input = texts_file(dir.path());
    let mut files = files_of(&fixture("st-bert-mean"));
    files.remove("model.safetensors");
    files.extend(files_of(&fixture("pytorch-bin/sharded")));
    files.insert("tf_model.h5".into(), vec![3; 1000]);
    let hub = fake_hub(files, "t");
    let endpoint = format!("http://127.0.0.1:{}", hub.port);
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", "t")];
    let out = dir.path().join("out");
    embed_hub(ID, &dir.path().join("cache"), &input, &out, &env).assert().success();
    let fetched = hub.requests.lock().unwrap().clone();
    let weights: Vec<&str> =
        fetched.iter().map(String::as_str).filter(|f| f.contains("model") && !f.contains("json")).collect();
    assert_eq!(
        weights,
        ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
        "{fetched:?}"
    );
    assert!(fetched.iter().any(|f| f == "pytorch_model.bin.index.json"), "{fetched:?}");

    let local = dir.path().join("local");
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("st-bert-mean"))
        .arg("--output")
        .arg(&local)
        .arg(&input)
        .assert()
        .success();
    assert_same_vectors(&read_vectors(&out), &read_vectors(&local));
}

#[test]
fn an_unknown_hub_id_says_the_hub_does_not_serve_it() {
    let dir = tempdir();
    let input = texts_file(dir.path());
    let hub = fake_hub(BTreeMap::new(), "t");
    let endpoint = format!("http://127.0.0.1:{}", hub.port);
    embed_hub(
        "test-org/nothing-here",
        &dir.path().join("cache"),
        &input,
        &dir.path().join("out"),
        &[("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", "t")],
    )
    .assert()
    .failure()
    .stderr(contains("--model test-org/nothing-here: no local folder of that name, and the Hub"))
    .stderr(contains("HTTP 404"));
}

/// The Dense fixture's `pytorch_model.bin` rewritten as safetensors (candle reads the pickle).
fn batch_embed_dense_as_safetensors(bin: &Path, out: &Path) -> PathBuf {
    let tensors = candle_core::pickle::read_all(bin).unwrap();
    let map: std::collections::HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, out).unwrap();
    out.to_path_buf()
}
