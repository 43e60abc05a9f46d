//! AWS Lambda's function management calls, for AWS SDKs and the AWS CLI:
//! `CreateFunction` (a zip), `UpdateFunctionCode`, `UpdateFunctionConfiguration`,
//! `GetFunction`, `GetFunctionConfiguration`, `ListFunctions`, `DeleteFunction` and
//! `PublishVersion`, and aliases (`CreateAlias`, `GetAlias`, `UpdateAlias`, `DeleteAlias`,
//! `ListAliases`), over functions of the default namespace.
//!
//! How Lambda's versions map onto Petrel's: every deploy of Petrel makes an immutable, numbered
//! version and points the function at it. Lambda's `$LATEST` is that newest version, so
//! `UpdateFunctionCode` makes a new Petrel version, and `PublishVersion` names the newest one
//! (it exists already, as Lambda would publish it).

use crate::error::{invalid, refused, refused_by, Refused};
use crate::LambdaApi;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use petrel_core::api::VersionInfo;
use petrel_core::{arn, ApiError, Manifest, Runtime, DEFAULT_NAMESPACE};
use serde_json::{json, Value};
use std::io::Write;

fn not_found(name: &str) -> Refused {
    refused(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        &format!("Function not found: {}", arn::function(name, None)),
    )
}

/// The body of a request, as JSON.
async fn json_body(api: &LambdaApi, req: Request) -> Result<Value, Refused> {
    let limit = api.control.package_limit() * 4 / 3 + 64 * 1024;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                "the request is larger than the package limit",
            )
        })?;
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| invalid(&format!("the body is not JSON: {e}")))
}

/// Lambda's runtime identifiers, as Petrel's runtimes.
fn runtime(lambda: &str) -> Option<Runtime> {
    if lambda.starts_with("python3") {
        Some(Runtime::Python3)
    } else if lambda.starts_with("nodejs") {
        Some(Runtime::Nodejs)
    } else if lambda.starts_with("provided") {
        Some(Runtime::Provided)
    } else if lambda.starts_with("java") {
        Some(Runtime::Java)
    } else {
        None
    }
}

/// Petrel's runtime as Lambda names it (the versions this machine runs).
fn lambda_runtime(r: Runtime) -> String {
    match r {
        Runtime::Python3 => "python3.11".into(),
        Runtime::Nodejs => "nodejs20.x".into(),
        Runtime::Provided => "provided.al2023".into(),
        Runtime::Java => "java17".into(),
        other => other.to_string(),
    }
}

fn configuration(name: &str, v: &VersionInfo, version: &str) -> Value {
    use base64::Engine;
    let sha = hex::decode(&v.digest).unwrap_or_default();
    let modified = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(v.created_at.max(0) as u64),
    )
    .to_string()
    .replace('Z', "+0000");
    json!({
        "FunctionName": name,
        "FunctionArn": arn::function(name, (version != "$LATEST").then_some(version)),
        "Runtime": lambda_runtime(v.spec.runtime),
        "Role": arn::role(),
        "Handler": v.spec.handler,
        "CodeSize": v.size_bytes,
        "Description": "",
        "Timeout": v.spec.timeout_ms.div_ceil(1000),
        "MemorySize": v.spec.memory_mb,
        "LastModified": modified,
        "CodeSha256": base64::engine::general_purpose::STANDARD.encode(sha),
        "Version": version,
        "Environment": {"Variables": v.spec.env},
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [std::env::consts::ARCH.replace("aarch64", "arm64")],
    })
}

/// The user's zip with a `petrel.toml` for `spec` put in (one already there is replaced).
fn with_manifest(zip_bytes: &[u8], manifest: &str) -> Result<Bytes, String> {
    let mut src = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes))
        .map_err(|e| format!("ZipFile is not a zip archive: {e}"))?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..src.len() {
        let entry = src.by_index_raw(i).map_err(|e| e.to_string())?;
        if entry.name() == "petrel.toml" {
            continue;
        }
        out.raw_copy_file(entry).map_err(|e| e.to_string())?;
    }
    out.start_file("petrel.toml", zip::write::SimpleFileOptions::default())
        .map_err(|e| e.to_string())?;
    out.write_all(manifest.as_bytes())
        .map_err(|e| e.to_string())?;
    let cursor = out.finish().map_err(|e| e.to_string())?;
    Ok(Bytes::from(cursor.into_inner()))
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A `petrel.toml` for these settings.
fn manifest(
    name: &str,
    runtime: Runtime,
    handler: &str,
    memory_mb: u32,
    timeout_s: u64,
    env: &serde_json::Map<String, Value>,
) -> String {
    let mut m = format!(
        "name = {}\nruntime = \"{runtime}\"\nhandler = {}\nmemory_mb = {memory_mb}\ntimeout = \"{timeout_s}s\"\n",
        toml_string(name),
        toml_string(handler)
    );
    if !env.is_empty() {
        m.push_str("[env]\n");
        for (k, v) in env {
            m.push_str(&format!(
                "{} = {}\n",
                toml_string(k),
                toml_string(v.as_str().unwrap_or_default())
            ));
        }
    }
    m
}

