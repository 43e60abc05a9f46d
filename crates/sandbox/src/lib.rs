//! The process sandbox, and the one crate of Petrel where `unsafe` is allowed.
//!
//! Each process instance runs in PID, mount, IPC and UTS namespaces of its own, a network
//! namespace of its own unless its function asks for the host's (`network = "host"`), on a root
//! file system with the system's directories and its own code read-only and a private `/tmp` of
//! `tmp_mb`, as an unprivileged user with no capabilities, `no_new_privs`, resource limits, and
//! seccomp filters refusing what a function never needs. The layers, one module each:
//!
//! - [`plan`]: what one instance's confinement is, computed before the fork (the root's mounts,
//!   its user, its filters), so that the child runs only system calls on memory prepared for it;
//! - `enter`: carrying a plan out in the child, between fork and exec (or, in the Python fork
//!   server's children, through the C ABI of `ffi`, the same code);
//! - [`network`]: an instance's own network namespace, its Runtime API listener and its sockets;
//! - `etc`: the instance's `/etc`;
//! - [`seccomp`]: the filters, built with `seccompiler`;
//! - [`limits`]: resource limits and joining a cgroup before exec;
//! - `inject`: handing a standby process in its sandbox its code;
//! - `compiled` (feature `wasm`): loading wasm code Petrel compiled itself, the trust decision
//!   the wasm sandbox rests on.
//!
//! The node-wide part ([`Sandbox`]) is probed once at start by confining a real process; if
//! anything fails the sandbox is off and says why, never half on.
//!
//! This crate does not decide when an instance starts or what it runs: that is
//! `petrel-runtime`. Every `unsafe` block here carries a `// SAFETY:` comment (the crate denies
//! `clippy::undocumented_unsafe_blocks`); every other crate of the workspace forbids `unsafe`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Fails with the OS error when `r` is negative.
macro_rules! check {
    ($r:expr) => {
        if $r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    };
}

#[cfg(feature = "wasm")]
pub mod compiled;
mod enter;
mod etc;
pub mod ffi;
mod heap;
mod inject;
pub mod limits;
pub mod network;
pub mod plan;
pub mod seccomp;

pub use heap::release_free_heap;
pub use inject::{in_new_pid_ns, inject_code};
pub use network::NetNs;
pub use plan::Plan;

/// The user and group a sandboxed instance runs as (`nobody` on Debian and most systems).
pub const SANDBOX_UID: u32 = 65534;
pub const SANDBOX_GID: u32 = 65534;
/// The Runtime API's address inside an instance's own network namespace, as on Lambda.
pub const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";
/// The port an `http` instance listens on inside its own network namespace.
pub const HTTP_PORT: u16 = 8080;
/// Where a sandboxed instance sees its function's code (its working directory), as on Lambda.
pub const TASK_ROOT: &str = "/var/task";
/// Where a sandboxed instance finds its function's secrets, one file each (`/run/secrets/NAME`).
pub const SECRETS_DIR: &str = "/run/secrets";

/// Top-level system directories bound read-only (those that exist; symbolic links such as
/// `/bin -> usr/bin` are recreated as links).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The node-wide sandbox: whether it is on, and what every instance's root is made of.
#[derive(Debug)]
pub struct Sandbox {
    status: String,
    on: bool,
    /// The directories every instance sees read-only, besides its code: system directories,
    /// the runtimes' installations, Petrel's shims.
    read_only: Vec<PathBuf>,
    links: Vec<(PathBuf, PathBuf)>,
    /// The instance's `/etc`, prepared at start: the allowed entries of the host's, and
    /// Petrel's own `passwd`, `group`, `hostname` and `hosts`; one for each network mode.
    etc_none: PathBuf,
    etc_host: PathBuf,
    spare_nets: std::sync::Arc<std::sync::Mutex<Vec<NetNs>>>,
    /// The seccomp programs every instance installs, made once.
    seccomp: Vec<seccomp::Program>,
    /// The highest capability this kernel knows, read once (`/proc/sys/kernel/cap_last_cap`).
    cap_last: u32,
    /// The host's network namespace, to return to after making a socket in an instance's;
    /// `None` in a user namespace, where the instance makes its network itself.
    host_net: Option<OwnedFd>,
    /// Run as an ordinary user: each instance first enters a user namespace of its own, where
    /// user 65534 maps to Petrel's user (and group).
    userns: Option<(u32, u32)>,
}

impl Sandbox {
    /// A sandbox that is off, saying why.
    pub fn off(why: impl Into<String>) -> Self {
        Self {
            status: format!("sandbox off: {}", why.into()),
            on: false,
            read_only: Vec::new(),
            links: Vec::new(),
            etc_none: PathBuf::new(),
            etc_host: PathBuf::new(),
            spare_nets: Default::default(),
            seccomp: Vec::new(),
            cap_last: 0,
            host_net: None,
            userns: None,
        }
    }

