//! The invoke gateway: `/fn/{name}/...` (HTTP functions see the request as sent; Lambda handlers
//! get an API Gateway v2 event) and the raw `POST /v1/functions/{name}/invoke` (the body is the
//! event, the answer is the handler's return value).

use crate::body::{collect_limited, BodyError, LimitedBody};
use crate::metrics::Metrics;
use crate::pool::{AcquireError, Lease, Pool};
use crate::trace::{SpanRecord, TraceContext};
use crate::{apigw, invoke_error, DataPlane, ErrorResponse};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use petrel_core::api::{InvocationRecord, INVOCATION_ID_HEADER, VERSION_HEADER};
use petrel_core::error::FUNCTION_ERROR_HEADER;
use petrel_core::{now_ms, ApiError, ErrorCode, FunctionRef};
use petrel_runtime::logs::LogSource;
use petrel_runtime::{Body, InvokeError, LambdaOutcome, LambdaRequest};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

mod asynchronous;
mod eventstream;
mod lambda_api;
mod sigv4;

pub(crate) use asynchronous::run_attempt;

pub use lambda_api::{
    check_signature as check_lambda_signature, is_alias_name as is_lambda_alias_name,
    service_error as lambda_service_error,
};
pub use sigv4::AccessKey;

/// The gateway's routes; merge them into the server's router.
pub fn routes() -> Router<DataPlane> {
    Router::new()
        .route("/v1/functions/{name}/invoke", post(raw_invoke))
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(lambda_api::invoke),
        )
        .route(
            "/2021-11-15/functions/{name}/response-streaming-invocations",
            post(lambda_api::invoke_stream),
        )
        .route("/fn/{name}", any(fn_root))
        .route("/fn/{name}/", any(fn_root))
        .route("/fn/{name}/{*path}", any(fn_path))
        .route("/async-fn/{name}", any(asynchronous::fn_root))
        .route("/async-fn/{name}/", any(asynchronous::fn_root))
        .route("/async-fn/{name}/{*path}", any(asynchronous::fn_path))
}

#[derive(Debug, serde::Deserialize)]
struct InvokeQuery {
    namespace: Option<String>,
    /// The raw invoke: queue the event and answer 202 at once (`?async=true`).
    #[serde(default, rename = "async")]
    asynchronous: Option<String>,
}

impl InvokeQuery {
    fn is_async(&self) -> Result<bool, ApiError> {
        match self.asynchronous.as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("async={other:?} is not a flag: use async=true or leave it out"),
            )),
        }
    }
}

fn parse_ref(name: &str, q: &InvokeQuery) -> Result<FunctionRef, ApiError> {
    let ns = q
        .namespace
        .as_deref()
        .unwrap_or(petrel_core::DEFAULT_NAMESPACE);
    Ok(FunctionRef::parse(name, ns)?)
}

fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the request body is larger than the limit of {} bytes; send less, or pass a reference to data stored elsewhere",
            limit
        ),
    )
}

fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a whole request body, refusing more than `limit` bytes.
async fn read_body(req: Request, limit: usize) -> Result<(http::request::Parts, Bytes), ApiError> {
    let declared = declared_length(&req);
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

fn new_invocation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// One invocation's bookkeeping, from asking for a slot to the answer.
struct Call<'a> {
    dp: &'a DataPlane,
    id: &'a str,
    /// `invoke` (the raw invoke) or `http` (`/fn/...`).
    trigger: &'static str,
    asked: Instant,
    asked_ms: i64,
    asked_at: SystemTime,
    /// The invocation's span; its parent is the caller's span when it sent a `traceparent`.
    trace: TraceContext,
    parent: Option<[u8; 8]>,
    method: String,
    /// An async attempt: its record's id (`{id}.{attempt}`) and its own time limit.
    attempt: Option<(String, Duration)>,
}

impl<'a> Call<'a> {
    fn new(dp: &'a DataPlane, id: &'a str, trigger: &'static str, req: &Request) -> Self {
        let caller = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        Self {
            dp,
            id,
            trigger,
            asked: Instant::now(),
            asked_ms: now_ms(),
            asked_at: SystemTime::now(),
            trace: caller
                .map(|c| c.child())
                .unwrap_or_else(TraceContext::new_root),
            parent: caller.map(|c| c.span_id),
            method: req.method().to_string(),
            attempt: None,
        }
    }

    /// How long the function may run: its `timeout`, or `async_timeout` for an async attempt.
    fn timeout(&self, spec: &petrel_core::FunctionSpec) -> Duration {
        match &self.attempt {
            Some((_, t)) => *t,
            None => spec.timeout(),
        }
    }

