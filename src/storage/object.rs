//! The object-store side of the storage seam: S3, GCS and Azure Blob Storage through the
//! `object_store` crate, driven from batch-embed's threads by a small tokio runtime owned here.
//!
//! - Clients are made once per bucket from the environment, as the crate reads it: `AWS_*`
//!   (keys, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, web identity, instance roles),
//!   `GOOGLE_*` (`GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server), `AZURE_*`.
//! - Transient failures (5xx, throttling, timeouts, dropped connections) are retried by the
//!   crate with exponential backoff ([`retry`]); what is left is reported naming the object.
//! - Conditional writes ([`ObjectLocation::put_if`]): create-if-absent (`If-None-Match: *`) and
//!   replace-if-unchanged (`If-Match: ETag`, GCS generations). A retried conditional write whose
//!   first try landed but whose reply was lost is recognised by reading the object back.
//! - Large files are uploaded in parts (upload.rs): the object appears only when the upload
//!   completes, so a reader never sees half of it.
//! - Every request is counted ([`meter`]), for the closing summary and the benchmarks.
//!
//! Error texts pass through [`super::redact`]: nothing secret reaches a message.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

pub use super::upload::Upload;

/// Worker threads of the storage runtime: network I/O and the decoding of fetched Parquet pages.
const RUNTIME_THREADS: usize = 2;
/// Attempts of a conditional write that failed in transport (the crate does not retry those on
/// its own: it cannot know whether they landed), 0.2 s apart, doubling to 3.2 s (about 15 s in
/// all, within which the crate itself retries server errors).
const CONDITIONAL_ATTEMPTS: u32 = 8;

/// The runtime every object store call runs on (started on first use).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("storage")
            .enable_all()
            .build()
            .expect("start the storage runtime")
    })
}

pub(super) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// How the crate retries: 10 tries over at most 3 minutes, backoff 100 ms doubling to 15 s.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
    }
}

/// Requests made and bytes moved by this process, over all buckets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    pub gets: u64,
    pub heads: u64,
    pub puts: u64,
    /// Multipart uploads: each counts its create, parts and completion here.
    pub multipart_requests: u64,
    pub lists: u64,
    pub deletes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl Meter {
    pub fn requests(&self) -> u64 {
        self.gets + self.heads + self.puts + self.multipart_requests + self.lists + self.deletes
    }
}

struct Counters([AtomicU64; 8]);

static COUNTERS: Counters = Counters([const { AtomicU64::new(0) }; 8]);

enum Count {
    Get = 0,
    Head,
    Put,
    Multipart,
    List,
    Delete,
    BytesRead,
    BytesWritten,
}

fn count(what: Count, n: u64) {
    COUNTERS.0[what as usize].fetch_add(n, Relaxed);
}

/// [`meter`], when any object store request was made.
pub fn meter_if_used() -> Option<Meter> {
    Some(meter()).filter(|m| m.requests() > 0)
}

/// What this process has done with object stores so far.
pub fn meter() -> Meter {
    let c = |i: usize| COUNTERS.0[i].load(Relaxed);
    Meter {
        gets: c(0),
        heads: c(1),
        puts: c(2),
        multipart_requests: c(3),
        lists: c(4),
        deletes: c(5),
        bytes_read: c(6),
        bytes_written: c(7),
    }
}

/// One bucket (or container) and its client.
pub struct Bucket {
    /// `s3://name`, `gs://name`, `az://name`, …
    base: String,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.base)
    }
}

/// The clients made so far, by `scheme://bucket`.
fn clients() -> &'static Mutex<HashMap<String, Arc<Bucket>>> {
    static BUCKETS: OnceLock<Mutex<HashMap<String, Arc<Bucket>>>> = OnceLock::new();
    BUCKETS.get_or_init(Default::default)
}

/// A bucket of its own in memory (`mem://NAME`), for the tests of what runs on buckets: the
/// crate's in-memory store has the conditional writes of the real ones.
#[cfg(test)]
pub fn memory(name: &str) -> ObjectLocation {
    let base = format!("mem://{name}");
    let bucket =
        Arc::new(Bucket { base: base.clone(), store: Arc::new(object_store::memory::InMemory::new()) });
    clients().lock().expect("bucket cache").insert(base, bucket.clone());
    ObjectLocation { bucket, key: Key::default() }
}

