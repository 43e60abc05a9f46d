//! `petrel inv`: invocation records (`ls NAME`, `ls NAME --async`), one invocation (`get ID`),
//! and cancelling async ones (`cancel ID...`).

use super::format_ts;
use crate::client::Client;
use clap::Subcommand;
use http::Method;
use petrel_core::api::{AsyncInvocation, AsyncInvocationList, InvocationList};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A function's invocations, newest first (each attempt's record; --async: the async
    /// invocations with their status).
    Ls {
        name: String,
        /// The async invocations, with status and attempts.
        #[arg(long = "async")]
        asynchronous: bool,
        /// With --async: only this status (queued, running, succeeded, failed, dead, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this outcome (success, function_error, timeout, crashed, ...).
        #[arg(long)]
        outcome: Option<String>,
        /// Only from this long ago on (10m, 2h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// One invocation: an async one's status, attempts and result, or a record.
    Get { id: String },
    /// Cancel async invocations that have not ended (queued, waiting for a retry, running, or
    /// dead): they do not run again and nothing is delivered; a running attempt is stopped.
    Cancel {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Ls {
            name,
            asynchronous: true,
            status,
            limit,
            namespace,
            ..
        } => {
            let mut q = vec![format!("limit={limit}")];
            q.extend(status.map(|s| format!("status={s}")));
            q.extend(namespace.map(|n| format!("namespace={n}")));
            let list: AsyncInvocationList = client
                .json(
                    Method::GET,
                    &format!("/v1/functions/{name}/async?{}", q.join("&")),
                )
                .await?;
            print_async_list(&list.invocations);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls {
            name,
            outcome,
            since,
            limit,
            namespace,
            ..
        } => {
            let mut q = vec![format!("limit={limit}")];
            q.extend(outcome.map(|o| format!("outcome={o}")));
            q.extend(since.map(|s| format!("since={s}")));
            q.extend(namespace.map(|n| format!("namespace={n}")));
            let list: InvocationList = client
                .json(
                    Method::GET,
                    &format!("/v1/functions/{name}/invocations?{}", q.join("&")),
                )
                .await?;
            println!(
                "{:<36}  {:<19}  {:>9}  {:>9}  {:<4}  {:<15}  ERROR",
                "ID", "STARTED", "DURATION", "BILLED", "COLD", "OUTCOME"
            );
            for r in list.invocations {
                let err: String = r
                    .error
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(60)
                    .collect();
                println!(
                    "{:<36}  {:<19}  {:>7}ms  {:>7}ms  {:<4}  {:<15}  {err}",
                    r.id,
                    format_ts(r.started_at),
                    r.duration_ms,
                    r.billed_ms,
                    if r.cold_start { "yes" } else { "" },
                    r.outcome
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { id } => {
            let r: serde_json::Value = client
                .json(Method::GET, &format!("/v1/invocations/{id}"))
                .await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { ids } => {
            // Each on its own: one that already ended does not keep the others from cancelling.
            let mut failed = false;
            for id in ids {
                match client
                    .json::<AsyncInvocation>(Method::DELETE, &format!("/v1/invocations/{id}"))
                    .await
                {
                    Ok(a) => println!("Cancelled {id} ({})", a.error.unwrap_or_default()),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

pub(crate) fn print_async_list(list: &[AsyncInvocation]) {
    println!(
        "{:<36}  {:<19}  {:<9}  {:>8}  {:>6}  ERROR",
        "ID", "CREATED", "STATUS", "ATTEMPTS", "RESULT"
    );
    for a in list {
        let err: String = a
            .error
            .as_deref()
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        let result = a
            .result
            .as_ref()
            .map(|r| r.status.to_string())
            .unwrap_or_default();
        println!(
            "{:<36}  {:<19}  {:<9}  {:>8}  {:>6}  {err}",
            a.id,
            format_ts(a.created_at),
            a.status,
            a.attempts,
            result
        );
    }
}
