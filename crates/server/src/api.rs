//! The control API under `/v1/`: deploy (upload a packaged directory), list, get, delete, logs,
//! and the OpenAPI document.

use crate::logs::ndjson;
use crate::App;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use petrel_core::api::{
    async_status, AsyncInvocationList, DeployResponse, FunctionDetail, FunctionList,
    InvocationList, ReplayRequest, ReplayResponse, Usage,
};
use petrel_core::name::validate_name;
use petrel_core::{ApiError, ErrorCode, Manifest, Runtime};
use petrel_dataplane::body::{collect_limited, BodyError};
use petrel_dataplane::{DeployedVersion, ErrorResponse};
use petrel_store::{ArtifactStore, StoreError};
use std::sync::Arc;

pub(crate) type ApiResult<T> = Result<T, ErrorResponse>;

/// An error as Petrel's own API answers it.
pub(crate) fn error_response(e: ApiError) -> Response {
    ErrorResponse(e).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct NsQuery {
    namespace: Option<String>,
}

fn namespace(q: Result<Query<NsQuery>, QueryRejection>) -> Result<String, ApiError> {
    let q = q.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let ns =
        q.0.namespace
            .unwrap_or_else(|| petrel_core::DEFAULT_NAMESPACE.to_owned());
    validate_name("namespace", &ns)?;
    Ok(ns)
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::InvalidPackage(m) => ApiError::new(ErrorCode::InvalidPackage, m),
        other => {
            tracing::error!(error = %other, "store failure");
            ApiError::internal()
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::FunctionNotFound,
        format!("no function named {name}; deploy it with `petrel deploy`, or list functions with `petrel ls`"),
    )
}

/// The base URL clients reached this server at, for the URLs we hand back.
fn base_url(headers: &HeaderMap, app: &App) -> String {
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}", app.addr),
    }
}

fn function_url(base: &str, ns: &str, name: &str) -> String {
    if ns == petrel_core::DEFAULT_NAMESPACE {
        format!("{base}/fn/{name}")
    } else {
        format!("{base}/fn/{name}?namespace={ns}")
    }
}

