//! `petrel rm NAME`: delete a function with all its versions and logs.

use super::ns_query;
use crate::client::Client;
use http::Method;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    name: String,
    #[arg(long, short)]
    namespace: Option<String>,
}

pub(crate) async fn run(
    client: &Client,
    Args { name, namespace }: Args,
) -> anyhow::Result<ExitCode> {
    client
        .call(
            Method::DELETE,
            &format!("/v1/functions/{name}{}", ns_query(&namespace)),
            None,
        )
        .await?;
    println!("Deleted {name}");
    Ok(ExitCode::SUCCESS)
}
