//! Where bytes live: a local path or an object store URL (`s3://`, `gs://`, `az://`; `file://`
//! is a local path), behind one [`Location`] type, so that inputs, outputs, `--reuse` sources,
//! `status`, `verify` and `changes` work the same on a disk and on a bucket.
//!
//! What the rest of the crate needs from storage, and how each side provides it:
//!
//! | operation | local disk (local.rs) | object store (object.rs) |
//! |---|---|---|
//! | list a folder / prefix | `read_dir` | LIST with a delimiter |
//! | read a small file whole | `read` | GET |
//! | ranged reads (Parquet footers, pages) | `pread` | ranged GETs, coalesced, bounded in flight |
//! | write a file whole | temporary file, fsync, rename, fsync folder (atomic.rs) | one PUT, multipart when large |
//! | create-if-absent, replace-if-unchanged | the lock's file protocol (lock/file.rs) | conditional PUT (`If-None-Match: *`, `If-Match: ETag`) |
//! | delete | `remove_file` | DELETE |
//!
//! Parquet reading over both is storage/parquet.rs. Object store clients, their credentials and
//! endpoints come from the environment as the `object_store` crate reads it (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`); nothing here prints or keeps a secret in an error ([`redact`]).

pub mod local;
pub mod object;
pub mod parquet;
mod upload;

use std::cmp::Ordering;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use bytes::Bytes;

pub use object::ObjectLocation;

/// A file or folder: a local path, or an object (or prefix) in a bucket.
#[derive(Clone, Debug)]
pub enum Location {
    Local(PathBuf),
    Object(ObjectLocation),
}

/// URL schemes read as object stores (`file://` is a local path).
const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl"];

impl Location {
    /// A command-line argument: a URL with a known scheme, a `file://` URL, or a local path.
    pub fn from_arg(arg: &Path) -> Result<Location> {
        match arg.to_str() {
            Some(s) if s.contains("://") => Location::parse(s),
            _ => Ok(Location::Local(arg.to_path_buf())),
        }
    }

