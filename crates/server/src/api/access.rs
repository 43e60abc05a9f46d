//! Who calls, and what tenancy itself serves: namespaces with their quotas, API keys, secrets
//! (names and versions, never values) and the audit log.

use super::{bad_query, no_namespace, ApiResult};
use crate::App;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use petrel_core::api::{
    AuditList, AuditRecord, CreateKey, CreateNamespace, CreatedKey, KeyInfo, KeyList,
    NamespaceInfo, NamespaceList, Quotas, SecretInfo, SecretList, WhoAmI,
};
use petrel_core::auth::{Action, Denied, Principal, Role};
use petrel_core::error::ErrorBody;
use petrel_core::name::validate_name;
use petrel_core::{ApiError, ErrorCode};
use petrel_gateway::ErrorResponse;
use std::net::{IpAddr, SocketAddr};

/// Who makes a request, and from where. Extracting it refuses a request that needs a key and
/// carries none (`401 unauthorized`), or carries one that is unknown or revoked.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub principal: Principal,
    pub source: Option<IpAddr>,
}

impl FromRequestParts<App> for Caller {
    type Rejection = ErrorResponse;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let principal = petrel_core::auth::principal_of(&app.keys, authorization)
            .await?
            .ok_or_else(petrel_core::auth::missing_key)?;
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Caller { principal, source })
    }
}

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// The namespaces the caller administers (`None`: all, as the owner).
fn administered(caller: &Caller) -> Option<Vec<String>> {
    caller.namespaces(Action::Administer)
}

fn bad_json(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, format!("{what}: {e}"))
}

/// Namespaces the caller holds a role in (every one for the owner).
#[utoipa::path(get, path = "/v1/namespaces", tag = "tenancy",
    responses((status = 200, description = "Namespaces, by name", body = NamespaceList)))]
pub async fn list_namespaces(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<NamespaceList>> {
    let quotas: std::collections::HashMap<String, String> = app
        .store
        .all_quotas()
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .collect();
    let namespaces = app
        .store
        .list_namespaces()
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|(ns, _, _)| match &caller.principal {
            Principal::Anyone => true,
            Principal::Key(g) => g.owner || g.roles.contains_key(ns),
        })
        .map(|(name, created_at, functions)| NamespaceInfo {
            quotas: quotas.get(&name).and_then(|q| serde_json::from_str(q).ok()),
            name,
            created_at,
            functions: functions as u64,
        })
        .collect();
    Ok(Json(NamespaceList { namespaces }))
}

/// Create a namespace (the owner only).
#[utoipa::path(post, path = "/v1/namespaces", tag = "tenancy",
    request_body = CreateNamespace,
    responses(
        (status = 201, description = "Created", body = NamespaceInfo),
        (status = 409, description = "It exists", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
    ))]
pub async fn create_namespace(
    State(app): State<App>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<NamespaceInfo>)> {
    caller.require_owner("creating a namespace")?;
    let req: CreateNamespace = serde_json::from_slice(&body)
        .map_err(|e| bad_json("the body must be {\"name\": ...}", e))?;
    validate_name("namespace", &req.name).map_err(ApiError::from)?;
    if !app
        .store
        .create_namespace(&req.name)
        .await
        .map_err(ApiError::from)?
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("namespace {} exists already", req.name),
        )
        .into());
    }
    app.audit(&caller, &req.name, "namespace.create", &req.name)
        .await;
    Ok((
        StatusCode::CREATED,
        Json(NamespaceInfo {
            name: req.name,
            created_at: petrel_core::now_ms(),
            functions: 0,
            quotas: None,
        }),
    ))
}

/// Remove an empty namespace with its secrets and the roles keys held in it (the owner only).
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}", tag = "tenancy",
    params(("namespace" = String, Path, description = "The namespace")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such namespace", body = ErrorBody),
        (status = 409, description = "It still holds functions", body = ErrorBody),
    ))]
pub async fn delete_namespace(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(ns)): petrel_gateway::Checked<Path<String>>,
) -> ApiResult<StatusCode> {
    caller.require_owner("removing a namespace")?;
    validate_name("namespace", &ns).map_err(ApiError::from)?;
    if ns == petrel_core::DEFAULT_NAMESPACE {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the default namespace cannot be removed",
        )
        .into());
    }
    match app.store.delete_namespace(&ns).await.map_err(ApiError::from)? {
        Ok(true) => {}
        Ok(false) => return Err(no_namespace(&ns).into()),
        Err(n) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("namespace {ns} still holds {n} function(s): remove them first (`petrel ls -n {ns}`, `petrel rm NAME -n {ns}`)"),
            )
            .into())
        }
    }
    app.audit(&caller, &ns, "namespace.remove", &ns).await;
    app.dataplane.set_namespace_limits(&ns, Default::default());
    app.changed(crate::cluster::kind::QUOTAS, &ns, "").await;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a namespace's quotas (the owner only: a tenant does not lift its own limits); `{}`