pub async fn list(
    State(app): State<App>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<FunctionList>> {
    // Listing without ?namespace= shows every namespace.
    let filter = match &q {
        Ok(Query(NsQuery { namespace: Some(_) })) => Some(namespace(q)?),
        _ => None,
    };
    let functions = app
        .store
        .list_functions(filter.as_deref())
        .await
        .map_err(store_error)?;
    Ok(Json(FunctionList { functions }))
}

pub async fn get(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<NsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Json<FunctionDetail>> {
    let ns = namespace(q)?;
    validate_name("function name", &name).map_err(ApiError::from)?;
    let f = app
        .store
        .get_function(&ns, &name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(&name))?;
    let versions = app
        .store
        .list_versions(&ns, &name)
        .await
        .map_err(store_error)?;
    Ok(Json(FunctionDetail {
        url: function_url(&base_url(&headers, &app), &ns, &name),
        namespace: f.namespace,
        name: f.name,
        latest_version: f.latest_version,
        created_at: f.created_at,
        updated_at: f.updated_at,
        versions,
    }))
}

pub async fn delete(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let ns = namespace(q)?;
    validate_name("function name", &name).map_err(ApiError::from)?;
    if !app
        .store
        .delete_function(&ns, &name)
        .await
        .map_err(store_error)?
    {
        return Err(not_found(&name).into());
    }
    app.dataplane.removed(&ns, &name);
    app.collect_garbage();
    Ok(StatusCode::NO_CONTENT)
}

/// Checks that the package holds what its runtime will look for, so a deploy fails now rather
/// than at the first request.
fn check_code(
    runtime: Runtime,
    handler: &str,
    code: &std::path::Path,
    env: &petrel_runtime::RuntimeEnv,
) -> Result<(), ApiError> {
    let missing = |what: String| Err(ApiError::new(ErrorCode::InvalidPackage, what));
    match runtime {
        Runtime::Python3 => {
            let (module, _) = handler.rsplit_once('.').unwrap_or((handler, ""));
            let rel = module.replace('.', "/");
            if !code.join(format!("{rel}.py")).is_file()
                && !code.join(&rel).join("__init__.py").is_file()
            {
                return missing(format!(
                    "handler {handler:?} needs {rel}.py in the package, and it is not there"
                ));
            }
        }
        Runtime::Nodejs => {
            let (module, _) = handler.rsplit_once('.').unwrap_or((handler, ""));
            if !["js", "mjs", "cjs"]
                .iter()
                .any(|e| code.join(format!("{module}.{e}")).is_file())
            {
                return missing(format!(
                    "handler {handler:?} needs {module}.js (or .mjs, .cjs) in the package, and it is not there"
                ));
            }
        }
        Runtime::Provided => {
            use std::os::unix::fs::PermissionsExt;
            let ok = std::fs::metadata(code.join("bootstrap"))
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if !ok {
                return missing(
                    "runtime provided needs an executable file named bootstrap at the root of the package (chmod +x bootstrap)".into(),
                );
            }
        }
        Runtime::Wasm => {
            let path = code.join(handler);
            if !path.is_file() {
                return missing(format!("handler {handler:?} is not in the package"));
            }
            // Validate and compile ahead of time, so the first request only loads it.
            let engine = env.wasm().map_err(|e| {
                tracing::error!(error = %e, "wasm engine unavailable");
                ApiError::internal()
            })?;
            engine
                .prepare(&path)
                .map_err(|m| ApiError::new(ErrorCode::InvalidPackage, format!("{handler}: {m}")))?;
        }
        Runtime::Http => {}
    }
    Ok(())
}

pub async fn deploy(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<NsQuery>, QueryRejection>,
    req: Request,
) -> ApiResult<Response> {
    let ns = namespace(q)?;
    validate_name("function name", &name).map_err(ApiError::from)?;
    let base = base_url(req.headers(), &app);
    let limit = app.config.package_limit;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the package is larger than the limit of {} MiB; leave build output and dependencies you do not need out of the function directory",
                limit / (1024 * 1024)
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let package: Bytes = match collect_limited(req.into_body(), limit, declared).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Err(too_large().into()),
        Err(BodyError::Read(e)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the upload could not be read: {e}"),
            )
            .into())
        }
    };
    let body = deploy_bytes(&app, &base, ns, name, package).await?;
    let status = if body.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

