//! `petrel audit`: the audit log of control-plane actions, newest first.

use super::format_ts;
use crate::client::Client;
use http::Method;
use petrel_core::api::AuditList;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The namespace (its admins read it); the owner may leave it out for all.
    #[arg(long, short)]
    namespace: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/audit?limit={}", args.limit);
    if let Some(ns) = &args.namespace {
        path.push_str(&format!("&namespace={ns}"));
    }
    let list: AuditList = client.json(Method::GET, &path).await?;
    println!(
        "{:<20} {:<16} {:<17} {:<16} {:<18} TARGET",
        "TIME", "NAMESPACE", "KEY", "FROM", "ACTION"
    );
    for e in list.entries {
        println!(
            "{:<20} {:<16} {:<17} {:<16} {:<18} {}",
            format_ts(e.ts),
            e.namespace.as_deref().unwrap_or("-"),
            e.key.as_deref().unwrap_or("-"),
            e.source.as_deref().unwrap_or("-"),
            e.action,
            e.target
        );
    }
    Ok(ExitCode::SUCCESS)
}
