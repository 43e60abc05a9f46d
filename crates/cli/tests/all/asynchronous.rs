//! Async mode end to end: submissions answered 202 after a durable commit, `kill -9` of the
//! server while work runs and while it is submitted, retries (function errors, crashes, running
//! out of memory) into the dead-letter list and replays, callbacks and destinations, idempotency keys, the long async timeout, and two servers
//! sharing one PostgreSQL queue.

use crate::harness::{
    function_dir, https_receiver, manifest, receiver, test_ca, Petrel, Seen, StoreKind,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const APP: &str = r#"
import json, os, time
calls = 0

def handler(event, context):
    global calls
    calls += 1
    print("ran", context.aws_request_id, flush=True)
    if "requestContext" in event and "rawPath" in event:
        return {"statusCode": 201, "headers": {"x-from": "async"},
                "body": json.dumps({"path": event["rawPath"], "query": event["rawQueryString"],
                                    "body": event.get("body"), "method": event["requestContext"]["http"]["method"]})}
    action = event.get("action")
    if action == "sleep":
        time.sleep(event["secs"])
    if action == "fail_first" and calls <= event["n"]:
        raise RuntimeError("failing call %d" % calls)
    if action == "fail":
        raise RuntimeError("always failing")
    if action == "crash":
        print("about to crash", flush=True)
        os._exit(3)
    if action == "hog":
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))
    return {"n": event.get("n"), "calls": calls, "event": event}
"#;

pub(crate) fn function(name: &str, extra: &str) -> tempfile::TempDir {
    function_dir(&[
        (
            "petrel.toml",
            &manifest(name, "python3", "app.handler", extra),
        ),
        ("app.py", APP),
    ])
}

pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub(crate) fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Submits an event through the raw invoke's async flag; the id if it was accepted (202).
pub(crate) async fn try_submit(
    client: &HttpClient,
    url: &str,
    name: &str,
    event: &Value,
) -> Option<String> {
    let req = http::Request::post(format!("{url}/v1/functions/{name}/invoke?async=true"))
        .header("content-type", "application/json")
        .header("authorization", crate::harness::owner_bearer())
        .body(Full::new(Bytes::from(event.to_string())))
        .unwrap();
    let resp = client.request(req).await.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    if status != 202 {
        panic!(
            "submission answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    Some(v["id"].as_str().unwrap().to_owned())
}

async fn submit(p: &Petrel, name: &str, event: Value) -> String {
    try_submit(&http_client(), &p.url, name, &event)
        .await
        .expect("accepted")
}

async fn get(p: &Petrel, id: &str) -> Value {
    let r = p.http("GET", &format!("/v1/invocations/{id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until the invocation is in `status`; returns it.
pub(crate) async fn wait_status(p: &Petrel, id: &str, status: &str, limit: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let v = get(p, id).await;
        if v["status"] == status {
            return v;
        }
        assert!(
            t0.elapsed() < limit,
            "{id} is not {status} after {limit:?}: {v}\n{}",
            p.server_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A function's async invocations (at most 10,000).
pub(crate) async fn list(p: &Petrel, name: &str, status: Option<&str>) -> Vec<Value> {
    let q = status.map(|s| format!("&status={s}")).unwrap_or_default();
    let r = p
        .http(
            "GET",
            &format!("/v1/functions/{name}/async?limit=10000{q}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["invocations"].as_array().unwrap().clone()
}

pub(crate) fn result_json(v: &Value) -> Value {
    serde_json::from_str(v["result"]["body"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_invocation_succeeds_across_kill_9_of_the_server() {
    kill_9_suite(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_invocation_succeeds_across_kill_9_of_the_server_postgres() {
    let store = StoreKind::fresh_postgres().await;
    kill_9_suite(store.clone()).await;
    store.drop_postgres().await;
}

async fn kill_9_suite(store: StoreKind) {
    let mut p = Petrel::start_with(store, &[]).await;
    p.deploy(
        function(
            "batch",
            "max_instances = 2\nasync_concurrency = 2\nkeep_alive = \"10m\"",
        )
        .path(),
    );
    p.deploy(function("slow", "keep_alive = \"10m\"").path());
    let slow = submit(&p, "slow", json!({"action": "sleep", "secs": 3, "n": -1})).await;
    // Submissions race the kill: only what was answered 202 counts as accepted.
    let accepted: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, accepted, next) = (p.url.clone(), accepted.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= 1000 {
                    return;
                }
                let event = json!({"action": "sleep", "secs": 0.002, "n": n});
                match try_submit(&client, &url, "batch", &event).await {
                    Some(id) => accepted.lock().unwrap().push((id, n)),
                    None => return,
                }
            }
        }));
    }
    let t0 = Instant::now();
    while accepted.lock().unwrap().len() < 500 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "submissions stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The slow one is running (an attempt in flight), the batch both runs and is submitted.
    wait_status(&p, &slow, "running", Duration::from_secs(30)).await;
    let done_before = list(&p, "batch", Some("succeeded")).await.len();
    p.kill9_and_restart().await;
    for t in tasks {
        t.await.unwrap();
    }
    let submitted_before = accepted.lock().unwrap().len();
    assert!(
        submitted_before < 1000,
        "the kill came after every submission"
    );
    // The rest, to the restarted server.
    let client = http_client();
    let mut n = next.load(std::sync::atomic::Ordering::SeqCst).min(1000);
    while accepted.lock().unwrap().len() < 1000 {
        let id = try_submit(
            &client,
            &p.url,
            "batch",
            &json!({"action": "sleep", "secs": 0.002, "n": n}),
        )
        .await
        .expect("the restarted server accepts");
        accepted.lock().unwrap().push((id, n));
        n += 1;
    }
    // Every accepted one succeeds. A submission the kill caught between its commit and its
    // answer may be there too, unacknowledged: at least once.
    let accepted = accepted.lock().unwrap().clone();
    let t0 = Instant::now();
    let all: HashMap<String, Value> = loop {
        let all: HashMap<String, Value> = list(&p, "batch", None)
            .await
            .into_iter()
            .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
            .collect();
        let done = accepted
            .iter()
            .filter(|(id, _)| all.get(id).is_some_and(|v| v["status"] == "succeeded"))
            .count();
        if done == accepted.len() {
            break all;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "{done} of {} succeeded; log:\n{}",
            accepted.len(),
            p.server_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        all.len() >= 1000 && all.len() <= 1000 + 8,
        "1000 accepted, and at most one unanswered per submitter: {}",
        all.len()
    );
    for (id, n) in &accepted {
        let v = &all[id];
        assert_eq!(result_json(v)["n"], *n, "each result is its own: {v}");
    }
    // The attempt the kill cut short ran again, and counts.
    let s = wait_status(&p, &slow, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(s["attempts"], 2, "{s}");
    assert!(
        p.server_log()
            .contains("queued again the invocations this server was running"),
        "{}",
        p.server_log()
    );
    eprintln!("kill -9 came after {submitted_before} submissions, {done_before} of them done");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_lets_attempts_finish_and_resumes_the_ones_it_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel-node.toml");
    std::fs::write(&path, "shutdown_timeout = \"4s\"\n").unwrap();
    let mut p = Petrel::start_with(StoreKind::Sqlite, &["--config", path.to_str().unwrap()]).await;
    // No retries: an attempt the stop cuts short must not count as the function's failure.
    p.deploy(function("cut", "max_retries = 0\nkeep_alive = \"10m\"").path());
    p.deploy(function("quick", "max_retries = 0\nkeep_alive = \"10m\"").path());
    let cut = submit(&p, "cut", json!({"action": "sleep", "secs": 10, "n": 1})).await;
    let quick = submit(&p, "quick", json!({"action": "sleep", "secs": 2, "n": 2})).await;
    // Both are in their handlers (past any cold start) when the stop comes.
    p.wait_for_log("cut", &format!("ran {cut}"), 1).await;
    p.wait_for_log("quick", &format!("ran {quick}"), 1).await;
    p.restart().await;
    // The short one ended within the grace, before the server exited.
    let q = get(&p, &quick).await;
    assert_eq!(
        (&q["status"], &q["attempts"]),
        (&json!("succeeded"), &json!(1)),
        "{q}"
    );
    // The long one was cut, kept its claim, and ran again after the start.
    let c = wait_status(&p, &cut, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(c["attempts"], 2, "{c}");
    assert_eq!(result_json(&c)["n"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn async_work_leaves_synchronous_calls_their_share_and_results_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel-node.toml");
    std::fs::write(
        &path,
        "async_retention = \"2s\"\ndead_letter_retention = \"3s\"\n",
    )
    .unwrap();
    let p = Petrel::start_with(StoreKind::Sqlite, &["--config", path.to_str().unwrap()]).await;
    // Two instances; async work may take half of them (async_concurrency defaults to 1). A
    // synchronous call that found both busy would give up after queue_timeout (503).
    p.deploy(
        function(
            "shared-pool",
            "max_instances = 2\nqueue_timeout = \"1s\"\nkeep_alive = \"10m\"",
        )
        .path(),
    );
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            submit(
                &p,
                "shared-pool",
                json!({"action": "sleep", "secs": 1.5, "n": n}),
            )
            .await,
        );
    }
    // The queue's depth: none of the four can have finished yet (each sleeps 1.5 s, one at a
    // time).
    let metrics = p.http("GET", "/metrics", None).await.text();
    let depth = |status: &str| {
        sample(
            &metrics,
            &format!(
                r#"petrel_async_invocations{{namespace="default",function="shared-pool",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(
        depth("queued").unwrap_or(0.0) + depth("running").unwrap_or(0.0),
        4.0,
        "{metrics}"
    );
    let age = sample(
        &metrics,
        r#"petrel_async_oldest_queued_age_seconds{namespace="default",function="shared-pool"}"#,
    )
    .unwrap_or_else(|| panic!("no age of the oldest queued in {metrics}"));
    assert!((0.0..60.0).contains(&age), "{age}");
    wait_status(&p, &ids[0], "running", Duration::from_secs(30)).await;
    let mut most_running = 0;
    for _ in 0..8 {
        let r = p.invoke("shared-pool", r#"{"n": "sync"}"#).await;
        assert_eq!(
            r.status,
            200,
            "a synchronous call got through: {}",
            r.text()
        );
        let running = list(&p, "shared-pool", Some("running")).await.len();
        most_running = most_running.max(running);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(most_running, 1, "async work stays within its share");
    for id in &ids {
        wait_status(&p, id, "succeeded", Duration::from_secs(60)).await;
    }
    let metrics = p.http("GET", "/metrics", None).await.text();
    assert!(
        !metrics.contains(r#"petrel_async_invocations{namespace="default",function="shared-pool""#)
            && !metrics.contains("petrel_async_oldest_queued_age_seconds{"),
        "an empty queue has no depth: {metrics}"
    );
    // A dead letter, kept for dead_letter_retention.
    p.deploy(function("doomed", "max_retries = 0").path());
    let dead = submit(&p, "doomed", json!({"action": "fail"})).await;
    wait_status(&p, &dead, "dead", Duration::from_secs(30)).await;
    // Results are kept for async_retention, dead letters for dead_letter_retention; then both
    // are dropped.
    for id in [&ids[0], &dead] {
        let t0 = Instant::now();
        loop {
            let r = p.http("GET", &format!("/v1/invocations/{id}"), None).await;
            if r.status == 404 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "still kept: {}",
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The value of one sample, by its name and labels exactly as the exposition writes them.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A config file for quick retries.
fn quick_retries() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("petrel-node.toml");
    std::fs::write(&path, "async_retry_base = \"50ms\"\n").unwrap();
    let p = path.to_str().unwrap().to_owned();
    (dir, p)
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_into_the_dead_letter_list_and_replay() {
    let (_cfg, path) = quick_retries();
    let p = Petrel::start_with(StoreKind::Sqlite, &["--config", &path]).await;
    p.deploy(
        function(
            "flaky",
            "max_instances = 1\nmax_retries = 2\nkeep_alive = \"10m\"",
        )
        .path(),
    );
    // Fails on the first three calls of its instance: three attempts, then the dead letters.
    let id = submit(&p, "flaky", json!({"action": "fail_first", "n": 3})).await;
    let dead = wait_status(&p, &id, "dead", Duration::from_secs(60)).await;
    assert_eq!(dead["attempts"], 3, "{dead}");
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.contains("failed 3 times (max_retries = 2)") && error.contains("RuntimeError"),
        "{dead}"
    );
    assert_eq!(
        dead["result"]["status"], 500,
        "the last answer is kept: {dead}"
    );
    assert!(
        dead["result"]["body"]
            .as_str()
            .unwrap()
            .contains("failing call 3"),
        "{dead}"
    );
    // Each attempt has its record.
    let records = p.cli_ok(&["inv", "ls", "flaky"]);
    for n in 1..=3 {
        assert!(records.contains(&format!("{id}.{n}")), "{records}");
    }
    assert_eq!(records.matches("function_error").count(), 3, "{records}");
    let metrics = p.http("GET", "/metrics", None).await.text();
    for line in [
        r#"petrel_async_finished_total{namespace="default",function="flaky",status="dead"} 1"#,
        r#"petrel_async_accepted_total{namespace="default",function="flaky",runtime="python3"} 1"#,
        r#"petrel_async_attempts_total{namespace="default",function="flaky",runtime="python3",outcome="retry"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert_eq!(
        sample(
            &metrics,
            r#"petrel_async_invocations{namespace="default",function="flaky",status="dead"}"#
        ),
        Some(1.0),
        "the dead-letter list's length: {metrics}"
    );
    let dlq = p.cli_ok(&["dlq", "ls", "flaky"]);
    assert!(dlq.contains(&id) && dlq.contains("dead"), "{dlq}");
    let out = p.cli_ok(&["dlq", "replay", "flaky", &id]);
    assert!(
        out.contains("Queued again: 1") && out.contains(&id),
        "{out}"
    );
    let ok = wait_status(&p, &id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(
        (&ok["attempts"], &ok["replays"]),
        (&json!(1), &json!(1)),
        "{ok}"
    );
    assert_eq!(result_json(&ok)["calls"], 4, "{ok}");
    assert!(p.cli_ok(&["dlq", "ls", "flaky"]).contains("is empty"));
    let metrics = p.http("GET", "/metrics", None).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"petrel_async_invocations{namespace="default",function="flaky",status="dead"}"#
        ),
        None,
        "{metrics}"
    );
    let again = p.cli(&["dlq", "replay", "flaky", &id]);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("not in the dead-letter list"),
        "{again:?}"
    );

    // max_event_age: too old for the next retry long before the retries run out.
    p.deploy(
        function(
            "aged",
            "max_retries = 10\nmax_event_age = \"1s\"\nkeep_alive = \"10m\"",
        )
        .path(),
    );
    let id = submit(&p, "aged", json!({"action": "fail"})).await;
    let dead = wait_status(&p, &id, "dead", Duration::from_secs(30)).await;
    assert!(
        dead["error"].as_str().unwrap().contains("max_event_age")
            && dead["attempts"].as_u64().unwrap() < 11,
        "{dead}"
    );

    // A crash and running out of memory are failures like the others: retried, counted, and
    // dead after max_retries + 1 attempts; the next invocation gets a new instance.
    p.deploy(
        function(
            "fragile",
            "memory_mb = 128\nmax_retries = 1\nkeep_alive = \"10m\"",
        )
        .path(),
    );
    for (action, outcome, cause) in [
        ("crash", " crashed ", "exited with status 3"),
        ("hog", " out_of_memory ", "memory_mb of 128 MiB"),
    ] {
        let id = submit(&p, "fragile", json!({"action": action})).await;
        let dead = wait_status(&p, &id, "dead", Duration::from_secs(60)).await;
        assert_eq!(dead["attempts"], 2, "{dead}");
        let error = dead["error"].as_str().unwrap();
        assert!(
            error.contains("failed 2 times (max_retries = 1)") && error.contains(cause),
            "{action}: {dead}"
        );
        let records = p.cli_ok(&["inv", "ls", "fragile"]);
        for n in 1..=2 {
            let line = records
                .lines()
                .find(|l| l.contains(&format!("{id}.{n}")))
                .unwrap_or_else(|| panic!("no record {id}.{n} in {records}"));
            assert!(line.contains(outcome), "{line}");
        }
    }
    let id = submit(&p, "fragile", json!({"n": 9})).await;
    let ok = wait_status(&p, &id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(result_json(&ok)["n"], 9, "{ok}");

    // A long task: async_timeout, not timeout, bounds an async run.
    p.deploy(
        function(
            "long",
            "timeout = \"1s\"\nasync_timeout = \"20s\"\nasync_concurrency = 1\nkeep_alive = \"10m\"",
        )
        .path(),
    );
    let sync = p.invoke("long", r#"{"action": "sleep", "secs": 2}"#).await;
    sync.assert_error(504, "function_timeout");
    let id = submit(&p, "long", json!({"action": "sleep", "secs": 2, "n": 7})).await;
    let ok = wait_status(&p, &id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(result_json(&ok)["n"], 7, "{ok}");

    // Refused at once, not queued: an unknown function, an event that is not JSON, a bad
    // callback URL.
    let r = p
        .http(
            "POST",
            "/v1/functions/nope/invoke?async=true",
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    r.assert_error(404, "function_not_found");
    p.http("POST", "/async-fn/nope/x", None)
        .await
        .assert_error(404, "function_not_found");
    let r = p
        .http(
            "POST",
            "/v1/functions/flaky/invoke?async=true",
            Some(("application/json", b"{not json".to_vec())),
        )
        .await;
    r.assert_error(400, "invalid_payload");
    let r = p
        .http_with(
            "POST",
            "/async-fn/flaky",
            &[("x-callback-url", "ftp://example.com/")],
            b"{}".to_vec(),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert_eq!(
        list(&p, "flaky", None).await.len(),
        1,
        "nothing refused was queued"
    );

    // The CLI: --async prints the id, --wait the result.
    let id = p.cli_ok(&["invoke", "flaky", "--async", "-d", r#"{"n": 5}"#]);
    let id = id.trim();
    wait_status(&p, id, "succeeded", Duration::from_secs(30)).await;
    assert!(p.cli_ok(&["inv", "get", id]).contains("\"succeeded\""));
    let out = p.cli_ok(&["invoke", "flaky", "--async", "--wait", "-d", r#"{"n": 6}"#]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["n"],
        6,
        "{out}"
    );
    let ls = p.cli_ok(&["inv", "ls", "flaky", "--async", "--status", "succeeded"]);
    assert_eq!(ls.lines().count(), 4, "a header and three: {ls}");

    // Cancelling: a queued invocation (waiting behind one that runs, as the function runs one
    // at a time), then the running one, whose instance is stopped at once.
    let running = submit(&p, "long", json!({"action": "sleep", "secs": 15})).await;
    let behind = submit(&p, "long", json!({"action": "sleep", "secs": 15})).await;
    wait_status(&p, &running, "running", Duration::from_secs(30)).await;
    let out = p.cli_ok(&["inv", "cancel", &behind]);
    assert!(
        out.contains(&format!("Cancelled {behind} (cancelled while queued)")),
        "{out}"
    );
    let r = p
        .http("DELETE", &format!("/v1/invocations/{running}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["status"].as_str(), v["error"].as_str()),
        (Some("cancelled"), Some("cancelled while running")),
        "{v}"
    );
    // The attempt ends as stopped, its instance gone; the next invocation does not wait the
    // 15 s the stopped one would have slept.
    p.wait_record(
        "long",
        &format!("{running}.1"),
        "stopped",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        crate::harness::eventually(Duration::from_secs(5), || {
            p.cli_ok(&["logs", "long", "--tail", "1000"])
                .contains("stopping the instance: its async invocation was cancelled")
        })
        .await
    );
    let next = submit(&p, "long", json!({"n": 8})).await;
    let ok = wait_status(&p, &next, "succeeded", Duration::from_secs(10)).await;
    assert_eq!(result_json(&ok)["n"], 8, "{ok}");
    // Dead: out of the dead-letter list.
    let doomed = submit(&p, "aged", json!({"action": "fail"})).await;
    wait_status(&p, &doomed, "dead", Duration::from_secs(30)).await;
    let out = p.cli_ok(&["inv", "cancel", &doomed]);
    assert!(out.contains("cancelled while dead; before: "), "{out}");
    assert!(!p.cli_ok(&["dlq", "ls", "aged"]).contains(&doomed));
    // Nothing of the stopped attempt is recorded as the outcome, and nothing runs again.
    for (id, attempts) in [(&running, 1), (&behind, 0)] {
        let v = get(&p, id).await;
        assert_eq!(
            (v["status"].as_str(), v["attempts"].as_u64(), &v["result"]),
            (Some("cancelled"), Some(attempts), &Value::Null),
            "{v}"
        );
    }
    // An instance serving another invocation at the same time (concurrency = 2) is not
    // stopped: the cancelled one runs to its end, unrecorded, and its neighbour is untouched.
    p.deploy(
        crate::fixtures::echo_function(
            "pair",
            "nodejs",
            "concurrency = 2\nmax_instances = 1\nasync_concurrency = 2\nkeep_alive = \"10m\"",
        )
        .path(),
    );
    let event = json!({"action": "slow", "secs": 4});
    let (cancelled, neighbour) = (
        submit(&p, "pair", event.clone()).await,
        submit(&p, "pair", event).await,
    );
    for id in [&cancelled, &neighbour] {
        wait_status(&p, id, "running", Duration::from_secs(30)).await;
    }
    let r = p
        .http("DELETE", &format!("/v1/invocations/{cancelled}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ok = wait_status(&p, &neighbour, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(ok["attempts"], 1, "the neighbour was not cut: {ok}");
    p.wait_record(
        "pair",
        &format!("{cancelled}.1"),
        "success",
        Duration::from_secs(10),
    )
    .await;
    let v = get(&p, &cancelled).await;
    assert_eq!(
        (v["status"].as_str(), &v["result"]),
        (Some("cancelled"), &Value::Null),
        "{v}"
    );
    assert!(!p
        .cli_ok(&["logs", "pair", "--tail", "1000"])
        .contains("stopping the instance"));

    // What has ended cannot be cancelled; an unknown id is not found.
    let ended = list(&p, "flaky", Some("succeeded")).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = p
        .http("DELETE", &format!("/v1/invocations/{ended}"), None)
        .await
        .assert_error(409, "conflict");
    assert!(m.contains("already ended (succeeded)"), "{m}");
    p.http("DELETE", &format!("/v1/invocations/{running}"), None)
        .await
        .assert_error(409, "conflict");
    let out = p.cli(&["inv", "cancel", "no-such-id", &ended]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("no async invocation no-such-id")
            && err.contains("already ended"),
        "{err}"
    );
    let ls = p.cli_ok(&["inv", "ls", "long", "--async", "--status", "cancelled"]);
    assert_eq!(ls.lines().count(), 3, "a header and two: {ls}");
    let metrics = p.http("GET", "/metrics", None).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"petrel_async_finished_total{namespace="default",function="long",status="cancelled"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
}

async fn wait_seen(seen: &Seen, path: &str, n: usize) -> Vec<(http::HeaderMap, Bytes)> {
    let t0 = Instant::now();
    loop {
        let got: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, h, b)| (h.clone(), b.clone()))
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{path}: {} of {n} requests",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_destinations_and_idempotency_keys() {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("petrel-node.toml");
    // A CA the server trusts through tls_ca_file, and one it does not.
    let (trusted, untrusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [ca, cert, key] = test_ca(trusted.path());
    let [_, bad_cert, bad_key] = test_ca(untrusted.path());
    std::fs::write(
        &path,
        format!(
            "async_retry_base = \"50ms\"\nidempotency_window = \"5s\"\ntls_ca_file = {:?}\n",
            ca.to_str().unwrap()
        ),
    )
    .unwrap();
    let p = Petrel::start_with(StoreKind::Sqlite, &["--config", path.to_str().unwrap()]).await;
    let (url, seen) = receiver().await;
    p.deploy(function("sink", "keep_alive = \"10m\"").path());
    p.deploy(
        function(
            "notify",
            &format!(
                "max_retries = 1\non_success = \"function:sink\"\non_failure = \"{url}/failure\"\nkeep_alive = \"10m\""
            ),
        )
        .path(),
    );
    // X-Callback-Url: the function's answer, retried until the receiver takes it (its first
    // answer is a 500).
    let r = p
        .http_with(
            "POST",
            "/async-fn/notify/orders/7?verbose=1",
            &[
                ("x-callback-url", &format!("{url}/flaky")),
                ("content-type", "text/plain"),
            ],
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/invocations/{id}").as_str())
    );
    let got = wait_seen(&seen, "/flaky", 2).await;
    let (h, body) = &got[1];
    assert_eq!(h["x-petrel-invocation-id"], id.as_str());
    assert_eq!(h["x-petrel-status"], "succeeded");
    assert_eq!(h["x-petrel-function-status"], "201");
    assert_eq!(
        h["x-from"], "async",
        "the function's own headers come along"
    );
    let answer: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        answer,
        json!({"path": "/orders/7", "query": "verbose=1", "body": "hello", "method": "POST"})
    );
    assert_eq!(got[0].1, got[1].1, "the same outcome, delivered again");
    let t0 = Instant::now();
    loop {
        let d = &get(&p, &id).await["deliveries"];
        if d[0]["status"] == "delivered" {
            assert_eq!(d[0]["attempts"], 2, "{d}");
            assert!(d[0].get("error").is_none(), "{d}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // on_success = function:sink: the sink ran with Lambda's destination record.
    let t0 = Instant::now();
    let sunk = loop {
        let l = list(&p, "sink", Some("succeeded")).await;
        if let Some(v) = l.first() {
            break v.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the sink never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let record = &result_json(&sunk)["event"];
    assert_eq!(
        record["requestContext"]["requestId"],
        id.as_str(),
        "{record}"
    );
    assert_eq!(record["requestContext"]["condition"], "Success", "{record}");
    assert_eq!(record["responseContext"]["statusCode"], 201, "{record}");

    // on_failure = a URL: the record after the retries ran out.
    let id = submit(&p, "notify", json!({"action": "fail"})).await;
    let got = wait_seen(&seen, "/failure", 1).await;
    let record: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(
        record["requestContext"]["requestId"],
        id.as_str(),
        "{record}"
    );
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(record["requestPayload"], json!({"action": "fail"}));
    assert_eq!(
        record["responsePayload"]["errorType"], "RuntimeError",
        "{record}"
    );
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(list(&p, "sink", None).await.len(), 1, "no success, no sink");

    // A destination naming a function that does not exist: its invocation ends failed, not
    // queued for ever.
    p.deploy(function("lost", "on_success = \"function:missing\"").path());
    let id = submit(&p, "lost", json!({"n": 9})).await;
    wait_status(&p, &id, "succeeded", Duration::from_secs(30)).await;
    let db = p.data_dir.path().join("data/petrel.db");
    let mut db = {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap()
    };
    let t0 = Instant::now();
    loop {
        use sqlx::Row;
        let row =
            sqlx::query("SELECT status, error FROM async_invocations WHERE function = 'missing'")
                .fetch_one(&mut db)
                .await
                .unwrap();
        let (status, error): (String, Option<String>) = (row.get(0), row.get(1));
        if status == "failed" {
            assert!(error.unwrap().contains("does not exist"));
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An idempotency key: a retried submission gets the first id, and runs once.
    let keyed_at = Instant::now();
    let headers = [
        ("idempotency-key", "order-42"),
        ("content-type", "application/json"),
    ];
    let a = p
        .http_with(
            "POST",
            "/v1/functions/sink/invoke?async=true",
            &headers,
            br#"{"n": 42}"#.to_vec(),
        )
        .await;
    let b = p
        .http_with(
            "POST",
            "/v1/functions/sink/invoke?async=true",
            &headers,
            br#"{"n": 42}"#.to_vec(),
        )
        .await;
    assert_eq!((a.status, b.status), (202, 202));
    assert_eq!(a.json()["id"], b.json()["id"]);
    assert_eq!(b.json()["duplicate"], true);
    assert_eq!(b.header("x-petrel-duplicate"), Some("true"));
    assert!(a.json().get("duplicate").is_none());
    let other = p
        .http_with(
            "POST",
            "/v1/functions/sink/invoke?async=true",
            &[("idempotency-key", "order-43")],
            br#"{"n": 43}"#.to_vec(),
        )
        .await;
    assert_ne!(other.json()["id"], a.json()["id"]);
    let id = a.json()["id"].as_str().unwrap().to_owned();
    // The CLI sends the same header.
    let by_cli = |key: &str| {
        p.cli_ok(&[
            "invoke",
            "sink",
            "--async",
            "--idempotency-key",
            key,
            "-d",
            "{}",
        ])
        .trim()
        .to_owned()
    };
    assert_eq!(by_cli("cli-1"), by_cli("cli-1"));
    assert_ne!(by_cli("cli-1"), by_cli("cli-2"));
    let cb = format!("{url}/cli");
    let sent = p.cli_ok(&[
        "invoke",
        "sink",
        "--async",
        "--callback-url",
        &cb,
        "-d",
        r#"{"n": 3}"#,
    ]);
    let got = wait_seen(&seen, "/cli", 1).await;
    assert_eq!(got[0].0["x-petrel-invocation-id"], sent.trim());
    assert_eq!(serde_json::from_slice::<Value>(&got[0].1).unwrap()["n"], 3);
    wait_status(&p, &id, "succeeded", Duration::from_secs(30)).await;
    let keyed: Vec<Value> = list(&p, "sink", None)
        .await
        .into_iter()
        .filter(|v| v["idempotency_key"] == "order-42")
        .collect();
    assert_eq!(keyed.len(), 1, "{keyed:?}");
    // Past idempotency_window (5s), the same key is a new submission.
    tokio::time::sleep(
        Duration::from_secs(5).saturating_sub(keyed_at.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let later = p
        .http_with(
            "POST",
            "/v1/functions/sink/invoke?async=true",
            &headers,
            br#"{"n": 42}"#.to_vec(),
        )
        .await;
    assert_eq!(later.status, 202);
    assert_ne!(later.json()["id"], a.json()["id"]);
    assert!(later.json().get("duplicate").is_none());

    // https: a receiver whose certificate chains to tls_ca_file gets the outcome; one whose CA
    // nobody trusts never sees a request, and the delivery says why.
    let (secure, secure_seen) = https_receiver(&cert, &key).await;
    let (forged, forged_seen) = https_receiver(&bad_cert, &bad_key).await;
    let mut ids = Vec::new();
    for target in [&secure, &forged] {
        let r = p
            .http_with(
                "POST",
                "/v1/functions/sink/invoke?async=true",
                &[("x-callback-url", &format!("{target}/secure"))],
                br#"{"n": 443}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let got = wait_seen(&secure_seen, "/secure", 1).await;
    assert_eq!(got[0].0["x-petrel-invocation-id"], ids[0].as_str());
    assert_eq!(
        serde_json::from_slice::<Value>(&got[0].1).unwrap()["n"],
        443
    );
    let t0 = Instant::now();
    let delivery = loop {
        let v = get(&p, &ids[1]).await;
        let d = v["deliveries"][0].clone();
        if d["error"].is_string() {
            break d;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        delivery["status"] == "pending"
            && delivery["error"]
                .as_str()
                .unwrap()
                .contains("UnknownIssuer"),
        "{delivery}"
    );
    assert!(forged_seen.lock().unwrap().is_empty());
    let v = get(&p, &ids[0]).await;
    assert_eq!(
        (
            &v["deliveries"][0]["status"],
            &v["deliveries"][0]["attempts"]
        ),
        (&json!("delivered"), &json!(1)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_one_postgres_queue_without_doubles_postgres() {
    let store = StoreKind::fresh_postgres().await;
    let a = Petrel::start_with(store.clone(), &[]).await;
    // One server named in its config file, the other by the id kept in its data directory.
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("petrel-node.toml");
    std::fs::write(&path, "worker_id = \"node-b\"\n").unwrap();
    let b = Petrel::start_with(store.clone(), &["--config", path.to_str().unwrap()]).await;
    let dir = function(
        "shared",
        "max_instances = 2\nasync_concurrency = 2\nkeep_alive = \"10m\"",
    );
    a.deploy(dir.path());
    b.deploy(dir.path());
    let client = http_client();
    let mut ids = HashSet::new();
    for n in 0..300 {
        // Half to each server; each dispatcher claims from the shared queue.
        let p = if n % 2 == 0 { &a } else { &b };
        let event = json!({"action": "sleep", "secs": 0.02, "n": n});
        ids.insert(try_submit(&client, &p.url, "shared", &event).await.unwrap());
    }
    let t0 = Instant::now();
    loop {
        if list(&a, "shared", Some("succeeded")).await.len() == 300 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "not all ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = list(&b, "shared", None).await;
    let workers: HashSet<&str> = all.iter().map(|v| v["worker"].as_str().unwrap()).collect();
    assert_eq!(workers.len(), 2, "both servers ran some");
    assert!(workers.contains("node-b"), "{workers:?}");
    let a_id = std::fs::read_to_string(a.data_dir.path().join("data/worker-id")).unwrap();
    assert!(workers.contains(a_id.trim()), "{workers:?}");
    for p in [&a, &b] {
        assert!(
            p.server_log()
                .contains("listening for the queue's notifications"),
            "{}",
            p.server_log()
        );
    }
    assert!(all.iter().all(|v| v["attempts"] == 1), "none ran twice");
    // The functions' own logs, from both servers: one run per invocation.
    let url = match &store {
        StoreKind::Postgres(u) => u.clone(),
        StoreKind::Sqlite => unreachable!(),
    };
    use sqlx::{Connection, Row};
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let t0 = Instant::now();
    let runs: HashMap<String, i64> = loop {
        let rows = sqlx::query(
            "SELECT line, COUNT(*) FROM logs WHERE function = 'shared' AND line LIKE 'ran %'
             GROUP BY line",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        let runs: HashMap<String, i64> = rows
            .iter()
            .map(|r| {
                let line: String = r.get(0);
                (
                    line.trim_start_matches("ran ").trim().to_owned(),
                    r.get::<i64, _>(1),
                )
            })
            .collect();
        if runs.len() == 300 || t0.elapsed() > Duration::from_secs(30) {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(runs.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(runs.values().all(|&c| c == 1), "a run twice: {runs:?}");
    db.close().await.unwrap();

    // Cancelled through the server that does not run it: the runner stops the attempt at its
    // next heartbeat (every 10 s), long before the minute it would sleep.
    let event = json!({"action": "sleep", "secs": 60});
    let id = try_submit(&client, &a.url, "shared", &event).await.unwrap();
    let runner = wait_status(&a, &id, "running", Duration::from_secs(30)).await["worker"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = if runner == "node-b" { &a } else { &b };
    let r = other
        .http("DELETE", &format!("/v1/invocations/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    a.wait_record(
        "shared",
        &format!("{id}.1"),
        "stopped",
        Duration::from_secs(25),
    )
    .await;
    let v = get(&a, &id).await;
    assert_eq!(
        (v["status"].as_str(), v["attempts"].as_u64()),
        (Some("cancelled"), Some(1)),
        "{v}"
    );
    drop((a, b));
    store.drop_postgres().await;
}
