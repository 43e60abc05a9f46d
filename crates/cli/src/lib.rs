//! The `petrel` command: `serve` runs the platform; the other commands are clients of its HTTP
//! API. Each command is a module of [`commands`], with its arguments and what it does; this file
//! only parses and dispatches. Exit codes: 0 success, 1 the function itself failed (`invoke`),
//! 2 anything else.

#![forbid(unsafe_code)]

pub mod build;
pub mod client;
pub mod commands;
pub mod package;
pub mod progress;
pub mod scaffold;

use clap::{Parser, Subcommand};
use client::Client;
use commands::*;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "petrel",
    version,
    about = "Petrel: deploy, run and scale functions"
)]
pub struct Cli {
    /// The Petrel server client commands talk to (default: the profile's, else
    /// http://127.0.0.1:8080).
    #[arg(long, global = true, env = "PETREL_SERVER")]
    server: Option<String>,
    /// The API key client commands send (default: the profile's, else the local server's
    /// ./.petrel/bootstrap-token when it can be read).
    #[arg(long, global = true, env = "PETREL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A profile of `petrel profile`: its server and key.
    #[arg(long, global = true, env = "PETREL_PROFILE")]
    profile: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: control API, invoke gateway and data plane in one process.
    Serve(serve::Args),
    /// Scaffold a function directory that deploys as it is.
    New(new::Args),
    /// Package a function directory and deploy it as a new version.
    Deploy(deploy::Args),
    /// Run the function's [build] command (deploy runs it when its output is stale).
    Build(commands::build::Args),
    /// Invoke a function and print its answer; with --async, queue it and print its id.
    Invoke(invoke::Args),
    /// List functions.
    Ls(ls::Args),
    /// Show a function and its versions.
    Get(get::Args),
    /// Delete a function with all its versions and logs.
    Rm(rm::Args),
    /// Invocation records: `inv ls NAME`, `inv get ID`.
    Inv {
        #[command(subcommand)]
        command: inv::Command,
    },
    /// A function's dead-letter list: async invocations whose retries ran out.
    Dlq {
        #[command(subcommand)]
        command: dlq::Command,
    },
    /// Aliases: `alias set NAME ALIAS --version N [--weight M=0.1]`, `alias ls NAME`, `alias rm NAME ALIAS`.
    Alias {
        #[command(subcommand)]
        command: release::AliasCommand,
    },
    /// Gradual rollouts of an alias with automatic rollback: `rollout start|status|pause|resume|abort`.
    Rollout {
        #[command(subcommand)]
        command: release::RolloutCommand,
    },
    /// Copy a tested version to another namespace (same artifact, nothing rebuilt).
    Promote(release::PromoteArgs),
    /// Event triggers: `trigger ls [NAME]`, `trigger pause|resume NAME TRIGGER`, `trigger dlq NAME TRIGGER`.
    Trigger {
        #[command(subcommand)]
        command: trigger::Command,
    },
    /// Metered use per function: invocations, billed time and GB-seconds.
    Usage(usage::Args),
    /// Replay a synthetic workload shaped like the Azure Functions trace through the keep-alive
    /// policies (fixed 10 min and hybrid) on virtual time; print cold starts and idle memory.
    Sim(sim::Args),
    /// A live view of functions: rate, errors, p50/p99, instances, cold starts.
    Top(top::Args),
    /// Show a function's logs.
    Logs(logs::Args),
    /// Namespaces (tenants): `ns create|ls|rm NAME`, `ns quota NAME --max-...`.
    Ns {
        #[command(subcommand)]
        command: ns::Command,
    },
    /// API keys: `key create --namespace NS --role ROLE`, `key ls`, `key revoke ID`.
    Key {
        #[command(subcommand)]
        command: key::Command,
    },
    /// Secrets: `secret set NAME` (value on standard input), `secret ls`, `secret rm NAME`.
    Secret {
        #[command(subcommand)]
        command: secret::Command,
    },
    /// The audit log of control-plane actions.
    Audit(audit::Args),
    /// The nodes of the cluster: state, address, load, version.
    Nodes(nodes::Args),
    /// Named servers with their keys: `profile set|ls|use|rm`.
    Profile {
        #[command(subcommand)]
        command: profile::Command,
    },
    /// The calling key: its id and roles.
    Whoami,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The server and key client commands use: flags and environment first, then the profile,
/// then the local defaults.
fn client_for(
    server: Option<String>,
    token: Option<String>,
    profile: Option<&str>,
) -> anyhow::Result<Client> {
    let profile = commands::profile::Profiles::load()?.pick(profile)?;
    let server = server
        .or_else(|| profile.as_ref().map(|p| p.server.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let token = token.or_else(|| profile.and_then(|p| p.token)).or_else(|| {
        // The first key of a server started here with the default data directory.
        std::fs::read_to_string(".petrel/bootstrap-token")
            .ok()
            .map(|t| t.trim().to_owned())
    });
    Ok(Client::new(&server)?.with_token(token))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (server, token, profile) = (cli.server, cli.token, cli.profile);
    let client = || client_for(server.clone(), token.clone(), profile.as_deref());
    match cli.command {
        Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::New(args) => new::run(args),
        Command::Sim(args) if args.cluster => sim_cluster::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Deploy(args) => deploy::run(&client()?, args).await,
        Command::Build(args) => commands::build::run(args).await,
        Command::Invoke(args) => invoke::run(&client()?, args).await,
        Command::Ls(args) => ls::run(&client()?, args).await,
        Command::Get(args) => get::run(&client()?, args).await,
        Command::Rm(args) => rm::run(&client()?, args).await,
        Command::Inv { command } => inv::run(&client()?, command).await,
        Command::Dlq { command } => dlq::run(&client()?, command).await,
        Command::Trigger { command } => trigger::run(&client()?, command).await,
        Command::Alias { command } => release::alias(&client()?, command).await,
        Command::Rollout { command } => release::rollout(&client()?, command).await,
        Command::Promote(args) => release::promote(&client()?, args).await,
        Command::Usage(args) => usage::run(&client()?, args).await,
        Command::Top(args) => top::run(&client()?, args).await,
        Command::Logs(args) => logs::run(&client()?, args).await,
        Command::Ns { command } => ns::run(&client()?, command).await,
        Command::Key { command } => key::run(&client()?, command).await,
        Command::Secret { command } => secret::run(&client()?, command).await,
        Command::Audit(args) => audit::run(&client()?, args).await,
        Command::Nodes(args) => nodes::run(&client()?, args).await,
        Command::Profile { command } => profile::run(command),
        Command::Whoami => {
            let w: petrel_core::api::WhoAmI =
                client()?.json(http::Method::GET, "/v1/whoami").await?;
            println!("{}", serde_json::to_string_pretty(&w)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
