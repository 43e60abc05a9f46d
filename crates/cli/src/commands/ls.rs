//! `petrel ls`: list functions.

use super::{format_ts, ns_query};
use crate::client::Client;
use http::Method;
use petrel_core::api::FunctionList;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[arg(long, short)]
    namespace: Option<String>,
}

pub(crate) async fn run(client: &Client, Args { namespace }: Args) -> anyhow::Result<ExitCode> {
    let list: FunctionList = client
        .json(
            Method::GET,
            &format!("/v1/functions{}", ns_query(&namespace)),
        )
        .await?;
    if list.functions.is_empty() {
        println!("No functions yet. Create one with `petrel new NAME --runtime python3`, then `petrel deploy NAME`.");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<12} {:<9} {:>7}  UPDATED",
        "NAME", "NAMESPACE", "RUNTIME", "VERSION"
    );
    for f in list.functions {
        println!(
            "{:<32} {:<12} {:<9} {:>7}  {}",
            f.name,
            f.namespace,
            f.runtime,
            f.latest_version,
            format_ts(f.updated_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}
