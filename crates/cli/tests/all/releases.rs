//! Releases end to end: aliases on every way in, weighted splits measured over 10,000 calls,
//! sticky keys that never flip while a split widens, pins, `deploy --no-traffic`, rollouts that
//! succeed step by step, roll back by themselves, and resume after a restart, and promotion of a
//! version between namespaces by digest.

use crate::asynchronous::wait_status;
use crate::harness::{function_dir, manifest, Petrel};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Answers with its version's mark; with FLAKY=1, 30% of calls raise.
const APP: &str = r#"
import os, random

def handler(event, context):
    if os.environ.get("FLAKY") == "1" and random.random() < 0.3:
        raise RuntimeError("flaky version")
    return {"mark": os.environ.get("MARK")}
"#;

fn version_dir(name: &str, mark: &str, flaky: bool, extra: &str) -> tempfile::TempDir {
    let env = format!(
        "max_instances = 4\n{extra}\n[env]\nMARK = \"{mark}\"\nFLAKY = \"{}\"\n",
        u8::from(flaky)
    );
    function_dir(&[
        (
            "petrel.toml",
            &manifest(name, "python3", "app.handler", &env),
        ),
        ("app.py", APP),
    ])
}

/// A call of `path`: its status and the version that answered (`X-Petrel-Version`).
async fn call(p: &Petrel, path: &str, headers: &[(&str, &str)]) -> (u16, Option<u32>) {
    let r = p.http_with("GET", path, headers, Vec::new()).await;
    (
        r.status,
        r.header("x-petrel-version").and_then(|v| v.parse().ok()),
    )
}

