//! The AWS Lambda Runtime API (`/2018-06-01/runtime/...`), served by Petrel for one instance on a
//! loopback port of its own (`AWS_LAMBDA_RUNTIME_API`). Invocations are queued here and taken by
//! the instance's `next` calls; its `response` and `error` calls complete them.

use crate::error::InvokeError;
use crate::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

const PREFIX: &str = "/2018-06-01/runtime";

/// A Lambda invocation's result: the handler's return value, the error it raised, or a response
/// it streams.
#[derive(Debug)]
pub enum LambdaOutcome {
    Success(Bytes),
    FunctionError {
        error_type: String,
        body: Bytes,
    },
    /// A response sent in streaming mode, passed on as it comes: the HTTP head its prelude gave
    /// (`awslambda.HttpResponseStream`), if any, and the body. An error the function reports
    /// after the first bytes, its deadline, or a size past the limit end the body with an error.
    Streamed {
        head: Option<StreamHead>,
        body: Body,
    },
}

/// The HTTP head a streamed response starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub cookies: Vec<String>,
}

/// The instance's init phase as the Runtime API sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InitState {
    Starting,
    Ready,
    Failed { error_type: String, message: String },
}

/// An invocation waiting to be taken by `next`.
#[derive(Debug)]
pub(crate) struct Pending {
    pub id: String,
    pub event: Bytes,
    pub deadline_ms: i64,
    pub trace_id: String,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

type Completion = oneshot::Sender<Result<LambdaOutcome, InvokeError>>;

struct Shared {
    queue_tx: mpsc::UnboundedSender<Pending>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
    /// Invocations taken by the instance, with their deadlines (ms since the epoch).
    inflight: Mutex<HashMap<String, (Completion, i64)>>,
    /// Invocations the runtime has taken with `next` (and not yet answered).
    delivered: Mutex<std::collections::HashSet<String>>,
    state: watch::Sender<InitState>,
    function_arn: String,
    response_limit: usize,
}

/// Where the Runtime API listens.
pub(crate) enum Listen {
    /// A new loopback port of the host.
    Host,
    /// A listener bound in the instance's network namespace before it starts.
    Now(std::net::TcpListener),
    /// A listener the instance makes in its own network namespace as it starts (in a user
    /// namespace), at [`petrel_sandbox::RUNTIME_API_ADDR`].
    Later(oneshot::Receiver<std::net::TcpListener>),
}

enum ListenerLater {
    Ready(tokio::net::TcpListener),
    Later(oneshot::Receiver<std::net::TcpListener>),
}

/// One instance's Runtime API endpoint. Dropping it stops the server.
pub(crate) struct Endpoint {
    shared: Arc<Shared>,
    pub(crate) addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Endpoint {
    /// Serves the Runtime API on a new loopback port of the host, or on a listener in the
    /// instance's own network namespace (see [`Listen`]).
    pub(crate) async fn bind(
        function_arn: String,
        response_limit: usize,
        listen: Listen,
    ) -> std::io::Result<Self> {
        let (listener, addr) = match listen {
            Listen::Host => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = l.local_addr()?;
                (ListenerLater::Ready(l), addr)
            }
            Listen::Now(l) => {
                l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(l)?;
                let addr = l.local_addr()?;
                (ListenerLater::Ready(l), addr)
            }
            Listen::Later(rx) => (
                ListenerLater::Later(rx),
                petrel_sandbox::RUNTIME_API_ADDR
                    .parse()
                    .expect("a valid address"),
            ),
        };
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(InitState::Starting);
        let shared = Arc::new(Shared {
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            inflight: Mutex::new(HashMap::new()),
            delivered: Mutex::default(),
            state,
            function_arn,
            response_limit,
        });
        let app = Router::new()
            .route(&format!("{PREFIX}/invocation/next"), get(next))
            .route(
                &format!("{PREFIX}/invocation/{{id}}/response"),
                post(response),
            )
            .route(&format!("{PREFIX}/invocation/{{id}}/error"), post(error))
            .route(&format!("{PREFIX}/init/error"), post(init_error))
            .fallback(|| async {
                runtime_error(
                    StatusCode::NOT_FOUND,
                    "UnknownRoute",
                    "not a Runtime API route",
                )
            })
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let listener = match listener {
                ListenerLater::Ready(l) => l,
                ListenerLater::Later(rx) => {
                    let Ok(l) = rx.await else { return };
                    let Ok(l) = l
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(l))
                    else {
                        return;
                    };
                    l
                }
            };
            // The instance's `next` waits on this connection: no small write may sit behind
            // Nagle's algorithm for the instance's delayed ACK.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            shared,
            addr,
            server,
        })
    }

    /// Waits until the instance's runtime is ready (its first `next`), or reported that its
    /// initialisation failed.
    pub(crate) async fn initialised(&self) -> Result<(), InvokeError> {
        let mut rx = self.shared.state.subscribe();
        let state = rx
            .wait_for(|s| *s != InitState::Starting)
            .await
            .map(|s| s.clone())
            .unwrap_or(InitState::Starting);
        match state {
            InitState::Ready => Ok(()),
            InitState::Failed {
                error_type,
                message,
            } => Err(InvokeError::InitFailed {
                message: format!("{error_type}: {message}"),
                error_type: Some(error_type),
            }),
            InitState::Starting => {
                Err(crate::error::init_failed("the Runtime API endpoint closed"))
            }
        }
    }

    /// Queues an invocation; the receiver completes when the instance answers.
    pub(crate) fn submit(
        &self,
        p: Pending,
    ) -> oneshot::Receiver<Result<LambdaOutcome, InvokeError>> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .inflight
            .lock()
            .unwrap()
            .insert(p.id.clone(), (tx, p.deadline_ms));
        let _ = self.shared.queue_tx.send(p);
        rx
    }

    /// Forgets an invocation that ended without an answer (timeout, crash).
    pub(crate) fn forget(&self, id: &str) {
        self.shared.inflight.lock().unwrap().remove(id);
        self.shared.delivered.lock().unwrap().remove(id);
    }

    /// Whether the runtime took the invocation with `next`: one it never took can be run
    /// elsewhere, as the function never saw it.
    pub(crate) fn delivered(&self, id: &str) -> bool {
        self.shared.delivered.lock().unwrap().contains(id)
    }
}