    /// Sends a span of this invocation to the exporter, if one is configured.
    fn span(
        &self,
        name: &'static str,
        context: TraceContext,
        start: SystemTime,
        attributes: Vec<(&'static str, String)>,
        error: Option<String>,
    ) {
        if let Some(sink) = self.dp.spans() {
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
    fn finish(&self, v: (&str, &str, u32), cold: bool, outcome: &str, error: Option<String>) {
        let (namespace, function, version) = v;
        let trigger = if self.trigger == "http" {
            "http"
        } else {
            "other"
        };
        self.span(
            "invoke",
            self.trace,
            self.asked_at,
            vec![
                ("faas.name", function.to_owned()),
                ("faas.version", version.to_string()),
                ("faas.invocation_id", self.id.to_owned()),
                ("faas.trigger", trigger.to_owned()),
                ("faas.coldstart", cold.to_string()),
                ("petrel.namespace", namespace.to_owned()),
                ("petrel.outcome", outcome.to_owned()),
                ("http.request.method", self.method.clone()),
            ],
            error,
        );
    }

    /// The invocation's record, written off the request path.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        (namespace, function, version, memory_mb): (&str, &str, u32, u32),
        ran: Option<Duration>,
        cold: bool,
        outcome: &str,
        error: Option<String>,
        instance: Option<&str>,
    ) {
        let billed_ms = ran
            .map(|d| (d.as_micros().div_ceil(1000) as u64).max(1))
            .unwrap_or(0);
        let id = match &self.attempt {
            Some((record, _)) => record.clone(),
            None => self.id.to_owned(),
        };
        self.dp.record(InvocationRecord {
            id,
            namespace: namespace.to_owned(),
            function: function.to_owned(),
            version,
            trigger: self.trigger.to_owned(),
            started_at: self.asked_ms,
            duration_ms: self.asked.elapsed().as_millis() as u64,
            billed_ms,
            memory_mb,
            cold_start: cold,
            outcome: outcome.to_owned(),
            error: error.map(|e| e.chars().take(1000).collect()),
            instance: instance.map(str::to_owned),
        });
    }
}

/// Takes a slot in the pool: the version it runs, when the function started, and the lease.
async fn take_lease(call: &Call<'_>, pool: &Arc<Pool>) -> Result<(u32, Instant, Lease), ApiError> {
    let v = pool.version();
    let metrics = call.dp.metrics();
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let result = pool.acquire().await;
    metrics.acquired(&v.namespace, &v.spec, t0.elapsed());
    let cold = result.as_ref().map(Lease::cold).unwrap_or(true);
    call.span("pool.acquire", call.trace.child(), t0_wall, vec![], None);
    if cold {
        let error = result
            .as_ref()
            .err()
            .map(|_| "the instance failed to start".to_owned());
        call.span(
            "instance.cold_start",
            call.trace.child(),
            t0_wall,
            vec![],
            error,
        );
    }
    match result {
        Ok(lease) => Ok((v.version, Instant::now(), lease)),
        // Counted as rejected where the answer goes out.
        Err(AcquireError::Refused(e)) => Err(e),
        Err(AcquireError::Start(e)) => {
            metrics.invocation(&v.namespace, &v.spec, "init_failed", None);
            let who = (
                v.namespace.as_str(),
                v.name.as_str(),
                v.version,
                v.spec.memory_mb,
            );
            call.record(who, None, true, "init_failed", Some(e.to_string()), None);
            let v3 = (v.namespace.as_str(), v.name.as_str(), v.version);
            call.finish(v3, true, "init_failed", Some(e.to_string()));
            Err(invoke_error(&v.name, v.version, &e))
        }
    }
}

/// Writes the platform's one-line report of an invocation to the function's log, counts it, and
/// records it.
fn report(
    call: &Call<'_>,
    lease: &Lease,
    (started, started_at, call_span): (Instant, SystemTime, TraceContext),
    outcome: &str,
    error: Option<String>,
) {
    let i = lease.instance();
    let spec = i.spec();
    let ran = started.elapsed();
    let metrics = call.dp.metrics();
    metrics.invocation(&spec.namespace, &spec.spec, outcome, Some(ran));
    if lease.cold() {
        let (ns, fs) = (&spec.namespace, &spec.spec);
        metrics.cold_start_phase(ns, fs, "wait_for_slot", lease.slot_wait());
        metrics.cold_start_phase(ns, fs, "first_response", ran);
    }
    let src = LogSource {
        namespace: spec.namespace.clone(),
        function: spec.function.clone(),
        version: spec.version,
        instance: i.id().to_owned(),
    };
    let id = call.id;
    i.env().log_sink().emit(src.line(
        "platform",
        Some(id.to_owned()),
        format!(
            "REPORT {id} duration={}ms outcome={outcome}",
            ran.as_millis()
        ),
    ));
    let who = (
        spec.namespace.as_str(),
        spec.function.as_str(),
        spec.version,
        spec.spec.memory_mb,
    );
    let failed =
        (outcome != "success").then(|| error.clone().unwrap_or_else(|| outcome.to_owned()));
    let instance = vec![("petrel.instance", i.id().to_owned())];
    call.span(
        "function.call",
        call_span,
        started_at,
        instance,
        failed.clone(),
    );
    let v3 = (
        spec.namespace.as_str(),
        spec.function.as_str(),
        spec.version,
    );
    call.finish(v3, lease.cold(), outcome, failed);
    call.record(who, Some(ran), lease.cold(), outcome, error, Some(i.id()));
}

/// The outcome label of a failed invocation.
/// Reports a failed invocation, and takes an instance that timed out or crashed out of its pool.
fn report_failure(
    call: &Call<'_>,
    lease: &mut Lease,
    timing: (Instant, SystemTime, TraceContext),
    e: &InvokeError,
) {
    report(call, lease, timing, failure_outcome(e), Some(e.to_string()));
    if matches!(
        e,
        InvokeError::Timeout(_) | InvokeError::Crashed(_) | InvokeError::Stopped(_)
    ) {
        lease.discard_instance();
    }
}

fn failure_outcome(e: &InvokeError) -> &'static str {
    match e {
        InvokeError::Timeout(_) => "timeout",
        InvokeError::Crashed(_) => "crashed",
        InvokeError::Stopped(_) => "stopped",
        InvokeError::OutOfMemory(_) => "out_of_memory",
        InvokeError::InitFailed { .. } => "init_failed",
        _ => "error",
    }
}

/// Runs one Lambda event through a pool.
async fn invoke_event(
    call: &Call<'_>,
    pool: &Arc<Pool>,
    event: Bytes,
    headers: &http::HeaderMap,
) -> Result<(u32, LambdaOutcome), ApiError> {
    let cognito_identity = cognito_identity(headers)?;
    let (version, started, mut lease) = take_lease(call, pool).await?;
    let timing = (started, SystemTime::now(), call.trace.child());
    let call_span = timing.2;
    let v = pool.version();
    call.dp
        .metrics()
        .bytes(&v.namespace, &v.spec, "in", event.len() as u64);
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let result = lease
        .instance()
        .invoke_lambda(LambdaRequest {
            id: call.id.to_owned(),
            event,
            timeout: call.timeout(&pool.version().spec),
            client_context: text("x-amz-client-context").map(|c| client_context(&c)),
            cognito_identity,
            trace_id: Some(call_span.xray()),
        })
        .await;
    if let Ok(LambdaOutcome::Success(b) | LambdaOutcome::FunctionError { body: b, .. }) = &result {
        call.dp
            .metrics()
            .bytes(&v.namespace, &v.spec, "out", b.len() as u64);
    }
    match &result {
        Ok(LambdaOutcome::Success(_) | LambdaOutcome::Streamed { .. }) => {
            report(call, &lease, timing, "success", None)
        }
        Ok(LambdaOutcome::FunctionError { error_type, .. }) => report(
            call,
            &lease,
            timing,
            "function_error",
            Some(error_type.clone()),
        ),
        Err(e) => report_failure(call, &mut lease, timing, e),
    }
    match result {
        // The instance stays taken until the stream ends; a stream that ends in an error (the
        // function failed, ran out of time or past the limit) stops it.
        Ok(LambdaOutcome::Streamed { head, body }) => Ok((
            version,
            LambdaOutcome::Streamed {
                head,
                body: Body::new(LeasedBody {
                    inner: body,
                    lease,
                    metrics: call.dp.metrics().clone(),
                    version: pool.version().clone(),
                    request: crate::body::BodyWatch::default(),
                    sent: 0,
                    discard_on_error: true,
                }),
            },
        )),
        other => other
            .map(|o| (version, o))
            .map_err(|e| invoke_error(&pool.version().name, version, &e)),
    }
}

/// A streamed Lambda response as HTTP: the head its prelude gave (status, headers, cookies),
/// else a 200 of bytes.
fn streamed_response(head: Option<petrel_runtime::StreamHead>, body: Body) -> Response {
    let mut resp = Response::new(body);
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

fn stamp(resp: &mut Response, id: &str, version: u32) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(INVOCATION_ID_HEADER, v);
    }
    h.insert(VERSION_HEADER, HeaderValue::from(version));
}

