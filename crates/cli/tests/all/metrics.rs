//! `GET /metrics` agrees exactly with a known mix of invocations.

use crate::fixtures::echo_function;
use crate::harness::Petrel;
use std::collections::HashMap;

/// Samples of the text format: `name{labels}` -> value (comments and `# EOF` skipped).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Two successes, a handler error, a timeout (the function is given 2 s) and a success.
const MIXED_EVENTS: [&str; 5] = [
    "{}",
    "{}",
    r#"{"action": "raise"}"#,
    r#"{"action": "sleep"}"#,
    "{}",
];

#[tokio::test(flavor = "multi_thread")]
async fn metrics_records_and_usage_count_exactly_what_was_sent() {
    let p = Petrel::start().await;
    p.deploy(echo_function("metered", "python3", "timeout = \"2s\"").path());
    let (mut bytes_in, mut bytes_out) = (0, 0);
    for event in MIXED_EVENTS {
        let r = p.invoke("metered", event).await;
        bytes_in += event.len();
        // The function's own answers count; Petrel's timeout answer does not.
        if r.header("x-petrel-error").is_none() {
            bytes_out += r.body.len();
        }
    }
    p.invoke("nope", "{}")
        .await
        .assert_error(404, "function_not_found");
    p.http("GET", "/fn/nope/x", None)
        .await
        .assert_error(404, "function_not_found");
    p.invoke("metered", "{not json")
        .await
        .assert_error(400, "invalid_payload");

    let r = p.http("GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let m = samples(&r.text());
    let labels = |outcome: &str| {
        format!("{{namespace=\"default\",function=\"metered\",runtime=\"python3\",outcome=\"{outcome}\"}}")
    };
    // Invocations also carry the version that ran them.
    let ran = |outcome: &str| {
        format!("{{namespace=\"default\",function=\"metered\",runtime=\"python3\",version=\"1\",outcome=\"{outcome}\"}}")
    };
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no sample {k} in\n{}", r.text()))
    };
    assert_eq!(
        get(&format!("petrel_invocations_total{}", ran("success"))),
        3.0
    );
    assert_eq!(
        get(&format!(
            "petrel_invocations_total{}",
            ran("function_error")
        )),
        1.0
    );
    assert_eq!(
        get(&format!("petrel_invocations_total{}", ran("timeout"))),
        1.0
    );
    // The timeout killed the instance: the next request started another.
    assert_eq!(
        get(&format!("petrel_cold_starts_total{}", labels("success"))),
        2.0
    );
    let fl = "{namespace=\"default\",function=\"metered\",runtime=\"python3\"}";
    assert_eq!(
        get(&format!("petrel_invocation_duration_seconds_count{fl}")),
        5.0
    );
    assert_eq!(
        get(&format!("petrel_cold_start_duration_seconds_count{fl}")),
        2.0
    );
    assert_eq!(get(&format!("petrel_pool_acquire_seconds_count{fl}")), 5.0);
    assert_eq!(
        get("petrel_requests_rejected_total{code=\"function_not_found\"}"),
        2.0
    );
    assert_eq!(
        get("petrel_requests_rejected_total{code=\"invalid_payload\"}"),
        1.0
    );
    assert_eq!(
        get("petrel_pool{namespace=\"default\",function=\"metered\",state=\"ready\"}"),
        1.0
    );
    assert_eq!(
        get("petrel_pool{namespace=\"default\",function=\"metered\",state=\"in_flight\"}"),
        0.0
    );
    assert_eq!(get("petrel_log_lines_dropped_total"), 0.0);
    let dir = |d: &str| {
        format!("petrel_bytes_total{{namespace=\"default\",function=\"metered\",runtime=\"python3\",direction=\"{d}\"}}")
    };
    assert_eq!(get(&dir("in")), bytes_in as f64);
    assert_eq!(get(&dir("out")), bytes_out as f64);
    // Labels stay bounded: no request ids or made-up names.
    assert!(!r.text().contains("nope"), "{}", r.text());
}

#[derive(serde::Deserialize)]
struct List {
    invocations: Vec<petrel_core::api::InvocationRecord>,
}

