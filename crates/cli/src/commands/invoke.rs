//! `petrel invoke NAME`: invoke a function and print its answer; with `--async`, queue it and
//! print its id (or, with `--wait`, its result once it ends).

use super::{ns_query, print_body};
use crate::client::{self, Client};
use anyhow::Context;
use bytes::Bytes;
use http::Method;
use petrel_core::api::{AsyncAccepted, AsyncInvocation, AsyncStatus};
use petrel_core::error::FUNCTION_ERROR_HEADER;
use std::io::Read;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
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
}

pub(crate) async fn run(client: &Client, a: Args) -> anyhow::Result<ExitCode> {
    if !a.asynchronous {
        return invoke(client, &a.name, a.data.as_deref(), &a.namespace).await;
    }
    let opts = AsyncOpts {
        wait: a.wait,
        idempotency_key: a.idempotency_key,
        callback_url: a.callback_url,
    };
    invoke_async(client, &a.name, a.data.as_deref(), &a.namespace, opts).await
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
        print_body(&bytes)?;
        eprintln!(
            "error: the function failed ({})",
            kind.to_str().unwrap_or("Unhandled")
        );
        return Ok(ExitCode::from(1));
    }
    if !parts.status.is_success() && parts.headers.contains_key(petrel_core::error::ERROR_HEADER) {
        return Err(client::server_error(&parts, &bytes).into());
    }
    print_body(&bytes)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug)]
struct AsyncOpts {
    wait: bool,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
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
        if matches!(
            a.status,
            AsyncStatus::Succeeded | AsyncStatus::Failed | AsyncStatus::Dead
        ) {
            if let Some(r) = &a.result {
                let body = if r.body_encoding == "base64" {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(&r.body)
                        .unwrap_or_default()
                } else {
                    r.body.clone().into_bytes()
                };
                print_body(&body)?;
            }
            if a.status == AsyncStatus::Succeeded {
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
