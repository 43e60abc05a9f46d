//! The function manifest (`petrel.toml`) and its validated form, [`FunctionSpec`], which is what a
//! version stores. The manifest is written by a developer, so unknown keys are refused by name.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What is wrong with a manifest, naming the field and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("petrel.toml could not be read: {0}")]
    Parse(String),
    #[error("missing field `{field}` in petrel.toml: {hint}")]
    Missing {
        field: &'static str,
        hint: &'static str,
    },
    #[error("invalid `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Trigger(#[from] crate::trigger::TriggerError),
    #[error("unsupported runtime {runtime:?}: {hint}")]
    UnsupportedRuntime { runtime: String, hint: String },
}

impl ManifestError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// The runtimes Petrel knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Python3,
    Nodejs,
    Provided,
    Http,
    Wasm,
    /// Java 17+: `handler = "com.example.Handler::handleRequest"`, run by the official AWS Lambda
    /// runtime interface client.
    Java,
}

impl Runtime {
    pub const ALL: &'static [Runtime] = &[
        Runtime::Python3,
        Runtime::Nodejs,
        Runtime::Provided,
        Runtime::Http,
        Runtime::Wasm,
        Runtime::Java,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python3 => "python3",
            Runtime::Nodejs => "nodejs",
            Runtime::Provided => "provided",
            Runtime::Http => "http",
            Runtime::Wasm => "wasm",
            Runtime::Java => "java",
        }
    }

    /// Whether instances speak the AWS Lambda Runtime API (else they serve HTTP on `$PORT`).
    pub fn speaks_lambda(self) -> bool {
        matches!(
            self,
            Runtime::Python3 | Runtime::Nodejs | Runtime::Provided | Runtime::Java
        )
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Runtime {
    type Err = ManifestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Runtime::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ManifestError::UnsupportedRuntime {
                runtime: s.to_owned(),
                hint: "use one of python3, nodejs, provided, http, wasm, java".to_owned(),
            })
    }
}

/// `petrel.toml` as written. Every field but `name` and `runtime` has a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: Option<String>,
    pub runtime: Option<String>,
    pub handler: Option<String>,
    pub memory_mb: Option<u32>,
    pub timeout: Option<String>,
    pub concurrency: Option<u32>,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub keep_alive: Option<String>,
    pub keep_alive_policy: Option<String>,
    pub queue_size: Option<u32>,
    pub queue_timeout: Option<String>,
    pub allowed_outbound_hosts: Option<Vec<String>>,
    pub network: Option<String>,
    pub tmp_mb: Option<u32>,
    pub max_retries: Option<u32>,
    pub max_event_age: Option<String>,
    pub async_timeout: Option<String>,
    pub async_concurrency: Option<u32>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// Who may call the function's invoke routes: `public`, `key` (the default) or `jwt`.
    pub invoke_auth: Option<String>,
    /// The namespace's secrets the function reads, as files and variables.
    pub secrets: Option<Vec<String>>,
    /// Invocations per second (or minute, hour) the function takes: `100/s`.
    pub rate_limit: Option<String>,
    /// Invocations over the rate that may come at once (default: one second's worth).
    pub rate_limit_burst: Option<u32>,
    /// wasm: requests one instance serves before it is retired (default 1, a fresh instance
    /// per request).
    pub instance_reuse: Option<u32>,
    /// http: the protocol Petrel speaks to the function's server, `http1` (the default) or
    /// `h2c` (HTTP/2 without TLS, prior knowledge: gRPC servers).
    pub http_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `[build]`: how the function is built from its sources, by `petrel build` and by
    /// `petrel deploy` when the build's output is missing or older than its sources. The
    /// server keeps it with the manifest and never runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildManifest>,
    /// The `[[trigger]]` tables.
    #[serde(default, rename = "trigger", skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<crate::trigger::TriggerManifest>,
}

/// `[build]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildManifest {
    /// A shell command (`sh -c`), run in `workdir`.
    pub command: Option<String>,
    /// Where the command runs, relative to the function directory (default: the directory).
    pub workdir: Option<String>,
    /// The sources, as globs relative to the function directory (`src/**/*.rs`): a deploy
    /// builds when one is newer than the output. Default: every file but the output and
    /// `target/`, `node_modules/` and version control.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<String>,
    /// The file or directory the build makes, relative to the function directory. Default:
    /// the component (wasm), `bootstrap` (provided), `lib` (java); none for the others, whose
    /// deploys then always build.
    pub output: Option<String>,
}

impl BuildManifest {
    pub fn command(&self) -> &str {
        self.command.as_deref().unwrap_or_default()
    }

