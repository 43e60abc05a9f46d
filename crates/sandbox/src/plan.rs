//! What one instance's confinement is, computed before the fork: the steps that assemble its
//! root, the namespaces it enters, its credentials and its seccomp programs. The child only
//! carries the plan out (`enter`), with system calls on memory prepared here.
//!
//! A plan also travels to the Python fork server, whose children confine themselves through
//! this crate's C ABI ([`crate::ffi`]): [`Plan::to_bytes`] and `Plan::from_bytes` are its
//! wire form.

use crate::network::NetNs;
use crate::seccomp::Program;
use crate::{Sandbox, SANDBOX_GID, SANDBOX_UID, SECRETS_DIR, TASK_ROOT};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Device nodes a function may open.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// One step of assembling an instance's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
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
pub struct Plan {
    pub(crate) root: CString,
    pub(crate) ops: Vec<Op>,
    pub(crate) workdir: CString,
    /// The network namespace to enter (made by Petrel, as root).
    pub(crate) net: Option<OwnedFd>,
    /// In a user namespace: the instance makes its network itself; the descriptor to hand out
    /// its sockets on, and whether to make the Runtime API listener first.
    pub(crate) own_net: Option<(OwnedFd, bool)>,
    /// In a user namespace: its uid_map and gid_map lines.
    pub(crate) userns: Option<(CString, CString)>,
    /// Spawned into a new PID namespace already (as PID 1, see [`Plan::spawner_makes_pid_ns`]):
    /// no second fork, no process in between.
    pub(crate) pid1: bool,
    /// Set `PR_SET_PDEATHSIG` again after changing credentials (which clears it): the process
    /// dies with its parent. Not for a process spawned by a short-lived thread, whose end would
    /// count as the parent's.
    pub(crate) parent_death_signal: bool,
    pub(crate) seccomp: Vec<Program>,
    /// The highest capability this kernel knows, read once (`/proc/sys/kernel/cap_last_cap`).
    pub(crate) cap_last: u32,
}

impl Sandbox {
    /// The plan for one instance: `root` an empty directory to assemble its root on, its code
    /// directory (read-only at [`TASK_ROOT`], also its working directory; `None` for a standby
    /// process, whose code comes later, see [`crate::inject_code`]), the size of its `/tmp`, and its
    /// network namespace (`None`: the host's).
    pub fn plan(
        &self,
        root: &Path,
        code_dir: Option<&Path>,
        tmp_mb: u32,
        net: Option<&NetNs>,
        secrets: Option<&Path>,
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
        if let Some(dir) = secrets {
            let inside = Path::new(SECRETS_DIR);
            mkdir_p(&mut ops, inside)?;
            bind_ro(&mut ops, dir, &r(inside))?;
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
        let (net_fd, own_net) = match net {
            Some(n) => n.for_plan()?,
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
            parent_death_signal: true,
            userns,
            seccomp: self.seccomp.clone(),
            cap_last: self.cap_last,
        })
    }
}

impl Plan {
    /// Whether the spawning thread can make the instance's PID namespace itself (as root; in a
    /// user namespace the PID namespace must belong to the instance's user namespace, so the
    /// child makes it and forks). If so, the plan expects its process to be PID 1 already.
    pub fn spawner_makes_pid_ns(&mut self) -> bool {
        self.pid1 = self.userns.is_none();
        // The spawning thread ends right after the spawn: a death signal would fire then.
        self.parent_death_signal = !self.pid1;
        self.pid1
    }

    /// The network namespace to enter, if the instance has its own.
    pub fn net_fd(&self) -> Option<std::os::fd::RawFd> {
        self.net.as_ref().map(|f| f.as_raw_fd())
    }

