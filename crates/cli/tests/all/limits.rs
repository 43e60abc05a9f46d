//! Confinement of process instances. Resource limits (cgroups): a memory hog is stopped at its
//! memory_mb and answered function_out_of_memory; a fork bomb stays inside its pids limit. The
//! sandbox: a suite of hostile functions, each denied. After each, a neighbouring function
//! answers and nothing is left running.

use crate::harness::{
    eventually, function_dir, instance_alive, instance_pids, manifest, Petrel, StoreKind,
};
use std::time::Duration;

const HOG: &str = r#"
def handler(event, context):
    chunks = []
    while True:
        chunks.append(bytearray(16 * 1024 * 1024))
"#;

const BOMB: &str = r#"
import os, time
def handler(event, context):
    n = 0
    try:
        for _ in range(2000):
            pid = os.fork()
            if pid == 0:
                time.sleep(120)
                os._exit(0)
            n += 1
    except OSError as e:
        return {"forked": n, "error": type(e).__name__, "instance": os.environ["PETREL_INSTANCE_ID"]}
    return {"forked": n, "instance": os.environ["PETREL_INSTANCE_ID"]}
"#;

const OK: &str = "def handler(event, context):\n    return {'ok': True}\n";

fn py(name: &str, code: &str, extra: &str) -> tempfile::TempDir {
    function_dir(&[
        (
            "petrel.toml",
            &manifest(name, "python3", "app.handler", extra),
        ),
        ("app.py", code),
    ])
}

