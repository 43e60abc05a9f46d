//! Runtime processes made before a function needs them, so that a cold start skips the
//! interpreter's own start:
//!
//! - `python3`: the fork server ([`crate::zygote`]), forked per instance;
//! - `nodejs`: standby processes (`bootstrap.js --standby`, Node and the shim loaded) that are
//!   handed their function on stdin when one is needed, and replaced in the background;
//! - `python3` without the fork server: standby processes of the same kind
//!   (`bootstrap.py --standby`), if configured.
//!
//! Both fall back to a plain start when they are off or unavailable; a function sees the same
//! environment, directory and process group either way.

use crate::cgroup::InstanceCgroup;
use crate::logs::{Attribution, LogSink, LogSource};
use crate::process::{Process, SourceCell};
use crate::sandbox::{NetNs, Sandbox};
use crate::zygote::Zygote;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, Command};

/// What to keep warm. The server forks python3 instances and keeps two standby Node processes;
/// [`PrewarmConfig::OFF`] gives plain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrewarmConfig {
    pub python_fork_server: bool,
    pub node_standby: usize,
    /// Standby Python processes, used when the fork server is off or unavailable.
    pub python_standby: usize,
}

impl PrewarmConfig {
    pub const OFF: Self = Self {
        python_fork_server: false,
        node_standby: 0,
        python_standby: 0,
    };
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        Self {
            python_fork_server: true,
            node_standby: 2,
            python_standby: 0,
        }
    }
}

/// The runtimes that have standby processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Node,
    Python,
}

/// A generic runtime process waiting for its function.
struct Standby {
    process: Process,
    stdin: ChildStdin,
    source: SourceCell,
    attribution: Arc<Attribution>,
    /// In the sandbox: its network (the Runtime API listener bound in it) and the directory its
    /// root was assembled on.
    sandboxed: Option<(NetNs, PathBuf)>,
}

/// What standby processes need to start in the sandbox (as root): they wait in a root of their
/// own with an empty [`crate::sandbox::TASK_ROOT`], where their function's code is mounted
/// when one is handed over.
#[derive(Debug)]
pub(crate) struct SandboxedStandby {
    pub sandbox: Arc<Sandbox>,
    /// `PATH` inside the sandbox.
    pub path: String,
    /// Where their roots are assembled.
    pub roots: PathBuf,
}

/// A standby process handed its function in its sandbox.
pub(crate) struct TakenStandby {
    pub process: Process,
    pub attribution: Arc<Attribution>,
    pub net: NetNs,
    pub root: PathBuf,
}

pub(crate) struct Prewarm {
    config: PrewarmConfig,
    shims_dir: PathBuf,
    host_path: String,
    pycache: PathBuf,
    sink: LogSink,
    zygote: Mutex<ZygoteSlot>,
    stopped: std::sync::atomic::AtomicBool,
    /// Oldest first: the front has had the longest to get ready.
    standby: Mutex<std::collections::VecDeque<Standby>>,
    py_standby: Mutex<std::collections::VecDeque<Standby>>,
    sandboxed: Option<SandboxedStandby>,
}

#[derive(Default)]
struct ZygoteSlot {
    current: Option<Arc<Zygote>>,
    failed_at: Option<Instant>,
}

/// How long after a failed fork server start Petrel tries again (plain starts meanwhile).
const ZYGOTE_RETRY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Prewarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prewarm")
            .field("config", &self.config)
            .finish()
    }
}

impl Prewarm {
    pub(crate) fn config(&self) -> PrewarmConfig {
        self.config
    }

    pub(crate) fn new(
        config: PrewarmConfig,
        shims_dir: PathBuf,
        host_path: String,
        pycache: PathBuf,
        sink: LogSink,
        sandboxed: Option<SandboxedStandby>,
    ) -> Self {
        Self {
            config,
            shims_dir,
            host_path,
            pycache,
            sink,
            zygote: Mutex::default(),
            stopped: Default::default(),
            standby: Mutex::default(),
            py_standby: Mutex::default(),
            sandboxed,
        }
    }

    /// Starts what is configured now, so that even the first cold start finds it ready.
    pub(crate) fn fill(self: &Arc<Self>) {
        if self.config.python_fork_server {
            let _ = self.zygote();
        }
        for _ in 0..self.config.node_standby {
            self.clone().replace_standby(Kind::Node);
        }
        for _ in 0..self.config.python_standby {
            self.clone().replace_standby(Kind::Python);
        }
    }

