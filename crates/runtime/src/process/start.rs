//! Starting a process instance, in five steps:
//!
//! 1. [`Launch::prepare`]: the program and its environment, as Lambda and `$PORT` servers
//!    expect them;
//! 2. [`Launch::confine`]: a standby process already waiting in its sandbox, or the instance's
//!    cgroup, network and sandbox plan;
//! 3. [`Bind::bind`]: the protocol's endpoint (the Runtime API listener, or the port);
//! 4. [`Launch::spawn`]: the process itself, taken from a standby, forked from the Python fork
//!    server, or spawned;
//! 5. [`ProcessInstance::ready`](super::ProcessProtocol::ready): waiting until it takes
//!    requests, within its init timeout.

use super::{HttpPort, LambdaApi, ProcessInstance, ProcessProtocol};
use crate::cgroup::{Cgroups, InstanceCgroup};
use crate::error::{init_failed, InvokeError};
use crate::instance::{new_instance_id, InstanceSpec, StartTimings};
use crate::logs::{Attribution, LogSink, LogSource};
use crate::os_process::{Process, SourceCell};
use crate::prewarm::{Kind as StandbyKind, Prewarm};
use crate::{http_port, lambda_api, shims};
use petrel_core::{Network, Runtime};
use petrel_sandbox::{NetNs, Plan, Sandbox};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::oneshot;

/// Shortest time an instance is given to start, whatever its invocation timeout.
const MIN_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What starting process instances takes of the node, made once by [`crate::RuntimeEnv`].
#[derive(Debug)]
pub(crate) struct ProcessContext {
    pub prewarm: Arc<Prewarm>,
    pub cgroups: Cgroups,
    pub sandbox: Arc<Sandbox>,
    /// `PATH` inside the sandbox: the runtimes' own directories, then the system's.
    pub sandbox_path: String,
    pub host_path: String,
    pub shims_dir: PathBuf,
    pub scratch_root: PathBuf,
    pub pycache: PathBuf,
    pub sink: LogSink,
    pub payload_limit: usize,
    pub java: Arc<crate::java::JavaRuntime>,
}

/// Step 1's result, carried through the others: the command, and what the instance is.
struct Launch {
    cmd: Command,
    /// What the command runs, for messages.
    program: &'static str,
    scratch: PathBuf,
    source: LogSource,
}

/// Step 2's result.
#[derive(Default)]
struct Confinement {
    cgroup: Option<InstanceCgroup>,
    net: Option<NetNs>,
    plan: Option<Plan>,
    /// A standby process that was handed the instance, already running in its sandbox.
    standby: Option<(Process, Arc<Attribution>)>,
}

/// Step 3 for one protocol: its endpoint, bound before the process starts (the process is told
/// where it is through its environment).
pub(crate) trait Bind: ProcessProtocol {
    /// The variable that tells the instance where it is reached, and its value inside an
    /// instance's own network.
    fn address_in_own_network() -> (&'static str, String);

    /// The endpoint, and (in a user namespace, where the instance makes its network) where to
    /// hand it the Runtime API listener the instance makes.
    async fn bind(
        cx: &ProcessContext,
        spec: &InstanceSpec,
        cmd: &mut Command,
        net: &mut Option<NetNs>,
    ) -> Result<(Self, Option<oneshot::Sender<std::net::TcpListener>>), InvokeError>;
}

impl Bind for LambdaApi {
    fn address_in_own_network() -> (&'static str, String) {
        (
            "AWS_LAMBDA_RUNTIME_API",
            petrel_sandbox::RUNTIME_API_ADDR.to_owned(),
        )
    }

    async fn bind(
        cx: &ProcessContext,
        spec: &InstanceSpec,
        cmd: &mut Command,
        net: &mut Option<NetNs>,
    ) -> Result<(Self, Option<oneshot::Sender<std::net::TcpListener>>), InvokeError> {
        let arn = petrel_core::arn::function(&spec.function, Some(&spec.version.to_string()));
        let mut later = None;
        let listen = match net.as_mut() {
            Some(n) if n.listener_comes_later() => {
                let (tx, rx) = oneshot::channel();
                later = Some(tx);
                lambda_api::Listen::Later(rx)
            }
            Some(n) => match n.listener.take() {
                Some(l) => lambda_api::Listen::Now(l),
                None => lambda_api::Listen::Host,
            },
            None => lambda_api::Listen::Host,
        };
        let ep = lambda_api::Endpoint::bind(arn, cx.payload_limit, listen)
            .await
            .map_err(|e| init_failed(format!("could not open the Runtime API endpoint: {e}")))?;
        cmd.env("AWS_LAMBDA_RUNTIME_API", ep.addr.to_string());
        Ok((LambdaApi(ep), later))
    }
}

impl Bind for HttpPort {
    fn address_in_own_network() -> (&'static str, String) {
        ("PORT", petrel_sandbox::HTTP_PORT.to_string())
    }

