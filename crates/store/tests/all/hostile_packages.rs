//! Property tests of the package unpacker against hostile archives: paths that climb out
//! (`..`, absolute, backslashes), symbolic links, files under files, too many entries and too
//! many bytes. Whatever comes in, the answer is the unpacked tree inside its directory or an
//! `InvalidPackage` error naming the problem; never another error, never a file outside.

use super::artifact_store;
use petrel_store::StoreError;
use proptest::prelude::*;
use std::io::Write;

#[derive(Debug, Clone)]
enum Entry {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
}

fn path_part() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("".to_owned()),
        Just("/".to_owned()),
        Just("\\..\\".to_owned()),
        Just("petrel.toml".to_owned()),
        "[a-z]{1,3}",
        "[a-z./\\\\]{1,6}",
        "\\PC{1,4}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_part(), 1..4).prop_map(|parts| parts.join("/"))
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        4 => (path(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(p, d)| Entry::File(p, d)),
        1 => path().prop_map(Entry::Dir),
        1 => (path(), path()).prop_map(|(p, t)| Entry::Symlink(p, t)),
    ]
}

fn zip_of(entries: &[Entry]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        for e in entries {
            // The writer refuses some names itself; those entries are just left out.
            let _ = match e {
                Entry::File(p, d) => w
                    .start_file(p.as_str(), opts)
                    .and_then(|()| w.write_all(d).map_err(Into::into)),
                Entry::Dir(p) => w.add_directory(p.as_str(), opts),
                Entry::Symlink(p, t) => w.add_symlink(p.as_str(), t.as_str(), opts),
            };
        }
        let _ = w.finish();
    }
    buf.into_inner()
}

/// Every path under `dir`, none a symbolic link, all inside it.
fn assert_contained(dir: &std::path::Path) {
    let root = dir.canonicalize().unwrap();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            assert!(!meta.file_type().is_symlink(), "{:?} is a link", e.path());
            assert!(e.path().canonicalize().unwrap().starts_with(&root));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hostile_archives_unpack_inside_or_are_refused(entries in prop::collection::vec(entry(), 0..12)) {
        let dir = tempfile::tempdir().unwrap();
        let store = artifact_store(&dir);
        match store.put_package(&zip_of(&entries)) {
            Ok(digest) => assert_contained(&store.code_dir(&digest)),
            Err(StoreError::InvalidPackage(m)) => prop_assert!(!m.is_empty()),
            Err(other) => prop_assert!(false, "not a package error: {other}"),
        }
        // Nothing was written beside the store's own directories.
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            prop_assert!(["artifacts", "code", "tmp"].contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn arbitrary_bytes_are_refused_as_packages(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        match artifact_store(&dir).put_package(&bytes) {
            Ok(_) | Err(StoreError::InvalidPackage(_)) => {}
            Err(other) => prop_assert!(false, "not a package error: {other}"),
        }
    }
}

#[test]
fn too_many_files_and_a_zip_bomb_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = artifact_store(&dir);
    let many: Vec<Entry> = (0..51)
        .map(|i| Entry::File(format!("f{i}"), vec![]))
        .collect();
    let Err(StoreError::InvalidPackage(m)) = store.put_package(&zip_of(&many)) else {
        panic!("51 files passed a limit of 50")
    };
    assert!(m.contains("limit of 50"), "{m}");
    // 2 MiB of zeros compress to a few KiB; the limit is 1 MiB unpacked.
    let bomb = {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        w.start_file(
            "zeros",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        w.write_all(&vec![0u8; 2 * 1024 * 1024]).unwrap();
        w.finish().unwrap();
        buf.into_inner()
    };
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let Err(StoreError::InvalidPackage(m)) = store.put_package(&bomb) else {
        panic!("a zip bomb unpacked")
    };
    assert!(m.contains("more than 1 MiB"), "{m}");
}
