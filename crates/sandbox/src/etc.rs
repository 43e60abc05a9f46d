//! An instance's `/etc`: the entries of the host's a function may need, and Petrel's own
//! `passwd`, `group`, `hostname` and `hosts`.

use crate::{SANDBOX_GID, SANDBOX_UID};
use std::path::Path;

/// Entries of the host's `/etc` a function may need (the loader, time zones, name service,
/// TLS roots, Java's configuration); nothing else of it is visible (no `shadow`, no `sudoers`).
const ETC_ALLOWED: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
];
/// Prefixes of further `/etc` entries allowed (`java-17-openjdk`, ...).
const ETC_ALLOWED_PREFIXES: &[&str] = &["java-"];

/// Writes an instance's `/etc` into `dir`: copies of the allowed entries of the host's (links
/// into the system directories kept as links, others resolved), and Petrel's own `passwd`,
/// `group`, `hostname` and `hosts` (the host's `hosts` on the host's network).
pub(crate) fn prepare(dir: &Path, host_network: bool) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for e in std::fs::read_dir("/etc")?.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if ETC_ALLOWED.contains(&n.as_ref())
            || ETC_ALLOWED_PREFIXES.iter().any(|p| n.starts_with(p))
        {
            // What cannot be read (a private key directory of root's) is simply not there.
            let _ = copy_entry(&e.path(), &dir.join(&name));
        }
    }
    let hosts = if host_network {
        std::fs::read("/etc/hosts").unwrap_or_default()
    } else {
        b"127.0.0.1 localhost petrel\n::1 localhost\n".to_vec()
    };
    for (name, contents) in [
        (
            "passwd",
            format!("root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/tmp:/usr/sbin/nologin\n").into_bytes(),
        ),
        ("group", format!("root:x:0:\nsbx_user:x:{SANDBOX_GID}:\n").into_bytes()),
        ("hostname", b"petrel\n".to_vec()),
        ("hosts", hosts),
    ] {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, contents)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    Ok(())
}

fn copy_entry(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src)?;
        let inside =
            target.is_relative() || crate::SYSTEM_DIRS.iter().any(|d| target.starts_with(d));
        if inside {
            return std::os::unix::fs::symlink(&target, dst);
        }
        // A link out of the system directories (/run/..., say) would dangle: copy what it is.
        let resolved = std::fs::canonicalize(src)?;
        return copy_entry(&resolved, dst);
    }
    if meta.is_dir() {
        if src.ends_with("ssl/private") {
            return Ok(());
        }
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)?.flatten() {
            let _ = copy_entry(&e.path(), &dst.join(e.file_name()));
        }
        std::fs::set_permissions(dst, meta.permissions())?;
        return Ok(());
    }
    if meta.is_file() {
        std::fs::copy(src, dst)?;
    }
    Ok(())
}
