//! Petrel's persistent state: the SQL store on SQLite or PostgreSQL through one schema and one
//! set of queries, by what it keeps (functions with their versions and aliases; the async queue
//! with its deliveries; logs and invocation records; learned keep-alive histograms), and the
//! content-addressed artifact store that keeps uploaded packages and their unpacked code under
//! the data directory.
//!
//! It does not decide what is valid (that is `petrel-core`) nor run anything (that is the data
//! plane); it stores and reads back.

#![forbid(unsafe_code)]

mod artifacts;
mod cluster;
mod functions;
mod histograms;
mod queue;
mod records;
mod releases;
mod store;
mod tenancy;
mod triggers;

pub use artifacts::{ArtifactStore, PackageLimits, MANIFEST_FILE};
pub use cluster::{Change, Heartbeat};
pub use functions::{Alias, FunctionRecord};
pub use petrel_core::api::AsyncBacklog;
pub use queue::{
    Cancel, Delivery, Ended, Finish, LeasedAsync, NewAsync, NewDelivery, StoredResult,
};
pub use records::LogCursor;
pub use releases::VersionStats;
pub use store::{Backend, Store};
pub use tenancy::{AuditEntry, KeyRecord, SecretRecord};
pub use triggers::{TriggerCounts, TriggerDeadLetter, TriggerState};

/// Errors of the storage layer. Package problems are the uploader's to fix; the rest are ours.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid package: {0}")]
    InvalidPackage(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub use petrel_core::now_ms;

/// What a caller is told of a store failure: a package problem as it is (the uploader's to
/// fix); anything else as Petrel's internal error, its cause logged here and never shown.
impl From<StoreError> for petrel_core::ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidPackage(m) => {
                petrel_core::ApiError::new(petrel_core::ErrorCode::InvalidPackage, m)
            }
            other => {
                tracing::error!(error = %other, "store failure");
                petrel_core::ApiError::internal()
            }
        }
    }
}