fn runtime_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"errorType": error_type, "errorMessage": message})),
    )
        .into_response()
}

async fn next(State(s): State<Arc<Shared>>) -> Response {
    s.state.send_if_modified(|st| {
        if *st == InitState::Starting {
            *st = InitState::Ready;
            true
        } else {
            false
        }
    });
    let pending = {
        let mut rx = s.queue_rx.lock().await;
        rx.recv().await
    };
    let Some(p) = pending else {
        return runtime_error(
            StatusCode::GONE,
            "InstanceStopping",
            "the instance is stopping",
        );
    };
    s.delivered.lock().unwrap().insert(p.id.clone());
    let mut h = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", &p.id);
    set("lambda-runtime-deadline-ms", &p.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &s.function_arn);
    set("lambda-runtime-trace-id", &p.trace_id);
    set("content-type", "application/json");
    if let Some(cc) = &p.client_context {
        set("lambda-runtime-client-context", cc);
    }
    if let Some(ci) = &p.cognito_identity {
        set("lambda-runtime-cognito-identity", ci);
    }
    (StatusCode::OK, h, p.event).into_response()
}

async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, ()> {
    axum::body::to_bytes(body, limit).await.map_err(|_| ())
}

fn complete(s: &Shared, id: &str, outcome: Result<LambdaOutcome, InvokeError>) -> Response {
    let tx = s.inflight.lock().unwrap().remove(id).map(|(tx, _)| tx);
    s.delivered.lock().unwrap().remove(id);
    match tx {
        Some(tx) => {
            let too_large = matches!(outcome, Err(InvokeError::ResponseTooLarge(_)));
            let _ = tx.send(outcome);
            if too_large {
                runtime_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    "the response is larger than the function's payload limit",
                )
            } else {
                (
                    StatusCode::ACCEPTED,
                    Json(serde_json::json!({"status": "OK"})),
                )
                    .into_response()
            }
        }
        None => runtime_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "no invocation in flight has this request id (it may have timed out)",
        ),
    }
}

