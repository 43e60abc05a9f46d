//! An instance's own network namespace: made by Petrel itself as root, on a short-lived thread
//! (a network namespace is a per-thread attribute), with loopback up and the instance's Runtime
//! API listener bound in it, so that the listening socket belongs to the sandbox's network and
//! Petrel accepts on it from outside. Connections to an `http` instance's port are made the same
//! way, with a socket created in the instance's namespace. In a user namespace the instance
//! makes its network itself and hands sockets of it out (see [`NetNs`]).

use crate::{Sandbox, RUNTIME_API_ADDR};
use nix::libc;
use std::os::fd::{AsRawFd, OwnedFd};

/// What a plan takes of an instance's network: the namespace to enter (as root), or the socket
/// to hand its sockets out on and whether to make the Runtime API listener (in a user
/// namespace).
pub(crate) type PlanNet = (Option<OwnedFd>, Option<(OwnedFd, bool)>);

impl Sandbox {
    /// A new network namespace with loopback up, and the instance's Runtime API listener
    /// bound in it at [`RUNTIME_API_ADDR`] (when `listen` is set). As root Petrel makes it
    /// itself; in a user namespace the instance makes it, and hands out sockets of it.
    pub fn new_net(&self, listen: bool) -> std::io::Result<NetNs> {
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
pub struct NetNs {
    kind: NetKind,
    /// The Runtime API listener, in the namespace (taken by the endpoint).
    pub listener: Option<std::net::TcpListener>,
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
    /// What a plan takes of it: the namespace to enter, or (in a user namespace) the socket to
    /// hand out its sockets on and whether to make the Runtime API listener.
    pub(crate) fn for_plan(&self) -> std::io::Result<PlanNet> {
        Ok(match &self.kind {
            NetKind::Joined { fd, .. } => (Some(fd.try_clone()?), None),
            NetKind::Made { child, listen, .. } => (None, Some((child.try_clone()?, *listen))),
        })
    }

    /// A TCP socket of this namespace (not yet connected, non-blocking, close-on-exec).
    pub fn tcp_socket(&self) -> std::io::Result<OwnedFd> {
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
        Ok(s)
    }

    /// After the instance started: the Runtime API listener it made in its namespace (in a
    /// user namespace); Petrel's own otherwise.
    pub fn take_listener(&mut self) -> std::io::Result<Option<std::net::TcpListener>> {
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
    pub fn listener_comes_later(&self) -> bool {
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
    // SAFETY: system calls on a zeroed `ifreq` of our own (see `loopback_up_raw`).
    unsafe { loopback_up_raw() }
}

/// Brings the loopback interface of the calling thread's network namespace up, with system
/// calls only (also between fork and exec).
pub(crate) unsafe fn loopback_up_raw() -> std::io::Result<()> {
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
pub(crate) unsafe fn raw_tcp_socket(listen: bool) -> libc::c_int {
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
pub(crate) unsafe fn raw_send_fd(sock: libc::c_int, fd: libc::c_int) -> libc::ssize_t {
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
