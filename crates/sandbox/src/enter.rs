//! Carrying a [`Plan`] out in the child, between fork and exec: only system calls on memory
//! the plan prepared, no allocation (the rules of a threaded program's child).

use crate::plan::{Op, Plan};
use crate::{network, SANDBOX_GID, SANDBOX_UID};
use std::os::fd::AsRawFd;

impl Plan {
    /// Registers the confinement to run in `cmd`'s child between fork and exec, after the
    /// rlimits and cgroup (registered before). The child enters the namespaces and forks: its
    /// child, PID 1 of the new PID namespace, assembles the root, drops privileges and goes on
    /// to exec; the first child stays outside, waits for it and exits as it did, so Petrel's
    /// view of the process (its pid, its exit, its process group) is unchanged.
    pub fn apply(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec, where a threaded
        // program's child may only make async-signal-safe calls. It makes system calls only
        // (setns, unshare, fork, waitpid, close_range, mount, mkdir, open, write, symlink,
        // pivot_root, chdir, sethostname, prctl, setgroups, setresgid, setresuid, kill,
        // signal, _exit) on memory prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    /// Carries the plan out in the calling process: between fork and exec (see
    /// [`Plan::apply`]), or in a fork server's child (see [`crate::ffi`]).
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on C strings and buffers that outlive them, and on
        // descriptors the plan owns; nothing here allocates (see `apply`).
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
                network::loopback_up_raw()?;
                factory = sock.as_raw_fd();
                if *listen {
                    let l = network::raw_tcp_socket(true);
                    check!(l);
                    check!(network::raw_send_fd(factory, l) as libc::c_int);
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
            if self.parent_death_signal {
                // Changing credentials cleared the parent-death signal.
                check!(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0));
            }
            check!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
            for program in &self.seccomp {
                let prog = libc::sock_fprog {
                    len: program.len() as libc::c_ushort,
                    filter: program.as_ptr() as *mut libc::sock_filter,
                };
                check!(libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                    0,
                    0
                ));
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to the file at `path`. System calls only.
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
                    let s = network::raw_tcp_socket(false);
                    if s >= 0 {
                        network::raw_send_fd(factory, s);
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
