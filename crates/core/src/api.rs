//! Wire types of the control API (`/v1/...`), shared by the server, the CLI and the tests.

use crate::FunctionSpec;
use serde::{Deserialize, Serialize};

/// Content type of a deploy upload: a zip of the function directory with `petrel.toml` at its root.
pub const PACKAGE_CONTENT_TYPE: &str = "application/zip";

/// One line of the function list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u32,
    /// sha256 of the uploaded package, hex.
    pub digest: String,
    pub size_bytes: u64,
    pub created_at: i64,
    pub spec: FunctionSpec,
}

/// A function with all its versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionList {
    pub functions: Vec<FunctionSummary>,
}

/// A line a function instance wrote to stdout or stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// One invocation as recorded: what ran, how long, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub version: u32,
    /// `invoke` (the raw invoke) or `http` (`/fn/...`).
    pub trigger: String,
    /// Milliseconds since the Unix epoch, when the request arrived.
    pub started_at: i64,
    /// From arrival to the answer's head, in milliseconds.
    pub duration_ms: u64,
    /// Time the function ran, rounded up to the millisecond (at least 1), as metering counts it.
    pub billed_ms: u64,
    pub memory_mb: u32,
    /// Whether this request waited for its instance to start.
    pub cold_start: bool,
    /// `success`, `function_error`, `timeout`, `crashed`, `out_of_memory`, `init_failed`, ...
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationList {
    pub invocations: Vec<InvocationRecord>,
}

/// Metered use of one function over a time range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionUsage {
    pub namespace: String,
    pub function: String,
    pub invocations: u64,
    pub errors: u64,
    pub billed_ms: u64,
    /// memory (GB) × billed duration (s), summed per invocation.
    pub gb_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub since: i64,
    pub until: i64,
    pub functions: Vec<FunctionUsage>,
    pub total_invocations: u64,
    pub total_gb_seconds: f64,
}
