//! The server's own routes: health, metrics, the OpenAPI document, and the answers to routes and
//! methods that do not exist.

use crate::App;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use petrel_core::{ApiError, ErrorCode};
use petrel_gateway::ErrorResponse;

/// The document's frame; its paths come from the routes themselves (see [`super::routes`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Petrel API",
        version = "1",
        description = "Control API (/v1/...) and invoke gateway (/fn/...) of a Petrel server. Every non-2xx answer produced by Petrel itself carries the Error body and an X-Petrel-Error header with the code; a function's own error carries X-Petrel-Function-Error instead. AWS Lambda's API (/2015-03-31/...) is described by AWS."
    ),
    tags(
        (name = "functions", description = "Deploy, list, inspect, delete; logs"),
        (name = "invoke", description = "Synchronous invocation"),
        (name = "async", description = "Async invocation, the queue and dead letters"),
        (name = "invocations", description = "Invocation records and usage"),
        (name = "triggers", description = "Event triggers: state, pause and resume, dead letters"),
        (name = "server", description = "Health, metrics, this document"),
    )
)]
pub(super) struct ApiDoc;

/// This document, as JSON.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "server",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        app.openapi.as_ref().clone(),
    )
        .into_response()
}

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(app): State<App>) -> Response {
    let backlog = match app.store.async_backlog().await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("metrics without the async queue's depth: the store failed: {e}");
            None
        }
    };
    let text = app.dataplane.metrics().render(
        &app.dataplane,
        backlog.as_deref(),
        app.runtime.log_sink().dropped(),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Whether the server answers.
#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub(crate) async fn no_route(req: Request) -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::RouteNotFound,
        format!(
            "no route for {} {}; functions answer under /fn/NAME/..., the control API under /v1/ (see /v1/openapi.json)",
            req.method(),
            req.uri().path()
        ),
    ))
}

pub(crate) async fn wrong_method(req: Request) -> ErrorResponse {
    ErrorResponse(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}; see /v1/openapi.json for the methods each route takes",
            req.method(),
            req.uri().path()
        ),
    ))
}
