//! Cold-start machinery and the node-wide memory budget: instances forked from the Python fork
//! server or made from a standby Node process run the right function's code with its own
//! environment only; the memory budget evicts idle instances of another function and refuses a
//! start it cannot make room for.

use crate::fixtures::echo_function;
use crate::harness::{
    alive, eventually, function_dir, instance_alive, manifest, parallel, spawn_invokes, Petrel,
    StoreKind,
};
use std::sync::Arc;
use std::time::Duration;

const WHO_PY: &str = r#"
import os, sys
import helper
def handler(event, context):
    print("who-py", os.environ.get("WHO"), flush=True)
    return {"who": os.environ.get("WHO"), "helper": helper.NAME, "cwd": os.getcwd(),
            "other": os.environ.get("OTHER_ONLY"), "argv": sys.argv[1:], "pid": os.getpid(),
            "ppid": os.getppid(), "pgid": os.getpgid(0), "function": context.function_name}
"#;

const WHO_NODE: &str = r#"
const helper = require('./helper');
exports.handler = async (event, context) => {
  console.log('who-node', process.env.WHO);
  return { who: process.env.WHO, helper: helper.NAME, cwd: process.cwd(),
           other: process.env.OTHER_ONLY || null, pid: process.pid, function: context.functionName };
};
"#;

fn who_python(name: &str, who: &str, extra: &str) -> tempfile::TempDir {
    function_dir(&[
        (
            "petrel.toml",
            &manifest(
                name,
                "python3",
                "app.handler",
                &format!("{extra}\n[env]\nWHO = \"{who}\""),
            ),
        ),
        ("app.py", WHO_PY),
        ("helper.py", &format!("NAME = 'helper of {who}'\n")),
    ])
}

