//! Runs the real `petrel` binary on port 0 and talks to it through the CLI and HTTP.

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use petrel_cli::client::Client;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_petrel");

/// The owner token every server under test is bootstrapped with (PETREL_BOOTSTRAP_TOKEN), and
/// that the harness's CLI and HTTP calls send unless a test says otherwise.
pub const OWNER_TOKEN: &str = "petrel_e2e-owner-token-not-a-secret-0123456789";

/// `Bearer OWNER_TOKEN`, for requests the harness does not send itself.
pub fn owner_bearer() -> String {
    format!("Bearer {OWNER_TOKEN}")
}

/// The id of [`OWNER_TOKEN`]'s key: the first 16 hex digits of its SHA-256.
pub fn owner_key_id() -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(OWNER_TOKEN.as_bytes())[..8])
}

/// Which store a server under test uses.
#[derive(Debug, Clone)]
pub enum StoreKind {
    Sqlite,
    /// A fresh database on the PostgreSQL server named by PETREL_TEST_POSTGRES_URL.
    Postgres(String),
}

impl StoreKind {
    /// Creates a database of its own for one test on the test PostgreSQL server.
    pub async fn fresh_postgres() -> Self {
        use sqlx::Connection;
        let admin = std::env::var("PETREL_TEST_POSTGRES_URL").expect(
            "PostgreSQL tests need PETREL_TEST_POSTGRES_URL: run them through scripts/test.sh, or `. scripts/services.sh` first",
        );
        sqlx::any::install_default_drivers();
        let name = format!("petrel_e2e_{}", uuid::Uuid::now_v7().simple());
        let mut c = sqlx::AnyConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        StoreKind::Postgres(format!("{base}/{name}"))
    }

    /// Drops a database made by [`StoreKind::fresh_postgres`].
    pub async fn drop_postgres(&self) {
        use sqlx::Connection;
        if let StoreKind::Postgres(url) = self {
            let admin = std::env::var("PETREL_TEST_POSTGRES_URL").unwrap();
            let name = url.rsplit('/').next().unwrap();
            let mut c = sqlx::AnyConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

pub struct Petrel {
    child: Option<Child>,
    pub url: String,
    pub data_dir: tempfile::TempDir,
    pub store: StoreKind,
    pub client: Client,
    /// The owner's token: [`OWNER_TOKEN`], or the one a README-style server wrote.
    pub token: String,
    extra_args: Vec<String>,
    stderr_path: PathBuf,
    default_data_dir: bool,
    as_nobody: bool,
}

impl Petrel {
    pub async fn start() -> Self {
        Self::start_with(StoreKind::Sqlite, &[]).await
    }

    pub async fn start_with(store: StoreKind, extra_args: &[&str]) -> Self {
        Self::start_opts(store, extra_args, false).await
    }

    /// Starts the server as the README does: no --data-dir, so `./.petrel` under its working
    /// directory (a temporary directory here).
    pub async fn start_like_the_readme(extra_args: &[&str]) -> Self {
        Self::start_opts(StoreKind::Sqlite, extra_args, true).await
    }

    /// Starts the server as an ordinary user (65534), not root: its data directory belongs to
    /// that user.
    pub async fn start_as_nobody(extra_args: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(data_dir.path(), Some(65534), Some(65534)).unwrap();
        Self::start_in(data_dir, StoreKind::Sqlite, extra_args, false, true)
    }

    async fn start_opts(store: StoreKind, extra_args: &[&str], default_data_dir: bool) -> Self {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            store,
            extra_args,
            default_data_dir,
            false,
        )
    }

    fn start_in(
        data_dir: tempfile::TempDir,
        store: StoreKind,
        extra_args: &[&str],
        default_data_dir: bool,
        as_nobody: bool,
    ) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let stderr_path = data_dir.path().join("server.log");
        let (child, url) = spawn(
            data_dir.path(),
            &store,
            &extra_args,
            &stderr_path,
            default_data_dir,
            as_nobody,
        );
        let token = if default_data_dir {
            // Without PETREL_BOOTSTRAP_TOKEN the first start writes the owner's token here.
            std::fs::read_to_string(data_dir.path().join(".petrel/bootstrap-token"))
                .expect("a fresh server writes DATA_DIR/bootstrap-token")
                .trim()
                .to_owned()
        } else {
            OWNER_TOKEN.to_owned()
        };
        let client = Client::new(&url).unwrap().with_token(Some(token.clone()));
        Self {
            child: Some(child),
            url,
            data_dir,
            store,
            client,
            token,
            extra_args,
            stderr_path,
            default_data_dir,
            as_nobody,
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        signal(child.id(), "TERM");
        wait_exit(&mut child, Duration::from_secs(40))
    }

    /// Stops the server and starts it again on the same data directory and store.
    pub async fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "server exited with {status}; log:\n{}",
            self.server_log()
        );
        self.respawn();
    }

