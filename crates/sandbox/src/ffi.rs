//! The C ABI through which the Python fork server's children confine themselves, so that the
//! sandbox has one implementation: the child receives its [`Plan`] as bytes
//! ([`Plan::to_bytes`]) and carries it out with the very code `Plan::apply` runs between fork
//! and exec. Petrel builds this crate as a shared library (`libpetrel_sandbox.so`, built by
//! `petrel-runtime`'s build script and shipped inside the binary) and the fork server loads it
//! with `ctypes`.

use crate::plan::Plan;
use std::ffi::{c_char, c_int};
use std::os::fd::{FromRawFd, OwnedFd};

/// Confines the calling process as the plan in `plan[..len]` says, entering network namespace
/// `net_fd` first (`-1`: none). Returns 0; or -1 with a NUL-terminated message in
/// `err[..err_len]`, and the process must then exit without running the function.
///
/// # Safety
///
/// `plan` must point to `len` readable bytes and `err` to `err_len` writable ones; `net_fd`
/// must be an open descriptor the caller gives up (it is closed here), or -1. The calling
/// process must be single-threaded (a fork server's child is), and PID 1 of a PID namespace of
/// its own.
#[no_mangle]
pub unsafe extern "C" fn petrel_sandbox_enter(
    plan: *const u8,
    len: usize,
    net_fd: c_int,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    // SAFETY: the caller promises `plan[..len]` is readable and `net_fd` is its to give.
    let (bytes, net) = unsafe {
        (
            std::slice::from_raw_parts(plan, len),
            (net_fd >= 0).then(|| OwnedFd::from_raw_fd(net_fd)),
        )
    };
    let result = Plan::from_bytes(bytes, net).and_then(|plan| {
        if std::process::id() != 1 {
            return Err("not PID 1 of a PID namespace of its own".to_owned());
        }
        plan.enter().map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => 0,
        Err(message) => {
            // SAFETY: the caller promises `err[..err_len]` is writable.
            unsafe { write_message(err, err_len, &message) };
            -1
        }
    }
}

/// Makes the caller's next children be born in a new PID namespace (each fork server child is
/// PID 1 of its own); undone by [`petrel_sandbox_rejoin_pid_namespace`]. 0, or -1 with `errno`.
#[no_mangle]
pub extern "C" fn petrel_sandbox_children_in_new_pid_namespace() -> c_int {
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// Makes the caller's next children be born in PID namespace `fd` again (its own, opened from
/// `/proc/self/ns/pid` before [`petrel_sandbox_children_in_new_pid_namespace`]). 0, or -1 with
/// `errno`.
#[no_mangle]
pub extern "C" fn petrel_sandbox_rejoin_pid_namespace(fd: c_int) -> c_int {
    // SAFETY: setns(2) on a descriptor number; an invalid one fails with EBADF.
    unsafe { libc::setns(fd, libc::CLONE_NEWPID) }
}

/// Copies `message`, cut to fit, and a NUL into `err[..err_len]`.
///
/// # Safety
///
/// `err[..err_len]` must be writable.
unsafe fn write_message(err: *mut c_char, err_len: usize, message: &str) {
    if err.is_null() || err_len == 0 {
        return;
    }
    let n = message.len().min(err_len - 1);
    // SAFETY: `n + 1 <= err_len` bytes are written, within what the caller gave.
    unsafe {
        std::ptr::copy_nonoverlapping(message.as_ptr().cast::<c_char>(), err, n);
        *err.add(n) = 0;
    }
}
