//! `petrel new`: a function directory that deploys as it is.

use anyhow::{bail, Context};
use petrel_core::name::validate_name;
use petrel_core::Runtime;
use std::path::Path;

// Every scaffold is one of the shipped examples, renamed: `petrel new` and `examples/` cannot drift
// apart, and the examples test checks that both deploy as they are.
const PYTHON_MANIFEST: &str = include_str!("../../../examples/hello-python/petrel.toml");
const PYTHON_APP: &str = include_str!("../../../examples/hello-python/app.py");
const NODE_MANIFEST: &str = include_str!("../../../examples/hello-node/petrel.toml");
const NODE_APP: &str = include_str!("../../../examples/hello-node/index.js");
const HTTP_MANIFEST: &str = include_str!("../../../examples/hello-http/petrel.toml");
const HTTP_SERVER: &str = include_str!("../../../examples/hello-http/server.js");
const PROVIDED_MANIFEST: &str = include_str!("../../../examples/hello-provided/petrel.toml");
const PROVIDED_BOOTSTRAP: &str = include_str!("../../../examples/hello-provided/bootstrap");
const WASM_MANIFEST: &str = include_str!("../../../examples/hello-wasm/petrel.toml");
const WASM_CARGO: &str = include_str!("../../../examples/hello-wasm/Cargo.toml");
const WASM_MAIN: &str = include_str!("../../../examples/hello-wasm/src/main.rs");
const WASM_GITIGNORE: &str = include_str!("../../../examples/hello-wasm/.gitignore");

/// The command that builds a scaffolded wasm function, run in its directory.
pub fn wasm_build_command(name: &str) -> String {
    format!("cargo build --release --target wasm32-wasip2 && cp target/wasm32-wasip2/release/{name}.wasm {name}.wasm")
}

/// Writes a new function directory at `dir`.
pub fn scaffold(dir: &Path, name: &str, runtime: &str) -> anyhow::Result<Vec<String>> {
    validate_name("function name", name)?;
    let runtime: Runtime = runtime.parse()?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} already exists and is not empty; pick another name or --dir",
            dir.display()
        );
    }
    let example = format!(
        "hello-{}",
        match runtime {
            Runtime::Python3 => "python",
            Runtime::Nodejs => "node",
            Runtime::Provided => "provided",
            Runtime::Http => "http",
            Runtime::Wasm => "wasm",
        }
    );
    // The examples are public; a new function keeps the default, an API key to invoke it.
    let rename = |t: &str| {
        t.replace(&example, name)
            .replace("hello.wasm", &format!("{name}.wasm"))
            .replace(
                "# Anyone may call it (the default, \"key\", takes an API key with invoker in the namespace).\ninvoke_auth = \"public\"",
                "# Who may call it: \"key\" (the default: an API key with invoker in the namespace), or \"public\".\n# invoke_auth = \"public\"",
            )
    };
    let files: Vec<(&str, String, bool)> = match runtime {
        Runtime::Python3 => vec![
            ("petrel.toml", rename(PYTHON_MANIFEST), false),
            ("app.py", PYTHON_APP.into(), false),
        ],
        Runtime::Nodejs => vec![
            ("petrel.toml", rename(NODE_MANIFEST), false),
            ("index.js", NODE_APP.into(), false),
        ],
        Runtime::Http => vec![
            ("petrel.toml", rename(HTTP_MANIFEST), false),
            ("server.js", HTTP_SERVER.into(), false),
        ],
        Runtime::Provided => vec![
            ("petrel.toml", rename(PROVIDED_MANIFEST), false),
            ("bootstrap", PROVIDED_BOOTSTRAP.into(), true),
        ],
        Runtime::Wasm => vec![
            ("petrel.toml", rename(WASM_MANIFEST), false),
            ("Cargo.toml", rename(WASM_CARGO), false),
            ("src/main.rs", rename(WASM_MAIN), false),
            (".gitignore", rename(WASM_GITIGNORE), false),
        ],
    };
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text, exec) in files {
        let p = dir.join(file);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text).with_context(|| format!("could not write {}", p.display()))?;
        if exec {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(p.display().to_string());
    }
    Ok(written)
}
