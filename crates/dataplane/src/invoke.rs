//! The invocation core: [`DataPlane::invoke`], the one entry point every way in calls (`/fn`,
//! the raw invoke, Lambda's `Invoke`, async attempts, and the event triggers), each only
//! translating its own wire format to an [`Invocation`] and the [`Answer`] (or [`Failure`])
//! back.
//!
//! It owns, in order: resolving the function to a version and its pool; adapting the payload to
//! the function's protocol (an HTTP request becomes an API Gateway v2 event for a Lambda
//! handler, an event is POSTed to an HTTP function's `/`); admission (a slot of an instance, or
//! a cold start, or the pool's wait queue); the instance call under its timeout; and the
//! bookkeeping written off the request path: the invocation's record, its `REPORT` log line,
//! metrics and spans.

use crate::body::{collect_limited, BodyError, BodyWatch, LimitedBody};
use crate::metrics::Metrics;
use crate::pool::{AcquireError, Lease, Pool};
use crate::trace::{SpanRecord, TraceContext};
use crate::{apigw, DataPlane, DeployedVersion};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use petrel_core::api::{InvocationOutcome, InvocationRecord, TriggerLabel, INVOCATION_ID_HEADER};
use petrel_core::error::FUNCTION_ERROR_HEADER;
use petrel_core::{now_ms, ApiError, ErrorCode, FunctionRef};
use petrel_runtime::{Body, InvokeError, LambdaOutcome, LambdaRequest, Protocol, StreamHead};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// One call of a function, as every way in describes it.
#[derive(Debug)]
pub struct Invocation {
    /// The invocation's id (a UUID v7), in records, logs and the caller's answer.
    pub id: String,
    pub trigger: TriggerLabel,
    pub payload: Payload,
    /// The caller's trace context, continued by the invocation's span.
    pub parent: Option<TraceContext>,
    /// Where the request came from: a Lambda handler's `sourceIp`, an HTTP function's
    /// `X-Forwarded-For`.
    pub source_ip: Option<IpAddr>,
    /// An async attempt: its own record, and the function's `async_timeout` as its limit.
    pub attempt: Option<AttemptOf>,
    /// Refuse functions that take HTTP rather than events (Lambda's `Invoke` runs handlers).
    pub events_only: bool,
    /// What the caller asked of the router: a pinned version, a sticky key.
    pub route: crate::router::RouteHints,
}

/// An async invocation's attempt: its record's id (`{id}.{attempt}`). It may run for the
/// version's `async_timeout`, not its `timeout`.
#[derive(Debug, Clone)]
pub struct AttemptOf {
    pub record_id: String,
}

/// What the caller sent.
#[derive(Debug)]
pub enum Payload {
    /// An event: JSON for a Lambda handler, given as is; an HTTP function gets it POSTed to its
    /// `/`. The headers are the request's that carried it (a content type for an HTTP function,
    /// Lambda's client context and Cognito identity for a handler).
    Event { body: Bytes, headers: HeaderMap },
    /// An HTTP request as sent, its path already the function's own (`/a/b?x=1`): an HTTP
    /// function gets it as is, streamed; a Lambda handler gets it as an API Gateway v2 event.
    Http(http::Request<Body>),
}

/// A new invocation id: a UUID v7, so that ids sort by time.
pub fn new_invocation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Invocation {
    /// An invocation with a new id, no caller context, and the function's own time limit.
    pub fn new(trigger: impl Into<TriggerLabel>, payload: Payload) -> Self {
        Self {
            id: new_invocation_id(),
            trigger: trigger.into(),
            payload,
            parent: None,
            source_ip: None,
            attempt: None,
            events_only: false,
            route: Default::default(),
        }
    }
}

/// A function's answer, and the version that gave it.
#[derive(Debug)]
pub struct Answer {
    pub version: u32,
    pub outcome: Outcome,
}

/// What a function answered.
#[derive(Debug)]
pub enum Outcome {
    /// A Lambda handler's return value.
    Returned(Bytes),
    /// The error a Lambda handler raised, as its runtime reported it: its type and document.
    FunctionError { error_type: String, body: Bytes },
    /// A Lambda handler's response in streaming mode: the HTTP head its prelude gave, if any,
    /// and the body as it comes (an error that ends the function ends the body with an error).
    /// The instance stays taken until the body has been read or dropped.
    Streamed {
        head: Option<StreamHead>,
        body: Body,
    },
    /// An HTTP answer: an HTTP function's, or a Lambda handler's result for an HTTP request in
    /// the API Gateway shape. The body streams; the instance stays taken until it ends.
    Http(http::Response<Body>),
}