/// removes them.
#[utoipa::path(put, path = "/v1/namespaces/{namespace}/quotas", tag = "tenancy",
    params(("namespace" = String, Path, description = "The namespace")),
    request_body = Quotas,
    responses(
        (status = 200, description = "The quotas now", body = Quotas),
        (status = 404, description = "No such namespace", body = ErrorBody),
    ))]
pub async fn set_quotas(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(ns)): petrel_gateway::Checked<Path<String>>,
    body: Bytes,
) -> ApiResult<Json<Quotas>> {
    caller.require_owner("setting quotas")?;
    validate_name("namespace", &ns).map_err(ApiError::from)?;
    let quotas: Quotas = serde_json::from_slice(&body).map_err(|e| {
        bad_json(
            "the body must be quotas like {\"max_functions\": 10, \"max_memory_mb\": 4096, \"max_concurrency\": 100, \"max_rps\": 50}",
            e,
        )
    })?;
    for (key, v) in [
        ("max_functions", quotas.max_functions.map(u64::from)),
        ("max_memory_mb", quotas.max_memory_mb),
        ("max_concurrency", quotas.max_concurrency.map(u64::from)),
        ("max_rps", quotas.max_rps.map(u64::from)),
    ] {
        if v == Some(0) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("{key} must be at least 1; leave it out for no limit"),
            )
            .into());
        }
    }
    let stored =
        (quotas != Quotas::default()).then(|| serde_json::to_string(&quotas).expect("json"));
    if !app
        .store
        .set_namespace_quotas(&ns, stored.as_deref())
        .await
        .map_err(ApiError::from)?
    {
        return Err(no_namespace(&ns).into());
    }
    app.dataplane
        .set_namespace_limits(&ns, super::invocation_limits(&quotas));
    app.changed(crate::cluster::kind::QUOTAS, &ns, "").await;
    app.audit(
        &caller,
        &ns,
        "namespace.quotas",
        &serde_json::to_string(&quotas).expect("json"),
    )
    .await;
    Ok(Json(quotas))
}

fn key_info(k: petrel_store::KeyRecord, only: Option<&[String]>) -> KeyInfo {
    KeyInfo {
        id: k.id,
        description: k.description,
        owner: k.owner,
        roles: k
            .roles
            .into_iter()
            .filter(|(ns, _)| only.is_none_or(|o| o.contains(ns)))
            .collect(),
        created_at: k.created_at,
        created_by: k.created_by,
        revoked_at: k.revoked_at,
    }
}

/// Keys: every one for the owner; for an admin, those holding a role in a namespace it
/// administers, with those roles only.
#[utoipa::path(get, path = "/v1/keys", tag = "tenancy",
    responses((status = 200, description = "Keys, oldest first (never their tokens)", body = KeyList)))]
pub async fn list_keys(State(app): State<App>, caller: Caller) -> ApiResult<Json<KeyList>> {
    let mine = administered(&caller);
    if mine.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "listing keys needs the admin role in a namespace, or the owner key",
        )
        .into());
    }
    let keys = app
        .store
        .list_keys()
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|k| {
            mine.as_ref()
                .is_none_or(|m| !k.owner && k.roles.iter().any(|(ns, _)| m.contains(ns)))
        })
        .map(|k| key_info(k, mine.as_deref()))
        .collect();
    Ok(Json(KeyList { keys }))
}

/// Create a key with roles; its token is in the answer, this once. An admin gives roles in the
/// namespaces it administers; only the owner makes owner keys.
#[utoipa::path(post, path = "/v1/keys", tag = "tenancy",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key and its token", body = CreatedKey),
        (status = 400, description = "A bad role or namespace", body = ErrorBody),
        (status = 403, description = "Roles the caller may not give", body = ErrorBody),
    ))]
