//! Functions: list, get, deploy, delete.

use super::{
    base_url, function_url, namespace, no_namespace, not_found, ApiResult, Caller, NsQuery,
};
use crate::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use petrel_core::api::{DeployResponse, FunctionDetail, FunctionList};
use petrel_core::auth::Action;
use petrel_core::error::ErrorBody;
use petrel_core::name::validate_name;
use petrel_core::{ApiError, ErrorCode};
use petrel_dataplane::body::{collect_limited, BodyError};

/// List functions, sorted by namespace and name.
#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    params(("namespace" = Option<String>, Query, description = "Only this namespace (default: every namespace)")),
    responses(
        (status = 200, description = "Functions, sorted by namespace and name", body = FunctionList),
        (status = 400, description = "An invalid namespace", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<FunctionList>> {
    // Listing without ?namespace= shows every namespace the caller may read.
    let filter = match &q {
        Ok(Query(NsQuery { namespace: Some(_) })) => Some(namespace(q)?),
        _ => None,
    };
    if let Some(ns) = &filter {
        caller.require(ns, Action::Read, || no_namespace(ns))?;
    }
    let mut functions = app
        .store
        .list_functions(filter.as_deref())
        .await
        .map_err(ApiError::from)?;
    if let Some(readable) = caller.namespaces(Action::Read) {
        functions.retain(|f| readable.contains(&f.namespace));
    }
    Ok(Json(FunctionList { functions }))
}

/// Get a function with all its versions (newest first).
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "The function's name"), NsQuery),
    responses(
        (status = 200, description = "The function", body = FunctionDetail),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn get(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<NsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Json<FunctionDetail>> {
    let ns = namespace(q)?;
    validate_name("function name", &name).map_err(ApiError::from)?;
    caller.require(&ns, Action::Read, || not_found(&name))?;
    let f = app
        .store
        .get_function(&ns, &name)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| not_found(&name))?;
    let versions = app
        .store
        .list_versions(&ns, &name)
        .await
        .map_err(ApiError::from)?;
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

/// Delete a function with its versions, aliases, logs, records and async work.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "The function's name"), NsQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let ns = namespace(q)?;
    validate_name("function name", &name).map_err(ApiError::from)?;
    caller.require(&ns, Action::Write, || not_found(&name))?;
    if !app.delete_function(&ns, &name).await? {
        return Err(not_found(&name).into());
    }
    app.audit(&caller, &ns, "function.delete", &name).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployQuery {
    /// The function's namespace (default: `default`).
    namespace: Option<String>,
    /// Move no alias: those that follow the latest version stay on the one they serve now.
    #[serde(default)]
    no_traffic: bool,
}

/// Deploy: create the function or add a version.
///
/// The body is a zip of the function directory with `petrel.toml` at its root (what `petrel
/// deploy` uploads). The manifest's name must equal `{name}`. Each deploy of changed code or
/// configuration creates a new immutable version; an identical one adds none.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "The function's name"), DeployQuery),
    request_body(content = Vec<u8>, description = "The zip", content_type = "application/zip"),
    responses(
        (status = 201, description = "The function was created", body = DeployResponse),
        (status = 200, description = "A version was added (or the package was unchanged)", body = DeployResponse),
        (status = 400, description = "An invalid manifest or package", body = ErrorBody),
        (status = 413, description = "Over the package limit", body = ErrorBody),
        (status = 429, description = "Over the namespace's max_functions or max_memory_mb quota", body = ErrorBody),
    ))]
pub async fn deploy(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<DeployQuery>, QueryRejection>,
    req: Request,
) -> ApiResult<Response> {
    let d = q.map_err(super::bad_query)?.0;
    let ns = namespace(Ok(Query(NsQuery {
        namespace: d.namespace.clone(),
    })))?;
    validate_name("function name", &name).map_err(ApiError::from)?;
    caller.require(&ns, Action::Write, || no_namespace(&ns))?;
    // A namespace comes into being with its first function when the caller may make it (the
    // owner, or anyone without authentication); others deploy into namespaces that exist.
    if !app
        .store
        .namespace_exists(&ns)
        .await
        .map_err(ApiError::from)?
    {
        if !caller.is_owner() {
            return Err(no_namespace(&ns).into());
        }
        app.store
            .create_namespace(&ns)
            .await
            .map_err(ApiError::from)?;
    }
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
    let body = app
        .deploy(&base, (ns.clone(), name.clone()), package, d.no_traffic)
        .await?;
    app.audit(
        &caller,
        &ns,
        "function.deploy",
        &format!("{name}:{}", body.version),
    )
    .await;
    let status = if body.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}
