//! An instance: a started process plus the endpoint Petrel talks to it through.

use crate::cgroup::{Cgroups, InstanceCgroup};
use crate::lambda::{self, InitState, Pending};
use crate::logs::{Attribution, LogSink, LogSource};
use crate::prewarm::{Kind as StandbyKind, Prewarm, PrewarmConfig};
use crate::process::Process;
use crate::sandbox::Sandbox;
use crate::wasm::{WasmEngine, WasmFunction};
use crate::{http as http_ep, shims, Body};
use bytes::Bytes;
use http::{Request, Response};
use petrel_core::{FunctionSpec, Network, Runtime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Why an invocation (or a start) did not produce the function's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("the function did not answer within its timeout of {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Crashed(String),
    #[error("the function failed to start: {message}")]
    InitFailed {
        error_type: Option<String>,
        message: String,
    },
    #[error("{0}")]
    OutOfMemory(String),
    #[error("the function's response is larger than the limit of {0} bytes")]
    ResponseTooLarge(usize),
    #[error("the function answered in a way Petrel cannot use: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Unsupported(String),
    /// Petrel stopped the instance on purpose (its invocation was cancelled).
    #[error("{0}")]
    Stopped(String),
}

/// A Lambda invocation's result: the handler's return value, the error it raised, or a response
/// it streams.
#[derive(Debug)]
pub enum LambdaOutcome {
    Success(Bytes),
    FunctionError {
        error_type: String,
        body: Bytes,
    },
    /// A response sent in streaming mode, passed on as it comes: the HTTP head its prelude gave
    /// (`awslambda.HttpResponseStream`), if any, and the body. An error the function reports
    /// after the first bytes, its deadline, or a size past the limit end the body with an error.
    Streamed {
        head: Option<StreamHead>,
        body: Body,
    },
}

/// The HTTP head a streamed response starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub cookies: Vec<String>,
}

/// One invocation for a Lambda-protocol instance.
#[derive(Debug, Clone)]
pub struct LambdaRequest {
    pub id: String,
    pub event: Bytes,
    pub timeout: Duration,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
    /// `Lambda-Runtime-Trace-Id` (X-Ray form); a new one when `None`.
    pub trace_id: Option<String>,
}

/// What an instance runs: a version of a function and where its code is unpacked.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub namespace: String,
    pub function: String,
    pub version: u32,
    pub spec: Arc<FunctionSpec>,
    pub code_dir: PathBuf,
}

/// Node-wide settings every instance shares: where shims and scratch space live, where logs go.
#[derive(Debug, Clone)]
pub struct RuntimeEnv {
    inner: Arc<EnvInner>,
}