async fn response(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let streaming = headers
        .get("lambda-runtime-function-response-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"streaming"));
    let deadline = s.inflight.lock().unwrap().get(&id).map(|e| e.1);
    match deadline {
        Some(deadline_ms) if streaming => stream_response(s, id, headers, body, deadline_ms).await,
        _ => {
            let outcome = match read_limited(body, s.response_limit).await {
                Ok(b) => Ok(LambdaOutcome::Success(b)),
                Err(()) => Err(InvokeError::ResponseTooLarge(s.response_limit)),
            };
            complete(&s, &id, outcome)
        }
    }
}

/// Most bytes a streamed response may carry (Lambda's default for streamed responses).
const STREAM_LIMIT: usize = 20 * 1024 * 1024;

/// A chunk of a streamed response on its way to the caller, or why the stream ended early.
type Chunk = Result<http_body::Frame<Bytes>, std::io::Error>;

/// The caller's end of a streamed response.
struct ChannelBody(mpsc::Receiver<Chunk>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

/// A response sent in streaming mode. Until its first byte of payload it is buffered, so that
/// a handler failing before it writes anything is a function error like any other; from then
/// on the caller gets the head and the chunks as they come, and an error reported in the
/// trailers, the deadline, or the size limit end the caller's body with an error (the gateway
/// then stops the instance).
async fn stream_response(
    s: Arc<Shared>,
    id: String,
    headers: HeaderMap,
    mut body: axum::body::Body,
    deadline_ms: i64,
) -> Response {
    use http_body_util::BodyExt;
    let is_http = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with(HTTP_INTEGRATION));
    let mut buf = bytes::BytesMut::new();
    let mut head: Option<StreamHead> = None;
    let first = loop {
        match body.frame().await {
            None => return complete(&s, &id, Ok(whole(buf.freeze(), is_http))),
            Some(Err(_)) => {
                return complete(
                    &s,
                    &id,
                    Err(InvokeError::BadResponse(
                        "the function's response stream broke".into(),
                    )),
                )
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if buf.len() > STREAM_LIMIT {
                        return complete(&s, &id, Err(InvokeError::ResponseTooLarge(STREAM_LIMIT)));
                    }
                    if is_http && head.is_none() {
                        let Some(at) = buf.windows(8).position(|w| w == [0u8; 8]) else {
                            continue;
                        };
                        head = Some(parse_head(&buf[..at]));
                        let _ = buf.split_to(at + 8);
                    }
                    if !buf.is_empty() {
                        break buf.split().freeze();
                    }
                }
                Err(frame) => {
                    let outcome = frame
                        .into_trailers()
                        .ok()
                        .and_then(|t| trailer_error(&t))
                        .unwrap_or_else(|| whole(buf.freeze(), is_http));
                    return complete(&s, &id, Ok(outcome));
                }
            },
        }
    };
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let _ = complete(
        &s,
        &id,
        Ok(LambdaOutcome::Streamed {
            head,
            body: Body::new(ChannelBody(rx)),
        }),
    );
    let mut sent = first.len();
    let mut open = tx.send(Ok(http_body::Frame::data(first))).await.is_ok();
    let left = (deadline_ms - crate::logs::now_ms()).max(0) as u64;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(left);
    let fail = |why: String| Err(std::io::Error::other(why));
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = tokio::time::sleep_until(deadline), if open => {
                let _ = tx.send(fail("the function did not finish its response within its timeout".into())).await;
                open = false;
                continue;
            }
        };
        match frame {
            None => break,
            Some(Err(_)) => {
                if open {
                    let _ = tx
                        .send(fail("the function's response stream broke".into()))
                        .await;
                }
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) if open => {
                    sent += d.len();
                    let chunk = if sent > STREAM_LIMIT {
                        open = false;
                        fail(format!(
                            "the response passed the limit of {STREAM_LIMIT} bytes"
                        ))
                    } else {
                        Ok(http_body::Frame::data(d))
                    };
                    // A caller that went away: the rest is read and dropped.
                    open &= tx.send(chunk).await.is_ok();
                }
                Ok(_) => {}
                Err(frame) => {
                    if let Some(LambdaOutcome::FunctionError { error_type, .. }) =
                        frame.into_trailers().ok().and_then(|t| trailer_error(&t))
                    {
                        if open {
                            let _ = tx
                                .send(fail(format!(
                                    "the function failed while streaming its response ({error_type})"
                                )))
                                .await;
                            open = false;
                        }
                    }
                }
            },
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}

