//! `petrel logs NAME [--follow]`: a function's logs, as they come with `--follow`.

use crate::client::{self, Client};
use anyhow::Context;
use http::Method;
use http_body_util::BodyExt;
use petrel_core::api::LogLine;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
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
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        name,
        follow,
        since,
        invocation,
        tail,
        namespace,
    } = args;
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
    stream(client, &path).await?;
    Ok(ExitCode::SUCCESS)
}

async fn stream(client: &Client, path: &str) -> anyhow::Result<()> {
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
