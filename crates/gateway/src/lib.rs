//! Petrel's own HTTP ways in, each a translation to and from the invocation core
//! ([`petrel_dataplane::DataPlane::invoke`]):
//!
//! - `ANY /fn/{name}/{*path}`: the request as sent (its path the function's own); HTTP
//!   functions see it as is, Lambda handlers as an API Gateway v2 event;
//! - `POST /v1/functions/{name}/invoke`: the body is the event, the answer the handler's value
//!   (what `petrel invoke` uses); `?async=true` queues it;
//! - `ANY /async-fn/{name}/{*path}`: the request committed to the async queue, answered `202`.
//!
//! It also holds the one mapping of Petrel's errors to HTTP ([`ErrorResponse`]). It knows
//! nothing of pools or instances (the data plane) nor of AWS's API (`petrel-aws`).

#![forbid(unsafe_code)]

mod error;

pub use error::ErrorResponse;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use error::answer;
use petrel_async::AsyncQueue;
use petrel_core::api::{
    AsyncAccepted, AsyncKind, Trigger, DUPLICATE_HEADER, INVOCATION_ID_HEADER, VERSION_HEADER,
};
use petrel_core::auth::{
    claims_header, looks_like_jwt, principal_of, Action, Authenticator, InvokeAuth,
    JWT_CLAIMS_HEADER,
};
use petrel_core::{ApiError, ErrorCode, FunctionRef};
use petrel_dataplane::trace::TraceContext;
use petrel_dataplane::{new_invocation_id, read_body, Answer, DataPlane, Invocation, Payload};
use std::net::SocketAddr;

/// An extractor whose rejection (a path that does not decode, a query that does not parse)
/// answers in the contract's shape: `400 invalid_request` with the error body and header.
pub struct Checked<E>(pub E);

fn invalid_route(why: &str) -> Response {
    ErrorResponse(ApiError::new(
        ErrorCode::InvalidRequest,
        format!("the request's path or query is not valid ({why}); percent-encode it as UTF-8"),
    ))
    .into_response()
}

impl<S, T> axum::extract::FromRequestParts<S> for Checked<Path<T>>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(Checked)
            .map_err(|e| invalid_route(&e.body_text()))
    }
}

impl<S, T> axum::extract::FromRequestParts<S> for Checked<Query<T>>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(Checked)
            .map_err(|e| invalid_route(&e.body_text()))
    }
}

/// What the gateway's handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub dataplane: DataPlane,
    pub queue: AsyncQueue,
    /// Checks callers of functions whose `invoke_auth` is not `public`.
    pub auth: std::sync::Arc<dyn Authenticator>,
}

/// The request's target with its version decided by the router (an alias's split, the caller's
/// pin and sticky key), then authorized against that version's `invoke_auth`.
async fn route_and_authorize(
    gw: &Gateway,
    target: FunctionRef,
    req: &mut Request,
) -> Result<FunctionRef, ApiError> {
    let hints = petrel_dataplane::RouteHints::from_headers(req.headers())?;
    let keyed = req.headers().contains_key(header::AUTHORIZATION);
    let decided = match gw
        .dataplane
        .route(&target, &hints)
        .await
        .map_err(|e| hidden_unless_keyed(gw, keyed, e))?
    {
        std::borrow::Cow::Owned(r) => Some(r),
        std::borrow::Cow::Borrowed(_) => None,
    };
    let routed = decided.unwrap_or(target);
    authorize(gw, &routed, req).await?;
    Ok(routed)
}

/// What a caller without a key hears of an unknown function (or version, or alias): that it
/// needs a key, as a known one does, so that names do not leak.
fn hidden_unless_keyed(gw: &Gateway, keyed: bool, e: ApiError) -> ApiError {
    let unknown = matches!(
        e.code,
        ErrorCode::FunctionNotFound | ErrorCode::VersionNotFound
    );
    if gw.auth.enabled() && !keyed && unknown {
        petrel_core::auth::missing_key()
    } else {
        e
    }
}

