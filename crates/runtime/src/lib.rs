//! Function instances of the process kind: one OS process per instance, speaking either the AWS
//! Lambda Runtime API (served by Petrel, one endpoint per instance; built-in shims for `python3`
//! and `nodejs`, the function's own `bootstrap` for `provided`) or HTTP on `$PORT` (`http`).
//!
//! This crate starts, invokes, watches and kills instances, and captures their output as log
//! lines. It does not decide how many instances run or which one serves a request: that is the
//! pool in `petrel-dataplane`. Process instances are confined by cgroups (`cgroup.rs`) and the
//! sandbox (`sandbox.rs`: namespaces, a read-only root, an unprivileged user, seccomp). The `wasm` runtime
//! runs components of the `wasi:http/proxy` world in-process on wasmtime (`wasm/`).

pub mod cgroup;
mod http;
mod instance;
mod lambda;
pub mod logs;
mod prewarm;
mod process;
pub mod sandbox;
mod shims;
pub mod wasm;
mod zygote;

pub use http::strip_hop_by_hop;
pub use instance::{
    Instance, InstanceSpec, InvokeError, LambdaOutcome, LambdaRequest, Preloaded, RuntimeEnv,
    StartTimings, StreamHead,
};
pub use logs::LogSink;
pub use prewarm::PrewarmConfig;

/// The body type requests and responses are proxied with.
pub type Body = axum::body::Body;
