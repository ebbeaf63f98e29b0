//! Hugging Face Hub models in the Hugging Face cache, laid out exactly as the Python library
//! (`huggingface_hub`) lays it out, so a cache users already have is used as it is and what we
//! download serves their Python code too:
//!
//! ```text
//! $HF_HUB_CACHE/models--ORG--NAME/refs/main              the commit `main` points at
//!                                /snapshots/COMMIT/FILE  a symlink to ../../blobs/ETAG (or a plain copy)
//!                                /blobs/ETAG             the file's bytes
//! ```
//!
//! The cache folder is `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else
//! `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
//! Online, the Hub is asked once for the revision's commit and file list (`HF_ENDPOINT`,
//! `HF_TOKEN`), and only the files the model needs that the snapshot lacks are downloaded
//! (hf-hub's sync API writes blobs, snapshot links and refs as Python does). With
//! `HF_HUB_OFFLINE=1` the network is never touched, and a missing file is an error naming the
//! cache folder searched. A token is never printed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where and how the Hub is reached, from the environment.
#[derive(Clone)]
pub struct HubEnv {
    pub cache: PathBuf,
    pub offline: bool,
    pub endpoint: String,
    token: Option<String>,
}

/// The token is never shown, not even in a debug print.
impl std::fmt::Debug for HubEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEnv")
            .field("cache", &self.cache)
            .field("offline", &self.offline)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A value Python's huggingface_hub reads as true (`1`, `ON`, `YES`, `TRUE`).
fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

impl HubEnv {
    /// Reads `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HOME`, `HF_HUB_OFFLINE` (or
    /// `TRANSFORMERS_OFFLINE`), `HF_ENDPOINT`, and the token from `HF_TOKEN`, else the file
    /// `HF_TOKEN_PATH`, else `HF_HOME/token` (where `huggingface-cli login` writes it).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = truthy(var("HF_HUB_OFFLINE")) || truthy(var("TRANSFORMERS_OFFLINE"));
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        HubEnv { cache, offline, endpoint, token }
    }

    /// The cache folder of a model: `CACHE/models--ORG--NAME`.
    pub fn repo_dir(&self, id: &str) -> PathBuf {
        self.cache.join(format!("models--{}", id.replace('/', "--")))
    }
}

/// A model's files as a snapshot folder of the cache, and the commit they are from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub commit: String,
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot the cache holds for `revision` (a branch or tag through `refs/`, or a commit),
/// without any network.
pub fn cached_snapshot(hub: &HubEnv, id: &str, revision: &str) -> Option<Snapshot> {
    let repo = hub.repo_dir(id);
    let commit = match std::fs::read_to_string(repo.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if is_commit(revision) => revision.to_string(),
        Err(_) => return None,
    };
    let dir = repo.join("snapshots").join(&commit);
    dir.is_dir().then_some(Snapshot { dir, commit })
}

/// Where a model's files come from while its needed files are worked out.
trait Files {
    /// Whether the model has `rel` (in the repository, or in the folder).
    fn has(&self, rel: &str) -> bool;
    /// Makes `rel` present in the snapshot folder, if the model has it.
    fn fetch(&mut self, rel: &str) -> Result<Option<PathBuf>>;
}

