//! The process sandbox: each process instance in PID, mount, IPC and UTS namespaces of its own,
//! a network namespace of its own unless its function asks for the host's (`network = "host"`),
//! a root file system with the system's directories and its own code read-only and a private
//! `/tmp` of `tmp_mb`, as an unprivileged user with no capabilities, `no_new_privs`, and a
//! seccomp filter refusing what a function never needs.
//!
//! The node-wide part ([`Sandbox`]) is probed once at start by confining a real process; if
//! anything fails the sandbox is off and says why, never half on. The per-instance part
//! ([`Plan`]) is computed before the fork, so that the child runs only system calls on memory
//! prepared for it (the rules between fork and exec in a threaded program).
//!
//! A network namespace is made by Petrel itself, on a short-lived thread (a network namespace
//! is a per-thread attribute), with loopback up and the instance's Runtime API listener bound
//! in it: the listening socket belongs to the sandbox's network, and Petrel accepts on it from
//! outside. Connections to an `http` instance's port are made the same way, with a socket
//! created in the instance's namespace.

use nix::libc;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Fails with the OS error when `r` is negative.
macro_rules! check {
    ($r:expr) => {
        if $r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    };
}

/// The user and group a sandboxed instance runs as (`nobody` on Debian and most systems).
pub const SANDBOX_UID: u32 = 65534;
pub const SANDBOX_GID: u32 = 65534;
/// The Runtime API's address inside an instance's own network namespace, as on Lambda.
pub const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";
/// The port an `http` instance listens on inside its own network namespace.
pub const HTTP_PORT: u16 = 8080;
/// Where a sandboxed instance sees its function's code (its working directory), as on Lambda.
pub const TASK_ROOT: &str = "/var/task";

/// Entries of the host's `/etc` a function may need (the loader, time zones, name service,
/// TLS roots, Java's configuration); nothing else of it is visible (no `shadow`, no `sudoers`).
const ETC_ALLOWED: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
];
/// Prefixes of further `/etc` entries allowed (`java-17-openjdk`, ...).
const ETC_ALLOWED_PREFIXES: &[&str] = &["java-"];

