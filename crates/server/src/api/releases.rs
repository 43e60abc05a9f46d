//! Releases: a function's aliases (one version, or two with a weight), the rollouts that move
//! them step by step, and promotion of a tested version to another namespace.

use super::{bad_query, base_url, existing_function, namespace, ApiResult, Caller, NsQuery};
use crate::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use petrel_core::api::DeployResponse;
use petrel_core::auth::Action;
use petrel_core::error::ErrorBody;
use petrel_core::release::{
    AliasInfo, AliasList, Promote, PutAlias, RolloutAction, RolloutInfo, RolloutList, StartRollout,
};
use petrel_core::{ApiError, ErrorCode};
use petrel_gateway::Checked;

fn json<T: serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body must be {shape}: {e}"),
        )
    })
}

fn ns_of(q: Result<Query<NsQuery>, QueryRejection>) -> Result<Option<String>, ApiError> {
    Ok(q.map_err(bad_query)?.0.namespace)
}

/// A function's aliases, by name, each with the rollout moving it if any.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases", tag = "releases",
    params(("name" = String, Path, description = "The function's name"), NsQuery),
    responses(
        (status = 200, description = "The aliases", body = AliasList),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn list_aliases(
    State(app): State<App>,
    caller: Caller,
    Checked(Path(name)): Checked<Path<String>>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<AliasList>> {
    let ns = existing_function(&app, &caller, Action::Read, &name, ns_of(q)?.as_deref()).await?;
    let mut aliases = Vec::new();
    for a in app
        .store
        .list_aliases(&ns, &name)
        .await
        .map_err(ApiError::from)?
    {
        aliases.push(app.alias_info(&ns, &name, a).await?);
    }
    Ok(Json(AliasList { aliases }))
}

/// One alias.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases",
    params(("name" = String, Path), ("alias" = String, Path), NsQuery),
    responses(
        (status = 200, description = "The alias", body = AliasInfo),
        (status = 404, description = "No such function or alias", body = ErrorBody),
    ))]
pub async fn get_alias(
    State(app): State<App>,
    caller: Caller,
    Checked(Path((name, alias))): Checked<Path<(String, String)>>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<AliasInfo>> {
    let ns = existing_function(&app, &caller, Action::Read, &name, ns_of(q)?.as_deref()).await?;
    let a = app
        .store
        .get_alias(&ns, &name, &alias)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| petrel_core::release::no_alias(&name, &alias))?;
    Ok(Json(app.alias_info(&ns, &name, a).await?))
}

/// Create or change an alias: `{"version": 7}` (null: follow the latest), with
/// `"additional": {"version": 8, "weight": 0.1}` to send that share of calls to a second one.
/// Refused while a rollout moves the alias.
#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases",
    params(("name" = String, Path), ("alias" = String, Path), NsQuery),
    request_body = PutAlias,
    responses(
        (status = 201, description = "Created", body = AliasInfo),
        (status = 200, description = "Changed", body = AliasInfo),
        (status = 404, description = "No such function or version", body = ErrorBody),
        (status = 409, description = "A rollout moves this alias", body = ErrorBody),
    ))]
pub async fn put_alias(
    State(app): State<App>,
    caller: Caller,
    Checked(Path((name, alias))): Checked<Path<(String, String)>>,
    q: Result<Query<NsQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<AliasInfo>)> {
    let ns = existing_function(&app, &caller, Action::Write, &name, ns_of(q)?.as_deref()).await?;
    let put: PutAlias = json(
        &body,
        "{\"version\": N or null, \"additional\": {\"version\": M, \"weight\": 0.1}, \"description\": \"...\"}",
    )?;
    let (info, created) = app.set_alias(&ns, &name, &alias, put).await?;
    app.audit(&caller, &ns, "alias.set", &format!("{name}:{alias}"))
        .await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

/// Remove an alias (a rollout moving it is aborted).
#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases",
    params(("name" = String, Path), ("alias" = String, Path), NsQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such function or alias", body = ErrorBody),
    ))]
pub async fn delete_alias(
    State(app): State<App>,
    caller: Caller,
    Checked(Path((name, alias))): Checked<Path<(String, String)>>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let ns = existing_function(&app, &caller, Action::Write, &name, ns_of(q)?.as_deref()).await?;
    if !app.remove_alias(&ns, &name, &alias).await? {
        return Err(petrel_core::release::no_alias(&name, &alias).into());
    }
    app.audit(&caller, &ns, "alias.delete", &format!("{name}:{alias}"))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A function's rollouts, newest first.
#[utoipa::path(get, path = "/v1/functions/{name}/rollouts", tag = "releases",
    params(("name" = String, Path), NsQuery),
    responses(
        (status = 200, description = "The rollouts", body = RolloutList),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn list_rollouts(
    State(app): State<App>,
    caller: Caller,
    Checked(Path(name)): Checked<Path<String>>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<RolloutList>> {
    let ns = existing_function(&app, &caller, Action::Read, &name, ns_of(q)?.as_deref()).await?;
    let rollouts = app
        .store
        .list_rollouts(&ns, &name)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(RolloutList { rollouts }))
}

/// Start a rollout: the alias's share on `to_version` rises along `plan.steps`, each step
/// watched for `plan.interval_ms`, and the alias goes back to its version alone when the new
/// one crosses `max_error_rate` or `max_p99_ms` (see docs/releases.md).
#[utoipa::path(post, path = "/v1/functions/{name}/rollouts", tag = "releases",
    params(("name" = String, Path), NsQuery),
    request_body = StartRollout,
    responses(
        (status = 201, description = "Started; its first step is taken", body = RolloutInfo),
        (status = 404, description = "No such function, alias or version", body = ErrorBody),
        (status = 409, description = "The alias has a rollout in progress, or splits already", body = ErrorBody),
    ))]
