//! Packaging a function directory into the zip a deploy uploads: files in a fixed order with
//! fixed timestamps, so the same directory always gives the same bytes (and the same digest).

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Names never packaged: version control, Petrel's own data, caches.
const SKIP: &[&str] = &[".git", ".hg", ".svn", ".petrel", "__pycache__", ".DS_Store"];

/// Zips `dir` with `manifest` as its `petrel.toml` (replacing the file on disk, if any).
pub fn package_dir(dir: &Path, manifest: &str) -> anyhow::Result<Vec<u8>> {
    package_dir_without(dir, manifest, &[])
}

/// What a java function's package leaves out: its sources and Maven's or Gradle's work (the
/// runtime loads the classes at the root and the jars in lib/).
pub const JAVA_SOURCES: &[&str] = &["src", "target", "build", ".gradle", ".mvn", "pom.xml"];

/// [`package_dir`] without the top-level entries named in `skip`.
pub fn package_dir_without(dir: &Path, manifest: &str, skip: &[&str]) -> anyhow::Result<Vec<u8>> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.retain(|f| {
        let top = f.components().next().map(|c| c.as_os_str());
        !skip.iter().any(|s| top == Some(std::ffi::OsStr::new(s)))
    });
    files.sort();
    package_files(dir, manifest, files)
}

/// Zips the component of a wasm function and its manifest: nothing else of the directory (a
/// Rust guest's `target/`, sources, node_modules) is needed to run it.
pub fn package_component(dir: &Path, manifest: &str, component: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(component);
    if !path.is_file() {
        anyhow::bail!(
            "the component {} does not exist; build it first (petrel build, or add a [build] table to petrel.toml)",
            path.display()
        );
    }
    package_files(dir, manifest, vec![PathBuf::from(component)])
}

fn package_files(dir: &Path, manifest: &str, files: Vec<PathBuf>) -> anyhow::Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let base = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    zip.start_file("petrel.toml", base.unix_permissions(0o644))?;
    zip.write_all(manifest.as_bytes())?;
    for rel in files {
        let name = rel.to_string_lossy().replace('\\', "/");
        if name == "petrel.toml" {
            continue;
        }
        let path = dir.join(&rel);
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        zip.start_file(name, base.unix_permissions(mode))?;
        let data =
            std::fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
        zip.write_all(&data)?;
    }
    zip.finish()?;
    Ok(buf.into_inner())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let path = entry.path();
        // Symbolic links are followed: the package holds what they point at.
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else if meta.is_file() {
            out.push(
                path.strip_prefix(root)
                    .expect("walked under root")
                    .to_owned(),
            );
        }
    }
    Ok(())
}
