//! The Lambda handler shims shipped inside the binary, written out once per content under the
//! data directory so instances can run them.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub(crate) const PYTHON_SHIM: &str = include_str!("../../../runtimes/python/bootstrap.py");
pub(crate) const NODE_SHIM: &str = include_str!("../../../runtimes/node/bootstrap.js");

pub(crate) const PYTHON_SHIM_PATH: &str = "python/bootstrap.py";
pub(crate) const NODE_SHIM_PATH: &str = "node/bootstrap.js";

/// Writes the shims to `runtimes/<content hash>/` under `data_dir` (if not there yet) and returns
/// that directory. Keyed by content so a new binary never runs an old shim.
pub(crate) fn install(data_dir: &Path) -> std::io::Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(PYTHON_SHIM);
    h.update(NODE_SHIM);
    let key = hex::encode(&h.finalize()[..8]);
    let dir = data_dir.join("runtimes").join(key);
    for (rel, text) in [(PYTHON_SHIM_PATH, PYTHON_SHIM), (NODE_SHIM_PATH, NODE_SHIM)] {
        let path = dir.join(rel);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::create_dir_all(path.parent().expect("shim path has a parent"))?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(dir)
}
