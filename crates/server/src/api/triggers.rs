//! Event triggers: each trigger of a function's latest version with its state, pausing and
//! resuming one (on every server sharing the store), and the records one gave up on.

use super::{bad_query, not_found, ApiResult, Caller};
use crate::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use petrel_core::api::{TriggerDeadLetterView, TriggerDeadLetters, TriggerList, TriggerStatus};
use petrel_core::auth::Action;
use petrel_core::error::ErrorBody;
use petrel_core::name::validate_name;
use petrel_core::trigger::TriggerSpec;
use petrel_core::{ApiError, ErrorCode};

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookQuery {
    namespace: Option<String>,
    /// The trigger's secret, as `GET /v1/functions/{name}/triggers` shows it in `webhook`.
    token: Option<String>,
}

/// How many records a webhook delivery handed to the trigger (settled when this answers).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WebhookAccepted {
    pub accepted: usize,
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TriggerQuery {
    namespace: Option<String>,
    /// At most this many dead letters, newest first (default 100).
    limit: Option<u32>,
}

/// The namespace, and the triggers of the function's latest version.
async fn triggers_of(
    app: &App,
    caller: &Caller,
    action: Action,
    name: &str,
    namespace: Option<&str>,
) -> Result<(String, Vec<TriggerSpec>), ApiError> {
    let ns = namespace
        .unwrap_or(petrel_core::DEFAULT_NAMESPACE)
        .to_owned();
    validate_name("namespace", &ns)?;
    validate_name("function name", name)?;
    caller.require(&ns, action, || not_found(name))?;
    let f = app
        .store
        .get_function(&ns, name)
        .await?
        .ok_or_else(|| not_found(name))?;
    let v = app
        .store
        .get_version(&ns, name, f.latest_version)
        .await?
        .ok_or_else(|| not_found(name))?;
    Ok((ns, v.spec.triggers))
}

fn no_trigger(function: &str, trigger: &str) -> ApiError {
    ApiError::new(
        ErrorCode::FunctionNotFound,
        format!("function {function} has no trigger named {trigger}; list them with `petrel trigger ls {function}`"),
    )
}

/// A function's event triggers: state, position or lag, and counts.
#[utoipa::path(get, path = "/v1/functions/{name}/triggers", tag = "triggers",
    params(("name" = String, Path, description = "The function's name"), TriggerQuery),
    responses(
        (status = 200, description = "The triggers of the latest version", body = TriggerList),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<TriggerQuery>, QueryRejection>,
) -> ApiResult<Json<TriggerList>> {
    let Query(q) = q.map_err(bad_query)?;
    let (ns, specs) =
        triggers_of(&app, &caller, Action::Read, &name, q.namespace.as_deref()).await?;
    let mut list = app.triggers.list(&ns, &name, &specs).await.map_err(|e| {
        tracing::error!(error = %e, "could not read trigger states");
        ApiError::internal()
    })?;
    // A webhook's URL carries its secret: whoever has it can deliver events, so a viewer does
    // not get it.
    if caller.check(&ns, Action::Write).is_err() {
        for t in &mut list.triggers {
            t.webhook = None;
        }
    }
    Ok(Json(list))
}

async fn set_paused(
    app: &App,
    caller: &Caller,
    name: &str,
    trigger: &str,
    namespace: Option<&str>,
    paused: bool,
) -> Result<TriggerStatus, ApiError> {
    let (ns, specs) = triggers_of(app, caller, Action::Write, name, namespace).await?;
    if !specs.iter().any(|s| s.name == trigger) {
        return Err(no_trigger(name, trigger));
    }
    app.audit(
        caller,
        &ns,
        if paused {
            "trigger.pause"
        } else {
            "trigger.resume"
        },
        &format!("{name}/{trigger}"),
    )
    .await;
    app.store
        .set_trigger_paused(&ns, name, trigger, paused)
        .await?;
    app.triggers.reconcile_function(&ns, name).await;
    app.changed(crate::cluster::kind::FUNCTION, &ns, name).await;
    let list = app.triggers.list(&ns, name, &specs).await.map_err(|e| {
        tracing::error!(error = %e, "could not read trigger states");
        ApiError::internal()
    })?;
    list.triggers
        .into_iter()
        .find(|t| t.name == trigger)
        .ok_or_else(|| no_trigger(name, trigger))
}

/// Pause a trigger: its consumer stops (on every server, within a few seconds) and keeps its
/// position; the source keeps what arrives meanwhile.
#[utoipa::path(post, path = "/v1/functions/{name}/triggers/{trigger}/pause", tag = "triggers",
    params(("name" = String, Path, description = "The function's name"), ("trigger" = String, Path, description = "The trigger's name"), TriggerQuery),
    responses(
        (status = 200, description = "The trigger, paused", body = TriggerStatus),
        (status = 404, description = "No such function or trigger", body = ErrorBody),
    ))]
pub async fn pause(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path((name, trigger))): petrel_gateway::Checked<Path<(String, String)>>,
    q: Result<Query<TriggerQuery>, QueryRejection>,
) -> ApiResult<Json<TriggerStatus>> {
    let Query(q) = q.map_err(bad_query)?;
    Ok(Json(
        set_paused(&app, &caller, &name, &trigger, q.namespace.as_deref(), true).await?,
    ))
}