/// Top-level system directories bound read-only (those that exist; symbolic links such as
/// `/bin -> usr/bin` are recreated as links).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Device nodes a function may open.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

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
    seccomp: Vec<libc::sock_filter>,
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
        #[allow(unsafe_code)]
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (host_net, userns) = if uid == 0 {
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
            (None, Some((uid, gid)))
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
            if let Err(e) = prepare_etc(dir, host_network) {
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
            seccomp: seccomp_filter(),
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
            "sandbox on{how}: PID, mount, IPC, UTS and network namespaces; a read-only root ({}, the function's code) with a private /tmp; user {SANDBOX_UID} with no capabilities and no_new_privs; seccomp refusing {} system calls",
            self.read_only
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            DENIED.len() + 2,
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

    /// The plan for one instance: `root` an empty directory to assemble its root on, its code
    /// directory (read-only at [`TASK_ROOT`], also its working directory; `None` for a standby
    /// process, whose code comes later, see [`inject_code`]), the size of its `/tmp`, and its
    /// network namespace (`None`: the host's).
    pub(crate) fn plan(
        &self,
        root: &Path,
        code_dir: Option<&Path>,
        tmp_mb: u32,
        net: Option<&NetNs>,
    ) -> std::io::Result<Plan> {
        let root = root.to_path_buf();
        let mut ops = Vec::new();
        let r = |p: &Path| -> PathBuf { root.join(p.strip_prefix("/").unwrap_or(p)) };
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut mkdir_p = |ops: &mut Vec<Op>, p: &Path| {
            let mut acc = PathBuf::from("/");
            for c in p.strip_prefix("/").unwrap_or(p).components() {
                acc.push(c);
                if !dirs.contains(&acc) {
                    dirs.push(acc.clone());
                    ops.push(Op::Mkdir(cpath(&r(&acc))?, 0o755));
                }
            }
            Ok::<(), std::io::Error>(())
        };
        // The root itself: a small memory-backed file system, read-only once assembled.
        ops.push(Op::Mount {
            src: cstr("petrel"),
            dst: cpath(&root)?,
            fstype: Some(cstr("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(cstr("size=1m,mode=0755")),
        });
        // /tmp first: the code and the shims may live under the host's /tmp, and are bound
        // on top of this one. Private, bounded, the only writable place besides /dev/shm.
        mkdir_p(&mut ops, Path::new("/tmp"))?;
        let tmp_opts = format!("size={}m,mode=1777", tmp_mb);
        ops.push(Op::Mount {
            src: cstr("tmpfs"),
            dst: cpath(&r(Path::new("/tmp")))?,
            fstype: Some(cstr("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(CString::new(tmp_opts.clone())?),
        });
        // /dev: the harmless device nodes, bound from the host's; shared memory, bounded.
        mkdir_p(&mut ops, Path::new("/dev"))?;
        ops.push(Op::Mount {
            src: cstr("tmpfs"),
            dst: cpath(&r(Path::new("/dev")))?,
            fstype: Some(cstr("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            data: Some(cstr("size=64k,mode=0755")),
        });
        for d in DEVICES {
            let host = Path::new("/dev").join(d);
            if host.exists() {
                let inside = r(&host);
                ops.push(Op::Touch(cpath(&inside)?));
                ops.push(Op::Mount {
                    src: cpath(&host)?,
                    dst: cpath(&inside)?,
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                });
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(Op::Symlink(
                cstr(target),
                cpath(&r(&Path::new("/dev").join(link)))?,
            ));
        }
        ops.push(Op::Mkdir(cpath(&r(Path::new("/dev/shm")))?, 0o1777));
        ops.push(Op::Mount {
            src: cstr("tmpfs"),
            dst: cpath(&r(Path::new("/dev/shm")))?,
            fstype: Some(cstr("tmpfs")),
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: Some(CString::new(tmp_opts)?),
        });
        for d in &self.read_only {
            mkdir_p(&mut ops, d)?;
            bind_ro(&mut ops, d, &r(d))?;
        }
        let task_root = Path::new(TASK_ROOT);
        mkdir_p(&mut ops, task_root)?;
        if let Some(code_dir) = code_dir {
            bind_ro(&mut ops, code_dir, &r(task_root))?;
        }
        for (target, link) in &self.links {
            ops.push(Op::Symlink(cpath(target)?, cpath(&r(link))?));
        }
        mkdir_p(&mut ops, Path::new("/etc"))?;
        let etc = if net.is_some() {
            &self.etc_none
        } else {
            &self.etc_host
        };
        bind_ro(&mut ops, etc, &r(Path::new("/etc")))?;
        // /proc of the instance's own PID namespace. Mounted before the old root goes: in a user
        // namespace the kernel allows a new proc mount only while a full one is visible.
        mkdir_p(&mut ops, Path::new("/proc"))?;
        ops.push(Op::Mount {
            src: cstr("proc"),
            dst: cpath(&r(Path::new("/proc")))?,
            fstype: Some(cstr("proc")),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        });
        let (net_fd, own_net) = match net.map(|n| &n.kind) {
            Some(NetKind::Joined { fd, .. }) => (Some(fd.try_clone()?), None),
            Some(NetKind::Made { child, listen, .. }) => {
                (None, Some((child.try_clone()?, *listen)))
            }
            None => (None, None),
        };
        let userns = match self.userns {
            Some((uid, gid)) => Some((
                CString::new(format!("{SANDBOX_UID} {uid} 1"))?,
                CString::new(format!("{SANDBOX_GID} {gid} 1"))?,
            )),
            None => None,
        };
        Ok(Plan {
            root: cpath(&root)?,
            ops,
            workdir: cpath(task_root)?,
            net: net_fd,
            own_net,
            pid1: false,
            userns,
            seccomp: self.seccomp.clone(),
            cap_last: self.cap_last,
        })
    }

    /// A new network namespace with loopback up, and the instance's Runtime API listener
    /// bound in it at [`RUNTIME_API_ADDR`] (when `listen` is set). As root Petrel makes it
    /// itself; in a user namespace the instance makes it, and hands out sockets of it.
    pub(crate) fn new_net(&self, listen: bool) -> std::io::Result<NetNs> {
        if self.userns.is_some() {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            let (ours, child) = socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )?;
            return Ok(NetNs {
                kind: NetKind::Made {
                    ours: std::sync::Mutex::new(ours),
                    child,
                    listen,
                },
                listener: None,
            });
        }
        let host = self
            .host_net
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the sandbox is off"))?
            .try_clone()?;
        // One made ahead, if there is one: making it costs about a millisecond of the cold
        // start. Its replacement is made off the request path.
        let ready = self.spare_nets.lock().unwrap().pop();
        self.refill_nets(host.try_clone()?);
        let mut net = match ready {
            Some(n) => n,
            None => make_net(host)?,
        };
        if !listen {
            net.listener = None;
        }
        Ok(net)
    }

    /// Makes network namespaces ahead until [`SPARE_NETS`] are ready (on a thread of its own).
    fn refill_nets(&self, host: OwnedFd) {
        let spares = self.spare_nets.clone();
        if spares.lock().unwrap().len() >= SPARE_NETS {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("petrel-netns".into())
            .spawn(move || {
                while spares.lock().unwrap().len() < SPARE_NETS {
                    let Ok(h) = host.try_clone() else { return };
                    match make_net(h) {
                        Ok(n) => spares.lock().unwrap().push(n),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not make a network namespace ahead");
                            return;
                        }
                    }
                }
            });
    }
}

/// Mounts `code_dir`, read-only, at [`TASK_ROOT`] in the mount namespace of process `pid` (a
/// standby process in its sandbox, which waits for its function): a copy of the directory's
/// mount is made here, and moved there by a thread that enters that namespace alone (it first
/// stops sharing its file-system attributes with Petrel's other threads). As root.
pub(crate) fn inject_code(pid: i32, code_dir: &Path) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let path = cpath(code_dir)?;
    let ns = OwnedFd::from(std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?);
    #[allow(unsafe_code)]
    // SAFETY: system calls on a C string, a properly laid out `mount_attr`, and descriptors
    // owned here.
    let tree = unsafe {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        ) as libc::c_int;
        check!(fd);
        let tree = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        check!(libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) as libc::c_int);
        tree
    };
    std::thread::Builder::new()
        .name("petrel-inject".into())
        .spawn(move || -> std::io::Result<()> {
            #[allow(unsafe_code)]
            // SAFETY: as above; the thread ends right after, so the namespace it entered
            // leaves with it.
            unsafe {
                check!(libc::unshare(libc::CLONE_FS));
                check!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS));
                let target = CString::new(TASK_ROOT).expect("no NUL");
                check!(libc::syscall(
                    libc::SYS_move_mount,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ) as libc::c_int);
            }
            Ok(())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the thread moving the code in panicked"))?
}

/// Runs `spawn` on a thread of its own whose children are born in a new PID namespace (a
/// per-thread setting), within the current Tokio runtime: the process it spawns is PID 1 there.
pub(crate) fn in_new_pid_ns<T: Send + 'static>(
    spawn: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("petrel-spawn".into())
        .spawn(move || {
            let _rt = handle.enter();
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?;
            spawn()
        })?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawn panicked")))
}

/// Network namespaces kept made ahead (as root).
const SPARE_NETS: usize = 2;

/// A new network namespace with loopback up and a Runtime API listener bound in it, made on a
/// short-lived thread (a network namespace is a per-thread attribute).
fn make_net(host: OwnedFd) -> std::io::Result<NetNs> {
    std::thread::Builder::new()
        .name("petrel-netns".into())
        .spawn(move || -> std::io::Result<NetNs> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            let fd = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net")?);
            loopback_up()?;
            let listener = Some(std::net::TcpListener::bind(RUNTIME_API_ADDR)?);
            Ok(NetNs {
                kind: NetKind::Joined { fd, host },
                listener,
            })
        })?
        .join()
        .map_err(|_| std::io::Error::other("the network namespace thread panicked"))?
}

/// An instance's own network namespace.
#[derive(Debug)]
pub(crate) struct NetNs {
    kind: NetKind,
    /// The Runtime API listener, in the namespace (taken by the endpoint).
    pub(crate) listener: Option<std::net::TcpListener>,
}

#[derive(Debug)]
enum NetKind {
    /// Made by Petrel (as root): a thread enters it to make a socket.
    Joined { fd: OwnedFd, host: OwnedFd },
    /// Made by the instance in its user namespace, which Petrel may not enter: the process
    /// waiting for the instance's PID 1 is in it, and answers each byte on this socket pair
    /// with a new TCP socket of the namespace. The listener comes first, unasked.
    Made {
        ours: std::sync::Mutex<OwnedFd>,
        child: OwnedFd,
        listen: bool,
    },
}

/// The request for a socket of an instance's network (see [`NetKind::Made`]).
const SOCKET_PLEASE: u8 = b'S';

impl NetNs {
    /// A TCP socket of this namespace (not yet connected, non-blocking).
    pub(crate) fn tcp_socket(&self) -> std::io::Result<tokio::net::TcpSocket> {
        use nix::sched::{setns, CloneFlags};
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let s = match &self.kind {
            NetKind::Joined { fd, host } => {
                // The calling thread enters the namespace for the `socket` call only.
                setns(fd, CloneFlags::CLONE_NEWNET)?;
                let s = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                    None,
                );
                // Back to the host's namespace whatever happened; a thread left in an
                // instance's network would be a leak between functions, so failing here is
                // fatal.
                if let Err(e) = setns(host, CloneFlags::CLONE_NEWNET) {
                    panic!("cannot return to the host's network namespace: {e}");
                }
                s?
            }
            NetKind::Made { ours, .. } => {
                let ours = ours.lock().unwrap();
                nix::unistd::write(&*ours, &[SOCKET_PLEASE])?;
                let s = receive_fd(&ours)?;
                nix::fcntl::fcntl(
                    &s,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )?;
                s
            }
        };
        let s = std::net::TcpStream::from(s);
        Ok(tokio::net::TcpSocket::from_std_stream(s))
    }

    /// After the instance started: the Runtime API listener it made in its namespace (in a
    /// user namespace); Petrel's own otherwise.
    pub(crate) fn take_listener(&mut self) -> std::io::Result<Option<std::net::TcpListener>> {
        if let Some(l) = self.listener.take() {
            return Ok(Some(l));
        }
        match &self.kind {
            NetKind::Made {
                ours, listen: true, ..
            } => {
                let fd = receive_fd(&ours.lock().unwrap())?;
                Ok(Some(std::net::TcpListener::from(fd)))
            }
            _ => Ok(None),
        }
    }

    /// Whether the listener is made by the instance, after its start.
    pub(crate) fn listener_comes_later(&self) -> bool {
        matches!(self.kind, NetKind::Made { listen: true, .. })
    }
}

/// Receives one descriptor sent with `SCM_RIGHTS`, waiting at most a few seconds.
fn receive_fd(sock: &OwnedFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
    setsockopt(
        sock,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    )?;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                #[allow(unsafe_code)]
                // SAFETY: the kernel just installed this descriptor for us; nobody else owns it.
                return Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other(
        "the instance's network sent no socket",
    ))
}

