//! A real S3 for the tests: `moto_server` (PyPI `moto[server]`, installed into the test venv) on
//! 127.0.0.1 at a free port, one server for the whole test binary and one bucket per test; a
//! plain S3 client (object_store, independent of batch-embed's storage code) to put inputs in and
//! take outputs out; and a fault-injecting HTTP proxy to put between batch-embed and the server.
//!
//! Where moto cannot be installed the tests say so loudly and skip; with `CI_REQUIRE_MOTO` set
//! (CI sets it) they fail instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::util::python_with;

/// The secret key given to batch-embed: no output may ever show it.
pub const SECRET: &str = "moto-secret-Kq93ZxT7-never-printed";

/// A running moto server.
pub struct Moto {
    pub endpoint: String,
}

/// The shared server, started on first use; `None` (after saying why) where moto cannot be had.
pub fn moto() -> Option<&'static Moto> {
    static SERVER: OnceLock<Option<Moto>> = OnceLock::new();
    SERVER.get_or_init(|| start_moto(&[])).as_ref()
}

/// A server of its own with `env` (e.g. moto's `INITIAL_NO_AUTH_ACTION_COUNT`, to check
/// credentials); it lives as long as the test binary.
pub fn moto_with(env: &[(&str, &str)]) -> Option<Moto> {
    start_moto(env)
}

fn start_moto(env: &[(&str, &str)]) -> Option<Moto> {
    let python = python_with(&["moto[server]"], "moto.server", "CI_REQUIRE_MOTO")?;
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("batch-embed-moto-{port}.log"));
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // Started from a thread that lives as long as the test binary, with PR_SET_PDEATHSIG: the
    // server dies with the tests, also when they are killed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            // Multipart uploads with small parts (batch-embed's are made small in some tests).
            .env("S3_UPLOAD_PART_MIN_SIZE", "256")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()));
        // SAFETY: prctl in the child before exec only sets its parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn();
        tx.send(child.map(|_| ())).unwrap();
        loop {
            std::thread::park();
        }
    });
    if let Err(e) = rx.recv().unwrap() {
        let why = format!("could not start moto_server: {e}");
        if std::env::var_os("CI_REQUIRE_MOTO").is_some() {
            panic!("{why}; CI_REQUIRE_MOTO is set, so this test must run");
        }
        eprintln!("\n*** SKIPPED: {why}; this test did NOT run ***\n");
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(&endpoint, "GET", "/", &[]).is_none() {
        assert!(Instant::now() < deadline, "moto_server did not answer on {endpoint}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Moto { endpoint })
}

/// One HTTP/1.1 request (no body) to `endpoint`: the status code, or `None` if nothing answers.
pub fn http(endpoint: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
    let host = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).ok()?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Moto {
    /// The environment batch-embed reads its S3 client from, pointed at `endpoint` (this
    /// server, or a proxy in front of it).
    pub fn env_for(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A new, empty bucket.
    pub fn bucket(&self, name: &str) -> Bucket {
        assert_eq!(http(&self.endpoint, "PUT", &format!("/{name}"), &[]), Some(200), "create bucket {name}");
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(name)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .build()
            .unwrap();
        Bucket { name: name.to_string(), store, rt: runtime() }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    })
}

/// A bucket on the test server, as the tests see it.
pub struct Bucket {
    pub name: String,
    store: AmazonS3,
    rt: &'static tokio::runtime::Runtime,
}

impl Bucket {
    /// `s3://BUCKET/key`
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        self.rt.block_on(self.store.put(&Key::from(key), PutPayload::from(bytes))).unwrap();
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.rt.block_on(async { self.store.get(&Key::from(key)).await?.bytes().await }) {
            Ok(b) => Some(b.to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    }

    /// Every key under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let prefix = Key::from(prefix);
        let listed: Vec<object_store::ObjectMeta> =
            self.rt.block_on(self.store.list(Some(&prefix)).try_collect()).unwrap();
        let mut keys: Vec<String> = listed.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        keys
    }

    /// Uploads every file under `local` (recursively) to `prefix/…`.
    pub fn upload_dir(&self, local: &Path, prefix: &str) {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(local, &mut files);
        for f in files {
            let rel = f.strip_prefix(local).unwrap().to_string_lossy().to_string();
            self.put(&format!("{prefix}/{rel}"), std::fs::read(&f).unwrap());
        }
    }

    /// Downloads everything under `prefix/` into `local` (keys relative to the prefix).
    pub fn download(&self, prefix: &str, local: &Path) {
        for key in self.keys(prefix) {
            let rel = key.strip_prefix(prefix).unwrap().trim_start_matches('/');
            let dest = local.join(rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(dest, self.get(&key).unwrap()).unwrap();
        }
    }
}

/// A command running `batch-embed` with the S3 environment for `endpoint`.
pub fn s3_cmd(endpoint: &str) -> assert_cmd::Command {
    let mut cmd = crate::util::batch_embed();
    cmd.envs(Moto::env_for(endpoint));
    cmd
}

/// `batch-embed embed --quiet --model qwen2-gqa --output OUT EXTRA… INPUT` against `endpoint`.
pub fn embed_s3(endpoint: &str, input: &str, out: &str, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = s3_cmd(endpoint);
    cmd.args(["embed", "--quiet", "--model"])
        .arg(crate::util::fixture("qwen2-gqa"))
        .args(["--output", out])
        .args(extra)
        .arg(input);
    cmd
}

/// The same as a plain child process (for tests that signal or kill it), stdout discarded.
pub fn embed_s3_child(endpoint: &str, input: &str, out: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("batch-embed"));
    cmd.envs(Moto::env_for(endpoint))
        .args(["embed", "--model"])
        .arg(crate::util::fixture("qwen2-gqa"))
        .args(["--output", out])
        .args(extra)
        .arg(input)
        .stdout(Stdio::null());
    cmd
}

/// What the fault proxy did.
#[derive(Default)]
pub struct ProxyCounts {
    pub requests: AtomicU64,
    /// Answered 503 Slow Down without forwarding.
    pub slow_down: AtomicU64,
    /// Connection reset before the request reached the server.
    pub reset_before: AtomicU64,
    /// Forwarded and done by the server, then the connection reset before the reply: the
    /// client cannot know it landed.
    pub reset_after: AtomicU64,
}

/// An HTTP proxy in front of `upstream` that fails `percent`% of requests (503, or a reset
/// connection before or after the server saw the request), one request per connection; or that
/// drops the conditional headers (`If-Match`, `If-None-Match`) of every request, playing a store
/// that ignores them.
pub struct FaultProxy {
    pub endpoint: String,
    pub counts: Arc<ProxyCounts>,
}

impl FaultProxy {
    pub fn start(upstream: &str, percent: u32, seed: u64) -> FaultProxy {
        FaultProxy::start_with(upstream, percent, seed, false)
    }

    /// A proxy that forwards everything but the conditional headers.
    pub fn ignoring_conditions(upstream: &str) -> FaultProxy {
        FaultProxy::start_with(upstream, 0, 0, true)
    }

    fn start_with(upstream: &str, percent: u32, seed: u64, strip: bool) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(ProxyCounts::default());
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let upstream = upstream.trim_start_matches("http://").to_string();
        {
            let counts = counts.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let (counts, rng, upstream) = (counts.clone(), rng.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        let _ = serve_one(client, &upstream, percent, strip, &rng, &counts);
                    });
                }
            });
        }
        FaultProxy { endpoint, counts }
    }

    pub fn faults(&self) -> (u64, u64, u64, u64) {
        let c = &self.counts;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&c.requests), l(&c.slow_down), l(&c.reset_before), l(&c.reset_after))
    }
}