/// The function error a streaming client reports in its trailers, if any.
fn trailer_error(t: &HeaderMap) -> Option<LambdaOutcome> {
    use base64::Engine;
    let kind = t
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())?;
    let body = t
        .get("lambda-runtime-function-error-body")
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).ok())
        .map(Bytes::from)
        .unwrap_or_else(|| {
            Bytes::from(
                serde_json::json!({"errorType": kind, "errorMessage": "the function failed while streaming its response"})
                    .to_string(),
            )
        });
    Some(LambdaOutcome::FunctionError {
        error_type: kind.to_owned(),
        body,
    })
}

/// The HTTP head of an `HttpResponseStream` prelude (`{"statusCode", "headers", "cookies"}`).
fn parse_head(prelude: &[u8]) -> StreamHead {
    let v: serde_json::Value = serde_json::from_slice(prelude).unwrap_or_default();
    StreamHead {
        status: v["statusCode"].as_u64().unwrap_or(200) as u16,
        headers: v["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        cookies: v["cookies"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A streamed response that ended before any payload: answered whole, an HTTP prelude as the
/// API Gateway-shaped result Petrel maps to an HTTP answer.
fn whole(bytes: Bytes, is_http: bool) -> LambdaOutcome {
    if is_http {
        if let Some(at) = bytes.windows(8).position(|w| w == [0u8; 8]) {
            use base64::Engine;
            let mut result: serde_json::Value =
                serde_json::from_slice(&bytes[..at]).unwrap_or_else(|_| serde_json::json!({}));
            result["body"] = base64::engine::general_purpose::STANDARD
                .encode(&bytes[at + 8..])
                .into();
            result["isBase64Encoded"] = true.into();
            return LambdaOutcome::Success(Bytes::from(result.to_string()));
        }
    }
    LambdaOutcome::Success(bytes)
}

/// The content type of a streamed response that starts with HTTP metadata (a function URL's
/// `awslambda.HttpResponseStream`): a JSON prelude, eight NUL bytes, then the body.
const HTTP_INTEGRATION: &str = "application/vnd.awslambda.http-integration-response";

async fn error(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let error_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unhandled")
        .to_owned();
    let outcome = match read_limited(body, s.response_limit).await {
        Ok(b) => Ok(LambdaOutcome::FunctionError {
            error_type,
            body: b,
        }),
        Err(()) => Err(InvokeError::ResponseTooLarge(s.response_limit)),
    };
    complete(&s, &id, outcome)
}

async fn init_error(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = read_limited(body, 1024 * 1024).await.unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let error_type = parsed["errorType"]
        .as_str()
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("Runtime.Unknown")
        .to_owned();
    let message = parsed["errorMessage"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    s.state.send_replace(InitState::Failed {
        error_type,
        message,
    });
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}
