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
use crate::os_process::{Process, SourceCell};
use crate::zygote::Zygote;
use petrel_sandbox::{NetNs, Sandbox};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What to keep warm. The server forks python3 instances, and keeps two standby Node
/// processes and (in the sandbox) two Python children of the fork server waiting in theirs;
/// [`PrewarmConfig::OFF`] gives plain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrewarmConfig {
    pub python_fork_server: bool,
    pub node_standby: usize,
    /// Standby Python processes: forked from the fork server into their sandbox when both are
    /// on; started plainly when the fork server is off; none when the fork server is on
    /// without the sandbox (it forks on demand).
    pub python_standby: usize,
    /// Standby shells for `provided` and `http` functions, waiting in their sandbox (only with
    /// the sandbox on, as root).
    pub process_standby: usize,
    /// Standby JVMs for `java` functions, waiting in their sandbox with the runtime client
    /// loaded (only with the sandbox on, as root, once a java function was deployed).
    pub java_standby: usize,
}

impl PrewarmConfig {
    pub const OFF: Self = Self {
        python_fork_server: false,
        node_standby: 0,
        python_standby: 0,
        process_standby: 0,
        java_standby: 0,
    };
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        Self {
            python_fork_server: true,
            node_standby: 2,
            python_standby: 2,
            process_standby: 2,
            java_standby: 1,
        }
    }
}

/// The runtimes that have standby processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Node,
    Python,
    /// For `provided` and `http` (in the sandbox only): a shell waiting in its sandbox, which
    /// replaces itself with the function's program when handed it.
    Exec,
    /// For `java` (in the sandbox only): a JVM with the runtime client loaded, waiting for its
    /// instance's environment.
    Java,
}

/// What an exec standby runs: it reads one line (`cd` to the code, then `exec env -i ...
/// PROGRAM ARGS`, every word quoted) and becomes it. `$NL` is a newline, for words that hold
/// one (the line itself may not).
const EXEC_STANDBY: &str = "NL='\n'; IFS= read -r line || exit 0; eval \"$line\"";

/// `word` quoted for the shell on one line: inside single quotes nothing is special but the
/// quote itself; a newline is spliced in from `$NL`.
fn shell_quote(word: &str) -> String {
    format!(
        "'{}'",
        word.replace('\'', "'\\''").replace('\n', "'\"$NL\"'")
    )
}

/// The line an exec standby is handed: into the code just mounted (the shell's directory is the
/// empty one beneath it), exactly the instance's environment (the shell's own variables
/// dropped), and the program in its place.
fn exec_line(env: &[(String, String)], argv: &[String]) -> String {
    let quoted = |words: &mut dyn Iterator<Item = String>| {
        words.map(|w| shell_quote(&w)).collect::<Vec<_>>().join(" ")
    };
    format!(
        "cd {} || exit 1; unset {EXEC_STANDBY_VARS} PWD OLDPWD SHLVL; export {}; exec {}\n",
        petrel_sandbox::TASK_ROOT,
        quoted(&mut env.iter().map(|(k, v)| format!("{k}={v}"))),
        quoted(&mut argv.iter().cloned()),
    )
}

/// The variables an exec standby starts with (all set again for the instance).
const EXEC_STANDBY_VARS: &str = "PATH LANG TZ HOME TMPDIR";

/// A generic runtime process waiting for its function.
struct Standby {
    process: Process,
    /// Where it reads its function from: its stdin, or (a forked one) a pipe.
    stdin: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    source: SourceCell,
    attribution: Arc<Attribution>,
    /// In the sandbox: its network (the Runtime API listener bound in it) and the directory its
    /// root was assembled on.
    sandboxed: Option<(NetNs, PathBuf)>,
    /// Its cgroup, joined as it started (with the cgroups on): handed to its instance with the
    /// instance's limits, so that no process moves on the request path.
    cgroup: Option<InstanceCgroup>,
    /// A JVM's heap is sized when it starts: the memory_mb it was made for (0 for the others).
    memory_mb: u32,
}

