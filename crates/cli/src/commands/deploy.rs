//! `petrel deploy [DIR]`: read the manifest, apply the flags, validate, package and upload it
//! as a new version.

use super::ns_query;
use crate::client::Client;
use crate::package;
use anyhow::{bail, Context};
use bytes::Bytes;
use http::Method;
use petrel_core::api::{DeployResponse, PACKAGE_CONTENT_TYPE};
use petrel_core::Manifest;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The function directory (with petrel.toml).
    #[arg(default_value = ".")]
    pub(crate) dir: PathBuf,
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
    /// Move no alias: the ones that follow the latest version stay on the one they serve now
    /// (roll the new version out with `petrel alias set` or `petrel rollout start`).
    #[arg(long)]
    no_traffic: bool,
    /// Deploy what is there: do not run the [build] command even when its output is missing
    /// or older than its sources.
    #[arg(long)]
    no_build: bool,
}

impl Args {
    /// A deploy of `dir` as its manifest says, without flags.
    pub(crate) fn of(dir: PathBuf) -> Self {
        Self {
            dir,
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
            no_traffic: false,
            no_build: false,
        }
    }
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let d = deploy(client, &args).await?;
    print_deployed(&d);
    Ok(ExitCode::SUCCESS)
}

/// Reads the manifest, applies the flags, validates, packages and uploads.
pub(crate) async fn deploy(client: &Client, args: &Args) -> anyhow::Result<DeployResponse> {
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
    if let (Some(build), false) = (&m.build, args.no_build) {
        let (dir, build, name) = (dir.clone(), build.clone(), spec.name.clone());
        let (runtime, handler) = (spec.runtime, spec.handler.clone());
        tokio::task::spawn_blocking(move || {
            match crate::build::stale(&dir, &build, runtime, &handler)? {
                Some(why) => crate::build::run(&dir, &name, &build, runtime, &handler, Some(&why)),
                None => Ok(()),
            }
        })
        .await??;
    }
    let package = {
        let (dir, text) = (dir.clone(), m.to_toml());
        let runtime = spec.runtime;
        let handler = spec.handler.clone();
        tokio::task::spawn_blocking(move || match runtime {
            petrel_core::Runtime::Wasm => package::package_component(&dir, &text, &handler),
            petrel_core::Runtime::Java => {
                package::package_dir_without(&dir, &text, package::JAVA_SOURCES)
            }
            _ => package::package_dir(&dir, &text),
        })
        .await??
    };
    let compiles = match spec.runtime {
        petrel_core::Runtime::Wasm => ", which compiles the component",
        petrel_core::Runtime::Java => ", which prepares the JVM",
        _ => "",
    };
    let detail = format!(
        "{} to {}{compiles}",
        crate::progress::size(package.len()),
        client.base()
    );
    let step = crate::progress::Step::start(format!("Uploading {}", spec.name), Some(&detail));
    let mut path = format!("/v1/functions/{}{}", spec.name, ns_query(&args.namespace));
    if args.no_traffic {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str("no_traffic=true");
    }
    let answer = client
        .call(
            Method::PUT,
            &path,
            Some((PACKAGE_CONTENT_TYPE, Bytes::from(package))),
        )
        .await;
    let (_, bytes) = match answer {
        Ok(a) => {
            step.finish("done");
            a
        }
        Err(e) => {
            step.abandon();
            return Err(e);
        }
    };
    serde_json::from_slice(&bytes).context("the server answered the deploy with unexpected JSON")
}

fn apply_flags(m: &mut Manifest, a: &Args) -> anyhow::Result<()> {
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