    /// What the build makes: `output`, or the runtime's own file.
    pub fn output_for(&self, runtime: Runtime, handler: &str) -> Option<String> {
        if let Some(o) = &self.output {
            return Some(o.clone());
        }
        match runtime {
            Runtime::Wasm => Some(handler.to_owned()),
            Runtime::Provided => Some("bootstrap".to_owned()),
            Runtime::Java => Some("lib".to_owned()),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.command().trim().is_empty() {
            return Err(ManifestError::Missing {
                field: "build.command",
                hint: "add command = \"...\" to [build], the shell command that builds the function (for example \"go build -o bootstrap .\")",
            });
        }
        let relative = |field: &'static str, p: &str| {
            if p.starts_with('/') || p.split('/').any(|c| c == "..") {
                Err(ManifestError::invalid(
                    field,
                    format!("{p:?} must be a path inside the function directory, without '..'"),
                ))
            } else {
                Ok(())
            }
        };
        if let Some(w) = &self.workdir {
            relative("build.workdir", w)?;
        }
        if let Some(o) = &self.output {
            relative("build.output", o)?;
        }
        for w in &self.watch {
            relative("build.watch", w)?;
        }
        Ok(())
    }
}

pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_CONCURRENCY: u32 = 1;
pub const DEFAULT_WASM_CONCURRENCY: u32 = 100;
/// A 32-bit linear memory is at most 4 GiB.
pub const MAX_WASM_MEMORY_MB: u32 = 4096;
pub const DEFAULT_MAX_INSTANCES: u32 = 10;
/// Requests one wasm instance may serve at most (`instance_reuse`).
pub const MAX_INSTANCE_REUSE: u32 = 1_000_000;
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_QUEUE_SIZE: u32 = 100;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of a sandboxed process instance's private `/tmp` (memory-backed: it counts towards the
/// instance's memory when cgroups are on).
pub const DEFAULT_TMP_MB: u32 = 64;
pub const MAX_TMP_MB: u32 = 10_240;
/// Retries of a failed async invocation, as Lambda.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
pub const MAX_MAX_RETRIES: u32 = 10;
/// How long async work may wait to run, as Lambda's default.
pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);
pub const MAX_MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// An async invocation's own time limit (a synchronous one keeps `timeout`).
pub const DEFAULT_ASYNC_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const MAX_ASYNC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Async invocations of one function in flight at once, per server, at most.
pub const MAX_ASYNC_CONCURRENCY: u32 = 100_000;

/// Environment variable names Petrel sets itself; a manifest may not override them.
const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "PORT",
    "PATH",
    "HOME",
    "TZ",
];

impl Manifest {
    /// Parses `petrel.toml` text; unknown keys and wrong types are errors naming the key.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string().trim().to_owned()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }

    /// Validates every field and fills defaults.
    pub fn validate(&self) -> Result<FunctionSpec, ManifestError> {
        let name = self.name.clone().ok_or(ManifestError::Missing {
            field: "name",
            hint: "add name = \"my-function\"",
        })?;
        crate::name::validate_name("function name", &name)
            .map_err(|e| ManifestError::invalid("name", e.to_string()))?;
        let runtime: Runtime = self
            .runtime
            .as_deref()
            .ok_or(ManifestError::Missing {
                field: "runtime",
                hint: "add runtime = \"python3\" (or nodejs, provided, http, wasm, java)",
            })?
            .parse()?;
        let handler = self.handler.clone().unwrap_or_default();
        validate_handler(runtime, &handler)?;

        let memory_mb = self.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
        let max_memory = if runtime == Runtime::Wasm {
            MAX_WASM_MEMORY_MB
        } else {
            10240
        };
        let min_memory = if runtime == Runtime::Wasm { 1 } else { 64 };
        if !(min_memory..=max_memory).contains(&memory_mb) {
            return Err(ManifestError::invalid(
                "memory_mb",
                format!("{memory_mb} is out of range: use {min_memory} to {max_memory} for runtime {runtime}"),
            ));
        }
        let timeout = duration_field("timeout", self.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(ManifestError::invalid(
                "timeout",
                "must be more than 0 and at most 15m",
            ));
        }
        // A wasm request gets an instance of its own, so one "instance" of the pool is only a
        // share of the compiled component: its default concurrency is high.
        let default_concurrency = if runtime == Runtime::Wasm {
            DEFAULT_WASM_CONCURRENCY
        } else {
            DEFAULT_CONCURRENCY
        };
        let concurrency = self.concurrency.unwrap_or(default_concurrency);
        if !(1..=1000).contains(&concurrency) {
            return Err(ManifestError::invalid(
                "concurrency",
                format!("{concurrency} is out of range: use 1 to 1000"),
            ));
        }
        let max_instances = self.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES);
        if !(1..=1000).contains(&max_instances) {
            return Err(ManifestError::invalid(
                "max_instances",
                format!("{max_instances} is out of range: use 1 to 1000"),
            ));
        }
        let min_instances = self.min_instances.unwrap_or(0);
        if min_instances > max_instances {
            return Err(ManifestError::invalid(
                "min_instances",
                format!("{min_instances} is more than max_instances ({max_instances})"),
            ));
        }
        let keep_alive =
            duration_field("keep_alive", self.keep_alive.as_deref(), DEFAULT_KEEP_ALIVE)?;
        if keep_alive > Duration::from_secs(24 * 3600) {
            return Err(ManifestError::invalid("keep_alive", "must be at most 24h"));
        }
        let keep_alive_policy = match self.keep_alive_policy.as_deref() {
            None | Some("fixed") => KeepAlivePolicy::Fixed,
            Some("hybrid") => KeepAlivePolicy::Hybrid,
            Some(other) => {
                return Err(ManifestError::invalid(
                    "keep_alive_policy",
                    format!("{other:?} is not a policy: use \"fixed\" (stop after keep_alive idle) or \"hybrid\" (learn the function's idle times)"),
                ))
            }
        };
        let queue_size = self.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
        if queue_size > 100_000 {
            return Err(ManifestError::invalid(
                "queue_size",
                format!("{queue_size} is out of range: use 0 to 100000"),
            ));
        }
        let queue_timeout = duration_field(
            "queue_timeout",
            self.queue_timeout.as_deref(),
            DEFAULT_QUEUE_TIMEOUT,
        )?;
        if queue_timeout > MAX_TIMEOUT {
            return Err(ManifestError::invalid(
                "queue_timeout",
                "must be at most 15m",
            ));
        }
        for key in self.env.keys() {
            validate_env_key(key)?;
        }
        let allowed_outbound_hosts = self.allowed_outbound_hosts.clone().unwrap_or_default();
        if !allowed_outbound_hosts.is_empty() && runtime != Runtime::Wasm {
            return Err(ManifestError::invalid(
                "allowed_outbound_hosts",
                "applies to runtime wasm only; remove it (process functions get a network setting with the sandbox)",
            ));
        }
        for h in &allowed_outbound_hosts {
            crate::outbound::HostPattern::parse(h)
                .map_err(|e| ManifestError::invalid("allowed_outbound_hosts", e))?;
        }
        let network = match self.network.as_deref() {
            None | Some("none") => Network::None,
            Some("host") if runtime == Runtime::Wasm => {
                return Err(ManifestError::invalid(
                    "network",
                    "does not apply to runtime wasm: list the hosts it may call in allowed_outbound_hosts",
                ))
            }
            Some("host") => Network::Host,
            Some(other) => {
                return Err(ManifestError::invalid(
                    "network",
                    format!("{other:?} is not a network mode: use \"none\" (loopback only, the default) or \"host\" (the node's network)"),
                ))
            }
        };
        let tmp_mb = self.tmp_mb.unwrap_or(DEFAULT_TMP_MB);
        if !(1..=MAX_TMP_MB).contains(&tmp_mb) {
            return Err(ManifestError::invalid(
                "tmp_mb",
                format!("{tmp_mb} is out of range: use 1 to {MAX_TMP_MB}"),
            ));
        }
        let asynchronous = self.validate_async(timeout, concurrency * max_instances)?;
        let triggers = crate::trigger::validate_all(&self.triggers)?;
        if let Some(b) = &self.build {
            b.validate()?;
        }
        let invoke_auth = match self.invoke_auth.as_deref() {
            None | Some("key") => crate::auth::InvokeAuth::Key,
            Some("public") => crate::auth::InvokeAuth::Public,
            Some("jwt") => crate::auth::InvokeAuth::Jwt,
            Some(other) => {
                return Err(ManifestError::invalid(
                    "invoke_auth",
                    format!("{other:?} is not a mode: use \"public\" (anyone), \"key\" (an API key with invoker, the default) or \"jwt\" (a token of the server's jwt issuer)"),
                ))
            }
        };
        let secrets = self.secrets.clone().unwrap_or_default();
        for (i, s) in secrets.iter().enumerate() {
            crate::name::validate_name("secret name", s)
                .map_err(|e| ManifestError::invalid("secrets", e.to_string()))?;
            if secrets[..i].contains(s) {
                return Err(ManifestError::invalid(
                    "secrets",
                    format!("{s:?} is listed twice"),
                ));
            }
            let var = secret_env_name(s);
            if self.env.contains_key(&var) {
                return Err(ManifestError::invalid(
                    "secrets",
                    format!("secret {s:?} is given to the function as {var}, which [env] sets too: rename one of them"),
                ));
            }
        }
        let rate_limit = match self.rate_limit.as_deref() {
            None => {
                if self.rate_limit_burst.is_some() {
                    return Err(ManifestError::invalid(
                        "rate_limit_burst",
                        "applies only with rate_limit: set both, or remove it",
                    ));
                }
                None
            }
            Some(r) => Some(RateLimit::parse(r, self.rate_limit_burst)?),
        };
        let instance_reuse = self.instance_reuse.unwrap_or(1);
        if self.instance_reuse.is_some() && runtime != Runtime::Wasm {
            return Err(ManifestError::invalid(
                "instance_reuse",
                format!("applies to wasm functions only: a {runtime} instance is one process that serves request after request already"),
            ));
        }
        if !(1..=MAX_INSTANCE_REUSE).contains(&instance_reuse) {
            return Err(ManifestError::invalid(
                "instance_reuse",
                format!("{instance_reuse} is out of range: use 1 (a fresh instance per request, the default) to {MAX_INSTANCE_REUSE}"),
            ));
        }
        let http_protocol = match self.http_protocol.as_deref() {
            None => HttpProtocol::Http1,
            Some(_) if runtime != Runtime::Http => {
                return Err(ManifestError::invalid(
                    "http_protocol",
                    format!("applies to http functions only: Petrel speaks its own protocol to a {runtime} instance"),
                ))
            }
            Some("http1") => HttpProtocol::Http1,
            Some("h2c") => HttpProtocol::H2c,
            Some(other) => {
                return Err(ManifestError::invalid(
                    "http_protocol",
                    format!("{other:?} is not a protocol: use \"http1\" (HTTP/1.1, the default) or \"h2c\" (HTTP/2 without TLS, for gRPC servers)"),
                ))
            }
        };
        Ok(FunctionSpec {
            name,
            runtime,
            handler,
            memory_mb,
            timeout_ms: timeout.as_millis() as u64,
            concurrency,
            min_instances,
            max_instances,
            keep_alive_ms: keep_alive.as_millis() as u64,
            keep_alive_policy,
            queue_size,
            queue_timeout_ms: queue_timeout.as_millis() as u64,
            allowed_outbound_hosts,
            network,
            tmp_mb,
            asynchronous,
            env: self.env.clone(),
            invoke_auth,
            secrets,
            rate_limit,
            instance_reuse,
            http_protocol,
            triggers,
        })
    }

    /// The async keys: retries, ages, the long timeout, the share of the pool, destinations.
    fn validate_async(&self, timeout: Duration, capacity: u32) -> Result<AsyncSpec, ManifestError> {
        let max_retries = self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries > MAX_MAX_RETRIES {
            return Err(ManifestError::invalid(
                "max_retries",
                format!("{max_retries} is out of range: use 0 to {MAX_MAX_RETRIES}"),
            ));
        }
        let max_event_age = duration_field(
            "max_event_age",
            self.max_event_age.as_deref(),
            DEFAULT_MAX_EVENT_AGE,
        )?;
        if max_event_age < Duration::from_secs(1) || max_event_age > MAX_MAX_EVENT_AGE {
            return Err(ManifestError::invalid(
                "max_event_age",
                "must be between 1s and 7d",
            ));
        }
        // An async run is never cut shorter than a synchronous one would be.
        let async_timeout = duration_field(
            "async_timeout",
            self.async_timeout.as_deref(),
            DEFAULT_ASYNC_TIMEOUT.max(timeout),
        )?;
        if async_timeout.is_zero() || async_timeout > MAX_ASYNC_TIMEOUT {
            return Err(ManifestError::invalid(
                "async_timeout",
                "must be more than 0 and at most 24h",
            ));
        }
        // By default async work may take half of the pool, so it never starves synchronous calls.
        // A default derived from other keys is clamped into the key's own range: only a value the
        // developer wrote is refused for being out of it.
        let async_concurrency = self
            .async_concurrency
            .unwrap_or_else(|| (capacity / 2).clamp(1, MAX_ASYNC_CONCURRENCY));
        if !(1..=MAX_ASYNC_CONCURRENCY).contains(&async_concurrency) {
            return Err(ManifestError::invalid(
                "async_concurrency",
                format!("{async_concurrency} is out of range: use 1 to {MAX_ASYNC_CONCURRENCY}"),
            ));
        }
        let on_success = self
            .on_success
            .as_deref()
            .map(|d| Destination::parse("on_success", d))
            .transpose()?;
        let on_failure = self
            .on_failure
            .as_deref()
            .map(|d| Destination::parse("on_failure", d))
            .transpose()?;
        Ok(AsyncSpec {
            max_retries,
            max_event_age_ms: max_event_age.as_millis() as u64,
            timeout_ms: async_timeout.as_millis() as u64,
            concurrency: async_concurrency,
            on_success,
            on_failure,
        })
    }
}