/// The client for `base` (`scheme://bucket`), made once per process.
fn bucket(base: &str) -> Result<Arc<Bucket>> {
    let mut buckets = clients().lock().expect("bucket cache");
    if let Some(b) = buckets.get(base) {
        return Ok(b.clone());
    }
    let scheme = base.split("://").next().unwrap_or_default();
    let made: object_store::Result<Arc<dyn ObjectStore>> = match scheme {
        "s3" | "s3a" => {
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_url(base).with_retry(retry());
            if let Some(region) = bucket_region(base) {
                builder = builder.with_region(region);
            }
            builder.build().map(|s| Arc::new(s) as _)
        }
        "gs" => object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_url(base)
            .with_retry(retry())
            .build()
            .map(|s| Arc::new(s) as _),
        _ => object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_url(base)
            .with_retry(retry())
            .build()
            .map(|s| Arc::new(s) as _),
    };
    let store = made.map_err(|e| {
        anyhow!(
            "cannot set up a client for {base}: {}; the credentials and endpoint come from the environment ({})",
            super::redact(&e.to_string()),
            env_hint(scheme)
        )
    })?;
    let b = Arc::new(Bucket { base: base.to_string(), store });
    buckets.insert(base.to_string(), b.clone());
    Ok(b)
}

/// The region of an S3 bucket when the environment names none (nor an endpoint): asked of S3
/// (one HEAD), since workers run in whatever region has GPUs and a bucket answers only in its
/// own. `None` leaves the crate's default.
fn bucket_region(base: &str) -> Option<String> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|k| set(k))
    {
        return None;
    }
    let name = base.split("://").nth(1)?;
    let options = object_store::ClientOptions::new().with_timeout(Duration::from_secs(10));
    block_on(object_store::aws::resolve_bucket_region(name, &options)).ok()
}

/// Which environment configures a scheme's client.
fn env_hint(scheme: &str) -> &'static str {
    match scheme {
        "s3" | "s3a" => {
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance or pod role, AWS_REGION, AWS_ENDPOINT_URL"
        }
        "gs" => "GOOGLE_APPLICATION_CREDENTIALS or the machine's service account",
        _ => "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, a SAS or a managed identity",
    }
}

/// An object, or a prefix of objects, in a bucket.
#[derive(Clone, Debug)]
pub struct ObjectLocation {
    bucket: Arc<Bucket>,
    key: Key,
}

/// What [`ObjectLocation::list_dir`] finds: folder names, and `(name, size)` of objects.
pub type Listing = (Vec<String>, Vec<(String, u64)>);

/// A version of an object, for a conditional replace.
#[derive(Clone, Debug, PartialEq)]
pub struct Version(pub(super) UpdateVersion);

/// The condition of [`ObjectLocation::put_if`].
#[derive(Clone, Debug)]
pub enum Cond {
    /// Only if no object exists.
    Absent,
    /// Only if the object is still this version.
    Unchanged(Version),
}

