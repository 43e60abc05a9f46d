//! Invocations: records of synchronous ones, async ones with their status and result, the
//! dead-letter list and its replay, cancelling, and metered usage.

use super::{bad_query, existing_function, since_ms, ApiResult, Caller};
use crate::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use bytes::Bytes;
use petrel_core::api::{
    AsyncInvocation, AsyncInvocationList, AsyncStatus, InvocationList, InvocationOutcome,
    InvocationRecord, ReplayRequest, ReplayResponse, Usage,
};
use petrel_core::auth::Action;
use petrel_core::error::ErrorBody;
use petrel_core::name::validate_name;
use petrel_core::{ApiError, ErrorCode};

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvocationsQuery {
    namespace: Option<String>,
    /// Only invocations of this outcome (`success`, `function_error`, `timeout`, ...).
    outcome: Option<String>,
    /// Only invocations from this long ago on (`10m`, `2h`).
    since: Option<String>,
    /// At most this many, newest first (default 100).
    limit: Option<u32>,
}

/// A function's invocation records, newest first.
#[utoipa::path(get, path = "/v1/functions/{name}/invocations", tag = "invocations",
    params(("name" = String, Path, description = "The function's name"), InvocationsQuery),
    responses(
        (status = 200, description = "Invocation records, newest first", body = InvocationList),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn invocations(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<InvocationsQuery>, QueryRejection>,
) -> ApiResult<Json<InvocationList>> {
    let Query(q) = q.map_err(bad_query)?;
    let ns = existing_function(&app, &caller, Action::Read, &name, q.namespace.as_deref()).await?;
    let since = since_ms(q.since.as_deref(), None)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let invocations = app
        .store
        .list_invocations(&ns, &name, q.outcome.as_deref(), since, limit)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(InvocationList { invocations }))
}

/// A synchronous invocation's record, with its status added (`succeeded` or `failed`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct RecordWithStatus {
    #[serde(flatten)]
    record: InvocationRecord,
    status: AsyncStatus,
}

/// An invocation: an async one with its status, attempts and result; else a synchronous one's
/// record with a status added.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations",
    params(("id" = String, Path, description = "The invocation's id (X-Petrel-Invocation-Id)")),
    responses(
        (status = 200, description = "The invocation", body = AsyncInvocation),
        (status = 404, description = "No such invocation", body = ErrorBody),
    ))]
pub async fn invocation(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(id)): petrel_gateway::Checked<Path<String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let missing = || {
        ApiError::new(
            ErrorCode::InvocationNotFound,
            format!(
                "no invocation {id}: the id is in the X-Petrel-Invocation-Id header of every invoke answer; records are kept for the log retention period"
            ),
        )
    };
    if let Some(a) = app.store.get_async(&id).await.map_err(ApiError::from)? {
        caller.require(&a.namespace, Action::Read, missing)?;
        return Ok(Json(serde_json::to_value(a).expect("json")));
    }
    let record = app
        .store
        .get_invocation(&id)
        .await
        .map_err(ApiError::from)?;
    let Some(record) = record else {
        return Err(missing().into());
    };
    caller.require(&record.namespace, Action::Read, missing)?;
    let status = if record.outcome == InvocationOutcome::Success {
        AsyncStatus::Succeeded
    } else {
        AsyncStatus::Failed
    };
    Ok(Json(
        serde_json::to_value(RecordWithStatus { record, status }).expect("json"),
    ))
}

/// Cancels an async invocation that has not ended (queued, waiting for a retry, running, or
/// dead): it will not run again and nothing is delivered. A running attempt is stopped: at once
/// on this server, at its next heartbeat on another.
#[utoipa::path(delete, path = "/v1/invocations/{id}", tag = "async",
    params(("id" = String, Path, description = "The async invocation's id")),
    responses(
        (status = 200, description = "Cancelled", body = AsyncInvocation),
        (status = 404, description = "No such async invocation", body = ErrorBody),
        (status = 409, description = "It has already ended", body = ErrorBody),
    ))]
pub async fn cancel_invocation(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(id)): petrel_gateway::Checked<Path<String>>,
) -> ApiResult<Json<AsyncInvocation>> {
    let missing = || {
        ApiError::new(
            ErrorCode::InvocationNotFound,
            format!(
                "no async invocation {id}; a synchronous invocation ends with its answer and cannot be cancelled (see `petrel inv ls NAME --async`)"
            ),
        )
    };
    let Some(found) = app.store.get_async(&id).await.map_err(ApiError::from)? else {
        return Err(missing().into());
    };
    caller.require(&found.namespace, Action::Write, missing)?;
    app.audit(
        &caller,
        &found.namespace,
        "invocation.cancel",
        &format!("{}/{id}", found.function),
    )
    .await;
    match app
        .store
        .cancel_async(&id, petrel_store::now_ms())
        .await
        .map_err(ApiError::from)?
    {
        petrel_store::Cancel::Cancelled { was, now } => {
            app.dataplane.metrics().async_finished(
                &now.namespace,
                &now.function,
                AsyncStatus::Cancelled,
            );
            // Running here: stop it now. Running on another server: that server stops it at its
            // next heartbeat.
            if was == AsyncStatus::Running {
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
        petrel_store::Cancel::NotFound => Err(missing().into()),
    }
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Only this namespace (default: every namespace).
    namespace: Option<String>,
    /// From this long ago (default 24h) until now.
    since: Option<String>,
}

/// Metered use per function: invocations, errors, billed time and GB-seconds.
#[utoipa::path(get, path = "/v1/usage", tag = "invocations",
    params(UsageQuery),
    responses((status = 200, description = "Usage per function, and the totals", body = Usage)))]