/// Deploys a package (a zip with its `petrel.toml`) as function `name` of `ns`: a new version,
/// or none if it equals the latest.
pub(crate) async fn deploy_bytes(
    app: &App,
    base: &str,
    ns: String,
    name: String,
    package: Bytes,
) -> ApiResult<DeployResponse> {
    let artifacts = app.artifacts.clone();
    let runtime_env = app.dataplane.env().clone();
    let path_name = name.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let text = ArtifactStore::read_manifest(&package).map_err(store_error)?;
        let spec = Manifest::from_toml(&text)?.validate()?;
        if spec.name != path_name {
            return Err(ApiError::new(
                ErrorCode::InvalidManifest,
                format!(
                    "the manifest names the function {:?} but the request deploys {path_name:?}; make them the same",
                    spec.name
                ),
            ));
        }
        let digest = artifacts.put_package(&package).map_err(store_error)?;
        check_code(spec.runtime, &spec.handler, &artifacts.code_dir(&digest), &runtime_env)?;
        Ok((spec, digest, package.len() as u64))
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "deploy task failed");
        ApiError::internal()
    })??;
    let (spec, digest, size) = prepared;
    // The manifest is inside the package, so an equal digest means an equal version: deploying
    // the same directory twice (a restart with --deploy, a CI rerun) adds nothing.
    if let Some(f) = app
        .store
        .get_function(&ns, &name)
        .await
        .map_err(store_error)?
    {
        let latest = app
            .store
            .get_version(&ns, &name, f.latest_version)
            .await
            .map_err(store_error)?;
        if latest.is_some_and(|v| v.digest == digest && v.spec == spec) {
            // Another server on the same database may have deployed it: serve it here too.
            if app.dataplane.latest_version(&ns, &name) != Some(f.latest_version) {
                app.dataplane.deployed(DeployedVersion {
                    namespace: ns.clone(),
                    name: name.clone(),
                    version: f.latest_version,
                    code_dir: app.artifacts.code_dir(&digest),
                    digest: digest.clone(),
                    spec: Arc::new(spec),
                });
            }
            return Ok(DeployResponse {
                url: function_url(base, &ns, &name),
                namespace: ns,
                name,
                version: f.latest_version,
                digest,
                created: false,
                unchanged: true,
            });
        }
    }
    let (version, created) = app
        .store
        .create_version(&ns, &spec, &digest, size)
        .await
        .map_err(store_error)?;
    app.dataplane.deployed(DeployedVersion {
        namespace: ns.clone(),
        name: name.clone(),
        version,
        code_dir: app.artifacts.code_dir(&digest),
        digest: digest.clone(),
        spec: Arc::new(spec),
    });
    // Deploy compiled the component already; loading it now takes a millisecond and spares the
    // first request the wait.
    app.dataplane.preload_latest(&ns, &name).await;
    tracing::info!(namespace = %ns, function = %name, version, "deployed");
    Ok(DeployResponse {
        url: function_url(base, &ns, &name),
        namespace: ns,
        name,
        version,
        digest,
        created,
        unchanged: false,
    })
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct InvocationsQuery {
    namespace: Option<String>,
    outcome: Option<String>,
    /// Only invocations from this long ago on (`10m`, `2h`).
    since: Option<String>,
    /// At most this many, newest first (default 100).
    limit: Option<u32>,
}

/// The namespace of a request about a function that must exist, or the error saying why not.
async fn existing_function(
    app: &App,
    name: &str,
    namespace: Option<&str>,
) -> Result<String, ApiError> {
    let ns = namespace
        .unwrap_or(petrel_core::DEFAULT_NAMESPACE)
        .to_owned();
    validate_name("namespace", &ns)?;
    validate_name("function name", name)?;
    match app
        .store
        .get_function(&ns, name)
        .await
        .map_err(store_error)?
    {
        Some(_) => Ok(ns),
        None => Err(not_found(name)),
    }
}

fn since_ms(
    since: Option<&str>,
    default_ago: Option<std::time::Duration>,
) -> Result<i64, ApiError> {
    let ago = match since {
        Some(s) => Some(humantime::parse_duration(s).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("since={s:?} is not a duration ({e}); write it like 10m, 2h or 7d"),
            )
        })?),
        None => default_ago,
    };
    Ok(ago
        .map(|d| petrel_store::now_ms() - d.as_millis() as i64)
        .unwrap_or(0))
}

pub async fn invocations(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<InvocationsQuery>, QueryRejection>,
) -> ApiResult<Json<InvocationList>> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let ns = existing_function(&app, &name, q.namespace.as_deref()).await?;
    let since = since_ms(q.since.as_deref(), None)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let invocations = app
        .store
        .list_invocations(&ns, &name, q.outcome.as_deref(), since, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(InvocationList { invocations }))
}

/// An invocation by id: an async one with its status, attempts and result; else a synchronous
/// one's record, with its status (`succeeded` or `failed`) added.
pub async fn invocation(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if let Some(a) = app.store.get_async(&id).await.map_err(store_error)? {
        return Ok(Json(serde_json::to_value(a).expect("json")));
    }
    let record = app.store.get_invocation(&id).await.map_err(store_error)?;
    record
        .map(|r| {
            let status = if r.outcome == "success" {
                async_status::SUCCEEDED
            } else {
                async_status::FAILED
            };
            let mut v = serde_json::to_value(r).expect("json");
            v["status"] = status.into();
            Json(v)
        })
        .ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvocationNotFound,
            format!(
                "no invocation {id}: the id is in the X-Petrel-Invocation-Id header of every invoke answer; records are kept for the log retention period"
            ),
        )
        .into()
    })
}