fn loopback_up() -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: see `loopback_up_raw`.
    unsafe {
        loopback_up_raw()
    }
}

/// Brings the loopback interface of the calling thread's network namespace up, with system
/// calls only (also between fork and exec).
#[allow(unsafe_code)]
unsafe fn loopback_up_raw() -> std::io::Result<()> {
    // SAFETY: `ifr` is a zeroed, properly sized `ifreq` naming "lo"; SIOCGIFFLAGS and
    // SIOCSIFFLAGS read and write only its flags field.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check!(s);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr);
        if r >= 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) >= 0 {
                libc::close(s);
                return Ok(());
            }
        }
        let e = std::io::Error::last_os_error();
        libc::close(s);
        Err(e)
    }
}

/// A socket of the calling process's network: TCP, close-on-exec; listening at
/// [`RUNTIME_API_ADDR`] when `listen`. System calls only.
#[allow(unsafe_code)]
unsafe fn raw_tcp_socket(listen: bool) -> libc::c_int {
    // SAFETY: plain system calls on a local address structure.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 || !listen {
            return s;
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = 9001u16.to_be();
        addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        if libc::bind(
            s,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) < 0
            || libc::listen(s, 128) < 0
        {
            libc::close(s);
            return -1;
        }
        s
    }
}

/// Sends descriptor `fd` over `sock` with `SCM_RIGHTS`. System calls only, on stack buffers.
#[allow(unsafe_code)]
unsafe fn raw_send_fd(sock: libc::c_int, fd: libc::c_int) -> libc::ssize_t {
    // SAFETY: the control buffer is large and aligned enough for one descriptor
    // (CMSG_SPACE of an int is 24 bytes on 64-bit Linux); the header fields are filled as
    // cmsg(3) describes.
    unsafe {
        let mut byte = [b'F'];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut buf = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::copy_nonoverlapping(
            (&fd as *const libc::c_int).cast::<u8>(),
            libc::CMSG_DATA(c),
            std::mem::size_of::<libc::c_int>(),
        );
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    }
}