/// Where the outcome of an async invocation goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// POST the outcome (Lambda's destination record) to this `http(s)://` URL.
    Url(String),
    /// Invoke this function (same namespace) asynchronously with the outcome as its event.
    Function(String),
}

pub use crate::outbound::is_http_url;

impl Destination {
    fn parse(field: &'static str, s: &str) -> Result<Self, ManifestError> {
        if let Some(name) = s.strip_prefix("function:") {
            crate::name::validate_name("function name", name)
                .map_err(|e| ManifestError::invalid(field, e.to_string()))?;
            return Ok(Destination::Function(name.to_owned()));
        }
        if is_http_url(s) {
            Ok(Destination::Url(s.to_owned()))
        } else {
            Err(ManifestError::invalid(
                field,
                format!("{s:?} is not a destination: write \"function:NAME\" or an http(s):// URL"),
            ))
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Url(u) => f.write_str(u),
            Destination::Function(n) => write!(f, "function:{n}"),
        }
    }
}

/// How a function's async invocations run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AsyncSpec {
    pub max_retries: u32,
    pub max_event_age_ms: u64,
    pub timeout_ms: u64,
    /// Async invocations of this function in flight at once, per server.
    pub concurrency: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
}

impl Default for AsyncSpec {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            max_event_age_ms: DEFAULT_MAX_EVENT_AGE.as_millis() as u64,
            timeout_ms: DEFAULT_ASYNC_TIMEOUT.as_millis() as u64,
            concurrency: DEFAULT_MAX_INSTANCES / 2,
            on_success: None,
            on_failure: None,
        }
    }
}