/// Cancels an async invocation that has not ended: it will not run again and nothing is
/// delivered. An attempt running on this server is stopped now; on another, at its heartbeat.
pub async fn cancel_invocation(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<petrel_core::api::AsyncInvocation>> {
    match app
        .store
        .cancel_async(&id, petrel_store::now_ms())
        .await
        .map_err(store_error)?
    {
        petrel_store::Cancel::Cancelled { was, now } => {
            app.dataplane
                .metrics()
                .async_finished(&now.namespace, &now.function, async_status::CANCELLED);
            // Running here: stop it now. Running on another server: that server stops it at its
            // next heartbeat.
            if was == async_status::RUNNING {
                app.dataplane
                    .stop_invocation(&id, "its async invocation was cancelled");
            }
            tracing::info!(%id, function = %now.function, %was, "async invocation cancelled");
            Ok(Json(now))
        }
        petrel_store::Cancel::Ended(a) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{id} has already ended ({}); only queued, running and dead invocations can be cancelled",
                a.status
            ),
        )
        .into()),
        petrel_store::Cancel::NotFound => Err(ApiError::new(
            ErrorCode::InvocationNotFound,
            format!(
                "no async invocation {id}; a synchronous invocation ends with its answer and cannot be cancelled (see `petrel inv ls NAME --async`)"
            ),
        )
        .into()),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct UsageQuery {
    namespace: Option<String>,
    /// From this long ago (default 24h) until now.
    since: Option<String>,
}

pub async fn usage(
    State(app): State<App>,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Json<Usage>> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    if let Some(ns) = &q.namespace {
        validate_name("namespace", ns).map_err(ApiError::from)?;
    }
    let since = since_ms(
        q.since.as_deref(),
        Some(std::time::Duration::from_secs(24 * 3600)),
    )?;
    let until = petrel_store::now_ms() + 1;
    let functions = app
        .store
        .usage(q.namespace.as_deref(), since, until)
        .await
        .map_err(store_error)?;
    Ok(Json(Usage {
        since,
        until,
        total_invocations: functions.iter().map(|f| f.invocations).sum(),
        total_gb_seconds: functions.iter().map(|f| f.gb_seconds).sum(),
        functions,
    }))
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LogsQuery {
    namespace: Option<String>,
    /// Only lines newer than this long ago (`10m`, `2h`).
    since: Option<String>,
    /// Only lines of this invocation.
    invocation: Option<String>,
    /// The newest N lines (default 100 when `since` is not given).
    tail: Option<u32>,
    /// Keep the answer open and stream new lines as they come.
    #[serde(default)]
    follow: bool,
}

pub async fn logs(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let ns = existing_function(&app, &name, q.namespace.as_deref()).await?;
    let since_ts = since_ms(q.since.as_deref(), None)?;
    let (limit, tail) = match (q.tail, q.since.is_some()) {
        (Some(n), _) => (n.min(100_000), true),
        (None, true) => (100_000, false),
        (None, false) => (100, true),
    };
    // Subscribe before reading so nothing written in between is missed.
    let live = q.follow.then(|| app.logs.subscribe());
    let stored = app
        .store
        .read_logs(
            &ns,
            &name,
            0,
            since_ts,
            q.invocation.as_deref(),
            limit,
            tail,
        )
        .await
        .map_err(store_error)?;
    let last = stored.last().map(|(id, _)| *id).unwrap_or(0);
    let head: Vec<Result<Bytes, std::io::Error>> =
        stored.iter().map(|(_, l)| Ok(ndjson(l))).collect();
    let head = futures_util::stream::iter(head);
    let body = match live {
        None => Body::from_stream(head),
        Some(rx) => {
            let invocation = q.invocation.clone();
            let live = futures_util::stream::unfold(rx, move |mut rx| {
                let (ns, name, invocation) = (ns.clone(), name.clone(), invocation.clone());
                async move {
                    loop {
                        match rx.recv().await {
                            Ok((id, l)) => {
                                if id > last
                                    && l.namespace == ns
                                    && l.function == name
                                    && (invocation.is_none() || l.invocation == invocation)
                                {
                                    return Some((Ok::<_, std::io::Error>(ndjson(&l)), rx));
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(skipped = n, "a log follower fell behind");
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Body::from_stream(head.chain(live))
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

pub async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("../openapi.json"),
    )
        .into_response()
}

/// Prometheus metrics (OpenMetrics text format).
pub async fn metrics(State(app): State<App>) -> Response {
    let backlog = match app.store.async_backlog().await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("metrics without the async queue's depth: the store failed: {e}");
            None
        }
    };
    let text = app
        .dataplane
        .metrics()
        .render(&app.dataplane, backlog.as_deref());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn no_route(req: Request) -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::RouteNotFound,
        format!(
            "no route for {} {}; functions answer under /fn/NAME/..., the control API under /v1/ (see /v1/openapi.json)",
            req.method(),
            req.uri().path()
        ),
    ))
}

pub async fn wrong_method(req: Request) -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}; see /v1/openapi.json for the methods each route takes",
            req.method(),
            req.uri().path()
        ),
    ))
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct AsyncQuery {
    namespace: Option<String>,
    /// Only this status: queued, running, succeeded, failed, dead.
    status: Option<String>,
    /// At most this many, newest first (default 100).
    limit: Option<u32>,
}

fn check_status(status: Option<&str>) -> Result<(), ApiError> {
    use async_status::*;
    match status {
        None => Ok(()),
        Some(s) if [QUEUED, RUNNING, SUCCEEDED, FAILED, DEAD, CANCELLED].contains(&s) => Ok(()),
        Some(s) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "status {s:?} is not one of queued, running, succeeded, failed, dead, cancelled"
            ),
        )),
    }
}

