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
const JAVA_MANIFEST: &str = include_str!("../../../examples/hello-java/petrel.toml");
const JAVA_POM: &str = include_str!("../../../examples/hello-java/pom.xml");
const JAVA_HANDLER: &str =
    include_str!("../../../examples/hello-java/src/main/java/example/Hello.java");
const JAVA_GITIGNORE: &str = include_str!("../../../examples/hello-java/.gitignore");
const GO_MANIFEST: &str = include_str!("../../../examples/hello-go/petrel.toml");
const GO_MAIN: &str = include_str!("../../../examples/hello-go/main.go");
const GO_MOD: &str = include_str!("../../../examples/hello-go/go.mod");
const GO_SUM: &str = include_str!("../../../examples/hello-go/go.sum");
const GO_GITIGNORE: &str = include_str!("../../../examples/hello-go/.gitignore");

/// What `petrel new --runtime` takes: every runtime, and `go` (a `provided` function written
/// with github.com/aws/aws-lambda-go).
pub const TEMPLATES: &str = "python3, nodejs, provided, http, wasm, java, go";

/// Writes a new function directory at `dir`.
pub fn scaffold(dir: &Path, name: &str, runtime: &str) -> anyhow::Result<Vec<String>> {
    validate_name("function name", name)?;
    let go = runtime == "go";
    let runtime: Runtime = if go {
        Runtime::Provided
    } else {
        runtime.parse().map_err(|_| {
            anyhow::anyhow!("unknown runtime {runtime:?} for petrel new: use one of {TEMPLATES}")
        })?
    };
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} already exists and is not empty; pick another name or --dir",
            dir.display()
        );
    }
    let example = format!(
        "hello-{}",
        match runtime {
            _ if go => "go",
            Runtime::Python3 => "python",
            Runtime::Nodejs => "node",
            Runtime::Provided => "provided",
            Runtime::Java => "java",
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
        _ if go => vec![
            ("petrel.toml", rename(GO_MANIFEST), false),
            ("main.go", GO_MAIN.into(), false),
            ("go.mod", rename(GO_MOD), false),
            ("go.sum", GO_SUM.into(), false),
            (".gitignore", GO_GITIGNORE.into(), false),
        ],
        Runtime::Java => vec![
            ("petrel.toml", rename(JAVA_MANIFEST), false),
            ("pom.xml", rename(JAVA_POM), false),
            (
                "src/main/java/example/Hello.java",
                JAVA_HANDLER.into(),
                false,
            ),
            (".gitignore", JAVA_GITIGNORE.into(), false),
        ],
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