/// Why there is no answer: Petrel refused the invocation, or the function failed to give one.
/// The error's code says which ([`ErrorCode::class`]).
#[derive(Debug)]
pub struct Failure {
    pub error: ApiError,
    /// The version it would have run, or ran, when it got that far.
    pub version: Option<u32>,
}

impl Failure {
    fn refused(error: ApiError) -> Self {
        Self {
            error,
            version: None,
        }
    }
}

impl Outcome {
    /// The answer as Petrel's HTTP front ends give it: a handler's value as a `200` of JSON,
    /// its error as a `500` with `X-Petrel-Function-Error`, a stream with the head it set
    /// (else a `200` of bytes), an HTTP answer as it is.
    pub fn into_response(self) -> http::Response<Body> {
        match self {
            Outcome::Returned(b) => {
                let mut resp = http::Response::new(Body::from(b));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            Outcome::FunctionError { error_type, body } => {
                let mut resp = http::Response::new(Body::from(body));
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                h.insert(
                    FUNCTION_ERROR_HEADER,
                    HeaderValue::from_str(&error_type)
                        .unwrap_or(HeaderValue::from_static("Unhandled")),
                );
                resp
            }
            Outcome::Streamed { head, body } => streamed_response(head, body),
            Outcome::Http(resp) => resp,
        }
    }
}

/// A streamed Lambda response as HTTP: the head its prelude gave (status, headers, cookies),
/// else a 200 of bytes.
fn streamed_response(head: Option<StreamHead>, body: Body) -> http::Response<Body> {
    let mut resp = http::Response::new(body);
    match head {
        Some(h) => {
            *resp.status_mut() = StatusCode::from_u16(h.status).unwrap_or(StatusCode::OK);
            let hm = resp.headers_mut();
            for (k, v) in h.headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    hm.append(k, v);
                }
            }
            for c in h.cookies {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    hm.append(header::SET_COOKIE, v);
                }
            }
        }
        None => {
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
    }
    resp
}

/// The payload in the function's protocol, made before a slot is taken (a slow upload to a
/// Lambda handler holds no instance).
enum Prepared {
    /// For a Lambda handler; `from_http`: the result is mapped back to an HTTP answer.
    Event {
        event: Bytes,
        context: LambdaContext,
        from_http: bool,
    },
    Http(http::Request<Body>),
}

/// What a Lambda handler's `context` gets from the caller, beside the event.
#[derive(Debug, Default)]
struct LambdaContext {
    client_context: Option<String>,
    cognito_identity: Option<String>,
}

impl LambdaContext {
    /// Lambda's `X-Amz-Client-Context` and Petrel's `X-Amz-Cognito-Identity`.
    fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self {
            client_context: headers
                .get("x-amz-client-context")
                .and_then(|v| v.to_str().ok())
                .map(client_context),
            cognito_identity: cognito_identity(headers)?,
        })
    }
}

impl DataPlane {
    /// Runs one invocation of `target`: resolve, adapt, admit, call, record. The answer's body
    /// may still be streaming; the instance stays taken until it ends.
    pub async fn invoke(&self, target: &FunctionRef, inv: Invocation) -> Result<Answer, Failure> {
        let target = self
            .route(target, &inv.route)
            .await
            .map_err(Failure::refused)?;
        let pool = self.resolve(&target).await.map_err(Failure::refused)?;
        let version = pool.version().clone();
        let _admitted = self
            .inner
            .admission
            .admit(
                &version.namespace,
                &version.name,
                version.spec.rate_limit,
                inv.trigger.kind,
            )
            .await
            .map_err(Failure::refused)?;
        let call = Call::new(self, &inv, &version);
        let prepared = prepare(self, &version, inv)
            .await
            .map_err(Failure::refused)?;
        let result = match prepared {
            Prepared::Event {
                event,
                context,
                from_http,
            } => call.event(&pool, event, context, from_http).await,
            Prepared::Http(req) => call.http(&pool, req).await,
        };
        result
            .map(|outcome| Answer {
                version: version.version,
                outcome,
            })
            .map_err(|error| Failure {
                error,
                version: Some(version.version),
            })
    }
}

