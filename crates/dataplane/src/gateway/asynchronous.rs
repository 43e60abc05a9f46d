//! The async side of the gateway: `ANY /async-fn/{name}/...`, the raw invoke with `?async=true`
//! and Lambda's `InvocationType: Event` commit the request to the queue and answer `202`; the
//! dispatcher later runs each attempt here, through the same pools as a synchronous call.

use super::{
    answer, fn_run, function_uri, json_event, new_invocation_id, parse_ref, raw_run, read_body,
    Call, InvokeQuery,
};
use crate::DataPlane;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use petrel_async::{Attempt, Verdict};
use petrel_core::api::{
    AsyncAccepted, CALLBACK_URL_HEADER, DUPLICATE_HEADER, IDEMPOTENCY_KEY_HEADER,
    INVOCATION_ID_HEADER, VERSION_HEADER,
};
use petrel_core::error::FUNCTION_ERROR_HEADER;
use petrel_core::manifest::AsyncSpec;
use petrel_core::{now_ms, ApiError, ErrorCode, FunctionRef};
use petrel_store::{LeasedAsync, NewAsync};

/// What a queued request is when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A request to `/fn/{name}/...`, as sent.
    Http,
    /// An event, as the raw invoke takes it.
    Event,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Event => "event",
        }
    }
}

pub(super) async fn fn_root(
    State(dp): State<DataPlane>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    req: Request,
) -> Response {
    fn_any(dp, name, String::new(), q, req).await
}

pub(super) async fn fn_path(
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
    let result = async {
        let r = parse_ref(&name, &q)?;
        let uri = function_uri(&rest, req.uri().query());
        let (mut parts, body) = req.into_parts();
        parts.uri = uri.parse().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "the request path is not a valid URI",
            )
        })?;
        submit(&dp, &r, Kind::Http, &id, Request::from_parts(parts, body)).await
    }
    .await;
    answer(dp.metrics(), &id, result.map(accepted))
}

/// `202 Accepted` with `{"id": ...}` and where to follow it.
pub(crate) fn accepted((id, duplicate): (String, bool)) -> Response {
    let location = format!("/v1/invocations/{id}");
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(AsyncAccepted {
            id: id.clone(),
            duplicate,
        }),
    )
        .into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(INVOCATION_ID_HEADER, v);
    }
    if duplicate {
        h.insert(DUPLICATE_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

/// A message's headers as stored: without the ones of its hop and its framing (the body is
/// stored whole), as text pairs.
fn stored_headers(mut h: http::HeaderMap) -> Vec<(String, String)> {
    petrel_runtime::strip_hop_by_hop(&mut h);
    h.remove(header::CONTENT_LENGTH);
    h.iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// Commits a request to the async queue; returns the id that stands (an earlier one when the
/// idempotency key matched). An unknown function is refused here, not queued.
pub(crate) async fn submit(
    dp: &DataPlane,
    r: &FunctionRef,
    kind: Kind,
    id: &str,
    req: Request,
) -> Result<(String, bool), ApiError> {
    let Some(queue) = dp.async_queue() else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "this server has no async queue",
        ));
    };
    let pool = dp.resolve(r).await?;
    fn text(req: &Request, name: &str) -> Result<Option<String>, ApiError> {
        req.headers()
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("the {name} header is not text"),
                    )
                })
            })
            .transpose()
    }
    let callback_url = text(&req, CALLBACK_URL_HEADER)?;
    if let Some(u) = &callback_url {
        if !petrel_core::manifest::is_http_url(u) || u.parse::<http::Uri>().is_err() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("X-Callback-Url {u:?} is not an http:// or https:// URL; give one the result can be POSTed to"),
            ));
        }
    }
    let idem_key = text(&req, IDEMPOTENCY_KEY_HEADER)?;
    if idem_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the Idempotency-Key header must be 1 to 256 characters",
        ));
    }
    let (mut parts, body) = read_body(req, dp.env().payload_limit()).await?;
    let body = if kind == Kind::Event && pool.version().spec.runtime.speaks_lambda() {
        // Refused now, not after a retry cycle.
        json_event(body)?
    } else {
        body
    };
    // The ones Petrel acts on stay with Petrel.
    let mut request_headers = std::mem::take(&mut parts.headers);
    for h in [
        CALLBACK_URL_HEADER,
        IDEMPOTENCY_KEY_HEADER,
        header::EXPECT.as_str(),
    ] {
        request_headers.remove(h);
    }
    let headers = stored_headers(request_headers);
    let now = now_ms();
    let n = NewAsync {
        id: id.to_owned(),
        namespace: r.namespace.clone(),
        function: r.name.clone(),
        version: r.version,
        kind: kind.as_str().to_owned(),
        method: parts.method.to_string(),
        path: match kind {
            Kind::Http => parts.uri.to_string(),
            Kind::Event => String::new(),
        },
        headers,
        body: body.to_vec(),
        created_at: now,
        run_at: now,
        callback_url,
        idem_key,
    };
    let v = pool.version();
    let accepted = queue.submit(n).await.map_err(|e| {
        tracing::error!(error = %e, "async submission refused");
        ApiError::new(
            ErrorCode::Internal,
            "the request could not be stored, so it was not accepted; send it again",
        )
    })?;
    dp.metrics().async_accepted(&v.namespace, &v.spec);
    Ok(accepted)
}

