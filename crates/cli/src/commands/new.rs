//! `petrel new NAME --runtime RUNTIME`: scaffold a function directory that deploys as it is.

use crate::scaffold;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    name: String,
    /// python3, nodejs, provided, http, wasm, java or go.
    #[arg(long)]
    runtime: String,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub(crate) fn run(Args { name, runtime, dir }: Args) -> anyhow::Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    let files = scaffold::scaffold(&dir, &name, &runtime)?;
    println!("Created function {name} ({runtime}) in {}:", dir.display());
    for f in files {
        println!("  {f}");
    }
    match runtime.as_str() {
        "wasm" => println!("petrel deploy builds it with cargo (needs the target once: rustup target add wasm32-wasip2)"),
        "java" => println!("petrel deploy builds it with Maven (mvn package; JDK 17 or newer)"),
        "go" => println!("petrel deploy builds it with go build (Go 1.22 or newer)"),
        _ => {}
    }
    println!("Deploy it with:  petrel deploy {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