/// What standby processes need to start in the sandbox (as root): they wait in a root of their
/// own with an empty [`petrel_sandbox::TASK_ROOT`], where their function's code is mounted
/// when one is handed over.
#[derive(Debug)]
pub(crate) struct SandboxedStandby {
    pub sandbox: Arc<Sandbox>,
    /// `PATH` inside the sandbox.
    pub path: String,
    /// Where their roots are assembled.
    pub roots: PathBuf,
    /// The node's cgroups (off, or where a standby's group is made).
    pub cgroups: crate::cgroup::Cgroups,
    /// The java runtime, for standby JVMs once it is prepared.
    pub java: Arc<crate::java::JavaRuntime>,
}

/// What a standby process gets before it starts: a root to assemble, its network, its plan,
/// and its cgroup.
struct StandbyCell {
    root: PathBuf,
    net: NetNs,
    plan: petrel_sandbox::Plan,
    cgroup: Option<InstanceCgroup>,
}

impl SandboxedStandby {
    fn prepare(&self) -> std::io::Result<StandbyCell> {
        let name = format!("standby-{}", uuid::Uuid::now_v7().simple());
        let root = self.roots.join(&name);
        std::fs::create_dir_all(&root)?;
        let net = self.sandbox.new_net(true)?;
        let plan = self.sandbox.plan(
            &root,
            None,
            petrel_core::manifest::DEFAULT_TMP_MB,
            Some(&net),
            None,
        )?;
        // Its cgroup now, joined before it runs anything (see Standby::cgroup).
        let cgroup = self
            .cgroups
            .create(&name, petrel_core::manifest::DEFAULT_MEMORY_MB)?;
        Ok(StandbyCell {
            root,
            net,
            plan,
            cgroup,
        })
    }
}

/// A standby process handed its function in its sandbox.
pub(crate) struct TakenStandby {
    pub process: Process,
    pub attribution: Arc<Attribution>,
    pub net: NetNs,
    pub root: PathBuf,
    pub cgroup: Option<InstanceCgroup>,
}

