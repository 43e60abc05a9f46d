//! Wire types of the control API (`/v1/...`), shared by the server, the CLI and the tests.

use crate::FunctionSpec;
use serde::{Deserialize, Serialize};

/// Content type of a deploy upload: a zip of the function directory with `petrel.toml` at its root.
pub const PACKAGE_CONTENT_TYPE: &str = "application/zip";

/// One line of the function list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionSummary {
    pub namespace: String,
    pub name: String,
    pub runtime: String,
    pub latest_version: u32,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

/// An immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub version: u32,
    /// sha256 of the uploaded package, hex.
    pub digest: String,
    pub size_bytes: u64,
    pub created_at: i64,
    pub spec: FunctionSpec,
}

/// A function with all its versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionDetail {
    pub namespace: String,
    pub name: String,
    pub latest_version: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub url: String,
    pub versions: Vec<VersionInfo>,
}

/// The answer to a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployResponse {
    pub namespace: String,
    pub name: String,
    pub version: u32,
    pub digest: String,
    /// Whether this deploy created the function (else it added a version).
    pub created: bool,
    /// The package was identical to the latest version's: no version was added.
    #[serde(default)]
    pub unchanged: bool,
    /// Where `/fn/{name}` answers, as seen by the server.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionSummary>,
}

/// A line a function instance wrote to stdout or stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch, when Petrel read the line.
    pub ts: i64,
    pub namespace: String,
    pub function: String,
    pub version: u32,
    pub instance: String,
    /// The invocation the line belongs to, when Petrel can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<String>,
    /// `stdout`, `stderr`, or `platform` for Petrel's own lines about the instance.
    pub stream: String,
    pub line: String,
}

/// Header carrying the invocation id on every invoke answer.
pub const INVOCATION_ID_HEADER: &str = "x-petrel-invocation-id";
/// Header carrying the version that served an invocation.
pub const VERSION_HEADER: &str = "x-petrel-version";

/// Declares a string-backed enum: its wire and stored spelling, `as_str`, `FromStr` (naming the
/// accepted values on error), `Display` and serde as that spelling.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        // By hand: the derive does not see a `rename` that comes through a macro, and would
        // document the Rust names instead of the wire's.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("{s:?} is not one of {}", all.join(", "))
                    })
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// The way an invocation came in.
    Trigger {
        /// `ANY /fn/{name}/...`.
        Http = "http",
        /// The raw invoke, `POST /v1/functions/{name}/invoke` (what `petrel invoke` uses).
        Invoke = "invoke",
        /// AWS Lambda's `Invoke` and `InvokeWithResponseStream`.
        LambdaInvoke = "lambda-invoke",
        /// An attempt of an async invocation.
        Async = "async",
        /// A batch of a Kafka trigger.
        Kafka = "kafka",
        /// A batch of a NATS JetStream trigger.
        Nats = "nats",
        /// A batch of a Redis Streams trigger.
        Redis = "redis",
        /// A batch of a RabbitMQ (AMQP) trigger.
        Amqp = "amqp",
        /// A batch of an MQTT trigger.
        Mqtt = "mqtt",
        /// A batch of a PostgreSQL change-stream trigger.
        Postgres = "postgres",
        /// A batch of a MySQL/MariaDB binlog trigger.
        Mysql = "mysql",
        /// A batch of an object storage (S3) trigger.
        S3 = "s3",
        /// A fire of a cron trigger.
        Cron = "cron",
    }
}

impl Trigger {
    /// OpenTelemetry's `faas.trigger`: `http` for requests the function sees as HTTP, else
    /// `pubsub` for message queues, `timer` for schedules, else `other`.
    pub fn otel(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Kafka | Trigger::Nats | Trigger::Redis | Trigger::Amqp | Trigger::Mqtt => {
                "pubsub"
            }
            Trigger::Postgres | Trigger::Mysql | Trigger::S3 => "datasource",
            Trigger::Cron => "timer",
            Trigger::Invoke | Trigger::LambdaInvoke | Trigger::Async => "other",
        }
    }
}

/// The way an invocation came in, with the trigger's name when an event trigger made it:
/// `http`, `async`, `kafka:orders`. Written and read as that text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TriggerLabel {
    pub kind: Trigger,
    /// The name of the function's `[[trigger]]` that made the invocation.
    pub name: Option<std::sync::Arc<str>>,
}

impl TriggerLabel {
    pub fn named(kind: Trigger, name: &str) -> Self {
        Self {
            kind,
            name: Some(name.into()),
        }
    }
}

impl From<Trigger> for TriggerLabel {
    fn from(kind: Trigger) -> Self {
        Self { kind, name: None }
    }
}

