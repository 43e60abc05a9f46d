//! The `petrel` command: `serve` runs the platform; the other commands are clients of its HTTP API.
//! Exit codes: 0 success, 1 the function itself failed (`invoke`), 2 anything else.

#![forbid(unsafe_code)]

pub mod client;
pub mod package;
pub mod scaffold;
pub mod top;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use client::Client;
use http::Method;
use http_body_util::BodyExt;
use petrel_core::api::{
    AsyncAccepted, AsyncInvocation, AsyncInvocationList, DeployResponse, FunctionDetail,
    FunctionList, InvocationList, LogLine, ReplayRequest, ReplayResponse, Usage,
    PACKAGE_CONTENT_TYPE,
};
use petrel_core::error::FUNCTION_ERROR_HEADER;
use petrel_core::Manifest;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "petrel",
    version,
    about = "Petrel: deploy, run and scale functions"
)]
pub struct Cli {
    /// The Petrel server client commands talk to.
    #[arg(
        long,
        global = true,
        env = "PETREL_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: control API, invoke gateway and data plane in one process.
    Serve(ServeArgs),
    /// Scaffold a function directory that deploys as it is.
    New {
        name: String,
        /// python3, nodejs, provided or http.
        #[arg(long)]
        runtime: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Package a function directory and deploy it as a new version.
    Deploy(DeployArgs),
    /// Invoke a function and print its answer; with --async, queue it and print its id.
    Invoke {
        /// name, name.namespace, or name:version.
        name: String,
        /// The event: JSON text, @FILE, or - for standard input.
        #[arg(long, short)]
        data: Option<String>,
        #[arg(long, short)]
        namespace: Option<String>,
        /// Queue the invocation (committed before the answer) and print its id; follow it with
        /// `petrel inv get ID`.
        #[arg(long = "async")]
        asynchronous: bool,
        /// With --async: wait until it ends, then print its result like a synchronous invoke.
        #[arg(long, requires = "asynchronous")]
        wait: bool,
        /// With --async: deduplicate submissions with this key (a retried submission gets the
        /// first one's id).
        #[arg(long, requires = "asynchronous")]
        idempotency_key: Option<String>,
        /// With --async: POST the result to this http:// URL when it ends.
        #[arg(long, requires = "asynchronous")]
        callback_url: Option<String>,
    },
    /// List functions.
    Ls {
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Show a function and its versions.
    Get {
        name: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Delete a function with all its versions and logs.
    Rm {
        name: String,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Invocation records: `inv ls NAME`, `inv get ID`.
    Inv {
        #[command(subcommand)]
        command: InvCommand,
    },
    /// A function's dead-letter list: async invocations whose retries ran out.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Metered use per function: invocations, billed time and GB-seconds.
    Usage {
        /// From this long ago until now (default 24h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Replay a synthetic workload shaped like the Azure Functions trace through the keep-alive
    /// policies (fixed 10 min and hybrid) on virtual time; print cold starts and idle memory.
    Sim {
        /// Applications in the workload.
        #[arg(long, default_value_t = 1000)]
        apps: usize,
        /// Days of virtual time.
        #[arg(long, default_value_t = 3.0)]
        days: f64,
        /// Seed of the workload generator (the same seed gives the same workload).
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// A live view of functions: rate, errors, p50/p99, instances, cold starts.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Print one frame (two scrapes an interval apart) and exit.
        #[arg(long)]
        once: bool,
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Show a function's logs.
    Logs {
        name: String,
        /// Keep printing new lines as they come.
        #[arg(long, short)]
        follow: bool,
        /// Only lines from this long ago on (10m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// Only the lines of one invocation.
        #[arg(long)]
        invocation: Option<String>,
        /// The newest N lines (default 100 without --since).
        #[arg(long)]
        tail: Option<u32>,
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum InvCommand {
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

#[derive(Debug, Subcommand)]
enum DlqCommand {
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

#[derive(Debug, clap::Args)]
struct ServeArgs {
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
    /// Deploy these function directories once the server is up (for example examples/*).
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
}

#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// The function directory (with petrel.toml).
    #[arg(default_value = ".")]
    dir: PathBuf,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    runtime: Option<String>,
    #[arg(long)]
    handler: Option<String>,
    #[arg(long)]
    memory_mb: Option<u32>,
    #[arg(long)]
    timeout: Option<String>,
    #[arg(long)]
    concurrency: Option<u32>,
    #[arg(long)]
    min_instances: Option<u32>,
    #[arg(long)]
    max_instances: Option<u32>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(long, short)]
    namespace: Option<String>,
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

fn ns_query(ns: &Option<String>) -> String {
    ns.as_ref()
        .map(|n| format!("?namespace={n}"))
        .unwrap_or_default()
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Sim { apps, days, seed } = cli.command {
        anyhow::ensure!(
            apps > 0 && days > 0.0 && days <= 60.0,
            "use --apps of at least 1 and --days between 0 and 60"
        );
        print!("{}", petrel_server::keepalive::report(apps, days, seed));
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Serve(args) = cli.command {
        return serve(args).await.map(|_| ExitCode::SUCCESS);
    }
    let client = Client::new(&cli.server)?;
    match cli.command {
        Command::Serve(_) | Command::Sim { .. } => unreachable!("handled above"),
        Command::New { name, runtime, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let files = scaffold::scaffold(&dir, &name, &runtime)?;
            println!("Created function {name} ({runtime}) in {}:", dir.display());
            for f in files {
                println!("  {f}");
            }
            if runtime == "wasm" {
                println!(
                    "Build the component:  cd {} && {}",
                    dir.display(),
                    scaffold::wasm_build_command(&name)
                );
                println!("  (needs the target once: rustup target add wasm32-wasip2)");
            }
            println!("Deploy it with:  petrel deploy {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy(args) => {
            let d = deploy(&client, &args).await?;
            print_deployed(&d);
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoke {
            name,
            data,
            namespace,
            asynchronous: false,
            ..
        } => invoke(&client, &name, data.as_deref(), &namespace).await,
        Command::Invoke {
            name,
            data,
            namespace,
            wait,
            idempotency_key,
            callback_url,
            ..
        } => {
            let opts = AsyncOpts {
                wait,
                idempotency_key,
                callback_url,
            };
            invoke_async(&client, &name, data.as_deref(), &namespace, opts).await
        }
        Command::Ls { namespace } => {
            let list: FunctionList = client
                .json(
                    Method::GET,
                    &format!("/v1/functions{}", ns_query(&namespace)),
                )
                .await?;
            if list.functions.is_empty() {
                println!("No functions yet. Create one with `petrel new NAME --runtime python3`, then `petrel deploy NAME`.");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<32} {:<12} {:<9} {:>7}  UPDATED",
                "NAME", "NAMESPACE", "RUNTIME", "VERSION"
            );
            for f in list.functions {
                println!(
                    "{:<32} {:<12} {:<9} {:>7}  {}",
                    f.name,
                    f.namespace,
                    f.runtime,
                    f.latest_version,
                    format_ts(f.updated_at)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { name, namespace } => {
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { name, namespace } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/functions/{name}{}", ns_query(&namespace)),
                    None,
                )
                .await?;
            println!("Deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Inv {
            command:
                InvCommand::Ls {
                    name,
                    asynchronous: true,
                    status,
                    limit,
                    namespace,
                    ..
                },
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
        Command::Dlq {
            command: DlqCommand::Ls { name, namespace },
        } => {
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
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    name,
                    ids,
                    namespace,
                },
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
        Command::Inv {
            command:
                InvCommand::Ls {
                    name,
                    outcome,
                    since,
                    limit,
                    namespace,
                    ..
                },
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
        Command::Inv {
            command: InvCommand::Get { id },
        } => {
            let r: serde_json::Value = client
                .json(Method::GET, &format!("/v1/invocations/{id}"))
                .await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inv {
            command: InvCommand::Cancel { ids },
        } => {
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
        Command::Top {
            interval,
            once,
            namespace,
        } => {
            let interval = std::time::Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
            let scrape = || async {
                let (_, body) = client.call(Method::GET, "/metrics", None).await?;
                anyhow::Ok((
                    std::time::Instant::now(),
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            };
            let mut before = scrape().await?;
            loop {
                tokio::time::sleep(interval).await;
                let after = scrape().await?;
                let secs = after.0.duration_since(before.0).as_secs_f64();
                let text = top::frame(&before.1, &after.1, secs, namespace.as_deref());
                if once {
                    print!("{text}");
                    return Ok(ExitCode::SUCCESS);
                }
                // Clear the screen, then draw.
                print!(
                    "\x1b[2J\x1b[H{} (every {:.1}s, Ctrl-C to quit)\n\n{text}",
                    client.base(),
                    interval.as_secs_f64()
                );
                std::io::stdout().flush()?;
                before = after;
            }
        }
        Command::Usage { since, namespace } => {
            let mut q = vec![];
            q.extend(since.map(|s| format!("since={s}")));
            q.extend(namespace.map(|n| format!("namespace={n}")));
            let u: Usage = client
                .json(Method::GET, &format!("/v1/usage?{}", q.join("&")))
                .await?;
            println!(
                "Usage from {} to {} (UTC)",
                format_ts(u.since),
                format_ts(u.until)
            );
            println!(
                "{:<32} {:<12} {:>11} {:>7} {:>12} {:>12}",
                "FUNCTION", "NAMESPACE", "INVOCATIONS", "ERRORS", "BILLED", "GB-SECONDS"
            );
            for f in &u.functions {
                println!(
                    "{:<32} {:<12} {:>11} {:>7} {:>10}ms {:>12.6}",
                    f.function, f.namespace, f.invocations, f.errors, f.billed_ms, f.gb_seconds
                );
            }
            println!(
                "{:<32} {:<12} {:>11} {:>7} {:>12} {:>12.6}",
                "total", "", u.total_invocations, "", "", u.total_gb_seconds
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            name,
            follow,
            since,
            invocation,
            tail,
            namespace,
        } => {
            let mut q = vec![];
            if follow {
                q.push("follow=true".to_owned());
            }
            if let Some(s) = since {
                q.push(format!("since={s}"));
            }
            if let Some(i) = invocation {
                q.push(format!("invocation={i}"));
            }
            if let Some(t) = tail {
                q.push(format!("tail={t}"));
            }
            if let Some(n) = namespace {
                q.push(format!("namespace={n}"));
            }
            let path = format!("/v1/functions/{name}/logs?{}", q.join("&"));
            logs(&client, &path).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn format_ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').replace('T', " ")
}

async fn logs(client: &Client, path: &str) -> anyhow::Result<()> {
    let resp = client.send(Method::GET, path, None).await?;
    let (parts, mut body) = resp.into_parts();
    if !parts.status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return Err(client::server_error(&parts, &bytes).into());
    }
    let mut pending: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the log stream was cut off")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                let t =
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(l.ts.max(0) as u64);
                let inv = l
                    .invocation
                    .as_deref()
                    .map(|i| format!(" {i}"))
                    .unwrap_or_default();
                let mut out = stdout.lock();
                let written = writeln!(
                    out,
                    "{} {} v{} {}{} [{}] {}",
                    humantime::format_rfc3339_millis(t),
                    l.function,
                    l.version,
                    l.instance,
                    inv,
                    l.stream,
                    l.line
                )
                .and_then(|_| out.flush());
                match written {
                    Ok(()) => {}
                    // The reader went away (`petrel logs f | head`): that ends the command.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

fn read_data(data: Option<&str>) -> anyhow::Result<Bytes> {
    Ok(match data {
        None => Bytes::new(),
        Some("-") => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("could not read standard input")?;
            Bytes::from(v)
        }
        Some(s) if s.starts_with('@') => Bytes::from(
            std::fs::read(&s[1..]).with_context(|| format!("could not read {}", &s[1..]))?,
        ),
        Some(s) => Bytes::from(s.to_owned()),
    })
}

async fn invoke(
    client: &Client,
    name: &str,
    data: Option<&str>,
    ns: &Option<String>,
) -> anyhow::Result<ExitCode> {
    let body = read_data(data)?;
    let (parts, bytes) = client
        .fetch(
            Method::POST,
            &format!("/v1/functions/{name}/invoke{}", ns_query(ns)),
            Some(("application/json", body)),
        )
        .await?;
    if let Some(kind) = parts.headers.get(FUNCTION_ERROR_HEADER) {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        if !bytes.ends_with(b"\n") {
            writeln!(out)?;
        }
        eprintln!(
            "error: the function failed ({})",
            kind.to_str().unwrap_or("Unhandled")
        );
        return Ok(ExitCode::from(1));
    }
    if !parts.status.is_success() && parts.headers.contains_key(petrel_core::error::ERROR_HEADER) {
        return Err(client::server_error(&parts, &bytes).into());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    if !bytes.ends_with(b"\n") {
        writeln!(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug)]
struct AsyncOpts {
    wait: bool,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
}

fn print_async_list(list: &[AsyncInvocation]) {
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

async fn invoke_async(
    client: &Client,
    name: &str,
    data: Option<&str>,
    ns: &Option<String>,
    opts: AsyncOpts,
) -> anyhow::Result<ExitCode> {
    let body = read_data(data)?;
    let mut query = vec!["async=true".to_owned()];
    query.extend(ns.as_ref().map(|n| format!("namespace={n}")));
    let mut headers = vec![("content-type", "application/json".to_owned())];
    headers.extend(
        opts.idempotency_key
            .map(|k| (petrel_core::api::IDEMPOTENCY_KEY_HEADER, k)),
    );
    headers.extend(
        opts.callback_url
            .map(|u| (petrel_core::api::CALLBACK_URL_HEADER, u)),
    );
    let (parts, bytes) = client
        .fetch_with(
            Method::POST,
            &format!("/v1/functions/{name}/invoke?{}", query.join("&")),
            &headers,
            body,
        )
        .await?;
    if parts.status != http::StatusCode::ACCEPTED {
        return Err(client::server_error(&parts, &bytes).into());
    }
    let accepted: AsyncAccepted =
        serde_json::from_slice(&bytes).context("the server answered with unexpected JSON")?;
    if !opts.wait {
        println!("{}", accepted.id);
        if accepted.duplicate {
            eprintln!("(a duplicate: an earlier submission with this idempotency key has this id)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("queued {}; waiting for it to end", accepted.id);
    loop {
        let a: AsyncInvocation = client
            .json(Method::GET, &format!("/v1/invocations/{}", accepted.id))
            .await?;
        if matches!(a.status.as_str(), "succeeded" | "failed" | "dead") {
            let mut out = std::io::stdout().lock();
            if let Some(r) = &a.result {
                let body = if r.body_encoding == "base64" {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(&r.body)
                        .unwrap_or_default()
                } else {
                    r.body.clone().into_bytes()
                };
                out.write_all(&body)?;
                if !body.ends_with(b"\n") {
                    writeln!(out)?;
                }
            }
            if a.status == "succeeded" {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "error: the invocation ended {} after {} attempt(s): {}",
                a.status,
                a.attempts,
                a.error.unwrap_or_default()
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Reads the manifest, applies the flags, validates, packages and uploads.
async fn deploy(client: &Client, args: &DeployArgs) -> anyhow::Result<DeployResponse> {
    let dir = &args.dir;
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; pass the function's directory (the one with petrel.toml)",
            dir.display()
        );
    }
    let manifest_path = dir.join("petrel.toml");
    let mut m = if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("could not read {}", manifest_path.display()))?;
        Manifest::from_toml(&text).with_context(|| format!("in {}", manifest_path.display()))?
    } else if args.name.is_some() && args.runtime.is_some() {
        Manifest::default()
    } else {
        bail!(
            "{} has no petrel.toml; create one with `petrel new`, or pass --name and --runtime (and --handler)",
            dir.display()
        );
    };
    apply_flags(&mut m, args)?;
    let spec = m
        .validate()
        .with_context(|| format!("in {}", manifest_path.display()))?;
    let package = {
        let (dir, text) = (dir.clone(), m.to_toml());
        let runtime = spec.runtime;
        let handler = spec.handler.clone();
        tokio::task::spawn_blocking(move || match runtime {
            petrel_core::Runtime::Wasm => package::package_component(&dir, &text, &handler),
            _ => package::package_dir(&dir, &text),
        })
        .await??
    };
    let path = format!("/v1/functions/{}{}", spec.name, ns_query(&args.namespace));
    let (_, bytes) = client
        .call(
            Method::PUT,
            &path,
            Some((PACKAGE_CONTENT_TYPE, Bytes::from(package))),
        )
        .await?;
    serde_json::from_slice(&bytes).context("the server answered the deploy with unexpected JSON")
}

fn apply_flags(m: &mut Manifest, a: &DeployArgs) -> anyhow::Result<()> {
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = &a.$field { m.$field = Some(v.clone()); } )* };
    }
    set!(
        name,
        runtime,
        handler,
        memory_mb,
        timeout,
        concurrency,
        min_instances,
        max_instances
    );
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} must be KEY=VALUE"))?;
        m.env.insert(k.to_owned(), v.to_owned());
    }
    Ok(())
}

fn print_deployed(d: &DeployResponse) {
    let digest = &d.digest[..12.min(d.digest.len())];
    if d.unchanged {
        println!(
            "{} is unchanged at version {} (sha256:{digest})",
            d.name, d.version
        );
    } else {
        println!(
            "Deployed {} version {} (sha256:{digest})",
            d.name, d.version
        );
    }
    println!("  URL:    {}", d.url);
    let ns = if d.namespace == petrel_core::DEFAULT_NAMESPACE {
        String::new()
    } else {
        format!(" -n {}", d.namespace)
    };
    println!("  Invoke: petrel invoke {}{ns} --data '{{}}'", d.name);
}

/// The component a wasm function directory names but does not hold yet.
fn unbuilt_component(dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("petrel.toml")).ok()?;
    let m = Manifest::from_toml(&text).ok()?;
    let handler = m.handler.filter(|_| m.runtime.as_deref() == Some("wasm"))?;
    (!dir.join(&handler).is_file()).then_some(handler)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
    let server = petrel_server::Server::start(cfg).await?;
    let addr = server.local_addr();
    let url = format!("http://{addr}");
    println!("Petrel listening on {url}");
    std::io::stdout().flush()?;
    let running = tokio::spawn(server.run(petrel_server::shutdown_signal()));
    if !args.deploy.is_empty() {
        let client = Client::new(&url)?;
        let mut deployed = Vec::new();
        for dir in &args.deploy {
            if !dir.join("petrel.toml").is_file() {
                continue;
            }
            if let Some(component) = unbuilt_component(dir) {
                println!(
                    "Skipped {}: its component {component} is not built yet (the build command is in its petrel.toml)",
                    dir.display()
                );
                continue;
            }
            let a = DeployArgs {
                dir: dir.clone(),
                name: None,
                runtime: None,
                handler: None,
                memory_mb: None,
                timeout: None,
                concurrency: None,
                min_instances: None,
                max_instances: None,
                env: vec![],
                namespace: None,
            };
            match deploy(&client, &a).await {
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
