//! Loading WebAssembly code that Petrel compiled itself. A wasm guest is confined by wasmtime
//! only as long as the machine code it runs is what wasmtime's compiler made from it; loading
//! precompiled code skips that compiler, so wasmtime marks it `unsafe`. These two functions
//! are where Petrel asserts it: the bytes come from this engine's own compiler, in memory or
//! from Petrel's own cache directory.

use std::path::Path;
use wasmtime::component::Component;
use wasmtime::Engine;

/// Compiles a component ahead of time: the compiled bytes (to be cached) and the component.
pub fn precompile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<(Vec<u8>, Component)> {
    let compiled = engine.precompile_component(wasm)?;
    // SAFETY: `compiled` was produced just now by `precompile_component` of this very engine,
    // which is what `deserialize` requires to be sound.
    let component = unsafe { Component::deserialize(engine, &compiled) }?;
    Ok((compiled, component))
}

/// Loads (memory-maps) a component [`precompile`] compiled, from Petrel's cache. `path` must be
/// a file of the cache directory under Petrel's data directory, which only Petrel writes (as
/// wasmtime's own cache trusts its directory).
pub fn load_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: files of the cache are only written, whole and renamed into place, with the
    // output of `precompile_component` of an engine with the same settings (their names carry
    // the engine's compatibility hash, and wasmtime checks its own header and version too).
    // Nothing rewrites a file in place, so the mapping cannot change under the engine.
    unsafe { Component::deserialize_file(engine, path) }
}
