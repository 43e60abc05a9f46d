//! Petrel's domain vocabulary: function names and references, the `petrel.toml` manifest with its
//! validation, the validated function specification stored with each version, the wire types the
//! CLI, the server and the tests share, and the catalogue of platform error codes.
//!
//! This crate does no I/O and knows nothing of HTTP frameworks, storage or processes; it only says
//! what is valid and how things are named, so that a client never depends on the server.

#![forbid(unsafe_code)]

pub mod api;
pub mod arn;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod manifest;
pub mod name;
pub mod outbound;
pub mod release;
pub mod trigger;

pub use error::{ApiError, ErrorClass, ErrorCode, LambdaError};
pub use manifest::{FunctionSpec, KeepAlivePolicy, Manifest, ManifestError, Network, Runtime};
pub use name::{is_alias_name, FunctionRef, NameError};

/// Largest request or response payload accepted by default (as AWS Lambda's synchronous limit).
pub const DEFAULT_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

/// Namespace used when a request names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Milliseconds since the Unix epoch: how Petrel stamps records, logs and deadlines.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A boxed future that can be sent between threads: the one alias every crate's object-safe
/// async trait methods return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
