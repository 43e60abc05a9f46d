//! `petrel dlq`: a function's dead-letter list (`ls NAME`), and its replay (`replay NAME
//! [ID...]`).

use super::inv::print_async_list;
use super::ns_query;
use crate::client::Client;
use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use petrel_core::api::{AsyncInvocationList, ReplayRequest, ReplayResponse};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The dead letters of a function, newest first.
    Ls {
        name: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Queue dead letters again with fresh attempts: the ids given, or all of them.
    Replay {
        name: String,
        ids: Vec<String>,
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Ls { name, namespace } => {
            let list: AsyncInvocationList = client
                .json(
                    Method::GET,
                    &format!("/v1/functions/{name}/dlq{}", ns_query(&namespace)),
                )
                .await?;
            if list.invocations.is_empty() {
                println!("The dead-letter list of {name} is empty.");
                return Ok(ExitCode::SUCCESS);
            }
            print_async_list(&list.invocations);
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            name,
            ids,
            namespace,
        } => {
            let body = serde_json::to_vec(&ReplayRequest { ids })?;
            let (_, bytes) = client
                .call(
                    Method::POST,
                    &format!("/v1/functions/{name}/dlq/replay{}", ns_query(&namespace)),
                    Some(("application/json", Bytes::from(body))),
                )
                .await?;
            let r: ReplayResponse = serde_json::from_slice(&bytes)
                .context("the server answered with unexpected JSON")?;
            println!("Queued again: {}", r.replayed.len());
            for id in r.replayed {
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
