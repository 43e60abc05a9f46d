//! `petrel ns`: namespaces, the tenants (`create`, `ls`, `rm`, `quota`).

use super::format_ts;
use crate::client::Client;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use petrel_core::api::{CreateNamespace, NamespaceList, Quotas};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a namespace (owner keys only).
    Create { name: String },
    /// Namespaces this key holds a role in.
    Ls,
    /// Remove an empty namespace with its secrets and roles (owner keys only).
    Rm { name: String },
    /// Set a namespace's quotas (owner keys only); none given removes them.
    Quota {
        name: String,
        /// Functions it may hold.
        #[arg(long)]
        max_functions: Option<u32>,
        /// Sum of max_instances × memory_mb over its functions (MiB).
        #[arg(long)]
        max_memory_mb: Option<u64>,
        /// Invocations running at once.
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// Invocations per second.
        #[arg(long)]
        max_rps: Option<u32>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create { name } => {
            let body = serde_json::to_vec(&CreateNamespace { name: name.clone() })?;
            client
                .call(
                    Method::POST,
                    "/v1/namespaces",
                    Some(("application/json", Bytes::from(body))),
                )
                .await?;
            println!("Created namespace {name}");
        }
        Command::Ls => {
            let list: NamespaceList = client.json(Method::GET, "/v1/namespaces").await?;
            println!(
                "{:<24} {:>9} {:<20} QUOTAS",
                "NAMESPACE", "FUNCTIONS", "CREATED"
            );
            for n in list.namespaces {
                let quotas = n
                    .quotas
                    .map(|q| serde_json::to_string(&q).unwrap_or_default())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:>9} {:<20} {quotas}",
                    n.name,
                    n.functions,
                    format_ts(n.created_at)
                );
            }
        }
        Command::Rm { name } => {
            client
                .call(Method::DELETE, &format!("/v1/namespaces/{name}"), None)
                .await?;
            println!("Removed namespace {name}");
        }
        Command::Quota {
            name,
            max_functions,
            max_memory_mb,
            max_concurrency,
            max_rps,
        } => {
            let q = Quotas {
                max_functions,
                max_memory_mb,
                max_concurrency,
                max_rps,
            };
            let (_, bytes) = client
                .call(
                    Method::PUT,
                    &format!("/v1/namespaces/{name}/quotas"),
                    Some(("application/json", Bytes::from(serde_json::to_vec(&q)?))),
                )
                .await?;
            println!("Quotas of {name}: {}", String::from_utf8_lossy(&bytes));
        }
    }
    Ok(ExitCode::SUCCESS)
}