/// Fetches what the model needs, in order: `modules.json` first (it says where the transformer
/// is and which module files matter), then the transformer's config, tokenizer (`tokenizer.json`,
/// else the slow tokenizer's `vocab.txt` and its configs) and weights (safetensors: the sharded
/// index and its shards, or `model.safetensors`; only where there are none, PyTorch's
/// `pytorch_model.bin` or its sharded index and shards, never both), then the
/// sentence-transformers module files. A needed file the model lacks is an error from `missing`.
fn fetch_needed(files: &mut dyn Files, missing: &dyn Fn(&str) -> anyhow::Error) -> Result<()> {
    let modules = files.fetch("modules.json")?;
    let (transformer, static_embedding) = match &modules {
        Some(path) => super::sentence_transformers::transformer_path(
            &std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        )?,
        None => (String::new(), false),
    };
    let at =
        |name: &str| if transformer.is_empty() { name.to_string() } else { format!("{transformer}/{name}") };
    // A StaticEmbedding module has a tokenizer and a table, no config.json.
    if !static_embedding {
        files.fetch(&at("config.json"))?.ok_or_else(|| missing(&at("config.json")))?;
    }
    // An older BERT-family model may have only the slow tokenizer's files (tokenize/from_vocab.rs).
    if files.fetch(&at("tokenizer.json"))?.is_none() {
        if files.fetch(&at(crate::tokenize::from_vocab::VOCAB))?.is_none() {
            return Err(missing(&at("tokenizer.json")));
        }
        files.fetch(&at("tokenizer_config.json"))?;
        files.fetch(&at("special_tokens_map.json"))?;
    }
    // Safetensors where the model has them; PyTorch's pickles only where it has nothing else.
    let mut found = false;
    for (single, index) in [
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ] {
        if let Some(index) = files.fetch(&at(index))? {
            for shard in super::weights::shards(&index)? {
                let rel = at(&shard);
                files.fetch(&rel)?.ok_or_else(|| missing(&rel))?;
            }
            found = true;
            break;
        }
        if files.fetch(&at(single))?.is_some() {
            found = true;
            break;
        }
    }
    if !found {
        return Err(missing(&at("model.safetensors")));
    }
    if let Some(path) = modules {
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let has = |rel: &str| files.has(rel);
        for rel in super::sentence_transformers::needed_files(&text, &has)? {
            files.fetch(&rel)?;
        }
        files.fetch("config_sentence_transformers.json")?;
    }
    Ok(())
}

/// A snapshot read as it is: the cache offline, where what is not there is not fetched.
struct Present<'a> {
    dir: &'a Path,
}

impl Files for Present<'_> {
    fn has(&self, rel: &str) -> bool {
        self.dir.join(rel).is_file()
    }

    fn fetch(&mut self, rel: &str) -> Result<Option<PathBuf>> {
        let p = self.dir.join(rel);
        Ok(p.is_file().then_some(p))
    }
}

/// A revision on the Hub: its file list, the snapshot folder of its commit, and downloads.
struct Online<'a> {
    repo: hf_hub::api::sync::ApiRepo,
    listed: BTreeSet<String>,
    snapshot: &'a Snapshot,
    note: &'a mut dyn FnMut(&str),
    downloaded: u64,
}

impl Files for Online<'_> {
    fn has(&self, rel: &str) -> bool {
        self.listed.contains(rel)
    }

    fn fetch(&mut self, rel: &str) -> Result<Option<PathBuf>> {
        if !self.listed.contains(rel) {
            return Ok(None);
        }
        let local = self.snapshot.dir.join(rel);
        if local.is_file() {
            return Ok(Some(local));
        }
        let progress = DownloadProgress::new(&mut *self.note);
        let path = self.repo.download_with_progress(rel, progress).map_err(|e| hub_error(e, rel))?;
        // NOTE: hf-hub resolves the revision again for each file; if the branch moved since
        // we listed it, the file lands in another commit's snapshot. Refuse a mixed model.
        if path != local {
            bail!(
                "the revision moved on the Hub while downloading ({} arrived as {}); run again, or pin --revision to a commit",
                rel,
                path.display()
            );
        }
        verify_blob(&path)?;
        self.downloaded += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Ok(Some(path))
    }
}

/// A downloaded file whose blob is named by its SHA-256 (the Hub's ETag for LFS files: the
/// weights) must hash to that name, so a cut download is never kept as the model.
fn verify_blob(path: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let blob = std::fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = blob.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(&blob).with_context(|| format!("cannot read {}", blob.display()))?;
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", blob.display()))?;
    let got = crate::run_spec::hex16(&h.finalize());
    if !name.starts_with(&got) {
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(path);
        bail!("{} arrived damaged (its SHA-256 is not the Hub's); it was removed, run again", path.display());
    }
    Ok(())
}

/// hf-hub's progress callbacks as a line every 10 seconds, and one when a file is done.
struct DownloadProgress<'a> {
    note: &'a mut dyn FnMut(&str),
    file: String,
    size: usize,
    done: usize,
    started: Instant,
    last: Instant,
}

impl<'a> DownloadProgress<'a> {
    fn new(note: &'a mut dyn FnMut(&str)) -> Self {
        let now = Instant::now();
        DownloadProgress { note, file: String::new(), size: 0, done: 0, started: now, last: now }
    }
}