/// The payload in the protocol of `v`'s runtime (refused when it cannot be: not JSON for a
/// handler, too large, an HTTP function asked for by a caller of handlers only).
async fn prepare(
    dp: &DataPlane,
    v: &DeployedVersion,
    inv: Invocation,
) -> Result<Prepared, ApiError> {
    let limit = dp.payload_limit();
    let speaks_lambda = v.spec.runtime.speaks_lambda();
    if !speaks_lambda && inv.events_only {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "function {} is of runtime {}, which takes HTTP requests: call it at /fn/{}",
                v.name, v.spec.runtime, v.name
            ),
        ));
    }
    match (inv.payload, speaks_lambda) {
        (Payload::Event { body, headers }, true) => Ok(Prepared::Event {
            event: json_event(body)?,
            context: LambdaContext::from_headers(&headers)?,
            from_http: false,
        }),
        (Payload::Event { body, headers }, false) => {
            // An HTTP function gets the event as a POST to its root.
            let mut req = http::Request::new(Body::from(body));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = http::Uri::from_static("/");
            *req.headers_mut() = headers;
            req.headers_mut().remove(header::CONTENT_LENGTH);
            if !req.headers().contains_key(header::CONTENT_TYPE) {
                req.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Ok(Prepared::Http(req))
        }
        (Payload::Http(req), true) => {
            let (parts, body) = read_body(req, limit).await?;
            let context = LambdaContext::from_headers(&parts.headers)?;
            let event = apigw::event(&parts, &body, &inv.id, inv.source_ip, now_ms());
            Ok(Prepared::Event {
                event: Bytes::from(serde_json::to_vec(&event).expect("an event serialises")),
                context,
                from_http: true,
            })
        }
        (Payload::Http(mut req), false) => {
            if let Some(ip) = inv.source_ip {
                req.extensions_mut().insert(SourceIp(ip));
            }
            Ok(Prepared::Http(req))
        }
    }
}

/// The caller's address, carried to the proxy's `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
struct SourceIp(IpAddr);

/// An event for a Lambda handler: the body, which must be JSON; an empty one is `{}`.
pub fn json_event(body: Bytes) -> Result<Bytes, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(ApiError::new(
            ErrorCode::InvalidPayload,
            format!("the payload must be JSON ({e}); send a JSON document as the request body"),
        ));
    }
    Ok(body)
}

/// The answer when a request body is over the payload limit.
pub fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the request body is larger than the limit of {limit} bytes; send less, or pass a reference to data stored elsewhere"
        ),
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(
    req: http::Request<Body>,
    limit: usize,
) -> Result<(http::request::Parts, Bytes), ApiError> {
    let declared = declared_length(req.headers());
    let (parts, body) = req.into_parts();
    match collect_limited(body, limit, declared).await {
        Ok(b) => Ok((parts, b)),
        Err(BodyError::TooLarge) => Err(payload_too_large(limit)),
        Err(BodyError::Read(e)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body could not be read: {e}"),
        )),
    }
}

/// One invocation's bookkeeping, from asking for a slot to the answer.
struct Call<'a> {
    dp: &'a DataPlane,
    id: String,
    trigger: TriggerLabel,
    asked: Instant,
    asked_ms: i64,
    asked_at: SystemTime,
    /// The invocation's span; its parent is the caller's span when it sent a `traceparent`.
    trace: TraceContext,
    parent: Option<[u8; 8]>,
    method: Option<String>,
    attempt: Option<AttemptOf>,
    /// How long the function may run.
    timeout: Duration,
}

/// When the function started, and its call's span.
type Timing = (Instant, SystemTime, TraceContext);