impl AsyncSpec {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn max_event_age(&self) -> Duration {
        Duration::from_millis(self.max_event_age_ms)
    }
}

fn duration_field(
    field: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ManifestError> {
    match value {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ManifestError::invalid(
                field,
                format!(
                    "{s:?} is not a duration ({e}); write it like \"30s\", \"500ms\" or \"10m\""
                ),
            )
        }),
    }
}

fn validate_handler(runtime: Runtime, handler: &str) -> Result<(), ManifestError> {
    match runtime {
        Runtime::Python3 | Runtime::Nodejs => {
            let (module, func) = handler.rsplit_once('.').ok_or_else(|| {
                ManifestError::invalid(
                    "handler",
                    format!("{handler:?} must be module.function, for example \"app.handler\" (file app.{} exporting handler)",
                        if runtime == Runtime::Python3 { "py" } else { "js" }),
                )
            })?;
            let ident_ok = !func.is_empty()
                && !func.as_bytes()[0].is_ascii_digit()
                && func
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
            if module.is_empty() || !ident_ok || module.contains("..") || module.starts_with('/') {
                return Err(ManifestError::invalid(
                    "handler",
                    format!("{handler:?} must be module.function with a relative module path, for example \"app.handler\""),
                ));
            }
            Ok(())
        }
        Runtime::Http => {
            if handler.trim().is_empty() {
                Err(ManifestError::Missing {
                    field: "handler",
                    hint: "for runtime http, handler is the command that serves HTTP on $PORT, for example \"node server.js\"",
                })
            } else {
                Ok(())
            }
        }
        Runtime::Wasm => {
            let ok = handler.ends_with(".wasm")
                && !handler.starts_with('/')
                && !handler.split('/').any(|p| p == "..");
            if ok {
                Ok(())
            } else {
                Err(ManifestError::invalid(
                    "handler",
                    format!("{handler:?} must be the relative path of the component in the function directory, for example \"hello.wasm\""),
                ))
            }
        }
        Runtime::Provided => Ok(()),
        Runtime::Java => {
            let (class, method) = match handler.split_once("::") {
                Some((c, m)) => (c, Some(m)),
                None => (handler, None),
            };
            let ident = |s: &str| {
                !s.is_empty()
                    && !s.as_bytes()[0].is_ascii_digit()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
            };
            if class.split('.').all(ident) && method.is_none_or(ident) {
                Ok(())
            } else {
                Err(ManifestError::invalid(
                    "handler",
                    format!("{handler:?} must be package.Class::method or package.Class (a RequestHandler or RequestStreamHandler), for example \"com.example.Handler::handleRequest\""),
                ))
            }
        }
    }
}

fn validate_env_key(key: &str) -> Result<(), ManifestError> {
    let well_formed = !key.is_empty()
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !well_formed {
        return Err(ManifestError::invalid(
            "env",
            format!("{key:?} is not a valid variable name: use letters, digits and '_', not starting with a digit"),
        ));
    }
    if RESERVED_ENV.contains(&key) || key.starts_with("AWS_LAMBDA_") || key.starts_with("PETREL_") {
        return Err(ManifestError::invalid(
            "env",
            format!("{key} is set by Petrel and cannot be overridden; pick another name"),
        ));
    }
    Ok(())
}

/// How idle instances are stopped: after `keep_alive` (`fixed`), or by the function's learned
/// idle-time histogram with `keep_alive` as the fallback (`hybrid`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeepAlivePolicy {
    #[default]
    Fixed,
    Hybrid,
}

impl KeepAlivePolicy {
    pub fn is_fixed(&self) -> bool {
        *self == KeepAlivePolicy::Fixed
    }
}

/// A validated function configuration: what a version stores and what the data plane runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: Runtime,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub keep_alive_ms: u64,
    #[serde(default, skip_serializing_if = "KeepAlivePolicy::is_fixed")]
    pub keep_alive_policy: KeepAlivePolicy,
    pub queue_size: u32,
    pub queue_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// What a sandboxed process instance can reach.
    #[serde(default, skip_serializing_if = "Network::is_none")]
    pub network: Network,
    #[serde(default = "default_tmp_mb", skip_serializing_if = "is_default_tmp_mb")]
    pub tmp_mb: u32,
    /// Versions stored before async mode existed read back with the defaults.
    #[serde(default, rename = "async")]
    pub asynchronous: AsyncSpec,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Versions stored before tenancy existed read back as `key`, the default.
    #[serde(default)]
    #[schema(value_type = String)]
    pub invoke_auth: crate::auth::InvokeAuth,
    /// The namespace's secrets this function reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// wasm: requests one instance serves before it is retired; 1 is a fresh instance per
    /// request.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub instance_reuse: u32,
    /// http: how Petrel talks to the function's server.
    #[serde(default, skip_serializing_if = "HttpProtocol::is_http1")]
    pub http_protocol: HttpProtocol,
    /// Versions stored before triggers existed read back with none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<crate::trigger::TriggerSpec>,
}

