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
        (name = "releases", description = "Aliases, weighted splits, rollouts, promotion between namespaces"),
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
pub async fn metrics(State(app): State<App>, caller: super::Caller) -> Response {
    let backlog = match app.store.async_backlog().await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("metrics without the async queue's depth: the store failed: {e}");
            None
        }
    };
    let mut text = app.dataplane.metrics().render(
        &app.dataplane,
        backlog.as_deref(),
        app.runtime.log_sink().dropped(),
    );
    if let Some(readable) = caller.namespaces(petrel_core::auth::Action::Read) {
        text = only_namespaces(&text, &readable);
    }
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

/// The exposition with the samples of other namespaces left out: a sample labelled
/// `namespace="X"` stays only when X is readable; comments and node-wide samples stay.
fn only_namespaces(text: &str, readable: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let keep = line.starts_with('#')
            || match line.find("namespace=\"") {
                None => true,
                Some(i) => {
                    let rest = &line[i + "namespace=\"".len()..];
                    let ns = rest.split('"').next().unwrap_or("");
                    readable.iter().any(|r| r == ns)
                }
            };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn other_namespaces_samples_are_left_out() {
        let text = "# TYPE petrel_invocations counter\n\
            petrel_invocations_total{namespace=\"a\",function=\"f\"} 1\n\
            petrel_invocations_total{namespace=\"b\",function=\"secret-name\"} 2\n\
            petrel_memory_budget_bytes 5\n# EOF\n";
        let out = super::only_namespaces(text, &["a".to_owned()]);
        assert!(out.contains("namespace=\"a\""), "{out}");
        assert!(!out.contains("secret-name"), "{out}");
        assert!(out.contains("petrel_memory_budget_bytes 5"));
        assert!(out.ends_with("# EOF\n"));
    }
}

/// The nodes of the cluster (this server alone outside cluster mode), the silent ones as `out`
/// (the owner only).
#[utoipa::path(get, path = "/v1/nodes", tag = "server",
    responses(
        (status = 200, description = "The nodes", body = petrel_core::cluster::NodeList),
        (status = 403, description = "Not the owner", body = petrel_core::error::ErrorBody),
    ))]
pub async fn nodes(
    State(app): State<App>,
    caller: super::Caller,
) -> super::ApiResult<Json<petrel_core::cluster::NodeList>> {
    caller.require_owner("listing the nodes")?;
    let list = match &app.cluster {
        Some(c) => petrel_core::cluster::NodeList {
            this_node: c.node_id.clone(),
            nodes: c.nodes(&app.store).await?,
        },
        None => {
            let (in_flight, instances, hot) = crate::cluster::local_load(&app.dataplane);
            let budget = app.dataplane.memory_budget();
            let id = app.worker_id.to_string();
            petrel_core::cluster::NodeList {
                this_node: id.clone(),
                nodes: vec![petrel_core::cluster::NodeInfo {
                    id,
                    address: format!("http://{}", app.addr),
                    petrel_version: env!("CARGO_PKG_VERSION").to_owned(),
                    state: petrel_core::cluster::NodeState::Up,
                    started_at: app.started_at,
                    heartbeat_age_ms: 0,
                    in_flight,
                    instances,
                    memory_used_mb: budget.used_mb(),
                    memory_limit_mb: budget.limit_mb(),
                    hot,
                }],
            }
        }
    };
    Ok(Json(list))
}

/// Whether this server should get traffic: its store answers and, in cluster mode, it has
/// joined and is not draining. `503` otherwise (a load balancer's or Kubernetes' readiness).
#[utoipa::path(get, path = "/readyz", tag = "server",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`"),
        (status = 503, description = "Not ready, with why", body = petrel_core::error::ErrorBody),
    ))]
pub async fn readyz(State(app): State<App>) -> Result<Json<serde_json::Value>, ErrorResponse> {
    let not_ready = |why: String| -> ErrorResponse {
        ApiError::new(ErrorCode::ShuttingDown, why)
            .with_retry_after(1)
            .into()
    };
    if let Err(e) = app.store.ping().await {
        return Err(not_ready(format!("the store does not answer: {e}")));
    }
    if let Some(c) = &app.cluster {
        if let Some(why) = c.not_ready() {
            return Err(not_ready(why));
        }
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}
