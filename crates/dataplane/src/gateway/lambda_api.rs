//! AWS Lambda's `Invoke` call (`POST /2015-03-31/functions/{name}/invocations`) on Petrel's
//! listener, so that AWS SDKs and the AWS CLI invoke Petrel functions with `--endpoint-url`.
//!
//! Lambda's shapes throughout: a function's error is a `200` with `X-Amz-Function-Error:
//! Unhandled` and the error document (a timeout, crash or out-of-memory end included, with the
//! error types Lambda uses); the service's own errors carry `x-amzn-ErrorType` and
//! `{"Type", "message"}`, which the SDKs turn into `ResourceNotFoundException` and the like.

use super::{invoke_event, new_invocation_id, read_body, Call};
use crate::DataPlane;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use petrel_core::api::INVOCATION_ID_HEADER;
use petrel_core::{ApiError, ErrorCode, FunctionRef};
use petrel_runtime::LambdaOutcome;

#[derive(Debug, serde::Deserialize)]
pub(super) struct LambdaQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

/// The function a Lambda call names, and its pool; else Lambda's refusal.
async fn resolve_pool(
    dp: &DataPlane,
    name: &str,
    q: &LambdaQuery,
    id: &str,
) -> Result<(FunctionRef, std::sync::Arc<crate::Pool>), Response> {
    let r = resolve_ref(dp, name, q).await?;
    let pool = dp.resolve(&r).await.map_err(|e| lambda_error(e, id))?;
    Ok((r, pool))
}

/// [`function_ref`], with an alias qualifier resolved to its version.
async fn resolve_ref(dp: &DataPlane, name: &str, q: &LambdaQuery) -> Result<FunctionRef, Response> {
    match function_ref(name, q) {
        Ok(r) => Ok(r),
        Err(Unresolved::Alias(mut r, alias)) => match dp.alias(&r.namespace, &r.name, &alias).await
        {
            Ok(Some(version)) => {
                r.version = version;
                Ok(r)
            }
            Ok(None) => Err(ServiceError(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!(
                    "Function not found: {}:{alias} (no such version or alias)",
                    r.name
                ),
            )
            .into_response()),
            Err(e) => Err(lambda_error(e, "")),
        },
        Err(Unresolved::Refused(e)) => Err(e.into_response()),
    }
}

enum Unresolved {
    /// The qualifier is an alias's name.
    Alias(FunctionRef, String),
    Refused(ServiceError),
}

impl From<ServiceError> for Unresolved {
    fn from(e: ServiceError) -> Self {
        Unresolved::Refused(e)
    }
}

/// `{name}` may be a name, `name:qualifier`, or a function ARN with or without a qualifier;
/// a qualifier is `$LATEST`, a version number, or an alias.
fn function_ref(name: &str, q: &LambdaQuery) -> Result<FunctionRef, Unresolved> {
    let name = name
        .strip_prefix("arn:aws:lambda:")
        .and_then(|rest| rest.split_once(":function:").map(|(_, f)| f))
        .unwrap_or(name);
    let (base, qualifier) = match name.split_once(':') {
        Some((b, q)) => (b, Some(q)),
        None => (name, q.qualifier.as_deref()),
    };
    let mut r = FunctionRef::parse(base, petrel_core::DEFAULT_NAMESPACE).map_err(|e| {
        ServiceError(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            e.to_string(),
        )
    })?;
    r.version = match qualifier {
        None | Some("$LATEST") => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            Ok(_) => {
                return Err(ServiceError(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFoundException",
                    format!("Function not found: {base}:{v}"),
                )
                .into())
            }
            Err(_) if is_alias_name(v) => return Err(Unresolved::Alias(r, v.to_owned())),
            Err(_) => {
                return Err(ServiceError(
                    StatusCode::BAD_REQUEST,
                    "ValidationException",
                    format!("Qualifier {v:?} is not $LATEST, a version number or an alias name"),
                )
                .into())
            }
        },
    };
    Ok(r)
}

/// Lambda's alias names: 1 to 128 of letters, digits, `-` and `_`, not all digits.
pub fn is_alias_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !s.chars().all(|c| c.is_ascii_digit())
}

/// One of Lambda's service errors: status, type, message.
struct ServiceError(StatusCode, &'static str, String);

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        service_error(self.0, self.1, &self.2)
    }
}

/// One of Lambda's service errors, as the SDKs read them.
pub fn service_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"Type": "User", "message": message}).to_string();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(kind) {
        h.insert("x-amzn-errortype", v);
    }
    resp
}

