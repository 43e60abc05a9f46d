//! The node's runtime environment: everything instances share (shims, scratch space, the
//! sandbox, cgroups, prewarmed processes, the wasm engine, where logs go), and the
//! [`Starter`] that makes instances of every kind.

use crate::cgroup::Cgroups;
use crate::error::{init_failed, InvokeError};
use crate::instance::{Instance, InstanceSpec, Preloaded, Starter};
use crate::logs::LogSink;
use crate::prewarm::{Prewarm, PrewarmConfig, SandboxedStandby};
use crate::process::{HttpPort, LambdaApi, ProcessContext, ProcessInstance};
use crate::shims;
use crate::wasm::{WasmEngine, WasmInstance};
use petrel_core::{BoxFuture, Runtime};
use petrel_sandbox::Sandbox;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Node-wide settings every instance shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RuntimeEnv {
    inner: Arc<EnvInner>,
}

#[derive(Debug)]
struct EnvInner {
    process: ProcessContext,
    wasm: OnceLock<Result<Arc<WasmEngine>, String>>,
    wasm_cache: PathBuf,
    /// TLS for wasm guests' outbound `https://` requests; unset: they are refused.
    outbound_tls: OnceLock<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Where the secrets functions list are read from; unset: a function that lists one
    /// cannot start.
    secrets: OnceLock<Arc<dyn crate::instance::SecretSource>>,
}

/// How this node runs instances (from `petrel serve`'s configuration).
#[derive(Debug, Clone, Copy)]
pub struct RuntimeConfig {
    /// Largest request or response payload, in bytes.
    pub payload_limit: usize,
    pub prewarm: PrewarmConfig,
    /// Per-instance cgroups (memory, pids, cpu).
    pub instance_limits: bool,
    pub sandbox: bool,
}