/// Writes an instance's `/etc` into `dir`: copies of the allowed entries of the host's (links
/// into the system directories kept as links, others resolved), and Petrel's own `passwd`,
/// `group`, `hostname` and `hosts` (the host's `hosts` on the host's network).
fn prepare_etc(dir: &Path, host_network: bool) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for e in std::fs::read_dir("/etc")?.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if ETC_ALLOWED.contains(&n.as_ref())
            || ETC_ALLOWED_PREFIXES.iter().any(|p| n.starts_with(p))
        {
            // What cannot be read (a private key directory of root's) is simply not there.
            let _ = copy_entry(&e.path(), &dir.join(&name));
        }
    }
    let hosts = if host_network {
        std::fs::read("/etc/hosts").unwrap_or_default()
    } else {
        b"127.0.0.1 localhost petrel\n::1 localhost\n".to_vec()
    };
    for (name, contents) in [
        (
            "passwd",
            format!("root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/tmp:/usr/sbin/nologin\n").into_bytes(),
        ),
        ("group", format!("root:x:0:\nsbx_user:x:{SANDBOX_GID}:\n").into_bytes()),
        ("hostname", b"petrel\n".to_vec()),
        ("hosts", hosts),
    ] {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, contents)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    Ok(())
}

fn copy_entry(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src)?;
        let inside = target.is_relative() || SYSTEM_DIRS.iter().any(|d| target.starts_with(d));
        if inside {
            return std::os::unix::fs::symlink(&target, dst);
        }
        // A link out of the system directories (/run/..., say) would dangle: copy what it is.
        let resolved = std::fs::canonicalize(src)?;
        return copy_entry(&resolved, dst);
    }
    if meta.is_dir() {
        if src.ends_with("ssl/private") {
            return Ok(());
        }
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)?.flatten() {
            let _ = copy_entry(&e.path(), &dst.join(e.file_name()));
        }
        std::fs::set_permissions(dst, meta.permissions())?;
        return Ok(());
    }
    if meta.is_file() {
        std::fs::copy(src, dst)?;
    }
    Ok(())
}

