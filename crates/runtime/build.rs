//! Builds `petrel-sandbox` as the shared library the Python fork server's children confine
//! themselves with (its C ABI, `petrel-sandbox/src/ffi.rs`), so that the sandbox has one
//! implementation and the library ships inside the binary (`PETREL_SANDBOX_LIB` names it for
//! `include_bytes!`).
//!
//! A nested `cargo rustc --crate-type cdylib` of that one package, in release mode and without
//! its `wasm` feature, into a target directory of its own beside this build's, so that it is
//! built once and reused until the sandbox's sources change.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.join("../..");
    for watched in [
        "crates/sandbox/src",
        "crates/sandbox/Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    // OUT_DIR is <target>/[<triple>/]<profile>/build/petrel-runtime-<hash>/out.
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR sits three levels under the profile's directory");
    let target_dir = profile_dir.join("sandbox-lib");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["rustc", "--quiet", "--locked", "--offline", "--release"])
        .args([
            "--package",
            "petrel-sandbox",
            "--lib",
            "--crate-type",
            "cdylib",
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Not the wrappers of this build (clippy's driver lints; it does not link), nor its target
    // settings: the library is built for the machine the build runs on, as this crate is.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cargo runs to build the sandbox library");
    assert!(
        status.success(),
        "building petrel-sandbox as a shared library failed ({status})"
    );
    let lib = target_dir.join("release/libpetrel_sandbox.so");
    assert!(lib.is_file(), "{} was not built", lib.display());
    println!("cargo:rustc-env=PETREL_SANDBOX_LIB={}", lib.display());
}