impl ObjectLocation {
    /// `scheme://bucket/key…` (a trailing `/` is dropped).
    pub fn parse(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| anyhow!("{url} is not a valid URL: {e}"))?;
        let host = parsed.host_str().unwrap_or_default();
        if host.is_empty() {
            bail!("{url} names no bucket; write it as {}://BUCKET/PREFIX", parsed.scheme());
        }
        let authority = match parsed.username() {
            "" => host.to_string(),
            user => format!("{user}@{host}"),
        };
        let base = format!("{}://{authority}", parsed.scheme());
        let key =
            Key::from_url_path(parsed.path()).map_err(|e| anyhow!("{url}: not a valid object key: {e}"))?;
        Ok(ObjectLocation { bucket: bucket(&base)?, key })
    }

    pub fn child(&self, name: &str) -> Self {
        let mut key = self.key.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            key = key.join(part);
        }
        ObjectLocation { bucket: self.bucket.clone(), key }
    }

    pub fn url(&self) -> String {
        match self.key.as_ref() {
            "" => self.bucket.base.clone(),
            key => format!("{}/{key}", self.bucket.base),
        }
    }

    pub fn name(&self) -> &str {
        self.key.filename().unwrap_or_default()
    }

    /// The object's key in its bucket (`a/b.parquet`; empty for the root).
    pub fn key(&self) -> &str {
        self.key.as_ref()
    }

    /// Whether this is a bucket's root (no key).
    pub fn is_root(&self) -> bool {
        self.key.as_ref().is_empty()
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.bucket.store
    }

    /// The error of `doing` (e.g. "cannot read") this object, in one sentence.
    pub(crate) fn error(&self, doing: &str, e: object_store::Error) -> anyhow::Error {
        explain(&self.url(), &self.bucket.base, doing, e)
    }

    /// The object and its version, or `None` when there is none.
    pub fn get(&self) -> Result<Option<(Bytes, Version)>> {
        count(Count::Get, 1);
        let got = block_on(async {
            let r = self.store().get_opts(&self.key, GetOptions::default()).await?;
            let version =
                Version(UpdateVersion { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone() });
            Ok::<_, object_store::Error>((r.bytes().await?, version))
        });
        match got {
            Ok((bytes, version)) => {
                count(Count::BytesRead, bytes.len() as u64);
                Ok(Some((bytes, version)))
            }
            Err(object_store::Error::NotFound { source, .. }) if !no_bucket(&source.to_string()) => Ok(None),
            Err(e) => Err(self.error("cannot read", e)),
        }
    }

    /// The object's size, or `None` when there is none.
    pub fn size(&self) -> Result<Option<u64>> {
        count(Count::Head, 1);
        match block_on(self.store().head(&self.key)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { source, .. }) if !no_bucket(&source.to_string()) => Ok(None),
            Err(e) => Err(self.error("cannot read", e)),
        }
    }

    /// Bytes `range` of the object (async, for the Parquet reader).
    pub async fn get_range_async(&self, range: Range<u64>) -> Result<Bytes> {
        count(Count::Get, 1);
        let bytes =
            self.store().get_range(&self.key, range).await.map_err(|e| self.error("cannot read", e))?;
        count(Count::BytesRead, bytes.len() as u64);
        Ok(bytes)
    }

    /// The last `n` bytes and the object's size (one request).
    pub fn get_suffix(&self, n: u64) -> Result<(Bytes, u64)> {
        count(Count::Get, 1);
        let options = GetOptions { range: Some(GetRange::Suffix(n)), ..GetOptions::default() };
        let got = block_on(async {
            let r = self.store().get_opts(&self.key, options).await?;
            let size = r.meta.size;
            Ok::<_, object_store::Error>((r.bytes().await?, size))
        });
        let (bytes, size) = got.map_err(|e| self.error("cannot read", e))?;
        count(Count::BytesRead, bytes.len() as u64);
        Ok((bytes, size))
    }

    /// Bytes `range` of the object.
    pub fn get_range(&self, range: Range<u64>) -> Result<Bytes> {
        block_on(self.get_range_async(range))
    }

    /// Replaces the object with `bytes` (one PUT).
    pub fn put(&self, bytes: Bytes) -> Result<Version> {
        count(Count::Put, 1);
        count(Count::BytesWritten, bytes.len() as u64);
        let r = block_on(self.store().put(&self.key, PutPayload::from(bytes)))
            .map_err(|e| self.error("cannot write", e))?;
        Ok(Version(UpdateVersion { e_tag: r.e_tag, version: r.version }))
    }

    /// Writes `bytes` only if `cond` holds; `Ok(None)` when it does not (the object exists, or
    /// changed). A try that failed in transport is retried, and a failed condition that finds the
    /// object holding exactly `bytes` is taken as this write having landed (every caller's bytes
    /// hold its own lock token, so they cannot be another writer's).
    pub fn put_if(&self, bytes: Bytes, cond: &Cond) -> Result<Option<Version>> {
        let mut attempt = 1;
        loop {
            let mode = match cond {
                Cond::Absent => PutMode::Create,
                Cond::Unchanged(v) => PutMode::Update(v.0.clone()),
            };
            count(Count::Put, 1);
            count(Count::BytesWritten, bytes.len() as u64);
            let put = block_on(self.store().put_opts(
                &self.key,
                PutPayload::from(bytes.clone()),
                PutOptions::from(mode),
            ));
            match put {
                Ok(r) => return Ok(Some(Version(UpdateVersion { e_tag: r.e_tag, version: r.version }))),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    // NOTE: also on a first try: the crate itself resends a request whose
                    // connection closed before the reply, and a resent conditional write that
                    // had landed fails its own condition.
                    if let Some((now, version)) = self.get()? {
                        if now == bytes {
                            return Ok(Some(version));
                        }
                    }
                    return Ok(None);
                }
                Err(e) if attempt < CONDITIONAL_ATTEMPTS && transient(&e) => {
                    std::thread::sleep(Duration::from_millis(100 << attempt.min(5)));
                    attempt += 1;
                }
                Err(e) => return Err(self.error("cannot write", e)),
            }
        }
    }

    /// Removes the object (a missing one is fine).
    pub fn delete(&self) -> Result<()> {
        count(Count::Delete, 1);
        match block_on(self.store().delete(&self.key)) {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("cannot remove", e)),
        }
    }

    /// What is directly under this prefix: folder names, and object names with sizes.
    pub fn list_dir(&self) -> Result<Listing> {
        count(Count::List, 1);
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let listed =
            block_on(self.store().list_with_delimiter(prefix)).map_err(|e| self.error("cannot list", e))?;
        let folders =
            listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        let files = listed
            .objects
            .iter()
            .filter_map(|o| Some((o.location.filename()?.to_string(), o.size)))
            .collect();
        Ok((folders, files))
    }

    /// Every object under this prefix, at any depth: `(location, size)`.
    pub fn list_all(&self) -> Result<Vec<(ObjectLocation, u64)>> {
        count(Count::List, 1);
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let listed: Vec<object_store::ObjectMeta> =
            block_on(self.store().list(prefix).try_collect()).map_err(|e| self.error("cannot list", e))?;
        Ok(listed
            .into_iter()
            .map(|m| (ObjectLocation { bucket: self.bucket.clone(), key: m.location }, m.size))
            .collect())
    }

    /// An upload to this object that appears only when finished.
    pub fn upload(&self) -> Upload {
        Upload::new(self.clone())
    }

    /// Starts a multipart upload to this object.
    pub(super) fn put_multipart(&self) -> Result<Box<dyn object_store::MultipartUpload>> {
        count(Count::Multipart, 1);
        block_on(self.store().put_multipart(&self.key)).map_err(|e| self.error("cannot write", e))
    }

    /// Counts a finished multipart upload: its `parts` and completion, `bytes` written.
    pub(super) fn count_multipart(parts: u64, bytes: u64) {
        count(Count::Multipart, parts + 1);
        count(Count::BytesWritten, bytes);
    }
}

