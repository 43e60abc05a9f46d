//! What instances run that ships inside the binary: the Lambda handler shims, and the sandbox's
//! shared library the Python fork server's children confine themselves with. Written out once
//! per content under the data directory.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub(crate) const PYTHON_SHIM: &str = include_str!("../../../runtimes/python/bootstrap.py");
pub(crate) const NODE_SHIM: &str = include_str!("../../../runtimes/node/bootstrap.js");
/// `petrel-sandbox` built as a C library (see `build.rs`).
const SANDBOX_LIB: &[u8] = include_bytes!(env!("PETREL_SANDBOX_LIB"));

pub(crate) const PYTHON_SHIM_PATH: &str = "python/bootstrap.py";
pub(crate) const NODE_SHIM_PATH: &str = "node/bootstrap.js";
pub(crate) const SANDBOX_LIB_PATH: &str = "lib/libpetrel_sandbox.so";

/// Writes the shims and the library to `runtimes/<content hash>/` under `data_dir` (if not
/// there yet) and returns that directory. Keyed by content so a new binary never runs an old
/// shim.
pub(crate) fn install(data_dir: &Path) -> std::io::Result<PathBuf> {
    let files: [(&str, &[u8]); 3] = [
        (PYTHON_SHIM_PATH, PYTHON_SHIM.as_bytes()),
        (NODE_SHIM_PATH, NODE_SHIM.as_bytes()),
        (SANDBOX_LIB_PATH, SANDBOX_LIB),
    ];
    let mut h = Sha256::new();
    for (_, bytes) in &files {
        h.update(bytes);
    }
    let key = hex::encode(&h.finalize()[..8]);
    let dir = data_dir.join("runtimes").join(key);
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            std::fs::create_dir_all(path.parent().expect("shim path has a parent"))?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(dir)
}
