//! The seccomp filters every sandboxed instance installs, built with `seccompiler`: the calls a
//! function never needs refused with `EPERM` (and `clone` making namespaces), the calls whose
//! callers have a fallback refused with `ENOSYS`, and the x32 ABI refused whole.
//!
//! Why three programs rather than one: a `seccompiler` filter has one action for every rule
//! that matches, so `EPERM` and `ENOSYS` are two filters; and its rules name system call
//! numbers, while x32 calls are every number with bit 30 set under the same audit architecture
//! as x86_64. A deny list that missed them would let `mount` through as x32 call 0x400000a5, so
//! a guard of three instructions refuses that range. The kernel runs every installed program
//! and keeps the most severe answer, so the three compose as one filter would.
//!
//! A foreign architecture (32-bit calls through `int 0x80`) kills the process: each
//! `seccompiler` program starts by checking the architecture.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// One seccomp program, as the kernel takes it.
pub type Program = Vec<libc::sock_filter>;

/// System calls a function never needs, refused with `EPERM`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub const DENIED: &[libc::c_long] = &[
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
pub const UNSUPPORTED: &[libc::c_long] = &[
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// `clone` flags that make new namespaces: `clone` with any of them is refused.
pub const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// Bit 30 of a system call number on x86_64: an x32 ABI call.
#[cfg(target_arch = "x86_64")]
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The programs to install, in order.
pub fn programs() -> Result<Vec<Program>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("{e:?}"))?;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    // clone's first argument is its flags on x86_64 and aarch64 alike; any rule matching
    // refuses the call.
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = *flag as u32 as u64;
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{e:?}"))?;
    denied.insert(libc::SYS_clone, clone_rules);
    let unsupported: BTreeMap<i64, Vec<SeccompRule>> =
        UNSUPPORTED.iter().map(|nr| (*nr, Vec::new())).collect();
    let build = |rules, errno: i32| -> Result<Program, String> {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(|e| format!("{e:?}"))?;
        let program: BpfProgram = filter.try_into().map_err(|e| format!("{e:?}"))?;
        Ok(program.iter().map(to_libc).collect())
    };
    let mut out = vec![
        build(denied, libc::EPERM)?,
        build(unsupported, libc::ENOSYS)?,
    ];
    #[cfg(target_arch = "x86_64")]
    out.push(x32_guard());
    Ok(out)
}

fn to_libc(f: &seccompiler::sock_filter) -> libc::sock_filter {
    libc::sock_filter {
        code: f.code,
        jt: f.jt,
        jf: f.jf,
        k: f.k,
    }
}

/// Refuses every x32 call with `EPERM`: load the call's number, and compare it with the x32 bit.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> Program {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0), // seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}
