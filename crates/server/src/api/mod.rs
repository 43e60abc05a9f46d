//! Petrel's control API under `/v1/`, and the server's own routes (`/healthz`, `/metrics`,
//! `/v1/openapi.json`). Every route is declared with its OpenAPI description next to its
//! handler (`#[utoipa::path]`) and registered through [`routes`], so the document the server
//! serves is the router it runs.
//!
//! - `functions.rs`: deploy (upload a packaged directory), list, get, delete;
//! - `invocations.rs`: invocation records, async invocations, dead letters, usage;
//! - `logs.rs`: a function's logs, read or followed;
//! - `releases.rs`: aliases, rollouts, promotion between namespaces;
//! - `triggers.rs`: a function's event triggers, pausing and resuming them, their dead letters;
//! - `meta.rs`: health, metrics, the document itself, and the answers to unknown routes.

mod access;
mod console;
mod functions;
mod invocations;
mod logs;
mod meta;
mod releases;
mod triggers;

pub(crate) use meta::{no_route, wrong_method};

use crate::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap};
use petrel_core::name::validate_name;
use petrel_core::{ApiError, ErrorCode};
use petrel_gateway::ErrorResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) type ApiResult<T> = Result<T, ErrorResponse>;

pub(crate) use access::{secret_context, Caller};

/// The control API's routes with their document; the gateway's part of the document is added
/// by the caller.
pub(crate) fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(<meta::ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(functions::list))
        .routes(routes!(
            functions::get,
            functions::deploy,
            functions::delete
        ))
        .routes(routes!(logs::logs))
        .routes(routes!(invocations::invocations))
        .routes(routes!(
            invocations::invocation,
            invocations::cancel_invocation
        ))
        .routes(routes!(invocations::async_invocations))
        .routes(routes!(invocations::dead_letters))
        .routes(routes!(invocations::replay))
        .routes(routes!(invocations::usage))
        .routes(routes!(releases::list_aliases))
        .routes(routes!(
            releases::get_alias,
            releases::put_alias,
            releases::delete_alias
        ))
        .routes(routes!(releases::list_rollouts, releases::start_rollout))
        .routes(routes!(releases::rollout))
        .routes(routes!(releases::act_on_rollout))
        .routes(routes!(releases::promote))
        .routes(routes!(triggers::list))
        .routes(routes!(triggers::pause))
        .routes(routes!(triggers::resume))
        .routes(routes!(triggers::dead_letters))
        .routes(routes!(triggers::s3_notification))
        .routes(routes!(access::list_namespaces, access::create_namespace))
        .routes(routes!(access::delete_namespace, access::set_quotas))
        .routes(routes!(access::list_keys, access::create_key))
        .routes(routes!(access::revoke_key))
        .routes(routes!(access::whoami))
        .routes(routes!(access::list_secrets))
        .routes(routes!(access::set_secret, access::delete_secret))
        .routes(routes!(access::audit))
        .routes(routes!(meta::openapi))
        .routes(routes!(meta::healthz))
        .routes(routes!(meta::readyz))
        .routes(routes!(meta::nodes))
        .routes(routes!(meta::metrics))
        .routes(routes!(console::series))
        .routes(routes!(console::page))
        .routes(routes!(console::file))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NsQuery {
    /// The function's namespace (default: `default`).
    namespace: Option<String>,
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, e.body_text())
}

fn namespace(q: Result<Query<NsQuery>, QueryRejection>) -> Result<String, ApiError> {
    let q = q.map_err(bad_query)?;
    let ns =
        q.0.namespace
            .unwrap_or_else(|| petrel_core::DEFAULT_NAMESPACE.to_owned());
    validate_name("namespace", &ns)?;
    Ok(ns)
}

/// What an unknown namespace, and one the caller holds no role in, answer.
pub(crate) fn no_namespace(ns: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NamespaceNotFound,
        format!("no namespace named {ns} that this key may use; `petrel ns ls` lists them, an owner creates one with `petrel ns create {ns}`"),
    )
}

pub(crate) fn function_not_found(name: &str) -> ApiError {
    not_found(name)
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

/// Where `/fn/{name}` answers for a function, from `base`.
pub(crate) fn function_url(base: &str, ns: &str, name: &str) -> String {
    if ns == petrel_core::DEFAULT_NAMESPACE {
        format!("{base}/fn/{name}")
    } else {
        format!("{base}/fn/{name}?namespace={ns}")
    }
}

/// The namespace of a request about a function that must exist and that the caller may act on
/// so, or the error saying why not (a namespace the caller holds no role in hides the function).
async fn existing_function(
    app: &App,
    caller: &Caller,
    action: petrel_core::auth::Action,
    name: &str,
    namespace: Option<&str>,
) -> Result<String, ApiError> {
    let ns = namespace
        .unwrap_or(petrel_core::DEFAULT_NAMESPACE)
        .to_owned();
    validate_name("namespace", &ns)?;
    validate_name("function name", name)?;
    caller.require(&ns, action, || not_found(name))?;
    match app.store.get_function(&ns, name).await? {
        Some(_) => Ok(ns),
        None => Err(not_found(name)),
    }
}

/// `since=10m` as a time (ms since the epoch); `default_ago` without one (none: the beginning).
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

/// Adds what every operation may answer because of tenancy and input checks (400, 401, 403 in
/// the contract's error shape) and the bearer-token scheme, so the document says what the
/// server does. `/healthz` and the s3 webhook take no key; their 401 and 403 never come.
pub(crate) fn document_access(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |what: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let r = &mut op.responses.responses;
            if !r.contains_key("4XX") {
                r.entry("400".into()).or_insert_with(|| {
                    error("An invalid request: the message says what to change")
                });
                r.entry("401".into()).or_insert_with(|| {
                    error("No API key, or an unknown or revoked one (Authorization: Bearer TOKEN)")
                });
                r.entry("403".into())
                    .or_insert_with(|| error("The key's role does not allow this"));
                r.entry("404".into()).or_insert_with(|| {
                    error("No such object, or one of a namespace the key holds no role in (they answer alike)")
                });
            }
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    doc.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
}

/// The quotas the data plane enforces on invocations.
pub(crate) fn invocation_limits(q: &petrel_core::api::Quotas) -> petrel_dataplane::NamespaceLimits {
    petrel_dataplane::NamespaceLimits {
        max_rps: q.max_rps,
        max_concurrency: q.max_concurrency,
    }
}
