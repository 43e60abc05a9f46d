//! `petrel serve`: run the platform (control API, gateway and data plane in one process),
//! and deploy the directories `--deploy` names once it is up.

use super::deploy;
use crate::client::Client;
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where the SQLite store, artifacts and runtime files live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// Node configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Store URL: postgres://... for PostgreSQL (default: SQLite under the data directory).
    #[arg(long)]
    store: Option<String>,
    /// Cluster mode: this node's name (default: the id kept in the data directory).
    #[arg(long)]
    node_id: Option<String>,
    /// Cluster mode: the URL the other nodes reach this one at (http://10.0.0.5:8080). Nodes
    /// on one PostgreSQL store that advertise themselves are one cluster.
    #[arg(long)]
    advertise: Option<String>,
    /// Deploy these function directories once the server is up (for example examples/*),
    /// each built first when its [build] output is missing or stale.
    #[arg(long, num_args = 1..)]
    deploy: Vec<PathBuf>,
    /// Write Petrel's own log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Export invocation spans as OTLP over HTTP to this collector (http://HOST:4318).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Start every process instance as a new process: no Python fork server, no standby
    /// processes.
    #[arg(long)]
    no_prewarm: bool,
    /// Memory that live process instances may hold together (sum of their memory_mb): 80%
    /// (of this machine's memory, the default), 512MiB, 8GiB.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Each process instance gets a cgroup (as root): memory_mb enforced, at most 256 tasks,
    /// CPU weight by memory. On by default; kept for scripts that ask for it.
    #[arg(long, hide = true)]
    instance_limits: bool,
    /// No cgroup per process instance: no memory_mb limit, no pids limit, no CPU weight. On
    /// cgroup v1 this saves about 12 ms on cold starts that find no standby process.
    #[arg(long, conflicts_with = "instance_limits")]
    no_instance_limits: bool,
    /// Run process instances without the sandbox (namespaces, read-only root, unprivileged
    /// user, seccomp): only for debugging a function that fails only when confined.
    #[arg(long)]
    no_sandbox: bool,
    /// TLS on the listener: a PEM certificate chain (reloaded when it changes, or on SIGHUP).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Turn authentication off: every request is the owner's. Refused unless the server
    /// listens on a loopback address.
    #[arg(long)]
    no_auth: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    petrel_server::init_tracing(args.log_json);
    let mut cfg = petrel_server::ServeConfig::default();
    if let Some(path) = &args.config {
        let (file, warnings) = petrel_server::ConfigFile::load(path)?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        cfg = file.apply(cfg)?;
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(s) = args.store {
        cfg.store = Some(s);
    }
    if let Some(n) = args.node_id {
        cfg.node_id = Some(n);
    }
    if let Some(a) = args.advertise {
        cfg.advertise = Some(a);
    }
    if let Some(e) = args.otlp_endpoint {
        cfg.otlp_endpoint = Some(e);
    }
    if let Some(b) = &args.memory_budget {
        cfg.memory_budget_mb = petrel_server::parse_memory_budget(b)?;
    }
    if args.instance_limits {
        cfg.instance_limits = true;
    }
    if args.no_instance_limits {
        cfg.instance_limits = false;
    }
    if args.no_sandbox {
        cfg.sandbox = false;
    }
    if args.no_prewarm {
        cfg.prewarm = petrel_server::PrewarmConfig::OFF;
    }
    if args.no_auth {
        cfg.auth = false;
    }
    if let (Some(c), Some(k)) = (args.tls_cert, args.tls_key) {
        cfg.tls_cert_file = Some(c);
        cfg.tls_key_file = Some(k);
    }
    let server = petrel_server::Server::start(cfg).await?;
    let deploy_token = server.local_token();
    let url = server.url();
    println!("Petrel listening on {url}");
    std::io::stdout().flush()?;
    let running = tokio::spawn(server.run(petrel_server::shutdown_signal()));
    if !args.deploy.is_empty() {
        let client = Client::new(&url)?.with_token(Some(deploy_token));
        let mut deployed = Vec::new();
        for dir in &args.deploy {
            if !dir.join("petrel.toml").is_file() {
                continue;
            }
            match deploy::deploy(&client, &deploy::Args::of(dir.clone())).await {
                Ok(d) => deployed.push(d),
                Err(e) => eprintln!("error: could not deploy {}: {e:#}", dir.display()),
            }
        }
        for d in &deployed {
            let what = if d.unchanged { "Unchanged" } else { "Deployed" };
            println!("{what} {} version {}: {}", d.name, d.version, d.url);
        }
        if let Some(d) = deployed.first() {
            println!("Try:  curl '{}?name=you'", d.url);
            println!(
                "      PETREL_SERVER={url} petrel invoke {} --data '{{\"name\": \"you\"}}'",
                d.name
            );
        }
        std::io::stdout().flush()?;
    }
    running.await.context("the server task failed")??;
    Ok(())
}
