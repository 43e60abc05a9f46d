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
/// `group`, `hostname` and `hosts` (the host's `hosts` on the host's network). A copy made by an
/// earlier start is kept while what it was made from is unchanged (a stamp beside it records the
/// sources' names, sizes, times and link targets): deleting and writing the few hundred entries
/// of `/etc/ssl` again took most of a second of every server start on ext4.
pub(crate) fn prepare(dir: &Path, host_network: bool) -> std::io::Result<()> {
    let stamp_path = dir.with_extension("stamp");
    let stamp = fingerprint(host_network);
    if dir.is_dir() && std::fs::read(&stamp_path).ok().as_deref() == Some(stamp.as_bytes()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&stamp_path);
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for src in allowed_entries() {
        // What cannot be read (a private key directory of root's) is simply not there.
        let _ = copy_entry(&src, &dir.join(src.file_name().expect("an entry of /etc")));
    }
    for (name, contents) in own_entries(host_network) {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, contents)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    std::fs::write(&stamp_path, stamp)
}

/// The allowed entries of the host's `/etc`, sorted.
fn allowed_entries() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir("/etc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            ETC_ALLOWED.contains(&n.as_ref())
                || ETC_ALLOWED_PREFIXES.iter().any(|p| n.starts_with(p))
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Petrel's own files of an instance's `/etc`.
fn own_entries(host_network: bool) -> [(&'static str, Vec<u8>); 4] {
    let hosts = if host_network {
        std::fs::read("/etc/hosts").unwrap_or_default()
    } else {
        b"127.0.0.1 localhost petrel\n::1 localhost\n".to_vec()
    };
    [
        (
            "passwd",
            format!("root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/tmp:/usr/sbin/nologin\n").into_bytes(),
        ),
        ("group", format!("root:x:0:\nsbx_user:x:{SANDBOX_GID}:\n").into_bytes()),
        ("hostname", b"petrel\n".to_vec()),
        ("hosts", hosts),
    ]
}

/// What a copy is made from, as text: every source entry's kind, size, modification time, mode
/// and link target (walked as [`copy_entry`] walks it), and Petrel's own files' contents.
fn fingerprint(host_network: bool) -> String {
    let mut s = String::from("petrel-etc 1\n");
    for src in allowed_entries() {
        describe(&src, &mut s);
    }
    for (name, contents) in own_entries(host_network) {
        s.push_str(&format!("{name} {}\n", String::from_utf8_lossy(&contents)));
    }
    s
}

fn describe(src: &Path, s: &mut String) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(src) else {
        s.push_str(&format!("{} gone\n", src.display()));
        return;
    };
    let head = format!(
        "{} {} {} {}.{} {:o}",
        src.display(),
        if meta.is_dir() {
            "d"
        } else if meta.file_type().is_symlink() {
            "l"
        } else {
            "f"
        },
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.mode()
    );
    s.push_str(&head);
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).unwrap_or_default();
        s.push_str(&format!(" -> {}\n", target.display()));
        let inside =
            target.is_relative() || crate::SYSTEM_DIRS.iter().any(|d| target.starts_with(d));
        if !inside {
            if let Ok(resolved) = std::fs::canonicalize(src) {
                describe(&resolved, s);
            }
        }
        return;
    }
    s.push('\n');
    if meta.is_dir() && !src.ends_with("ssl/private") {
        let mut children: Vec<_> = std::fs::read_dir(src)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        children.sort();
        for c in children {
            describe(&c, s);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_kept_while_its_sources_are_unchanged_and_made_again_when_they_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc-none");
        prepare(&dir, false).unwrap();
        let passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
        assert!(passwd.contains("sbx_user"), "{passwd}");
        assert!(!dir.join("shadow").exists());

        // Unchanged sources: the copy is the one already there.
        std::fs::write(dir.join("left-by-the-last-start"), "x").unwrap();
        prepare(&dir, false).unwrap();
        assert!(dir.join("left-by-the-last-start").exists());

        // A stamp that no longer matches (a source changed): the copy is made again.
        std::fs::write(dir.with_extension("stamp"), "petrel-etc 0\n").unwrap();
        prepare(&dir, false).unwrap();
        assert!(!dir.join("left-by-the-last-start").exists());
        assert_eq!(std::fs::read_to_string(dir.join("passwd")).unwrap(), passwd);
        assert_eq!(
            std::fs::read_to_string(dir.with_extension("stamp")).unwrap(),
            fingerprint(false)
        );
        // The other network's copy differs (its `hosts` is the host's).
        assert_ne!(fingerprint(false), fingerprint(true));
    }
}