fn host_processes_matching(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_stopped_at_its_memory_mb_and_a_fork_bomb_at_its_pids_limit() {
    // On by default as root.
    let p = Petrel::start().await;
    assert!(
        p.server_log().contains("cgroups v1") || p.server_log().contains("cgroups v2"),
        "these tests run as root with cgroups; the server said: {}",
        p.server_log()
    );
    // With --no-instance-limits the server says they are off, and does not pretend.
    let plain = Petrel::start_with(StoreKind::Sqlite, &["--no-instance-limits"]).await;
    assert!(
        plain
            .server_log()
            .contains("cgroups off: turned off (--no-instance-limits"),
        "{}",
        plain.server_log()
    );
    drop(plain);

    let hog = py("hog", HOG, "memory_mb = 128");
    let bomb = py("bomb", BOMB, "memory_mb = 1024");
    let ok = py("neighbour", OK, "");
    for d in [&hog, &bomb, &ok] {
        p.deploy(d.path());
    }

    let r = p.invoke("hog", "{}").await;
    let msg = r.assert_error(502, "function_out_of_memory");
    assert!(msg.contains("memory_mb of 128 MiB"), "{msg}");
    assert_eq!(p.invoke("neighbour", "{}").await.status, 200);
    // A new instance, the same fate: the limit holds for every instance.
    p.invoke("hog", "{}")
        .await
        .assert_error(502, "function_out_of_memory");

    let r = p.invoke("bomb", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let forked = j["forked"].as_u64().unwrap();
    assert!(
        forked < 256,
        "the pids limit stopped the bomb inside its instance: {j}"
    );
    assert_eq!(j["error"], "BlockingIOError", "{j}");
    assert_eq!(p.invoke("neighbour", "{}").await.status, 200);
    // Deleting the function stops the instance and everything it forked.
    let id = j["instance"].as_str().unwrap();
    assert!(instance_pids(id).len() > 10, "the bomb's children wait");
    // Its CPU weight is in proportion to its memory_mb (cgroup v1 here: 1,024 MiB, 1,024
    // shares, as much as any process outside).
    let shares = format!("/sys/fs/cgroup/cpu/petrel-{}/{id}/cpu.shares", p.pid());
    assert_eq!(
        std::fs::read_to_string(&shares)
            .map(|s| s.trim().to_owned())
            .ok(),
        Some("1024".to_owned()),
        "{shares}"
    );
    p.cli_ok(&["rm", "bomb"]);
    assert!(
        eventually(Duration::from_secs(10), || !instance_alive(id)).await,
        "the bomb's processes outlived its instance: {:?}",
        instance_pids(id)
    );
}

const RLIMITS_PY: &str = r#"
import resource, tempfile
def handler(event, context):
    out = {name: resource.getrlimit(getattr(resource, name))
           for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_FSIZE")}
    files = []
    try:
        for _ in range(10000):
            files.append(tempfile.TemporaryFile())
    except OSError as e:
        out["open_failed_after"] = len(files)
        out["errno"] = e.errno
    return out
"#;

const RLIMITS_BOOTSTRAP: &str = r#"#!/usr/bin/env python3
import json, os, resource, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation"
while True:
    with urllib.request.urlopen(api + "/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        r.read()
    out = {name: resource.getrlimit(getattr(resource, name))
           for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_FSIZE")}
    urllib.request.urlopen(urllib.request.Request(api + "/" + rid + "/response", data=json.dumps(out).encode(), method="POST"))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_process_instance_runs_without_core_dumps_and_with_bounded_files() {
    let p = Petrel::start().await;
    p.deploy(py("rl-py", RLIMITS_PY, "").path());
    let provided = function_dir(&[
        (
            "petrel.toml",
            &manifest("rl-provided", "provided", "x.y", ""),
        ),
        ("bootstrap", RLIMITS_BOOTSTRAP),
    ]);
    p.deploy(provided.path());
    // A forked python3 instance and a spawned provided one.
    for name in ["rl-py", "rl-provided"] {
        let r = p.invoke(name, "{}").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let j = r.json();
        assert_eq!(j["RLIMIT_CORE"], serde_json::json!([0, 0]), "{name}: {j}");
        assert_eq!(
            j["RLIMIT_NOFILE"],
            serde_json::json!([4096, 4096]),
            "{name}: {j}"
        );
        assert_eq!(
            j["RLIMIT_FSIZE"],
            serde_json::json!([1u64 << 30, 1u64 << 30]),
            "{name}: {j}"
        );
    }
    let j = p.invoke("rl-py", "{}").await.json();
    let opened = j["open_failed_after"].as_u64().unwrap();
    assert!(opened < 4096, "{j}");
    assert_eq!(j["errno"], 24, "EMFILE: {j}");
}

const HOSTILE: &str = r#"
import ctypes, errno, os, socket, subprocess, sys, time

def err(e):
    return {"error": errno.errorcode.get(e.errno, str(e))}

def handler(event, context):
    what = event["what"]
    if what == "whoami":
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        return {"uid": os.getuid(), "pid": os.getpid(), "ppid": os.getppid(),
                "instance": os.environ["PETREL_INSTANCE_ID"],
                "hostname": socket.gethostname(), "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                **{k: status[k].strip() for k in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp")}}
    if what == "read":
        try:
            with open(event["path"], "rb") as f:
                return {"read": len(f.read())}
        except OSError as e:
            return err(e)
    if what == "list":
        try:
            return {"entries": sorted(os.listdir(event["path"]))}
        except OSError as e:
            return err(e)
    if what == "write":
        try:
            with open(event["path"], "wb") as f:
                f.write(b"x")
            return {"wrote": True}
        except OSError as e:
            return err(e)
    if what == "fill":
        n = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while n < 1024:
                    f.write(b"\0" * (1 << 20)); f.flush(); n += 1
        except OSError as e:
            os.remove("/tmp/fill")
            return {"mib": n, **err(e)}
        return {"mib": n}
    if what == "connect":
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((event["host"], event["port"]))
            return {"connected": True}
        except OSError as e:
            return err(e)
    if what == "syscalls":
        libc = ctypes.CDLL(None, use_errno=True)
        out = {}
        for name, call in [
            ("unshare_user", lambda: libc.unshare(0x10000000)),
            ("ptrace_traceme", lambda: libc.ptrace(0, 0, None, None)),
            ("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        ]:
            r = call()
            out[name] = errno.errorcode.get(ctypes.get_errno()) if r != 0 else "allowed"
        return out
    if what == "kill":
        try:
            os.kill(event["pid"], 9)
            return {"killed": True}
        except OSError as e:
            return err(e)
    if what == "daemon":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", event["marker"]])
            os._exit(0)
        os.wait()
        return {"daemon": True}
    if what == "spin":
        if os.fork() == 0:
            while True:
                pass
        while True:
            pass
    if what == "kill_parent":
        ppid = os.getppid()
        os.kill(ppid, 9)
        time.sleep(0.2)
        return {"ppid": ppid, "survived": True}
    if what == "shout":
        line = "y" * 1000
        for _ in range(event["lines"]):
            print(line)
        sys.stdout.flush()
        return {"printed": event["lines"]}
"#;

/// Every file under `dir` named `name`.
fn find_files(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(find_files(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_functions_are_denied_whether_forked_or_spawned() {
    // Python instances fork from the fork server, which confines its child itself; without
    // it, they are spawned and confined between fork and exec. Both must hold.
    let p = Petrel::start().await;
    hostile_suite(&p, "forked from the Python fork server into its sandbox").await;
    drop(p);
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("node.toml");
    std::fs::write(&path, "python_fork_server = false\n").unwrap();
    let p = Petrel::start_with(StoreKind::Sqlite, &["--config", path.to_str().unwrap()]).await;
    hostile_suite(&p, "a new sandboxed process").await;
}

async fn hostile_suite(p: &Petrel, how: &str) {
    assert!(
        p.server_log().contains("sandbox on:"),
        "these tests run as root, where the sandbox must be on: {}",
        p.server_log()
    );
    let hostile = py("hostile", HOSTILE, "tmp_mb = 8\ntimeout = \"3s\"");
    let hosted = py("hosted", HOSTILE, "network = \"host\"");
    let victim = function_dir(&[
        (
            "petrel.toml",
            &manifest("victim", "python3", "app.handler", ""),
        ),
        ("app.py", OK),
        ("victim-secret.txt", "the victim's secret"),
    ]);
    let ok = py("neighbour", OK, "");
    for d in [&hostile, &hosted, &victim, &ok] {
        p.deploy(d.path());
    }
    let call = |what: serde_json::Value| async move {
        let r = p.invoke("hostile", &what.to_string()).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(
            p.invoke("neighbour", "{}").await.status,
            200,
            "after {what}"
        );
        r.json()
    };
    use serde_json::json;

    // A Node instance, from a standby process given its code in its sandbox, is as confined.
    let node = function_dir(&[
        (
            "petrel.toml",
            &manifest("who-node", "nodejs", "index.handler", ""),
        ),
        ("index.js", NOBODY_NODE),
    ]);
    p.deploy(node.path());
    let db = p.data_dir.path().join("data").join("petrel.db");
    let port: u16 = p.url.rsplit(':').next().unwrap().parse().unwrap();
    let r = p
        .invoke("who-node", &json!({"db": db, "port": port}).to_string())
        .await;
    assert_eq!(
        r.json(),
        json!({"uid": 65534, "pid": 1, "procs": [1], "ifaces": ["lo"], "db": "ENOENT",
            "connect": "ECONNREFUSED", "Seccomp": "2", "NoNewPrivs": "1", "CapEff": "0000000000000000"}),
        "{}",
        r.text()
    );
    p.wait_for_log(
        "who-node",
        "(a standby process, given its code in its sandbox;",
        1,
    )
    .await;

    // Who it is: PID 1 of its own namespace, seeing no other process; an unprivileged user
    // with no capabilities, no_new_privs and a seccomp filter.
    let me = call(json!({"what": "whoami"})).await;
    p.wait_for_log("hostile", &format!("({how};"), 1).await;
    assert_eq!(me["uid"], 65534, "{me}");
    assert_eq!((&me["pid"], &me["ppid"]), (&json!(1), &json!(0)), "{me}");
    assert_eq!(me["processes"], json!([1]), "{me}");
    assert_eq!(me["hostname"], "petrel", "{me}");
    assert_eq!(
        (&me["CapEff"], &me["CapBnd"]),
        (&json!("0000000000000000"), &json!("0000000000000000")),
        "no capability, and none to regain: {me}"
    );
    assert_eq!(
        (&me["NoNewPrivs"], &me["Seccomp"]),
        (&json!("1"), &json!("2")),
        "{me}"
    );

    // Another function's code, Petrel's data directory and the host's secrets are not there.
    let secret = find_files(p.data_dir.path(), "victim-secret.txt");
    assert!(
        !secret.is_empty(),
        "the victim's code is unpacked on the host"
    );
    let db = p.data_dir.path().join("data").join("petrel.db");
    assert!(db.exists());
    for path in [
        secret[0].as_path(),
        db.as_path(),
        std::path::Path::new("/etc/shadow"),
    ] {
        let r = call(json!({"what": "read", "path": path})).await;
        assert_eq!(r["error"], "ENOENT", "{}: {r}", path.display());
    }
    // Of Petrel's data directory, only the path to its own code and the shims shows.
    let r = call(json!({"what": "list", "path": db.parent().unwrap()})).await;
    let entries: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(!entries.contains(&"petrel.db"), "{r}");
    let on_host = std::fs::read_dir(db.parent().unwrap()).unwrap().count();
    assert!(entries.len() < on_host, "{r}");
    let root = call(json!({"what": "list", "path": "/root"})).await;
    assert!(
        root["entries"]
            .as_array()
            .is_none_or(|e| e.iter().all(|n| n == ".pyenv")),
        "only a runtime's installation may show under /root: {root}"
    );

    // Its own code is at /var/task, as on Lambda. Writing: not to its own code, not to the
    // system, only to /tmp; and /tmp is bounded.
    let own = call(json!({"what": "list", "path": "/var/task"})).await;
    assert_eq!(own["entries"], json!(["app.py", "petrel.toml"]), "{own}");
    for path in [
        std::path::Path::new("/var/task/app.py"),
        std::path::Path::new("/etc/passwd"),
        std::path::Path::new("/usr/evil"),
    ] {
        let r = call(json!({"what": "write", "path": path})).await;
        assert_eq!(r["error"], "EROFS", "{}: {r}", path.display());
    }
    assert_eq!(
        call(json!({"what": "write", "path": "/tmp/ok"})).await["wrote"],
        true
    );
    let fill = call(json!({"what": "fill"})).await;
    assert_eq!(fill["error"], "ENOSPC", "{fill}");
    assert!(
        fill["mib"].as_u64().unwrap() <= 8,
        "tmp_mb = 8 held: {fill}"
    );

    // The network: loopback of its own only. Petrel's port is not there; nothing else is
    // reachable. With network = "host", Petrel's port is.
    let port: u16 = p
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let r = call(json!({"what": "connect", "host": "127.0.0.1", "port": port})).await;
    assert_eq!(r["error"], "ECONNREFUSED", "{r}");
    let r = call(json!({"what": "connect", "host": "10.1.2.3", "port": 80})).await;
    assert_eq!(r["error"], "ENETUNREACH", "{r}");
    let r = p
        .invoke(
            "hosted",
            &json!({"what": "connect", "host": "127.0.0.1", "port": port}).to_string(),
        )
        .await;
    assert_eq!(r.json()["connected"], true, "{}", r.text());

    // System calls a function never needs are refused, even those an unprivileged process
    // could otherwise make (a user namespace, ptrace).
    let sys = call(json!({"what": "syscalls"})).await;
    assert_eq!(
        sys,
        json!({"unshare_user": "EPERM", "ptrace_traceme": "EPERM", "mount": "EPERM"})
    );

    // Petrel is not there to be killed.
    let r = call(json!({"what": "kill", "pid": p.pid()})).await;
    assert_eq!(r["error"], "ESRCH", "{r}");

    // Huge output: the log keeps a bounded share of it and says where it was cut.
    let r = call(json!({"what": "shout", "lines": 5000})).await;
    assert_eq!(r["printed"], 5000);
    p.wait_for_log(
        "hostile",
        "log output of this invocation cut after 2 MiB",
        1,
    )
    .await;
    let logs = p.cli_ok(&["logs", "hostile", "--tail", "100000"]);
    let kept = logs
        .lines()
        .filter(|l| l.ends_with(&"y".repeat(1000)))
        .count();
    assert!(
        (1000..2100).contains(&kept),
        "{kept} lines of 1,000 bytes kept"
    );

    // An endless loop (in two processes) ends at its timeout, with its whole tree.
    let spun = call(json!({"what": "whoami"})).await["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = p
        .invoke("hostile", &json!({"what": "spin"}).to_string())
        .await;
    r.assert_error(504, "function_timeout");
    assert_eq!(p.invoke("neighbour", "{}").await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || instance_pids(&spun).is_empty()).await,
        "the spinning processes outlived the timeout: {:?}",
        instance_pids(&spun)
    );

    // Killing its parent: its parent is nobody it can see (getppid() is 0, so the signal goes
    // to its own process group, of which it is PID 1, which the kernel shields from signals
    // sent inside its namespace). Nothing happens to anyone.
    let r = call(json!({"what": "kill_parent"})).await;
    assert_eq!(r, json!({"ppid": 0, "survived": true}));
    assert_eq!(call(json!({"what": "whoami"})).await["pid"], 1);

    // A daemon it leaves behind goes with its instance.
    let marker = format!("{}", 7000 + std::process::id() % 1000);
    call(json!({"what": "daemon", "marker": marker})).await;
    let pattern = format!("^sleep {marker}$");
    // The grandchild may not have exec'd `sleep` yet when the handler answers.
    assert!(
        eventually(Duration::from_secs(5), || host_processes_matching(&pattern)).await,
        "the daemon runs"
    );
    p.cli_ok(&["rm", "hostile"]);
    assert!(
        eventually(Duration::from_secs(10), || !host_processes_matching(
            &pattern
        ))
        .await,
        "the daemon outlived its instance"
    );
    assert_eq!(p.invoke("neighbour", "{}").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_sandbox_the_server_says_so() {
    let p = Petrel::start_with(StoreKind::Sqlite, &["--no-sandbox"]).await;
    assert!(
        p.server_log()
            .contains("sandbox off: not turned on (--no-sandbox, or sandbox = false)"),
        "{}",
        p.server_log()
    );
    p.deploy(py("plain", OK, "").path());
    assert_eq!(p.invoke("plain", "{}").await.status, 200);
}

const NOBODY_NODE: &str = r#"
const fs = require('fs');
const net = require('net');
exports.handler = async (event) => {
  const status = {};
  for (const l of fs.readFileSync('/proc/self/status', 'utf8').split('\n')) {
    const i = l.indexOf(':');
    if (i > 0) status[l.slice(0, i)] = l.slice(i + 1).trim();
  }
  const procs = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number);
  const ifaces = fs.readFileSync('/proc/net/dev', 'utf8').split('\n')
    .filter((l) => l.includes(':')).map((l) => l.split(':')[0].trim());
  let db;
  try { fs.readFileSync(event.db); db = 'read'; } catch (e) { db = e.code; }
  const connect = await new Promise((res) => {
    const s = net.connect(event.port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); res('connected'); });
    s.on('error', (e) => res(e.code));
  });
  return { uid: process.getuid(), pid: process.pid, procs, ifaces, db, connect,
           Seccomp: status.Seccomp, NoNewPrivs: status.NoNewPrivs, CapEff: status.CapEff };
};
"#;

#[tokio::test(flavor = "multi_thread")]
async fn run_as_an_ordinary_user_the_sandbox_uses_a_user_namespace() {
    let p = Petrel::start_as_nobody(&[]).await;
    let log = p.server_log();
    assert!(
        log.contains("sandbox on in a user namespace (Petrel runs as user 65534"),
        "{log}"
    );
    assert!(log.contains("cgroups off"), "{log}");
    let node = function_dir(&[
        (
            "petrel.toml",
            &manifest("who-node", "nodejs", "index.handler", ""),
        ),
        ("index.js", NOBODY_NODE),
    ]);
    let http = crate::fixtures::echo_function("who-http", "http", "");
    for d in [&node, &http] {
        p.deploy(d.path());
    }
    let db = p.data_dir.path().join("data").join("petrel.db");
    assert!(db.exists());
    let port: u16 = p.url.rsplit(':').next().unwrap().parse().unwrap();
    let r = p
        .invoke(
            "who-node",
            &serde_json::json!({"db": db, "port": port}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        j,
        serde_json::json!({"uid": 65534, "pid": 1, "procs": [1], "ifaces": ["lo"], "db": "ENOENT",
            "connect": "ECONNREFUSED", "Seccomp": "2", "NoNewPrivs": "1", "CapEff": "0000000000000000"})
    );
    // An http function in its own network: Petrel reaches its port with sockets the
    // instance's network hands out.
    let r = p.http("GET", "/fn/who-http/hello", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/hello");
    p.wait_for_log("who-http", "(a new sandboxed process;", 1)
        .await;
}
