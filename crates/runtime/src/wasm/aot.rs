//! Loading compiled components: the one place Petrel uses `unsafe`.

#![allow(unsafe_code)]

use std::path::Path;
use wasmtime::component::Component;
use wasmtime::Engine;

/// Loads a component compiled by this engine's `precompile_component`, from memory.
pub(super) fn load_bytes(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `compiled` was produced a moment ago by `Engine::precompile_component` of this very
    // engine (never read from outside), which is what `deserialize` requires to be sound.
    unsafe { Component::deserialize(engine, compiled) }
}

/// Loads (memory-maps) a compiled component from Petrel's cache.
pub(super) fn load_file(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the cache directory is Petrel's own, under its data directory; files in it are only
    // written by `write_atomically` with the output of `precompile_component` of an engine with
    // the same settings (the file name carries the engine's compatibility hash, and wasmtime
    // checks its own header and version too). Nothing rewrites a file in place, so the mapping
    // cannot change under the engine.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Writes a compiled component under a temporary name, then renames it into place.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
