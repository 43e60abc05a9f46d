//! WebAssembly components of the `wasi:http/proxy` world, on wasmtime.
//!
//! A component is compiled once, ahead of time, at deploy ([`WasmEngine::prepare`]): the
//! compiled artifact is cached on disk, keyed by the component's digest and the engine's
//! settings, so a restart does not recompile. Serving loads it (a memory map) into a
//! pre-instantiated [`ProxyPre`], shared by every instance of the version, and each request gets
//! a fresh instance from it in a fresh [`Store`] (the pooling allocator with copy-on-write memory
//! initialisation): nothing a request leaves behind is seen by the next. A function with
//! `instance_reuse = N` opts out of that: a guest that answered cleanly is kept, its store's
//! per-request state reset ([`WasmState::begin`]), for up to N requests; any failure retires it.
//!
//! Limits: `memory_mb` through a resource limiter (growth past it fails, and the request is
//! answered `function_out_of_memory`), `timeout` through epoch interruption (the guest yields to
//! the executor every few milliseconds, so an endless loop never holds a server thread, and is
//! stopped at its deadline), outbound HTTP only to `allowed_outbound_hosts`.

mod capture;
mod outbound;

use capture::Capture;

pub use outbound::OutboundPolicy;
use petrel_core::outbound::HostPattern;

use crate::error::{init_failed, InvokeError};
use crate::instance::{HttpInstance, Instance, InstanceSpec, Protocol, StartTimings};
use crate::logs::{LogSink, LogSource};
use crate::Body;
use http_body_util::BodyExt;
use petrel_core::BoxFuture;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// How often the epoch advances: the granularity of timeouts and of yielding to the executor.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Ticks a guest runs before it yields its thread back to the executor.
const YIELD_EVERY_TICKS: u64 = 2;
/// Output a request may write to stdout and to stderr before the rest is dropped.
const OUTPUT_CAPACITY: usize = 1024 * 1024;
use petrel_core::manifest::MAX_WASM_MEMORY_MB;

/// Per-request state of a store.
pub struct WasmState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    limits: MemoryLimit,
    stdout: Capture,
    stderr: Capture,
    started: Instant,
    timeout: Duration,
    timed_out: bool,
}

impl WasiView for WasmState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for WasmState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasmState {
    /// The host side of one guest: the function's variables, its output captured, nothing else
    /// reachable; [`WasmState::begin`] readies it for each request.
    fn new(env: &[(String, String)], memory_mb: u32) -> Self {
        let (stdout, stderr) = (Capture::new(OUTPUT_CAPACITY), Capture::new(OUTPUT_CAPACITY));
        let wasi = WasiCtx::builder()
            .envs(env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundPolicy::new(Arc::new(Vec::new()), None, None),
            limits: MemoryLimit {
                max_bytes: memory_mb as usize * 1024 * 1024,
                refused: false,
            },
            stdout,
            stderr,
            started: Instant::now(),
            timeout: Duration::from_secs(1),
            timed_out: false,
        }
    }

    /// Readies the state for a request: its own outbound policy (which logs under its id), its
    /// own clock and output.
    fn begin(&mut self, hooks: OutboundPolicy, timeout: Duration) {
        self.hooks = hooks;
        self.started = Instant::now();
        self.timeout = timeout;
        self.timed_out = false;
        self.limits.refused = false;
        self.stdout.take();
        self.stderr.take();
    }
}