fn function_error_response(error_type: &str, body: Bytes) -> Response {
    let mut resp = (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        FUNCTION_ERROR_HEADER,
        HeaderValue::from_str(error_type).unwrap_or(HeaderValue::from_static("Unhandled")),
    );
    resp
}

async fn raw_invoke(
    State(dp): State<DataPlane>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    req: Request,
) -> Response {
    let id = new_invocation_id();
    let result = raw_invoke_inner(&dp, &name, &q, &id, req).await;
    answer(dp.metrics(), &id, result)
}

/// The answer to an invocation; a Petrel error carries the invocation id too, for the logs.
/// Errors of requests that never reached a function are counted here, by code.
fn answer(metrics: &Metrics, id: &str, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| {
        if matches!(
            e.code,
            ErrorCode::InvalidName
                | ErrorCode::FunctionNotFound
                | ErrorCode::VersionNotFound
                | ErrorCode::PayloadTooLarge
                | ErrorCode::InvalidPayload
                | ErrorCode::InvalidRequest
                | ErrorCode::TooManyRequests
                | ErrorCode::NoCapacity
                | ErrorCode::ShuttingDown
        ) {
            metrics.rejected(e.code.as_str());
        }
        let mut r = ErrorResponse(e).into_response();
        if let Ok(v) = HeaderValue::from_str(id) {
            r.headers_mut().insert(INVOCATION_ID_HEADER, v);
        }
        r
    })
}