pub async fn start_rollout(
    State(app): State<App>,
    caller: Caller,
    Checked(Path(name)): Checked<Path<String>>,
    q: Result<Query<NsQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<RolloutInfo>)> {
    let ns = existing_function(&app, &caller, Action::Write, &name, ns_of(q)?.as_deref()).await?;
    let start: StartRollout = json(
        &body,
        "{\"alias\": \"prod\", \"to_version\": N, \"plan\": {\"steps\": [10, 50, 100], \"interval_ms\": 120000}}",
    )?;
    let r = app.start_rollout(&ns, &name, start).await?;
    app.audit(
        &caller,
        &ns,
        "rollout.start",
        &format!("{name}:{}", r.alias),
    )
    .await;
    Ok((StatusCode::CREATED, Json(r)))
}

/// The rollout of an alias: the one in progress, else the latest, with its history.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases/{alias}/rollout", tag = "releases",
    params(("name" = String, Path), ("alias" = String, Path), NsQuery),
    responses(
        (status = 200, description = "The rollout", body = RolloutInfo),
        (status = 404, description = "No such function, or no rollout", body = ErrorBody),
    ))]
pub async fn rollout(
    State(app): State<App>,
    caller: Caller,
    Checked(Path((name, alias))): Checked<Path<(String, String)>>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<RolloutInfo>> {
    let ns = existing_function(&app, &caller, Action::Read, &name, ns_of(q)?.as_deref()).await?;
    Ok(Json(app.rollout_of(&ns, &name, &alias).await?))
}

/// Pause, resume or abort the rollout in progress on an alias (`action`: `pause`, `resume`,
/// `abort`; abort points the alias at the old version alone).
#[utoipa::path(post, path = "/v1/functions/{name}/aliases/{alias}/rollout/{action}", tag = "releases",
    params(("name" = String, Path), ("alias" = String, Path), ("action" = String, Path), NsQuery),
    responses(
        (status = 200, description = "The rollout after the action", body = RolloutInfo),
        (status = 409, description = "No rollout in progress, or not in a state for this", body = ErrorBody),
    ))]
pub async fn act_on_rollout(
    State(app): State<App>,
    caller: Caller,
    Checked(Path((name, alias, action))): Checked<Path<(String, String, String)>>,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> ApiResult<Json<RolloutInfo>> {
    let ns = existing_function(&app, &caller, Action::Write, &name, ns_of(q)?.as_deref()).await?;
    let act = match action.as_str() {
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        "abort" => RolloutAction::Abort,
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("{other:?} is not a rollout action: use pause, resume or abort"),
            )
            .into())
        }
    };
    let r = app.act_on_rollout(&ns, &name, &alias, act).await?;
    app.audit(
        &caller,
        &ns,
        &format!("rollout.{action}"),
        &format!("{name}:{alias}"),
    )
    .await;
    Ok(Json(r))
}

/// Promote: copy a version of the function from namespace `from` into this one (`namespace`),
/// the same artifact by digest and the same configuration, nothing rebuilt; with `alias`, point
/// that alias here at the copy.
#[utoipa::path(post, path = "/v1/functions/{name}/promote", tag = "releases",
    params(("name" = String, Path), NsQuery),
    request_body = Promote,
    responses(
        (status = 200, description = "The version in the target namespace", body = DeployResponse),
        (status = 404, description = "No such function or version in `from`", body = ErrorBody),
        (status = 409, description = "The alias splits its traffic in `from`, or a rollout moves it in the target", body = ErrorBody),
        (status = 429, description = "Over the target namespace's quotas", body = ErrorBody),
    ))]
pub async fn promote(
    State(app): State<App>,
    caller: Caller,
    Checked(Path(name)): Checked<Path<String>>,
    q: Result<Query<NsQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<DeployResponse>> {
    let to = namespace(q)?;
    let p: Promote = json(
        &body,
        "{\"from\": \"staging\", \"version\": N, \"alias\": \"prod\"}",
    )?;
    petrel_core::name::validate_name("namespace", &p.from).map_err(ApiError::from)?;
    // Reading the source is enough there; the copy is a deploy here.
    existing_function(&app, &caller, Action::Read, &name, Some(&p.from)).await?;
    caller.require(&to, Action::Write, || super::no_namespace(&to))?;
    if !app
        .store
        .namespace_exists(&to)
        .await
        .map_err(ApiError::from)?
        && !caller.is_owner()
    {
        return Err(super::no_namespace(&to).into());
    }
    let from = p.from.clone();
    let d = app
        .promote(&base_url(&headers, &app), &to, &name, p)
        .await?;
    app.audit(
        &caller,
        &to,
        "function.promote",
        &format!("{name}:{} from {from}", d.version),
    )
    .await;
    Ok(Json(d))
}
