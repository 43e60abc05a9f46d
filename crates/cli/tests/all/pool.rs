//! Instances are reused while warm, bounded by max_instances × concurrency, queued, shed with
//! clear errors, kept warm (min_instances) and stopped when idle (keep_alive).

use crate::fixtures::echo_function;
use crate::harness::{eventually, instance_alive, parallel, Petrel};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn warm_instances_are_reused_and_never_more_than_max() {
    let p = Arc::new(Petrel::start().await);
    p.deploy(echo_function("bounded", "python3", "max_instances = 2").path());
    let pids: HashSet<String> = {
        let mut s = HashSet::new();
        for _ in 0..3 {
            s.insert(p.invoke("bounded", "{}").await.json()["instance"].to_string());
        }
        s
    };
    assert_eq!(pids.len(), 1, "sequential requests reuse the warm instance");

    let results = parallel(&p, "bounded", r#"{"action": "slow", "secs": 0.5}"#, 6).await;
    assert!(
        results.iter().all(|r| r.status == 200),
        "{:?}",
        results.iter().map(|r| r.text()).collect::<Vec<_>>()
    );
    let logs = p.cli_ok(&["logs", "bounded", "--tail", "1000"]);
    let started = logs
        .lines()
        .filter(|l| l.contains("instance started"))
        .count();
    assert!(started <= 2, "more than max_instances started:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_instance_serves_concurrent_requests_up_to_its_concurrency() {
    let p = Arc::new(Petrel::start().await);
    p.deploy(echo_function("wide", "nodejs", "concurrency = 4\nmax_instances = 1").path());
    let results = parallel(&p, "wide", r#"{"action": "slow", "secs": 0.5}"#, 4).await;
    assert!(results.iter().all(|r| r.status == 200));
    let pids: HashSet<String> = results
        .iter()
        .map(|r| r.json()["instance"].to_string())
        .collect();
    assert_eq!(pids.len(), 1, "one instance took all four");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_429_and_a_long_wait_is_503_both_with_retry_after() {
    let p = Arc::new(Petrel::start().await);
    p.deploy(echo_function("narrow", "python3", "max_instances = 1\nqueue_size = 0").path());
    p.deploy(
        echo_function(
            "patient",
            "python3",
            "max_instances = 1\nqueue_size = 1\nqueue_timeout = \"300ms\"",
        )
        .path(),
    );
    for name in ["narrow", "patient"] {
        // Warm it, then hold its only slot.
        assert_eq!(p.invoke(name, "{}").await.status, 200);
        let hold = {
            let p = p.clone();
            tokio::spawn(async move { p.invoke(name, r#"{"action": "slow", "secs": 2}"#).await })
        };
        // The handler logs as it starts: then the only slot is taken.
        p.wait_for_log(name, "py-log-line", 2).await;
        let r = p.invoke(name, "{}").await;
        let (status, code) = if name == "narrow" {
            (429, "too_many_requests")
        } else {
            (503, "no_capacity")
        };
        let m = r.assert_error(status, code);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(m.contains("max_instances"), "{m}");
        assert_eq!(
            hold.await.unwrap().status,
            200,
            "the request holding the slot is unharmed"
        );
        assert_eq!(p.invoke(name, "{}").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_stop_after_keep_alive_and_min_instances_stay_warm() {
    let p = Petrel::start().await;
    p.deploy(echo_function("brief", "python3", "keep_alive = \"1s\"").path());
    let id = p.invoke("brief", "{}").await.json()["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(instance_alive(&id));
    assert!(
        eventually(Duration::from_secs(10), || !instance_alive(&id)).await,
        "idle instance {id} was not stopped"
    );
    let again = p.invoke("brief", "{}").await;
    assert_eq!(again.status, 200);
    assert_ne!(again.json()["instance"].as_str().unwrap(), id);

    // min_instances: started at deploy, before any request, and kept past keep_alive.
    p.deploy(echo_function("warm", "python3", "keep_alive = \"1s\"\nmin_instances = 1").path());
    let started = eventually(Duration::from_secs(10), || {
        p.cli_ok(&["logs", "warm"]).contains("instance started")
    })
    .await;
    assert!(started, "min_instances did not start an instance at deploy");
    let id = p.invoke("warm", "{}").await.json()["instance"].to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        instance_alive(id.trim_matches('"')),
        "the provisioned instance was stopped"
    );
    assert_eq!(
        p.invoke("warm", "{}").await.json()["instance"].to_string(),
        id
    );
}