/// Lets a request through to `target` when the function's `invoke_auth` allows its caller,
/// and takes the caller's API key off the request (a function never sees its callers' keys).
/// Without a key, an unknown function answers as one that needs a key does, so that names do
/// not leak to callers who are not known; with a key, one of a namespace the key holds no role
/// in answers as unknown. A `jwt` function takes a JWT of the server's issuer, whose claims it
/// finds in [`JWT_CLAIMS_HEADER`] (and Lambda handlers in `requestContext.authorizer.jwt`), or
/// an API key with `invoker`, for the services that call it.
async fn authorize(gw: &Gateway, target: &FunctionRef, req: &mut Request) -> Result<(), ApiError> {
    // Only Petrel puts claims on a request: a caller's own are dropped whatever the mode.
    req.headers_mut().remove(JWT_CLAIMS_HEADER);
    if !gw.auth.enabled() {
        return Ok(());
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let version = gw
        .dataplane
        .version_of(target)
        .await
        .map_err(|e| hidden_unless_keyed(gw, authorization.is_some(), e))?;
    let mode = version.spec.invoke_auth;
    if mode == InvokeAuth::Public {
        return Ok(());
    }
    if mode == InvokeAuth::Jwt {
        let token = authorization.as_deref().and_then(petrel_core::auth::bearer);
        match token {
            Some(t) if looks_like_jwt(t) => {
                let claims = gw.auth.verify_jwt(t).await?;
                let value = HeaderValue::from_str(&claims_header(&claims)).map_err(|_| {
                    ApiError::new(ErrorCode::Unauthorized, "this JWT's claims cannot be handed on")
                })?;
                // The token stays on the request: the function may pass it on to what it calls.
                req.headers_mut().insert(JWT_CLAIMS_HEADER, value);
                return Ok(());
            }
            Some(_) => {}
            None => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "this function needs a JWT of the server's issuer (or an API key with invoker): send `Authorization: Bearer TOKEN`",
                ))
            }
        }
    }
    let principal = principal_of(gw.auth.as_ref(), authorization.as_deref())
        .await?
        .ok_or_else(petrel_core::auth::missing_key)?;
    principal.require(&target.namespace, Action::Invoke, || {
        petrel_dataplane::not_found(target)
    })?;
    req.headers_mut().remove(header::AUTHORIZATION);
    Ok(())
}

/// The gateway's routes; merge them into the server's router.
pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/v1/functions/{name}/invoke", post(raw_invoke))
        .route("/fn/{name}", any(fn_root))
        .route("/fn/{name}/", any(fn_root))
        .route("/fn/{name}/{*path}", any(fn_path))
        .route("/async-fn/{name}", any(async_root))
        .route("/async-fn/{name}/", any(async_root))
        .route("/async-fn/{name}/{*path}", any(async_path))
}

/// The gateway's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(raw_invoke, fn_path, async_path))]
pub struct ApiDoc;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    /// The function's namespace (default: `default`).
    namespace: Option<String>,
    /// The raw invoke only: queue the event and answer `202` with its id (see docs/async.md).
    #[serde(default, rename = "async")]
    #[param(rename = "async")]
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

    /// The function `name` (`name[.namespace][:version|alias]`) names in this query's namespace.
    fn target(&self, name: &str) -> Result<FunctionRef, ApiError> {
        let ns = self
            .namespace
            .as_deref()
            .unwrap_or(petrel_core::DEFAULT_NAMESPACE);
        Ok(FunctionRef::parse(name, ns)?)
    }
}

/// An invocation of the request's kind, continuing its caller's trace, from its address.
fn invocation(id: &str, trigger: Trigger, payload: Payload, req_parts: &RequestInfo) -> Invocation {
    let mut inv = Invocation::new(trigger, payload);
    inv.id = id.to_owned();
    inv.parent = req_parts.parent;
    inv.source_ip = req_parts.source_ip;
    inv
}

/// What the gateway reads off a request besides its payload.
struct RequestInfo {
    parent: Option<TraceContext>,
    source_ip: Option<std::net::IpAddr>,
}

impl RequestInfo {
    fn of(req: &Request) -> Self {
        Self {
            parent: TraceContext::from_headers(req.headers()),
            source_ip: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        }
    }
}

/// The core's answer as HTTP, stamped with the invocation's id and the version that ran.
fn answered(id: &str, answer: Answer) -> Response {
    let Answer { version, outcome } = answer;
    let mut resp = outcome.into_response().map(axum::body::Body::new);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(INVOCATION_ID_HEADER, v);
    }
    h.insert(VERSION_HEADER, HeaderValue::from(version));
    resp
}