async fn raw_invoke_inner(
    dp: &DataPlane,
    name: &str,
    q: &InvokeQuery,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let r = parse_ref(name, q)?;
    if q.is_async()? {
        return asynchronous::submit(dp, &r, asynchronous::Kind::Event, id, req)
            .await
            .map(asynchronous::accepted);
    }
    let pool = dp.resolve(&r).await?;
    let call = Call::new(dp, id, "invoke", &req);
    raw_run(&call, &pool, req).await
}

/// The raw invoke of a resolved function: the body is the event.
async fn raw_run(call: &Call<'_>, pool: &Arc<Pool>, req: Request) -> Result<Response, ApiError> {
    let (dp, id) = (call.dp, call.id);
    let limit = dp.env().payload_limit();
    if !pool.version().spec.runtime.speaks_lambda() {
        // An HTTP function gets the payload as a POST to its root.
        let (mut parts, body) = req.into_parts();
        parts.method = http::Method::POST;
        parts.uri = http::Uri::from_static("/");
        if !parts.headers.contains_key(header::CONTENT_TYPE) {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        return proxy(call, pool, Request::from_parts(parts, body)).await;
    }
    let (parts, body) = read_body(req, limit).await?;
    let event = json_event(body)?;
    let (version, outcome) = invoke_event(call, pool, event, &parts.headers).await?;
    let mut resp = match outcome {
        LambdaOutcome::Success(b) => {
            let mut resp = (StatusCode::OK, b).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        LambdaOutcome::FunctionError { error_type, body } => {
            function_error_response(&error_type, body)
        }
        LambdaOutcome::Streamed { head, body } => streamed_response(head, body),
    };
    stamp(&mut resp, id, version);
    Ok(resp)
}

async fn fn_root(
    State(dp): State<DataPlane>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    req: Request,
) -> Response {
    fn_any(dp, name, String::new(), q, req).await
}

async fn fn_path(
    State(dp): State<DataPlane>,
    Path((name, path)): Path<(String, String)>,
    Query(q): Query<InvokeQuery>,
    req: Request,
) -> Response {
    fn_any(dp, name, path, q, req).await
}

async fn fn_any(
    dp: DataPlane,
    name: String,
    rest: String,
    q: InvokeQuery,
    req: Request,
) -> Response {
    let id = new_invocation_id();
    let result = fn_inner(&dp, &name, &rest, &q, &id, req).await;
    answer(dp.metrics(), &id, result)
}

/// An event for a Lambda handler: the body, which must be JSON; an empty one is `{}`.
fn json_event(body: Bytes) -> Result<Bytes, ApiError> {
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

/// The path and query the function sees: `/fn/{name}/a/b?x=1` becomes `/a/b?x=1`.
fn function_uri(rest: &str, query: Option<&str>) -> String {
    let mut s = format!("/{rest}");
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

async fn fn_inner(
    dp: &DataPlane,
    name: &str,
    rest: &str,
    q: &InvokeQuery,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let r = parse_ref(name, q)?;
    let pool = dp.resolve(&r).await?;
    let call = Call::new(dp, id, "http", &req);
    let uri = function_uri(rest, req.uri().query());
    fn_run(&call, &pool, uri, req).await
}

/// A request to a resolved function as it sees it: `uri` is its path and query.
async fn fn_run(
    call: &Call<'_>,
    pool: &Arc<Pool>,
    uri: String,
    req: Request,
) -> Result<Response, ApiError> {
    let (dp, id) = (call.dp, call.id);
    let name = &pool.version().name;
    if !pool.version().spec.runtime.speaks_lambda() {
        let (mut parts, body) = req.into_parts();
        parts.uri = uri.parse().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "the request path is not a valid URI",
            )
        })?;
        return proxy(call, pool, Request::from_parts(parts, body)).await;
    }
    let source_ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = read_body(req, dp.env().payload_limit()).await?;
    let path = uri.split('?').next().unwrap_or("/").to_owned();
    let event = apigw::event(&parts, &path, &body, id, source_ip, now_ms());
    let event = Bytes::from(serde_json::to_vec(&event).expect("an event serialises"));
    let (version, outcome) = invoke_event(call, pool, event, &parts.headers).await?;
    let mut resp = match outcome {
        LambdaOutcome::Success(b) => apigw::response(&b)
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::BadFunctionResponse,
                    format!("function {name} returned an invalid HTTP response: {e}"),
                )
            })?
            .into_response(),
        LambdaOutcome::FunctionError { error_type, body } => {
            function_error_response(&error_type, body)
        }
        LambdaOutcome::Streamed { head, body } => streamed_response(head, body),
    };
    stamp(&mut resp, id, version);
    Ok(resp)
}