fn one() -> u32 {
    1
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

fn default_tmp_mb() -> u32 {
    DEFAULT_TMP_MB
}

fn is_default_tmp_mb(v: &u32) -> bool {
    *v == DEFAULT_TMP_MB
}

/// The protocol Petrel speaks to an `http` function's server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpProtocol {
    /// HTTP/1.1, connections kept alive and reused.
    #[default]
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge: one connection, many streams, trailers.
    H2c,
}

impl HttpProtocol {
    pub fn is_http1(&self) -> bool {
        *self == HttpProtocol::Http1
    }
}

impl std::fmt::Display for HttpProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpProtocol::Http1 => "http1",
            HttpProtocol::H2c => "h2c",
        })
    }
}

/// A process instance's network in the sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A network namespace of its own with loopback only; Petrel reaches it from outside.
    #[default]
    None,
    /// The node's network.
    Host,
}

impl Network {
    pub fn is_none(&self) -> bool {
        *self == Network::None
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::None => "none",
            Network::Host => "host",
        })
    }
}

/// The manifest that validates back to this spec, every key written out: for rewriting a
/// function's configuration (Lambda's UpdateFunctionConfiguration) without losing any of it.
impl From<&FunctionSpec> for Manifest {
    fn from(s: &FunctionSpec) -> Self {
        let ms = |v: u64| Some(format!("{v}ms"));
        let a = &s.asynchronous;
        Manifest {
            name: Some(s.name.clone()),
            runtime: Some(s.runtime.as_str().to_owned()),
            handler: Some(s.handler.clone()),
            memory_mb: Some(s.memory_mb),
            timeout: ms(s.timeout_ms),
            concurrency: Some(s.concurrency),
            min_instances: Some(s.min_instances),
            max_instances: Some(s.max_instances),
            keep_alive: ms(s.keep_alive_ms),
            keep_alive_policy: Some(
                match s.keep_alive_policy {
                    KeepAlivePolicy::Fixed => "fixed",
                    KeepAlivePolicy::Hybrid => "hybrid",
                }
                .to_owned(),
            ),
            queue_size: Some(s.queue_size),
            queue_timeout: ms(s.queue_timeout_ms),
            allowed_outbound_hosts: (!s.allowed_outbound_hosts.is_empty())
                .then(|| s.allowed_outbound_hosts.clone()),
            network: (s.runtime != Runtime::Wasm).then(|| s.network.to_string()),
            tmp_mb: Some(s.tmp_mb),
            max_retries: Some(a.max_retries),
            max_event_age: ms(a.max_event_age_ms),
            async_timeout: ms(a.timeout_ms),
            async_concurrency: Some(a.concurrency),
            on_success: a.on_success.as_ref().map(ToString::to_string),
            on_failure: a.on_failure.as_ref().map(ToString::to_string),
            invoke_auth: Some(s.invoke_auth.as_str().to_owned()),
            secrets: (!s.secrets.is_empty()).then(|| s.secrets.clone()),
            rate_limit: s.rate_limit.map(|r| r.to_string()),
            rate_limit_burst: s.rate_limit.map(|r| r.burst),
            instance_reuse: (s.runtime == Runtime::Wasm).then_some(s.instance_reuse),
            http_protocol: (s.runtime == Runtime::Http).then(|| s.http_protocol.to_string()),
            env: s.env.clone(),
            build: None,
            triggers: s.triggers.iter().map(Into::into).collect(),
        }
    }
}

/// The variable a secret reaches a function as: `db-password` is `DB_PASSWORD`.
pub fn secret_env_name(secret: &str) -> String {
    secret.to_ascii_uppercase().replace(['-', '.'], "_")
}

/// A function's `rate_limit`: so many invocations per period, with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RateLimit {
    /// Invocations per `per_ms`.
    pub count: u32,
    pub per_ms: u64,
    /// Invocations that may come at once when the function was idle.
    pub burst: u32,
}

