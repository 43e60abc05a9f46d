//! Lambda's `Invoke` (`POST /2015-03-31/functions/{name}/invocations`, with `RequestResponse`,
//! `Event` and `DryRun`) and `InvokeWithResponseStream`, as translations to and from the
//! invocation core.

use crate::error::{function_error_response, lambda_error, service_error};
use crate::eventstream::{chunk, complete};
use crate::LambdaApi;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use petrel_core::api::{AsyncKind, Trigger, INVOCATION_ID_HEADER};
use petrel_core::{FunctionRef, DEFAULT_NAMESPACE};
use petrel_dataplane::trace::TraceContext;
use petrel_dataplane::{new_invocation_id, read_body, Answer, Invocation, Outcome, Payload};

#[derive(Debug, serde::Deserialize)]
pub(crate) struct LambdaQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

/// `{name}` may be a name, `name:qualifier`, or a function ARN with or without a qualifier; a
/// qualifier is `$LATEST`, a version number, or an alias (resolved to its version).
async fn target(api: &LambdaApi, name: &str, q: &LambdaQuery) -> Result<FunctionRef, Response> {
    let name = petrel_core::arn::function_name(name).unwrap_or(name);
    let (base, qualifier) = match name.split_once(':') {
        Some((b, q)) => (b, Some(q)),
        None => (name, q.qualifier.as_deref()),
    };
    let mut r = FunctionRef::parse(base, DEFAULT_NAMESPACE).map_err(|e| {
        service_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            &e.to_string(),
        )
    })?;
    let not_found = |what: &str| {
        service_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {base}:{what}"),
        )
    };
    match qualifier {
        None | Some("$LATEST") => {}
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => r.version = Some(n),
            Ok(_) => return Err(not_found(v)),
            Err(_) if is_alias_name(v) => {
                // The router picks the side of a weighted alias per call.
                match api.dataplane.alias_route(&r.namespace, &r.name, v).await {
                    Ok(Some(_)) => r.alias = Some(v.to_owned()),
                    Ok(None) => return Err(not_found(&format!("{v} (no such version or alias)"))),
                    Err(e) => return Err(lambda_error(e, "")),
                }
            }
            Err(_) => {
                return Err(service_error(
                    StatusCode::BAD_REQUEST,
                    "ValidationException",
                    &format!("Qualifier {v:?} is not $LATEST, a version number or an alias name"),
                ))
            }
        },
    }
    Ok(r)
}

pub use petrel_core::is_alias_name;

/// The answer with the request id Lambda puts on every answer.
fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-amzn-requestid", v.clone());
        resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
    }
    resp
}

/// The event of a handler's invocation: only Lambda handlers take `Invoke` (the core refuses
/// HTTP functions); the payload must be JSON (`InvalidRequestContentException`).
async fn invocation(api: &LambdaApi, id: &str, req: Request) -> Result<Invocation, Response> {
    let parent = TraceContext::from_headers(req.headers());
    let (parts, body) = read_body(req, api.dataplane.payload_limit())
        .await
        .map_err(|e| lambda_error(e, id))?;
    let mut inv = Invocation::new(
        Trigger::LambdaInvoke,
        Payload::Event {
            body,
            headers: parts.headers,
        },
    );
    inv.id = id.to_owned();
    inv.parent = parent;
    inv.events_only = true;
    Ok(inv)
}

pub(crate) async fn invoke(
    State(api): State<LambdaApi>,
    Path(name): Path<String>,
    Query(q): Query<LambdaQuery>,
    req: Request,
) -> Response {
    let id = new_invocation_id();
    let resp = match invoke_inner(&api, &name, &q, &id, req).await {
        Ok(r) | Err(r) => r,
    };
    with_request_id(resp, &id)
}