#[tokio::test(flavor = "multi_thread")]
async fn invocation_records_and_usage_match_what_ran() {
    let p = Petrel::start().await;
    p.deploy(echo_function("metered", "python3", "timeout = \"2s\"\nmemory_mb = 256").path());
    let mut ids = Vec::new();
    for event in MIXED_EVENTS {
        let r = p.invoke("metered", event).await;
        ids.push(r.header("x-petrel-invocation-id").unwrap().to_owned());
    }
    let _ = p.http("GET", "/fn/metered/web", None).await;
    ids.push(String::new());

    // Records are written off the request path: wait until all six are in.
    let mut list = Vec::new();
    for _ in 0..100 {
        list = serde_json::from_slice::<List>(
            &p.http("GET", "/v1/functions/metered/invocations", None)
                .await
                .body,
        )
        .unwrap()
        .invocations;
        if list.len() == 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(list.len(), 6, "{list:?}");
    let count = |o: &str| list.iter().filter(|r| r.outcome.as_str() == o).count();
    assert_eq!(
        (count("success"), count("function_error"), count("timeout")),
        (4, 1, 1)
    );
    assert_eq!(list.iter().filter(|r| r.cold_start).count(), 2, "{list:?}");
    assert_eq!(
        list.iter()
            .filter(|r| r.trigger.to_string() == "http")
            .count(),
        1
    );
    assert!(list
        .iter()
        .all(|r| r.memory_mb == 256 && r.version == 1 && r.billed_ms >= 1));
    assert!(
        list.iter()
            .all(|r| r.duration_ms >= r.billed_ms.saturating_sub(1)),
        "{list:?}"
    );
    let timeout = list
        .iter()
        .find(|r| r.outcome.as_str() == "timeout")
        .unwrap();
    assert!(
        timeout.billed_ms >= 2000 && timeout.billed_ms < 10_000,
        "{timeout:?}"
    );
    // One record by its id, as the invoke answer named it.
    let one: petrel_core::api::InvocationRecord = serde_json::from_slice(
        &p.http("GET", &format!("/v1/invocations/{}", ids[2]), None)
            .await
            .body,
    )
    .unwrap();
    assert_eq!(
        (one.outcome.as_str(), one.error.as_deref()),
        ("function_error", Some("ValueError"))
    );
    p.http("GET", "/v1/invocations/nope", None)
        .await
        .assert_error(404, "invocation_not_found");
    let failed = p
        .http(
            "GET",
            "/v1/functions/metered/invocations?outcome=timeout",
            None,
        )
        .await;
    assert_eq!(
        serde_json::from_slice::<List>(&failed.body)
            .unwrap()
            .invocations
            .len(),
        1
    );

    // Usage: GB-seconds are memory (GB) x billed seconds, summed over exactly these records.
    let usage: petrel_core::api::Usage =
        serde_json::from_slice(&p.http("GET", "/v1/usage", None).await.body).unwrap();
    assert_eq!(usage.functions.len(), 1);
    let u = &usage.functions[0];
    let billed: u64 = list.iter().map(|r| r.billed_ms).sum();
    assert_eq!((u.invocations, u.errors, u.billed_ms), (6, 2, billed));
    let expected = 256.0 / 1024.0 * billed as f64 / 1000.0;
    assert!(
        (u.gb_seconds - expected).abs() < 1e-9,
        "{} != {expected}",
        u.gb_seconds
    );
    assert_eq!(usage.total_invocations, 6);

    // The CLI shows both.
    let out = p.cli_ok(&["inv", "ls", "metered"]);
    assert!(
        out.contains("function_error") && out.contains("timeout") && out.contains(&ids[0]),
        "{out}"
    );
    assert!(p
        .cli_ok(&["inv", "get", &ids[0]])
        .contains("\"outcome\": \"success\""));
    let out = p.cli_ok(&["usage"]);
    assert!(
        out.contains("metered") && out.contains(&format!("{expected:.6}")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn petrel_top_shows_each_function() {
    let p = Petrel::start().await;
    p.deploy(echo_function("watched", "nodejs", "").path());
    p.deploy(echo_function("idle", "python3", "").path());
    for _ in 0..5 {
        assert_eq!(p.invoke("watched", "{}").await.status, 200);
    }
    let out = p.cli_ok(&["top", "--once", "--interval", "0.5"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("watched "))
        .unwrap_or_else(|| panic!("no row for watched:\n{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // FUNCTION NAMESPACE REQ/S ERR/S P50 P99 INST BUSY QUEUED COLD TOTAL
    assert_eq!(cols[1], "default");
    assert_eq!(cols[6], "1", "one warm instance: {row}");
    assert_eq!(cols[10], "5", "five invocations in all: {row}");
    // A deployed function that never ran is listed, idle.
    let idle: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("idle "))
        .unwrap_or_else(|| panic!("no row for idle:\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!((idle[6], idle[10]), ("0", "0"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_streamed_to_and_from_an_http_function_are_counted() {
    let p = Petrel::start().await;
    p.deploy(echo_function("streamer", "http", "").path());
    let sent = vec![b'x'; 100_000];
    let r = p
        .http(
            "POST",
            "/fn/streamer/up",
            Some(("application/octet-stream", sent.clone())),
        )
        .await;
    assert_eq!(r.status, 200);
    let streamed = p.http("GET", "/fn/streamer/stream", None).await;
    let out = (r.body.len() + streamed.body.len()) as f64;
    let dir = |d: &str| {
        format!("petrel_bytes_total{{namespace=\"default\",function=\"streamer\",runtime=\"http\",direction=\"{d}\"}}")
    };
    let mut m = HashMap::new();
    // The counts land when each response body has been sent; give the last one a moment.
    for _ in 0..50 {
        m = samples(&p.http("GET", "/metrics", None).await.text());
        if m.get(&dir("out")) == Some(&out) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(m.get(&dir("in")), Some(&(sent.len() as f64)));
    assert_eq!(m.get(&dir("out")), Some(&out));
}