impl RateLimit {
    /// `100/s`, `600/m` or `1000/h`, with a burst (default: a second's worth, at least 1).
    pub fn parse(s: &str, burst: Option<u32>) -> Result<Self, ManifestError> {
        let bad = || {
            ManifestError::invalid(
                "rate_limit",
                format!("{s:?} is not a rate: write it like \"100/s\", \"600/m\" or \"1000/h\""),
            )
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per_ms = match unit.trim() {
            "s" | "sec" | "second" => 1_000,
            "m" | "min" | "minute" => 60_000,
            "h" | "hour" => 3_600_000,
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000 {
            return Err(ManifestError::invalid(
                "rate_limit",
                format!("{count} is out of range: use 1 to 1000000 per period"),
            ));
        }
        let default_burst = ((count as u64 * 1_000).div_ceil(per_ms)).max(1) as u32;
        let burst = burst.unwrap_or(default_burst);
        if burst == 0 || burst > 1_000_000 {
            return Err(ManifestError::invalid(
                "rate_limit_burst",
                format!("{burst} is out of range: use 1 to 1000000"),
            ));
        }
        Ok(Self {
            count,
            per_ms,
            burst,
        })
    }

    /// Tokens added per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 * 1_000.0 / self.per_ms as f64
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per_ms {
            1_000 => "s",
            60_000 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl FunctionSpec {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms)
    }
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FunctionSpec, ManifestError> {
        Manifest::from_toml(s)?.validate()
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let spec =
            parse("name = \"hello\"\nruntime = \"python3\"\nhandler = \"app.handler\"\n").unwrap();
        assert_eq!(spec.memory_mb, 128);
        assert_eq!(spec.timeout(), Duration::from_secs(30));
        assert_eq!(spec.concurrency, 1);
        assert_eq!(spec.max_instances, 10);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\nmemroy_mb = 3\n")
            .unwrap_err();
        assert!(e.to_string().contains("memroy_mb"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("name = \"Bad\"\nruntime = \"python3\"\nhandler = \"a.b\"", "name"),
            ("name = \"a\"\nruntime = \"cobol\"\nhandler = \"a.b\"", "cobol"),
            ("name = \"a\"\nruntime = \"python3\"\nhandler = \"nodot\"", "handler"),
            ("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\ntimeout = \"soon\"", "timeout"),
            ("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\nmemory_mb = 1", "memory_mb"),
            ("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\nmemory_mb = \"big\"", "memory_mb"),
            ("name = \"a\"\nruntime = \"http\"", "handler"),
            ("runtime = \"http\"", "name"),
            ("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\nmin_instances = 5\nmax_instances = 2", "min_instances"),
            ("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\n[env]\nAWS_LAMBDA_X = \"1\"", "AWS_LAMBDA_X"),
        ];
        for (text, field) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text:?}: {e}");
        }
    }

    #[test]
    fn wasm_has_its_own_rules() {
        let spec = parse("name = \"a\"\nruntime = \"wasm\"\nhandler = \"a.wasm\"\nallowed_outbound_hosts = [\"http://127.0.0.1:8080\"]").unwrap();
        assert_eq!(spec.concurrency, DEFAULT_WASM_CONCURRENCY);
        assert_eq!(spec.allowed_outbound_hosts, vec!["http://127.0.0.1:8080"]);
        for (text, field) in [
            ("handler = \"../a.wasm\"", "handler"),
            ("handler = \"a.py\"", "handler"),
            ("handler = \"a.wasm\"\nmemory_mb = 8192", "memory_mb"),
            (
                "handler = \"a.wasm\"\nallowed_outbound_hosts = [\"example.com\"]",
                "allowed_outbound_hosts",
            ),
        ] {
            let e = parse(&format!("name = \"a\"\nruntime = \"wasm\"\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let spec = parse("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"").unwrap();
        assert_eq!((spec.network, spec.tmp_mb), (Network::None, DEFAULT_TMP_MB));
        let spec = parse("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\nnetwork = \"host\"\ntmp_mb = 512").unwrap();
        assert_eq!((spec.network, spec.tmp_mb), (Network::Host, 512));
        for (toml, field) in [
            (
                "runtime = \"python3\"\nhandler = \"a.b\"\nnetwork = \"bridge\"",
                "network",
            ),
            (
                "runtime = \"wasm\"\nhandler = \"a.wasm\"\nnetwork = \"host\"",
                "network",
            ),
            (
                "runtime = \"python3\"\nhandler = \"a.b\"\ntmp_mb = 0",
                "tmp_mb",
            ),
            (
                "runtime = \"python3\"\nhandler = \"a.b\"\ntmp_mb = 20000",
                "tmp_mb",
            ),
        ] {
            let e = parse(&format!("name = \"a\"\n{toml}")).unwrap_err();
            assert!(e.to_string().contains(field), "{toml}: {e}");
        }
        let e = parse("name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\nallowed_outbound_hosts = [\"*://*:*\"]").unwrap_err();
        assert!(e.to_string().contains("wasm only"), "{e}");
    }

    #[test]
    fn instance_reuse_is_checked_and_survives_a_round_trip() {
        let wasm = "name = \"a\"\nruntime = \"wasm\"\nhandler = \"a.wasm\"\n";
        let http = "name = \"a\"\nruntime = \"http\"\nhandler = \"node s.js\"\n";
        assert_eq!(parse(wasm).unwrap().instance_reuse, 1);
        let spec = parse(&format!("{wasm}instance_reuse = 1000")).unwrap();
        assert_eq!(spec.instance_reuse, 1000);
        assert_eq!(Manifest::from(&spec).validate().unwrap(), spec);
        for (toml, says) in [
            (format!("{wasm}instance_reuse = 0"), "out of range"),
            (format!("{wasm}instance_reuse = 1000001"), "out of range"),
            (format!("{http}instance_reuse = 5"), "wasm functions only"),
        ] {
            let e = parse(&toml).unwrap_err().to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
        // Stored versions from before these keys read back with the defaults.
        let old: FunctionSpec = serde_json::from_value({
            let mut v = serde_json::to_value(parse(wasm).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("instance_reuse");
            v
        })
        .unwrap();
        assert_eq!(old.instance_reuse, 1);
    }

    #[test]
    fn http_protocol_is_for_http_functions_and_survives_a_round_trip() {
        let http = "name = \"a\"\nruntime = \"http\"\nhandler = \"node s.js\"\n";
        let py = "name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\n";
        assert_eq!(parse(http).unwrap().http_protocol, HttpProtocol::Http1);
        let spec = parse(&format!("{http}http_protocol = \"h2c\"")).unwrap();
        assert_eq!(spec.http_protocol, HttpProtocol::H2c);
        assert_eq!(Manifest::from(&spec).validate().unwrap(), spec);
        for (toml, says) in [
            (format!("{http}http_protocol = \"h3\""), "not a protocol"),
            (
                format!("{py}http_protocol = \"h2c\""),
                "http functions only",
            ),
        ] {
            let e = parse(&toml).unwrap_err().to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
    }

    #[test]
    fn async_keys_have_lambdas_defaults_and_are_checked() {
        let base = "name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\n";
        let spec = parse(base).unwrap();
        let a = &spec.asynchronous;
        assert_eq!(a.max_retries, 2);
        assert_eq!(a.max_event_age(), Duration::from_secs(6 * 3600));
        assert_eq!(a.timeout(), Duration::from_secs(15 * 60));
        assert_eq!(a.concurrency, 5, "half of max_instances x concurrency");
        assert_eq!((&a.on_success, &a.on_failure), (&None, &None));
        let spec = parse(&format!(
            "{base}max_retries = 0\nmax_event_age = \"90s\"\nasync_timeout = \"2h\"\nasync_concurrency = 3\non_success = \"function:audit\"\non_failure = \"http://alerts:9000/hook\"\n"
        ))
        .unwrap();
        let a = &spec.asynchronous;
        assert_eq!((a.max_retries, a.concurrency), (0, 3));
        assert_eq!(a.timeout(), Duration::from_secs(7200));
        assert_eq!(a.on_success, Some(Destination::Function("audit".into())));
        assert_eq!(
            a.on_failure,
            Some(Destination::Url("http://alerts:9000/hook".into()))
        );
        // The derived default is clamped into its range, never refused as if written: the
        // largest pool (1000 instances x 1000 requests) deploys.
        let spec = parse(&format!("{base}max_instances = 1000\nconcurrency = 1000\n")).unwrap();
        assert_eq!(spec.asynchronous.concurrency, MAX_ASYNC_CONCURRENCY);
        let e = parse(&format!("{base}async_concurrency = 100001\n")).unwrap_err();
        assert!(e.to_string().contains("async_concurrency"), "{e}");
        // A synchronous timeout longer than the async default raises the async one with it.
        let spec = parse(&format!("{base}timeout = \"15m\"\n")).unwrap();
        assert_eq!(spec.asynchronous.timeout(), Duration::from_secs(900));
        for (extra, field) in [
            ("max_retries = 11", "max_retries"),
            ("max_event_age = \"8d\"", "max_event_age"),
            ("async_timeout = \"25h\"", "async_timeout"),
            ("async_concurrency = 0", "async_concurrency"),
            ("on_success = \"function:Bad\"", "on_success"),
            ("on_failure = \"ftp://x\"", "on_failure"),
            ("on_failure = \"http://\"", "on_failure"),
        ] {
            let e = parse(&format!("{base}{extra}\n")).unwrap_err().to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
        // Versions stored before async mode read back with the defaults.
        let mut json = serde_json::to_value(parse(base).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("async");
        let old: FunctionSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.asynchronous, AsyncSpec::default());
    }

    #[test]
    fn a_spec_writes_back_as_a_manifest_that_validates_to_it() {
        let texts = [
            "name = \"a\"\nruntime = \"python3\"\nhandler = \"a.b\"\n",
            "name = \"b\"\nruntime = \"nodejs\"\nhandler = \"index.handler\"\nmemory_mb = 512\ntimeout = \"1500ms\"\nconcurrency = 4\nmin_instances = 1\nmax_instances = 7\nkeep_alive = \"90s\"\nkeep_alive_policy = \"hybrid\"\nqueue_size = 3\nqueue_timeout = \"2s\"\nnetwork = \"host\"\ntmp_mb = 16\nmax_retries = 0\nmax_event_age = \"1h\"\nasync_timeout = \"3h\"\nasync_concurrency = 2\non_success = \"function:next\"\non_failure = \"http://h:1/x\"\n[env]\nK = \"v \\\" quoted\"\n",
            "name = \"c\"\nruntime = \"wasm\"\nhandler = \"x.wasm\"\nmemory_mb = 16\nallowed_outbound_hosts = [\"https://example.com\"]\n",
        ];
        for t in texts {
            let spec = parse(t).unwrap();
            let back = Manifest::from(&spec).to_toml();
            assert_eq!(parse(&back).unwrap(), spec, "{back}");
        }
    }
}