/// `n` calls of `path` over `conns` connections: how many each version answered, and how many
/// answers were not 200.
async fn calls(
    p: &Arc<Petrel>,
    path: &str,
    n: usize,
    conns: usize,
) -> (HashMap<u32, usize>, usize) {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (p, path) = (p.clone(), path.to_owned());
        let mine = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(mine);
            for _ in 0..mine {
                seen.push(call(&p, &path, &[]).await);
            }
            seen
        }));
    }
    let (mut by_version, mut failed) = (HashMap::new(), 0);
    for t in tasks {
        for (status, v) in t.await.unwrap() {
            if status != 200 {
                failed += 1;
            }
            if let Some(v) = v {
                *by_version.entry(v).or_default() += 1;
            }
        }
    }
    (by_version, failed)
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_route_every_way_in_split_by_weight_and_keep_sticky_callers() {
    let p = Arc::new(Petrel::start().await);
    for mark in ["one", "two"] {
        p.deploy(version_dir("rel", mark, false, "").path());
    }
    p.cli_ok(&["alias", "set", "rel", "prod", "--version", "1"]);

    // Every way in: /fn, the raw invoke, the CLI, async, a trigger's target.
    assert_eq!(call(&p, "/fn/rel:prod/", &[]).await, (200, Some(1)));
    let raw = p
        .http(
            "POST",
            "/v1/functions/rel:prod/invoke",
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(
        (raw.status, raw.json()["mark"].as_str()),
        (200, Some("one"))
    );
    assert!(p.cli_ok(&["invoke", "rel:prod"]).contains("\"one\""));
    let queued = p
        .http(
            "POST",
            "/async-fn/rel:prod/",
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(queued.status, 202, "{}", queued.text());
    let done = wait_status(
        &p,
        queued.json()["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done["executed_version"], 1, "{done}");
    // The latest is version 2; an alias-less call goes there.
    assert_eq!(call(&p, "/fn/rel/", &[]).await, (200, Some(2)));

    // A pin beats the alias; a bad pin is refused; an unknown alias says how to make one.
    assert_eq!(
        call(&p, "/fn/rel:prod/", &[("x-petrel-version", "2")]).await,
        (200, Some(2))
    );
    let bad = p
        .http_with(
            "GET",
            "/fn/rel:prod/",
            &[("x-petrel-version", "two")],
            Vec::new(),
        )
        .await;
    bad.assert_error(400, "invalid_request");
    let none = p.http("GET", "/fn/rel:nope/", None).await;
    assert!(none
        .assert_error(404, "version_not_found")
        .contains("petrel alias set rel nope"));
    let out = p.cli(&["alias", "set", "rel", "prod", "--version", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version 9"));

    // A 10% split over 10,000 calls lands within 10% ± 1%.
    p.cli_ok(&[
        "alias",
        "set",
        "rel",
        "prod",
        "--version",
        "1",
        "--weight",
        "2=10%",
    ]);
    let ls = p.cli_ok(&["alias", "ls", "rel"]);
    assert!(ls.contains("version 1 90%, version 2 10%"), "{ls}");
    let (seen, failed) = calls(&p, "/fn/rel:prod/", 10_000, 16).await;
    assert_eq!(failed, 0, "{seen:?}");
    let on_two = seen.get(&2).copied().unwrap_or(0);
    assert_eq!(seen.values().sum::<usize>(), 10_000);
    assert!(
        (900..=1100).contains(&on_two),
        "version 2 got {on_two} of 10,000: {seen:?}"
    );

    // Sticky keys (header or cookie) stay on their side while the split widens.
    let keys: Vec<String> = (0..150).map(|i| format!("user-{i}")).collect();
    let mut on_new: HashMap<String, bool> = HashMap::new();
    for weight in ["2=0.1", "2=0.5", "2=0.9"] {
        p.cli_ok(&[
            "alias",
            "set",
            "rel",
            "prod",
            "--version",
            "1",
            "--weight",
            weight,
        ]);
        let mut new_now = 0;
        for (i, k) in keys.iter().enumerate() {
            let cookie = format!("theme=dark; petrel-sticky={k}");
            let h: Vec<(&str, &str)> = if i % 2 == 0 {
                vec![("x-petrel-sticky-key", k)]
            } else {
                vec![("cookie", &cookie)]
            };
            // Twice: the same key gets the same side every time.
            let (_, a) = call(&p, "/fn/rel:prod/", &h).await;
            let (_, b) = call(&p, "/fn/rel:prod/", &h).await;
            assert_eq!(a, b, "key {k} flipped between two calls at {weight}");
            let is_new = a == Some(2);
            if on_new.get(k) == Some(&true) {
                assert!(
                    is_new,
                    "key {k} went back to version 1 when the split widened to {weight}"
                );
            }
            on_new.insert(k.clone(), is_new);
            new_now += usize::from(is_new);
        }
        let share: f64 = weight[2..].parse().unwrap();
        let expected = share * keys.len() as f64;
        assert!(
            (new_now as f64 - expected).abs() < 0.2 * keys.len() as f64,
            "{new_now} of {} keys on version 2 at {weight}",
            keys.len()
        );
    }

    // A trigger's target names the alias: its batches run the alias's version.
    p.cli_ok(&["alias", "set", "rel", "prod", "--version", "2"]);
    p.deploy(
        version_dir(
            "rel",
            "three",
            false,
            "\n[[trigger]]\nname = \"tick\"\nkind = \"cron\"\nschedule = \"* * * * * *\"\ntarget = \"prod\"\n",
        )
        .path(),
    );
    let mut fires = Vec::new();
    for _ in 0..100 {
        let recs = p
            .http("GET", "/v1/functions/rel/invocations?limit=500", None)
            .await
            .json();
        fires = recs["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["trigger"] == "cron:tick")
            .cloned()
            .collect();
        if !fires.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !fires.is_empty(),
        "the cron trigger never fired\n{}",
        p.server_log()
    );
    assert!(fires.iter().all(|r| r["version"] == 2), "{fires:?}");

    // --no-traffic: an alias that follows the latest stays where it was.
    p.cli_ok(&["alias", "set", "rel", "edge", "--version", "latest"]);
    assert_eq!(call(&p, "/fn/rel:edge/", &[]).await, (200, Some(3)));
    let dir = version_dir("rel", "four", false, "");
    p.cli_ok(&["deploy", dir.path().to_str().unwrap(), "--no-traffic"]);
    assert_eq!(call(&p, "/fn/rel:edge/", &[]).await, (200, Some(3)));
    assert_eq!(call(&p, "/fn/rel:4/", &[]).await, (200, Some(4)));
    let ls = p.cli_ok(&["alias", "ls", "rel"]);
    assert!(ls.contains("edge") && ls.contains("version 3"), "{ls}");
    p.cli_ok(&["alias", "rm", "rel", "edge"]);
    assert_eq!(p.http("GET", "/fn/rel:edge/", None).await.status, 404);
}

/// Calls `path` until `stop` is set, in the background.
fn traffic(
    p: &Arc<Petrel>,
    path: &str,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let (p, path, stop) = (p.clone(), path.to_owned(), stop.clone());
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = p.http_with("GET", &path, &[], Vec::new()).await;
            n += 1;
        }
        n
    })
}

async fn rollout_json(p: &Petrel, alias: &str) -> serde_json::Value {
    p.http(
        "GET",
        &format!("/v1/functions/roll/aliases/{alias}/rollout"),
        None,
    )
    .await
    .json()
}

/// `petrel rollout start roll --alias prod ARGS...`; its output.
fn start_rollout(p: &Petrel, args: &[&str]) -> String {
    let mut all = vec!["rollout", "start", "roll", "--alias", "prod"];
    all.extend_from_slice(args);
    p.cli_ok(&all)
}

/// Asserts that alias prod of `roll` points at `version` alone.
async fn assert_alone_on(p: &Petrel, version: u64) {
    let a = p
        .http("GET", "/v1/functions/roll/aliases/prod", None)
        .await
        .json();
    assert_eq!(
        (a["version"].as_u64(), a.get("additional")),
        (Some(version), None),
        "{a}"
    );
}

async fn wait_rollout(p: &Petrel, state: &str, limit: Duration) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        let r = rollout_json(p, "prod").await;
        if r["state"] == state {
            return r;
        }
        assert!(
            t0.elapsed() < limit,
            "the rollout is not {state} after {limit:?}: {r:#}\n{}",
            p.server_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_widen_step_by_step_roll_back_a_failing_version_and_resume_after_a_restart() {
    let p = Petrel::start().await;
    p.deploy(version_dir("roll", "one", false, "").path());
    p.deploy(version_dir("roll", "two", false, "").path());
    p.deploy(version_dir("roll", "flaky", true, "").path());
    p.cli_ok(&["alias", "set", "roll", "prod", "--version", "1"]);
    let p = Arc::new(p);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = [
        traffic(&p, "/fn/roll:prod/", &stop),
        traffic(&p, "/fn/roll:prod/", &stop),
    ];

    // A good version goes 20% → 50% → 100%, one step per interval.
    let out = start_rollout(
        &p,
        &[
            "--to",
            "2",
            "--steps",
            "20,50,100",
            "--interval",
            "2s",
            "--max-error-rate",
            "5%",
            "--max-p99",
            "5s",
            "--min-calls",
            "5",
        ],
    );
    assert!(out.contains("started: 20% of prod to version 2"), "{out}");
    let r = wait_rollout(&p, "succeeded", Duration::from_secs(60)).await;
    let history: Vec<&str> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(history.len(), 3, "{history:#?}");
    assert!(
        history[1].contains("50% of prod to version 2"),
        "{history:#?}"
    );
    assert!(
        history[2].contains("succeeded: all of prod on version 2"),
        "{history:#?}"
    );
    assert_alone_on(&p, 2).await;

    // A version that fails 30% of its calls is rolled back within its first interval.
    let t0 = std::time::Instant::now();
    start_rollout(
        &p,
        &[
            "--to",
            "3",
            "--steps",
            "50,100",
            "--interval",
            "30s",
            "--max-error-rate",
            "2%",
            "--min-calls",
            "20",
        ],
    );
    let r = wait_rollout(&p, "rolled_back", Duration::from_secs(30)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "rolled back after {:?}",
        t0.elapsed()
    );
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("version 3's error rate") && reason.contains("limit of 2%"),
        "{reason}"
    );
    let status = p.cli_ok(&["rollout", "status", "roll", "--alias", "prod"]);
    assert!(
        status.contains("rolled_back") && status.contains(reason),
        "{status}"
    );
    assert_alone_on(&p, 2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        assert!(t.await.unwrap() > 0);
    }

    // Manual pause, resume and abort; an alias in a rollout is not changed by hand.
    start_rollout(&p, &["--to", "1", "--steps", "10,100", "--interval", "1h"]);
    let out = p.cli(&["alias", "set", "roll", "prod", "--version", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("being moved by rollout"));
    assert!(p
        .cli_ok(&["rollout", "pause", "roll", "--alias", "prod"])
        .contains("paused"));
    assert!(p
        .cli_ok(&["rollout", "resume", "roll", "--alias", "prod"])
        .contains("running"));
    let out = p.cli_ok(&["rollout", "abort", "roll", "--alias", "prod"]);
    assert!(
        out.contains("aborted") && out.contains("aborted by hand"),
        "{out}"
    );
    assert_alone_on(&p, 2).await;

    // A restart in the middle of a rollout: it carries on from its step.
    start_rollout(
        &p,
        &["--to", "1", "--steps", "10,50,100", "--interval", "3s"],
    );
    let mut p = Arc::try_unwrap(p).ok().expect("no traffic left");
    p.restart().await;
    let r = rollout_json(&p, "prod").await;
    assert_eq!(
        r["state"], "running",
        "the rollout outlived the first server: {r:#}"
    );
    assert!(r["history"].as_array().unwrap().len() < 3, "{r:#}");
    let r = wait_rollout(&p, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(r["history"].as_array().unwrap().len(), 3, "{r:#}");
    assert_alone_on(&p, 1).await;
    // A preset is CodeDeploy's shape.
    let out = start_rollout(&p, &["--to", "2", "--preset", "all-at-once"]);
    assert!(out.contains("succeeded"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_copies_a_tested_version_by_digest_to_another_namespace() {
    let p = Petrel::start().await;
    let dir = version_dir("promo", "staged", false, "");
    p.cli_ok(&["deploy", dir.path().to_str().unwrap(), "-n", "staging"]);
    p.cli_ok(&[
        "alias",
        "set",
        "promo",
        "tested",
        "--version",
        "1",
        "-n",
        "staging",
    ]);
    let out = p.cli_ok(&[
        "promote", "promo", "--from", "staging", "--to", "prod", "--alias", "live",
    ]);
    assert!(
        out.contains("copied to prod version 1") && out.contains("nothing rebuilt"),
        "{out}"
    );
    let digest = |ns: &str| {
        let ns = ns.to_owned();
        let p = &p;
        async move {
            let f = p
                .http("GET", &format!("/v1/functions/promo?namespace={ns}"), None)
                .await
                .json();
            f["versions"][0]["digest"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(digest("staging").await, digest("prod").await);
    let r = p.http("GET", "/fn/promo:live/?namespace=prod", None).await;
    assert_eq!(
        (r.status, r.json()["mark"].as_str()),
        (200, Some("staged")),
        "{}",
        r.text()
    );
    // Promoting the same version again adds nothing; an unknown one says so.
    let out = p.cli_ok(&[
        "promote", "promo", "--from", "staging", "--to", "prod", "--alias", "tested",
    ]);
    assert!(out.contains("already at prod version 1"), "{out}");
    let out = p.cli(&[
        "promote",
        "promo",
        "--from",
        "staging",
        "--to",
        "prod",
        "--version",
        "7",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version 7"));
}
