//! Traces: a caller's W3C trace continues through Petrel into the function, and the spans reach a
//! real OTLP/HTTP receiver (this test's, decoding the protobufs) with the right parents.

use crate::fixtures::echo_function;
use crate::harness::{Petrel, StoreKind};
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP/HTTP receiver on loopback; returns its URL and the spans it has received.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf");
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        sink.lock().unwrap().extend(ss.spans);
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

async fn wait_for(spans: &Arc<Mutex<Vec<Span>>>, trace: &[u8], n: usize) -> Vec<Span> {
    for _ in 0..100 {
        let got: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no {name} span in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

fn attr(s: &Span, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_trace_continues_into_the_function_and_the_spans_reach_otlp() {
    let (url, spans) = receiver().await;
    let p = Petrel::start_with(StoreKind::Sqlite, &["--otlp-endpoint", &url]).await;
    p.deploy(echo_function("traced-http", "http", "").path());
    p.deploy(echo_function("traced-py", "python3", "").path());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{caller_span}-01");
    let trace_bytes = hex::decode(trace).unwrap();

    // An http function sees a traceparent of the same trace, naming Petrel's call span.
    let req = http::Request::get(format!("{}/fn/traced-http/x", p.url))
        .header("authorization", crate::harness::owner_bearer())
        .header("traceparent", &traceparent)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let seen = send_json(&client, req).await;
    let forwarded = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert!(
        forwarded.starts_with(&format!("00-{trace}-")),
        "{forwarded}"
    );
    assert!(
        !forwarded.contains(caller_span),
        "the function's parent is Petrel's span: {forwarded}"
    );

    let got = wait_for(&spans, &trace_bytes, 4).await;
    let invoke = named(&got, "invoke");
    assert_eq!(
        hex::encode(&invoke.parent_span_id),
        caller_span,
        "the invocation hangs under the caller"
    );
    assert_eq!(attr(invoke, "faas.name"), "traced-http");
    assert_eq!(attr(invoke, "faas.coldstart"), "true");
    assert_eq!(attr(invoke, "faas.trigger"), "http");
    let call = named(&got, "function.call");
    assert_eq!(
        call.parent_span_id, invoke.span_id,
        "the function's call is under the invocation"
    );
    assert_eq!(
        forwarded,
        format!("00-{trace}-{}-01", hex::encode(&call.span_id))
    );
    for name in ["pool.acquire", "instance.cold_start"] {
        assert_eq!(named(&got, name).parent_span_id, invoke.span_id, "{name}");
    }
    assert!(call.end_time_unix_nano >= call.start_time_unix_nano);
    assert!(invoke.end_time_unix_nano >= call.end_time_unix_nano);

    // A Lambda handler gets the same trace as Lambda-Runtime-Trace-Id (and _X_AMZN_TRACE_ID).
    let trace2 = "0af7651916cd43dd8448eb211c80319c";
    let req = http::Request::post(format!("{}/v1/functions/traced-py/invoke", p.url))
        .header("authorization", crate::harness::owner_bearer())
        .header("traceparent", format!("00-{trace2}-b7ad6b7169203331-01"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let seen = send_json(&client, req).await;
    let xray = seen["trace"].as_str().unwrap();
    assert!(
        xray.starts_with(&format!("Root=1-{}-{};Parent=", &trace2[..8], &trace2[8..])),
        "{xray}"
    );
    let got = wait_for(&spans, &hex::decode(trace2).unwrap(), 3).await;
    assert_eq!(attr(named(&got, "invoke"), "faas.trigger"), "other");
    assert!(
        xray.contains(&hex::encode(&named(&got, "function.call").span_id)),
        "{xray}"
    );

    // Without a traceparent, each invocation starts a trace of its own.
    let before = spans.lock().unwrap().len();
    assert_eq!(p.invoke("traced-py", "{}").await.status, 200);
    for _ in 0..100 {
        if spans.lock().unwrap().len() >= before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = spans.lock().unwrap().clone();
    let fresh: Vec<&Span> = all[before..]
        .iter()
        .filter(|s| s.name == "invoke")
        .collect();
    assert_eq!(fresh.len(), 1);
    assert!(
        fresh[0].parent_span_id.is_empty(),
        "a root span has no parent"
    );
}

/// Sends a request and reads its answer as JSON.
async fn send_json<C>(
    client: &hyper_util::client::legacy::Client<C, http_body_util::Full<bytes::Bytes>>,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> serde_json::Value
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let r = client.request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}
