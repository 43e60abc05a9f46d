//! AWS Lambda compatibility, in one place: AWS SDKs and the AWS CLI drive Petrel with
//! `--endpoint-url`.
//!
//! - `invoke.rs`: `Invoke` (`RequestResponse`, `Event`, `DryRun`, `LogType: Tail`) and
//!   `InvokeWithResponseStream`, translations to and from the invocation core;
//! - `functions.rs`: the management calls (`CreateFunction`, `UpdateFunctionCode`,
//!   `UpdateFunctionConfiguration`, `GetFunction(Configuration)`, `ListFunctions`,
//!   `DeleteFunction`, `PublishVersion`, aliases), over the control plane's [`Control`];
//! - `sigv4.rs`: Signature V4, checked once as a layer on this whole router;
//! - `error.rs`: Lambda's error shapes; `eventstream.rs`: AWS's event-stream framing.
//!
//! ARNs come from `petrel_core::arn`, the one builder every surface shares (the Runtime API
//! and destination records name functions too). The API Gateway v2 event a handler gets for
//! an HTTP request is the data plane's (it is how handlers see HTTP, whatever the way in).

#![forbid(unsafe_code)]

mod error;
mod eventstream;
mod functions;
mod invoke;
mod sigv4;

pub use error::service_error;
pub use invoke::is_alias_name;
pub use sigv4::{verify, AccessKey};

use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use petrel_async::AsyncQueue;
use petrel_core::{ApiError, BoxFuture};
use petrel_dataplane::DataPlane;
use petrel_runtime::LogSink;
use petrel_store::Store;
use std::sync::Arc;

/// What the management calls need of the control plane (the server implements it): deploys and
/// deletes go through it, so that the data plane and the artifacts follow the store.
pub trait Control: Send + Sync + 'static {
    fn store(&self) -> &Store;
    /// Deploys a package (a zip with its `petrel.toml`) as function `name` of the default
    /// namespace; the version that serves it.
    fn deploy(&self, name: &str, package: Bytes) -> BoxFuture<'_, Result<u32, ApiError>>;
    /// Deletes function `name` of the default namespace; whether it existed.
    fn delete(&self, name: &str) -> BoxFuture<'_, Result<bool, ApiError>>;
    /// The package (zip) a version was deployed from, by its digest.
    fn package(&self, digest: &str) -> BoxFuture<'_, Result<Bytes, ApiError>>;
    /// The largest package a deploy takes, in bytes.
    fn package_limit(&self) -> usize;
}

/// What the Lambda API's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct LambdaApi {
    pub dataplane: DataPlane,
    pub queue: AsyncQueue,
    /// Where `LogType: Tail` reads an invocation's lines from.
    pub logs: LogSink,
    pub control: Arc<dyn Control>,
}

impl std::fmt::Debug for LambdaApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaApi").finish_non_exhaustive()
    }
}

/// The Lambda API's routes, ready to merge into the server's router; with `keys`, every request
/// must carry a valid Signature V4 by one of them.
pub fn routes(
    api: LambdaApi,
    auth: Arc<dyn petrel_core::auth::Authenticator>,
    configured_keys: bool,
) -> Router {
    let management_limit = api.control.package_limit() * 4 / 3 + 64 * 1024;
    let invoke_limit = api.dataplane.payload_limit();
    let router = Router::new()
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
        .route(
            "/2021-11-15/functions/{name}/response-streaming-invocations",
            post(invoke::invoke_stream),
        )
        // boto3 1.35 lists at `functions/`, current ones (1.44) at `functions`.
        .route(
            "/2015-03-31/functions",
            get(functions::list).post(functions::create),
        )
        .route(
            "/2015-03-31/functions/",
            get(functions::list).post(functions::create),
        )
        .route(
            "/2015-03-31/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            put(functions::update_code),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases",
            get(functions::list_aliases).post(functions::create_alias),
        )
        .route(
            "/2015-03-31/functions/{name}/aliases/{alias}",
            get(functions::get_alias)
                .put(functions::update_alias)
                .delete(functions::delete_alias),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(functions::get_configuration).put(functions::update_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/versions",
            get(functions::list_versions).post(functions::publish_version),
        )
        .with_state(api);
    if !auth.enabled() && !configured_keys {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        sigv4::Keys {
            auth,
            invoke_limit,
            management_limit,
        },
        sigv4::require,
    ))
}
