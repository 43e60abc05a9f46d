//! Content-addressed artifacts: uploaded packages stored by sha256 under `artifacts/sha256/`, and
//! their unpacked code under `code/<digest>/`, written atomically (temporary name, then rename) so
//! a crash never leaves a half-written artifact where a reader would take it for a whole one.

use crate::{Result, StoreError};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The manifest's file name, at the root of every package.
pub const MANIFEST_FILE: &str = "petrel.toml";

/// Bounds on what an uploaded package may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct PackageLimits {
    pub max_files: usize,
    pub max_unpacked_bytes: u64,
}

impl Default for PackageLimits {
    fn default() -> Self {
        Self {
            max_files: 10_000,
            max_unpacked_bytes: 512 * 1024 * 1024,
        }
    }
}

/// The artifact store rooted at a directory (normally the data directory).
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    limits: PackageLimits,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ArtifactStore {
    pub fn new(root: impl Into<PathBuf>, limits: PackageLimits) -> Result<Self> {
        let root = root.into();
        for sub in ["artifacts/sha256", "code", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Self { root, limits })
    }

    pub fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Where the package with this digest is stored.
    pub fn package_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("artifacts/sha256")
            .join(&digest[..2.min(digest.len())])
            .join(format!("{digest}.zip"))
    }

    /// Where the unpacked code of this digest lives.
    pub fn code_dir(&self, digest: &str) -> PathBuf {
        self.root.join("code").join(digest)
    }

    /// Reads `petrel.toml` out of a package, checking that the package is a readable zip.
    pub fn read_manifest(package: &[u8]) -> Result<String> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package)).map_err(|e| {
            StoreError::InvalidPackage(format!(
                "not a zip archive ({e}); package the function directory with `petrel deploy`"
            ))
        })?;
        let mut entry = zip.by_name(MANIFEST_FILE).map_err(|_| {
            StoreError::InvalidPackage(format!(
                "{MANIFEST_FILE} is missing at the root of the package"
            ))
        })?;
        if entry.size() > 1024 * 1024 {
            return Err(StoreError::InvalidPackage(format!(
                "{MANIFEST_FILE} is larger than 1 MiB"
            )));
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(|e| {
            StoreError::InvalidPackage(format!("{MANIFEST_FILE} is not UTF-8 text: {e}"))
        })?;
        Ok(text)
    }

    /// Stores a package (if not already stored) and unpacks it (if not already unpacked).
    /// Returns its digest. Blocking: call from a blocking-friendly context.
    pub fn put_package(&self, package: &[u8]) -> Result<String> {
        let digest = Self::digest(package);
        let path = self.package_path(&digest);
        if !path.exists() {
            let dir = path.parent().expect("package path has a parent");
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            let tmp = self.tmp_path(&digest);
            let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(package).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        }
        self.unpack(&digest, package)?;
        Ok(digest)
    }

    /// Makes sure the code of a stored package is unpacked (after a restart, or a wiped code dir).
    pub fn ensure_unpacked(&self, digest: &str) -> Result<PathBuf> {
        let dir = self.code_dir(digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let path = self.package_path(digest);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if Self::digest(&bytes) != digest {
            return Err(StoreError::Corrupt(format!(
                "package {} does not match its digest",
                path.display()
            )));
        }
        self.unpack(digest, &bytes)?;
        Ok(dir)
    }

    fn tmp_path(&self, digest: &str) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{digest}.{}.{n}", std::process::id()))
    }

    fn unpack(&self, digest: &str, package: &[u8]) -> Result<()> {
        let dest = self.code_dir(digest);
        if dest.is_dir() {
            return Ok(());
        }
        let tmp = self.tmp_path(digest);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let result = self.unpack_into(package, &tmp);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(()),
            // Another deploy of the same package won the race; its copy is identical.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(source) => Err(StoreError::Io { path: dest, source }),
        }
    }

    fn unpack_into(&self, package: &[u8], dir: &Path) -> Result<()> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(package))
            .map_err(|e| StoreError::InvalidPackage(format!("not a zip archive: {e}")))?;
        if zip.len() > self.limits.max_files {
            return Err(StoreError::InvalidPackage(format!(
                "{} files is more than the limit of {}",
                zip.len(),
                self.limits.max_files
            )));
        }
        let mut total: u64 = 0;
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| StoreError::InvalidPackage(format!("entry {i} is unreadable: {e}")))?;
            let rel = entry.enclosed_name().ok_or_else(|| {
                StoreError::InvalidPackage(format!(
                    "entry {:?} escapes the package directory",
                    entry.name()
                ))
            })?;
            // Paths that the package's own entries make impossible (a file where a directory
            // must go, a file named like the root) are the package's fault, not the server's.
            let name = entry.name().to_owned();
            let clash = |out: &Path| {
                let (out, name) = (out.to_owned(), name.clone());
                move |source: std::io::Error| {
                    use std::io::ErrorKind::*;
                    match source.kind() {
                        IsADirectory | NotADirectory | AlreadyExists => StoreError::InvalidPackage(format!(
                            "entry {name:?} cannot be unpacked: another entry is in its way ({source})"
                        )),
                        _ => StoreError::Io { path: out, source },
                    }
                }
            };
            // `a/./b/../c` as `a/c`: what the entry names, written plainly.
            let rel = rel.components().fold(PathBuf::new(), |mut p, c| {
                match c {
                    std::path::Component::Normal(n) => p.push(n),
                    std::path::Component::ParentDir => {
                        p.pop();
                    }
                    _ => {}
                }
                p
            });
            if rel.as_os_str().is_empty() {
                if entry.is_dir() {
                    continue;
                }
                return Err(StoreError::InvalidPackage(format!(
                    "entry {:?} names the package's root directory, not a file in it",
                    entry.name()
                )));
            }
            let out = dir.join(&rel);
            if entry.is_dir() {
                std::fs::create_dir_all(&out).map_err(clash(&out))?;
                continue;
            }
            if entry.is_symlink() {
                return Err(StoreError::InvalidPackage(format!(
                    "entry {:?} is a symbolic link; packages hold regular files only",
                    entry.name()
                )));
            }
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(clash(parent))?;
            }
            let mut f = std::fs::File::create(&out).map_err(clash(&out))?;
            // Count what is actually written, not what the header claims.
            let budget = self.limits.max_unpacked_bytes - total;
            let n = std::io::copy(&mut (&mut entry).take(budget + 1), &mut f).map_err(|e| {
                StoreError::InvalidPackage(format!(
                    "entry {:?} could not be unpacked: {e}",
                    rel.display()
                ))
            })?;
            total += n;
            if total > self.limits.max_unpacked_bytes {
                return Err(StoreError::InvalidPackage(format!(
                    "the package unpacks to more than {} MiB",
                    self.limits.max_unpacked_bytes / (1024 * 1024)
                )));
            }
            #[cfg(unix)]
            if let Some(mode) = entry.unix_mode() {
                use std::os::unix::fs::PermissionsExt;
                // Readable by everyone (a sandboxed instance runs as an unprivileged user, and
                // sees only its own function's code), executable by everyone if by anyone;
                // never writable by others, setuid, setgid or sticky.
                let perms =
                    std::fs::Permissions::from_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
                std::fs::set_permissions(&out, perms).map_err(io_err(&out))?;
            }
        }
        Ok(())
    }

    /// Removes packages and unpacked code no version refers to, sparing anything younger than
    /// `min_age` (a deploy in progress). Returns how many artifacts were removed.
    pub fn collect_garbage(
        &self,
        referenced: &std::collections::HashSet<String>,
        min_age: std::time::Duration,
    ) -> Result<usize> {
        let young = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() < min_age)
                .unwrap_or(true)
        };
        let mut removed = 0;
        let code = self.root.join("code");
        for entry in std::fs::read_dir(&code).map_err(io_err(&code))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) && !young(&entry.path()) {
                let _ = std::fs::remove_dir_all(entry.path());
                removed += 1;
            }
        }
        let pkgs = self.root.join("artifacts/sha256");
        for shard in std::fs::read_dir(&pkgs).map_err(io_err(&pkgs))?.flatten() {
            for entry in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = name.trim_end_matches(".zip");
                if !referenced.contains(digest) && !young(&entry.path()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(removed)
    }
}
