//! `petrel new`: a function directory that deploys as it is.

use anyhow::{bail, Context};
use petrel_core::name::validate_name;
use petrel_core::Runtime;
use std::path::Path;

fn manifest(name: &str, runtime: &str, handler: &str) -> String {
    format!(
        "# Petrel function manifest; every key is described in docs/manifest.md.\n\
         name = \"{name}\"\n\
         runtime = \"{runtime}\"\n\
         handler = \"{handler}\"\n\
         memory_mb = 128\n\
         timeout = \"30s\"\n\
         concurrency = 1\n\
         max_instances = 10\n\
         \n\
         [env]\n\
         GREETING = \"Hello\"\n"
    )
}

const PYTHON_APP: &str = r#"import json


def handler(event, context):
    """Called once per invocation.

    `petrel invoke NAME --data '{"name": "you"}'` passes the JSON as `event`.
    A request to /fn/NAME/... passes an API-Gateway-v2-style event (method, path, headers, body).
    Return any JSON value; return {"statusCode": ..., "headers": ..., "body": ...} to shape HTTP.
    """
    import os

    body = event.get("body") if isinstance(event, dict) else None
    name = None
    if isinstance(event, dict):
        name = event.get("name") or (event.get("queryStringParameters") or {}).get("name")
    if body and not name:
        try:
            name = json.loads(body).get("name")
        except (ValueError, AttributeError):
            pass
    greeting = os.environ.get("GREETING", "Hello")
    print(f"greeting {name or 'world'} (request {context.aws_request_id})")
    return {"message": f"{greeting}, {name or 'world'}!", "function": context.function_name}
"#;

const NODE_APP: &str = r#"// Called once per invocation.
// `petrel invoke NAME --data '{"name": "you"}'` passes the JSON as `event`.
// A request to /fn/NAME/... passes an API-Gateway-v2-style event (method, path, headers, body).
// Return any JSON value; return {statusCode, headers, body} to shape the HTTP answer.
exports.handler = async (event, context) => {
  let name = event && (event.name || (event.queryStringParameters || {}).name);
  if (!name && event && event.body) {
    try { name = JSON.parse(event.body).name; } catch (_) { /* not JSON */ }
  }
  const greeting = process.env.GREETING || 'Hello';
  console.log(`greeting ${name || 'world'} (request ${context.awsRequestId})`);
  return { message: `${greeting}, ${name || 'world'}!`, function: context.functionName };
};
"#;

const HTTP_SERVER: &str = r#"// An HTTP function: any server that listens on $PORT. Petrel forwards /fn/NAME/<path> to it
// as /<path>, with the method, headers and body as sent.
const http = require('http');

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const url = new URL(req.url, 'http://localhost');
    let name = url.searchParams.get('name');
    if (!name && chunks.length) {
      try { name = JSON.parse(Buffer.concat(chunks).toString()).name; } catch (_) { /* not JSON */ }
    }
    name = name || 'world';
    const greeting = process.env.GREETING || 'Hello';
    console.log(`${req.method} ${req.url}`);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      message: `${greeting}, ${name}!`,
      method: req.method,
      path: url.pathname,
      bodyBytes: Buffer.concat(chunks).length,
    }));
  });
});
server.listen(Number(process.env.PORT), '127.0.0.1');
"#;

const PROVIDED_BOOTSTRAP: &str = r#"#!/usr/bin/env python3
"""A custom runtime: any executable named `bootstrap` that speaks the AWS Lambda Runtime API.

Petrel sets AWS_LAMBDA_RUNTIME_API and _HANDLER, as Lambda does; the official runtime clients
(awslambdaric, aws-lambda-ric, lambda_runtime, aws-lambda-go) work the same way.
"""
import json
import os
import urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation"

while True:
    with urllib.request.urlopen(API + "/next") as resp:
        request_id = resp.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(resp.read() or b"null")
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    body = json.dumps({"message": f"{os.environ.get('GREETING', 'Hello')}, {name}!"}).encode()
    urllib.request.urlopen(urllib.request.Request(API + f"/{request_id}/response", data=body, method="POST"))
"#;

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
    let files: Vec<(&str, String, bool)> = match runtime {
        Runtime::Python3 => vec![
            (
                "petrel.toml",
                manifest(name, "python3", "app.handler"),
                false,
            ),
            ("app.py", PYTHON_APP.into(), false),
        ],
        Runtime::Nodejs => vec![
            (
                "petrel.toml",
                manifest(name, "nodejs", "index.handler"),
                false,
            ),
            ("index.js", NODE_APP.into(), false),
        ],
        Runtime::Http => vec![
            (
                "petrel.toml",
                manifest(name, "http", "node server.js"),
                false,
            ),
            ("server.js", HTTP_SERVER.into(), false),
        ],
        Runtime::Provided => vec![
            (
                "petrel.toml",
                manifest(name, "provided", "function.handler"),
                false,
            ),
            ("bootstrap", PROVIDED_BOOTSTRAP.into(), true),
        ],
        Runtime::Wasm => {
            // The shipped Rust example, renamed: a wstd component of the wasi:http/proxy world.
            let rename = |t: &str| {
                t.replace("hello-wasm", name)
                    .replace("hello.wasm", &format!("{name}.wasm"))
            };
            vec![
                ("petrel.toml", rename(WASM_MANIFEST), false),
                ("Cargo.toml", rename(WASM_CARGO), false),
                ("src/main.rs", rename(WASM_MAIN), false),
                (".gitignore", rename(WASM_GITIGNORE), false),
            ]
        }
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
