//! Resource limits of process instances (cgroups): a memory hog is stopped at its memory_mb and
//! answered function_out_of_memory; a fork bomb stays inside its pids limit; after each, a
//! neighbouring function answers and nothing is left running.

use crate::harness::{eventually, function_dir, manifest, Petrel, StoreKind};
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
        return {"forked": n, "error": type(e).__name__, "pgid": os.getpgid(0)}
    return {"forked": n, "pgid": os.getpgid(0)}
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

fn group_alive(pgid: i64) -> bool {
    std::process::Command::new("pgrep")
        .args(["-g", &pgid.to_string()])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_stopped_at_its_memory_mb_and_a_fork_bomb_at_its_pids_limit() {
    let p = Petrel::start_with(StoreKind::Sqlite, &["--instance-limits"]).await;
    assert!(
        p.server_log().contains("cgroups v1") || p.server_log().contains("cgroups v2"),
        "these tests run as root with cgroups; the server said: {}",
        p.server_log()
    );
    // Without --instance-limits the server says they are off, and does not pretend.
    let plain = Petrel::start().await;
    assert!(
        plain
            .server_log()
            .contains("cgroups off: not turned on (--instance-limits"),
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
    let pgid = j["pgid"].as_i64().unwrap();
    assert!(group_alive(pgid));
    p.cli_ok(&["rm", "bomb"]);
    assert!(
        eventually(Duration::from_secs(10), || !group_alive(pgid)).await,
        "the bomb's processes outlived its instance"
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