/// An answer's body whose end waits for its guest to finish (and be put back among the idle).
struct UntilDone {
    inner: Body,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl http_body::Body for UntilDone {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(rx) = self.done.as_mut() {
                    if std::pin::Pin::new(rx).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.done = None;
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A guest kept for the next request of its function (`instance_reuse` above 1).
struct Guest {
    store: Store<WasmState>,
    proxy: Proxy,
    /// Requests it has served.
    served: u32,
}

/// Refuses memory growth past the function's `memory_mb`, and remembers that it did.
struct MemoryLimit {
    max_bytes: usize,
    refused: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The engine's settings: pooled instances, epoch interruption, copy-on-write memory images;
/// `pagemap_scan` requires the kernel's PAGEMAP_SCAN (and fails the engine without it).
fn engine_config(pagemap_scan: bool) -> Config {
    let mut pooling = PoolingAllocationConfig::default();
    // Room for a few hundred requests in flight at once; past it instantiation fails and the
    // request is refused as no capacity, never served in a shared instance.
    pooling
        .total_component_instances(1000)
        .total_core_instances(4000)
        .total_memories(1000)
        .total_tables(2000)
        .total_stacks(1000)
        .max_memory_size(MAX_WASM_MEMORY_MB as usize * 1024 * 1024)
        .table_keep_resident(16 << 10)
        .async_stack_keep_resident(64 << 10);
    if pagemap_scan {
        pooling
            .pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(1 << 20);
    } else {
        pooling.linear_memory_keep_resident(64 << 10);
    }
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    config
}

/// The node's wasmtime engine, its linker for the `wasi:http/proxy` world, the on-disk cache of
/// compiled components and the components currently loaded.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<WasmState>,
    cache_dir: PathBuf,
    /// Component path -> its compiled artifact, so loading does not read and hash the component
    /// again (tens of milliseconds for an interpreter-sized one).
    prepared: Mutex<HashMap<PathBuf, PathBuf>>,
    loaded: Mutex<HashMap<PathBuf, Weak<ProxyPre<WasmState>>>>,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl WasmEngine {
    pub fn new(cache_dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cache_dir)?;
        // With the kernel's PAGEMAP_SCAN (Linux 6.7 and later) a slot is reset by scanning for
        // the pages the guest touched and copying back only those, up to 1 MiB, instead of
        // `madvise`, which faults every page in again on the next request. Without it, only the
        // first 64 KiB are reset by copying. Measured on the hello component (benches/wasm.rs,
        // one executor thread): 56.7 µs per fresh-instance request without the scan, 34.4 µs
        // with it; without the scan, 1 MiB copied made it 167 µs.
        let engine = match Engine::new(&engine_config(true)) {
            Ok(engine) => {
                tracing::debug!("wasm memory reset with PAGEMAP_SCAN");
                engine
            }
            Err(e) => {
                tracing::info!(error = %format!("{e:#}"), "PAGEMAP_SCAN unavailable; wasm memory is reset with madvise past its first 64 KiB");
                Engine::new(&engine_config(false)).map_err(|e| anyhow::anyhow!("{e:#}"))?
            }
        };
        // All of WASI 0.2, as `wasmtime serve` links it: components built with Rust's std (and
        // other toolchains) import wasi:cli/environment, exit and filesystem beyond the proxy
        // world. Nothing is reachable through them: no preopened directories, and the socket
        // policy of a fresh WasiCtx refuses every address.
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        // One ticker per engine; it ends with the process.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("petrel-wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            })?;
        Ok(Self {
            engine,
            linker,
            cache_dir,
            prepared: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// Where the compiled form of a component lives: by its digest and the engine's settings.
    fn cache_path(&self, component: &[u8]) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let digest = hex::encode(Sha256::digest(component));
        self.cache_dir
            .join(format!("{digest}-{:016x}.cwasm", h.finish()))
    }

    /// Validates a component and compiles it ahead of time (unless its compiled form is cached).
    /// Returns the cached artifact's path, or a message for the uploader that says what is wrong.
    /// Blocking: compiling takes from milliseconds to seconds.
    pub fn prepare(&self, component_path: &Path) -> Result<PathBuf, String> {
        if let Some(cached) = self.prepared.lock().unwrap().get(component_path) {
            if cached.is_file() {
                return Ok(cached.clone());
            }
        }
        let bytes = std::fs::read(component_path)
            .map_err(|e| format!("could not read {}: {e}", component_path.display()))?;
        let cached = self.cache_path(&bytes);
        if !cached.is_file() {
            self.compile(&bytes, &cached)?;
        }
        self.prepared
            .lock()
            .unwrap()
            .insert(component_path.to_owned(), cached.clone());
        Ok(cached)
    }

    fn compile(&self, bytes: &[u8], cached: &Path) -> Result<(), String> {
        if !bytes.starts_with(b"\0asm") {
            return Err("the handler is not a WebAssembly binary (it does not start with \\0asm); point handler at the .wasm component".into());
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err("the handler is a core WebAssembly module, not a component; build for the wasm32-wasip2 target, or wrap the module with `wasm-tools component new`".into());
        }
        let (compiled, component) = petrel_sandbox::compiled::precompile(&self.engine, bytes)
            .map_err(|e| format!("the component does not compile: {}", root(&e)))?;
        self.check_world(&component)?;
        write_atomically(cached, &compiled)
            .map_err(|e| format!("could not cache the compiled component: {e}"))
    }

    fn check_world(
        &self,
        component: &wasmtime::component::Component,
    ) -> Result<ProxyPre<WasmState>, String> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            format!("the component needs an import Petrel does not provide (Petrel provides WASI 0.2 and wasi:http): {e:#}")
        })?;
        ProxyPre::new(pre).map_err(|e| {
            format!(
                "the component is not of the wasi:http/proxy world: it must export wasi:http/incoming-handler ({e:#})"
            )
        })
    }

    /// The pre-instantiated component if it is loaded already (no file access, no blocking).
    pub fn loaded(&self, component_path: &Path) -> Option<Arc<ProxyPre<WasmState>>> {
        let cached = self.prepared.lock().unwrap().get(component_path)?.clone();
        self.loaded.lock().unwrap().get(&cached)?.upgrade()
    }

    /// The pre-instantiated component, shared while any instance of its version holds it.
    pub fn load(&self, component_path: &Path) -> Result<Arc<ProxyPre<WasmState>>, InvokeError> {
        let fail = |m: String| InvokeError::InitFailed {
            error_type: None,
            message: m,
        };
        let cached = self.prepare(component_path).map_err(fail)?;
        let mut loaded = self.loaded.lock().unwrap();
        if let Some(pre) = loaded.get(&cached).and_then(Weak::upgrade) {
            return Ok(pre);
        }
        let component = petrel_sandbox::compiled::load_cached(&self.engine, &cached)
            .map_err(|e| fail(format!("could not load the compiled component: {e:#}")))?;
        let pre = Arc::new(self.check_world(&component).map_err(fail)?);
        loaded.retain(|_, w| w.strong_count() > 0);
        loaded.insert(cached, Arc::downgrade(&pre));
        Ok(pre)
    }
}

/// Writes a compiled component under a temporary name, then renames it into place (a file of
/// the cache is never seen half written, nor rewritten in place).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn root(e: &wasmtime::Error) -> String {
    e.chain()
        .last()
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// A pre-instantiated `wasi:http/proxy` component.
pub type ProxyPreState = ProxyPre<WasmState>;

/// Instantiates the component once and drops the instance, calling nothing. The pooling
/// allocator keeps a slot's memory image for the module it last held, so the first real request
/// finds the image mapped instead of setting it up. Best effort: an error only means no warming.
pub async fn warm_slot(pre: &ProxyPreState, memory_mb: u32) {
    let mut store = Store::new(pre.engine(), WasmState::new(&[], memory_mb));
    store.limiter(|s| &mut s.limits);
    // Instantiation runs no guest code of a proxy component beyond its start functions; a
    // deadline of a few ticks stops anything longer.
    store.set_epoch_deadline(YIELD_EVERY_TICKS * 100);
    store.epoch_deadline_trap();
    let _ = pre.instantiate_async(&mut store).await;
}

/// A wasm instance: a share of one version's loaded component. Each request gets a fresh wasm
/// instance of its own from it, so nothing a request leaves behind is seen by the next, and
/// "stopping the instance" only ever concerns one request.
pub struct WasmInstance {
    id: String,
    spec: InstanceSpec,
    timings: StartTimings,
    pre: Arc<ProxyPre<WasmState>>,
    env: Vec<(String, String)>,
    policy: Arc<Vec<HostPattern>>,
    tls: Option<tokio_rustls::TlsConnector>,
    sink: LogSink,
    source: LogSource,
    /// The guests running now, by invocation id, each with the way to stop it.
    running: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<String>>>>,
    /// Guests that served a request cleanly and may serve another (`instance_reuse` above 1),
    /// the most recently used last; they end with this instance.
    idle: Arc<Mutex<Vec<Guest>>>,
}

impl std::fmt::Debug for WasmInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmInstance")
            .field("id", &self.id)
            .field("function", &self.spec.function)
            .field("version", &self.spec.version)
            .finish()
    }
}