    /// Stops the fork server and the standby processes (at shutdown); nothing is started again.
    pub(crate) fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.standby.lock().unwrap().clear();
        self.py_standby.lock().unwrap().clear();
        self.zygote.lock().unwrap().current = None;
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The fork server, started (again) if needed; `None` when off or not startable.
    pub(crate) fn zygote(&self) -> Option<Arc<Zygote>> {
        if !self.config.python_fork_server || self.is_stopped() {
            return None;
        }
        let mut slot = self.zygote.lock().unwrap();
        if let Some(z) = &slot.current {
            if z.is_alive() {
                return Some(z.clone());
            }
            tracing::warn!("the Python fork server ended; starting a new one");
            slot.current = None;
        }
        if slot.failed_at.is_some_and(|t| t.elapsed() < ZYGOTE_RETRY) {
            return None;
        }
        let shim = self.shims_dir.join(crate::shims::PYTHON_SHIM_PATH);
        match Zygote::start(&shim, &self.host_path, &self.pycache) {
            Ok(z) => {
                let z = Arc::new(z);
                slot.current = Some(z.clone());
                slot.failed_at = None;
                Some(z)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the Python fork server could not start; python3 instances start plainly");
                slot.failed_at = Some(Instant::now());
                None
            }
        }
    }

    /// Forks a `python3` instance from the fork server with `cmd`'s environment and directory.
    pub(crate) async fn fork_python(
        &self,
        cmd: &Command,
        cgroup: Option<&InstanceCgroup>,
        sandbox: Option<&crate::sandbox::Plan>,
        source: SourceCell,
        attribution: Arc<Attribution>,
    ) -> Result<Process, String> {
        let zygote = self.zygote().ok_or("no fork server")?;
        let (env, mut cwd) = env_and_dir(cmd);
        if sandbox.is_some() {
            cwd = PathBuf::from(crate::sandbox::TASK_ROOT);
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let procs = cgroup.map(InstanceCgroup::procs_files).unwrap_or_default();
        let forked = zygote
            .fork(&env, &cwd, &procs, sandbox, out_w, err_w)
            .await?;
        Process::forked(forked, out_r, err_r, source, self.sink.clone(), attribution)
            .map_err(|e| format!("could not read the forked instance's output: {e}"))
    }

    fn queue(&self, kind: Kind) -> &Mutex<std::collections::VecDeque<Standby>> {
        match kind {
            Kind::Node => &self.standby,
            Kind::Python => &self.py_standby,
        }
    }

    fn wanted(&self, kind: Kind) -> usize {
        match kind {
            Kind::Node => self.config.node_standby,
            Kind::Python => self.config.python_standby,
        }
    }

    /// Hands a standby process of `kind` the instance `cmd` describes; `None` when there is none.
    pub(crate) async fn take(
        self: &Arc<Self>,
        kind: Kind,
        cmd: &Command,
        cgroup: Option<&InstanceCgroup>,
        source: LogSource,
    ) -> Option<(Process, Arc<Attribution>)> {
        if self.sandboxed.is_some() {
            return None; // see take_sandboxed
        }
        let mut sb = loop {
            let sb = self.queue(kind).lock().unwrap().pop_front()?;
            self.clone().replace_standby(kind);
            if !sb.process.has_exited() {
                break sb;
            }
        };
        let (env, cwd) = env_and_dir(cmd);
        let line = serde_json::json!({
            "env": env.into_iter().collect::<std::collections::HashMap<_, _>>(),
            "cwd": cwd,
        })
        .to_string()
            + "\n";
        // The standby waits on stdin and runs nothing of the function yet: moving it into the
        // instance's cgroup now limits everything the function will do.
        if let Some(cg) = cgroup {
            if let Err(e) = cg.adopt(sb.process.pid()) {
                tracing::warn!(error = %e, "a standby process could not join its cgroup; starting plainly");
                return None;
            }
        }
        *sb.source.write().unwrap() = source;
        if let Err(e) = sb.stdin.write_all(line.as_bytes()).await {
            tracing::warn!(error = %e, ?kind, "a standby process could not be handed its function");
            return None;
        }
        drop(sb.stdin);
        Some((sb.process, sb.attribution))
    }

    /// Hands a standby process in its sandbox the instance `cmd` describes: mounts its code
    /// at [`crate::sandbox::TASK_ROOT`] in the standby's namespace, moves it into the
    /// instance's cgroups, and sends it its environment. `None` when there is none (or it
    /// cannot be handed over; the instance then starts plainly).
    pub(crate) async fn take_sandboxed(
        self: &Arc<Self>,
        runtime: petrel_core::Runtime,
        cmd: &Command,
        code_dir: &Path,
        cgroup: Option<&InstanceCgroup>,
        source: &LogSource,
    ) -> Option<TakenStandby> {
        self.sandboxed.as_ref()?;
        let kind = match runtime {
            petrel_core::Runtime::Nodejs => Kind::Node,
            petrel_core::Runtime::Python3 => Kind::Python,
            _ => return None,
        };
        let mut sb = loop {
            let sb = self.queue(kind).lock().unwrap().pop_front()?;
            self.clone().replace_standby(kind);
            if !sb.process.has_exited() {
                break sb;
            }
        };
        let (net, root) = sb.sandboxed.take()?;
        let pid = sb.process.pid();
        if let Some(cg) = cgroup {
            // The process outside and PID 1 inside (with its threads).
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            let pids = std::iter::once(pid).chain(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
            for p in pids {
                if let Err(e) = cg.adopt(p) {
                    tracing::warn!(error = %e, "a standby process could not join its cgroup; starting plainly");
                    return None;
                }
            }
        }
        if let Err(e) = crate::sandbox::inject_code(pid, code_dir) {
            tracing::warn!(error = %e, ?kind, "a standby process could not be given its code; starting plainly");
            return None;
        }
        let (env, _) = env_and_dir(cmd);
        let line = serde_json::json!({
            "env": env.into_iter().collect::<std::collections::HashMap<_, _>>(),
            "cwd": crate::sandbox::TASK_ROOT,
        })
        .to_string()
            + "\n";
        *sb.source.write().unwrap() = source.clone();
        if let Err(e) = sb.stdin.write_all(line.as_bytes()).await {
            tracing::warn!(error = %e, ?kind, "a standby process could not be handed its function");
            return None;
        }
        drop(sb.stdin);
        Some(TakenStandby {
            process: sb.process,
            attribution: sb.attribution,
            net,
            root,
        })
    }

    fn replace_standby(self: Arc<Self>, kind: Kind) {
        if self.wanted(kind) == 0 || self.is_stopped() {
            return;
        }
        tokio::spawn(async move {
            match self.spawn_standby(kind) {
                Ok(sb) => {
                    let mut v = self.queue(kind).lock().unwrap();
                    if v.len() < self.wanted(kind) && !self.is_stopped() {
                        v.push_back(sb);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?kind, "a standby process could not start; instances start plainly")
                }
            }
        });
    }

    fn spawn_standby(&self, kind: Kind) -> std::io::Result<Standby> {
        let mut cmd = match kind {
            Kind::Node => {
                let mut c = Command::new("node");
                c.arg(self.shims_dir.join(crate::shims::NODE_SHIM_PATH));
                c
            }
            Kind::Python => {
                let mut c = Command::new("python3");
                c.arg("-u")
                    .arg(self.shims_dir.join(crate::shims::PYTHON_SHIM_PATH))
                    .env("PYTHONPYCACHEPREFIX", &self.pycache);
                c
            }
        };
        cmd.arg("--standby")
            .env_clear()
            .env("PATH", &self.host_path)
            .env("LANG", "C.UTF-8")
            .env("TZ", ":UTC")
            .current_dir("/")
            .stdin(Stdio::piped());
        crate::cgroup::confine_before_exec(&mut cmd, Vec::new());
        let sandboxed = match &self.sandboxed {
            Some(s) => {
                let root = s
                    .roots
                    .join(format!("standby-{}", uuid::Uuid::now_v7().simple()));
                std::fs::create_dir_all(&root)?;
                let net = s.sandbox.new_net(true)?;
                let plan = s.sandbox.plan(
                    &root,
                    None,
                    petrel_core::manifest::DEFAULT_TMP_MB,
                    Some(&net),
                )?;
                let mut plan = plan;
                cmd.env("PATH", &s.path)
                    .env("HOME", "/tmp")
                    .env("TMPDIR", "/tmp")
                    .env_remove("PYTHONPYCACHEPREFIX")
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                let own_pid_ns = plan.spawner_makes_pid_ns();
                plan.apply(cmd.as_std_mut());
                Some((net, root, own_pid_ns))
            }
            None => None,
        };
        let source: SourceCell = Arc::new(RwLock::new(LogSource {
            namespace: String::new(),
            function: "(standby)".into(),
            version: 0,
            instance: String::new(),
        }));
        let attribution = Arc::new(Attribution::default());
        let (src, sink, a) = (source.clone(), self.sink.clone(), attribution.clone());
        let (process, stdin) = match &sandboxed {
            Some((_, _, true)) => {
                crate::sandbox::in_new_pid_ns(move || Process::spawn_with_stdin(cmd, src, sink, a))?
            }
            _ => Process::spawn_with_stdin(cmd, src, sink, a)?,
        };
        let sandboxed = sandboxed.map(|(net, root, _)| (net, root));
        Ok(Standby {
            process,
            stdin: stdin.expect("stdin is piped"),
            source,
            attribution,
            sandboxed,
        })
    }
}

fn env_and_dir(cmd: &Command) -> (Vec<(String, String)>, PathBuf) {
    let std = cmd.as_std();
    let env = std
        .get_envs()
        .filter_map(|(k, v)| {
            Some((
                k.to_string_lossy().into_owned(),
                v?.to_string_lossy().into_owned(),
            ))
        })
        .collect();
    let cwd = std
        .get_current_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    (env, cwd)
}

fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}
