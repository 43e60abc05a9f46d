//! `petrel usage`: metered use per function: invocations, billed time and GB-seconds.

use super::format_ts;
use crate::client::Client;
use http::Method;
use petrel_core::api::Usage;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// From this long ago until now (default 24h).
    #[arg(long)]
    since: Option<String>,
    #[arg(long, short)]
    namespace: Option<String>,
}

pub(crate) async fn run(
    client: &Client,
    Args { since, namespace }: Args,
) -> anyhow::Result<ExitCode> {
    let mut q = vec![];
    q.extend(since.map(|s| format!("since={s}")));
    q.extend(namespace.map(|n| format!("namespace={n}")));
    let u: Usage = client
        .json(Method::GET, &format!("/v1/usage?{}", q.join("&")))
        .await?;
    println!(
        "Usage from {} to {} (UTC)",
        format_ts(u.since),
        format_ts(u.until)
    );
    println!(
        "{:<32} {:<12} {:>11} {:>7} {:>12} {:>12}",
        "FUNCTION", "NAMESPACE", "INVOCATIONS", "ERRORS", "BILLED", "GB-SECONDS"
    );
    for f in &u.functions {
        println!(
            "{:<32} {:<12} {:>11} {:>7} {:>10}ms {:>12.6}",
            f.function, f.namespace, f.invocations, f.errors, f.billed_ms, f.gb_seconds
        );
    }
    println!(
        "{:<32} {:<12} {:>11} {:>7} {:>12} {:>12.6}",
        "total", "", u.total_invocations, "", "", u.total_gb_seconds
    );
    Ok(ExitCode::SUCCESS)
}
