//! The Python fork server (zygote): one `python3 bootstrap.py --zygote` per Petrel server, with
//! the interpreter, the shim and common standard library modules loaded, that forks each new
//! `python3` instance instead of Petrel starting a fresh interpreter (SOCK, ATC'18).
//!
//! Petrel talks to it over a `SOCK_SEQPACKET` socket pair handed over as its stdin: one message
//! per instance (its environment and directory as JSON, with its stdout and stderr pipes attached
//! as `SCM_RIGHTS`), answered with the child's pid. The fork server reaps its children and reports
//! each end, which becomes the instance's exit. A child leads a process group of its own, so
//! killing the instance kills everything it started, exactly as for a spawned process.

use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// How long a fork may take before Petrel gives up on the fork server for that instance.
const FORK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A child the fork server made: its pid and a watch that gets how it ended.
pub(crate) struct Forked {
    pub pid: i32,
    pub exit: watch::Receiver<Option<String>>,
}

type Replies = HashMap<u64, oneshot::Sender<Result<Forked, String>>>;

#[derive(Default)]
struct Shared {
    replies: Mutex<Replies>,
    exits: Mutex<HashMap<i32, watch::Sender<Option<String>>>>,
    dead: AtomicBool,
}

/// What one fork is to make.
pub(crate) struct ForkRequest<'a> {
    /// The child's environment and working directory.
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// `cgroup.procs` files it writes `0` to first.
    pub cgroup_procs: &'a [std::path::PathBuf],
    /// Its sandbox, entered before any function code runs.
    pub sandbox: Option<&'a petrel_sandbox::Plan>,
    /// The pipe ends its stdout and stderr go to.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// A standby child's pipe: it waits there for its function (one line of JSON).
    pub standby_spec: Option<OwnedFd>,
}

pub(crate) struct Zygote {
    ctl: OwnedFd,
    next_id: AtomicU64,
    shared: Arc<Shared>,
    _child: Mutex<tokio::process::Child>,
}

#[derive(Deserialize)]
struct Message {
    id: Option<u64>,
    pid: Option<i32>,
    error: Option<String>,
    exit: Option<i32>,
    code: Option<i32>,
    signal: Option<i32>,
}

impl Zygote {
    /// Starts the fork server with the shim at `shim`; `sandbox_lib` is the sandbox's shared
    /// library its children confine themselves with (when the sandbox is on).
    pub(crate) fn start(
        shim: &Path,
        host_path: &str,
        pycache: &Path,
        sandbox_lib: Option<&Path>,
    ) -> std::io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg("-u")
            .arg(shim)
            .arg("--zygote")
            .env_clear()
            .env("PATH", host_path)
            .env("LANG", "C.UTF-8")
            .env("TZ", ":UTC")
            .env("PYTHONPYCACHEPREFIX", pycache)
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(lib) = sandbox_lib {
            cmd.env("PETREL_SANDBOX_LIB", lib);
        }
        // Its children inherit the limits.
        petrel_sandbox::limits::confine_before_exec(cmd.as_std_mut(), Vec::new());
        let child = cmd.spawn()?;
        let shared = Arc::new(Shared::default());
        let reader = ours.try_clone()?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("petrel-zygote".into())
            .spawn(move || read_loop(reader, s))?;
        Ok(Self {
            ctl: ours,
            next_id: AtomicU64::new(1),
            shared,
            _child: Mutex::new(child),
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire)
    }

    /// Forks an instance as `req` describes.
    pub(crate) async fn fork(&self, req: ForkRequest<'_>) -> Result<Forked, String> {
        let ForkRequest {
            env,
            cwd,
            cgroup_procs,
            sandbox,
            stdout,
            stderr,
            standby_spec,
        } = req;
        if !self.is_alive() {
            return Err("the Python fork server has ended".into());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The descriptors sent, and their names in that order.
        let mut fds = vec![stdout.as_raw_fd(), stderr.as_raw_fd()];
        let mut names = vec!["stdout", "stderr"];
        if let Some(net) = sandbox.and_then(petrel_sandbox::Plan::net_fd) {
            fds.push(net);
            names.push("net");
        }
        if let Some(spec) = &standby_spec {
            fds.push(spec.as_raw_fd());
            names.push("spec");
        }
        let plan = match sandbox.map(petrel_sandbox::Plan::to_bytes).transpose() {
            Ok(p) => p.map(hex::encode),
            Err(e) => {
                return Err(format!(
                    "the sandbox plan cannot go to the fork server: {e}"
                ))
            }
        };
        let msg = serde_json::json!({
            "id": id,
            "env": env.iter().cloned().collect::<HashMap<String, String>>(),
            "cwd": cwd,
            "cgroup_procs": cgroup_procs,
            "sandbox": plan,
            "fds": names,
        })
        .to_string();
        let (tx, rx) = oneshot::channel();
        self.shared.replies.lock().unwrap().insert(id, tx);
        let sent = sendmsg::<()>(
            self.ctl.as_raw_fd(),
            &[IoSlice::new(msg.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
        // The fork server holds its own copies now; ours would keep the pipes open forever.
        drop((stdout, stderr, standby_spec));
        if let Err(e) = sent {
            self.shared.replies.lock().unwrap().remove(&id);
            return Err(format!("could not reach the Python fork server: {e}"));
        }
        // The first fork after start waits for the preloads (well under a second); a fork server
        // that takes longer is stuck, and the instance starts plainly instead.
        match tokio::time::timeout(FORK_TIMEOUT, rx).await {
            Ok(reply) => {
                reply.unwrap_or_else(|_| Err("the Python fork server ended during a fork".into()))
            }
            Err(_) => {
                self.shared.replies.lock().unwrap().remove(&id);
                Err(format!(
                    "the Python fork server did not fork within {FORK_TIMEOUT:?}"
                ))
            }
        }
    }
}

fn read_loop(sock: OwnedFd, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(m) = serde_json::from_slice::<Message>(&buf[..n]) else {
            tracing::warn!("the Python fork server sent a message Petrel cannot read");
            continue;
        };
        if let Some(pid) = m.exit {
            let how = crate::os_process::describe_end(m.code, m.signal);
            if let Some(tx) = shared.exits.lock().unwrap().remove(&pid) {
                let _ = tx.send(Some(how));
            }
            continue;
        }
        let Some(id) = m.id else { continue };
        let Some(tx) = shared.replies.lock().unwrap().remove(&id) else {
            // Petrel gave up on this fork (it timed out): the child has no instance to serve.
            if let Some(pid) = m.pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            continue;
        };
        let reply = match (m.pid, m.error) {
            (Some(pid), _) => {
                // Registered before the reply is handed on: the child's end, reported later on
                // this same socket, always finds its watch.
                let (etx, erx) = watch::channel(None);
                shared.exits.lock().unwrap().insert(pid, etx);
                Ok(Forked { pid, exit: erx })
            }
            (None, Some(e)) => Err(format!("the Python fork server could not fork: {e}")),
            (None, None) => Err("the Python fork server answered without a pid".into()),
        };
        let _ = tx.send(reply);
    }
    // The fork server is gone; so are its children (they die with it), and Petrel must not wait
    // for reports that will never come.
    shared.dead.store(true, Ordering::Release);
    for (pid, tx) in shared.exits.lock().unwrap().drain() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = tx.send(Some("ended with the Python fork server".into()));
    }
    shared.replies.lock().unwrap().clear();
}
