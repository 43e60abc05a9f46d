//! Releases: `petrel alias set|ls|rm`, `petrel rollout start|status|pause|resume|abort`, and
//! `petrel promote NAME --from NS --to NS`.

use super::{format_ts, ns_query};
use crate::client::Client;
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use petrel_core::api::DeployResponse;
use petrel_core::release::{
    parse_rate, AliasInfo, AliasList, AliasRoute, Promote, PutAlias, RolloutInfo, RolloutPlan,
    StartRollout, Weighted,
};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(crate) enum AliasCommand {
    /// Point an alias at a version (or at the latest), optionally splitting a share of its
    /// calls to a second version: `--weight 8=0.1` sends 10% to version 8.
    Set {
        name: String,
        alias: String,
        /// The version (a number, or `latest` to follow the newest).
        #[arg(long)]
        version: String,
        /// VERSION=SHARE: that share (0 to 1, or a percentage) of calls to a second version.
        #[arg(long, value_name = "VERSION=SHARE")]
        weight: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// A function's aliases with their versions, weights and rollouts.
    Ls {
        name: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Remove an alias.
    Rm {
        name: String,
        alias: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Move an alias to a new version step by step, rolling back by itself when the new
    /// version's error rate or p99 crosses a limit.
    Start {
        name: String,
        #[arg(long)]
        alias: String,
        /// The new version.
        #[arg(long)]
        to: u32,
        /// The new version's share after each step, in percent, the last 100: 10,50,100.
        #[arg(long)]
        steps: Option<String>,
        /// Instead of --steps: canary-10-5m, linear-10-1m, all-at-once (CodeDeploy's kinds).
        #[arg(long)]
        preset: Option<String>,
        /// How long each step is watched (default 1m, or the preset's).
        #[arg(long)]
        interval: Option<String>,
        /// Roll back when the new version's error rate passes this (2% or 0.02).
        #[arg(long)]
        max_error_rate: Option<String>,
        /// Roll back when the new version's p99 passes this (800ms).
        #[arg(long)]
        max_p99: Option<String>,
        /// Calls of the new version in a step before its limits are judged.
        #[arg(long, default_value_t = 20)]
        min_calls: u64,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// A rollout's state and history: the one in progress on the alias, else its latest.
    Status {
        name: String,
        #[arg(long)]
        alias: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Hold the rollout at its step.
    Pause {
        name: String,
        #[arg(long)]
        alias: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Carry on from the step it was paused at (watched for a whole interval again).
    Resume {
        name: String,
        #[arg(long)]
        alias: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Stop it and point the alias at the old version alone.
    Abort {
        name: String,
        #[arg(long)]
        alias: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct PromoteArgs {
    name: String,
    /// The namespace the tested version is in.
    #[arg(long)]
    from: String,
    /// The namespace to copy it to.
    #[arg(long)]
    to: String,
    /// The version to copy (default: the one --alias points at in --from, else the latest).
    #[arg(long)]
    version: Option<u32>,
    /// Point this alias at the copy in --to.
    #[arg(long)]
    alias: Option<String>,
}

/// `8=0.1` or `8=10%`.
fn parse_weight(s: &str) -> anyhow::Result<Weighted> {
    let (v, w) = s
        .split_once('=')
        .with_context(|| format!("--weight {s:?} must be VERSION=SHARE, like 8=0.1 or 8=10%"))?;
    let version = v
        .trim()
        .parse()
        .with_context(|| format!("--weight {s:?}: {v:?} is not a version number"))?;
    let weight = parse_rate(w).map_err(anyhow::Error::msg)?;
    Ok(Weighted { version, weight })
}

fn route_text(r: &AliasRoute) -> String {
    let main = r
        .version
        .map(|v| format!("version {v}"))
        .unwrap_or_else(|| "latest".into());
    match r.additional {
        Some(w) => format!(
            "{main} {:.4}%, version {} {:.4}%",
            (1.0 - w.weight) * 100.0,
            w.version,
            w.weight * 100.0
        )
        .replace(".0000%", "%"),
        None => main,
    }
}

pub(crate) fn print_alias(a: &AliasInfo) {
    println!("{:<16} {}", a.name, route_text(&a.route));
    if let Some(r) = &a.rollout {
        println!(
            "  rollout {} {}: version {} -> {}, step {} of {}",
            r.id,
            r.state.as_str(),
            r.from_version,
            r.to_version,
            r.step + 1,
            r.plan.steps.len()
        );
    }
}

fn print_rollout(r: &RolloutInfo) {
    println!(
        "rollout {} of {}:{}  version {} -> {}  {}",
        r.id,
        r.function,
        r.alias,
        r.from_version,
        r.to_version,
        r.state.as_str()
    );
    let steps: Vec<String> = r.plan.steps.iter().map(|s| format!("{s}%")).collect();
    println!(
        "  steps {}, each watched {}; now at step {} ({}%)",
        steps.join(" "),
        humantime::format_duration(r.plan.interval()),
        r.step + 1,
        r.plan.steps[r.step.min(r.plan.steps.len() - 1)]
    );
    if let Some(reason) = &r.reason {
        println!("  reason: {reason}");
    }
    for e in &r.history {
        println!("  {}  {}", format_ts(e.at), e.message);
    }
}

pub(crate) async fn alias(client: &Client, command: AliasCommand) -> anyhow::Result<ExitCode> {
    match command {
        AliasCommand::Set {
            name,
            alias,
            version,
            weight,
            description,
            namespace,
        } => {
            let version = match version.as_str() {
                "latest" => None,
                v => Some(v.parse().with_context(|| {
                    format!("--version {v:?} must be a version number or latest")
                })?),
            };
            let additional = weight.as_deref().map(parse_weight).transpose()?;
            let put = PutAlias {
                route: AliasRoute {
                    version,
                    additional,
                },
                description,
            };
            let (_, body) = client
                .call(
                    Method::PUT,
                    &format!(
                        "/v1/functions/{name}/aliases/{alias}{}",
                        ns_query(&namespace)
                    ),
                    Some(("application/json", Bytes::from(serde_json::to_vec(&put)?))),
                )
                .await?;
            let a: AliasInfo = serde_json::from_slice(&body)?;
            print_alias(&a);
        }
        AliasCommand::Ls { name, namespace } => {
            let list: AliasList = client
                .json(
                    Method::GET,
                    &format!("/v1/functions/{name}/aliases{}", ns_query(&namespace)),
                )
                .await?;
            if list.aliases.is_empty() {
                println!("{name} has no aliases. Make one with `petrel alias set {name} prod --version N`.");
            }
            for a in &list.aliases {
                print_alias(a);
            }
        }
        AliasCommand::Rm {
            name,
            alias,
            namespace,
        } => {
            client
                .call(
                    Method::DELETE,
                    &format!(
                        "/v1/functions/{name}/aliases/{alias}{}",
                        ns_query(&namespace)
                    ),
                    None,
                )
                .await?;
            println!("Removed alias {alias} of {name}.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rollout(client: &Client, command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let (name, alias, namespace, verb) = match command {
        RolloutCommand::Start {
            name,
            alias,
            to,
            steps,
            preset,
            interval,
            max_error_rate,
            max_p99,
            min_calls,
            namespace,
        } => {
            let mut plan =
                RolloutPlan::parse(steps.as_deref(), preset.as_deref(), interval.as_deref())
                    .map_err(anyhow::Error::msg)?;
            plan.max_error_rate = max_error_rate
                .as_deref()
                .map(parse_rate)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            plan.max_p99_ms = max_p99
                .as_deref()
                .map(|s| {
                    humantime::parse_duration(s.trim())
                        .map(|d| d.as_millis() as u64)
                        .with_context(|| format!("--max-p99 {s:?} must be a duration like 800ms"))
                })
                .transpose()?;
            plan.min_calls = min_calls;
            let start = StartRollout {
                alias,
                to_version: to,
                plan,
            };
            let (_, body) = client
                .call(
                    Method::POST,
                    &format!("/v1/functions/{name}/rollouts{}", ns_query(&namespace)),
                    Some(("application/json", Bytes::from(serde_json::to_vec(&start)?))),
                )
                .await?;
            let r: RolloutInfo = serde_json::from_slice(&body)?;
            print_rollout(&r);
            return Ok(ExitCode::SUCCESS);
        }
        RolloutCommand::Status {
            name,
            alias,
            namespace,
        } => (name, alias, namespace, None),
        RolloutCommand::Pause {
            name,
            alias,
            namespace,
        } => (name, alias, namespace, Some("pause")),
        RolloutCommand::Resume {
            name,
            alias,
            namespace,
        } => (name, alias, namespace, Some("resume")),
        RolloutCommand::Abort {
            name,
            alias,
            namespace,
        } => (name, alias, namespace, Some("abort")),
    };
    let path = match verb {
        None => format!("/v1/functions/{name}/aliases/{alias}/rollout"),
        Some(v) => format!("/v1/functions/{name}/aliases/{alias}/rollout/{v}"),
    };
    let method = if verb.is_some() {
        Method::POST
    } else {
        Method::GET
    };
    let r: RolloutInfo = client
        .json(method, &format!("{path}{}", ns_query(&namespace)))
        .await?;
    print_rollout(&r);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn promote(client: &Client, a: PromoteArgs) -> anyhow::Result<ExitCode> {
    if a.from == a.to {
        bail!("--from and --to name the same namespace; promote copies between two");
    }
    let p = Promote {
        from: a.from.clone(),
        version: a.version,
        alias: a.alias.clone(),
    };
    let (_, body) = client
        .call(
            Method::POST,
            &format!("/v1/functions/{}/promote?namespace={}", a.name, a.to),
            Some(("application/json", Bytes::from(serde_json::to_vec(&p)?))),
        )
        .await?;
    let d: DeployResponse = serde_json::from_slice(&body)?;
    let digest = &d.digest[..12.min(d.digest.len())];
    let what = if d.unchanged {
        "already at"
    } else {
        "copied to"
    };
    println!(
        "{} from {} {what} {} version {} (sha256:{digest}, nothing rebuilt)",
        d.name, a.from, a.to, d.version
    );
    if let Some(alias) = &a.alias {
        println!("  alias {alias} in {} -> version {}", a.to, d.version);
    }
    println!("  URL: {}", d.url);
    Ok(ExitCode::SUCCESS)
}