/// A Petrel error in Lambda's terms: the function's own ends as function errors, the rest as
/// service errors.
fn lambda_error(e: ApiError, id: &str) -> Response {
    let function_error = |error_type: &str| {
        let body = serde_json::json!({
            "errorType": error_type,
            "errorMessage": format!("RequestId: {id} Error: {}", e.message),
        });
        function_error_response(body.to_string().into())
    };
    match e.code {
        ErrorCode::FunctionTimeout => function_error("Sandbox.Timedout"),
        ErrorCode::FunctionCrashed => function_error("Runtime.ExitError"),
        ErrorCode::FunctionOutOfMemory => function_error("Runtime.OutOfMemory"),
        ErrorCode::FunctionInitFailed => function_error("Runtime.InitError"),
        ErrorCode::BadFunctionResponse => function_error("Runtime.InvalidResponse"),
        ErrorCode::FunctionNotFound | ErrorCode::VersionNotFound => service_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &e.message,
        ),
        ErrorCode::InvalidName => {
            service_error(StatusCode::BAD_REQUEST, "ValidationException", &e.message)
        }
        ErrorCode::InvalidPayload => service_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            &e.message,
        ),
        ErrorCode::PayloadTooLarge => service_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            &e.message,
        ),
        ErrorCode::ResponseTooLarge => service_error(
            StatusCode::BAD_GATEWAY,
            "ResponseSizeTooLargeException",
            &e.message,
        ),
        ErrorCode::TooManyRequests | ErrorCode::NoCapacity => service_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            &e.message,
        ),
        _ => service_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            &e.message,
        ),
    }
}

fn function_error_response(body: Bytes) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-amz-function-error",
        HeaderValue::from_static("Unhandled"),
    );
    resp
}

pub(super) async fn invoke(
    State(dp): State<DataPlane>,
    Path(name): Path<String>,
    Query(q): Query<LambdaQuery>,
    req: Request,
) -> Response {
    signed_call(&dp, &name, &q, req, false).await
}

/// `InvokeWithResponseStream`: the answer as an event stream of `PayloadChunk`s, as they come
/// when the function streams, ended by `InvokeComplete` (with the error, if it failed).
pub(super) async fn invoke_stream(
    State(dp): State<DataPlane>,
    Path(name): Path<String>,
    Query(q): Query<LambdaQuery>,
    req: Request,
) -> Response {
    signed_call(&dp, &name, &q, req, true).await
}

/// Checks the signature, runs the call, and stamps the request id on the answer.
async fn signed_call(
    dp: &DataPlane,
    name: &str,
    q: &LambdaQuery,
    req: Request,
    stream: bool,
) -> Response {
    let id = new_invocation_id();
    let req = match check_signature(dp, req, dp.env().payload_limit()).await {
        Ok(req) => req,
        Err(resp) => return *resp,
    };
    let mut resp = if stream {
        invoke_stream_inner(dp, name, q, &id, req).await
    } else {
        invoke_inner(dp, name, q, &id, req).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amzn-requestid", v.clone());
        resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
    }
    resp
}

/// The event of a Lambda handler's invocation, with its bookkeeping: refused for a function
/// that takes HTTP, or a payload that is not JSON (`InvalidRequestContentException`).
async fn handler_event<'a>(
    dp: &'a DataPlane,
    pool: &crate::Pool,
    id: &'a str,
    req: Request,
) -> Result<(Call<'a>, http::request::Parts, Bytes), Response> {
    let spec = &pool.version().spec;
    if !spec.runtime.speaks_lambda() {
        let name = &pool.version().name;
        return Err(service_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!(
                "function {name} is of runtime {}, which takes HTTP requests: call it at /fn/{name}",
                spec.runtime
            ),
        ));
    }
    let call = Call::new(dp, id, "lambda-invoke", &req);
    let (parts, body) = read_body(req, dp.env().payload_limit())
        .await
        .map_err(|e| lambda_error(e, id))?;
    let event = super::json_event(body).map_err(|e| lambda_error(e, id))?;
    Ok((call, parts, event))
}

/// The request, if signatures are not required or it carries a valid one (its body read to
/// check it); else Lambda's refusal. For every route of the Lambda API.
pub async fn check_signature(
    dp: &DataPlane,
    req: Request,
    limit: usize,
) -> Result<Request, Box<Response>> {
    match dp.lambda_keys() {
        Some(keys) => signed(keys, req, limit).await,
        None => Ok(req),
    }
}

