//! `petrel secret`: a namespace's secrets (`set`, `ls`, `rm`). A value is read from standard
//! input or a file, never from the command line (where `ps` and shell history would keep it).

use super::{format_ts, ns_query};
use crate::client::Client;
use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use petrel_core::api::{SecretInfo, SecretList};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Set a secret from standard input (or --from-file); functions that list it get the new
    /// value in their new instances.
    Set {
        name: String,
        #[arg(long, short)]
        namespace: Option<String>,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// A namespace's secrets: names and versions, never values.
    Ls {
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Remove a secret.
    Rm {
        name: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Set {
            name,
            namespace,
            from_file,
        } => {
            let value = match &from_file {
                Some(p) => {
                    std::fs::read(p).with_context(|| format!("could not read {}", p.display()))?
                }
                None => {
                    let mut v = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut v)
                        .context("could not read the value from standard input")?;
                    // `echo value | petrel secret set` should not store echo's newline.
                    if v.ends_with(b"\n") {
                        v.pop();
                        if v.ends_with(b"\r") {
                            v.pop();
                        }
                    }
                    v
                }
            };
            let (_, bytes) = client
                .call(
                    Method::PUT,
                    &format!("/v1/secrets/{name}{}", ns_query(&namespace)),
                    Some(("application/octet-stream", Bytes::from(value))),
                )
                .await?;
            let info: SecretInfo = serde_json::from_slice(&bytes)
                .context("the server answered with unexpected JSON")?;
            println!(
                "Set secret {} (version {}) in {}: functions listing it read /run/secrets/{} or ${}",
                info.name, info.version, info.namespace, info.name, info.env
            );
        }
        Command::Ls { namespace } => {
            let list: SecretList = client
                .json(Method::GET, &format!("/v1/secrets{}", ns_query(&namespace)))
                .await?;
            println!("{:<32} {:>7} {:<20} VARIABLE", "NAME", "VERSION", "UPDATED");
            for s in list.secrets {
                println!(
                    "{:<32} {:>7} {:<20} {}",
                    s.name,
                    s.version,
                    format_ts(s.updated_at),
                    s.env
                );
            }
        }
        Command::Rm { name, namespace } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/secrets/{name}{}", ns_query(&namespace)),
                    None,
                )
                .await?;
            println!("Removed secret {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