    /// Prepares the sandbox: `runtimes` are installation directories to make visible (the
    /// Python prefix, ...), `shims` Petrel's runtime shims, `state` a directory of its own
    /// (rewritten at every start). Off, with the reason, when it cannot be on.
    pub fn new(runtimes: &[PathBuf], shims: &Path, state: &Path) -> Self {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        let (host_net, userns) = if uid.is_root() {
            match std::fs::File::open("/proc/thread-self/ns/net") {
                Ok(f) => (Some(OwnedFd::from(f)), None),
                Err(e) => {
                    return Self::off(format!("cannot open the host's network namespace: {e}"))
                }
            }
        } else {
            let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if max == 0 {
                return Self::off(
                    "Petrel is not running as root and this kernel allows no user namespaces (user.max_user_namespaces = 0); run as root for the sandbox",
                );
            }
            (None, Some((uid.as_raw(), gid.as_raw())))
        };
        let seccomp = match seccomp::programs() {
            Ok(p) => p,
            Err(e) => return Self::off(format!("cannot build the seccomp filters: {e}")),
        };
        let mut read_only = Vec::new();
        let mut links = Vec::new();
        for d in SYSTEM_DIRS {
            let p = Path::new(d);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(t) = std::fs::read_link(p) {
                        links.push((t, p.to_path_buf()));
                    }
                }
                Ok(m) if m.is_dir() => read_only.push(p.to_path_buf()),
                _ => {}
            }
        }
        for r in runtimes.iter().chain(std::iter::once(&shims.to_path_buf())) {
            if !read_only.iter().any(|d| r.starts_with(d)) {
                read_only.push(r.clone());
            }
        }
        let (etc_none, etc_host) = (state.join("etc-none"), state.join("etc-host"));
        for (dir, host_network) in [(&etc_none, false), (&etc_host, true)] {
            if let Err(e) = etc::prepare(dir, host_network) {
                return Self::off(format!("cannot prepare {}: {e}", dir.display()));
            }
        }
        Self {
            status: String::new(),
            on: true,
            read_only,
            links,
            etc_none,
            etc_host,
            spare_nets: Default::default(),
            seccomp,
            cap_last: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(63),
            host_net,
            userns,
        }
        .described()
    }

    fn described(mut self) -> Self {
        let how = match self.userns {
            None => String::new(),
            Some((uid, _)) => format!(" in a user namespace (Petrel runs as user {uid}, not root: user {SANDBOX_UID} inside is user {uid} outside; no cgroups)"),
        };
        self.status = format!(
            "sandbox on{how}: PID, mount, IPC, UTS and network namespaces; a read-only root ({}, the function's code) with a private /tmp; user {SANDBOX_UID} with no capabilities and no_new_privs; seccomp refusing {} system calls and the x32 ABI",
            self.read_only
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            seccomp::DENIED.len() + seccomp::UNSUPPORTED.len() + 1,
        );
        self
    }

    /// Turns the sandbox off after a failed probe.
    pub fn disable(&mut self, why: impl std::fmt::Display) {
        *self = Self::off(format!("the probe failed: {why}"));
    }

    pub fn enabled(&self) -> bool {
        self.on
    }

    /// Whether instances enter a user namespace (Petrel is not root).
    pub fn in_user_namespace(&self) -> bool {
        self.userns.is_some()
    }

    pub fn status(&self) -> &str {
        &self.status
    }

    /// The seccomp programs every instance installs (for tests and the probe).
    pub fn seccomp_programs(&self) -> &[seccomp::Program] {
        &self.seccomp
    }

    /// Runs a shell through the whole sandbox once, and checks from inside that each layer is
    /// on: PID 1 of its own namespace, the unprivileged user with no capabilities,
    /// `no_new_privs` and seccomp, loopback only, `/etc/shadow` absent, the root read-only and
    /// `/tmp` writable. `scratch` is a directory to assemble the probe's root in.
    pub fn probe(&self, scratch: &Path) -> Result<(), String> {
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
        let root = scratch.join("sandbox-probe");
        let code = scratch.join("sandbox-probe-code");
        for d in [&root, &code] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let net = self
            .new_net(false)
            .map_err(|e| format!("network namespace: {e}"))?;
        let plan = self
            .plan(&root, Some(&code), 1, Some(&net), None)
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
}

/// Installation prefixes of the runtimes outside the system directories (a pyenv Python under
/// `/root`, a Node under `/opt`), to be visible read-only in the sandbox.
pub fn runtime_prefixes(path: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    if let Ok(out) = std::process::Command::new("python3")
        .env("PATH", path)
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    {
        if out.status.success() {
            v.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    for bin in ["node", "java"] {
        let found = std::env::split_paths(path)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok());
        if let Some(prefix) = found
            .as_deref()
            .and_then(Path::parent)
            .and_then(Path::parent)
        {
            v.push(prefix.to_path_buf());
        }
    }
    v.retain(|p| p.is_absolute() && !SYSTEM_DIRS.iter().any(|d| p.starts_with(d)));
    v.sort();
    v.dedup();
    v
}