fn who_node(name: &str, who: &str, extra: &str) -> tempfile::TempDir {
    function_dir(&[
        (
            "petrel.toml",
            &manifest(
                name,
                "nodejs",
                "index.handler",
                &format!("{extra}\n[env]\nWHO = \"{who}\""),
            ),
        ),
        ("index.js", WHO_NODE),
        ("helper.js", &format!("exports.NAME = 'helper of {who}';\n")),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn forked_and_standby_instances_run_their_own_function_only() {
    // The fork server and standby processes exist only outside the sandbox.
    let p = Petrel::start_with(StoreKind::Sqlite, &["--no-sandbox"]).await;
    let dirs = [
        who_python("py-a", "a", ""),
        who_python("py-b", "b", ""),
        who_node("node-a", "a", ""),
        who_node("node-b", "b", ""),
    ];
    // py-a gets a variable py-b must not see.
    std::fs::write(
        dirs[0].path().join("petrel.toml"),
        manifest(
            "py-a",
            "python3",
            "app.handler",
            "[env]\nWHO = \"a\"\nOTHER_ONLY = \"secret of a\"",
        ),
    )
    .unwrap();
    for d in &dirs {
        p.deploy(d.path());
    }
    for (name, who) in [
        ("py-a", "a"),
        ("py-b", "b"),
        ("node-a", "a"),
        ("node-b", "b"),
    ] {
        let r = p.invoke(name, "{}").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let j = r.json();
        assert_eq!(j["who"], who, "{name}: {j}");
        assert_eq!(
            j["helper"],
            format!("helper of {who}"),
            "{name} imported another function's module: {j}"
        );
        assert_eq!(j["function"], name);
        assert!(
            j["cwd"].as_str().unwrap().contains("/code/"),
            "{name} runs in its code directory: {j}"
        );
        let other = if name == "py-a" {
            serde_json::json!("secret of a")
        } else {
            serde_json::Value::Null
        };
        assert_eq!(
            j["other"], other,
            "{name}: environment leaked between functions: {j}"
        );
    }
    // Python instances were forked (own process group, not Petrel's children), Node ones were
    // standby processes; the logs say so and attribute output to the right function.
    let py = p.invoke("py-b", "{}").await.json();
    assert_eq!(
        py["pgid"], py["pid"],
        "a forked instance leads its own process group"
    );
    assert_eq!(
        py["argv"],
        serde_json::json!([]),
        "no fork-server arguments leak: {py}"
    );
    // Log lines reach the store a few milliseconds after the answer: wait for them first.
    p.wait_for_log("py-b", "forked from the Python fork server", 1)
        .await;
    p.wait_for_log("py-b", "who-py b", 2).await;
    p.wait_for_log("node-a", "who-node a", 1).await;
    let py_logs = p.cli_ok(&["logs", "py-b", "--tail", "100"]);
    assert!(
        py_logs.contains("forked from the Python fork server"),
        "{py_logs}"
    );
    assert!(py_logs.contains("who-py b"), "{py_logs}");
    assert!(!py_logs.contains("who-py a"), "{py_logs}");
    let node_logs = p.cli_ok(&["logs", "node-a", "--tail", "100"]);
    assert!(node_logs.contains("a standby Node process"), "{node_logs}");
    assert!(node_logs.contains("who-node a"), "{node_logs}");

    // Each cold start is split into its phases.
    let metrics = p.http("GET", "/metrics", None).await.text();
    for phase in ["wait_for_slot", "start", "init", "first_response"] {
        let line = format!("petrel_cold_start_phase_seconds_count{{namespace=\"default\",function=\"py-a\",runtime=\"python3\",phase=\"{phase}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    // Killing a forked instance is seen as its crash, and the next request gets a new one.
    let pid = py["pid"].as_u64().unwrap() as u32;
    crate::harness::signal(pid, "KILL");
    assert!(eventually(Duration::from_secs(5), || !alive(pid)).await);
    // Petrel hears of the end from the fork server, as it would from a child of its own.
    p.wait_for_log("py-b", "instance process was killed by signal SIGKILL", 1)
        .await;
    let again = p.invoke("py-b", "{}").await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_ne!(again.json()["pid"], py["pid"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_the_sandbox_forked_and_standby_instances_get_their_own_code_only() {
    // The default: the fork server's children confine themselves; standby Node processes wait
    // in their sandbox with an empty /var/task, where their function's code is mounted.
    let p = Petrel::start().await;
    let dirs = [
        who_python("sb-py-a", "a", ""),
        who_python("sb-py-b", "b", ""),
        who_node("sb-node-a", "a", ""),
        who_node("sb-node-b", "b", ""),
    ];
    for d in &dirs {
        p.deploy(d.path());
    }
    for (name, who) in [
        ("sb-py-a", "a"),
        ("sb-py-b", "b"),
        ("sb-node-a", "a"),
        ("sb-node-b", "b"),
    ] {
        let r = p.invoke(name, "{}").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let j = r.json();
        assert_eq!(
            (&j["who"], &j["helper"], &j["function"]),
            (
                &serde_json::json!(who),
                &serde_json::json!(format!("helper of {who}")),
                &serde_json::json!(name)
            ),
            "{name}: {j}"
        );
        assert_eq!(j["cwd"], "/var/task", "{name}: {j}");
        assert_eq!(j["pid"], 1, "{name} is PID 1 of its own namespace: {j}");
    }
    p.wait_for_log(
        "sb-py-a",
        "forked from the Python fork server into its sandbox",
        1,
    )
    .await;
    p.wait_for_log(
        "sb-node-a",
        "a standby process, given its code in its sandbox",
        1,
    )
    .await;
    p.wait_for_log("sb-node-b", "who-node b", 1).await;
    let logs = p.cli_ok(&["logs", "sb-node-b", "--tail", "100"]);
    assert!(!logs.contains("who-node a"), "{logs}");

    // Python children of the fork server also wait in their sandbox, once the fork server is
    // up; the next function takes one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = who_python("sb-py-c", "c", "");
    p.deploy(c.path());
    let j = p.invoke("sb-py-c", "{}").await.json();
    assert_eq!(
        (&j["who"], &j["helper"], &j["cwd"], &j["pid"]),
        (
            &serde_json::json!("c"),
            &serde_json::json!("helper of c"),
            &serde_json::json!("/var/task"),
            &serde_json::json!(1)
        ),
        "{j}"
    );
    p.wait_for_log(
        "sb-py-c",
        "(a standby process, given its code in its sandbox;",
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_prewarm_instances_start_as_new_processes() {
    let p = Petrel::start_with(StoreKind::Sqlite, &["--no-prewarm"]).await;
    let py = who_python("plain-py", "p", "");
    let node = who_node("plain-node", "n", "");
    p.deploy(py.path());
    p.deploy(node.path());
    assert_eq!(p.invoke("plain-py", "{}").await.json()["who"], "p");
    assert_eq!(p.invoke("plain-node", "{}").await.json()["who"], "n");
    for name in ["plain-py", "plain-node"] {
        p.wait_for_log(name, "(a new sandboxed process;", 1).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_budget_evicts_idle_instances_and_refuses_what_it_cannot_fit() {
    let p = Arc::new(Petrel::start_with(StoreKind::Sqlite, &["--memory-budget", "256MiB"]).await);
    for name in ["mem-a", "mem-b", "mem-c"] {
        p.deploy(echo_function(name, "python3", "memory_mb = 128").path());
    }
    let id = |r: crate::harness::Resp| r.json()["instance"].as_str().unwrap().to_owned();
    let a = id(p.invoke("mem-a", "{}").await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = id(p.invoke("mem-b", "{}").await);
    // 256 MiB held; mem-c needs 128 more: the least recently used idle instance (mem-a) goes.
    let c = p.invoke("mem-c", "{}").await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert!(
        eventually(Duration::from_secs(5), || !instance_alive(&a)).await,
        "mem-a's idle instance was evicted"
    );
    assert!(instance_alive(&b), "mem-b was used more recently and stays");
    p.wait_for_log("mem-a", "to make room under the node's memory budget", 1)
        .await;
    let metrics = p.http("GET", "/metrics", None).await.text();
    assert!(
        metrics.contains("petrel_memory_budget_mib{kind=\"limit\"} 256"),
        "{metrics}"
    );

    // Both live instances busy: nothing can be evicted, so mem-a's start is refused, naming
    // the budget.
    let slow = r#"{"action": "slow", "secs": 2}"#;
    let (pb, pc) = (p.clone(), p.clone());
    let hold_b = tokio::spawn(async move { pb.invoke("mem-b", slow).await });
    let hold_c = tokio::spawn(async move { pc.invoke("mem-c", slow).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = p.invoke("mem-a", "{}").await;
    let msg = refused.assert_error(503, "no_capacity");
    assert!(msg.contains("memory budget of 256 MiB"), "{msg}");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(hold_b.await.unwrap().status, 200);
    assert_eq!(hold_c.await.unwrap().status, 200);
    // Once they are idle again, mem-a starts by evicting one of them.
    let ok = p.invoke("mem-a", "{}").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// Idle times recorded for a function, as saved in the SQLite store.
async fn saved_idle_samples(p: &Petrel, name: &str) -> u64 {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let url = format!(
        "sqlite://{}",
        p.data_dir.path().join("data").join("petrel.db").display()
    );
    let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
    let row = sqlx::query("SELECT histogram FROM idle_histograms WHERE function = $1")
        .bind(name)
        .fetch_optional(&mut c)
        .await
        .unwrap();
    let Some(row) = row else { return 0 };
    let json: String = row.try_get(0).unwrap();
    let h: serde_json::Value = serde_json::from_str(&json).unwrap();
    let bins: u64 = h["bins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .sum();
    bins + h["out_of_range"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_hybrid_policy_learned_survives_a_restart() {
    let mut p = Petrel::start().await;
    p.deploy(echo_function("learner", "python3", "keep_alive_policy = \"hybrid\"").path());
    for _ in 0..3 {
        assert_eq!(p.invoke("learner", "{}").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.restart().await; // a clean stop saves what was learned
    let before = saved_idle_samples(&p, "learner").await;
    assert_eq!(before, 2, "three invocations, two idle times between them");
    for _ in 0..2 {
        assert_eq!(p.invoke("learner", "{}").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.restart().await;
    // The first call after the restart has no known idle time (the gap spans the restart);
    // the second adds one: 2 + 1, so the restored histogram was extended, not started again.
    assert_eq!(saved_idle_samples(&p, "learner").await, 3);
    // A policy Petrel does not know is refused at deploy, naming both.
    let bad = echo_function("learner", "python3", "keep_alive_policy = \"lru\"");
    let out = p.cli(&["deploy", bad.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("fixed") && err.contains("hybrid"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_from_zero_to_fifty_is_served_by_at_most_max_instances() {
    let p = Arc::new(Petrel::start().await);
    p.deploy(echo_function("bursty", "python3", "max_instances = 5").path());
    let mut pids = std::collections::HashSet::new();
    for r in parallel(&p, "bursty", r#"{"action": "slow", "secs": 0.2}"#, 50).await {
        assert_eq!(
            r.status,
            200,
            "no request fails while capacity exists: {}",
            r.text()
        );
        pids.insert(r.json()["instance"].to_string());
    }
    assert!(pids.len() <= 5, "{} instances served the burst", pids.len());
    p.wait_for_log("bursty", "instance started", 1).await;
    let logs = p.cli_ok(&["logs", "bursty", "--tail", "1000"]);
    let started = logs
        .lines()
        .filter(|l| l.contains("instance started"))
        .count();
    assert!(
        (1..=5).contains(&started),
        "{started} instances started:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_fork_server_python_takes_a_standby_process() {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("node.toml");
    std::fs::write(
        &path,
        "python_fork_server = false\npython_standby = 1\nsandbox = false\n",
    )
    .unwrap();
    let p = Petrel::start_with(StoreKind::Sqlite, &["--config", path.to_str().unwrap()]).await;
    for (name, who) in [("sb-a", "a"), ("sb-b", "b")] {
        p.deploy(who_python(name, who, "").path());
        // Give the replacement standby time to start, as between cold starts in practice.
        let ready = eventually(Duration::from_secs(10), || {
            std::process::Command::new("pgrep")
                .args(["-f", "bootstrap.py --standby"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        })
        .await;
        assert!(ready, "a standby Python process is waiting");
        let j = p.invoke(name, "{}").await.json();
        assert_eq!(j["who"], who, "{j}");
        assert_eq!(j["helper"], format!("helper of {who}"), "{j}");
        p.wait_for_log(name, "a standby Python process", 1).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_autoscaler_starts_an_instance_ahead_of_demand() {
    // One instance takes 10 requests; 9 in flight fit in it, so admission alone would never
    // start a second. The autoscaler aims at 70% of an instance's concurrency (7), so it does.
    let p = Arc::new(Petrel::start().await);
    p.deploy(echo_function("ahead", "python3", "concurrency = 10\nmax_instances = 3").path());
    let tasks = spawn_invokes(&p, "ahead", r#"{"action": "slow", "secs": 3}"#, 9);
    let started = eventually(Duration::from_secs(6), || {
        p.cli_ok(&["logs", "ahead", "--tail", "1000"])
            .lines()
            .filter(|l| l.contains("instance started"))
            .count()
            >= 2
    })
    .await;
    assert!(started, "no second instance was started ahead of demand");
    let mut pids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        pids.insert(r.json()["instance"].to_string());
    }
    assert_eq!(
        pids.len(),
        1,
        "the nine requests all fitted in the first instance"
    );
}