    /// The plan as the Python fork server's child carries it out (through
    /// [`crate::ffi::petrel_sandbox_enter`]): it is PID 1 of the PID namespace the fork server
    /// forked it into, and dies with the fork server. Its network namespace travels apart, as
    /// a descriptor ([`Plan::net_fd`]). Only as root: in a user namespace the fork server is
    /// not used.
    pub fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        if self.userns.is_some() || self.own_net.is_some() {
            return Err(std::io::Error::other(
                "a plan for a user namespace cannot be carried out by the fork server",
            ));
        }
        let mut w = Writer(Vec::with_capacity(4096));
        w.0.extend_from_slice(MAGIC);
        w.cstr(&self.root);
        w.cstr(&self.workdir);
        w.u32(self.cap_last);
        w.u32(self.ops.len() as u32);
        for op in &self.ops {
            match op {
                Op::Mkdir(p, mode) => {
                    w.0.push(0);
                    w.cstr(p);
                    w.u32(*mode);
                }
                Op::Touch(p) => {
                    w.0.push(1);
                    w.cstr(p);
                }
                Op::Symlink(t, l) => {
                    w.0.push(2);
                    w.cstr(t);
                    w.cstr(l);
                }
                Op::Mount {
                    src,
                    dst,
                    fstype,
                    flags,
                    data,
                } => {
                    w.0.push(3);
                    w.cstr(src);
                    w.cstr(dst);
                    w.opt(fstype.as_ref());
                    w.0.extend_from_slice(&flags.to_le_bytes());
                    w.opt(data.as_ref());
                }
            }
        }
        w.u32(self.seccomp.len() as u32);
        for p in &self.seccomp {
            w.u32(p.len() as u32);
            for f in p {
                w.0.extend_from_slice(&f.code.to_le_bytes());
                w.0.push(f.jt);
                w.0.push(f.jf);
                w.u32(f.k);
            }
        }
        Ok(w.0)
    }

    /// A plan [`Plan::to_bytes`] wrote, entering network namespace `net` (if given): PID 1
    /// already, with the parent death signal set again after the credentials change.
    pub(crate) fn from_bytes(bytes: &[u8], net: Option<OwnedFd>) -> Result<Self, String> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not a sandbox plan of this Petrel (its version differs)".into());
        }
        let root = r.cstr()?;
        let workdir = r.cstr()?;
        let cap_last = r.u32()?;
        let n = r.u32()? as usize;
        let mut ops = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            ops.push(match r.take(1)?[0] {
                0 => Op::Mkdir(r.cstr()?, r.u32()?),
                1 => Op::Touch(r.cstr()?),
                2 => Op::Symlink(r.cstr()?, r.cstr()?),
                3 => Op::Mount {
                    src: r.cstr()?,
                    dst: r.cstr()?,
                    fstype: r.opt()?,
                    flags: u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"))
                        as libc::c_ulong,
                    data: r.opt()?,
                },
                t => return Err(format!("unknown step {t} in a sandbox plan")),
            });
        }
        let n = r.u32()? as usize;
        let mut seccomp = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let len = r.u32()? as usize;
            let mut p = Vec::with_capacity(len.min(4096));
            for _ in 0..len {
                let code = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
                let jump = r.take(2)?;
                p.push(libc::sock_filter {
                    code,
                    jt: jump[0],
                    jf: jump[1],
                    k: r.u32()?,
                });
            }
            seccomp.push(p);
        }
        if !r.0.is_empty() {
            return Err("a sandbox plan with bytes left over".into());
        }
        Ok(Self {
            root,
            ops,
            workdir,
            net,
            own_net: None,
            userns: None,
            pid1: true,
            parent_death_signal: true,
            seccomp,
            cap_last,
        })
    }
}

const MAGIC: &[u8] = b"petrel-plan-1\0";

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn cstr(&mut self, s: &CString) {
        let b = s.as_bytes();
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt(&mut self, s: Option<&CString>) {
        match s {
            Some(s) => {
                self.0.push(1);
                self.cstr(s);
            }
            None => self.0.push(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a sandbox plan cut short".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn cstr(&mut self) -> Result<CString, String> {
        let n = self.u32()? as usize;
        CString::new(self.take(n)?).map_err(|_| "a NUL inside a string of a sandbox plan".into())
    }
    fn opt(&mut self) -> Result<Option<CString>, String> {
        match self.take(1)?[0] {
            0 => Ok(None),
            _ => self.cstr().map(Some),
        }
    }
}

pub(crate) fn cstr(s: &str) -> CString {
    CString::new(s).expect("a constant without NUL")
}

pub(crate) fn cpath(p: &Path) -> std::io::Result<CString> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_back_as_written() {
        let plan = Plan {
            root: cstr("/r"),
            ops: vec![
                Op::Mkdir(cstr("/r/tmp"), 0o1777),
                Op::Touch(cstr("/r/dev/null")),
                Op::Symlink(cstr("/proc/self/fd"), cstr("/r/dev/fd")),
                Op::Mount {
                    src: cstr("tmpfs"),
                    dst: cstr("/r/tmp"),
                    fstype: Some(cstr("tmpfs")),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    data: Some(cstr("size=64m")),
                },
                Op::Mount {
                    src: cstr("/usr"),
                    dst: cstr("/r/usr"),
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                },
            ],
            workdir: cstr(TASK_ROOT),
            net: None,
            own_net: None,
            userns: None,
            pid1: true,
            parent_death_signal: true,
            seccomp: crate::seccomp::programs().unwrap(),
            cap_last: 40,
        };
        let back = Plan::from_bytes(&plan.to_bytes().unwrap(), None).unwrap();
        assert_eq!(back.ops, plan.ops);
        assert_eq!((&back.root, &back.workdir), (&plan.root, &plan.workdir));
        assert_eq!(back.cap_last, 40);
        let words = |p: &[Program]| -> Vec<(u16, u8, u8, u32)> {
            p.iter()
                .flatten()
                .map(|f| (f.code, f.jt, f.jf, f.k))
                .collect()
        };
        assert_eq!(words(&back.seccomp), words(&plan.seccomp));
        let bytes = plan.to_bytes().unwrap();
        assert!(Plan::from_bytes(&bytes[..bytes.len() - 1], None).is_err());
        assert!(Plan::from_bytes(b"something else", None).is_err());
    }
}