impl std::fmt::Display for TriggerLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}:{n}", self.kind),
            None => f.write_str(self.kind.as_str()),
        }
    }
}

impl std::str::FromStr for TriggerLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n.into())),
            None => (s, None),
        };
        Ok(Self {
            kind: kind.parse()?,
            name,
        })
    }
}

impl Serialize for TriggerLabel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TriggerLabel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

wire_enum! {
    /// How an invocation that reached a function ended.
    InvocationOutcome {
        Success = "success",
        /// The handler raised (or answered with a Runtime API error).
        FunctionError = "function_error",
        Timeout = "timeout",
        Crashed = "crashed",
        OutOfMemory = "out_of_memory",
        /// Its instance failed to start.
        InitFailed = "init_failed",
        /// Petrel stopped it on purpose (its async invocation was cancelled).
        Stopped = "stopped",
        /// It answered in a way Petrel cannot use, or more than the response limit.
        Error = "error",
    }
}

/// One invocation as recorded: what ran, how long, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationRecord {
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub version: u32,
    /// How it came in: `http`, `invoke`, `lambda-invoke`, `async`, or an event trigger with its
    /// name (`kafka:orders`, `nats:events`, `cron:nightly`).
    #[schema(value_type = String)]
    pub trigger: TriggerLabel,
    /// Milliseconds since the Unix epoch, when the request arrived.
    pub started_at: i64,
    /// From arrival to the answer's head, in milliseconds.
    pub duration_ms: u64,
    /// Time the function ran, rounded up to the millisecond (at least 1), as metering counts it.
    pub billed_ms: u64,
    pub memory_mb: u32,
    /// Whether this request waited for its instance to start.
    pub cold_start: bool,
    pub outcome: InvocationOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationList {
    pub invocations: Vec<InvocationRecord>,
}

/// Metered use of one function over a time range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionUsage {
    pub namespace: String,
    pub function: String,
    pub invocations: u64,
    pub errors: u64,
    pub billed_ms: u64,
    /// memory (GB) × billed duration (s), summed per invocation.
    pub gb_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub since: i64,
    pub until: i64,
    pub functions: Vec<FunctionUsage>,
    pub total_invocations: u64,
    pub total_gb_seconds: f64,
}

/// Header naming where to POST the result of an async invocation when it is done.
pub const CALLBACK_URL_HEADER: &str = "x-callback-url";
/// Header that makes a submission idempotent: a second submission with the same key to the same
/// function within the window gets the first one's id, and nothing is queued twice.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header on a 202 that says the submission was a duplicate of an earlier one (by its key).
pub const DUPLICATE_HEADER: &str = "x-petrel-duplicate";

/// The answer to an async submission (`202 Accepted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AsyncAccepted {
    pub id: String,
    /// The idempotency key matched an earlier submission: this is its id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

wire_enum! {
    /// States of an async invocation.
    AsyncStatus {
        /// Waiting for its first run or for a retry.
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        /// Ended without success and will not run again: the function is gone or refused the
        /// input.
        Failed = "failed",
        /// Retries exhausted or too old: in the function's dead-letter list, replayable.
        Dead = "dead",
        /// Cancelled by a caller (`DELETE /v1/invocations/{id}`): will not run again, nothing is
        /// delivered.
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// What a queued request is when it runs.
    AsyncKind {
        /// A request to `/fn/{name}/...`, as sent (method, path, headers, body).
        Http = "http",
        /// An event, as the raw invoke takes it.
        Event = "event",
    }
}

wire_enum! {
    /// Where the delivery of an async invocation's outcome stands.
    DeliveryState {
        Pending = "pending",
        Delivered = "delivered",
        /// Petrel gave up after its attempts.
        Failed = "failed",
    }
}

/// How many of a function's async invocations are in one status, and the oldest's submission
/// (the queue's gauges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncBacklog {
    pub namespace: String,
    pub function: String,
    /// `queued`, `running` or `dead`.
    pub status: AsyncStatus,
    pub count: u64,
    pub oldest_created_at: i64,
}

/// What a function answered, as stored for an async invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text when it is UTF-8, else base64 (see `body_encoding`).
    pub body: String,
    /// `utf8` or `base64`.
    pub body_encoding: String,
}