impl WasmInstance {
    /// The component loaded (compiled at deploy, memory-mapped from the cache) and
    /// pre-instantiated, shared by every instance of the version; its guests' outbound
    /// `https://` requests verified with `tls` (refused without it).
    pub async fn start(
        engine: Arc<WasmEngine>,
        spec: InstanceSpec,
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
        sink: LogSink,
        secrets: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, InvokeError> {
        let t0 = Instant::now();
        let id = crate::instance::new_instance_id();
        let path = spec.code_dir.join(&spec.spec.handler);
        let pre = match engine.loaded(&path) {
            Some(pre) => pre,
            None => tokio::task::spawn_blocking(move || engine.load(&path))
                .await
                .map_err(|e| init_failed(format!("loading the component failed: {e}")))??,
        };
        let env = spec
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([
                ("PETREL_NAMESPACE".to_owned(), spec.namespace.clone()),
                ("PETREL_FUNCTION_NAME".to_owned(), spec.function.clone()),
                (
                    "PETREL_FUNCTION_VERSION".to_owned(),
                    spec.version.to_string(),
                ),
                (
                    "PETREL_MEMORY_MB".to_owned(),
                    spec.spec.memory_mb.to_string(),
                ),
            ])
            // A component has no files of the host: its secrets are variables only.
            .chain(crate::instance::secret_vars(&secrets))
            .collect();
        let policy = spec
            .spec
            .allowed_outbound_hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(init_failed)?;
        let source = LogSource {
            namespace: spec.namespace.clone(),
            function: spec.function.clone(),
            version: spec.version,
            instance: id.clone(),
        };
        sink.emit(source.line(
            "platform",
            None,
            format!("component loaded in {} µs", t0.elapsed().as_micros()),
        ));
        Ok(Self {
            id,
            spec,
            timings: StartTimings {
                start: t0.elapsed(),
                init: Duration::ZERO,
            },
            pre,
            env,
            policy: Arc::new(policy),
            tls: tls.map(tokio_rustls::TlsConnector::from),
            sink,
            source,
            running: Arc::default(),
            idle: Arc::default(),
        })
    }

    /// Stops the guest serving invocation `id` (it was cancelled), wherever it is, its response
    /// sent or not: the request ends with [`InvokeError::Stopped`] and `why`. Each request has
    /// an instance of its own, so no other request is touched. False when no such guest runs.
    fn stop(&self, id: &str, why: &str) -> bool {
        let stop = self.running.lock().unwrap().remove(id);
        stop.is_some_and(|tx| tx.send(why.to_owned()).is_ok())
    }

    /// Serves one request in a fresh instance, or in one kept from an earlier request when the
    /// function allows `instance_reuse`. The response head comes back as soon as the guest sets
    /// it; the guest keeps running (streaming its body) in a task of its own, and its output goes
    /// to the logs when it ends. A guest that fails in any way (a trap, its timeout, memory
    /// refused, a stop) is dropped, never reused.
    pub async fn serve(
        &self,
        req: http::Request<Body>,
        timeout: Duration,
        invocation: &str,
    ) -> Result<http::Response<Body>, InvokeError> {
        let (sink, source) = (&self.sink, &self.source);
        let reuse = self.spec.spec.instance_reuse;
        let kept = if reuse > 1 {
            self.idle.lock().unwrap().pop()
        } else {
            None
        };
        let (mut store, proxy, served) = match kept {
            Some(g) => (g.store, Some(g.proxy), g.served),
            None => (self.new_store(), None, 0),
        };
        store.data_mut().begin(
            OutboundPolicy::new(
                self.policy.clone(),
                Some((sink.clone(), source.clone(), invocation.to_owned())),
                self.tls.clone(),
            ),
            timeout,
        );
        store.set_epoch_deadline(YIELD_EVERY_TICKS);

        let mut req = req;
        // wasi:http hands a component its request's authority. An event Petrel POSTs itself (a
        // trigger's batch, an async event) names none: the component sees `localhost`.
        if req.uri().authority().is_none() && !req.headers().contains_key(http::header::HOST) {
            req.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let req = req.map(|b| b.map_err(|_| wasmtime_wasi_http::Error::HttpRequestBodySize(None)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| {
                InvokeError::BadResponse(format!(
                    "the request could not be handed to the component: {}",
                    root(&e)
                ))
            })?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| InvokeError::BadResponse(root(&e)))?;
        let pre = self.pre.clone();
        let (sink, source, id) = (sink.clone(), source.clone(), invocation.to_owned());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<String>();
        self.running.lock().unwrap().insert(id.clone(), stop_tx);
        let running = self.running.clone();
        let idle = (reuse > 1).then(|| (self.idle.clone(), self.spec.spec.concurrency as usize));
        // A reused guest's answer ends when the guest is done with it, not before.
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let guest = async {
                let proxy = match proxy {
                    Some(p) => p,
                    None => pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, out)
                    .await?;
                Ok(proxy)
            };
            // Stopping drops the guest where it is (running, or waiting on I/O).
            let result = tokio::select! {
                r = guest => Ok(r),
                Ok(why) = stop_rx => Err(why),
            };
            running.lock().unwrap().remove(&id);
            let s = store.data();
            let (proxy, outcome) = match result {
                Ok(Ok(proxy)) => (Some(proxy), Ok(())),
                Ok(Err(e)) => (
                    None,
                    classify(
                        e,
                        s.timed_out,
                        s.limits.refused,
                        s.timeout,
                        &s.stderr.contents(),
                    ),
                ),
                Err(why) => (None, Err(InvokeError::Stopped(why))),
            };
            for (stream, pipe) in [("stdout", &s.stdout), ("stderr", &s.stderr)] {
                let text = pipe.take();
                for line in String::from_utf8_lossy(&text).lines() {
                    sink.emit(source.line(stream, Some(id.clone()), line.to_owned()));
                }
            }
            // Kept only after a clean answer, and while it has requests left; back among the idle
            // before its answer ends, so that the caller's next request finds it.
            if let (Some(proxy), Some((idle, keep))) = (proxy, idle) {
                if served + 1 < reuse {
                    let mut idle = idle.lock().unwrap();
                    if idle.len() < keep {
                        idle.push(Guest {
                            store,
                            proxy,
                            served: served + 1,
                        });
                    }
                }
            }
            drop(finished_tx);
            let _ = done_tx.send(outcome);
        });

        match rx.await {
            Ok(Ok(resp)) => Ok(resp.map(|b| {
                let b = Body::new(b.map_err(axum::Error::new));
                if reuse > 1 {
                    Body::new(UntilDone {
                        inner: b,
                        done: Some(finished_rx),
                    })
                } else {
                    b
                }
            })),
            Ok(Err(code)) => Err(InvokeError::BadResponse(format!(
                "the component answered with the error {code:?}"
            ))),
            // The guest ended (or trapped) without setting a response.
            Err(_) => match done_rx.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(InvokeError::BadResponse(
                    "the component returned without setting a response".into(),
                )),
                Err(_) => Err(InvokeError::Crashed(
                    "the component's task ended unexpectedly".into(),
                )),
            },
        }
    }

    /// A store for a new guest, with its limits and its timeout's check.
    fn new_store(&self) -> Store<WasmState> {
        let state = WasmState::new(&self.env, self.spec.spec.memory_mb);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            if s.started.elapsed() >= s.timeout {
                s.timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(YIELD_EVERY_TICKS))
        });
        store
    }
}