/// Installation prefixes of the runtimes outside the system directories (a pyenv Python under
/// `/root`, a Node under `/opt`), to be visible read-only in the sandbox.
pub(crate) fn runtime_prefixes(path: &str) -> Vec<PathBuf> {
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

fn cstr(s: &str) -> CString {
    CString::new(s).expect("a constant without NUL")
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other(format!("{} contains a NUL byte", p.display())))
}

fn bind_ro(ops: &mut Vec<Op>, src: &Path, dst: &Path) -> std::io::Result<()> {
    // A remount keeps the source's noexec and atime flags: in a user namespace they are locked,
    // and a remount that would clear them is refused.
    use nix::sys::statvfs::{statvfs, FsFlags};
    let kept = statvfs(src)
        .map(|v| {
            let f = v.flags();
            let mut m = 0;
            for (st, ms) in [
                (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
                (FsFlags::ST_NOATIME, libc::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, libc::MS_RELATIME),
            ] {
                if f.contains(st) {
                    m |= ms;
                }
            }
            m
        })
        .unwrap_or(0);
    let (src, dst) = (cpath(src)?, cpath(dst)?);
    ops.push(Op::Mount {
        src,
        dst: dst.clone(),
        fstype: None,
        flags: libc::MS_BIND | libc::MS_REC,
        data: None,
    });
    ops.push(Op::Mount {
        src: cstr("none"),
        dst,
        fstype: None,
        flags: libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | kept,
        data: None,
    });
    Ok(())
}

/// One step of assembling an instance's root.
#[derive(Debug)]
enum Op {
    Mkdir(CString, u32),
    /// An empty regular file: the mount point of a bound device node.
    Touch(CString),
    Symlink(CString, CString),
    Mount {
        src: CString,
        dst: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
}

/// Everything one instance's confinement needs, prepared before the fork.
#[derive(Debug)]
pub(crate) struct Plan {
    root: CString,
    ops: Vec<Op>,
    workdir: CString,
    net: Option<OwnedFd>,
    /// In a user namespace: the instance makes its network itself; the descriptor to hand out
    /// its sockets on, and whether to make the Runtime API listener first.
    own_net: Option<(OwnedFd, bool)>,
    /// In a user namespace: its uid_map and gid_map lines.
    userns: Option<(CString, CString)>,
    /// Spawned into a new PID namespace already (as PID 1, see [`Plan::spawner_makes_pid_ns`]):
    /// no second fork, no process in between.
    pid1: bool,
    seccomp: Vec<libc::sock_filter>,
    /// The highest capability this kernel knows, read once (`/proc/sys/kernel/cap_last_cap`).
    cap_last: u32,
}

impl Plan {
    /// The plan as the Python fork server carries it out in a forked child (see
    /// `runtimes/python/bootstrap.py`, `_confine`): the same steps, in the same order, as
    /// [`Plan::apply`]; the network namespace travels separately, as a descriptor.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let s = |c: &CString| String::from_utf8_lossy(c.as_bytes()).into_owned();
        let ops: Vec<serde_json::Value> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Mkdir(p, mode) => json!(["mkdir", s(p), mode]),
                Op::Touch(p) => json!(["touch", s(p)]),
                Op::Symlink(t, l) => json!(["symlink", s(t), s(l)]),
                Op::Mount {
                    src,
                    dst,
                    fstype,
                    flags,
                    data,
                } => json!([
                    "mount",
                    s(src),
                    s(dst),
                    fstype.as_ref().map(s),
                    flags,
                    data.as_ref().map(s)
                ]),
            })
            .collect();
        let filter: Vec<u8> = self
            .seccomp
            .iter()
            .flat_map(|f| {
                let mut b = Vec::with_capacity(8);
                b.extend_from_slice(&f.code.to_ne_bytes());
                b.push(f.jt);
                b.push(f.jf);
                b.extend_from_slice(&f.k.to_ne_bytes());
                b
            })
            .collect();
        json!({
            "root": s(&self.root),
            "workdir": s(&self.workdir),
            "ops": ops,
            "uid": SANDBOX_UID,
            "gid": SANDBOX_GID,
            "seccomp": hex::encode(filter),
            "sys_pivot_root": libc::SYS_pivot_root,
            "cap_last": self.cap_last,
        })
    }

    /// Whether the spawning thread can make the instance's PID namespace itself (as root; in a
    /// user namespace the PID namespace must belong to the instance's user namespace, so the
    /// child makes it and forks). If so, the plan expects its process to be PID 1 already.
    pub(crate) fn spawner_makes_pid_ns(&mut self) -> bool {
        self.pid1 = self.userns.is_none();
        self.pid1
    }

    /// The network namespace to enter, if the instance has its own.
    pub(crate) fn net_fd(&self) -> Option<std::os::fd::RawFd> {
        self.net.as_ref().map(|f| f.as_raw_fd())
    }
}

