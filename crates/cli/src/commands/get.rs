//! `petrel get NAME`: a function, its configuration and its versions.

use super::{format_ts, ns_query};
use crate::client::Client;
use http::Method;
use petrel_core::api::FunctionDetail;
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
    let f: FunctionDetail = client
        .json(
            Method::GET,
            &format!("/v1/functions/{name}{}", ns_query(&namespace)),
        )
        .await?;
    let latest = f.versions.first();
    println!("Name:       {}", f.name);
    println!("Namespace:  {}", f.namespace);
    println!("URL:        {}", f.url);
    if let Some(v) = latest {
        let s = &v.spec;
        println!("Runtime:    {}", s.runtime);
        println!("Handler:    {}", s.handler);
        println!("Memory:     {} MB", s.memory_mb);
        println!("Timeout:    {}", humantime::format_duration(s.timeout()));
        let keep_alive = match s.keep_alive_policy {
            petrel_core::KeepAlivePolicy::Fixed => {
                humantime::format_duration(s.keep_alive()).to_string()
            }
            petrel_core::KeepAlivePolicy::Hybrid => format!(
                "hybrid (learned; {} until it has learned)",
                humantime::format_duration(s.keep_alive())
            ),
        };
        println!(
            "Concurrency {} per instance, {}..{} instances, keep alive {keep_alive}",
            s.concurrency, s.min_instances, s.max_instances,
        );
        if !s.env.is_empty() {
            let keys: Vec<&str> = s.env.keys().map(String::as_str).collect();
            println!("Env:        {}", keys.join(", "));
        }
    }
    println!("Versions:");
    println!(
        "  {:>7}  {:<19}  {:>10}  DIGEST",
        "VERSION", "CREATED", "SIZE"
    );
    for v in &f.versions {
        println!(
            "  {:>7}  {:<19}  {:>10}  sha256:{}",
            v.version,
            format_ts(v.created_at),
            v.size_bytes,
            &v.digest[..12.min(v.digest.len())]
        );
    }
    let aliases: petrel_core::release::AliasList = client
        .json(
            Method::GET,
            &format!("/v1/functions/{name}/aliases{}", ns_query(&namespace)),
        )
        .await?;
    if !aliases.aliases.is_empty() {
        println!("Aliases:");
        for a in &aliases.aliases {
            print!("  ");
            super::release::print_alias(a);
        }
    }
    Ok(ExitCode::SUCCESS)
}