fn mb(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl hf_hub::api::Progress for DownloadProgress<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        if self.file != filename {
            (self.note)(&format!("downloading {filename} ({})", mb(size)));
        }
        (self.file, self.size, self.done) = (filename.to_string(), size, 0);
    }

    fn update(&mut self, size: usize) {
        self.done += size;
        if self.last.elapsed() >= Duration::from_secs(10) {
            self.last = Instant::now();
            (self.note)(&format!("downloading {}: {} of {}", self.file, mb(self.done), mb(self.size)));
        }
    }

    fn finish(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        (self.note)(&format!("downloaded {} ({} in {secs:.1}s)", self.file, mb(self.done)));
    }
}

/// An hf-hub error as one plain sentence: what was asked of whom, and what to do.
fn hub_error(err: hf_hub::api::sync::ApiError, what: &str) -> anyhow::Error {
    use hf_hub::api::sync::ApiError;
    match err {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(code @ (401 | 403), _) => anyhow::anyhow!(
                "the Hub refused {what} (HTTP {code}): a private or gated model needs a token with access in HF_TOKEN (or `huggingface-cli login`)"
            ),
            ureq::Error::Status(404, _) => anyhow::anyhow!("the Hub has no {what} (HTTP 404)"),
            ureq::Error::Status(code, _) => anyhow::anyhow!("the Hub answered HTTP {code} for {what}"),
            ureq::Error::Transport(t) => anyhow::anyhow!("cannot reach the Hub for {what}: {t}"),
        },
        other => anyhow::anyhow!("downloading {what} failed: {other}"),
    }
}

/// Whether an hf-hub error is the network failing (not the Hub answering).
fn is_unreachable(err: &hf_hub::api::sync::ApiError) -> bool {
    matches!(err, hf_hub::api::sync::ApiError::RequestError(e) if matches!(**e, ureq::Error::Transport(_)))
}

/// The snapshot of `id` at `revision`, every file the model needs present: from the cache, and
/// online whatever it lacks from the Hub. `note` reports what is downloaded.
pub fn resolve(hub: &HubEnv, id: &str, revision: &str, note: &mut dyn FnMut(&str)) -> Result<Snapshot> {
    let repo_dir = hub.repo_dir(id);
    if hub.offline {
        return offline(hub, id, revision, "HF_HUB_OFFLINE is set");
    }
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(hub.cache.clone())
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(false)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the Hub client: {e}"))?;
    let repo =
        api.repo(hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision.to_string()));
    let info = match repo.info() {
        Ok(info) => info,
        // NOTE: as Python's library does, a Hub that cannot be reached falls back to the cache.
        Err(e) if is_unreachable(&e) => {
            note(&format!("cannot reach the Hub at {} ({e}); using the cache", hub.endpoint));
            return offline(hub, id, revision, "the Hub cannot be reached");
        }
        Err(e) => {
            return Err(hub_error(e, &format!("model {id} at revision {revision}"))).with_context(|| {
                format!(
                    "--model {id}: no local folder of that name, and the Hub at {} does not serve it",
                    hub.endpoint
                )
            });
        }
    };
    if !is_commit(&info.sha) {
        bail!("the Hub answered for {id} at {revision} without a commit id");
    }
    let snapshot = Snapshot { dir: repo_dir.join("snapshots").join(&info.sha), commit: info.sha.clone() };
    let listed: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let missing =
        |rel: &str| anyhow::anyhow!("{id} at revision {revision} (commit {}) has no {rel}", snapshot.commit);
    let mut online = Online { repo, listed, snapshot: &snapshot, note: &mut *note, downloaded: 0 };
    fetch_needed(&mut online, &missing)?;
    let downloaded = online.downloaded;
    if downloaded > 0 {
        note(&format!("{id}: {} downloaded into {}", mb(downloaded as usize), repo_dir.display()));
    }
    // NOTE: hf-hub writes refs/<revision> even when the revision is a commit id; Python's
    // library does not, and a ref named after a commit would only confuse `huggingface-cli scan-cache`.
    if is_commit(revision) {
        let _ = std::fs::remove_file(repo_dir.join("refs").join(revision));
    }
    Ok(snapshot)
}