/// Whether an error may pass if the request is tried again.
fn transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::InvalidPath { .. }
    )
}

/// Whether a "not found" is about the bucket rather than the object.
fn no_bucket(text: &str) -> bool {
    [
        "NoSuchBucket",
        "The specified bucket does not exist",
        "ContainerNotFound",
        "The specified container does not exist",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// One sentence for an object store error on `url`: a missing bucket, refused access and the
/// rest, with what to do.
fn explain(url: &str, base: &str, doing: &str, e: object_store::Error) -> anyhow::Error {
    let scheme = base.split("://").next().unwrap_or_default();
    let text = super::redact(&e.to_string());
    // NOTE: listings and some writes come back as generic errors carrying the status and the
    // store's error code, hence the text is looked at too.
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || [
        "403 Forbidden",
        "401 Unauthorized",
        "<Code>AccessDenied</Code>",
        "<Code>InvalidAccessKeyId</Code>",
        "<Code>SignatureDoesNotMatch</Code>",
        "AuthorizationFailure",
        "AuthenticationFailed",
    ]
    .iter()
    .any(|m| text.contains(m));
    // Without credentials in the environment the crate asks the machine's metadata service.
    let no_credentials =
        ["169.254.169.254", "/latest/api/token", "metadata.google.internal", "Error getting credentials"]
            .iter()
            .any(|m| text.contains(m));
    match &e {
        _ if no_credentials => anyhow!(
            "{doing} {url}: no credentials: none in the environment ({}), and the machine's metadata service gave none ({})",
            env_hint(scheme),
            short(&text)
        ),
        _ if no_bucket(&text) => anyhow!(
            "{doing} {url}: the bucket {base} does not exist (or is in another account or endpoint); create it, or fix the URL"
        ),
        _ if denied => anyhow!(
            "{doing} {url}: access denied; the credentials in use ({}) do not allow it ({})",
            env_hint(scheme),
            short(&code_or_first_line(&text))
        ),
        object_store::Error::NotFound { .. } => anyhow!("{doing} {url}: it does not exist"),
        _ => anyhow!("{doing} {url}: {}", one_line(&text)),
    }
}

/// The store's error code and message when the text holds an S3-style XML error body, else its
/// first line.
fn code_or_first_line(text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => text.lines().next().unwrap_or_default().to_string(),
    }
}

/// An error text on one line (a store's multi-line body folded), at most 600 characters.
fn one_line(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match folded.char_indices().nth(600) {
        Some((i, _)) => format!("{}…", &folded[..i]),
        None => folded,
    }
}

/// The first line of an error text, at most 300 characters.
fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

impl Version {
    /// The ETag (or generation) text, for messages and tests.
    pub fn tag(&self) -> String {
        self.0.e_tag.clone().or_else(|| self.0.version.clone()).unwrap_or_default()
    }
}