    /// Starts the server again on the same data directory, store and arguments.
    fn respawn(&mut self) {
        let (child, url) = spawn(
            self.data_dir.path(),
            &self.store,
            &self.extra_args,
            &self.stderr_path,
            self.default_data_dir,
            self.as_nobody,
        );
        self.child = Some(child);
        self.client = Client::new(&url)
            .unwrap()
            .with_token(Some(self.token.clone()));
        self.url = url;
    }

    /// Kills the server with SIGKILL (no drain, nothing flushed) and starts it again on the same
    /// data directory and store.
    pub async fn kill9_and_restart(&mut self) {
        let mut child = self.child.take().expect("server running");
        signal(child.id(), "KILL");
        wait_exit(&mut child, Duration::from_secs(10));
        self.respawn();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Runs a `petrel` client command against this server, as the owner.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(Some(&self.token), args)
    }

    /// Runs a `petrel` client command with this token (none: no PETREL_TOKEN).
    pub fn cli_as(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("PETREL_SERVER", &self.url)
            .env_remove("PETREL_TOKEN")
            .env(
                "PETREL_CONFIG",
                self.data_dir.path().join("cli-profiles.toml"),
            )
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("PETREL_TOKEN", t);
        }
        if self.default_data_dir {
            // Where the README's user runs the CLI: beside ./.petrel.
            cmd.current_dir(self.data_dir.path());
        }
        cmd.output().unwrap()
    }

    /// Runs a client command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "petrel {args:?} failed with {}\nstdout: {}\nstderr: {}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until the function's logs hold `count` lines containing `needle` (a handler that
    /// printed has started), so a test knows a request is in flight without guessing a delay.
    pub async fn wait_for_log(&self, function: &str, needle: &str, count: usize) {
        let ok = eventually(Duration::from_secs(20), || {
            self.cli_ok(&["logs", function, "--tail", "1000"])
                .matches(needle)
                .count()
                >= count
        })
        .await;
        assert!(ok, "{function} never logged {needle:?} {count} times");
    }

    pub fn deploy(&self, dir: &Path) -> String {
        self.cli_ok(&["deploy", dir.to_str().unwrap()])
    }

    /// An HTTP request; returns status, headers and the whole body.
    pub async fn http(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Resp {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = body.map(|(ct, b)| (ct, Bytes::from(b)));
        let resp = self
            .client
            .send(method, path, body.as_ref().map(|(ct, b)| (*ct, b.clone())))
            .await
            .unwrap();
        Resp::read(resp).await
    }

    /// A request with headers of its own.
    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        Resp::read(self.request(method, path, headers, body).await).await
    }

    /// A request whose answer is read frame by frame (see [`next_data`]): its status and body.
    pub async fn stream(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, hyper::body::Incoming) {
        self.try_stream(method, path, body).await.unwrap()
    }

    /// Like [`Petrel::stream`], for an answer that may break before its head arrives.
    pub async fn try_stream(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, hyper::body::Incoming), String> {
        let resp = self
            .try_request(method, path, &[("content-type", "application/json")], body)
            .await?;
        Ok((resp.status().as_u16(), resp.into_body()))
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> http::Response<hyper::body::Incoming> {
        self.try_request(method, path, headers, body).await.unwrap()
    }

    async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        use http_body_util::Full;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        // As the owner, unless the test sends an Authorization of its own (or "-" for none).
        match headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            None => b = b.header("authorization", format!("Bearer {}", self.token)),
            Some((_, "-")) => {
                b.headers_mut().unwrap().remove("authorization");
            }
            Some(_) => {}
        }
        client
            .request(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .map_err(|e| format!("{e:?}"))
    }

    pub async fn invoke(&self, name: &str, event: &str) -> Resp {
        self.http(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(("application/json", event.as_bytes().to_vec())),
        )
        .await
    }
}