/// Runs one attempt of a queued invocation through the function's pool.
pub(crate) async fn run_attempt(dp: &DataPlane, job: LeasedAsync) -> (Attempt, Option<AsyncSpec>) {
    let r = FunctionRef {
        namespace: job.namespace.clone(),
        name: job.function.clone(),
        version: job.version,
    };
    let pool = match dp.resolve(&r).await {
        Ok(p) => p,
        Err(e) => return (refused(e, None), None),
    };
    let spec = pool.version().spec.asynchronous.clone();
    let record_id = job.record_id();
    let uri = if job.kind == "http" {
        job.path.clone()
    } else {
        "/".to_owned()
    };
    let mut req = http::Request::builder()
        .method(job.method.as_str())
        .uri(uri.as_str());
    for (k, v) in &job.headers {
        req = req.header(k, v);
    }
    let req = match req.body(axum::body::Body::from(job.body)) {
        Ok(r) => r,
        Err(e) => {
            let e = ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the stored request is not valid: {e}"),
            );
            return (refused(e, None), Some(spec));
        }
    };
    let mut call = Call::new(dp, &job.id, "async", &req);
    call.attempt = Some((record_id, spec.timeout()));
    let result = if job.kind == "http" {
        fn_run(&call, &pool, uri, req).await
    } else {
        raw_run(&call, &pool, req).await
    };
    let version = pool.version().version;
    let attempt = match result {
        Ok(resp) => answered(dp, resp, version).await,
        Err(e) => refused(e, Some(version)),
    };
    let outcome = match attempt.verdict {
        Verdict::Succeeded => "succeeded",
        Verdict::Retry => "retry",
        Verdict::Fail => "fail",
    };
    let v = pool.version();
    dp.metrics().async_attempt(&v.namespace, &v.spec, outcome);
    (attempt, Some(spec))
}

/// An attempt that got an answer: a function error or a 5xx is a failure to retry.
async fn answered(dp: &DataPlane, resp: Response, version: u32) -> Attempt {
    let (parts, body) = resp.into_parts();
    let executed = parts
        .headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(version);
    let body = match http_body_util::Limited::new(body, dp.env().payload_limit())
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Attempt {
                verdict: Verdict::Retry,
                executed_version: Some(executed),
                result: None,
                error: Some(format!("the answer broke off: {e}")),
            }
        }
    };
    let headers = stored_headers(parts.headers.clone());
    let status = parts.status.as_u16();
    let (verdict, error) = if let Some(kind) = parts.headers.get(FUNCTION_ERROR_HEADER) {
        let kind = kind.to_str().unwrap_or("Unhandled");
        (
            Verdict::Retry,
            Some(format!("the function failed ({kind})")),
        )
    } else if parts.headers.contains_key(petrel_core::error::ERROR_HEADER) {
        // A streamed answer that Petrel ended with its own error.
        (
            Verdict::Retry,
            Some(String::from_utf8_lossy(&body).into_owned()),
        )
    } else if parts.status.is_server_error() {
        (
            Verdict::Retry,
            Some(format!("the function answered {}", parts.status)),
        )
    } else {
        (Verdict::Succeeded, None)
    };
    Attempt {
        verdict,
        executed_version: Some(executed),
        result: Some((status, headers, body.to_vec())),
        error,
    }
}

/// An attempt Petrel answered itself: retried unless running again cannot help.
fn refused(e: ApiError, version: Option<u32>) -> Attempt {
    let verdict = match e.code {
        ErrorCode::FunctionNotFound
        | ErrorCode::VersionNotFound
        | ErrorCode::InvalidName
        | ErrorCode::InvalidPayload
        | ErrorCode::InvalidRequest
        | ErrorCode::PayloadTooLarge => Verdict::Fail,
        _ => Verdict::Retry,
    };
    Attempt {
        verdict,
        executed_version: version,
        result: None,
        error: Some(format!("{}: {}", e.code.as_str(), e.message)),
    }
}

/// Lambda's `InvocationType: Event`: `202` with no body, as Lambda answers.
pub(crate) async fn lambda_event(
    dp: &DataPlane,
    r: &FunctionRef,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let (id, _) = submit(dp, r, Kind::Event, id, req).await?;
    let mut resp = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
    }
    Ok(resp)
}