/// Raw synchronous invocation.
///
/// The body is the event (JSON; empty means `{}`). For Lambda-style runtimes the answer is the
/// handler's return value as JSON; for `http` and `wasm` functions the body is POSTed to `/`
/// and the function's answer is returned as is. With `?async=true` the event is committed to
/// the async queue and answered `202`.
#[utoipa::path(
    post,
    path = "/v1/functions/{name}/invoke",
    tag = "invoke",
    params(
        ("name" = String, Path, description = "name, name.namespace, name:version, name:alias or name.namespace:alias"),
        InvokeQuery,
    ),
    request_body(content = serde_json::Value, description = "The event", content_type = "application/json"),
    responses(
        (status = 200, description = "The handler's return value (X-Petrel-Invocation-Id and X-Petrel-Version say which invocation and version)"),
        (status = 202, description = "Committed to the async queue", body = AsyncAccepted),
        (status = 500, description = "The handler raised: X-Petrel-Function-Error names the error type"),
        (status = "4XX", description = "Refused by Petrel (X-Petrel-Error names the code)", body = petrel_core::error::ErrorBody),
        (status = "5XX", description = "Petrel's own error (X-Petrel-Error names the code; 503 carries Retry-After)", body = petrel_core::error::ErrorBody),
    )
)]
async fn raw_invoke(
    State(gw): State<Gateway>,
    Checked(Path(name)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<InvokeQuery>>,
    mut req: Request,
) -> Response {
    let id = new_invocation_id();
    let result = async {
        let target = route_and_authorize(&gw, q.target(&name)?, &mut req).await?;
        if q.is_async()? {
            return submit(&gw, &target, AsyncKind::Event, &id, req).await;
        }
        let info = RequestInfo::of(&req);
        let (parts, body) = read_body(req, gw.dataplane.payload_limit()).await?;
        let payload = Payload::Event {
            body,
            headers: parts.headers,
        };
        let inv = invocation(&id, Trigger::Invoke, payload, &info);
        gw.dataplane
            .invoke(&target, inv)
            .await
            .map(|a| answered(&id, a))
            .map_err(|f| f.error)
    }
    .await;
    answer(gw.dataplane.metrics(), &id, result)
}

/// Synchronous invocation over HTTP: the request as sent.
///
/// HTTP functions and wasm components see the request with the function's own path
/// (`/fn/NAME/a/b?x=1` is `/a/b?x=1`); Lambda handlers get an API Gateway v2 event and may
/// answer with `{statusCode, headers, body}`. Every method is accepted.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/fn/{name}/{path}",
    tag = "invoke",
    params(
        ("name" = String, Path, description = "name, name.namespace, name:version, name:alias or name.namespace:alias"),
        ("path" = String, Path, description = "The rest of the path, as the function sees it"),
        InvokeQuery,
    ),
    responses(
        (status = 200, description = "The function's answer, as it gave it"),
        (status = "4XX", description = "Refused by Petrel (X-Petrel-Error names the code)", body = petrel_core::error::ErrorBody),
        (status = "5XX", description = "Petrel's own error, or the function's (X-Petrel-Function-Error)", body = petrel_core::error::ErrorBody),
    )
)]
async fn fn_path(
    State(gw): State<Gateway>,
    Checked(Path((name, path))): Checked<Path<(String, String)>>,
    Checked(Query(q)): Checked<Query<InvokeQuery>>,
    req: Request,
) -> Response {
    fn_any(gw, name, path, q, req).await
}

async fn fn_root(
    State(gw): State<Gateway>,
    Checked(Path(name)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<InvokeQuery>>,
    req: Request,
) -> Response {
    fn_any(gw, name, String::new(), q, req).await
}

async fn fn_any(
    gw: Gateway,
    name: String,
    rest: String,
    q: InvokeQuery,
    mut req: Request,
) -> Response {
    let id = new_invocation_id();
    let result = async {
        let target = route_and_authorize(&gw, q.target(&name)?, &mut req).await?;
        let info = RequestInfo::of(&req);
        let req = with_function_path(req, &rest)?;
        let inv = invocation(&id, Trigger::Http, Payload::Http(req), &info);
        gw.dataplane
            .invoke(&target, inv)
            .await
            .map(|a| answered(&id, a))
            .map_err(|f| f.error)
    }
    .await;
    answer(gw.dataplane.metrics(), &id, result)
}

/// The request with the path and query the function sees: `/fn/{name}/a/b?x=1` becomes
/// `/a/b?x=1`.
fn with_function_path(req: Request, rest: &str) -> Result<Request, ApiError> {
    let mut uri = format!("/{rest}");
    if let Some(q) = req.uri().query() {
        uri.push('?');
        uri.push_str(q);
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = uri.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the request path is not a valid URI",
        )
    })?;
    Ok(Request::from_parts(parts, body))
}

