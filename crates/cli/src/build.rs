//! A function's `[build]` table: `petrel build` runs its command; `petrel deploy` runs it when
//! the build's output is missing or older than the newest of its sources (as `spin build` and
//! make do), so that a deploy never uploads a stale component, bootstrap or jar.

use crate::progress::Step;
use anyhow::{bail, Context};
use petrel_core::manifest::BuildManifest;
use petrel_core::Runtime;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Directories never read as sources: version control, Petrel's data, and build and package
/// caches (a Rust `target/` holds thousands of files newer than any source).
const NOT_SOURCES: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    ".petrel",
    "__pycache__",
    "target",
    "node_modules",
];

/// Why `dir` needs a build before it is deployed, or `None` when its output is up to date.
pub fn stale(
    dir: &Path,
    build: &BuildManifest,
    runtime: Runtime,
    handler: &str,
) -> anyhow::Result<Option<String>> {
    let Some(output) = build.output_for(runtime, handler) else {
        return Ok(Some(
            "its [build] has no output to compare with its sources (set output to build only when they change)".into(),
        ));
    };
    let out_path = dir.join(&output);
    let Some(built) = newest(&out_path)? else {
        return Ok(Some(format!("{output} is missing")));
    };
    let globs = if build.watch.is_empty() {
        None
    } else {
        let mut b = globset::GlobSetBuilder::new();
        for w in &build.watch {
            b.add(
                globset::GlobBuilder::new(w)
                    .literal_separator(true)
                    .build()
                    .with_context(|| format!("[build] watch {w:?} is not a glob"))?,
            );
        }
        Some(b.build()?)
    };
    let mut newer = None;
    let consider =
        |rel: &Path| !rel.starts_with(&output) && globs.as_ref().is_none_or(|g| g.is_match(rel));
    walk(dir, dir, &mut |rel, modified| {
        if modified > built && consider(rel) && newer.is_none() {
            newer = Some(rel.to_owned());
        }
    })?;
    Ok(newer.map(|src| format!("{} is newer than {output}", src.display())))
}

/// The newest modification time of `path` (a file, or every file under a directory); `None`
/// when it does not exist or holds no file.
fn newest(path: &Path) -> anyhow::Result<Option<SystemTime>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
    };
    if meta.is_file() {
        return Ok(Some(meta.modified()?));
    }
    let mut best = None;
    walk(path, path, &mut |_, m| {
        if best.is_none_or(|b| m > b) {
            best = Some(m);
        }
    })?;
    Ok(best)
}

fn walk(root: &Path, dir: &Path, f: &mut dyn FnMut(&Path, SystemTime)) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if NOT_SOURCES.iter().any(|s| name == *s) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling link is no source
        };
        if meta.is_dir() {
            walk(root, &path, f)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).expect("walked under root");
            f(rel, meta.modified()?);
        }
    }
    Ok(())
}

/// Runs the build of the function `name` in `dir`, its output shown as it comes (see
/// [`Step`]); an error names a missing tool, or shows the output's last lines.
pub fn run(
    dir: &Path,
    name: &str,
    build: &BuildManifest,
    runtime: Runtime,
    handler: &str,
    why: Option<&str>,
) -> anyhow::Result<()> {
    let command = build.command();
    let workdir: PathBuf = match &build.workdir {
        Some(w) => dir.join(w),
        None => dir.to_owned(),
    };
    if !workdir.is_dir() {
        bail!(
            "[build] workdir {} of {name} is not a directory",
            workdir.display()
        );
    }
    let detail = match why {
        Some(why) => format!("{why}: {command}"),
        None => command.to_owned(),
    };
    let step = Step::start(format!("Building {name}"), Some(&detail));
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        // The output of both streams, in the order it comes.
        .arg(format!("exec 2>&1; {command}"))
        .current_dir(&workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("could not run /bin/sh for the build")?;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let out = child.stdout.take().expect("stdout is piped");
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap_or_else(|e| format!("(unreadable output: {e})"));
        step.line(&line);
        if tail.len() == 40 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().context("the build did not finish")?;
    if !status.success() {
        step.abandon();
        let text: Vec<String> = tail.into_iter().collect();
        if status.code() == Some(127) {
            if let Some(tool) = missing_tool(&text) {
                bail!(
                    "could not build {name}: `{tool}` is not installed (its [build] command runs it). Install it (scripts/toolchains.sh installs what the examples need), or change [build] command in {}",
                    dir.join("petrel.toml").display()
                );
            }
        }
        bail!(
            "could not build {name}: `{command}` failed ({status}); its last lines:\n{}",
            text.join("\n")
        );
    }
    if let Some(output) = build.output_for(runtime, handler) {
        if newest(&dir.join(&output))?.is_none() {
            step.abandon();
            bail!(
                "the build of {name} succeeded but made no {output}; make [build] command write it, or set [build] output to what it makes"
            );
        }
    }
    step.finish("built");
    Ok(())
}

/// The tool a shell said it could not find (`sh: 1: cargo: not found`, `mvn: command not
/// found`).
fn missing_tool(lines: &[String]) -> Option<String> {
    lines.iter().rev().find_map(|l| {
        let l = l.trim();
        let rest = l
            .strip_suffix(": not found")
            .or_else(|| l.strip_suffix(": command not found"))?;
        rest.rsplit(": ").next().map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_tool_is_read_from_what_each_shell_says() {
        let lines = |l: &str| vec!["building".to_owned(), l.to_owned()];
        assert_eq!(
            missing_tool(&lines("sh: 1: cargo: not found")).as_deref(),
            Some("cargo")
        );
        assert_eq!(
            missing_tool(&lines("bash: line 1: mvn: command not found")).as_deref(),
            Some("mvn")
        );
        assert_eq!(missing_tool(&lines("error: linking failed")), None);
    }

    #[test]
    fn a_build_is_stale_until_its_output_is_newer_than_every_watched_source() {
        let d = tempfile::tempdir().unwrap();
        let b = BuildManifest {
            command: Some("true".into()),
            watch: vec!["src/**".into()],
            ..Default::default()
        };
        std::fs::create_dir_all(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("src/main.rs"), "fn main() {}").unwrap();
        let why = stale(d.path(), &b, Runtime::Wasm, "app.wasm").unwrap();
        assert_eq!(why.as_deref(), Some("app.wasm is missing"));

        let set = |p: &str, secs: u64| {
            let f = std::fs::File::options()
                .write(true)
                .open(d.path().join(p))
                .unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        std::fs::write(d.path().join("app.wasm"), "wasm").unwrap();
        std::fs::write(d.path().join("README"), "not watched").unwrap();
        set("src/main.rs", 1_000);
        set("app.wasm", 2_000);
        set("README", 3_000);
        assert_eq!(
            stale(d.path(), &b, Runtime::Wasm, "app.wasm").unwrap(),
            None
        );
        set("src/main.rs", 2_500);
        let why = stale(d.path(), &b, Runtime::Wasm, "app.wasm").unwrap();
        assert_eq!(why.as_deref(), Some("src/main.rs is newer than app.wasm"));

        // Without watch, every file but the output counts; a runtime without an output always
        // builds.
        let all = BuildManifest {
            command: Some("true".into()),
            ..Default::default()
        };
        set("src/main.rs", 1_000);
        let why = stale(d.path(), &all, Runtime::Wasm, "app.wasm").unwrap();
        assert_eq!(why.as_deref(), Some("README is newer than app.wasm"));
        assert!(stale(d.path(), &all, Runtime::Python3, "app.handler")
            .unwrap()
            .is_some());
    }
}