pub async fn create_key(
    State(app): State<App>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let req: CreateKey = serde_json::from_slice(&body).map_err(|e| {
        bad_json(
            "the body must be {\"description\": ..., \"roles\": {\"NAMESPACE\": \"ROLE\"}, \"owner\": false}",
            e,
        )
    })?;
    if req.owner {
        caller.require_owner("making an owner key")?;
    } else if req.roles.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a key needs a role in at least one namespace (--namespace NS --role ROLE), or --owner",
        )
        .into());
    }
    let mut roles = Vec::new();
    for (ns, role) in &req.roles {
        validate_name("namespace", ns).map_err(ApiError::from)?;
        let role = Role::parse(role)?;
        match caller.check(ns, Action::Administer) {
            Ok(()) => {}
            Err(Denied::Hidden) => return Err(no_namespace(ns).into()),
            Err(Denied::Forbidden(e)) => return Err(e.into()),
        }
        if !app
            .store
            .namespace_exists(ns)
            .await
            .map_err(ApiError::from)?
        {
            return Err(no_namespace(ns).into());
        }
        roles.push((ns.clone(), role));
    }
    let key = app
        .keys
        .make(None, &req.description, req.owner, &roles, caller.key_id())
        .await;
    app.store
        .insert_key(&key.record)
        .await
        .map_err(ApiError::from)?;
    let target = format!("{} ({})", key.record.id, describe_roles(&roles, req.owner));
    for (ns, _) in &roles {
        app.audit(&caller, ns, "key.create", &target).await;
    }
    if roles.is_empty() {
        app.audit_global(&caller, "key.create", &target).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            token: key.token,
            key: key_info(key.record, None),
        }),
    ))
}

fn describe_roles(roles: &[(String, Role)], owner: bool) -> String {
    let mut parts: Vec<String> = roles.iter().map(|(ns, r)| format!("{r} in {ns}")).collect();
    if owner {
        parts.insert(0, "owner".into());
    }
    parts.join(", ")
}

/// Revoke a key: it stops working at once on this server, within a second on the others.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "tenancy",
    params(("id" = String, Path, description = "The key's id (`petrel key ls`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key the caller may revoke", body = ErrorBody),
    ))]
pub async fn revoke_key(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(id)): petrel_gateway::Checked<Path<String>>,
) -> ApiResult<StatusCode> {
    let missing = || {
        ApiError::new(
            ErrorCode::KeyNotFound,
            format!("no key {id} that this key may revoke; `petrel key ls` lists them"),
        )
    };
    let key = app
        .store
        .key(&id)
        .await
        .map_err(ApiError::from)?
        .filter(|k| k.revoked_at.is_none())
        .ok_or_else(missing)?;
    if let Some(mine) = administered(&caller) {
        // An admin revokes keys whose every role lies in namespaces it administers.
        if key.owner || key.roles.is_empty() || !key.roles.iter().all(|(ns, _)| mine.contains(ns)) {
            return Err(missing().into());
        }
    }
    if !app.store.revoke_key(&id).await.map_err(ApiError::from)? {
        return Err(missing().into());
    }
    app.keys.forget(&id);
    for (ns, _) in &key.roles {
        app.audit(&caller, ns, "key.revoke", &id).await;
    }
    if key.roles.is_empty() {
        app.audit_global(&caller, "key.revoke", &id).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The calling key: its id and roles.
#[utoipa::path(get, path = "/v1/whoami", tag = "tenancy",
    responses((status = 200, description = "The calling key", body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(match &caller.principal {
        Principal::Anyone => WhoAmI {
            authenticated: false,
            key: None,
            owner: true,
            roles: Default::default(),
        },
        Principal::Key(g) => WhoAmI {
            authenticated: true,
            key: Some(g.id.clone()),
            owner: g.owner,
            roles: g
                .roles
                .iter()
                .map(|(ns, r)| (ns.clone(), r.as_str().to_owned()))
                .collect(),
        },
    })
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SecretQuery {
    /// The secret's namespace (default: `default`).
    namespace: Option<String>,
}

fn secret_ns(q: Result<Query<SecretQuery>, QueryRejection>) -> Result<String, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let ns = q
        .namespace
        .unwrap_or_else(|| petrel_core::DEFAULT_NAMESPACE.to_owned());
    validate_name("namespace", &ns)?;
    Ok(ns)
}

fn no_secret(name: &str, ns: &str) -> ApiError {
    ApiError::new(
        ErrorCode::SecretNotFound,
        format!("no secret named {name} in namespace {ns}; set it with `petrel secret set {name} -n {ns}`"),
    )
}

/// A namespace's secrets: names and versions, never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "tenancy",
    params(SecretQuery),
    responses((status = 200, description = "Secrets, by name", body = SecretList)))]
pub async fn list_secrets(
    State(app): State<App>,
    caller: Caller,
    q: Result<Query<SecretQuery>, QueryRejection>,
) -> ApiResult<Json<SecretList>> {
    let ns = secret_ns(q)?;
    caller.require(&ns, Action::Read, || no_namespace(&ns))?;
    let secrets = app
        .store
        .list_secrets(&ns)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|s| SecretInfo {
            namespace: ns.clone(),
            env: petrel_core::manifest::secret_env_name(&s.name),
            name: s.name,
            version: s.version,
            updated_at: s.updated_at,
        })
        .collect();
    Ok(Json(SecretList { secrets }))
}

