//! The sandbox on real confined processes. These tests run as root, as Petrel does in CI and in
//! production (as an ordinary user the sandbox takes the user-namespace path, which the
//! end-to-end tests of `petrel-cli` drive).

mod bpf;

use petrel_sandbox::{in_new_pid_ns, seccomp, Sandbox};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests confine real processes and run as root (CI runs them as root)"
    );
}

/// A sandbox prepared under `dir`, probed as Petrel probes it at start.
fn sandbox(dir: &Path) -> Sandbox {
    let (shims, state, scratch) = (dir.join("shims"), dir.join("state"), dir.join("scratch"));
    for d in [&shims, &state, &scratch] {
        std::fs::create_dir_all(d).unwrap();
    }
    let sb = Sandbox::new(&[], &shims, &state);
    assert!(sb.enabled(), "{}", sb.status());
    sb.probe(&scratch).unwrap();
    sb
}

/// `argv` confined as an instance is, as PID 1 of its own PID namespace (the path Petrel takes
/// as root), in its own network.
fn confined(sb: &Sandbox, dir: &Path, argv: &[&str], stdout: Stdio) -> Child {
    let root = dir.join(format!("root-{}", argv.len()));
    let code = dir.join("code");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&code).unwrap();
    let net = sb.new_net(false).unwrap();
    let mut plan = sb.plan(&root, Some(&code), 16, Some(&net), None).unwrap();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    assert!(plan.spawner_makes_pid_ns());
    plan.apply(&mut cmd);
    in_new_pid_ns(move || cmd.spawn()).unwrap()
}

/// Waits until process `pid` has its seccomp filters (it confined itself and went on to exec).
fn wait_for_seccomp(pid: u32) {
    let t0 = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2'))
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "process {pid} never got its seccomp filter: {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads back, with `PTRACE_SECCOMP_GET_FILTER`, every seccomp program of process `pid`, in
/// the order they were installed (the kernel's index 0 is the oldest).
fn filters_of(pid: u32) -> Vec<Vec<libc::sock_filter>> {
    const PTRACE_SEIZE: libc::c_uint = 0x4206;
    const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    let pid = pid as libc::pid_t;
    let mut out = Vec::new();
    // SAFETY: ptrace(2) and waitpid(2) on a child process of this test; the buffer handed to
    // PTRACE_SECCOMP_GET_FILTER is sized to the count the kernel gave for the same index.
    unsafe {
        assert_eq!(libc::ptrace(PTRACE_SEIZE, pid, 0, 0), 0, "seize");
        assert_eq!(libc::ptrace(PTRACE_INTERRUPT, pid, 0, 0), 0, "interrupt");
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        for index in 0.. {
            let n = libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index as usize, 0usize);
            if n < 0 {
                assert_eq!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::ENOENT),
                    "reading filter {index}"
                );
                break;
            }
            let mut program = vec![
                libc::sock_filter {
                    code: 0,
                    jt: 0,
                    jf: 0,
                    k: 0
                };
                n as usize
            ];
            let got = libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                pid,
                index as usize,
                program.as_mut_ptr(),
            );
            assert_eq!(got, n);
            out.push(program);
        }
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
    }
    out
}

#[test]
fn the_filters_read_back_from_a_confined_process_refuse_each_call() {
    as_root();
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path());
    let mut child = confined(&sb, dir.path(), &["/bin/sleep", "60"], Stdio::null());
    wait_for_seccomp(child.id());
    let installed = filters_of(child.id());
    let _ = child.kill();
    let _ = child.wait();

    // What was installed is what the sandbox built, in its order.
    let built = sb.seccomp_programs();
    let words = |p: &[Vec<libc::sock_filter>]| -> Vec<Vec<(u16, u8, u8, u32)>> {
        p.iter()
            .map(|p| p.iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect())
            .collect()
    };
    assert_eq!(words(&installed), words(built));

    let verdict = |nr: i64, args: [u64; 6]| bpf::verdict(&installed, bpf::NATIVE_ARCH, nr, args);
    let eperm = bpf::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = bpf::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    for nr in seccomp::DENIED {
        assert_eq!(verdict(*nr, [0; 6]), eperm, "system call {nr}");
    }
    for nr in seccomp::UNSUPPORTED {
        assert_eq!(verdict(*nr, [0; 6]), enosys, "system call {nr}");
    }
    for flag in seccomp::NAMESPACE_FLAGS {
        let flags = (*flag | libc::SIGCHLD) as u32 as u64;
        assert_eq!(
            verdict(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]),
            eperm,
            "clone with {flag:#x}"
        );
    }
    // What programs do all the time stays allowed: a thread's clone, a fork's, I/O, memory.
    let thread = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as u32 as u64;
    for args in [
        [thread, 0, 0, 0, 0, 0],
        [libc::SIGCHLD as u64, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(
            verdict(libc::SYS_clone, args),
            bpf::SECCOMP_RET_ALLOW,
            "{args:?}"
        );
    }
    for nr in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_openat,
        libc::SYS_mmap,
        libc::SYS_futex,
        libc::SYS_execve,
        libc::SYS_getpid,
        libc::SYS_exit_group,
    ] {
        assert_eq!(
            verdict(nr, [0; 6]),
            bpf::SECCOMP_RET_ALLOW,
            "system call {nr}"
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 ABI: every call refused, the harmless ones too.
        for nr in [libc::SYS_read, libc::SYS_mount, libc::SYS_unshare] {
            let x32 = nr | seccomp::X32_SYSCALL_BIT as i64;
            assert_eq!(verdict(x32, [0; 6]), eperm, "x32 call {x32:#x}");
        }
        // 32-bit calls (int 0x80) are another architecture: the process is killed.
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(
            bpf::verdict(&installed, AUDIT_ARCH_I386, 21, [0; 6]),
            bpf::SECCOMP_RET_KILL_PROCESS
        );
    }
}

#[test]
fn a_refused_call_fails_inside_the_sandbox_and_the_rest_works() {
    as_root();
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(dir.path());
    // An unprivileged user may normally make a user namespace; in the sandbox seccomp refuses
    // it. The shell itself (forks, pipes, files in /tmp) works.
    let script = "echo ok > /tmp/f && cat /tmp/f; unshare -U true 2>&1; echo \"unshare: $?\"";
    let child = confined(&sb, dir.path(), &["/bin/sh", "-c", script], Stdio::piped());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok\n"), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(text.trim_end().ends_with("unshare: 1"), "{text}");
}