impl RuntimeEnv {
    /// Installs the shims under `data_dir`, prepares scratch space, and probes the sandbox.
    pub fn new(data_dir: &Path, sink: LogSink, config: RuntimeConfig) -> std::io::Result<Self> {
        let mut prewarm = config.prewarm;
        let shims_dir = shims::install(data_dir)?;
        let scratch_root = data_dir.join("scratch");
        // Scratch space of instances from an earlier run is garbage now.
        let _ = std::fs::remove_dir_all(&scratch_root);
        std::fs::create_dir_all(&scratch_root)?;
        let pycache = data_dir.join("cache").join("pycache");
        std::fs::create_dir_all(&pycache)?;
        let host_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        // The java runtime's files, made on the first java deploy (only they are shown to
        // instances, read-only).
        let java_cache = data_dir.join("cache").join("java");
        std::fs::create_dir_all(&java_cache)?;
        let java = Arc::new(crate::java::JavaRuntime::new(&java_cache));
        let (sandbox, sandbox_path) = if config.sandbox {
            let mut runtimes = petrel_sandbox::runtime_prefixes(&host_path);
            // The java runtime's files, shown read-only.
            runtimes.push(java_cache.clone());
            let mut sb = Sandbox::new(&runtimes, &shims_dir, &data_dir.join("sandbox"));
            if sb.enabled() {
                if let Err(e) = sb.probe(&scratch_root) {
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
                || prewarm.process_standby > 0
                || prewarm.java_standby > 0)
        {
            // A standby process is given its code by a mount into its namespace, which takes
            // root.
            tracing::info!("standby processes are off under the sandbox in a user namespace: giving one its code needs root");
            prewarm.node_standby = 0;
            prewarm.python_standby = 0;
            prewarm.process_standby = 0;
            prewarm.java_standby = 0;
        }
        let sandbox = Arc::new(sandbox);
        let cgroups = if config.instance_limits {
            Cgroups::detect()
        } else {
            Cgroups::off("turned off (--no-instance-limits, or instance_limits = false)")
        };
        let sandboxed_standby =
            (sandbox.enabled() && !sandbox.in_user_namespace()).then(|| SandboxedStandby {
                sandbox: sandbox.clone(),
                path: sandbox_path.clone(),
                roots: scratch_root.clone(),
                cgroups: cgroups.clone(),
                java: java.clone(),
            });
        let sandbox_lib = sandbox
            .enabled()
            .then(|| shims_dir.join(shims::SANDBOX_LIB_PATH));
        let prewarm = Arc::new(Prewarm::new(
            prewarm,
            shims_dir.clone(),
            host_path.clone(),
            pycache.clone(),
            sink.clone(),
            sandboxed_standby,
            sandbox_lib,
        ));
        Ok(Self {
            inner: Arc::new(EnvInner {
                process: ProcessContext {
                    prewarm,
                    cgroups,
                    sandbox,
                    sandbox_path,
                    host_path,
                    shims_dir,
                    scratch_root,
                    pycache,
                    sink,
                    payload_limit: config.payload_limit,
                    java,
                },
                wasm: OnceLock::new(),
                wasm_cache: data_dir.join("cache").join("wasm"),
                outbound_tls: OnceLock::new(),
                secrets: OnceLock::new(),
            }),
        })
    }

    pub fn log_sink(&self) -> &LogSink {
        &self.inner.process.sink
    }

    pub fn payload_limit(&self) -> usize {
        self.inner.process.payload_limit
    }

    /// Lets wasm guests make `https://` requests (to their `allowed_outbound_hosts`), verified
    /// with this configuration. Set once, at start; later calls change nothing.
    pub fn set_outbound_tls(&self, config: Arc<tokio_rustls::rustls::ClientConfig>) {
        let _ = self.inner.outbound_tls.set(config);
    }

    /// Where instances read the secrets their function lists; set once at server start.
    pub fn set_secret_source(&self, source: Arc<dyn crate::instance::SecretSource>) {
        let _ = self.inner.secrets.set(source);
    }

    /// The values of the secrets `spec` lists, read now.
    async fn secrets_of(&self, spec: &InstanceSpec) -> Result<Vec<(String, Vec<u8>)>, InvokeError> {
        if spec.spec.secrets.is_empty() {
            return Ok(Vec::new());
        }
        let Some(source) = self.inner.secrets.get() else {
            return Err(init_failed(
                "this server has no secret store, and the function lists secrets",
            ));
        };
        source
            .read(&spec.namespace, &spec.spec.secrets)
            .await
            .map_err(init_failed)
    }

    /// Starts what is configured to be kept warm (the Python fork server, standby Node
    /// processes); call once at server start.
    pub fn prewarm(&self) {
        self.inner.process.prewarm.fill();
    }

    /// Which resource limits are on, in one line (for the start-up log).
    pub fn limits_status(&self) -> &str {
        self.inner.process.cgroups.status()
    }

    /// The prewarm settings in effect (the sandbox turns standby processes off).
    pub fn prewarm_config(&self) -> PrewarmConfig {
        self.inner.process.prewarm.config()
    }

    /// Whether the process sandbox is on, and its layers, in one line (for the start-up log).
    pub fn sandbox_status(&self) -> &str {
        self.inner.process.sandbox.status()
    }

    /// Stops the prewarmed processes (the fork server, standby Node processes); at shutdown.
    pub fn stop_prewarmed(&self) {
        self.inner.process.prewarm.stop();
    }

    /// Removes this server's cgroups; at shutdown, after every instance has stopped.
    pub fn remove_cgroups(&self) {
        self.inner.process.cgroups.remove();
    }

    /// Readies this node for a function of `runtime` before its first request. For java: the
    /// runtime's files (once per node: Maven fetches the AWS runtime client, javac compiles
    /// Petrel's launcher, the JVM writes a class data sharing archive) and standby JVMs for
    /// `memory_mb`. Nothing for the other runtimes. A deploy waits for it, so that its first
    /// request does not.
    pub async fn prepare(&self, runtime: Runtime, memory_mb: u32) -> Result<(), String> {
        if runtime == Runtime::Java {
            self.inner.process.java.files().await?;
            self.inner.process.prewarm.prewarm_java(memory_mb);
        }
        Ok(())
    }

    /// [`RuntimeEnv::prepare`] in a task of its own, a failure logged: for a function this
    /// node learns of without a deploy of its own (restored at start, or deployed on another
    /// node of a cluster). Spawns nothing for a runtime with nothing to prepare.
    pub fn prepare_in_background(&self, runtime: Runtime, memory_mb: u32) {
        if runtime != Runtime::Java {
            return;
        }
        let env = self.clone();
        tokio::spawn(async move {
            if let Err(e) = env.prepare(runtime, memory_mb).await {
                tracing::warn!(error = %e, "the java runtime could not be prepared; java functions start when it can be");
            }
        });
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

    /// Starts an instance of `spec`, of the kind its runtime needs.
    pub async fn start(&self, spec: InstanceSpec) -> Result<Arc<dyn Instance>, InvokeError> {
        let secrets = self.secrets_of(&spec).await?;
        let cx = &self.inner.process;
        Ok(match spec.spec.runtime {
            Runtime::Python3 | Runtime::Nodejs | Runtime::Provided | Runtime::Java => {
                Arc::new(ProcessInstance::<LambdaApi>::start(cx, spec, secrets).await?)
            }
            Runtime::Http => Arc::new(ProcessInstance::<HttpPort>::start(cx, spec, secrets).await?),
            Runtime::Wasm => {
                let engine = self.wasm().map_err(init_failed)?.clone();
                let tls = self.inner.outbound_tls.get().cloned();
                Arc::new(
                    WasmInstance::start(engine, spec, tls, self.log_sink().clone(), secrets)
                        .await?,
                )
            }
        })
    }
}

impl Starter for RuntimeEnv {
    fn start(
        &self,
        spec: InstanceSpec,
    ) -> BoxFuture<'static, Result<Arc<dyn Instance>, InvokeError>> {
        let env = self.clone();
        Box::pin(async move { RuntimeEnv::start(&env, spec).await })
    }

    /// Loads a wasm version's compiled component ahead of its first request (at deploy).
    fn preload(&self, spec: &InstanceSpec) -> BoxFuture<'static, Option<Preloaded>> {
        let engine = (spec.spec.runtime == Runtime::Wasm)
            .then(|| self.wasm().ok().cloned())
            .flatten();
        let (path, memory_mb) = (spec.code_dir.join(&spec.spec.handler), spec.spec.memory_mb);
        Box::pin(async move {
            let engine = engine?;
            let pre = tokio::task::spawn_blocking(move || engine.load(&path))
                .await
                .ok()?
                .ok()?;
            crate::wasm::warm_slot(&pre, memory_mb).await;
            Some(Preloaded(pre))
        })
    }
}