/// The cached snapshot, with every needed file there, or an error naming the cache folder.
fn offline(hub: &HubEnv, id: &str, revision: &str, why: &str) -> Result<Snapshot> {
    let repo_dir = hub.repo_dir(id);
    let Some(snapshot) = cached_snapshot(hub, id, revision) else {
        bail!(
            "{why}, and the Hugging Face cache {} has no snapshot of {id} at revision {revision} (looked for {}); download it once online, or point --model at a local folder",
            hub.cache.display(),
            repo_dir.join("refs").join(revision).display()
        );
    };
    let missing = |rel: &str| {
        anyhow::anyhow!(
            "{why}, and the Hugging Face cache has no {rel} for {id} (searched {}); download it once online",
            snapshot.dir.display()
        )
    };
    fetch_needed(&mut Present { dir: &snapshot.dir }, &missing)?;
    Ok(snapshot)
}

/// The Hub id and commit of a folder inside a Hugging Face cache
/// (`…/models--ORG--NAME/snapshots/COMMIT`), so a run given the path and one given the id agree.
pub fn id_of_snapshot_dir(dir: &Path) -> Option<(String, String)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let commit = dir.file_name()?.to_str()?;
    let snapshots = dir.parent()?;
    if snapshots.file_name()? != "snapshots" || !is_commit(commit) {
        return None;
    }
    let repo = snapshots.parent()?.file_name()?.to_str()?;
    let id = repo.strip_prefix("models--")?.replacen("--", "/", 1);
    id.contains('/').then(|| (id, commit.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_cache_folder_follows_pythons_order() {
        let base = [("HOME", "/h")];
        assert_eq!(HubEnv::from_env(&env_of(&base)).cache, PathBuf::from("/h/.cache/huggingface/hub"));
        let xdg = [("HOME", "/h"), ("XDG_CACHE_HOME", "/x")];
        assert_eq!(HubEnv::from_env(&env_of(&xdg)).cache, PathBuf::from("/x/huggingface/hub"));
        let home = [("HOME", "/h"), ("XDG_CACHE_HOME", "/x"), ("HF_HOME", "/hf")];
        assert_eq!(HubEnv::from_env(&env_of(&home)).cache, PathBuf::from("/hf/hub"));
        let cache = [("HOME", "/h"), ("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")];
        let hub = HubEnv::from_env(&env_of(&cache));
        assert_eq!(hub.cache, PathBuf::from("/c"));
        assert_eq!(
            hub.repo_dir("BAAI/bge-small-en-v1.5"),
            PathBuf::from("/c/models--BAAI--bge-small-en-v1.5")
        );
        assert!(!hub.offline);
        assert_eq!(hub.endpoint, "https://huggingface.co");
        for (v, offline) in [("1", true), ("true", true), ("ON", true), ("0", false), ("", false)] {
            let vars = [("HOME", "/h"), ("HF_HUB_OFFLINE", v), ("HF_ENDPOINT", "http://127.0.0.1:9/")];
            let hub = HubEnv::from_env(&env_of(&vars));
            assert_eq!(hub.offline, offline, "{v:?}");
            assert_eq!(hub.endpoint, "http://127.0.0.1:9");
        }
    }

    #[test]
    fn the_token_comes_from_the_environment_or_the_login_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(HubEnv::from_env(&env_of(&[("HF_HOME", home)])).token.as_deref(), Some("hf_file"));
        let both = [("HF_HOME", home), ("HF_TOKEN", "hf_env")];
        assert_eq!(HubEnv::from_env(&env_of(&both)).token.as_deref(), Some("hf_env"));
        // The token is never shown, not even in a debug print.
        let shown = format!("{:?}", HubEnv::from_env(&env_of(&both)));
        assert!(!shown.contains("hf_env") && shown.contains("<set>"), "{shown}");
    }

    #[test]
    fn a_snapshot_path_names_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = dir.path().join("models--BAAI--bge-small-en-v1.5/snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(id_of_snapshot_dir(&snap), Some(("BAAI/bge-small-en-v1.5".into(), commit.into())));
        assert_eq!(id_of_snapshot_dir(dir.path()), None);
    }
}
