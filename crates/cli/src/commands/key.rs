//! `petrel key`: API keys (`create`, `ls`, `revoke`). A new key's token is printed alone on
//! standard output, its details on standard error, so that `TOKEN=$(petrel key create ...)`
//! captures it.

use super::format_ts;
use crate::client::Client;
use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use petrel_core::api::{CreateKey, CreatedKey, KeyList};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Make a key with a role in a namespace (repeat --namespace/--role for more); prints its
    /// token, shown this once.
    Create {
        /// A namespace the key gets a role in; pairs with the --role at the same position.
        #[arg(long, short)]
        namespace: Vec<String>,
        /// admin, developer, invoker or viewer.
        #[arg(long, short)]
        role: Vec<String>,
        /// The cluster's owner role: manages namespaces and every key (owner keys only).
        #[arg(long)]
        owner: bool,
        /// What the key is for, shown by `key ls`.
        #[arg(long, short, default_value = "")]
        description: String,
    },
    /// Keys this key may manage (never their tokens).
    Ls,
    /// Revoke a key by id: it stops working at once.
    Revoke { id: String },
}

pub(crate) async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create {
            namespace,
            role,
            owner,
            description,
        } => {
            if namespace.len() != role.len() {
                anyhow::bail!(
                    "give one --role for each --namespace (got {} namespaces and {} roles)",
                    namespace.len(),
                    role.len()
                );
            }
            let req = CreateKey {
                description,
                owner,
                roles: namespace.into_iter().zip(role).collect(),
            };
            let (_, bytes) = client
                .call(
                    Method::POST,
                    "/v1/keys",
                    Some(("application/json", Bytes::from(serde_json::to_vec(&req)?))),
                )
                .await?;
            let created: CreatedKey = serde_json::from_slice(&bytes)
                .context("the server answered with unexpected JSON")?;
            println!("{}", created.token);
            let roles: Vec<String> = created
                .key
                .roles
                .iter()
                .map(|(ns, r)| format!("{r} in {ns}"))
                .chain(created.key.owner.then(|| "owner".to_owned()))
                .collect();
            eprintln!(
                "Created key {} ({}). The token above is shown this once: keep it; the Lambda API takes the id as access key id and the token as secret access key.",
                created.key.id,
                roles.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls => {
            let list: KeyList = client.json(Method::GET, "/v1/keys").await?;
            println!(
                "{:<17} {:<20} {:<8} {:<36} DESCRIPTION",
                "ID", "CREATED", "STATE", "ROLES"
            );
            for k in list.keys {
                let mut roles: Vec<String> =
                    k.roles.iter().map(|(ns, r)| format!("{ns}={r}")).collect();
                if k.owner {
                    roles.insert(0, "owner".into());
                }
                println!(
                    "{:<17} {:<20} {:<8} {:<36} {}",
                    k.id,
                    format_ts(k.created_at),
                    if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    roles.join(","),
                    k.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { id } => {
            client
                .call(Method::DELETE, &format!("/v1/keys/{id}"), None)
                .await?;
            println!("Revoked key {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
