//! End-to-end tests: the real `petrel` binary, spawned on port 0, driven through the CLI and HTTP.
//! Tests whose name ends in `_postgres` need the PostgreSQL server from `scripts/services.sh`.

mod asynchronous;
mod chart;
mod cli_ux;
mod cluster;
mod coldstart;
mod console;
mod errors;
mod fixtures;
mod harness;
mod http_fn;
mod jwt;
mod lambda_clients;
mod languages;
mod lifecycle;
mod limits;
mod metrics;
mod pool;
mod releases;
mod tenancy;
mod tracing;
mod triggers;
mod triggers_changes;
mod triggers_queues;
mod triggers_s3;
mod wasm;