    /// Parses `s3://bucket/prefix`, `gs://…`, `az://…`, `file:///path` or a plain path.
    pub fn parse(s: &str) -> Result<Location> {
        let Some((scheme, _)) = s.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(s)));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            let url =
                url::Url::parse(s).map_err(|e| anyhow::anyhow!("{s} is not a valid file:// URL: {e}"))?;
            let path = url
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("{s} is not a valid file:// URL (it needs an absolute path)"))?;
            return Ok(Location::Local(path));
        }
        if !SCHEMES.contains(&scheme.as_str()) {
            bail!(
                "{s}: unsupported URL scheme {scheme}://; batch-embed reads and writes local paths, file://, s3://, gs:// and az:// (Azure Blob Storage)"
            );
        }
        Ok(Location::Object(ObjectLocation::parse(s)?))
    }

    /// `self/name`.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(name)),
            Location::Object(o) => Location::Object(o.child(name)),
        }
    }

    /// The path or URL, for messages.
    pub fn display(&self) -> Shown<'_> {
        Shown(self)
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Object(_))
    }

    /// The local path, if this is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Object(_) => None,
        }
    }

    /// The last segment of the path or key.
    pub fn name(&self) -> String {
        match self {
            Location::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Location::Object(o) => o.name().to_string(),
        }
    }

    /// The form recorded in a run's description: an absolute path (so `data/x.parquet` and
    /// `/work/data/x.parquet` agree), or the URL.
    pub fn canonical(&self) -> String {
        match self {
            Location::Local(p) => {
                std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string()
            }
            Location::Object(o) => o.url(),
        }
    }

    /// Whether two locations name the same place.
    pub fn same_as(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::Local(a), Location::Local(b)) => {
                std::fs::canonicalize(a).ok().is_some_and(|a| std::fs::canonicalize(b).ok() == Some(a))
            }
            (Location::Object(a), Location::Object(b)) => a.url() == b.url(),
            _ => false,
        }
    }

    /// The whole file, or `None` when there is none.
    pub fn read(&self) -> Result<Option<Bytes>> {
        match self {
            Location::Local(p) => local::read(p),
            Location::Object(o) => Ok(o.get()?.map(|(bytes, _)| bytes)),
        }
    }

    /// The size in bytes, or `None` when there is no such file.
    pub fn size(&self) -> Result<Option<u64>> {
        match self {
            Location::Local(p) => local::size(p),
            Location::Object(o) => o.size(),
        }
    }

    /// Replaces the file with `bytes`, whole (atomically and durably on a disk; one PUT on a
    /// bucket).
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        match self {
            Location::Local(p) => local::write(p, bytes),
            Location::Object(o) => o.put(Bytes::copy_from_slice(bytes)).map(|_| ()),
        }
    }

    /// Removes the file (a missing one is fine).
    pub fn delete(&self) -> Result<()> {
        match self {
            Location::Local(p) => local::delete(p),
            Location::Object(o) => o.delete(),
        }
    }

    /// The files directly in this folder: `(name, size)`.
    pub fn list_files(&self) -> Result<Vec<(String, u64)>> {
        match self {
            Location::Local(p) => local::list_files(p),
            Location::Object(o) => Ok(o.list_dir()?.1),
        }
    }

    /// The folders directly in this folder (on a bucket: the common prefixes).
    pub fn list_folders(&self) -> Result<Vec<String>> {
        match self {
            Location::Local(p) => local::list_folders(p),
            Location::Object(o) => Ok(o.list_dir()?.0),
        }
    }

    /// Makes the folder (a bucket has no folders: nothing to do).
    pub fn create_dir_all(&self) -> Result<()> {
        match self {
            Location::Local(p) => local::create_dir_all(p),
            Location::Object(_) => Ok(()),
        }
    }

    /// A new file that will become this location only when [`NewFile::finish`] is called: a
    /// temporary file renamed into place on a disk, an upload completed on a bucket. A reader
    /// never sees half of it.
    pub fn new_file(&self) -> Result<NewFile> {
        match self {
            Location::Local(p) => Ok(NewFile::Local(local::NewLocalFile::new(p)?)),
            Location::Object(o) => Ok(NewFile::Object(o.upload())),
        }
    }
}

/// Local paths first, in path order (as before URLs existed, so local row numbers stay the
/// same), then objects in URL order.
impl Ord for Location {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Location::Local(a), Location::Local(b)) => a.cmp(b),
            (Location::Local(_), Location::Object(_)) => Ordering::Less,
            (Location::Object(_), Location::Local(_)) => Ordering::Greater,
            (Location::Object(a), Location::Object(b)) => a.url().cmp(&b.url()),
        }
    }
}

impl PartialOrd for Location {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Location {}

/// A [`Location`] shown as its path or URL.
pub struct Shown<'a>(&'a Location);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Object(o) => write!(f, "{}", o.url()),
        }
    }
}

/// A file being written, which appears whole at its location on [`NewFile::finish`] or not at
/// all (dropped unfinished, it is removed or its upload aborted).
pub enum NewFile {
    Local(local::NewLocalFile),
    Object(object::Upload),
}

impl NewFile {
    /// Where it will appear.
    pub fn location(&self) -> Location {
        match self {
            NewFile::Local(f) => Location::Local(f.target().to_path_buf()),
            NewFile::Object(u) => Location::Object(u.location().clone()),
        }
    }

    /// Makes the file visible at its location, whole.
    pub fn finish(self) -> Result<()> {
        match self {
            NewFile::Local(f) => f.persist(),
            NewFile::Object(u) => u.finish().map(|_| ()),
        }
    }
}

impl Write for NewFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            NewFile::Local(f) => f.write(buf),
            NewFile::Object(u) => u.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            NewFile::Local(f) => f.flush(),
            NewFile::Object(u) => u.flush(),
        }
    }
}

