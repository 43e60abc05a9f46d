use super::{artifact_store, zip_of};
use petrel_store::ArtifactStore;

#[test]
fn packages_are_content_addressed_and_unpacked_with_modes() {
    let dir = tempfile::tempdir().unwrap();
    let store = artifact_store(&dir);
    let pkg = zip_of(&[
        (
            "petrel.toml",
            b"name = \"x\"\nruntime = \"provided\"\n",
            0o644,
        ),
        ("bootstrap", b"#!/bin/sh\necho hi\n", 0o755),
        ("lib/util.py", b"X = 1\n", 0o644),
    ]);
    let digest = store.put_package(&pkg).unwrap();
    assert_eq!(digest, ArtifactStore::digest(&pkg));
    assert_eq!(digest.len(), 64);
    assert!(store.package_path(&digest).is_file());
    let code = store.code_dir(&digest);
    assert_eq!(
        std::fs::read_to_string(code.join("lib/util.py")).unwrap(),
        "X = 1\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(code.join("bootstrap"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "bootstrap keeps its executable bits");
    // Same bytes, same digest, nothing rewritten.
    assert_eq!(store.put_package(&pkg).unwrap(), digest);
    // A wiped code directory is restored from the stored package.
    std::fs::remove_dir_all(&code).unwrap();
    assert_eq!(store.ensure_unpacked(&digest).unwrap(), code);
    assert!(code.join("bootstrap").is_file());
    assert!(ArtifactStore::read_manifest(&pkg)
        .unwrap()
        .contains("provided"));
}

#[test]
fn bad_packages_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = artifact_store(&dir);
    let e = ArtifactStore::read_manifest(b"this is not a zip")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a zip"), "{e}");
    let e = ArtifactStore::read_manifest(&zip_of(&[("app.py", b"", 0o644)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("petrel.toml is missing"), "{e}");

    let escape = zip_of(&[("petrel.toml", b"", 0o644), ("../../evil", b"x", 0o644)]);
    let e = store.put_package(&escape).unwrap_err().to_string();
    assert!(e.contains("escapes"), "{e}");
    assert!(
        !dir.path().join("evil").exists() && !dir.path().parent().unwrap().join("evil").exists()
    );

    let big = vec![b'a'; 2 * 1024 * 1024];
    let bomb = zip_of(&[("petrel.toml", b"", 0o644), ("big", &big, 0o644)]);
    let e = store.put_package(&bomb).unwrap_err().to_string();
    assert!(e.contains("more than 1 MiB"), "{e}");

    let names: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, &[u8], u32)> = names
        .iter()
        .map(|n| (n.as_str(), &b""[..], 0o644))
        .collect();
    let e = store.put_package(&zip_of(&many)).unwrap_err().to_string();
    assert!(e.contains("more than the limit"), "{e}");
    // Nothing half-unpacked is left where a reader would find it.
    assert_eq!(
        std::fs::read_dir(dir.path().join("code")).unwrap().count(),
        0
    );
}

#[test]
fn garbage_collection_keeps_referenced_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let store = artifact_store(&dir);
    let a = store
        .put_package(&zip_of(&[("petrel.toml", b"a", 0o644)]))
        .unwrap();
    let b = store
        .put_package(&zip_of(&[("petrel.toml", b"b", 0o644)]))
        .unwrap();
    let keep: std::collections::HashSet<String> = [a.clone()].into_iter().collect();
    // A deploy may be between storing its package and recording its version: young ones stay.
    assert_eq!(
        store
            .collect_garbage(&keep, std::time::Duration::from_secs(300))
            .unwrap(),
        0
    );
    assert!(store.code_dir(&b).is_dir());
    assert_eq!(
        store
            .collect_garbage(&keep, std::time::Duration::ZERO)
            .unwrap(),
        1
    );
    assert!(store.code_dir(&a).is_dir() && store.package_path(&a).is_file());
    assert!(!store.code_dir(&b).exists() && !store.package_path(&b).exists());
}
