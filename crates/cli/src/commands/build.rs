//! `petrel build [DIR]`: run the function's `[build]` command now, whatever its output's age
//! (`petrel deploy` runs it only when the output is missing or older than its sources).

use anyhow::{bail, Context};
use petrel_core::Manifest;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The function directory (with petrel.toml).
    #[arg(default_value = ".")]
    dir: PathBuf,
}

pub(crate) async fn run(Args { dir }: Args) -> anyhow::Result<ExitCode> {
    let path = dir.join("petrel.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "could not read {}; pass the function's directory",
            path.display()
        )
    })?;
    let m = Manifest::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
    let spec = m
        .validate()
        .with_context(|| format!("in {}", path.display()))?;
    let Some(build) = m.build.clone() else {
        bail!(
            "{} has no [build] table: add one with the command that builds the function, for example\n\n[build]\ncommand = \"go build -o bootstrap .\"",
            path.display()
        );
    };
    tokio::task::spawn_blocking(move || {
        crate::build::run(&dir, &spec.name, &build, spec.runtime, &spec.handler, None)
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}
