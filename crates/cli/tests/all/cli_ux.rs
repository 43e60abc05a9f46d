//! What a new user does: scaffold, deploy, invoke, follow logs, namespaces, the shipped examples,
//! graceful stop.

use crate::fixtures::echo_function;
use crate::harness::{wait_exit, Petrel, StoreKind, BIN};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const EXAMPLES: &[&str] = &[
    "hello-python",
    "hello-node",
    "hello-http",
    "hello-provided",
    "hello-wasm",
    "hello-go",
    "hello-go-http",
    "hello-java",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_examples_deploy_unchanged_with_serve() {
    // The wasm example's component is built from source first, as its README says.
    crate::harness::wasm_guests();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .unwrap();
    // The examples whose toolchains every machine here has (Python, Node, Rust, Go, Java):
    // --deploy builds the Go and Java ones from source (their [build] tables). The
    // componentize-py and componentize-js ones build the same way, from PyPI and npm, but their
    // 13-19 MiB components take a minute each to compile in a debug build of the server.
    let dirs: Vec<String> = EXAMPLES
        .iter()
        .map(|e| examples.join(e).display().to_string())
        .collect();
    let mut args = vec!["--deploy"];
    args.extend(dirs.iter().map(String::as_str));
    // As the README runs it: the default data directory, relative to the working directory.
    let p = Petrel::start_like_the_readme(&args).await;
    // --deploy runs right after the listener is up; wait until all are listed.
    let mut listed = String::new();
    for _ in 0..600 {
        // No --token, no PETREL_TOKEN: the CLI finds ./.petrel/bootstrap-token, as the README
        // says.
        let out = p.cli_as(None, &["ls"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        listed = String::from_utf8(out.stdout).unwrap();
        if EXAMPLES.iter().all(|n| listed.contains(n)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in EXAMPLES {
        assert!(listed.contains(name), "{listed}");
        // The examples are public: no key needed to call them.
        let r = p
            .http_with(
                "GET",
                &format!("/fn/{name}?name=you"),
                &[("authorization", "-")],
                vec![],
            )
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert!(r.text().contains("Hello, you!"), "{name}: {}", r.text());
        let out = p.cli_ok(&["invoke", name, "--data", r#"{"name": "Ada"}"#]);
        assert!(out.contains("Hello, Ada!"), "{name}: {out}");
    }
    assert!(p.data_dir.path().join(".petrel/petrel.db").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_shows_new_lines_as_they_come() {
    let p = Petrel::start().await;
    p.deploy(echo_function("chatty", "nodejs", "").path());
    let mut follower = Command::new(BIN)
        .args(["logs", "chatty", "--follow"])
        .env("PETREL_SERVER", &p.url)
        .env("PETREL_TOKEN", crate::harness::OWNER_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = p.invoke("chatty", "{}").await.json()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        if line.contains("node-log-line") && line.contains(&id) {
            seen = true;
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(seen, "the follower never showed the invocation's line");
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_keep_functions_apart() {
    let p = Petrel::start().await;
    let dir = echo_function("same", "python3", "[env]\nMARK = \"default\"");
    p.deploy(dir.path());
    p.cli_ok(&[
        "deploy",
        dir.path().to_str().unwrap(),
        "-n",
        "dev",
        "--env",
        "MARK=dev",
    ]);
    assert_eq!(p.invoke("same", "{}").await.json()["mark"], "default");
    assert_eq!(p.invoke("same.dev", "{}").await.json()["mark"], "dev");
    assert_eq!(
        p.http("GET", "/fn/same?namespace=dev", None).await.json()["mark"],
        "dev"
    );
    let ls = p.cli_ok(&["ls", "-n", "dev"]);
    assert_eq!(ls.lines().filter(|l| l.contains("same")).count(), 1, "{ls}");
    p.cli_ok(&["rm", "same", "-n", "dev"]);
    p.invoke("same.dev", "{}")
        .await
        .assert_error(404, "function_not_found");
    assert_eq!(p.invoke("same", "{}").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_signal_lets_in_flight_requests_finish() {
    let mut p = Petrel::start().await;
    p.deploy(echo_function("slow", "python3", "").path());
    assert_eq!(p.invoke("slow", "{}").await.status, 200);
    let client = p.client.clone();
    let in_flight = tokio::spawn(async move {
        let resp = client
            .call(
                http::Method::POST,
                "/v1/functions/slow/invoke",
                Some((
                    "application/json",
                    bytes::Bytes::from_static(br#"{"action": "slow", "secs": 1.5}"#),
                )),
            )
            .await;
        resp.map(|(parts, _)| parts.status.as_u16())
    });
    p.wait_for_log("slow", "py-log-line", 2).await;
    let status = p.stop();
    assert!(status.success(), "exit: {status}");
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request was cut off"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_describes_itself_and_reports_health() {
    let p = Petrel::start().await;
    let doc = p.http("GET", "/v1/openapi.json", None).await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/functions",
        "/v1/functions/{name}",
        "/v1/functions/{name}/invoke",
        "/v1/functions/{name}/logs",
        "/fn/{name}/{path}",
        "/async-fn/{name}/{path}",
        "/healthz",
        "/metrics",
        "/v1/functions/{name}/invocations",
        "/v1/invocations/{id}",
        "/v1/usage",
        "/v1/functions/{name}/async",
        "/v1/functions/{name}/dlq",
        "/v1/functions/{name}/dlq/replay",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    // The document is generated from the routes: every operation it names is one the server
    // routes (an unknown function may answer, an unknown route or method may not).
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{name}", "no-such-function")
            .replace("{id}", "no-such-id")
            .replace("{path}", "x")
            .replace("{file}", "console.js");
        for method in item.as_object().unwrap().keys() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let body = (method != "get" && method != "delete")
                .then(|| ("application/json", b"{}".to_vec()));
            let r = p.http(&method.to_uppercase(), &concrete, body).await;
            let code = r.header("x-petrel-error").unwrap_or("");
            assert!(
                !["route_not_found", "method_not_allowed"].contains(&code),
                "{method} {path} is documented but not routed: {}",
                r.text()
            );
        }
    }
    assert!(operations >= 20, "{operations} operations documented");
    for schema in [
        "FunctionDetail",
        "DeployResponse",
        "AsyncInvocation",
        "ErrorBody",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} is not described"
        );
    }
    assert_eq!(p.http("GET", "/healthz", None).await.json()["status"], "ok");
}

#[test]
fn serve_refuses_a_bad_store_url_and_a_busy_port() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "mysql://x"])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("postgres://"));

    // A tls_ca_file that cannot be read, or holds no certificate, stops the start, naming it.
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("node.toml");
    let empty = cfg.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (file, says) in [
        (
            std::path::PathBuf::from("/nonexistent/ca.pem"),
            "tls_ca_file: could not read certificates from /nonexistent/ca.pem".to_owned(),
        ),
        (
            empty.clone(),
            format!("tls_ca_file: {} holds no PEM certificate", empty.display()),
        ),
    ] {
        std::fs::write(
            &path,
            format!("tls_ca_file = {:?}\n", file.to_str().unwrap()),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(tempfile::tempdir().unwrap().path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&says), "{err}");
    }

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &addr])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_options_and_invoke_inputs_work_through_the_binary() {
    // A node config file: its payload limit applies; --log-json makes the server log JSON lines.
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("node.toml");
    std::fs::write(&path, "payload_limit_mb = 1\nlog_retention = \"1h\"\n").unwrap();
    let p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", path.to_str().unwrap(), "--log-json"],
    )
    .await;
    p.deploy(crate::fixtures::echo_function("inputs", "python3", "").path());
    let big = format!("\"{}\"", "x".repeat(1024 * 1024 + 10));
    p.invoke("inputs", &big)
        .await
        .assert_error(413, "payload_too_large");
    let fits = format!("\"{}\"", "x".repeat(512 * 1024));
    assert_eq!(p.invoke("inputs", &fits).await.status, 200);
    let log = p.server_log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(log.contains("petrel started"), "{log}");

    // petrel invoke --data @FILE and --data - (standard input).
    let event = cfg.path().join("event.json");
    std::fs::write(&event, r#"{"from": "file"}"#).unwrap();
    let out = p.cli_ok(&[
        "invoke",
        "inputs",
        "--data",
        &format!("@{}", event.display()),
    ]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["event"]["from"],
        "file"
    );
    let mut child = Command::new(BIN)
        .args(["invoke", "inputs", "--data", "-"])
        .env("PETREL_SERVER", &p.url)
        .env("PETREL_TOKEN", crate::harness::OWNER_TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"from": "stdin"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["event"]["from"], "stdin");
    let out = p.cli(&["invoke", "inputs", "--data", "@/nonexistent/event.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not read"));
}