/// Proxies a request to an `http` function, streaming both ways. The lease is held until the
/// response body has been sent.
async fn proxy(call: &Call<'_>, pool: &Arc<Pool>, req: Request) -> Result<Response, ApiError> {
    let (dp, id) = (call.dp, call.id);
    let limit = dp.env().payload_limit();
    if declared_length(&req).is_some_and(|n| n > limit as u64) {
        crate::body::drain(req.into_body()).await;
        return Err(payload_too_large(limit));
    }
    let (version, started, mut lease) = take_lease(call, pool).await?;
    let timing = (started, SystemTime::now(), call.trace.child());
    let call_span = timing.2;
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    if let Ok(v) = HeaderValue::from_str(&call_span.traceparent()) {
        h.insert("traceparent", v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(INVOCATION_ID_HEADER, v);
    }
    if let Some(host) = h.get(header::HOST).cloned() {
        h.insert("x-forwarded-host", host);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(ci) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        if let Ok(v) = HeaderValue::from_str(&ci.0.ip().to_string()) {
            h.insert("x-forwarded-for", v);
        }
    }
    let (body, watch) = LimitedBody::new(body, limit);
    let req = http::Request::from_parts(parts, Body::new(body));
    let timeout = call.timeout(&pool.version().spec);
    let result = lease.instance().proxy(id, req, timeout).await;
    if result.is_err() && watch.exceeded.load(std::sync::atomic::Ordering::Relaxed) {
        // The upload outgrew the limit while it streamed; the function is not at fault (the
        // answer is counted as rejected, not as the function's invocation).
        return Err(payload_too_large(limit));
    }
    match &result {
        Ok(_) => report(call, &lease, timing, "success", None),
        Err(e) => report_failure(call, &mut lease, timing, e),
    }
    match result {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let mut resp = Response::from_parts(
                parts,
                Body::new(LeasedBody {
                    inner: body,
                    lease,
                    metrics: dp.metrics().clone(),
                    version: pool.version().clone(),
                    request: watch,
                    sent: 0,
                    discard_on_error: false,
                }),
            );
            stamp(&mut resp, id, version);
            Ok(resp)
        }
        Err(e) => Err(invoke_error(&pool.version().name, version, &e)),
    }
}

/// A response body that keeps its instance slot taken until it has been sent (or dropped).
/// Counts the bytes both ways when it is done.
struct LeasedBody {
    inner: Body,
    lease: Lease,
    metrics: Arc<Metrics>,
    version: Arc<crate::DeployedVersion>,
    request: crate::body::BodyWatch,
    sent: u64,
    /// Stop the instance when the body ends in an error (a Lambda stream the function broke).
    discard_on_error: bool,
}

impl Drop for LeasedBody {
    fn drop(&mut self) {
        let v = &self.version;
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
fn cognito_identity(headers: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("x-amz-cognito-identity") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|s| {
            serde_json::from_str::<serde_json::Value>(s).is_ok_and(|j| j.is_object())
        })
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