fn zip_file(body: &Value) -> Result<Vec<u8>, Refused> {
    use base64::Engine;
    let b64 = body["Code"]["ZipFile"]
        .as_str()
        .or_else(|| body["ZipFile"].as_str())
        .ok_or_else(|| {
            invalid("Code.ZipFile (the zip, base64) is required; Petrel takes no S3 locations")
        })?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| invalid(&format!("ZipFile is not base64: {e}")))
}

async fn deploy(api: &LambdaApi, name: &str, package: Bytes) -> Result<u32, Refused> {
    api.control
        .deploy(name, package)
        .await
        .map_err(|e| invalid(&e.message))
}

/// Deploys the request's zip with manifest `m`; the new configuration, as `$LATEST` or (with
/// `Publish`) as its version.
async fn deploy_zip(api: &LambdaApi, name: &str, body: &Value, m: &str) -> Result<Value, Refused> {
    let package = with_manifest(&zip_file(body)?, m).map_err(|e| invalid(&e))?;
    let version = deploy(api, name, package).await?;
    let v = latest(api, name).await?;
    let shown = if body["Publish"].as_bool() == Some(true) {
        version.to_string()
    } else {
        "$LATEST".into()
    };
    Ok(configuration(name, &v, &shown))
}

async fn latest(api: &LambdaApi, name: &str) -> Result<VersionInfo, Refused> {
    let store = api.control.store();
    let f = store
        .get_function(DEFAULT_NAMESPACE, name)
        .await
        .map_err(db)?
        .ok_or_else(|| not_found(name))?;
    store
        .get_version(DEFAULT_NAMESPACE, name, f.latest_version)
        .await
        .map_err(db)?
        .ok_or_else(|| not_found(name))
}

fn answer(r: Result<Response, Refused>) -> Response {
    r.unwrap_or_else(|e| *e)
}

pub async fn create(State(api): State<LambdaApi>, req: Request) -> Response {
    answer(create_inner(&api, req).await)
}

async fn create_inner(api: &LambdaApi, req: Request) -> Result<Response, Refused> {
    let body = json_body(api, req).await?;
    let name = body["FunctionName"]
        .as_str()
        .ok_or_else(|| invalid("FunctionName is required"))?;
    let rt = body["Runtime"].as_str().unwrap_or("");
    let runtime = runtime(rt).ok_or_else(|| {
        invalid(&format!(
            "Runtime {rt:?} is not one Petrel runs: use python3.x, nodejs*.x or provided*"
        ))
    })?;
    if api
        .control
        .store()
        .get_function(DEFAULT_NAMESPACE, name)
        .await
        .map_err(db)?
        .is_some()
    {
        return Err(refused(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            &format!("Function already exist: {name}"),
        ));
    }
    let handler = body["Handler"].as_str().unwrap_or_default();
    let memory = body["MemorySize"].as_u64().unwrap_or(128) as u32;
    let timeout = body["Timeout"].as_u64().unwrap_or(3);
    let empty = serde_json::Map::new();
    let env = body["Environment"]["Variables"]
        .as_object()
        .unwrap_or(&empty);
    let m = manifest(name, runtime, handler, memory, timeout, env);
    let conf = deploy_zip(api, name, &body, &m).await?;
    Ok((StatusCode::CREATED, axum::Json(conf)).into_response())
}

pub async fn update_code(
    State(api): State<LambdaApi>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    answer(update_code_inner(&api, &name, req).await)
}