impl Plan {
    /// Registers the confinement to run in `cmd`'s child between fork and exec, after the
    /// rlimits and cgroup (registered before). The child enters the namespaces and forks: its
    /// child, PID 1 of the new PID namespace, assembles the root, drops privileges and goes on
    /// to exec; the first child stays outside, waits for it and exits as it did, so Petrel's
    /// view of the process (its pid, its exit, its process group) is unchanged.
    pub(crate) fn apply(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the child between fork and exec, where a threaded
        // program's child may only make async-signal-safe calls. It makes system calls only
        // (setns, unshare, fork, waitpid, close_range, mount, mkdir, open, write, symlink,
        // pivot_root, chdir, sethostname, prctl, setgroups, setresgid, setresuid, kill,
        // signal, _exit) on memory prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    #[allow(unsafe_code)]
    fn enter(&self) -> std::io::Result<()> {
        // SAFETY (for each block below): plain system calls on C strings and buffers that
        // outlive them; see `apply`.
        unsafe {
            if let Some((uid_map, gid_map)) = &self.userns {
                // A user namespace of its own first: the capabilities it gives are what the
                // rest needs, and they count only inside.
                check!(libc::unshare(libc::CLONE_NEWUSER));
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", uid_map.as_bytes())?;
                write_file(c"/proc/self/gid_map", gid_map.as_bytes())?;
            }
            if let Some(net) = &self.net {
                check!(libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET));
            }
            let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
            if self.own_net.is_some() {
                flags |= libc::CLONE_NEWNET;
            }
            if !self.pid1 {
                flags |= libc::CLONE_NEWPID;
            }
            check!(libc::unshare(flags));
            let mut factory = -1;
            if let Some((sock, listen)) = &self.own_net {
                loopback_up_raw()?;
                factory = sock.as_raw_fd();
                if *listen {
                    let l = raw_tcp_socket(true);
                    check!(l);
                    check!(raw_send_fd(factory, l) as libc::c_int);
                    libc::close(l);
                }
            }
            if !self.pid1 {
                let child = libc::fork();
                check!(child);
                if child > 0 {
                    reap(child, factory);
                }
                // PID 1 of the instance's namespace: dies with the process waiting for it (and
                // the whole namespace with it). A session of its own: nothing it does to its
                // process group reaches the process outside.
                check!(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0));
                check!(libc::setsid());
            }
            check!(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ));
            for op in &self.ops {
                match op {
                    Op::Mkdir(p, mode) => {
                        if libc::mkdir(p.as_ptr(), *mode as libc::mode_t) < 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        if *mode & 0o7000 != 0 {
                            check!(libc::chmod(p.as_ptr(), *mode as libc::mode_t));
                        }
                    }
                    Op::Touch(p) => {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                            0o644,
                        );
                        check!(fd);
                        libc::close(fd);
                    }
                    Op::Symlink(target, link) => {
                        check!(libc::symlink(target.as_ptr(), link.as_ptr()));
                    }
                    Op::Mount {
                        src,
                        dst,
                        fstype,
                        flags,
                        data,
                    } => {
                        check!(libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                            *flags,
                            data.as_ref()
                                .map_or(std::ptr::null(), |d| d.as_ptr().cast())
                        ));
                    }
                }
            }
            // Swap roots: the old one is stacked under the new and detached.
            check!(libc::chdir(self.root.as_ptr()));
            check!(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
            );
            check!(libc::umount2(c".".as_ptr(), libc::MNT_DETACH));
            check!(libc::chdir(c"/".as_ptr()));
            check!(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
                std::ptr::null()
            ));
            check!(libc::chdir(self.workdir.as_ptr()));
            check!(libc::sethostname(c"petrel".as_ptr(), 6));
            // No capability may come back through exec.
            for cap in 0..=self.cap_last {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if self.userns.is_none() {
                // In a user namespace, setgroups is denied (and there are none to drop).
                check!(libc::setgroups(0, std::ptr::null()));
            }
            check!(libc::setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID));
            check!(libc::setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID));
            if !self.pid1 {
                // Changing credentials cleared the parent-death signal.
                check!(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0));
            }
            check!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
            let prog = libc::sock_fprog {
                len: self.seccomp.len() as libc::c_ushort,
                filter: self.seccomp.as_ptr() as *mut libc::sock_filter,
            };
            check!(libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
                0,
                0
            ));
        }
        Ok(())
    }
}