impl Instance for WasmInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    fn start_timings(&self) -> StartTimings {
        self.timings
    }

    fn is_alive(&self) -> bool {
        true
    }

    /// Nothing runs between requests: the guests kept for reuse are dropped.
    fn kill(&self) {
        self.idle.lock().unwrap().clear();
    }

    fn stop_invocation(&self, id: &str, why: &str) -> bool {
        self.stop(id, why)
    }

    fn log_platform(&self, invocation: Option<&str>, message: &str) {
        self.sink.emit(self.source.line(
            "platform",
            invocation.map(str::to_owned),
            message.to_owned(),
        ));
    }

    fn protocol(&self) -> Protocol<'_> {
        Protocol::Http(self)
    }
}

impl HttpInstance for WasmInstance {
    fn handle<'a>(
        &'a self,
        id: &'a str,
        req: http::Request<Body>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<http::Response<Body>, InvokeError>> {
        Box::pin(self.serve(req, timeout, id))
    }
}

/// What a finished guest call means for the caller.
fn classify(
    e: wasmtime::Error,
    timed_out: bool,
    memory_refused: bool,
    timeout: Duration,
    stderr: &[u8],
) -> Result<(), InvokeError> {
    if timed_out {
        return Err(InvokeError::Timeout(timeout));
    }
    let tail = stderr_tail(stderr);
    if memory_refused {
        return Err(InvokeError::OutOfMemory(format!(
            "the component tried to grow its memory past memory_mb and stopped: {}{tail}",
            root(&e)
        )));
    }
    let what = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("the component trapped: {trap}"),
        None => format!("the component failed: {}", root(&e)),
    };
    Err(InvokeError::Crashed(format!("{what}{tail}")))
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(20);
    format!("; last lines of stderr:\n{}", lines[start..].join("\n"))
}