#[derive(Debug)]
struct EnvInner {
    prewarm: Arc<Prewarm>,
    cgroups: Cgroups,
    sandbox: Arc<Sandbox>,
    /// `PATH` inside the sandbox: the runtimes' own directories, then the system's.
    sandbox_path: String,
    wasm: std::sync::OnceLock<Result<Arc<WasmEngine>, String>>,
    wasm_cache: PathBuf,
    shims_dir: PathBuf,
    scratch_root: PathBuf,
    pycache: PathBuf,
    sink: LogSink,
    host_path: String,
    payload_limit: usize,
    /// TLS for wasm guests' outbound `https://` requests; unset: they are refused.
    outbound_tls: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// Shortest time an instance is given to start, whatever its invocation timeout.
const MIN_INIT_TIMEOUT: Duration = Duration::from_secs(10);

impl RuntimeEnv {
    /// Installs the shims under `data_dir` and prepares scratch space.
    pub fn new(
        data_dir: &Path,
        sink: LogSink,
        payload_limit: usize,
        mut prewarm: PrewarmConfig,
        instance_limits: bool,
        sandbox: bool,
    ) -> std::io::Result<Self> {
        let shims_dir = shims::install(data_dir)?;
        let scratch_root = data_dir.join("scratch");
        // Scratch space of instances from an earlier run is garbage now.
        let _ = std::fs::remove_dir_all(&scratch_root);
        std::fs::create_dir_all(&scratch_root)?;
        let pycache = data_dir.join("cache").join("pycache");
        std::fs::create_dir_all(&pycache)?;
        let host_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let (sandbox, sandbox_path) = if sandbox {
            let runtimes = crate::sandbox::runtime_prefixes(&host_path);
            let mut sb = Sandbox::new(&runtimes, &shims_dir, &data_dir.join("sandbox"));
            if sb.enabled() {
                if let Err(e) = probe_sandbox(&sb, &scratch_root) {
                    sb.disable(e);
                }
            }
            let path = runtimes
                .iter()
                .map(|p| p.join("bin").display().to_string())
                .chain(["/usr/local/bin".into(), "/usr/bin".into(), "/bin".into()])
                .collect::<Vec<_>>()
                .join(":");
            (sb, path)
        } else {
            (
                Sandbox::off("not turned on (--no-sandbox, or sandbox = false)"),
                String::new(),
            )
        };
        if sandbox.in_user_namespace() && prewarm.python_fork_server {
            tracing::info!("the Python fork server is off under the sandbox in a user namespace: its children cannot make their own network yet");
            prewarm.python_fork_server = false;
        }
        if sandbox.in_user_namespace()
            && (prewarm.node_standby > 0
                || prewarm.python_standby > 0
                || prewarm.process_standby > 0)
        {
            // A standby process is given its code by a mount into its namespace, which takes
            // root.
            tracing::info!("standby processes are off under the sandbox in a user namespace: giving one its code needs root");
            prewarm.node_standby = 0;
            prewarm.python_standby = 0;
            prewarm.process_standby = 0;
        }
        let sandbox = Arc::new(sandbox);
        let cgroups = if instance_limits {
            Cgroups::detect()
        } else {
            Cgroups::off("turned off (--no-instance-limits, or instance_limits = false)")
        };
        let sandboxed_standby = (sandbox.enabled() && !sandbox.in_user_namespace()).then(|| {
            crate::prewarm::SandboxedStandby {
                sandbox: sandbox.clone(),
                path: sandbox_path.clone(),
                roots: scratch_root.clone(),
                cgroups: cgroups.clone(),
            }
        });
        let prewarm = Arc::new(Prewarm::new(
            prewarm,
            shims_dir.clone(),
            host_path.clone(),
            pycache.clone(),
            sink.clone(),
            sandboxed_standby,
        ));
        Ok(Self {
            inner: Arc::new(EnvInner {
                prewarm,
                cgroups,
                sandbox,
                sandbox_path,
                wasm: std::sync::OnceLock::new(),
                wasm_cache: data_dir.join("cache").join("wasm"),
                shims_dir,
                scratch_root,
                pycache,
                sink,
                host_path,
                payload_limit,
                outbound_tls: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn log_sink(&self) -> &LogSink {
        &self.inner.sink
    }

    pub fn payload_limit(&self) -> usize {
        self.inner.payload_limit
    }

    /// Lets wasm guests make `https://` requests (to their `allowed_outbound_hosts`), verified
    /// with this configuration. Set once, at start; later calls change nothing.
    pub fn set_outbound_tls(&self, config: Arc<tokio_rustls::rustls::ClientConfig>) {
        let _ = self.inner.outbound_tls.set(config);
    }

    /// Starts what is configured to be kept warm (the Python fork server, standby Node
    /// processes); call once at server start.
    pub fn prewarm(&self) {
        self.inner.prewarm.fill();
    }

    /// Which resource limits are on, in one line (for the start-up log).
    pub fn limits_status(&self) -> &str {
        self.inner.cgroups.status()
    }

    /// The prewarm settings in effect (the sandbox turns standby processes off).
    pub fn prewarm_config(&self) -> PrewarmConfig {
        self.inner.prewarm.config()
    }

    /// Whether the process sandbox is on, and its layers, in one line (for the start-up log).
    pub fn sandbox_status(&self) -> &str {
        self.inner.sandbox.status()
    }

    /// Stops the prewarmed processes (the fork server, standby Node processes); at shutdown.
    pub fn stop_prewarmed(&self) {
        self.inner.prewarm.stop();
    }

    /// Removes this server's cgroups; at shutdown, after every instance has stopped.
    pub fn remove_cgroups(&self) {
        self.inner.cgroups.remove();
    }

    /// Starts an instance's process: forked from the Python fork server, a standby Node process
    /// handed its function, or a plain start of `cmd`. Says which.
    async fn start_process(
        &self,
        runtime: Runtime,
        mut cmd: Command,
        cgroup: Option<&InstanceCgroup>,
        plan: Option<crate::sandbox::Plan>,
        source: &LogSource,
    ) -> (std::io::Result<Process>, Arc<Attribution>, &'static str) {
        let prewarm = &self.inner.prewarm;
        match runtime {
            Runtime::Python3 => {
                let attribution = Arc::new(Attribution::default());
                let cell = Arc::new(std::sync::RwLock::new(source.clone()));
                match prewarm
                    .fork_python(&cmd, cgroup, plan.as_ref(), cell, attribution.clone())
                    .await
                {
                    Ok(p) if plan.is_some() => {
                        return (
                            Ok(p),
                            attribution,
                            "forked from the Python fork server into its sandbox",
                        )
                    }
                    Ok(p) => return (Ok(p), attribution, "forked from the Python fork server"),
                    Err(e) if prewarm.zygote().is_some() => {
                        tracing::warn!(error = %e, "fork server failed; starting python3 plainly")
                    }
                    Err(_) => {}
                }
                if let Some((p, a)) = prewarm
                    .take(StandbyKind::Python, &cmd, cgroup, source.clone())
                    .await
                {
                    return (Ok(p), a, "a standby Python process");
                }
            }
            // Standby processes start before their function is known: they cannot be given its
            // root, so sandboxed instances never take one.
            _ if plan.is_some() => {}
            Runtime::Nodejs => {
                if let Some((p, a)) = prewarm
                    .take(StandbyKind::Node, &cmd, cgroup, source.clone())
                    .await
                {
                    return (Ok(p), a, "a standby Node process");
                }
            }
            _ => {}
        }
        let attribution = Arc::new(Attribution::default());
        let cell = Arc::new(std::sync::RwLock::new(source.clone()));
        let procs = match cgroup.map(InstanceCgroup::open_procs).transpose() {
            Ok(fds) => fds.unwrap_or_default(),
            Err(e) => return (Err(e), attribution, "a new process"),
        };
        crate::cgroup::confine_before_exec(&mut cmd, procs);
        let sink = self.inner.sink.clone();
        let mut plan = plan;
        let own_pid_ns = plan
            .as_mut()
            .is_some_and(crate::sandbox::Plan::spawner_makes_pid_ns);
        let p = match plan {
            Some(plan) if own_pid_ns => {
                plan.apply(cmd.as_std_mut());
                let a = attribution.clone();
                crate::sandbox::in_new_pid_ns(move || Process::spawn(cmd, cell, sink, a))
            }
            Some(plan) => {
                plan.apply(cmd.as_std_mut());
                Process::spawn(cmd, cell, sink, attribution.clone())
            }
            None => {
                let p = Process::spawn(cmd, cell, sink, attribution.clone());
                return (p, attribution, "a new process");
            }
        };
        (p, attribution, "a new sandboxed process")
    }

    /// Loads a wasm version's compiled component ahead of its first request (at deploy), so
    /// that request's cold start is an instance's creation only; `None` for other runtimes or
    /// when loading fails (the first request then loads it and reports why).
    pub async fn preload(&self, spec: &InstanceSpec) -> Option<Preloaded> {
        if spec.spec.runtime != Runtime::Wasm {
            return None;
        }
        let engine = self.wasm().ok()?.clone();
        let path = spec.code_dir.join(&spec.spec.handler);
        let pre = tokio::task::spawn_blocking(move || engine.load(&path))
            .await
            .ok()?
            .ok()?;
        crate::wasm::warm_slot(&pre, spec.spec.memory_mb).await;
        Some(Preloaded(pre))
    }

    /// The wasmtime engine, created on first use (servers that run no wasm never pay for it).
    pub fn wasm(&self) -> Result<&Arc<WasmEngine>, String> {
        self.inner
            .wasm
            .get_or_init(|| {
                WasmEngine::new(self.inner.wasm_cache.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("the wasm engine could not start: {e:#}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// A component kept loaded while its holder lives (see [`RuntimeEnv::preload`]).
pub struct Preloaded(#[allow(dead_code)] Arc<crate::wasm::ProxyPreState>);

impl std::fmt::Debug for Preloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Preloaded")
    }
}

enum Kind {
    Lambda(lambda::Endpoint),
    Http(http_ep::Endpoint),
    Wasm(WasmFunction),
}

/// How an instance's start was spent: making its process (or loading its component), then its
/// own initialisation until it was ready for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartTimings {
    pub start: Duration,
    pub init: Duration,
}

/// A running instance. Dropping it kills its process group and removes its scratch space.
/// A wasm "instance" has no process: it is a share of the loaded component, and every request
/// gets a fresh wasm instance of its own.
pub struct Instance {
    id: String,
    /// Dropped after the process is killed (fields drop after `Drop::drop`).
    cgroup: Option<InstanceCgroup>,
    timings: StartTimings,
    spec: InstanceSpec,
    kind: Kind,
    process: Option<Process>,
    attribution: Arc<Attribution>,
    scratch: PathBuf,
    env: RuntimeEnv,
    /// Why Petrel stopped the instance on purpose, if it did.
    stopped: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("function", &self.spec.function)
            .field("version", &self.spec.version)
            .field("pid", &self.process.as_ref().map(Process::pid))
            .finish()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(p) = &self.process {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn init_failed(message: impl Into<String>) -> InvokeError {
    InvokeError::InitFailed {
        error_type: None,
        message: message.into(),
    }
}

impl Instance {
    /// Starts an instance and waits until it is ready to take invocations (its first `next`
    /// call, or its port accepting connections).
    pub async fn start(env: &RuntimeEnv, spec: InstanceSpec) -> Result<Self, InvokeError> {
        let t0 = Instant::now();
        let id = new_instance_id();
        let fs = &spec.spec;
        if fs.runtime == Runtime::Wasm {
            return Self::start_wasm(env, spec, id, t0).await;
        }
        let scratch = env.inner.scratch_root.join(&id);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| init_failed(format!("could not create scratch space: {e}")))?;

        let (program, mut cmd) = match fs.runtime {
            Runtime::Python3 => {
                let mut c = Command::new("python3");
                c.arg("-u")
                    .arg(env.inner.shims_dir.join(shims::PYTHON_SHIM_PATH));
                ("python3", c)
            }
            Runtime::Nodejs => {
                let mut c = Command::new("node");
                c.arg(env.inner.shims_dir.join(shims::NODE_SHIM_PATH));
                ("node", c)
            }
            Runtime::Provided => {
                let bootstrap = spec.code_dir.join("bootstrap");
                if !is_executable(&bootstrap) {
                    return Err(init_failed(
                        "runtime provided needs an executable file named bootstrap at the root of the package (chmod +x bootstrap)",
                    ));
                }
                if env.inner.sandbox.enabled() {
                    // Where the sandbox shows the code.
                    let inside = Path::new(crate::sandbox::TASK_ROOT).join("bootstrap");
                    ("bootstrap", Command::new(inside))
                } else {
                    ("bootstrap", Command::new(bootstrap))
                }
            }
            Runtime::Http => {
                let mut c = Command::new("/bin/sh");
                // A simple command replaces the shell, so signals reach the server itself; a
                // compound one keeps the shell (the process group is killed as a whole anyway).
                let compound = fs.handler.contains([';', '&', '|', '\n', '(', '`', '$']);
                c.arg("-c").arg(if compound {
                    fs.handler.clone()
                } else {
                    format!("exec {}", fs.handler)
                });
                ("the handler command", c)
            }
            Runtime::Wasm => unreachable!("wasm instances start in start_wasm"),
        };
        let sandboxed = env.inner.sandbox.enabled();
        let (path, home) = if sandboxed {
            (env.inner.sandbox_path.as_str(), Path::new("/tmp"))
        } else {
            (env.inner.host_path.as_str(), scratch.as_path())
        };
        cmd.current_dir(&spec.code_dir)
            .env_clear()
            .env("PATH", path)
            .env("LANG", "C.UTF-8")
            .env("HOME", home)
            .env("TMPDIR", home)
            .env("TZ", ":UTC")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .envs(&fs.env)
            .env("PETREL_NAMESPACE", &spec.namespace)
            .env("PETREL_FUNCTION_NAME", &spec.function)
            .env("PETREL_FUNCTION_VERSION", spec.version.to_string())
            .env("PETREL_MEMORY_MB", fs.memory_mb.to_string())
            .env("PETREL_CONCURRENCY", fs.concurrency.to_string())
            .env("PETREL_INSTANCE_ID", &id);

        let lambda = fs.runtime.speaks_lambda();
        let task_root = if sandboxed {
            PathBuf::from(crate::sandbox::TASK_ROOT)
        } else {
            spec.code_dir.clone()
        };
        if lambda {
            cmd.env("_HANDLER", &fs.handler)
                .env("LAMBDA_TASK_ROOT", &task_root)
                .env("LAMBDA_RUNTIME_DIR", &env.inner.shims_dir)
                .env("AWS_LAMBDA_FUNCTION_NAME", &spec.function)
                .env("AWS_LAMBDA_FUNCTION_VERSION", spec.version.to_string())
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", fs.memory_mb.to_string())
                .env(
                    "AWS_LAMBDA_LOG_GROUP_NAME",
                    format!("/petrel/{}/{}", spec.namespace, spec.function),
                )
                .env("AWS_LAMBDA_LOG_STREAM_NAME", &id)
                .env("AWS_EXECUTION_ENV", format!("Petrel_{}", fs.runtime));
            if sandboxed {
                // The shared bytecode cache would be a channel between functions.
                cmd.env("PYTHONDONTWRITEBYTECODE", "1");
            } else {
                cmd.env("PYTHONPYCACHEPREFIX", &env.inner.pycache);
            }
        }
        let source = LogSource {
            namespace: spec.namespace.clone(),
            function: spec.function.clone(),
            version: spec.version,
            instance: id.clone(),
        };
        let mut cgroup = None;

        // An instance of its own network: the Runtime API listener is bound in it before the
        // instance starts, and Petrel reaches an `http` instance's port through it. A standby
        // process in its sandbox comes with its network, the listener already bound.
        let own_net = sandboxed && fs.network == Network::None;
        let mut scratch = scratch;
        let mut net = None;
        let mut started = None;
        if own_net && fs.tmp_mb == petrel_core::manifest::DEFAULT_TMP_MB {
            if lambda {
                cmd.env("AWS_LAMBDA_RUNTIME_API", crate::sandbox::RUNTIME_API_ADDR);
            } else {
                cmd.env("PORT", crate::sandbox::HTTP_PORT.to_string());
            }
            if let Some(sb) = env
                .inner
                .prewarm
                .take_sandboxed(fs.runtime, &cmd, &spec.code_dir, fs.memory_mb, &source)
                .await
            {
                net = Some(sb.net);
                cgroup = sb.cgroup;
                if let Some(cg) = cgroup.as_mut() {
                    // Named after its instance, as every instance's group is.
                    if let Err(e) = cg.rename(&id) {
                        tracing::warn!(error = %e, "could not rename a standby's cgroup");
                    }
                }
                let _ = std::fs::remove_dir(&scratch);
                scratch = sb.root;
                started = Some((
                    Ok(sb.process),
                    sb.attribution,
                    "a standby process, given its code in its sandbox",
                ));
            }
        }
        if started.is_none() {
            cgroup =
                env.inner.cgroups.create(&id, fs.memory_mb).map_err(|e| {
                    init_failed(format!("could not create the instance's cgroup: {e}"))
                })?;
        }
        if own_net && net.is_none() {
            net = Some(env.inner.sandbox.new_net(lambda).map_err(|e| {
                init_failed(format!("could not create the instance's network: {e}"))
            })?);
        }
        let plan = if sandboxed && started.is_none() {
            Some(
                env.inner
                    .sandbox
                    .plan(&scratch, Some(&spec.code_dir), fs.tmp_mb, net.as_ref())
                    .map_err(|e| init_failed(format!("could not prepare the sandbox: {e}")))?,
            )
        } else {
            None
        };
        let mut listener_later = None;
        let kind = if lambda {
            let arn = format!(
                "arn:aws:lambda:us-east-1:000000000000:function:{}:{}",
                spec.function, spec.version
            );
            let listen = match net.as_mut() {
                Some(n) if n.listener_comes_later() => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    listener_later = Some(tx);
                    lambda::Listen::Later(rx)
                }
                Some(n) => match n.listener.take() {
                    Some(l) => lambda::Listen::Now(l),
                    None => lambda::Listen::Host,
                },
                None => lambda::Listen::Host,
            };
            let ep = lambda::Endpoint::bind(arn, env.inner.payload_limit, listen)
                .await
                .map_err(|e| {
                    init_failed(format!("could not open the Runtime API endpoint: {e}"))
                })?;
            cmd.env("AWS_LAMBDA_RUNTIME_API", ep.addr.to_string());
            Kind::Lambda(ep)
        } else {
            let port = match &net {
                Some(_) => crate::sandbox::HTTP_PORT,
                None => http_ep::pick_port()
                    .map_err(|e| init_failed(format!("could not find a free port: {e}")))?,
            };
            cmd.env("PORT", port.to_string());
            Kind::Http(http_ep::Endpoint::new(port, net.take().map(Arc::new)))
        };

        let (process, attribution, how) = match started {
            Some(s) => s,
            None => {
                env.start_process(fs.runtime, cmd, cgroup.as_ref(), plan, &source)
                    .await
            }
        };
        let process = process.map_err(|e| init_failed(format!("could not run {program}: {e}")))?;
        if let (Some(tx), Some(n)) = (listener_later, net.as_mut()) {
            // In a user namespace the instance made its network, and sent the listener first.
            match n.take_listener() {
                Ok(Some(l)) => {
                    let _ = tx.send(l);
                }
                Ok(None) => {}
                Err(e) => {
                    process.kill();
                    return Err(init_failed(format!(
                        "could not take the Runtime API listener from the instance's network: {e}"
                    )));
                }
            }
        }
        let started = t0.elapsed();

        let mut instance = Self {
            id,
            cgroup,
            timings: StartTimings {
                start: started,
                init: Duration::ZERO,
            },
            spec,
            kind,
            process: Some(process),
            attribution,
            scratch,
            env: env.clone(),
            stopped: std::sync::Mutex::new(None),
        };
        let init_timeout = instance.spec.spec.timeout().max(MIN_INIT_TIMEOUT);
        let process = instance.proc();
        tokio::select! {
            r = instance.wait_ready() => r?,
            how = process.exited() => {
                return Err(match instance.ended(&how) {
                    InvokeError::Crashed(report) => init_failed(report),
                    oom => oom,
                });
            }
            _ = tokio::time::sleep(init_timeout) => {
                process.kill();
                return Err(init_failed(format!(
                    "the instance did not become ready within {init_timeout:?}"
                )));
            }
        }
        instance.timings.init = t0.elapsed().saturating_sub(started);
        env.inner.sink.emit(source.line(
            "platform",
            None,
            format!(
                "instance started in {} ms ({how}; process {} ms, init {} ms)",
                t0.elapsed().as_millis(),
                instance.timings.start.as_millis(),
                instance.timings.init.as_millis()
            ),
        ));
        Ok(instance)
    }

    /// A wasm instance: the component loaded (compiled at deploy, memory-mapped from the cache)
    /// and pre-instantiated, shared by every instance of the version.
    async fn start_wasm(
        env: &RuntimeEnv,
        spec: InstanceSpec,
        id: String,
        t0: Instant,
    ) -> Result<Self, InvokeError> {
        let engine = env.wasm().map_err(init_failed)?.clone();
        let path = spec.code_dir.join(&spec.spec.handler);
        let pre = match engine.loaded(&path) {
            Some(pre) => pre,
            None => tokio::task::spawn_blocking(move || engine.load(&path))
                .await
                .map_err(|e| init_failed(format!("loading the component failed: {e}")))??,
        };
        let wasm_env = spec
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
            .collect();
        let function = WasmFunction::new(pre, spec.spec.clone(), wasm_env)?.with_tls(
            env.inner
                .outbound_tls
                .get()
                .map(|c| tokio_rustls::TlsConnector::from(c.clone())),
        );
        let source = LogSource {
            namespace: spec.namespace.clone(),
            function: spec.function.clone(),
            version: spec.version,
            instance: id.clone(),
        };
        env.inner.sink.emit(source.line(
            "platform",
            None,
            format!("component loaded in {} µs", t0.elapsed().as_micros()),
        ));
        Ok(Self {
            cgroup: None,
            scratch: env.inner.scratch_root.join(&id),
            timings: StartTimings {
                start: t0.elapsed(),
                init: Duration::ZERO,
            },
            id,
            spec,
            kind: Kind::Wasm(function),
            process: None,
            attribution: Arc::new(Attribution::default()),
            env: env.clone(),
            stopped: std::sync::Mutex::new(None),
        })
    }

    async fn wait_ready(&self) -> Result<(), InvokeError> {
        match &self.kind {
            Kind::Lambda(ep) => {
                let mut rx = ep.init_state();
                let state = rx
                    .wait_for(|s| *s != InitState::Starting)
                    .await
                    .map(|s| s.clone())
                    .unwrap_or(InitState::Starting);
                match state {
                    InitState::Ready => Ok(()),
                    InitState::Failed {
                        error_type,
                        message,
                    } => {
                        self.proc().kill();
                        Err(InvokeError::InitFailed {
                            message: format!("{error_type}: {message}"),
                            error_type: Some(error_type),
                        })
                    }
                    InitState::Starting => Err(init_failed("the Runtime API endpoint closed")),
                }
            }
            Kind::Wasm(_) => Ok(()),
            Kind::Http(ep) => {
                // A loopback connect costs microseconds; polling often keeps the start short.
                let mut wait = Duration::from_millis(1);
                while !ep.accepts().await {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(5));
                }
                Ok(())
            }
        }
    }

    /// Why the instance's process ended: killed for passing its memory limit, or a crash
    /// (with how it ended and its last lines of stderr).
    fn ended(&self, how: &str) -> InvokeError {
        if let Some(why) = self.stopped.lock().unwrap().clone() {
            return InvokeError::Stopped(why);
        }
        match &self.cgroup {
            Some(cg) if cg.oom_killed() => InvokeError::OutOfMemory(format!(
                "it used more than its memory_mb of {} MiB and the kernel stopped it",
                self.spec.spec.memory_mb
            )),
            _ => InvokeError::Crashed(self.proc().exit_report(how)),
        }
    }

    /// How this instance's start was spent.
    pub fn start_timings(&self) -> StartTimings {
        self.timings
    }

    /// Writes a platform line to this instance's log.
    pub fn log_platform(&self, message: &str) {
        let source = LogSource {
            namespace: self.spec.namespace.clone(),
            function: self.spec.function.clone(),
            version: self.spec.version,
            instance: self.id.clone(),
        };
        self.env
            .inner
            .sink
            .emit(source.line("platform", None, message.to_owned()));
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// Whether the process is still running.
    pub fn is_alive(&self) -> bool {
        self.process.as_ref().is_none_or(|p| !p.has_exited())
    }

    /// Kills the instance's whole process group (a wasm instance has none: each request's
    /// instance ends with its request).
    pub fn kill(&self) {
        if let Some(p) = &self.process {
            p.kill();
        }
    }

    /// Stops invocation `id` because it should not go on (it was cancelled): it ends with
    /// [`InvokeError::Stopped`] and `why`. A wasm guest is stopped alone (each request has its
    /// own); a process instance is killed, so only when `id` is the one invocation it runs
    /// (others would go with it): false otherwise, or when `id` does not run here.
    pub fn stop_invocation(&self, id: &str, why: &str) -> bool {
        if let Kind::Wasm(w) = &self.kind {
            return w.stop(id, why);
        }
        if self.process.is_none() || self.attribution.running() != [id] {
            return false;
        }
        *self.stopped.lock().unwrap() = Some(why.to_owned());
        self.log_platform(&format!("stopping the instance: {why}"));
        self.kill();
        true
    }

    /// The process of a process-kind instance.
    fn proc(&self) -> &Process {
        self.process
            .as_ref()
            .expect("lambda and http instances have a process")
    }

    /// Runs one Lambda invocation. On timeout the instance is killed.
    pub async fn invoke_lambda(&self, req: LambdaRequest) -> Result<LambdaOutcome, InvokeError> {
        let Kind::Lambda(ep) = &self.kind else {
            return Err(InvokeError::Unsupported(
                "this instance serves HTTP; proxy a request to it instead".into(),
            ));
        };
        let deadline_ms = crate::logs::now_ms() + req.timeout.as_millis() as i64;
        let id = req.id.clone();
        self.attribution.begin(&id);
        let rx = ep.submit(Pending {
            id: req.id,
            event: req.event,
            deadline_ms,
            trace_id: req.trace_id.unwrap_or_else(new_trace_id),
            client_context: req.client_context,
            cognito_identity: req.cognito_identity,
        });
        let result = tokio::select! {
            r = rx => r.unwrap_or_else(|_| Err(InvokeError::Crashed("the instance stopped".into()))),
            how = self.proc().exited() => Err(self.ended(&how)),
            _ = tokio::time::sleep(req.timeout) => {
                self.proc().kill();
                Err(InvokeError::Timeout(req.timeout))
            }
        };
        if result.is_err() {
            ep.forget(&id);
        }
        self.attribution.end(&id);
        result
    }

    /// Proxies one HTTP request to an `http` instance. The timeout covers the response head; on
    /// timeout the instance is killed.
    pub async fn proxy(
        &self,
        invocation_id: &str,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Body>, InvokeError> {
        let ep = match &self.kind {
            Kind::Http(ep) => ep,
            Kind::Wasm(w) => {
                self.attribution.begin(invocation_id);
                let source = LogSource {
                    namespace: self.spec.namespace.clone(),
                    function: self.spec.function.clone(),
                    version: self.spec.version,
                    instance: self.id.clone(),
                };
                let r = w
                    .handle(req, timeout, invocation_id, self.env.log_sink(), &source)
                    .await;
                self.attribution.end(invocation_id);
                return r;
            }
            Kind::Lambda(_) => {
                return Err(InvokeError::Unsupported(
                    "this instance speaks the Lambda Runtime API; invoke it with an event".into(),
                ))
            }
        };
        self.attribution.begin(invocation_id);
        let result = tokio::select! {
            r = ep.send(req) => match r {
                Ok(mut resp) => {
                    crate::http::strip_hop_by_hop(resp.headers_mut());
                    // Bounded like a Runtime API response: refused whole when its length says
                    // so, else streamed and cut (the stream fails) at the limit.
                    let limit = self.env.inner.payload_limit;
                    let declared = resp
                        .headers()
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    if declared.is_some_and(|n| n > limit as u64) {
                        Err(InvokeError::ResponseTooLarge(limit))
                    } else {
                        Ok(resp.map(|b| Body::new(http_body_util::Limited::new(b, limit))))
                    }
                }
                Err(e) => {
                    // A dropped connection is most often a crash: give the exit a moment to show.
                    match tokio::time::timeout(Duration::from_millis(500), self.proc().exited()).await {
                        Ok(how) => Err(self.ended(&how)),
                        Err(_) => Err(InvokeError::BadResponse(format!("the connection to the function failed ({e})"))),
                    }
                }
            },
            how = self.proc().exited() => Err(self.ended(&how)),
            _ = tokio::time::sleep(timeout) => {
                self.proc().kill();
                Err(InvokeError::Timeout(timeout))
            }
        };
        self.attribution.end(invocation_id);
        result
    }

    /// The node-wide settings this instance was started with.
    pub fn env(&self) -> &RuntimeEnv {
        &self.env
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn new_instance_id() -> String {
    let u = uuid::Uuid::now_v7().simple().to_string();
    format!("i-{}", &u[u.len() - 12..])
}

/// An X-Ray-style trace id, as Lambda runtime clients expect in `Lambda-Runtime-Trace-Id`.
fn new_trace_id() -> String {
    let u = uuid::Uuid::now_v7().simple().to_string();
    let secs = crate::logs::now_ms() / 1000;
    format!(
        "Root=1-{secs:08x}-{};Parent={};Sampled=0",
        &u[8..32],
        &u[16..32]
    )
}

/// Runs a shell through the whole sandbox once, and checks from inside that each layer is on:
/// PID 1 of its own namespace, the unprivileged user with no capabilities, `no_new_privs` and
/// seccomp, loopback only, `/etc/shadow` absent, the root read-only and `/tmp` writable.
fn probe_sandbox(sb: &Sandbox, scratch_root: &Path) -> Result<(), String> {
    const CHECKS: &str = r#"
fail() { echo "$1" >&2; exit 1; }
[ "$$" = 1 ] || fail "not PID 1 of its own PID namespace (pid $$)"
[ "$(id -u)" = 65534 ] || fail "runs as user $(id -u)"
grep -q '^CapEff:[[:space:]]*0*$' /proc/self/status || fail "has capabilities"
grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status || fail "no_new_privs is not set"
grep -q '^Seccomp:[[:space:]]*2' /proc/self/status || fail "no seccomp filter"
[ "$(grep -c : /proc/net/dev)" = 1 ] || fail "sees network interfaces besides loopback"
[ ! -e /etc/shadow ] || fail "sees /etc/shadow"
( : > /probe ) 2>/dev/null && fail "can write to /"
: > /tmp/probe || fail "cannot write to /tmp"
exit 0
"#;
    let root = scratch_root.join("sandbox-probe");
    let code = scratch_root.join("sandbox-probe-code");
    for d in [&root, &code] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let net = sb
        .new_net(false)
        .map_err(|e| format!("network namespace: {e}"))?;
    let plan = sb
        .plan(&root, Some(&code), 1, Some(&net))
        .map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(CHECKS)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&code)
        .stdin(std::process::Stdio::null());
    plan.apply(&mut cmd);
    let out = cmd.output().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir(&root);
    let _ = std::fs::remove_dir(&code);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}