/// Writes `bytes` to the file at `path`. System calls only.
#[allow(unsafe_code)]
unsafe fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: plain system calls on a C string and a byte slice that outlive them.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check!(fd);
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        check!(n);
    }
    Ok(())
}

/// The process between Petrel and an instance's PID 1: closes everything it inherited (so
/// Petrel's spawn sees the exec of PID 1, not this process), waits for PID 1, and ends the way
/// it ended. In a user namespace it is also in the instance's network, and answers each
/// request on `factory` with a new TCP socket of it.
#[allow(unsafe_code)]
unsafe fn reap(child: libc::pid_t, factory: libc::c_int) -> ! {
    // SAFETY: system calls only; see `Plan::apply`.
    unsafe {
        if factory >= 0 {
            if factory > 0 {
                libc::syscall(libc::SYS_close_range, 0u32, (factory - 1) as u32, 0u32);
            }
            libc::syscall(libc::SYS_close_range, (factory + 1) as u32, u32::MAX, 0u32);
            let pidfd = libc::syscall(libc::SYS_pidfd_open, child, 0) as libc::c_int;
            let mut fds = [
                libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: factory,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Without a pidfd (an old kernel), only wait.
            while let 0.. = pidfd {
                if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                    if *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    break;
                }
                if fds[0].revents != 0 {
                    break; // PID 1 ended
                }
                if fds[1].revents != 0 {
                    let mut b = [0u8; 1];
                    if libc::recv(factory, b.as_mut_ptr().cast(), 1, 0) <= 0 {
                        fds[1].fd = -1; // Petrel let go; just wait
                        continue;
                    }
                    let s = raw_tcp_socket(false);
                    if s >= 0 {
                        raw_send_fd(factory, s);
                        libc::close(s);
                    }
                }
            }
            libc::close(factory);
        } else {
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// System calls a function never needs, refused with `EPERM`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_bpf,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// Refused with `ENOSYS`, so that callers fall back: `clone3` (its flags are behind a pointer
/// the filter cannot read; glibc falls back to `clone`, whose flags it can) and io_uring (libuv
/// falls back to its thread pool).
const UNSUPPORTED: &[libc::c_long] = &[
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// `clone` flags that make new namespaces.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// The seccomp program: a foreign architecture kills the process; the denied calls, `clone`
/// making namespaces, and (on x86_64) the x32 ABI get `EPERM`; everything else is allowed.
fn seccomp_filter() -> Vec<libc::sock_filter> {
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(ld, 4), // seccomp_data.arch
        jump(jeq, AUDIT_ARCH, 1, 0),
        stmt(ret, RET_KILL_PROCESS),
        stmt(ld, 0), // seccomp_data.nr
    ];
    #[cfg(target_arch = "x86_64")]
    {
        p.push(jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            0x4000_0000,
            0,
            1,
        ));
        p.push(stmt(ret, eperm));
    }
    for nr in DENIED {
        p.push(jump(jeq, *nr as u32, 0, 1));
        p.push(stmt(ret, eperm));
    }
    for nr in UNSUPPORTED {
        p.push(jump(jeq, *nr as u32, 0, 1));
        p.push(stmt(ret, RET_ERRNO | libc::ENOSYS as u32));
    }
    p.extend([
        jump(jeq, libc::SYS_clone as u32, 0, 3),
        stmt(ld, 16), // the low half of seccomp_data.args[0]: clone's flags
        jump(
            libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
            NAMESPACE_FLAGS,
            0,
            1,
        ),
        stmt(ret, eperm),
        stmt(ret, RET_ALLOW),
    ]);
    p
}
