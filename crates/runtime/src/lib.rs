//! Function instances and what starts them.
//!
//! Two kinds, each a type: process instances (`process::ProcessInstance`), one OS process
//! per instance speaking the AWS Lambda Runtime API (served by Petrel, one endpoint per
//! instance; built-in shims for `python3` and `nodejs`, the function's own `bootstrap` for
//! `provided`) or HTTP on `$PORT` (`http`), confined by cgroups (`cgroup.rs`) and the sandbox
//! (`petrel-sandbox`); and wasm instances ([`wasm::WasmInstance`]), components of the
//! `wasi:http/proxy` world run in-process on wasmtime. [`RuntimeEnv`] starts both, through
//! [`Starter`]; cold starts are shortened by prewarmed processes (`prewarm.rs`, `zygote.rs`).
//!
//! This crate starts, invokes, watches and kills instances, and captures their output as log
//! lines. It does not decide how many instances run or which one serves a request: that is the
//! pool in `petrel-dataplane`.

pub mod cgroup;
mod env;
mod error;
mod http_port;
mod instance;
mod java;
mod lambda_api;
pub mod logs;
mod os_process;
mod prewarm;
mod process;
mod shims;
pub mod wasm;
mod zygote;

pub use env::{RuntimeConfig, RuntimeEnv};
pub use error::InvokeError;
pub use http_port::strip_hop_by_hop;
pub use instance::{
    HttpInstance, Instance, InstanceSpec, LambdaInstance, LambdaRequest, Preloaded, Protocol,
    SecretSource, SecretValues, StartTimings, Starter,
};
pub use lambda_api::{LambdaOutcome, StreamHead};
pub use logs::LogSink;
pub use prewarm::PrewarmConfig;

/// The body type requests and responses are proxied with.
pub type Body = axum::body::Body;