    async fn bind(
        _cx: &ProcessContext,
        spec: &InstanceSpec,
        cmd: &mut Command,
        net: &mut Option<NetNs>,
    ) -> Result<(Self, Option<oneshot::Sender<std::net::TcpListener>>), InvokeError> {
        let port = match net {
            Some(_) => petrel_sandbox::HTTP_PORT,
            None => http_port::pick_port()
                .map_err(|e| init_failed(format!("could not find a free port: {e}")))?,
        };
        cmd.env("PORT", port.to_string());
        let ep = http_port::Endpoint::new(port, net.take().map(Arc::new), spec.spec.http_protocol);
        Ok((HttpPort(ep), None))
    }
}

impl<P: Bind> ProcessInstance<P> {
    /// Starts an instance and waits until it is ready to take requests (its first `next` call,
    /// or its port accepting connections).
    pub(crate) async fn start(
        cx: &ProcessContext,
        spec: InstanceSpec,
        secrets: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, InvokeError> {
        let t0 = Instant::now();
        let id = new_instance_id();
        let java = match spec.spec.runtime {
            Runtime::Java => Some(cx.java.files().await.map_err(init_failed)?),
            _ => None,
        };
        let mut launch = Launch::prepare(cx, &spec, &id, java.as_deref())?;
        let secrets_dir = if secrets.is_empty() {
            None
        } else {
            Some(SecretsDir::write(cx, &id, &secrets, &mut launch.cmd)?)
        };
        let mut confinement = launch
            .confine::<P>(cx, &spec, &id, secrets_dir.as_ref())
            .await?;
        let (protocol, listener_later) =
            P::bind(cx, &spec, &mut launch.cmd, &mut confinement.net).await?;
        let Launch {
            cmd,
            program,
            scratch,
            source,
        } = launch;
        let (process, attribution, how) =
            spawn(cx, spec.spec.runtime, cmd, &source, &mut confinement).await;
        let process = process.map_err(|e| init_failed(format!("could not run {program}: {e}")))?;
        if let (Some(tx), Some(n)) = (listener_later, confinement.net.as_mut()) {
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
            spec,
            timings: StartTimings {
                start: started,
                init: Duration::ZERO,
            },
            cgroup: confinement.cgroup,
            process,
            attribution,
            scratch,
            secrets_dir,
            sink: cx.sink.clone(),
            payload_limit: cx.payload_limit,
            stopped: Mutex::new(None),
            protocol,
        };
        instance.wait_ready().await?;
        instance.timings.init = t0.elapsed().saturating_sub(started);
        cx.sink.emit(source.line(
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

    /// Step 5: ready, or why not (it exited, or did not get ready within its init timeout).
    async fn wait_ready(&self) -> Result<(), InvokeError> {
        let init_timeout = self.spec.spec.timeout().max(MIN_INIT_TIMEOUT);
        tokio::select! {
            r = P::ready(self) => r,
            how = self.process.exited() => Err(match self.ended(&how) {
                InvokeError::Crashed(report) => init_failed(report),
                oom => oom,
            }),
            _ = tokio::time::sleep(init_timeout) => {
                self.process.kill();
                Err(init_failed(format!(
                    "the instance did not become ready within {init_timeout:?}"
                )))
            }
        }
    }
}

impl Launch {
    /// Step 1: the program for the runtime, in the code's directory, with exactly the
    /// environment Lambda (or a `$PORT` server) gives, the function's own variables, and
    /// Petrel's.
    fn prepare(
        cx: &ProcessContext,
        spec: &InstanceSpec,
        id: &str,
        java: Option<&crate::java::JavaFiles>,
    ) -> Result<Self, InvokeError> {
        let fs = &spec.spec;
        let scratch = cx.scratch_root.join(id);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| init_failed(format!("could not create scratch space: {e}")))?;
        let sandboxed = cx.sandbox.enabled();
        let (program, mut cmd) = match fs.runtime {
            Runtime::Python3 => {
                let mut c = Command::new("python3");
                c.arg("-u").arg(cx.shims_dir.join(shims::PYTHON_SHIM_PATH));
                ("python3", c)
            }
            Runtime::Nodejs => {
                let mut c = Command::new("node");
                c.arg(cx.shims_dir.join(shims::NODE_SHIM_PATH));
                ("node", c)
            }
            Runtime::Provided => {
                let bootstrap = spec.code_dir.join("bootstrap");
                if !is_executable(&bootstrap) {
                    return Err(init_failed(
                        "runtime provided needs an executable file named bootstrap at the root of the package (chmod +x bootstrap)",
                    ));
                }
                if sandboxed {
                    // Where the sandbox shows the code.
                    let inside = Path::new(petrel_sandbox::TASK_ROOT).join("bootstrap");
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
            Runtime::Java => {
                let files = java.expect("the java runtime is prepared before a java start");
                let mut c = Command::new("java");
                c.args(files.jvm_args(fs.memory_mb))
                    .arg(crate::java::CLIENT_MAIN)
                    .arg(&fs.handler);
                ("java", c)
            }
            Runtime::Wasm => unreachable!("wasm instances are not processes"),
        };
        let (path, home) = if sandboxed {
            (cx.sandbox_path.as_str(), Path::new("/tmp"))
        } else {
            (cx.host_path.as_str(), scratch.as_path())
        };
        cmd.current_dir(&spec.code_dir)
            .env_clear()
            .env("PATH", path)
            .env("LANG", "C.UTF-8")
            .env("HOME", home)
            .env("TMPDIR", home)
            .env("TZ", ":UTC")
            .env("AWS_REGION", petrel_core::arn::REGION)
            .env("AWS_DEFAULT_REGION", petrel_core::arn::REGION)
            .envs(&fs.env)
            .env("PETREL_NAMESPACE", &spec.namespace)
            .env("PETREL_FUNCTION_NAME", &spec.function)
            .env("PETREL_FUNCTION_VERSION", spec.version.to_string())
            .env("PETREL_MEMORY_MB", fs.memory_mb.to_string())
            .env("PETREL_CONCURRENCY", fs.concurrency.to_string())
            .env("PETREL_INSTANCE_ID", id);
        if fs.runtime.speaks_lambda() {
            let task_root = if sandboxed {
                PathBuf::from(petrel_sandbox::TASK_ROOT)
            } else {
                spec.code_dir.clone()
            };
            cmd.env("_HANDLER", &fs.handler)
                .env("LAMBDA_TASK_ROOT", &task_root)
                .env("LAMBDA_RUNTIME_DIR", &cx.shims_dir)
                .env("AWS_LAMBDA_FUNCTION_NAME", &spec.function)
                .env("AWS_LAMBDA_FUNCTION_VERSION", spec.version.to_string())
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", fs.memory_mb.to_string())
                .env(
                    "AWS_LAMBDA_LOG_GROUP_NAME",
                    format!("/petrel/{}/{}", spec.namespace, spec.function),
                )
                .env("AWS_LAMBDA_LOG_STREAM_NAME", id)
                .env("AWS_EXECUTION_ENV", format!("Petrel_{}", fs.runtime));
            if sandboxed {
                // The shared bytecode cache would be a channel between functions.
                cmd.env("PYTHONDONTWRITEBYTECODE", "1");
            } else {
                cmd.env("PYTHONPYCACHEPREFIX", &cx.pycache);
            }
        }
        let source = LogSource {
            namespace: spec.namespace.clone(),
            function: spec.function.clone(),
            version: spec.version,
            instance: id.to_owned(),
        };
        Ok(Self {
            cmd,
            program,
            scratch,
            source,
        })
    }

    /// Step 2: in the sandbox with a network of its own, a standby process waiting in its
    /// sandbox takes the instance if there is one (its network, cgroup and root come with it);
    /// otherwise the instance gets a cgroup, a network of its own (in the sandbox), and a plan.
    async fn confine<P: Bind>(
        &mut self,
        cx: &ProcessContext,
        spec: &InstanceSpec,
        id: &str,
        secrets: Option<&SecretsDir>,
    ) -> Result<Confinement, InvokeError> {
        let fs = &spec.spec;
        let sandboxed = cx.sandbox.enabled();
        let own_net = sandboxed && fs.network == Network::None;
        let mut c = Confinement::default();
        // A standby's root has the default /tmp and no /run/secrets: only instances that keep
        // the one and need not the other can take one.
        if own_net && fs.tmp_mb == petrel_core::manifest::DEFAULT_TMP_MB && secrets.is_none() {
            let (var, value) = P::address_in_own_network();
            self.cmd.env(var, value);
            if let Some(sb) = cx
                .prewarm
                .take_sandboxed(
                    fs.runtime,
                    &self.cmd,
                    &spec.code_dir,
                    fs.memory_mb,
                    &self.source,
                )
                .await
            {
                let mut cgroup = sb.cgroup;
                if let Some(cg) = cgroup.as_mut() {
                    // Named after its instance, as every instance's group is.
                    if let Err(e) = cg.rename(id) {
                        tracing::warn!(error = %e, "could not rename a standby's cgroup");
                    }
                }
                let _ = std::fs::remove_dir(&self.scratch);
                self.scratch = sb.root;
                c.net = Some(sb.net);
                c.cgroup = cgroup;
                c.standby = Some((sb.process, sb.attribution));
                return Ok(c);
            }
        }
        c.cgroup = cx
            .cgroups
            .create(id, fs.memory_mb)
            .map_err(|e| init_failed(format!("could not create the instance's cgroup: {e}")))?;
        if own_net {
            c.net = Some(
                cx.sandbox
                    .new_net(fs.runtime.speaks_lambda())
                    .map_err(|e| {
                        init_failed(format!("could not create the instance's network: {e}"))
                    })?,
            );
        }
        if sandboxed {
            c.plan = Some(
                cx.sandbox
                    .plan(
                        &self.scratch,
                        Some(&spec.code_dir),
                        fs.tmp_mb,
                        c.net.as_ref(),
                        secrets.map(|s| s.path.as_path()),
                    )
                    .map_err(|e| init_failed(format!("could not prepare the sandbox: {e}")))?,
            );
        }
        Ok(c)
    }
}

/// An instance's secrets as files (`NAME`, mode 0444, in a directory of the instance's own,
/// read-only at `/run/secrets` in the sandbox), and as variables.
pub(crate) struct SecretsDir {
    pub path: PathBuf,
}

impl SecretsDir {
    /// Writes the files and sets the variables (and `PETREL_SECRETS_DIR`) on `cmd`.
    fn write(
        cx: &ProcessContext,
        id: &str,
        secrets: &[(String, Vec<u8>)],
        cmd: &mut Command,
    ) -> Result<Self, InvokeError> {
        use std::os::unix::fs::PermissionsExt;
        let path = cx.scratch_root.join(format!("{id}.secrets"));
        let fail =
            |e: std::io::Error| init_failed(format!("could not write the instance's secrets: {e}"));
        std::fs::create_dir_all(&path).map_err(fail)?;
        for (name, value) in secrets {
            let file = path.join(name);
            std::fs::write(&file, value).map_err(fail)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444))
                .map_err(fail)?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).map_err(fail)?;
        cmd.envs(crate::instance::secret_vars(secrets));
        if cx.sandbox.enabled() {
            cmd.env("PETREL_SECRETS_DIR", petrel_sandbox::SECRETS_DIR);
        } else {
            cmd.env("PETREL_SECRETS_DIR", &path);
        }
        Ok(Self { path })
    }
}

/// Step 4: the instance's process: the standby that took it, forked from the Python fork
/// server, a standby process handed its function, or a plain start. Says which.
async fn spawn(
    cx: &ProcessContext,
    runtime: Runtime,
    mut cmd: Command,
    source: &LogSource,
    c: &mut Confinement,
) -> (std::io::Result<Process>, Arc<Attribution>, &'static str) {
    if let Some((p, a)) = c.standby.take() {
        return (Ok(p), a, "a standby process, given its code in its sandbox");
    }
    let cgroup = c.cgroup.as_ref();
    let plan = c.plan.take();
    let prewarm = &cx.prewarm;
    match runtime {
        Runtime::Python3 => {
            let attribution = Arc::new(Attribution::default());
            let cell: SourceCell = Arc::new(RwLock::new(source.clone()));
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
    let cell: SourceCell = Arc::new(RwLock::new(source.clone()));
    let procs = match cgroup.map(InstanceCgroup::open_procs).transpose() {
        Ok(fds) => fds.unwrap_or_default(),
        Err(e) => return (Err(e), attribution, "a new process"),
    };
    petrel_sandbox::limits::confine_before_exec(cmd.as_std_mut(), procs);
    let sink = cx.sink.clone();
    let Some(mut plan) = plan else {
        let p = Process::spawn(cmd, cell, sink, attribution.clone());
        return (p, attribution, "a new process");
    };
    let own_pid_ns = plan.spawner_makes_pid_ns();
    plan.apply(cmd.as_std_mut());
    let p = if own_pid_ns {
        let (a, rt) = (attribution.clone(), tokio::runtime::Handle::current());
        petrel_sandbox::in_new_pid_ns(move || {
            let _rt = rt.enter();
            Process::spawn(cmd, cell, sink, a)
        })
    } else {
        Process::spawn(cmd, cell, sink, attribution.clone())
    };
    (p, attribution, "a new sandboxed process")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