impl Drop for Petrel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// Reads a whole answer.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Self {
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: bytes,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a Petrel error answer with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("x-petrel-error"),
            Some(code),
            "body: {}",
            self.text()
        );
        let j = self.json();
        assert_eq!(j["error"]["code"], code);
        let msg = j["error"]["message"].as_str().unwrap().to_owned();
        assert!(!msg.is_empty());
        msg
    }
}

fn spawn(
    data_dir: &Path,
    store: &StoreKind,
    extra: &[String],
    stderr_path: &Path,
    default_data_dir: bool,
    as_nobody: bool,
) -> (Child, String) {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("serve");
    if default_data_dir {
        cmd.current_dir(data_dir);
        cmd.env_remove("PETREL_BOOTSTRAP_TOKEN");
    } else {
        cmd.env("PETREL_BOOTSTRAP_TOKEN", OWNER_TOKEN);
        cmd.arg("--data-dir").arg(data_dir.join("data"));
    }
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .args(extra)
        .env("RUST_LOG", "info")
        // A secret in the server's environment must never reach a function.
        .env("PETREL_TEST_SECRET", "do-not-leak")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr_path).unwrap());
    if let StoreKind::Postgres(url) = store {
        cmd.arg("--store").arg(url);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .unwrap_or_else(|| {
            panic!(
                "server printed nothing; log:\n{}",
                std::fs::read_to_string(stderr_path).unwrap_or_default()
            )
        })
        .unwrap();
    let url = first
        .strip_prefix("Petrel listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, url)
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t0.elapsed() < limit, "server did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host pids of an instance's processes (the function sees other pids, in its own PID
/// namespace): every live process whose environment names the instance, or whose name is the
/// instance's (a process forked from the Python fork server keeps the server's environment
/// block, and is named after its instance).
pub fn instance_pids(instance: &str) -> Vec<u32> {
    let needle = format!("PETREL_INSTANCE_ID={instance}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == instance);
            let env = std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false);
            (named || env) && alive(*pid)
        })
        .collect()
}

/// The command lines of the live processes descended from `pid` (its children, theirs, ...),
/// with their arguments joined by spaces.
pub fn descendant_cmdlines(pid: u32) -> Vec<String> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    let descends = |mut p: u32| loop {
        match parent_of(p) {
            Some(q) if q == pid => return true,
            Some(0) | Some(1) | None => return false,
            Some(q) => p = q,
        }
    };
    all.into_iter()
        .filter(|&p| p != pid && alive(p) && descends(p))
        .filter_map(|p| {
            let raw = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            Some(String::from_utf8_lossy(&raw).replace('\0', " "))
        })
        .collect()
}

/// Whether any process of an instance is still running.
pub fn instance_alive(instance: &str) -> bool {
    !instance_pids(instance).is_empty()
}

/// Whether a process is still alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Starts `n` invocations of `name` with `event` at once; their answers come from the handles.
pub fn spawn_invokes(
    p: &std::sync::Arc<Petrel>,
    name: &str,
    event: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Resp>> {
    (0..n)
        .map(|_| {
            let (p, name, event) = (p.clone(), name.to_owned(), event.to_owned());
            tokio::spawn(async move { p.invoke(&name, &event).await })
        })
        .collect()
}

/// `n` invocations at once; their answers, in the order they were started.
pub async fn parallel(p: &std::sync::Arc<Petrel>, name: &str, event: &str, n: usize) -> Vec<Resp> {
    let mut out = Vec::new();
    for t in spawn_invokes(p, name, event, n) {
        out.push(t.await.unwrap());
    }
    out
}

pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

impl Petrel {
    /// Waits up to `limit` for the invocation record `record` of `function` to show `outcome`
    /// in `petrel inv ls`; fails the test with the listing otherwise.
    pub async fn wait_record(&self, function: &str, record: &str, outcome: &str, limit: Duration) {
        let listed = || self.cli_ok(&["inv", "ls", function]);
        let outcome = format!(" {outcome} ");
        let seen = eventually(limit, || {
            listed()
                .lines()
                .any(|l| l.contains(record) && l.contains(&outcome))
        })
        .await;
        assert!(seen, "no record {record} with{outcome}in\n{}", listed());
    }
}

/// Writes a function directory from (file, contents) pairs; `bootstrap` is made executable.
pub fn function_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        if *name == "bootstrap" {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    dir
}

pub fn manifest(name: &str, runtime: &str, handler: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"{handler}\"\n{extra}\n")
}