/// A span's attributes and its error, if it failed.
type SpanDetails = (Vec<(&'static str, String)>, Option<String>);

impl<'a> Call<'a> {
    fn new(dp: &'a DataPlane, inv: &Invocation, v: &DeployedVersion) -> Self {
        let timeout = match &inv.attempt {
            Some(_) => v.spec.asynchronous.timeout(),
            None => v.spec.timeout(),
        };
        Self {
            dp,
            id: inv.id.clone(),
            trigger: inv.trigger.clone(),
            asked: Instant::now(),
            asked_ms: now_ms(),
            asked_at: SystemTime::now(),
            trace: inv
                .parent
                .map(|c| c.child())
                .unwrap_or_else(TraceContext::new_root),
            parent: inv.parent.map(|c| c.span_id),
            method: match &inv.payload {
                Payload::Http(req) => Some(req.method().to_string()),
                Payload::Event { .. } => None,
            },
            attempt: inv.attempt.clone(),
            timeout,
        }
    }

    /// Sends a span of this invocation to the exporter, if one is configured; `details` (its
    /// attributes and error) are only built then.
    fn span(
        &self,
        name: &'static str,
        context: TraceContext,
        start: SystemTime,
        details: impl FnOnce() -> SpanDetails,
    ) {
        if let Some(sink) = self.dp.spans() {
            let (attributes, error) = details();
            let (parent, kind) = if name == "invoke" {
                (self.parent, SpanKind::Server)
            } else {
                (Some(self.trace.span_id), SpanKind::Internal)
            };
            sink.emit(SpanRecord {
                context,
                parent,
                name,
                kind,
                start,
                end: SystemTime::now(),
                attributes,
                error,
            });
        }
    }

    /// The invocation's own span, with OpenTelemetry's FaaS attributes.
    fn finish(
        &self,
        v: &DeployedVersion,
        cold: bool,
        outcome: InvocationOutcome,
        error: impl FnOnce() -> Option<String>,
    ) {
        self.span("invoke", self.trace, self.asked_at, || {
            let mut attributes = vec![
                ("faas.name", v.name.clone()),
                ("faas.version", v.version.to_string()),
                ("faas.invocation_id", self.id.clone()),
                ("faas.trigger", self.trigger.kind.otel().to_owned()),
                ("faas.coldstart", cold.to_string()),
                ("petrel.namespace", v.namespace.clone()),
                ("petrel.outcome", outcome.as_str().to_owned()),
            ];
            if let Some(m) = &self.method {
                attributes.push(("http.request.method", m.clone()));
            }
            (attributes, error())
        });
    }

    /// The invocation's record, written off the request path.
    fn record(
        &self,
        v: &DeployedVersion,
        ran: Option<Duration>,
        cold: bool,
        outcome: InvocationOutcome,
        error: Option<String>,
        instance: Option<&str>,
    ) {
        let billed_ms = ran
            .map(|d| (d.as_micros().div_ceil(1000) as u64).max(1))
            .unwrap_or(0);
        let id = match &self.attempt {
            Some(a) => a.record_id.clone(),
            None => self.id.clone(),
        };
        self.dp.record(InvocationRecord {
            id,
            namespace: v.namespace.clone(),
            function: v.name.clone(),
            version: v.version,
            trigger: self.trigger.clone(),
            started_at: self.asked_ms,
            duration_ms: self.asked.elapsed().as_millis() as u64,
            billed_ms,
            memory_mb: v.spec.memory_mb,
            cold_start: cold,
            outcome,
            error: error.map(|e| e.chars().take(1000).collect()),
            instance: instance.map(str::to_owned),
        });
    }

    /// Takes a slot in the pool: when the function started, and the lease.
    async fn take_lease(&self, pool: &Arc<Pool>) -> Result<(Timing, Lease), ApiError> {
        let v = pool.version();
        let metrics = self.dp.metrics();
        let t0 = Instant::now();
        let t0_wall = SystemTime::now();
        let result = pool.acquire().await;
        metrics.acquired(&v.namespace, &v.spec, t0.elapsed());
        let cold = result.as_ref().map(Lease::cold).unwrap_or(true);
        self.span("pool.acquire", self.trace.child(), t0_wall, || {
            (vec![], None)
        });
        if cold {
            self.span("instance.cold_start", self.trace.child(), t0_wall, || {
                let error = result
                    .as_ref()
                    .err()
                    .map(|_| "the instance failed to start".to_owned());
                (vec![], error)
            });
        }
        match result {
            Ok(lease) => Ok((
                (Instant::now(), SystemTime::now(), self.trace.child()),
                lease,
            )),
            Err(AcquireError::Refused(e)) => Err(e),
            Err(AcquireError::Start(e)) => {
                let outcome = InvocationOutcome::InitFailed;
                metrics.invocation((&v.namespace, v.version), &v.spec, outcome, None);
                self.record(v, None, true, outcome, Some(e.to_string()), None);
                self.finish(v, true, outcome, || Some(e.to_string()));
                Err(invoke_error(&v.name, v.version, &e))
            }
        }
    }

    /// Writes the platform's one-line report of an invocation to the function's log, counts
    /// it, and records it.
    fn report(
        &self,
        lease: &Lease,
        (started, started_at, call_span): Timing,
        outcome: InvocationOutcome,
        error: Option<String>,
    ) {
        let i = lease.instance();
        let v = lease.version();
        let ran = started.elapsed();
        let metrics = self.dp.metrics();
        metrics.invocation((&v.namespace, v.version), &v.spec, outcome, Some(ran));
        if lease.cold() {
            let (ns, fs) = (&v.namespace, &v.spec);
            metrics.cold_start_phase(ns, fs, "wait_for_slot", lease.slot_wait());
            metrics.cold_start_phase(ns, fs, "first_response", ran);
        }
        let id = &self.id;
        i.log_platform(
            Some(id),
            &format!(
                "REPORT {id} duration={}ms outcome={outcome}",
                ran.as_millis()
            ),
        );
        let failed = || {
            (outcome != InvocationOutcome::Success)
                .then(|| error.clone().unwrap_or_else(|| outcome.as_str().to_owned()))
        };
        self.span("function.call", call_span, started_at, || {
            (vec![("petrel.instance", i.id().to_owned())], failed())
        });
        self.finish(v, lease.cold(), outcome, failed);
        self.record(v, Some(ran), lease.cold(), outcome, error, Some(i.id()));
    }

    /// Reports a failed invocation, and takes an instance that must not serve again out of its
    /// pool.
    fn report_failure(&self, lease: &mut Lease, timing: Timing, e: &InvokeError) {
        self.report(lease, timing, failure_outcome(e), Some(e.to_string()));
        if e.retires_instance() {
            lease.discard_instance();
        }
    }

    /// Runs an event through a Lambda handler's pool.
    async fn event(
        &self,
        pool: &Arc<Pool>,
        event: Bytes,
        context: LambdaContext,
        from_http: bool,
    ) -> Result<Outcome, ApiError> {
        let v = pool.version();
        let metrics = self.dp.metrics();
        metrics.bytes(&v.namespace, &v.spec, "in", event.len() as u64);
        // An instance that ends before it takes the request (its runtime exited after the
        // last answer, as aws-lambda-go does after a panic) never saw it: another one runs it.
        let mut attempts = 0;
        let (timing, mut lease, result) = loop {
            attempts += 1;
            let (timing, mut lease) = self.take_lease(pool).await?;
            let Protocol::Lambda(instance) = lease.instance().protocol() else {
                return Err(mismatch(v));
            };
            let result = instance
                .invoke(LambdaRequest {
                    id: self.id.clone(),
                    event: event.clone(),
                    timeout: self.timeout,
                    client_context: context.client_context.clone(),
                    cognito_identity: context.cognito_identity.clone(),
                    trace_id: Some(timing.2.xray()),
                })
                .await;
            match result {
                Err(InvokeError::NotDelivered(why)) if attempts < 3 => {
                    tracing::debug!(function = %v.name, %why, "an instance ended before taking a request; running it on another");
                    lease.discard_instance();
                }
                result => break (timing, lease, result),
            }
        };
        if let Ok(LambdaOutcome::Success(b) | LambdaOutcome::FunctionError { body: b, .. }) =
            &result
        {
            metrics.bytes(&v.namespace, &v.spec, "out", b.len() as u64);
        }
        match &result {
            Ok(LambdaOutcome::Success(_) | LambdaOutcome::Streamed { .. }) => {
                self.report(&lease, timing, InvocationOutcome::Success, None)
            }
            Ok(LambdaOutcome::FunctionError { error_type, .. }) => self.report(
                &lease,
                timing,
                InvocationOutcome::FunctionError,
                Some(error_type.clone()),
            ),
            Err(e) => self.report_failure(&mut lease, timing, e),
        }
        match result {
            Ok(LambdaOutcome::Success(b)) if from_http => {
                apigw::response(&b).map(Outcome::Http).map_err(|e| {
                    ApiError::new(
                        ErrorCode::BadFunctionResponse,
                        format!("function {} returned an invalid HTTP response: {e}", v.name),
                    )
                })
            }
            Ok(LambdaOutcome::Success(b)) => Ok(Outcome::Returned(b)),
            Ok(LambdaOutcome::FunctionError { error_type, body }) => {
                Ok(Outcome::FunctionError { error_type, body })
            }
            // The instance stays taken until the stream ends; a stream that ends in an error
            // (the function failed, ran out of time or past the limit) stops it.
            Ok(LambdaOutcome::Streamed { head, body }) => Ok(Outcome::Streamed {
                head,
                body: Body::new(LeasedBody::new(
                    body,
                    lease,
                    metrics.clone(),
                    BodyWatch::default(),
                    true,
                )),
            }),
            Err(e) => Err(invoke_error(&v.name, v.version, &e)),
        }
    }

    /// Proxies a request to an HTTP-speaking instance, streaming both ways. The lease is held
    /// until the response body has been sent.
    async fn http(&self, pool: &Arc<Pool>, req: http::Request<Body>) -> Result<Outcome, ApiError> {
        let v = pool.version();
        let limit = self.dp.payload_limit();
        if declared_length(req.headers()).is_some_and(|n| n > limit as u64) {
            crate::body::drain(req.into_body()).await;
            return Err(payload_too_large(limit));
        }
        let (timing, mut lease) = self.take_lease(pool).await?;
        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        if let Ok(v) = HeaderValue::from_str(&timing.2.traceparent()) {
            h.insert("traceparent", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            h.insert(INVOCATION_ID_HEADER, v);
        }
        if let Some(host) = h.get(header::HOST).cloned() {
            h.insert("x-forwarded-host", host);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        if let Some(SourceIp(ip)) = parts.extensions.get::<SourceIp>() {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                h.insert("x-forwarded-for", v);
            }
        }
        let (body, watch) = LimitedBody::new(body, limit);
        let req = http::Request::from_parts(parts, Body::new(body));
        let Protocol::Http(instance) = lease.instance().protocol() else {
            return Err(mismatch(v));
        };
        let result = instance.handle(&self.id, req, self.timeout).await;
        if result.is_err() && watch.exceeded.load(std::sync::atomic::Ordering::Relaxed) {
            // The upload outgrew the limit while it streamed; the function is not at fault (the
            // answer is counted as rejected, not as the function's invocation).
            return Err(payload_too_large(limit));
        }
        match &result {
            Ok(_) => self.report(&lease, timing, InvocationOutcome::Success, None),
            Err(e) => self.report_failure(&mut lease, timing, e),
        }
        match result {
            Ok(resp) => {
                let metrics = self.dp.metrics().clone();
                Ok(Outcome::Http(resp.map(|body| {
                    Body::new(LeasedBody::new(body, lease, metrics, watch, false))
                })))
            }
            Err(e) => Err(invoke_error(&v.name, v.version, &e)),
        }
    }
}

/// An instance whose protocol is not its version's: a bug, never the caller's fault.
fn mismatch(v: &DeployedVersion) -> ApiError {
    tracing::error!(function = %v.name, version = v.version, runtime = %v.spec.runtime, "an instance does not speak its runtime's protocol");
    ApiError::internal()
}

/// The outcome of an invocation that failed this way.
fn failure_outcome(e: &InvokeError) -> InvocationOutcome {
    match e {
        InvokeError::Timeout(_) => InvocationOutcome::Timeout,
        InvokeError::Crashed(_) | InvokeError::NotDelivered(_) => InvocationOutcome::Crashed,
        InvokeError::Stopped(_) => InvocationOutcome::Stopped,
        InvokeError::OutOfMemory(_) => InvocationOutcome::OutOfMemory,
        InvokeError::InitFailed { .. } => InvocationOutcome::InitFailed,
        InvokeError::ResponseTooLarge(_) | InvokeError::BadResponse(_) => InvocationOutcome::Error,
    }
}

/// What a failed invocation tells the caller.
pub fn invoke_error(function: &str, version: u32, e: &InvokeError) -> ApiError {
    match e {
        InvokeError::Timeout(d) => ApiError::new(
            ErrorCode::FunctionTimeout,
            format!(
                "function {function} did not answer within its timeout of {}; the instance was stopped. Raise `timeout` in petrel.toml or make the handler faster",
                humantime::format_duration(*d)
            ),
        ),
        InvokeError::Crashed(detail) => ApiError::new(
            ErrorCode::FunctionCrashed,
            format!("function {function} (version {version}) crashed while handling the request: {detail}"),
        ),
        InvokeError::NotDelivered(detail) => ApiError::new(
            ErrorCode::FunctionCrashed,
            format!("function {function} (version {version}): its instances kept ending before they took the request: {detail}"),
        ),
        InvokeError::InitFailed { message, .. } => ApiError::new(
            ErrorCode::FunctionInitFailed,
            format!(
                "function {function} (version {version}) failed to start: {message}. Fix the code and deploy again; `petrel logs {function}` shows its output"
            ),
        ),
        InvokeError::OutOfMemory(detail) => ApiError::new(
            ErrorCode::FunctionOutOfMemory,
            format!("function {function} (version {version}) ran out of memory: {detail}. Raise memory_mb in petrel.toml or use less"),
        ),
        InvokeError::ResponseTooLarge(limit) => ApiError::new(
            ErrorCode::ResponseTooLarge,
            format!("function {function} returned more than the response limit of {limit} bytes; return less data, or store it elsewhere and return a reference"),
        ),
        InvokeError::BadResponse(detail) => ApiError::new(
            ErrorCode::BadFunctionResponse,
            format!("function {function} answered in a way Petrel cannot use: {detail}"),
        ),
        InvokeError::Stopped(why) => ApiError::new(
            ErrorCode::FunctionCrashed,
            format!("function {function} (version {version}) was stopped: {why}"),
        ),
    }
}

/// A response body that keeps its instance slot taken until it has been sent (or dropped).
/// Counts the bytes both ways when it is done.
struct LeasedBody {
    inner: Body,
    lease: Lease,
    metrics: Arc<Metrics>,
    request: BodyWatch,
    sent: u64,
    /// Stop the instance when the body ends in an error (a Lambda stream the function broke).
    discard_on_error: bool,
}

impl LeasedBody {
    fn new(
        inner: Body,
        lease: Lease,
        metrics: Arc<Metrics>,
        request: BodyWatch,
        discard_on_error: bool,
    ) -> Self {
        Self {
            inner,
            lease,
            metrics,
            request,
            sent: 0,
            discard_on_error,
        }
    }
}

impl Drop for LeasedBody {
    fn drop(&mut self) {
        let v = self.lease.version();
        let received = self
            .request
            .passed
            .load(std::sync::atomic::Ordering::Relaxed);
        self.metrics.bytes(&v.namespace, &v.spec, "in", received);
        self.metrics.bytes(&v.namespace, &v.spec, "out", self.sent);
    }
}

impl http_body::Body for LeasedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.sent += frame.data_ref().map(|d| d.len() as u64).unwrap_or(0);
            }
            Poll::Ready(Some(Err(_))) if self.discard_on_error => self.lease.discard_instance(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `X-Amz-Cognito-Identity` (a Petrel extension: Lambda takes the identity from the caller's
/// Cognito credentials), a JSON object such as `{"cognitoIdentityId": ..., "cognitoIdentityPoolId":
/// ...}`, handed on as `Lambda-Runtime-Cognito-Identity` for the runtime clients'
/// `context.identity`.
fn cognito_identity(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("x-amz-cognito-identity") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|s| serde_json::from_str::<serde_json::Value>(s).is_ok_and(|j| j.is_object()))
        .map(|s| Some(s.to_owned()))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                r#"X-Amz-Cognito-Identity must be a JSON object, such as {"cognitoIdentityId": "...", "cognitoIdentityPoolId": "..."}"#,
            )
        })
}

/// The client context as the Runtime API hands it on: Lambda's `X-Amz-Client-Context` is
/// base64 of a JSON object, and runtime clients parse `Lambda-Runtime-Client-Context` as JSON.
/// A value that is not base64 of JSON (JSON sent as is, say) goes on unchanged.
fn client_context(header: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| serde_json::from_str::<serde_json::Value>(s).is_ok())
        .unwrap_or_else(|| header.to_owned())
}
