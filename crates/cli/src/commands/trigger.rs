//! `petrel trigger`: event triggers, their state (`ls [NAME]`), pausing and resuming one, and
//! the records one gave up on (`dlq NAME TRIGGER`).

use super::{format_ts, ns_query};
use crate::client::Client;
use clap::Subcommand;
use http::Method;
use petrel_core::api::{FunctionList, TriggerDeadLetters, TriggerList, TriggerStatus};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The triggers of a function (or of every function): state, lag or position, counts.
    Ls {
        name: Option<String>,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Pause a trigger: its consumer stops and keeps its position.
    Pause {
        name: String,
        trigger: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Resume a paused trigger from its position.
    Resume {
        name: String,
        trigger: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// The records a trigger gave up on (on_failure = "dlq"), newest first.
    Dlq {
        name: String,
        trigger: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

fn print_header() {
    println!(
        "{:<20} {:<16} {:<8} {:<9} {:>8} {:>10} {:>8} {:>6}  SOURCE",
        "FUNCTION", "TRIGGER", "KIND", "STATE", "LAG", "DELIVERED", "FAILED", "DEAD"
    );
}

fn print_row(function: &str, t: &TriggerStatus) {
    println!(
        "{:<20} {:<16} {:<8} {:<9} {:>8} {:>10} {:>8} {:>6}  {}",
        function,
        t.name,
        t.kind,
        t.state,
        t.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
        t.delivered,
        t.failed,
        t.dead,
        t.source
    );
    if let Some(e) = &t.error {
        println!("  error: {e}");
    }
    if let Some(n) = t.next_fire {
        println!("  next fire: {} UTC", format_ts(n));
    }
    if let Some(w) = &t.webhook {
        println!("  webhook: {w}  (the store's event notifications go to this path of the server)");
    }
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Ls { name, namespace } => {
            let names = match name {
                Some(n) => vec![n],
                None => {
                    let list: FunctionList = client
                        .json(
                            Method::GET,
                            &format!("/v1/functions{}", ns_query(&namespace)),
                        )
                        .await?;
                    list.functions.into_iter().map(|f| f.name).collect()
                }
            };
            let mut any = false;
            for n in names {
                let list: TriggerList = client
                    .json(
                        Method::GET,
                        &format!("/v1/functions/{n}/triggers{}", ns_query(&namespace)),
                    )
                    .await?;
                for t in &list.triggers {
                    if !any {
                        print_header();
                        any = true;
                    }
                    print_row(&list.function, t);
                }
            }
            if !any {
                println!("No triggers. Declare one with a [[trigger]] table in petrel.toml (see docs/triggers.md).");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause {
            name,
            trigger,
            namespace,
        } => set(client, &name, &trigger, &namespace, "pause").await,
        Command::Resume {
            name,
            trigger,
            namespace,
        } => set(client, &name, &trigger, &namespace, "resume").await,
        Command::Dlq {
            name,
            trigger,
            namespace,
        } => {
            let list: TriggerDeadLetters = client
                .json(
                    Method::GET,
                    &format!(
                        "/v1/functions/{name}/triggers/{trigger}/dlq{}",
                        ns_query(&namespace)
                    ),
                )
                .await?;
            if list.dead_letters.is_empty() {
                println!("Trigger {trigger} of {name} has no dead letters.");
                return Ok(ExitCode::SUCCESS);
            }
            for l in list.dead_letters {
                println!(
                    "{}  {}  attempts {}  {}",
                    format_ts(l.dead_at),
                    l.position,
                    l.attempts,
                    l.error
                );
                println!("  {}", l.record);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set(
    client: &Client,
    name: &str,
    trigger: &str,
    namespace: &Option<String>,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let t: TriggerStatus = client
        .json(
            Method::POST,
            &format!(
                "/v1/functions/{name}/triggers/{trigger}/{verb}{}",
                ns_query(namespace)
            ),
        )
        .await?;
    print_header();
    print_row(name, &t);
    Ok(ExitCode::SUCCESS)
}