/// Asynchronous invocation: the request committed to the queue.
///
/// Answered `202` with `{"id"}` and `Location: /v1/invocations/{id}` once the request is
/// stored; `X-Callback-Url` and `Idempotency-Key` are honoured (see docs/async.md).
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/async-fn/{name}/{path}",
    tag = "async",
    params(
        ("name" = String, Path, description = "name, name.namespace, name:version, name:alias or name.namespace:alias"),
        ("path" = String, Path, description = "The rest of the path, as the function will see it"),
        InvokeQuery,
    ),
    responses(
        (status = 202, description = "Committed to the async queue", body = AsyncAccepted),
        (status = "4XX", description = "Refused by Petrel (X-Petrel-Error names the code)", body = petrel_core::error::ErrorBody),
        (status = "5XX", description = "Not stored: send it again", body = petrel_core::error::ErrorBody),
    )
)]
async fn async_path(
    State(gw): State<Gateway>,
    Checked(Path((name, path))): Checked<Path<(String, String)>>,
    Checked(Query(q)): Checked<Query<InvokeQuery>>,
    req: Request,
) -> Response {
    async_any(gw, name, path, q, req).await
}

async fn async_root(
    State(gw): State<Gateway>,
    Checked(Path(name)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<InvokeQuery>>,
    req: Request,
) -> Response {
    async_any(gw, name, String::new(), q, req).await
}

async fn async_any(
    gw: Gateway,
    name: String,
    rest: String,
    q: InvokeQuery,
    mut req: Request,
) -> Response {
    let id = new_invocation_id();
    let result = async {
        let target = route_and_authorize(&gw, q.target(&name)?, &mut req).await?;
        let req = with_function_path(req, &rest)?;
        submit(&gw, &target, AsyncKind::Http, &id, req).await
    }
    .await;
    answer(gw.dataplane.metrics(), &id, result)
}

/// Commits a request to the async queue: `202 Accepted` with `{"id": ...}` and where to follow
/// it.
async fn submit(
    gw: &Gateway,
    target: &FunctionRef,
    kind: AsyncKind,
    id: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let (id, duplicate) =
        petrel_async::submit(&gw.queue, &gw.dataplane, target, kind, id, req).await?;
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
    Ok(resp)
}

/// The gateway's routes in-process, over a data plane of in-memory instances and a real async
/// queue on SQLite.
#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use petrel_core::{BoxFuture, Manifest};
    use petrel_dataplane::testing::FakeStarter;
    use petrel_dataplane::{DeployedVersion, VersionSource};
    use std::sync::Arc;
    use tower::ServiceExt;

    struct NoOlderVersions;

    impl VersionSource for NoOlderVersions {
        fn load(
            &self,
            _: &str,
            _: &str,
            _: u32,
        ) -> BoxFuture<'_, anyhow::Result<Option<DeployedVersion>>> {
            Box::pin(async { Ok(None) })
        }
    }

    /// A gateway serving `web`, an HTTP function whose instances echo what they get.
    async fn gateway() -> (Router, Gateway, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = petrel_store::Store::open_sqlite(&dir.path().join("p.db"))
            .await
            .unwrap();
        let (dp, _records) = DataPlane::new(
            Arc::new(FakeStarter::default()),
            Arc::new(NoOlderVersions),
            1024,
        );
        let spec = Manifest::from_toml("name = \"web\"\nruntime = \"http\"\nhandler = \"serve\"\n")
            .unwrap()
            .validate()
            .unwrap();
        dp.deployed(DeployedVersion {
            namespace: "default".into(),
            name: "web".into(),
            version: 1,
            digest: "d".into(),
            spec: Arc::new(spec),
            code_dir: "/nonexistent".into(),
        });
        let gw = Gateway {
            dataplane: dp,
            queue: AsyncQueue::new(store, petrel_async::AsyncConfig::default()),
            auth: Arc::new(petrel_core::auth::NoAuth),
        };
        (routes().with_state(gw.clone()), gw, dir)
    }

    /// Keys by token: `inv` invokes in `default`, `view` only reads it, `other` invokes in
    /// namespace `b`.
    #[derive(Debug)]
    struct FixedKeys;

    impl Authenticator for FixedKeys {
        fn enabled(&self) -> bool {
            true
        }
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<petrel_core::auth::Principal, ApiError>> {
            use petrel_core::auth::{KeyGrant, Principal, Role};
            let grant = |ns: &str, role| {
                Ok(Principal::Key(KeyGrant {
                    id: token.to_owned(),
                    owner: false,
                    roles: [(ns.to_owned(), role)].into_iter().collect(),
                }))
            };
            Box::pin(async move {
                match token {
                    "inv" => grant("default", Role::Invoker),
                    "view" => grant("default", Role::Viewer),
                    "other" => grant("b", Role::Invoker),
                    _ => Err(ApiError::new(ErrorCode::Unauthorized, "unknown key")),
                }
            })
        }
        fn sigv4_key<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<(String, petrel_core::auth::Principal)>, ApiError>>
        {
            Box::pin(async { Ok(None) })
        }
    }

    async fn call_as(router: &Router, uri: &str, token: Option<&str>) -> (u16, String, String) {
        let mut b = http::Request::builder().method("GET").uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let resp = router
            .clone()
            .oneshot(b.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get("x-petrel-error")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, code, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_key_function_takes_invokers_of_its_namespace_and_never_shows_them_the_key() {
        let (_, mut gw, _dir) = gateway().await;
        gw.auth = Arc::new(FixedKeys);
        let router = routes().with_state(gw);
        let (status, _, body) = call_as(&router, "/fn/web/x", Some("inv")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(call_as(&router, "/fn/web/x", None).await.1, "unauthorized");
        assert_eq!(
            call_as(&router, "/fn/web/x", Some("bad")).await.1,
            "unauthorized"
        );
        assert_eq!(
            call_as(&router, "/fn/web/x", Some("view")).await.1,
            "forbidden"
        );
        // A key of another tenant is told the function does not exist, as for an unknown one.
        let (_, code, hidden) = call_as(&router, "/fn/web/x", Some("other")).await;
        let (_, _, unknown) = call_as(&router, "/fn/nope/x", Some("inv")).await;
        assert_eq!(code, "function_not_found");
        assert_eq!(hidden.replace("web", "nope"), unknown);
        // Without a key an unknown function answers as a known one does.
        assert_eq!(call_as(&router, "/fn/nope/x", None).await.1, "unauthorized");
        assert_eq!(
            call_as(&router, "/async-fn/web/x", None).await.1,
            "unauthorized"
        );
    }

    async fn call(
        router: &Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (http::response::Parts, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let (parts, body) = router.clone().oneshot(req).await.unwrap().into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn fn_hands_the_function_its_own_path_and_stamps_the_answer() {
        let (router, _gw, _dir) = gateway().await;
        let (parts, body) = call(&router, "PUT", "/fn/web/a/b?x=1", "hi").await;
        assert_eq!(parts.status, 200, "{body}");
        assert_eq!(body, "PUT /a/b?x=1\nhi");
        assert!(parts.headers.contains_key(INVOCATION_ID_HEADER));
        assert_eq!(parts.headers[VERSION_HEADER], "1");
        assert_eq!(call(&router, "GET", "/fn/web", "").await.1, "GET /\n");
        assert_eq!(call(&router, "GET", "/fn/web:1/", "").await.1, "GET /\n");
    }

    #[tokio::test]
    async fn the_raw_invoke_posts_the_event_to_an_http_functions_root() {
        let (router, _gw, _dir) = gateway().await;
        let (parts, body) = call(&router, "POST", "/v1/functions/web/invoke", r#"{"k": 1}"#).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "POST /\n{\"k\": 1}");
    }

    #[tokio::test]
    async fn refusals_carry_the_error_body_the_header_and_the_invocation_id_and_are_counted() {
        let (router, gw, _dir) = gateway().await;
        let (parts, body) = call(&router, "GET", "/fn/nope/x", "").await;
        assert_eq!(parts.status, 404);
        assert_eq!(parts.headers["x-petrel-error"], "function_not_found");
        assert!(parts.headers.contains_key(INVOCATION_ID_HEADER));
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["error"]["code"], "function_not_found");
        let (parts, _) = call(&router, "GET", "/fn/web:7/", "").await;
        assert_eq!(parts.headers["x-petrel-error"], "version_not_found");
        let (parts, _) = call(
            &router,
            "POST",
            "/v1/functions/web/invoke?async=maybe",
            "{}",
        )
        .await;
        assert_eq!(parts.headers["x-petrel-error"], "invalid_request");
        // Over the payload limit of 1 KiB.
        let (parts, _) = call(
            &router,
            "POST",
            "/v1/functions/web/invoke",
            &"x".repeat(2048),
        )
        .await;
        assert_eq!(parts.status, 413);
        let metrics = gw.dataplane.metrics().render(&gw.dataplane, None, 0);
        for code in [
            "function_not_found",
            "version_not_found",
            "invalid_request",
            "payload_too_large",
        ] {
            assert!(
                metrics.contains(&format!(
                    "petrel_requests_rejected_total{{code=\"{code}\"}} 1"
                )),
                "{code}: {metrics}"
            );
        }
    }

    #[tokio::test]
    async fn async_submissions_are_committed_before_their_202() {
        let (router, gw, _dir) = gateway().await;
        let (parts, body) = call(&router, "POST", "/async-fn/web/p?q=1", "payload").await;
        assert_eq!(parts.status, 202, "{body}");
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            parts.headers["location"],
            format!("/v1/invocations/{id}").as_str()
        );
        let (parts, body) =
            call(&router, "POST", "/v1/functions/web/invoke?async=true", "{}").await;
        assert_eq!(parts.status, 202, "{body}");
        let store = gw.queue.store();
        let queued = store
            .list_async(
                "default",
                "web",
                Some(petrel_core::api::AsyncStatus::Queued),
                10,
            )
            .await
            .unwrap();
        assert_eq!(queued.len(), 2);
        assert!(queued.iter().any(|a| a.id == id));
        let (parts, _) = call(&router, "POST", "/async-fn/nope/", "{}").await;
        assert_eq!(parts.headers["x-petrel-error"], "function_not_found");
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Any path and query on the invoke routes is served or refused in the contract's
            /// shape: never a 5xx of Petrel's own, never a panic.
            #[test]
            fn any_route_is_answered_in_the_contracts_shape(
                prefix in prop::sample::select(vec!["/fn/", "/async-fn/", "/v1/functions/"]),
                name in "[a-zA-Z0-9.:%_-]{0,20}|\\PC{0,8}",
                rest in "[a-zA-Z0-9/%._~-]{0,20}",
                query in "[a-zA-Z0-9=&%._-]{0,30}",
                method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
            ) {
                let uri = if prefix == "/v1/functions/" {
                    format!("{prefix}{name}/invoke?{query}")
                } else {
                    format!("{prefix}{name}/{rest}?{query}")
                };
                let Ok(uri) = uri.parse::<http::Uri>() else { return Ok(()) };
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let (status, code) = rt.block_on(async {
                    let (router, _gw, _dir) = gateway().await;
                    let req = http::Request::builder()
                        .method(method)
                        .uri(uri)
                        .body(axum::body::Body::from("{}"))
                        .unwrap();
                    let resp = router.oneshot(req).await.unwrap();
                    let code = resp.headers().get("x-petrel-error").map(|v| v.to_str().unwrap().to_owned());
                    (resp.status().as_u16(), code)
                });
                prop_assert!(status < 500, "{status} {code:?}");
                // The gateway's routes answer in the contract's shape; what matches none of them
                // (an empty name, a GET of the raw invoke) falls to the server's own 404 and 405
                // answers, which this router alone does not have (the e2e suite checks those).
                if status >= 400 && !matches!(status, 404 | 405) {
                    prop_assert!(code.is_some(), "{status} without X-Petrel-Error");
                }
            }
        }
    }
}
