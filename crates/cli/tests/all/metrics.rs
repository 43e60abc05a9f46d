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

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_was_sent() {
    let p = Petrel::start().await;
    p.deploy(echo_function("metered", "python3", "timeout = \"2s\"").path());
    for event in [
        "{}",
        "{}",
        r#"{"action": "raise"}"#,
        r#"{"action": "sleep"}"#,
        "{}",
    ] {
        p.invoke("metered", event).await;
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
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no sample {k} in\n{}", r.text()))
    };
    assert_eq!(
        get(&format!("petrel_invocations_total{}", labels("success"))),
        3.0
    );
    assert_eq!(
        get(&format!(
            "petrel_invocations_total{}",
            labels("function_error")
        )),
        1.0
    );
    assert_eq!(
        get(&format!("petrel_invocations_total{}", labels("timeout"))),
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
    // Labels stay bounded: no request ids or made-up names.
    assert!(!r.text().contains("nope"), "{}", r.text());
}
