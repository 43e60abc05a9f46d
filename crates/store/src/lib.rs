//! Petrel's persistent state: the SQL store (functions, versions, logs) on SQLite or PostgreSQL
//! through one schema and one set of queries, and the content-addressed artifact store that keeps
//! uploaded packages and their unpacked code under the data directory.
//!
//! It does not decide what is valid (that is `petrel-core`) nor run anything (that is the data
//! plane); it stores and reads back.

#![forbid(unsafe_code)]

mod artifacts;
mod db;
mod queue;

pub use artifacts::{ArtifactStore, PackageLimits, MANIFEST_FILE};
pub use db::{Alias, Backend, FunctionRecord, LogCursor, Store};
pub use queue::{
    AsyncBacklog, Cancel, Delivery, Ended, Finish, LeasedAsync, NewAsync, NewDelivery, StoredResult,
};

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