/// The wasm guests built from source, once per test run.
pub struct WasmGuests {
    /// The hello example, also copied to examples/hello-wasm/hello.wasm (its build command).
    pub hello: PathBuf,
    /// A wasi:http/proxy component that misbehaves on request.
    pub probe: PathBuf,
    /// A wasi:cli/command component: the wrong world.
    pub command: PathBuf,
}

pub fn wasm_guests() -> &'static WasmGuests {
    static GUESTS: std::sync::OnceLock<WasmGuests> = std::sync::OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
        let target = root.join("target/wasm-guests");
        let build = |manifest: &Path| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
                .arg(manifest)
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building {} failed (is the wasm32-wasip2 target installed? scripts/test.sh adds it):\n{}",
                manifest.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        build(&root.join("examples/hello-wasm/Cargo.toml"));
        build(&root.join("crates/cli/tests/guests/wasm-probe/Cargo.toml"));
        let out = target.join("wasm32-wasip2/release");
        let hello = root.join("examples/hello-wasm/hello.wasm");
        std::fs::copy(out.join("hello-wasm.wasm"), &hello).unwrap();
        WasmGuests {
            hello,
            probe: out.join("wasm-probe.wasm"),
            command: out.join("command.wasm"),
        }
    })
}

/// A function directory holding one component.
pub fn wasm_function(name: &str, component: &Path, extra: &str) -> tempfile::TempDir {
    let dir = function_dir(&[("petrel.toml", &manifest(name, "wasm", "app.wasm", extra))]);
    std::fs::copy(component, dir.path().join("app.wasm")).unwrap();
    dir
}

/// The next piece of an answer's body: its bytes, `None` at its end, or where it broke.
pub async fn next_data(body: &mut hyper::body::Incoming) -> Result<Option<String>, String> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    return Ok(Some(String::from_utf8_lossy(&d).into_owned()));
                }
            }
        }
    }
}

/// What the receiver saw: path, headers, body.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, http::HeaderMap, Bytes)>>>;

/// An HTTP receiver for callbacks and destinations: records every request; `/flaky` answers
/// 500 to its first request.
pub async fn receiver() -> (String, Seen) {
    receiver_on(None).await
}

/// The receiver over HTTPS with this certificate chain and key (PEM files).
pub async fn https_receiver(cert: &std::path::Path, key: &std::path::Path) -> (String, Seen) {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    receiver_on(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        config,
    ))))
    .await
}

async fn receiver_on(tls: Option<tokio_rustls::TlsAcceptor>) -> (String, Seen) {
    let seen: Seen = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, tls) = (record.clone(), tls.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let path = parts.uri.path().to_owned();
                            let mut seen = seen.lock().unwrap();
                            let first_flaky =
                                path == "/flaky" && !seen.iter().any(|(p, _, _)| p == "/flaky");
                            seen.push((path, parts.headers, body));
                            let mut resp =
                                http::Response::new(http_body_util::Full::new(Bytes::new()));
                            if first_flaky {
                                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    // A client that does not trust the certificate gives up in the handshake.
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(tcp).await {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
                    None => {
                        let io = hyper_util::rt::TokioIo::new(tcp);
                        let _ = http.serve_connection(io, service).await;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// Runs a tool a test needs and returns what it printed; the test fails with its output unless
/// it succeeded. `what` says what was run and what to check when it fails.
pub fn run_tool(cmd: &mut std::process::Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run it: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA and a certificate for 127.0.0.1 it signed, made with the openssl tool: (CA, certificate,
/// key), PEM files in `dir`.
pub fn test_ca(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let run = |args: &[&str]| {
        run_tool(
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir),
            &format!("openssl {args:?} (scripts/test.sh installs the tool)"),
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &format!(
                "/CN=petrel test CA {}",
                dir.file_name().unwrap().to_string_lossy()
            ),
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    ["ca.pem", "leaf.pem", "leaf.key"].map(|f| dir.join(f))
}
