//! The web console (`/console`): three static files built into the binary, which talk to the
//! `/v1` API with the user's key like any other client; and `/v1/series`, the per-minute hour
//! its charts draw (kept in memory by the data plane, see `petrel_dataplane::series`).

use super::{namespace, no_namespace, ApiResult, Caller, NsQuery};
use crate::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use petrel_core::auth::Action;
use petrel_core::error::ErrorBody;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// Only the console's own files, no inline script, and no other origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The console's page (log in with an API key; every view is of the `/v1` API).
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "The console's page", content_type = "text/html")))]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The console's script and style sheet.
#[utoipa::path(get, path = "/console/{file}", tag = "console",
    params(("file" = String, Path, description = "console.js or console.css")),
    responses(
        (status = 200, description = "The file"),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
pub async fn file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "" | "index.html" => asset("text/html; charset=utf-8", INDEX),
        "console.js" => asset("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => asset("text/css; charset=utf-8", STYLE),
        other => petrel_gateway::ErrorResponse::from(petrel_core::ApiError::new(
            petrel_core::ErrorCode::RouteNotFound,
            format!("the console has no file {other:?}: it serves /console, /console/console.js and /console/console.css"),
        ))
        .into_response(),
    }
}

/// The last hour of every function of the namespace invoked in it, minute by minute, as this
/// node saw it: invocations, errors and the p99 duration.
#[utoipa::path(get, path = "/v1/series", tag = "functions",
    params(NsQuery),
    responses(
        (status = 200, description = "`{\"functions\": {NAME: {start_ms, invocations[60], errors[60], p99_ms[60]}}}`"),
        (status = 404, description = "No such namespace (or none the caller may read)", body = ErrorBody),
    ))]
pub async fn series(
    State(app): State<App>,
    caller: Caller,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let ns = namespace(q)?;
    caller.require(&ns, Action::Read, || no_namespace(&ns))?;
    let hour = app
        .dataplane
        .metrics()
        .series()
        .hour(&ns, petrel_dataplane::series::now_minute());
    Ok(Json(serde_json::json!({ "functions": hour })))
}