/// The request, if it carries a valid signature by one of `keys` (its body read to check it).
async fn signed(
    keys: &[super::AccessKey],
    req: Request,
    limit: usize,
) -> Result<Request, Box<Response>> {
    let (parts, body) = read_body(req, limit)
        .await
        .map_err(|e| Box::new(lambda_error(e, "")))?;
    super::sigv4::verify(
        keys,
        parts.method.as_str(),
        &parts.uri,
        &parts.headers,
        &body,
        std::time::SystemTime::now(),
    )
    .map_err(|(kind, message)| Box::new(service_error(StatusCode::FORBIDDEN, kind, &message)))?;
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

async fn invoke_inner(
    dp: &DataPlane,
    name: &str,
    q: &LambdaQuery,
    id: &str,
    req: Request,
) -> Response {
    let (r, pool) = match resolve_pool(dp, name, q, id).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let tail = req
        .headers()
        .get("x-amz-log-type")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Tail"));
    let invocation_type = req
        .headers()
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_owned();
    let executed = pool.version().version;
    match invocation_type.as_str() {
        "RequestResponse" => {}
        "DryRun" => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            resp.headers_mut()
                .insert("x-amz-executed-version", HeaderValue::from(executed));
            return resp;
        }
        "Event" => {
            return super::asynchronous::lambda_event(dp, &r, id, req)
                .await
                .unwrap_or_else(|e| lambda_error(e, id));
        }
        other => {
            return service_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("InvocationType {other:?} is not one of RequestResponse, Event, DryRun"),
            );
        }
    }
    let (call, parts, event) = match handler_event(dp, &pool, id, req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    // LogType Tail: the invocation's own lines, collected as they are written.
    let tap = tail.then(|| dp.env().log_sink().tap(id));
    let started = std::time::Instant::now();
    let result = invoke_event(&call, &pool, event, &parts.headers).await;
    let log_result = match tap {
        Some(tap) => {
            // Output written just before the answer may still be in the pipe.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            Some(log_result(id, executed, &tap.lines(), started.elapsed()))
        }
        None => None,
    };
    let with_log = |mut resp: Response| {
        if let Some(v) = log_result
            .as_ref()
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            resp.headers_mut().insert("x-amz-log-result", v);
        }
        resp
    };
    let (version, outcome) = match result {
        Ok(v) => v,
        Err(e) => {
            let mut resp = lambda_error(e, id);
            resp.headers_mut()
                .insert("x-amz-executed-version", HeaderValue::from(executed));
            return with_log(resp);
        }
    };
    let mut resp = match outcome {
        LambdaOutcome::Success(b) => {
            let mut resp = (StatusCode::OK, b).into_response();
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        LambdaOutcome::FunctionError { body, .. } => function_error_response(body),
        // Invoke answers the payload as it streams (the HTTP head, if any, is for function URLs).
        LambdaOutcome::Streamed { body, .. } => Response::new(body),
    };
    resp.headers_mut()
        .insert("x-amz-executed-version", HeaderValue::from(version));
    with_log(resp)
}

async fn invoke_stream_inner(
    dp: &DataPlane,
    name: &str,
    q: &LambdaQuery,
    id: &str,
    req: Request,
) -> Response {
    use super::eventstream::{chunk, complete};
    use http_body_util::BodyExt;
    let (_, pool) = match resolve_pool(dp, name, q, id).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let (call, parts, event) = match handler_event(dp, &pool, id, req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let (version, outcome) = match invoke_event(&call, &pool, event, &parts.headers).await {
        Ok(v) => v,
        Err(e) => return lambda_error(e, id),
    };
    let body = match outcome {
        LambdaOutcome::Success(b) => {
            let mut all = chunk(&b).to_vec();
            all.extend_from_slice(&complete(None));
            axum::body::Body::from(all)
        }
        LambdaOutcome::FunctionError { error_type, body } => axum::body::Body::from(complete(
            Some((&error_type, &String::from_utf8_lossy(&body))),
        )),
        LambdaOutcome::Streamed { body, .. } => {
            // Each piece goes out as it comes; an error ends the stream with its details.
            let events = futures_util::stream::unfold(Some(body), |state| async move {
                let mut body = state?;
                let next = match body.frame().await {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) if !d.is_empty() => (chunk(&d), Some(body)),
                        _ => (Bytes::new(), Some(body)),
                    },
                    Some(Err(e)) => (complete(Some(("Unhandled", &e.to_string()))), None),
                    None => (complete(None), None),
                };
                Some((Ok::<_, std::convert::Infallible>(next.0), next.1))
            });
            axum::body::Body::from_stream(events)
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    h.insert("x-amz-executed-version", HeaderValue::from(version));
    resp
}

/// `X-Amz-Log-Result`: base64 of the last 4 KB of the invocation's log, framed as Lambda frames
/// it (START, the function's lines, END, REPORT).
fn log_result(id: &str, version: u32, lines: &[String], took: std::time::Duration) -> String {
    use base64::Engine;
    let mut text = format!("START RequestId: {id} Version: {version}\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&format!(
        "END RequestId: {id}\nREPORT RequestId: {id}\tDuration: {:.2} ms\n",
        took.as_secs_f64() * 1000.0
    ));
    let bytes = text.as_bytes();
    let mut start = bytes.len().saturating_sub(4096);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    base64::engine::general_purpose::STANDARD.encode(&bytes[start..])
}
