//! Tracing of invocations: W3C `traceparent` accepted from callers and passed on to functions,
//! and spans (the invocation, the wait for a slot, a cold start, the function's call) exported
//! as OTLP protobufs over HTTP (`POST {endpoint}/v1/traces`) when an endpoint is configured.
//! Spans are handed to the exporter through a bounded channel: a slow collector drops spans
//! (counted), it never slows a request.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Where a span belongs: its trace and its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        let r = uuid::Uuid::new_v4().into_bytes();
        let n = (N - filled).min(16);
        out[filled..filled + n].copy_from_slice(&r[..n]);
        filled += n;
    }
    out
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = random_bytes::<8>();
        if id != [0; 8] {
            return id;
        }
    }
}

impl TraceContext {
    /// A new trace (no caller context).
    pub fn new_root() -> Self {
        Self {
            trace_id: random_bytes::<16>(),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// Parses `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; `None` when invalid
    /// (all-zero ids included), as the W3C spec says to ignore such a header.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The caller's context, from a `traceparent` header (none when absent or invalid).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
    }

    /// The `traceparent` header naming this context as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The same context in AWS X-Ray's form, for `Lambda-Runtime-Trace-Id`.
    pub fn xray(&self) -> String {
        let t = hex::encode(self.trace_id);
        format!(
            "Root=1-{}-{};Parent={};Sampled={}",
            &t[..8],
            &t[8..],
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }

    /// A child of this context, with a new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }
}

/// A finished span, ready to export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub context: TraceContext,
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub kind: span::SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub error: Option<String>,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl SpanRecord {
    fn into_proto(self) -> Span {
        Span {
            trace_id: self.context.trace_id.to_vec(),
            span_id: self.context.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name.to_owned(),
            kind: self.kind as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(self.end),
            attributes: self
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue {
                    key: k.to_owned(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(v)),
                    }),
                    ..Default::default()
                })
                .collect(),
            status: Some(match self.error {
                Some(message) => Status {
                    message,
                    code: status::StatusCode::Error as i32,
                },
                None => Status {
                    message: String::new(),
                    code: status::StatusCode::Ok as i32,
                },
            }),
            ..Default::default()
        }
    }
}

/// The exporter's inbox.
#[derive(Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
    dropped: AtomicU64,
}

impl SpanSink {
    pub fn emit(&self, s: SpanRecord) {
        if self.tx.try_send(s).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Starts the exporter: batches spans (up to 512, or what came in 200 ms) and posts them.
pub fn spawn_exporter(endpoint: &str) -> SpanSink {
    let (tx, mut rx) = mpsc::channel::<SpanRecord>(8192);
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while batch.len() < 512 {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    _ => break,
                }
            }
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue("petrel".into())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "petrel".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans: batch.drain(..).map(SpanRecord::into_proto).collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let body = Bytes::from(request.encode_to_vec());
            let req = http::Request::post(&url)
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body));
            match req {
                Ok(req) => {
                    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                        Ok(Ok(resp)) if resp.status().is_success() => {}
                        Ok(Ok(resp)) => {
                            tracing::warn!(status = %resp.status(), "the OTLP endpoint refused spans")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not send spans to the OTLP endpoint")
                        }
                        Err(_) => tracing::warn!("the OTLP endpoint did not answer within 10s"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "bad OTLP endpoint URL"),
            }
        }
    });
    SpanSink {
        tx,
        dropped: AtomicU64::new(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_bad_headers() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(h).unwrap();
        assert_eq!(c.traceparent(), h);
        assert_eq!(
            c.xray(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        assert_ne!(
            TraceContext::new_root().trace_id,
            TraceContext::new_root().trace_id
        );
    }
}
