//! Handing a standby process in its sandbox its function's code, and spawning a process as
//! PID 1 of a new PID namespace.

use crate::plan::cpath;
use crate::TASK_ROOT;
use nix::libc;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Mounts `code_dir`, read-only, at [`TASK_ROOT`] in the mount namespace of process `pid` (a
/// standby process in its sandbox, which waits for its function): a copy of the directory's
/// mount is made here, and moved there by a thread that enters that namespace alone (it first
/// stops sharing its file-system attributes with Petrel's other threads). As root.
pub fn inject_code(pid: i32, code_dir: &Path) -> std::io::Result<()> {
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
/// per-thread setting): the process it spawns is PID 1 there. (A spawn that needs an async
/// runtime enters it inside `spawn`.)
pub fn in_new_pid_ns<T: Send + 'static>(
    spawn: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    std::thread::Builder::new()
        .name("petrel-spawn".into())
        .spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?;
            spawn()
        })?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawn panicked")))
}