pub async fn usage(
    State(app): State<App>,
    caller: Caller,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Json<Usage>> {
    let Query(q) = q.map_err(bad_query)?;
    if let Some(ns) = &q.namespace {
        validate_name("namespace", ns).map_err(ApiError::from)?;
    }
    let since = since_ms(
        q.since.as_deref(),
        Some(std::time::Duration::from_secs(24 * 3600)),
    )?;
    let until = petrel_store::now_ms() + 1;
    let readable = caller.namespaces(Action::Read);
    if let (Some(ns), Some(readable)) = (&q.namespace, &readable) {
        if !readable.contains(ns) {
            return Err(super::no_namespace(ns).into());
        }
    }
    let mut functions = app
        .store
        .usage(q.namespace.as_deref(), since, until)
        .await
        .map_err(ApiError::from)?;
    if let Some(readable) = &readable {
        functions.retain(|f| readable.contains(&f.namespace));
    }
    Ok(Json(Usage {
        since,
        until,
        total_invocations: functions.iter().map(|f| f.invocations).sum(),
        total_gb_seconds: functions.iter().map(|f| f.gb_seconds).sum(),
        functions,
    }))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsyncQuery {
    namespace: Option<String>,
    /// Only this status: queued, running, succeeded, failed, dead, cancelled.
    status: Option<String>,
    /// At most this many, newest first (default 100).
    limit: Option<u32>,
}

impl AsyncQuery {
    fn status(&self) -> Result<Option<AsyncStatus>, ApiError> {
        self.status
            .as_deref()
            .map(|s| {
                s.parse().map_err(|e: String| {
                    ApiError::new(ErrorCode::InvalidRequest, format!("status {e}"))
                })
            })
            .transpose()
    }
}

/// A function's async invocations, newest first.
#[utoipa::path(get, path = "/v1/functions/{name}/async", tag = "async",
    params(("name" = String, Path, description = "The function's name"), AsyncQuery),
    responses(
        (status = 200, description = "Async invocations, newest first", body = AsyncInvocationList),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn async_invocations(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<AsyncQuery>, QueryRejection>,
) -> ApiResult<Json<AsyncInvocationList>> {
    let Query(q) = q.map_err(bad_query)?;
    let status = q.status()?;
    let ns = existing_function(&app, &caller, Action::Read, &name, q.namespace.as_deref()).await?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let invocations = app
        .store
        .list_async(&ns, &name, status, limit)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(AsyncInvocationList { invocations }))
}

/// A function's dead-letter list: async invocations whose retries ran out.
#[utoipa::path(get, path = "/v1/functions/{name}/dlq", tag = "async",
    params(("name" = String, Path, description = "The function's name"), AsyncQuery),
    responses(
        (status = 200, description = "Dead letters, newest first", body = AsyncInvocationList),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn dead_letters(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<AsyncQuery>, QueryRejection>,
) -> ApiResult<Json<AsyncInvocationList>> {
    let Query(q) = q.map_err(bad_query)?;
    let ns = existing_function(&app, &caller, Action::Read, &name, q.namespace.as_deref()).await?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let invocations = app
        .store
        .list_async(&ns, &name, Some(AsyncStatus::Dead), limit)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(AsyncInvocationList { invocations }))
}

/// Queue dead letters again with fresh attempts: the ids given, or all of them.
#[utoipa::path(post, path = "/v1/functions/{name}/dlq/replay", tag = "async",
    params(("name" = String, Path, description = "The function's name"), AsyncQuery),
    request_body(content = ReplayRequest, description = "The ids; empty for all", content_type = "application/json"),
    responses(
        (status = 200, description = "The ids queued again", body = ReplayResponse),
        (status = 404, description = "No such function, or none of the ids is a dead letter", body = ErrorBody),
    ))]
pub async fn replay(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<AsyncQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<Json<ReplayResponse>> {
    let Query(q) = q.map_err(bad_query)?;
    let ns = existing_function(&app, &caller, Action::Write, &name, q.namespace.as_deref()).await?;
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
    app.audit(&caller, &ns, "dlq.replay", &name).await;
    let replayed = app
        .store
        .replay_dead(&ns, &name, &req.ids, petrel_store::now_ms())
        .await
        .map_err(ApiError::from)?;
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