/// Largest secret value taken.
const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Set a secret's value (the body, as is): sealed under the master key before it is stored. New
/// instances of the functions that list it get the new value; running ones keep theirs.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "tenancy",
    params(("name" = String, Path, description = "The secret's name"), SecretQuery),
    request_body(content = Vec<u8>, description = "The value", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Stored", body = SecretInfo),
        (status = 413, description = "Over 64 KiB", body = ErrorBody),
    ))]
pub async fn set_secret(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<SecretQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult<Json<SecretInfo>> {
    let ns = secret_ns(q)?;
    validate_name("secret name", &name).map_err(ApiError::from)?;
    caller.require(&ns, Action::Write, || no_namespace(&ns))?;
    if !app
        .store
        .namespace_exists(&ns)
        .await
        .map_err(ApiError::from)?
    {
        return Err(no_namespace(&ns).into());
    }
    if body.len() > MAX_SECRET_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            "a secret's value is at most 64 KiB; keep larger material in a file the function reads",
        )
        .into());
    }
    let sealed = app.keys.master().seal(&secret_context(&ns, &name), &body);
    let version = app
        .store
        .put_secret(&ns, &name, &sealed)
        .await
        .map_err(ApiError::from)?;
    app.audit(&caller, &ns, "secret.set", &format!("{name} v{version}"))
        .await;
    Ok(Json(SecretInfo {
        namespace: ns,
        env: petrel_core::manifest::secret_env_name(&name),
        name,
        version,
        updated_at: petrel_core::now_ms(),
    }))
}

/// What a secret's value is sealed for: its namespace and name.
pub(crate) fn secret_context(ns: &str, name: &str) -> String {
    format!("secret/{ns}/{name}")
}

/// Remove a secret. Functions that list it can no longer start new instances until it is set
/// again.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "tenancy",
    params(("name" = String, Path, description = "The secret's name"), SecretQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such secret", body = ErrorBody),
    ))]
pub async fn delete_secret(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<SecretQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let ns = secret_ns(q)?;
    validate_name("secret name", &name).map_err(ApiError::from)?;
    caller.require(&ns, Action::Write, || no_secret(&name, &ns))?;
    if !app
        .store
        .delete_secret(&ns, &name)
        .await
        .map_err(ApiError::from)?
    {
        return Err(no_secret(&name, &ns).into());
    }
    app.audit(&caller, &ns, "secret.remove", &name).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The namespace (the owner may leave it out for every entry).
    namespace: Option<String>,
    /// At most this many, newest first (default 100).
    limit: Option<u32>,
}

/// The audit log of control-plane actions: who did what, when, from where. A namespace's
/// admins read its entries; the owner reads all.
#[utoipa::path(get, path = "/v1/audit", tag = "tenancy",
    params(AuditQuery),
    responses((status = 200, description = "Entries, newest first", body = AuditList)))]
pub async fn audit(
    State(app): State<App>,
    caller: Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<AuditList>> {
    let Query(q) = q.map_err(bad_query)?;
    match &q.namespace {
        Some(ns) => {
            validate_name("namespace", ns).map_err(ApiError::from)?;
            caller.require(ns, Action::Administer, || no_namespace(ns))?;
        }
        None => caller.require_owner("reading every namespace's audit log (give --namespace)")?,
    }
    let entries = app
        .store
        .list_audit(q.namespace.as_deref(), q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|e| AuditRecord {
            id: e.id,
            ts: e.ts,
            namespace: e.namespace,
            key: e.key_id,
            action: e.action,
            target: e.target,
            source: e.source,
            outcome: e.outcome,
        })
        .collect();
    Ok(Json(AuditList { entries }))
}

impl App {
    /// Applies a namespace's quotas as the store has them (another node changed them).
    pub(crate) async fn reload_quotas(&self, ns: &str) {
        let limits = match self.store.all_quotas().await {
            Ok(all) => all
                .into_iter()
                .find(|(n, _)| n == ns)
                .and_then(|(_, text)| serde_json::from_str(&text).ok())
                .map(|q| super::invocation_limits(&q))
                .unwrap_or_default(),
            Err(e) => {
                return tracing::warn!(namespace = %ns, error = %e, "cluster: could not read quotas")
            }
        };
        self.dataplane.set_namespace_limits(ns, limits);
    }
}
