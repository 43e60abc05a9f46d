//! What an instance is to the rest of Petrel: a running copy of one version that takes
//! requests in its protocol, and what starts one.
//!
//! There are two kinds, each a type of its own: a process instance
//! (`crate::process::ProcessInstance`), speaking the Lambda Runtime API or HTTP on `$PORT`,
//! and a wasm instance ([`crate::wasm::WasmInstance`]), serving HTTP in-process. Their one
//! interface is [`Instance`]; what a caller may send depends on [`Instance::protocol`], so
//! there is no call an instance cannot take.

use crate::error::InvokeError;
use crate::lambda_api::LambdaOutcome;
use crate::Body;
use bytes::Bytes;
use petrel_core::{BoxFuture, FunctionSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Secrets by name with their values.
pub type SecretValues = Vec<(String, Vec<u8>)>;

/// The values of the secrets a function lists, read when one of its instances starts (so a
/// rotated secret reaches new instances without a redeploy).
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// `names` of namespace `ns` with their values, in order; an error names what is missing.
    fn read<'a>(
        &'a self,
        ns: &'a str,
        names: &'a [String],
    ) -> petrel_core::BoxFuture<'a, Result<SecretValues, String>>;
}

/// A secret's value as a variable: text without NUL bytes only (a binary one is a file alone).
pub(crate) fn secret_vars(secrets: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    secrets
        .iter()
        .filter_map(|(name, v)| {
            let text = std::str::from_utf8(v).ok().filter(|t| !t.contains('\0'))?;
            Some((
                petrel_core::manifest::secret_env_name(name),
                text.to_owned(),
            ))
        })
        .collect()
}

/// What an instance runs: a version of a function and where its code is unpacked.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub namespace: String,
    pub function: String,
    pub version: u32,
    pub spec: Arc<FunctionSpec>,
    pub code_dir: PathBuf,
}

/// How an instance's start was spent: making its process (or loading its component), then its
/// own initialisation until it was ready for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartTimings {
    pub start: Duration,
    pub init: Duration,
}

/// One invocation for a Lambda-protocol instance.
#[derive(Debug, Clone)]
pub struct LambdaRequest {
    pub id: String,
    pub event: Bytes,
    pub timeout: Duration,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
    /// `Lambda-Runtime-Trace-Id` (X-Ray form); a new one when `None`.
    pub trace_id: Option<String>,
}

/// A running instance of one version. Dropping the last handle stops it.
pub trait Instance: Send + Sync + 'static {
    fn id(&self) -> &str;
    fn spec(&self) -> &InstanceSpec;
    fn start_timings(&self) -> StartTimings;
    /// Whether it can take requests (its process runs; a wasm instance always can).
    fn is_alive(&self) -> bool;
    /// Stops it now, whatever it is doing (its whole process tree).
    fn kill(&self);
    /// Stops invocation `id` because it should not go on (it was cancelled): it ends with
    /// [`InvokeError::Stopped`] and `why`. False when `id` does not run here, or cannot be
    /// stopped alone (a process running other invocations too).
    fn stop_invocation(&self, id: &str, why: &str) -> bool;
    /// Writes a line of Petrel's own to the instance's log, about `invocation` if given.
    fn log_platform(&self, invocation: Option<&str>, message: &str);
    /// The protocol it speaks, and so what it can be sent.
    fn protocol(&self) -> Protocol<'_>;
}

/// What an instance takes.
pub enum Protocol<'a> {
    /// Events, through the Lambda Runtime API.
    Lambda(&'a dyn LambdaInstance),
    /// HTTP requests, as sent.
    Http(&'a dyn HttpInstance),
}

/// An instance that takes Lambda events.
pub trait LambdaInstance: Send + Sync {
    /// Runs one invocation. On timeout the instance is killed.
    fn invoke(&self, req: LambdaRequest) -> BoxFuture<'_, Result<LambdaOutcome, InvokeError>>;
}

/// An instance that takes HTTP requests.
pub trait HttpInstance: Send + Sync {
    /// Serves one request of invocation `id`; the timeout covers the response head (a wasm
    /// guest's body too). The answer's body streams as the function writes it, bounded by the
    /// payload limit.
    fn handle<'a>(
        &'a self,
        id: &'a str,
        req: http::Request<Body>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<http::Response<Body>, InvokeError>>;
}

/// A version's code kept loaded while its holder lives (see [`Starter::preload`]).
pub struct Preloaded(#[allow(dead_code)] pub(crate) Arc<dyn Send + Sync>);

impl std::fmt::Debug for Preloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Preloaded")
    }
}

/// Starts instances: [`crate::RuntimeEnv`] in a server, a fake in the data plane's tests.
pub trait Starter: Send + Sync + 'static {
    /// Starts an instance and waits until it is ready to take requests.
    fn start(
        &self,
        spec: InstanceSpec,
    ) -> BoxFuture<'static, Result<Arc<dyn Instance>, InvokeError>>;

    /// Loads a version's code ahead of its first request, so that request's cold start is an
    /// instance's creation only; `None` when there is nothing to load ahead (process runtimes)
    /// or loading failed (the first request then loads it and reports why).
    fn preload(&self, _spec: &InstanceSpec) -> BoxFuture<'static, Option<Preloaded>> {
        Box::pin(async { None })
    }
}

/// A new instance's id: `i-` and the last 12 hex digits of a time-ordered UUID.
pub(crate) fn new_instance_id() -> String {
    let u = uuid::Uuid::now_v7().simple().to_string();
    format!("i-{}", &u[u.len() - 12..])
}
