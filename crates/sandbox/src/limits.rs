//! Resource limits, and joining a cgroup, before a process executes anything: the layer every
//! process Petrel starts gets, sandbox on or off (the cgroups themselves are made and sized by
//! `petrel-runtime`).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;

/// Resource limits every process Petrel starts gets (instances, standby processes and the fork
/// server, whose children inherit them): (resource, soft and hard limit).
pub const RLIMITS: [(nix::sys::resource::Resource, u64); 3] = [
    // No core dumps: a crash must not write the instance's memory to disk.
    (nix::sys::resource::Resource::RLIMIT_CORE, 0),
    (nix::sys::resource::Resource::RLIMIT_NOFILE, 4096),
    // No single file past 1 GiB.
    (nix::sys::resource::Resource::RLIMIT_FSIZE, 1 << 30),
];

/// Before `cmd`'s child executes anything: sets [`RLIMITS`] and joins `procs` (open
/// `cgroup.procs` files; none when cgroups are off). Registered before a sandbox plan, which
/// then runs in the limited process.
pub fn confine_before_exec(cmd: &mut std::process::Command, procs: Vec<OwnedFd>) {
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: getrlimit(2) and setrlimit(2), and write(2) on descriptors opened
    // before the fork; it allocates nothing. "0" moves the writing process into the cgroup (v1
    // and v2).
    unsafe {
        cmd.pre_exec(move || {
            for (resource, limit) in RLIMITS {
                // Never above the hard limit Petrel itself has: only root may raise it.
                let (_, hard) =
                    nix::sys::resource::getrlimit(resource).map_err(std::io::Error::from)?;
                let limit = limit.min(hard);
                nix::sys::resource::setrlimit(resource, limit, limit)
                    .map_err(std::io::Error::from)?;
            }
            for fd in &procs {
                nix::unistd::write(fd.as_fd(), b"0").map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}
