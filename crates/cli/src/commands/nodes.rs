//! `petrel nodes`: the nodes of the cluster with their state, address, load and version.

use crate::client::Client;
use http::Method;
use petrel_core::cluster::NodeList;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let list: NodeList = client.json(Method::GET, "/v1/nodes").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<2}{:<24} {:<9} {:<28} {:>9} {:>9} {:>13} {:>9} VERSION",
        "", "NODE", "STATE", "ADDRESS", "IN-FLIGHT", "INSTANCES", "MEMORY (MiB)", "HEARD"
    );
    for n in &list.nodes {
        let me = if n.id == list.this_node { "*" } else { "" };
        println!(
            "{me:<2}{:<24} {:<9} {:<28} {:>9} {:>9} {:>13} {:>9} {}",
            n.id,
            n.state.as_str(),
            n.address,
            n.in_flight,
            n.instances,
            format!("{}/{}", n.memory_used_mb, n.memory_limit_mb),
            format!("{:.1}s ago", n.heartbeat_age_ms as f64 / 1000.0),
            n.petrel_version
        );
    }
    Ok(ExitCode::SUCCESS)
}