/// Reads one HTTP request (head and body) from `r`: the head's lines and the raw body.
fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(Vec<String>, Vec<u8>)>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let header = |name: &str| {
        lines.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            body.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            if n == 0 {
                break;
            }
        }
    }
    Ok(Some((lines, body)))
}

/// Resets a connection (RST, not a clean close).
fn reset(s: TcpStream) {
    use std::os::unix::io::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket with a valid linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

fn serve_one(
    client: TcpStream,
    upstream: &str,
    percent: u32,
    strip: bool,
    rng: &Mutex<fastrand::Rng>,
    counts: &ProxyCounts,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some((lines, body)) = read_request(&mut reader)? else { return Ok(()) };
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let fault = {
        let mut rng = rng.lock().unwrap();
        if rng.u32(0..100) < percent {
            rng.u32(0..3)
        } else {
            3
        }
    };
    let mut client = client;
    match fault {
        0 => {
            counts.slow_down.fetch_add(1, Ordering::Relaxed);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            write!(
                client,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        1 => {
            counts.reset_before.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return Ok(());
        }
        _ => {}
    }
    // Forward on a connection of its own, asking the server to close it after the reply.
    let mut up = TcpStream::connect(upstream)?;
    let mut head = String::new();
    for (i, l) in lines.iter().enumerate() {
        let name = l.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if i > 0 && (name == "connection" || (strip && (name == "if-match" || name == "if-none-match"))) {
            continue;
        }
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut reply = Vec::new();
    up.read_to_end(&mut reply)?;
    if fault == 2 {
        counts.reset_after.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return Ok(());
    }
    client.write_all(&reply)?;
    Ok(())
}

/// An HTTP server that answers 404 to everything: a metadata service with no credentials.
pub fn empty_metadata_service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone()?);
                if read_request(&mut reader)?.is_some() {
                    let mut client = client;
                    client.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )?;
                }
                std::io::Result::Ok(())
            });
        }
    });
    endpoint
}