pub(crate) struct Prewarm {
    config: PrewarmConfig,
    shims_dir: PathBuf,
    host_path: String,
    pycache: PathBuf,
    sink: LogSink,
    /// The sandbox's shared library, for the fork server's children (when the sandbox is on).
    sandbox_lib: Option<PathBuf>,
    zygote: Mutex<ZygoteSlot>,
    stopped: std::sync::atomic::AtomicBool,
    /// Oldest first: the front has had the longest to get ready.
    standby: Mutex<std::collections::VecDeque<Standby>>,
    py_standby: Mutex<std::collections::VecDeque<Standby>>,
    exec_standby: Mutex<std::collections::VecDeque<Standby>>,
    java_standby: Mutex<std::collections::VecDeque<Standby>>,
    sandboxed: Option<SandboxedStandby>,
    /// The memory_mb standby JVMs are made for: the last one a java instance asked for.
    java_memory_mb: std::sync::atomic::AtomicU32,
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
        sandbox_lib: Option<PathBuf>,
    ) -> Self {
        Self {
            config,
            shims_dir,
            host_path,
            pycache,
            sink,
            sandbox_lib,
            zygote: Mutex::default(),
            stopped: Default::default(),
            standby: Mutex::default(),
            py_standby: Mutex::default(),
            exec_standby: Mutex::default(),
            java_standby: Mutex::default(),
            sandboxed,
            java_memory_mb: petrel_core::manifest::DEFAULT_MEMORY_MB.into(),
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
        for _ in 0..self.wanted(Kind::Exec) {
            self.clone().replace_standby(Kind::Exec);
        }
        // Standby JVMs wait for a java function's deploy or first start on this node.
    }

    /// Standby JVMs for `memory_mb` from now on (those of another size go), once the java
    /// runtime is prepared: after a java function's deploy, and when an instance of another
    /// size starts.
    pub(crate) fn prewarm_java(self: &Arc<Self>, memory_mb: u32) {
        use std::sync::atomic::Ordering;
        if self.java_memory_mb.swap(memory_mb, Ordering::AcqRel) != memory_mb {
            self.java_standby.lock().unwrap().clear();
        }
        self.fill_java();
    }

    fn fill_java(self: &Arc<Self>) {
        let have = self.java_standby.lock().unwrap().len();
        for _ in have..self.wanted(Kind::Java) {
            self.clone().replace_standby(Kind::Java);
        }
    }

    /// Stops the fork server and the standby processes (at shutdown); nothing is started again.
    pub(crate) fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.standby.lock().unwrap().clear();
        self.java_standby.lock().unwrap().clear();
        self.py_standby.lock().unwrap().clear();
        self.exec_standby.lock().unwrap().clear();
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
        match Zygote::start(
            &shim,
            &self.host_path,
            &self.pycache,
            self.sandbox_lib.as_deref(),
        ) {
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
        sandbox: Option<&petrel_sandbox::Plan>,
        source: SourceCell,
        attribution: Arc<Attribution>,
    ) -> Result<Process, String> {
        let zygote = self.zygote().ok_or("no fork server")?;
        let (env, mut cwd) = env_and_dir(cmd);
        if sandbox.is_some() {
            cwd = PathBuf::from(petrel_sandbox::TASK_ROOT);
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let procs = cgroup.map(InstanceCgroup::procs_files).unwrap_or_default();
        let forked = zygote
            .fork(crate::zygote::ForkRequest {
                env: &env,
                cwd: &cwd,
                cgroup_procs: &procs,
                sandbox,
                stdout: out_w,
                stderr: err_w,
                standby_spec: None,
            })
            .await?;
        Process::forked(
            forked.pid,
            forked.exit,
            out_r,
            err_r,
            source,
            self.sink.clone(),
            attribution,
        )
        .map_err(|e| format!("could not read the forked instance's output: {e}"))
    }

    fn queue(&self, kind: Kind) -> &Mutex<std::collections::VecDeque<Standby>> {
        match kind {
            Kind::Node => &self.standby,
            Kind::Python => &self.py_standby,
            Kind::Exec => &self.exec_standby,
            Kind::Java => &self.java_standby,
        }
    }

    fn wanted(&self, kind: Kind) -> usize {
        match kind {
            Kind::Node => self.config.node_standby,
            // Without the sandbox, the fork server forks on demand in a millisecond or two: no
            // standby is worth its memory. In the sandbox, forked children wait in theirs.
            Kind::Python if self.config.python_fork_server && self.sandboxed.is_none() => 0,
            Kind::Python => self.config.python_standby,
            Kind::Exec if self.sandboxed.is_some() => self.config.process_standby,
            Kind::Exec => 0,
            Kind::Java
                if self
                    .sandboxed
                    .as_ref()
                    .is_some_and(|s| s.java.ready().is_some()) =>
            {
                self.config.java_standby
            }
            Kind::Java => 0,
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
    /// at [`petrel_sandbox::TASK_ROOT`] in the standby's namespace, moves it into the
    /// instance's cgroups, and sends it its environment. `None` when there is none (or it
    /// cannot be handed over; the instance then starts plainly).
    pub(crate) async fn take_sandboxed(
        self: &Arc<Self>,
        runtime: petrel_core::Runtime,
        cmd: &Command,
        code_dir: &Path,
        memory_mb: u32,
        source: &LogSource,
    ) -> Option<TakenStandby> {
        self.sandboxed.as_ref()?;
        let kind = match runtime {
            petrel_core::Runtime::Nodejs => Kind::Node,
            petrel_core::Runtime::Python3 => Kind::Python,
            petrel_core::Runtime::Provided | petrel_core::Runtime::Http => Kind::Exec,
            petrel_core::Runtime::Java => Kind::Java,
            petrel_core::Runtime::Wasm => return None,
        };
        if kind == Kind::Java
            && self
                .java_memory_mb
                .load(std::sync::atomic::Ordering::Acquire)
                != memory_mb
        {
            // A JVM's heap was sized for one memory_mb: other sizes start plainly, and the
            // standby JVMs follow the last size asked for.
            self.prewarm_java(memory_mb);
            return None;
        }
        let mut sb = loop {
            let Some(sb) = self.queue(kind).lock().unwrap().pop_front() else {
                if kind == Kind::Java {
                    self.fill_java();
                }
                return None;
            };
            self.clone().replace_standby(kind);
            // (A JVM made for another memory_mb, before the size changed, is dropped.)
            if !sb.process.has_exited() && (kind != Kind::Java || sb.memory_mb == memory_mb) {
                break sb;
            }
        };
        let (net, root) = sb.sandboxed.take()?;
        let pid = sb.process.pid();
        if let Some(cg) = &sb.cgroup {
            if let Err(e) = cg.set_limits(memory_mb) {
                tracing::warn!(error = %e, memory_mb, "a standby process's cgroup could not take its instance's limits; starting plainly");
                return None;
            }
        }
        if let Err(e) = petrel_sandbox::inject_code(pid, code_dir) {
            tracing::warn!(error = %e, ?kind, "a standby process could not be given its code; starting plainly");
            return None;
        }
        let (env, _) = env_and_dir(cmd);
        let line = if kind == Kind::Java {
            // NUL-separated KEY=VALUE entries until the end of input (runtimes/java).
            env.iter()
                .map(|(k, v)| format!("{k}={v}\0"))
                .collect::<String>()
        } else if kind == Kind::Exec {
            let std = cmd.as_std();
            let argv: Vec<String> = std::iter::once(std.get_program())
                .chain(std.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            exec_line(&env, &argv)
        } else {
            serde_json::json!({
                "env": env.into_iter().collect::<std::collections::HashMap<_, _>>(),
                "cwd": petrel_sandbox::TASK_ROOT,
            })
            .to_string()
                + "\n"
        };
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
            cgroup: sb.cgroup,
        })
    }

    fn replace_standby(self: Arc<Self>, kind: Kind) {
        if self.wanted(kind) == 0 || self.is_stopped() {
            return;
        }
        tokio::spawn(async move {
            let made = match kind {
                Kind::Python if self.sandboxed.is_some() && self.config.python_fork_server => {
                    self.fork_standby_python().await
                }
                _ => self.spawn_standby(kind),
            };
            match made {
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

    /// A Python standby in its sandbox, forked from the fork server: the child confines itself
    /// (an empty /var/task), joins its cgroup, and waits on a pipe for its function.
    async fn fork_standby_python(&self) -> std::io::Result<Standby> {
        let s = self
            .sandboxed
            .as_ref()
            .ok_or_else(|| std::io::Error::other("not in the sandbox"))?;
        let zygote = self
            .zygote()
            .ok_or_else(|| std::io::Error::other("no fork server"))?;
        let StandbyCell {
            root,
            net,
            plan,
            cgroup,
        } = s.prepare()?;
        let procs = cgroup
            .as_ref()
            .map(InstanceCgroup::procs_files)
            .unwrap_or_default();
        let env = vec![
            ("PATH".to_owned(), s.path.clone()),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ("TZ".to_owned(), ":UTC".to_owned()),
            ("HOME".to_owned(), "/tmp".to_owned()),
        ];
        let io = |e: String| std::io::Error::other(e);
        let (out_r, out_w) = pipe().map_err(io)?;
        let (err_r, err_w) = pipe().map_err(io)?;
        let (spec_r, spec_w) = pipe().map_err(io)?;
        let forked = zygote
            .fork(crate::zygote::ForkRequest {
                env: &env,
                cwd: Path::new(petrel_sandbox::TASK_ROOT),
                cgroup_procs: &procs,
                sandbox: Some(&plan),
                stdout: out_w,
                stderr: err_w,
                standby_spec: Some(spec_r),
            })
            .await
            .map_err(io)?;
        let (source, attribution) = standby_identity();
        let process = Process::forked(
            forked.pid,
            forked.exit,
            out_r,
            err_r,
            source.clone(),
            self.sink.clone(),
            attribution.clone(),
        )?;
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(spec_w)?;
        Ok(Standby {
            process,
            stdin: Box::new(stdin),
            source,
            attribution,
            sandboxed: Some((net, root)),
            cgroup,
            memory_mb: 0,
        })
    }

    fn spawn_standby(&self, kind: Kind) -> std::io::Result<Standby> {
        let memory_mb = match kind {
            Kind::Java => self
                .java_memory_mb
                .load(std::sync::atomic::Ordering::Acquire),
            _ => 0,
        };
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
                    .env("PYTHONPYCACHEPREFIX", &self.pycache)
                    .arg("--standby");
                c
            }
            Kind::Exec => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(EXEC_STANDBY);
                c
            }
            Kind::Java => {
                let files = self
                    .sandboxed
                    .as_ref()
                    .and_then(|s| s.java.ready())
                    .ok_or_else(|| std::io::Error::other("the java runtime is not prepared"))?;
                let mut c = Command::new("java");
                c.args(files.jvm_args(memory_mb))
                    .args(["PetrelJava", "--standby"]);
                c
            }
        };
        if kind == Kind::Node {
            cmd.arg("--standby");
        }
        cmd.env_clear()
            .env("PATH", &self.host_path)
            .env("LANG", "C.UTF-8")
            .env("TZ", ":UTC")
            .current_dir("/")
            .stdin(Stdio::piped());
        let mut cgroup = None;
        let sandboxed = match &self.sandboxed {
            Some(s) => {
                let StandbyCell {
                    root,
                    net,
                    mut plan,
                    cgroup: cg,
                } = s.prepare()?;
                let procs = match &cg {
                    Some(cg) => cg.open_procs()?,
                    None => Vec::new(),
                };
                cgroup = cg;
                petrel_sandbox::limits::confine_before_exec(cmd.as_std_mut(), procs);
                cmd.env("PATH", &s.path)
                    .env("HOME", "/tmp")
                    .env("TMPDIR", "/tmp")
                    .env_remove("PYTHONPYCACHEPREFIX")
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                let own_pid_ns = plan.spawner_makes_pid_ns();
                plan.apply(cmd.as_std_mut());
                Some((net, root, own_pid_ns))
            }
            None => {
                petrel_sandbox::limits::confine_before_exec(cmd.as_std_mut(), Vec::new());
                None
            }
        };
        let (source, attribution) = standby_identity();
        let (src, sink, a) = (source.clone(), self.sink.clone(), attribution.clone());
        let (process, stdin) = match &sandboxed {
            Some((_, _, true)) => {
                let rt = tokio::runtime::Handle::current();
                petrel_sandbox::in_new_pid_ns(move || {
                    let _rt = rt.enter();
                    Process::spawn_with_stdin(cmd, src, sink, a)
                })?
            }
            _ => Process::spawn_with_stdin(cmd, src, sink, a)?,
        };
        let sandboxed = sandboxed.map(|(net, root, _)| (net, root));
        Ok(Standby {
            process,
            stdin: Box::new(stdin.expect("stdin is piped"))
                as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
            source,
            attribution,
            sandboxed,
            cgroup,
            memory_mb,
        })
    }
}

/// The log identity of a standby process until it is handed its function.
fn standby_identity() -> (SourceCell, Arc<Attribution>) {
    let source = Arc::new(RwLock::new(LogSource {
        namespace: String::new(),
        function: "(standby)".into(),
        version: 0,
        instance: String::new(),
    }));
    (source, Arc::new(Attribution::default()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_standby_runs_the_program_with_exactly_the_instances_environment() {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(String, String)> = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/tmp"),
            ("QUOTED", "it's \"x\" $HOME"),
            ("MULTI", "a\nb"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let line = exec_line(&env, &["/usr/bin/env".to_owned(), "-0".to_owned()])
            .replace(petrel_sandbox::TASK_ROOT, dir.path().to_str().unwrap());
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(EXEC_STANDBY)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("TZ", ":UTC")
            .env("TMPDIR", "/var/tmp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let mut got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        got.sort();
        let mut want: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn the_exec_standby_gets_every_word_back_as_sent() {
        let words = [
            "plain",
            "it's",
            "two\nlines",
            "$HOME `id` \\ \"quoted\" ; exit 3",
            "",
        ];
        let line = std::iter::once("printf".to_owned())
            .chain(std::iter::once("%s|".to_owned()))
            .chain(words.iter().map(|w| w.to_string()))
            .map(|w| shell_quote(&w))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(!line.contains('\n'), "one line: {line}");
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(EXEC_STANDBY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            words.iter().map(|w| format!("{w}|")).collect::<String>()
        );
    }
}