async fn update_code_inner(api: &LambdaApi, name: &str, req: Request) -> Result<Response, Refused> {
    let body = json_body(api, req).await?;
    let current = latest(api, name).await?;
    // Every setting stays, Petrel's own keys included.
    let m = Manifest::from(&current.spec).to_toml();
    let conf = deploy_zip(api, name, &body, &m).await?;
    Ok(axum::Json(conf).into_response())
}

/// `UpdateFunctionConfiguration`: a new version with the same code and the settings given
/// changed (`Handler`, `MemorySize`, `Timeout`, `Environment`, `Runtime`); every other setting,
/// Petrel's own keys included, stays.
pub async fn update_configuration(
    State(api): State<LambdaApi>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    answer(update_configuration_inner(&api, &name, req).await)
}

async fn update_configuration_inner(
    api: &LambdaApi,
    name: &str,
    req: Request,
) -> Result<Response, Refused> {
    let body = json_body(api, req).await?;
    let current = latest(api, name).await?;
    let mut m = Manifest::from(&current.spec);
    if let Some(h) = body["Handler"].as_str() {
        m.handler = Some(h.to_owned());
    }
    if let Some(v) = body["MemorySize"].as_u64() {
        m.memory_mb = Some(v.min(u32::MAX as u64) as u32);
    }
    if let Some(t) = body["Timeout"].as_u64() {
        m.timeout = Some(format!("{t}s"));
    }
    if let Some(vars) = body["Environment"]["Variables"].as_object() {
        m.env = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
    }
    if let Some(rt) = body["Runtime"].as_str() {
        let r = runtime(rt).ok_or_else(|| {
            invalid(&format!(
                "Runtime {rt:?} is not one Petrel runs: use python3.x, nodejs*.x or provided*"
            ))
        })?;
        m.runtime = Some(r.as_str().to_owned());
    }
    let code = api
        .control
        .package(&current.digest)
        .await
        .map_err(refused_by)?;
    let package = with_manifest(&code, &m.to_toml()).map_err(|e| invalid(&e))?;
    deploy(api, name, package).await?;
    let v = latest(api, name).await?;
    Ok(axum::Json(configuration(name, &v, "$LATEST")).into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

/// `GetFunctionConfiguration`, of `$LATEST` or of version `Qualifier`.
pub async fn get_configuration(
    State(api): State<LambdaApi>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<QualifierQuery>,
) -> Response {
    answer(
        async {
            let v = latest(&api, &name).await?;
            let (v, shown) = match q.qualifier.as_deref() {
                None | Some("$LATEST") => (v, "$LATEST".to_owned()),
                Some(n) => {
                    let number = n
                        .parse::<u32>()
                        .map_err(|_| not_found(&format!("{name}:{n}")))?;
                    let old = api
                        .control
                        .store()
                        .get_version(DEFAULT_NAMESPACE, &name, number)
                        .await
                        .map_err(db)?
                        .ok_or_else(|| not_found(&format!("{name}:{n}")))?;
                    (old, n.to_owned())
                }
            };
            Ok(axum::Json(configuration(&name, &v, &shown)).into_response())
        }
        .await,
    )
}

pub async fn get(State(api): State<LambdaApi>, Path(name): Path<String>) -> Response {
    answer(
        async {
            let v = latest(&api, &name).await?;
            Ok(axum::Json(json!({
                "Configuration": configuration(&name, &v, "$LATEST"),
                "Code": {"RepositoryType": "Petrel", "Location": ""},
            }))
            .into_response())
        }
        .await,
    )
}

pub async fn list(State(api): State<LambdaApi>) -> Response {
    answer(
        async {
            let functions = api
                .control
                .store()
                .list_functions(Some(DEFAULT_NAMESPACE))
                .await
                .map_err(db)?;
            let mut out = Vec::new();
            for f in functions {
                if let Ok(v) = latest(&api, &f.name).await {
                    out.push(configuration(&f.name, &v, "$LATEST"));
                }
            }
            Ok(axum::Json(json!({"Functions": out})).into_response())
        }
        .await,
    )
}

pub async fn delete(State(api): State<LambdaApi>, Path(name): Path<String>) -> Response {
    answer(
        async {
            if !api.control.delete(&name).await.map_err(refused_by)? {
                return Err(not_found(&name));
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// `ListVersionsByFunction`: `$LATEST`, then every version, oldest first, as Lambda lists them.
pub async fn list_versions(State(api): State<LambdaApi>, Path(name): Path<String>) -> Response {
    answer(
        async {
            let latest = latest(&api, &name).await?;
            let versions = api
                .control
                .store()
                .list_versions(DEFAULT_NAMESPACE, &name)
                .await
                .map_err(db)?;
            let mut out = vec![configuration(&name, &latest, "$LATEST")];
            let mut sorted: Vec<_> = versions.iter().collect();
            sorted.sort_by_key(|v| v.version);
            for v in sorted {
                out.push(configuration(&name, v, &v.version.to_string()));
            }
            Ok(axum::Json(json!({"Versions": out})).into_response())
        }
        .await,
    )
}

pub async fn publish_version(State(api): State<LambdaApi>, Path(name): Path<String>) -> Response {
    answer(
        async {
            let v = latest(&api, &name).await?;
            let version = v.version.to_string();
            Ok((
                StatusCode::CREATED,
                axum::Json(configuration(&name, &v, &version)),
            )
                .into_response())
        }
        .await,
    )
}

/// Lambda's `AliasConfiguration`.
fn alias_config(function: &str, a: &petrel_store::Alias) -> Value {
    let mut c = json!({
        "AliasArn": arn::function(function, Some(&a.name)),
        "Name": a.name,
        "FunctionVersion": a.route.version.map(|v| v.to_string()).unwrap_or_else(|| "$LATEST".into()),
        "Description": a.description,
        "RevisionId": a.revision,
    });
    if let Some(w) = a.route.additional {
        c["RoutingConfig"] = json!({"AdditionalVersionWeights": {w.version.to_string(): w.weight}});
    }
    c
}

/// `RoutingConfig.AdditionalVersionWeights` (at most one version, as Lambda allows): absent
/// keeps `current`, an empty map removes the split.
async fn routing_config(
    api: &LambdaApi,
    function: &str,
    body: &Value,
    current: Option<petrel_core::release::Weighted>,
) -> Result<Option<petrel_core::release::Weighted>, Refused> {
    let Some(weights) = body
        .get("RoutingConfig")
        .map(|r| &r["AdditionalVersionWeights"])
    else {
        return Ok(current);
    };
    let Some(map) = weights.as_object() else {
        return Ok(None);
    };
    if map.len() > 1 {
        return Err(invalid(
            "RoutingConfig.AdditionalVersionWeights takes at most one version",
        ));
    }
    let Some((v, w)) = map.iter().next() else {
        return Ok(None);
    };
    let version = alias_target(api, function, v)
        .await?
        .ok_or_else(|| invalid("RoutingConfig cannot name $LATEST: give a version number"))?;
    let weight = w
        .as_f64()
        .filter(|w| (0.0..1.0).contains(w))
        .ok_or_else(|| {
            refused(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                &format!("1 validation error detected: the weight of version {v} must be a number from 0 up to 1, not {w}"),
            )
        })?;
    Ok(Some(petrel_core::release::Weighted { version, weight }))
}

/// An alias's route from its `FunctionVersion` and `RoutingConfig`, checked.
fn checked_route(
    version: Option<u32>,
    additional: Option<petrel_core::release::Weighted>,
) -> Result<petrel_core::release::AliasRoute, Refused> {
    let route = petrel_core::release::AliasRoute {
        version,
        additional,
    };
    route.check().map_err(|e| invalid(&e))?;
    Ok(route)
}

fn alias_not_found(function: &str, alias: &str) -> Refused {
    refused(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        &format!("Alias not found: {}", arn::function(function, Some(alias))),
    )
}

fn db(e: petrel_store::StoreError) -> Refused {
    refused_by(ApiError::from(e))
}

/// An alias of a function, or Lambda's not-found.
async fn stored_alias(
    api: &LambdaApi,
    function: &str,
    alias: &str,
) -> Result<petrel_store::Alias, Refused> {
    api.control
        .store()
        .get_alias(DEFAULT_NAMESPACE, function, alias)
        .await
        .map_err(db)?
        .ok_or_else(|| alias_not_found(function, alias))
}

/// `FunctionVersion` as a version (`None`: `$LATEST`), checked to exist.
async fn alias_target(api: &LambdaApi, function: &str, v: &str) -> Result<Option<u32>, Refused> {
    if v == "$LATEST" {
        return Ok(None);
    }
    let n: u32 = v.parse().map_err(|_| {
        invalid(&format!(
            "FunctionVersion {v:?} is not $LATEST or a version number"
        ))
    })?;
    api.control
        .store()
        .get_version(DEFAULT_NAMESPACE, function, n)
        .await
        .map_err(db)?
        .ok_or_else(|| not_found(&format!("{function}:{v}")))?;
    Ok(Some(n))
}

/// `CreateAlias`.
pub async fn create_alias(
    State(api): State<LambdaApi>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    answer(
        async {
            let body = json_body(&api, req).await?;
            latest(&api, &name).await?;
            let alias = body["Name"].as_str().unwrap_or_default();
            if !crate::is_alias_name(alias) {
                return Err(refused(StatusCode::BAD_REQUEST, "ValidationException", &format!("Name {alias:?} is not an alias name: 1 to 128 letters, digits, - and _, not all digits")));
            }
            let target = alias_target(&api, &name, body["FunctionVersion"].as_str().unwrap_or("")).await?;
            let additional = routing_config(&api, &name, &body, None).await?;
            let route = checked_route(target, additional)?;
            let description = body["Description"].as_str().unwrap_or_default();
            let key = (DEFAULT_NAMESPACE, name.as_str());
            let created = api.control.store().put_alias(key, alias, route, description, true).await.map_err(db)?;
            api.dataplane.alias_changed(DEFAULT_NAMESPACE, &name);
            if !created {
                return Err(refused(StatusCode::CONFLICT, "ResourceConflictException", &format!("Alias already exists: {name}:{alias}")));
            }
            let a = stored_alias(&api, &name, alias).await?;
            Ok((StatusCode::CREATED, axum::Json(alias_config(&name, &a))).into_response())
        }
        .await,
    )
}

/// `ListAliases`.
pub async fn list_aliases(State(api): State<LambdaApi>, Path(name): Path<String>) -> Response {
    answer(
        async {
            latest(&api, &name).await?;
            let all = api
                .control
                .store()
                .list_aliases(DEFAULT_NAMESPACE, &name)
                .await
                .map_err(db)?;
            let aliases: Vec<Value> = all.iter().map(|a| alias_config(&name, a)).collect();
            Ok(axum::Json(json!({"Aliases": aliases})).into_response())
        }
        .await,
    )
}

/// `GetAlias`.
pub async fn get_alias(
    State(api): State<LambdaApi>,
    Path((name, alias)): Path<(String, String)>,
) -> Response {
    answer(
        async {
            let a = stored_alias(&api, &name, &alias).await?;
            Ok(axum::Json(alias_config(&name, &a)).into_response())
        }
        .await,
    )
}

/// `UpdateAlias`: a new `FunctionVersion` and/or `Description`.
pub async fn update_alias(
    State(api): State<LambdaApi>,
    Path((name, alias)): Path<(String, String)>,
    req: Request,
) -> Response {
    answer(
        async {
            let body = json_body(&api, req).await?;
            let current = stored_alias(&api, &name, &alias).await?;
            let target = match body["FunctionVersion"].as_str() {
                Some(v) => alias_target(&api, &name, v).await?,
                None => current.route.version,
            };
            let additional = routing_config(&api, &name, &body, current.route.additional).await?;
            let route = checked_route(target, additional)?;
            let description = body["Description"].as_str().unwrap_or(&current.description);
            let key = (DEFAULT_NAMESPACE, name.as_str());
            let stored = api
                .control
                .store()
                .put_alias(key, &alias, route, description, false)
                .await
                .map_err(db)?;
            api.dataplane.alias_changed(DEFAULT_NAMESPACE, &name);
            if !stored {
                return Err(alias_not_found(&name, &alias));
            }
            let a = stored_alias(&api, &name, &alias).await?;
            Ok(axum::Json(alias_config(&name, &a)).into_response())
        }
        .await,
    )
}

/// `DeleteAlias`.
pub async fn delete_alias(
    State(api): State<LambdaApi>,
    Path((name, alias)): Path<(String, String)>,
) -> Response {
    answer(
        async {
            let gone = api
                .control
                .store()
                .delete_alias(DEFAULT_NAMESPACE, &name, &alias)
                .await
                .map_err(db)?;
            api.dataplane.alias_changed(DEFAULT_NAMESPACE, &name);
            if !gone {
                return Err(alias_not_found(&name, &alias));
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}