/// Resume a paused trigger from its committed position.
#[utoipa::path(post, path = "/v1/functions/{name}/triggers/{trigger}/resume", tag = "triggers",
    params(("name" = String, Path, description = "The function's name"), ("trigger" = String, Path, description = "The trigger's name"), TriggerQuery),
    responses(
        (status = 200, description = "The trigger, running again", body = TriggerStatus),
        (status = 404, description = "No such function or trigger", body = ErrorBody),
    ))]
pub async fn resume(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path((name, trigger))): petrel_gateway::Checked<Path<(String, String)>>,
    q: Result<Query<TriggerQuery>, QueryRejection>,
) -> ApiResult<Json<TriggerStatus>> {
    let Query(q) = q.map_err(bad_query)?;
    Ok(Json(
        set_paused(
            &app,
            &caller,
            &name,
            &trigger,
            q.namespace.as_deref(),
            false,
        )
        .await?,
    ))
}

/// The records a trigger gave up on (`on_failure = "dlq"`), newest first.
#[utoipa::path(get, path = "/v1/functions/{name}/triggers/{trigger}/dlq", tag = "triggers",
    params(("name" = String, Path, description = "The function's name"), ("trigger" = String, Path, description = "The trigger's name"), TriggerQuery),
    responses(
        (status = 200, description = "Dead letters, newest first", body = TriggerDeadLetters),
        (status = 404, description = "No such function or trigger", body = ErrorBody),
    ))]
pub async fn dead_letters(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path((name, trigger))): petrel_gateway::Checked<Path<(String, String)>>,
    q: Result<Query<TriggerQuery>, QueryRejection>,
) -> ApiResult<Json<TriggerDeadLetters>> {
    let Query(q) = q.map_err(bad_query)?;
    let (ns, specs) =
        triggers_of(&app, &caller, Action::Read, &name, q.namespace.as_deref()).await?;
    if !specs.iter().any(|s| s.name == trigger) {
        return Err(no_trigger(&name, &trigger).into());
    }
    let letters = app
        .store
        .trigger_dead_letters(&ns, &name, &trigger, q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::from)?;
    Ok(Json(TriggerDeadLetters {
        dead_letters: letters
            .into_iter()
            .map(|l| TriggerDeadLetterView {
                record: serde_json::from_str(&l.record)
                    .unwrap_or(serde_json::Value::String(l.record)),
                id: l.id,
                position: l.position,
                error: l.error,
                attempts: l.attempts,
                dead_at: l.dead_at,
            })
            .collect(),
    }))
}

/// An object store's event notifications (S3's format) for an s3 trigger in notify mode,
/// authenticated by the trigger's secret. Answers once the records are settled (delivered, or
/// sent to `on_failure`): a store that retries until it gets a 2xx loses nothing.
#[utoipa::path(post, path = "/v1/functions/{name}/triggers/{trigger}/s3", tag = "triggers",
    params(("name" = String, Path, description = "The function's name"), ("trigger" = String, Path, description = "The trigger's name"), WebhookQuery),
    request_body(content = Object, description = "An S3 event notification: {\"Records\": [...]}"),
    responses(
        (status = 200, description = "The records were settled", body = WebhookAccepted),
        (status = 400, description = "Not an S3 event notification", body = ErrorBody),
        (status = 404, description = "No such trigger in notify mode, or the wrong token", body = ErrorBody),
        (status = 503, description = "The trigger is not running on this server (paused): send it again later", body = ErrorBody),
    ))]
pub async fn s3_notification(
    State(app): State<App>,
    petrel_gateway::Checked(Path((name, trigger))): petrel_gateway::Checked<Path<(String, String)>>,
    q: Result<Query<WebhookQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> ApiResult<Json<WebhookAccepted>> {
    use petrel_triggers::NotifyError;
    let Query(q) = q.map_err(bad_query)?;
    let ns = q
        .namespace
        .unwrap_or_else(|| petrel_core::DEFAULT_NAMESPACE.to_owned());
    validate_name("namespace", &ns).map_err(ApiError::from)?;
    validate_name("function name", &name).map_err(ApiError::from)?;
    let token = q.token.unwrap_or_default();
    match app
        .triggers
        .s3_notification(&ns, &name, &trigger, &token, &body)
        .await
    {
        Ok(accepted) => Ok(Json(WebhookAccepted { accepted })),
        // An unknown trigger and a wrong token answer alike.
        Err(NotifyError::NotFound) => Err(ApiError::new(
            ErrorCode::FunctionNotFound,
            format!("no s3 trigger {trigger} of function {name} in notify mode takes this token; `petrel trigger ls {name}` shows its webhook"),
        )
        .into()),
        Err(NotifyError::Unavailable(m)) => Err(ApiError::new(ErrorCode::NoCapacity, m).into()),
        Err(NotifyError::BadBody(m)) => Err(ApiError::new(ErrorCode::InvalidRequest, m).into()),
    }
}