impl InvocationResult {
    pub fn new(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Self {
        match std::str::from_utf8(body) {
            Ok(s) => Self {
                status,
                headers,
                body: s.to_owned(),
                body_encoding: "utf8".into(),
            },
            Err(_) => {
                use base64::Engine;
                Self {
                    status,
                    headers,
                    body: base64::engine::general_purpose::STANDARD.encode(body),
                    body_encoding: "base64".into(),
                }
            }
        }
    }
}

/// An async invocation: where it is, how often it ran, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AsyncInvocation {
    pub id: String,
    pub namespace: String,
    pub function: String,
    /// The version asked for; none means the latest when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Always `async`.
    pub trigger: Trigger,
    pub status: AsyncStatus,
    /// Runs so far, the interrupted ones included.
    pub attempts: u32,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When the latest attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// When a queued invocation may run (its retry's time after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<i64>,
    /// The version that ran the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_version: Option<u32>,
    /// The latest attempt's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The latest attempt's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<InvocationResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Times it was replayed from the dead-letter list.
    pub replays: u32,
    /// The server that ran (or runs) the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Where its outcome is being delivered (the callback URL, a URL destination).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<DeliveryStatus>,
}

/// One delivery of an async invocation's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryStatus {
    pub url: String,
    pub status: DeliveryState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AsyncInvocationList {
    pub invocations: Vec<AsyncInvocation>,
}

/// `POST /v1/functions/{name}/dlq/replay`: the ids to run again; none means every one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayRequest {
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayResponse {
    /// The ids queued again.
    pub replayed: Vec<String>,
}

/// A function's event triggers and how each is doing (`GET /v1/functions/{name}/triggers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerList {
    pub function: String,
    pub triggers: Vec<TriggerStatus>,
}

/// One trigger's state on the server that answers, and its counts across servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerStatus {
    pub name: String,
    /// `kafka`, `nats` or `cron`.
    pub kind: String,
    /// What it reads: `kafka://127.0.0.1:9092/orders`, `nats://…/ORDERS (orders.>)`, the
    /// schedule and its time zone.
    pub source: String,
    /// `running`, `starting`, `failing` (see `error`), `paused` or `disabled`.
    pub state: String,
    /// Why it is failing, while it is (it retries with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version or alias it invokes; none: the latest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Records of the source not yet processed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Where it is in its source (Kafka: committed offset per partition; JetStream: the last
    /// acknowledged stream sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Batches being invoked now.
    pub in_flight: u32,
    pub delivered: u64,
    pub failed: u64,
    pub dead: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<i64>,
    /// A cron trigger's last fire and next due time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire: Option<i64>,
    /// An s3 trigger in notify mode: the path (with its secret) the store's event
    /// notifications are POSTed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// Records a trigger gave up on (`on_failure = "dlq"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerDeadLetters {
    pub dead_letters: Vec<TriggerDeadLetterView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerDeadLetterView {
    pub id: String,
    /// `topic-partition@offset` or `stream@sequence`.
    pub position: String,
    /// The record as a CloudEvent.
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
    pub error: String,
    pub attempts: u32,
    pub dead_at: i64,
}

/// A namespace (a tenant, or an environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamespaceInfo {
    pub name: String,
    pub created_at: i64,
    /// How many functions it holds.
    pub functions: u64,
    /// Its quotas, if any are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamespaceList {
    pub namespaces: Vec<NamespaceInfo>,
}

/// `POST /v1/namespaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateNamespace {
    pub name: String,
}

/// A namespace's limits; each unset one is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Functions it may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_functions: Option<u32>,
    /// The sum over its functions of `max_instances × memory_mb` (MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// Invocations running at once over all its functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Invocations per second over all its functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rps: Option<u32>,
}

/// An API key as the API shows it: never its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub description: String,
    /// Holds the cluster's `owner` role.
    pub owner: bool,
    /// Its role in each namespace.
    pub roles: std::collections::BTreeMap<String, String>,
    pub created_at: i64,
    /// The key that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// `POST /v1/keys`: a key with these roles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default)]
    pub description: String,
    /// The cluster's `owner` role (only an owner may give it).
    #[serde(default)]
    pub owner: bool,
    /// Namespace -> role (`admin`, `developer`, `invoker`, `viewer`).
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, String>,
}

/// A new key: its token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub token: String,
    pub key: KeyInfo,
}

/// A secret as the API shows it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub namespace: String,
    pub name: String,
    /// Goes up by one with each `petrel secret set`.
    pub version: i64,
    pub updated_at: i64,
    /// The variable a function that lists it gets it as (its file is `/run/secrets/NAME`).
    pub env: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

/// One control-plane action of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The key that acted (none without authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `function.deploy`, `secret.set`, `key.create`, ...
    pub action: String,
    pub target: String,
    /// The address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditRecord>,
}

/// `GET /v1/whoami`: the calling key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// Authentication is on.
    pub authenticated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub owner: bool,
    pub roles: std::collections::BTreeMap<String, String>,
}