async fn invoke_inner(
    api: &LambdaApi,
    name: &str,
    q: &LambdaQuery,
    id: &str,
    req: Request,
) -> Result<Response, Response> {
    let r = target(api, name, q).await?;
    let executed = api
        .dataplane
        .version_of(&r)
        .await
        .map_err(|e| lambda_error(e, id))?
        .version;
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
    match invocation_type.as_str() {
        "RequestResponse" => {}
        "DryRun" => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            resp.headers_mut()
                .insert("x-amz-executed-version", HeaderValue::from(executed));
            return Ok(resp);
        }
        "Event" => {
            // Lambda answers an accepted event with a bare 202.
            let (id, _) =
                petrel_async::submit(&api.queue, &api.dataplane, &r, AsyncKind::Event, id, req)
                    .await
                    .map_err(|e| lambda_error(e, id))?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert(INVOCATION_ID_HEADER, v);
            }
            return Ok(resp);
        }
        other => {
            return Err(service_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!("InvocationType {other:?} is not one of RequestResponse, Event, DryRun"),
            ));
        }
    }
    let inv = invocation(api, id, req).await?;
    // LogType Tail: the invocation's own lines, collected as they are written.
    let tap = tail.then(|| api.logs.tap(id));
    let started = std::time::Instant::now();
    let result = api.dataplane.invoke(&r, inv).await;
    let log_result = match tap {
        Some(tap) => {
            // Output written just before the answer may still be in the pipe.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            Some(log_result(id, executed, &tap.lines(), started.elapsed()))
        }
        None => None,
    };
    let mut resp = match result {
        Ok(Answer { version, outcome }) => {
            let mut resp = match outcome {
                Outcome::Returned(b) => {
                    let mut resp = (StatusCode::OK, b).into_response();
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                Outcome::FunctionError { body, .. } => function_error_response(body),
                // Invoke answers the payload as it streams (the HTTP head, if any, is for
                // function URLs).
                Outcome::Streamed { body, .. } => Response::new(axum::body::Body::new(body)),
                Outcome::Http(resp) => resp.map(axum::body::Body::new),
            };
            resp.headers_mut()
                .insert("x-amz-executed-version", HeaderValue::from(version));
            resp
        }
        Err(f) => {
            let mut resp = lambda_error(f.error, id);
            resp.headers_mut().insert(
                "x-amz-executed-version",
                HeaderValue::from(f.version.unwrap_or(executed)),
            );
            resp
        }
    };
    if let Some(v) = log_result
        .as_ref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        resp.headers_mut().insert("x-amz-log-result", v);
    }
    Ok(resp)
}

/// `InvokeWithResponseStream`: the answer as an event stream of `PayloadChunk`s, as they come
/// when the function streams, ended by `InvokeComplete` (with the error, if it failed).
pub(crate) async fn invoke_stream(
    State(api): State<LambdaApi>,
    Path(name): Path<String>,
    Query(q): Query<LambdaQuery>,
    req: Request,
) -> Response {
    let id = new_invocation_id();
    let resp = async {
        let r = target(&api, &name, &q).await?;
        let inv = invocation(&api, &id, req).await?;
        let Answer { version, outcome } = api
            .dataplane
            .invoke(&r, inv)
            .await
            .map_err(|f| lambda_error(f.error, &id))?;
        let body = match outcome {
            Outcome::Returned(b) => {
                let mut all = chunk(&b).to_vec();
                all.extend_from_slice(&complete(None));
                axum::body::Body::from(all)
            }
            Outcome::FunctionError { error_type, body } => axum::body::Body::from(complete(Some(
                (&error_type, &String::from_utf8_lossy(&body)),
            ))),
            Outcome::Streamed { body, .. } => streamed(body),
            Outcome::Http(resp) => streamed(resp.into_body()),
        };
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        h.insert("x-amz-executed-version", HeaderValue::from(version));
        Ok::<_, Response>(resp)
    }
    .await;
    let resp = match resp {
        Ok(r) | Err(r) => r,
    };
    with_request_id(resp, &id)
}

/// Each piece as it comes; an error ends the stream with its details.
fn streamed(body: petrel_runtime::Body) -> axum::body::Body {
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