/// `f` over `items`, in order: on rayon's threads for local files, on up to 32 threads for
/// objects (requests wait on the network, not the CPU: a fleet's hundreds of checkpoints are read
/// many at a time).
pub fn par_map<T: Sync, R: Send>(items: &[T], remote: bool, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use rayon::prelude::*;
    if !remote {
        return items.par_iter().map(&f).collect();
    }
    const WIDTH: usize = 32;
    let f = &f;
    let mut out = Vec::with_capacity(items.len());
    for group in items.chunks(WIDTH) {
        std::thread::scope(|s| {
            let handles: Vec<_> = group.iter().map(|item| s.spawn(move || f(item))).collect();
            out.extend(handles.into_iter().map(|h| h.join().expect("storage worker panicked")));
        });
    }
    out
}

/// Environment variables whose values are secrets: never shown, even inside an error text.
const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_TOKEN",
];

/// An error text with nothing secret left in it: the query of every http(s) URL (SAS tokens,
/// presigned signatures), S3's echo of the signed request (`<StringToSign>`, …), and the value of
/// any secret credential variable set in the environment.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URL queries.
    while let Some(at) = rest.find("http") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let end = from
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(from.len());
        let url = &from[..end];
        let is_url = url.starts_with("http://") || url.starts_with("https://");
        match url.find('?') {
            Some(q) if is_url => {
                out.push_str(&url[..q]);
                out.push_str("?<redacted>");
            }
            _ => out.push_str(url),
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    // S3 error bodies echoing the signed request.
    for tag in [
        "StringToSign",
        "StringToSignBytes",
        "CanonicalRequest",
        "CanonicalRequestBytes",
        "SignatureProvided",
    ] {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut from = 0;
        while let Some(a) = out[from..].find(&open).map(|i| i + from) {
            let start = a + open.len();
            let Some(len) = out[start..].find(&close) else { break };
            out.replace_range(start..start + len, "<redacted>");
            from = start + "<redacted>".len() + close.len();
        }
    }
    for var in SECRET_VARS {
        if let Ok(value) = std::env::var(var) {
            if value.len() >= 4 {
                out = out.replace(&value, "<redacted>");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_parse_into_locations() {
        let s3 = Location::parse("s3://my-bucket/corpus/day1/").unwrap();
        assert!(s3.is_remote());
        assert_eq!(s3.display().to_string(), "s3://my-bucket/corpus/day1");
        assert_eq!(
            s3.join("worker-00000-of-00002").display().to_string(),
            "s3://my-bucket/corpus/day1/worker-00000-of-00002"
        );
        assert_eq!(s3.name(), "day1");
        let root = Location::parse("gs://b-1").unwrap();
        assert_eq!(root.join("x.parquet").display().to_string(), "gs://b-1/x.parquet");
        assert_eq!(Location::parse("file:///tmp/x").unwrap(), Location::Local("/tmp/x".into()));
        assert_eq!(Location::from_arg(Path::new("data/in")).unwrap(), Location::Local("data/in".into()));
        let err = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("unsupported URL scheme ftp://"), "{err}");
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("s3:///key").is_err());
        // Local paths sort first, as they always did; URLs by their text.
        let mut v = [
            Location::parse("s3://b/b").unwrap(),
            Location::parse("/z").unwrap(),
            Location::parse("s3://b/a").unwrap(),
        ];
        v.sort();
        let shown: Vec<String> = v.iter().map(|l| l.display().to_string()).collect();
        assert_eq!(shown, ["/z", "s3://b/a", "s3://b/b"]);
    }

    #[test]
    fn redaction_removes_url_queries_signed_requests_and_secret_values() {
        let text = "error sending request for url (https://acct.blob.core.windows.net/c/k?sv=2024&sig=SECRETSIG): boom <StringToSign>AWS4 abc</StringToSign> http://x/y plain";
        let out = redact(text);
        assert!(!out.contains("SECRETSIG") && !out.contains("AWS4 abc"), "{out}");
        assert!(out.contains("https://acct.blob.core.windows.net/c/k?<redacted>"), "{out}");
        assert!(out.contains("<StringToSign><redacted></StringToSign>"), "{out}");
        assert!(out.contains("http://x/y plain"), "{out}");
        assert_eq!(redact("no urls at all"), "no urls at all");
        assert_eq!(redact("an https word"), "an https word");
    }
}