/// A function's async invocations, newest first.
pub async fn async_invocations(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<AsyncQuery>, QueryRejection>,
) -> ApiResult<Json<AsyncInvocationList>> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    check_status(q.status.as_deref())?;
    let ns = existing_function(&app, &name, q.namespace.as_deref()).await?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let invocations = app
        .store
        .list_async(&ns, &name, q.status.as_deref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(AsyncInvocationList { invocations }))
}

/// A function's dead-letter list: async invocations whose retries ran out, oldest last.
pub async fn dead_letters(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<AsyncQuery>, QueryRejection>,
) -> ApiResult<Json<AsyncInvocationList>> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let ns = existing_function(&app, &name, q.namespace.as_deref()).await?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let invocations = app
        .store
        .list_async(&ns, &name, Some(async_status::DEAD), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(AsyncInvocationList { invocations }))
}

/// Queues dead letters again with fresh attempts: the ids given, or all of them.
pub async fn replay(
    State(app): State<App>,
    Path(name): Path<String>,
    q: Result<Query<AsyncQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<Json<ReplayResponse>> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let ns = existing_function(&app, &name, q.namespace.as_deref()).await?;
    let req: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the body must be {{\"ids\": [...]}} or empty for all: {e}"),
            )
        })?
    };
    let replayed = app
        .store
        .replay_dead(&ns, &name, &req.ids, petrel_store::now_ms())
        .await
        .map_err(store_error)?;
    if let Some(missing) = req.ids.iter().find(|id| !replayed.contains(id)) {
        if replayed.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvocationNotFound,
                format!("{missing} is not in the dead-letter list of {name}; see `petrel dlq ls {name}`"),
            )
            .into());
        }
    }
    app.queue.wake_for(&ns, &name);
    tracing::info!(function = %name, replayed = replayed.len(), "dead letters replayed");
    Ok(Json(ReplayResponse { replayed }))
}
