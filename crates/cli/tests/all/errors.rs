//! Every kind of bad input and misbehaving function gets a clear answer, and the server keeps
//! serving: each case is followed by a healthy request.

use crate::fixtures::echo_function;
use crate::harness::{eventually, function_dir, instance_alive, instance_pids, manifest, Petrel};
use petrel_cli::package::package_dir;
use std::time::Duration;

async fn healthy(p: &Petrel) {
    let r = p.invoke("healthy", r#"{"ok": true}"#).await;
    assert_eq!(r.status, 200, "the server stopped serving: {}", r.text());
    assert_eq!(r.json()["event"]["ok"], true);
}

async fn upload(
    p: &Petrel,
    name: &str,
    manifest_text: &str,
    files: &[(&str, &str)],
) -> crate::harness::Resp {
    let dir = function_dir(files);
    let zip = package_dir(dir.path(), manifest_text).unwrap();
    p.http(
        "PUT",
        &format!("/v1/functions/{name}"),
        Some(("application/zip", zip)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let p = Petrel::start().await;
    p.deploy(echo_function("healthy", "python3", "").path());
    healthy(&p).await;
    let app = [("app.py", "def handler(e, c):\n    return e\n")];

    // Invalid names, in the URL and in a reference.
    let m = upload(
        &p,
        "Bad_Name",
        &manifest("Bad_Name", "python3", "app.handler", ""),
        &app,
    )
    .await;
    assert!(m
        .assert_error(400, "invalid_name")
        .contains("lowercase letter first"));
    healthy(&p).await;
    p.invoke("Bad.Name", "{}")
        .await
        .assert_error(400, "invalid_name");
    healthy(&p).await;

    // Unknown manifest key: refused by the CLI before upload, and by the server.
    let dir = function_dir(&[
        (
            "petrel.toml",
            &manifest("typo", "python3", "app.handler", "memroy_mb = 256"),
        ),
        app[0],
    ]);
    let out = p.cli(&["deploy", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("memroy_mb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = upload(
        &p,
        "typo",
        &manifest("typo", "python3", "app.handler", "memroy_mb = 256"),
        &app,
    )
    .await;
    assert!(m
        .assert_error(400, "invalid_manifest")
        .contains("memroy_mb"));
    healthy(&p).await;

    // Wrong types and values name their field.
    let m = upload(
        &p,
        "bad",
        &manifest("bad", "python3", "app.handler", "timeout = \"soon\""),
        &app,
    )
    .await;
    assert!(m.assert_error(400, "invalid_manifest").contains("timeout"));
    let m = upload(
        &p,
        "bad",
        &manifest("bad", "python3", "app.handler", "memory_mb = 99999"),
        &app,
    )
    .await;
    assert!(m
        .assert_error(400, "invalid_manifest")
        .contains("memory_mb"));
    let m = upload(
        &p,
        "bad",
        &manifest("bad", "cobol", "app.handler", ""),
        &app,
    )
    .await;
    assert!(m.assert_error(400, "unsupported_runtime").contains("cobol"));
    let m = upload(
        &p,
        "bad",
        &manifest("other", "python3", "app.handler", ""),
        &app,
    )
    .await;
    assert!(m.assert_error(400, "invalid_manifest").contains("other"));
    healthy(&p).await;

    // A package without the handler's file, a provided runtime without bootstrap, garbage.
    let m = upload(
        &p,
        "nofile",
        &manifest("nofile", "python3", "missing.handler", ""),
        &app,
    )
    .await;
    assert!(m
        .assert_error(400, "invalid_package")
        .contains("missing.py"));
    let m = upload(&p, "noboot", &manifest("noboot", "provided", "", ""), &app).await;
    assert!(m.assert_error(400, "invalid_package").contains("bootstrap"));
    let m = p
        .http(
            "PUT",
            "/v1/functions/junk",
            Some(("application/zip", b"not a zip".to_vec())),
        )
        .await;
    assert!(m.assert_error(400, "invalid_package").contains("zip"));
    healthy(&p).await;

    // Unknown function and version.
    assert!(p
        .invoke("nope", "{}")
        .await
        .assert_error(404, "function_not_found")
        .contains("petrel deploy"));
    p.http("POST", "/fn/nope/x", None)
        .await
        .assert_error(404, "function_not_found");
    assert!(p
        .invoke("healthy:9", "{}")
        .await
        .assert_error(404, "version_not_found")
        .contains("latest is 1"));
    let out = p.cli(&["invoke", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no function named nope"));
    healthy(&p).await;

    // Payloads: not JSON, and over the 6 MB limit (declared, and streamed without a length).
    assert!(p
        .invoke("healthy", "{not json")
        .await
        .assert_error(400, "invalid_payload")
        .contains("JSON"));
    let big = format!("\"{}\"", "x".repeat(7 * 1024 * 1024));
    p.invoke("healthy", &big)
        .await
        .assert_error(413, "payload_too_large");
    p.http(
        "POST",
        "/fn/healthy",
        Some(("text/plain", big.clone().into_bytes())),
    )
    .await
    .assert_error(413, "payload_too_large");
    healthy(&p).await;

    // Routes and methods that do not exist.
    p.http("GET", "/nothing/here", None)
        .await
        .assert_error(404, "route_not_found");
    p.http("PATCH", "/v1/functions", None)
        .await
        .assert_error(405, "method_not_allowed");
    p.http("GET", "/v1/functions/nope", None)
        .await
        .assert_error(404, "function_not_found");
    p.http("DELETE", "/v1/functions/nope", None)
        .await
        .assert_error(404, "function_not_found");
    p.http("GET", "/v1/functions/healthy/logs?since=soon", None)
        .await
        .assert_error(400, "invalid_request");
    healthy(&p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_raises_gets_a_lambda_style_error() {
    let p = Petrel::start().await;
    for (runtime, kind, message) in [
        ("python3", "ValueError", "boom from python"),
        ("nodejs", "TypeError", "boom from node"),
        ("provided", "CustomError", "boom from bootstrap"),
    ] {
        let name = format!("raise-{runtime}");
        p.deploy(echo_function(&name, runtime, "").path());
        let r = p.invoke(&name, r#"{"action": "raise"}"#).await;
        assert_eq!(r.status, 500, "{runtime}: {}", r.text());
        assert_eq!(r.header("x-petrel-function-error"), Some(kind), "{runtime}");
        assert!(
            r.header("x-petrel-error").is_none(),
            "a function's error is not Petrel's"
        );
        let j = r.json();
        assert_eq!(j["errorType"], kind);
        assert_eq!(j["errorMessage"], message);
        if runtime != "provided" {
            let trace = j["stackTrace"].as_array().unwrap();
            assert!(!trace.is_empty(), "{j}");
            if runtime == "python3" {
                // The user's frames only, as Lambda shows them: not the runtime shim's.
                let text = j["stackTrace"].to_string();
                assert!(
                    text.contains("app.py") && !text.contains("bootstrap.py"),
                    "{text}"
                );
            }
        }
        // The CLI prints it and exits 1.
        let out = p.cli(&["invoke", &name, "--data", r#"{"action": "raise"}"#]);
        assert_eq!(out.status.code(), Some(1), "{runtime}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(message));
        // Through the gateway too; then the same instance serves the next request.
        let r = p
            .http("GET", &format!("/fn/{name}?action=raise"), None)
            .await;
        assert_eq!(
            (r.status, r.header("x-petrel-function-error")),
            (500, Some(kind))
        );
        assert_eq!(p.invoke(&name, "{}").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_kills_the_instance_tree_and_answers_504() {
    let p = Petrel::start().await;
    p.deploy(echo_function("sleepy", "python3", "timeout = \"2s\"").path());
    let first = p.invoke("sleepy", "{}").await.json()["instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let (pp, id) = (std::sync::Arc::new(p), first.clone());
    let sleeping = {
        let pp = pp.clone();
        tokio::spawn(async move { pp.invoke("sleepy", r#"{"action": "sleep"}"#).await })
    };
    // The handler and the child it started are both running...
    assert!(
        eventually(Duration::from_secs(5), || instance_pids(&id).len() >= 2).await,
        "the sleeping handler and its child: {:?}",
        instance_pids(&id)
    );
    let r = sleeping.await.unwrap();
    assert!(r.assert_error(504, "function_timeout").contains("2s"));
    // ...and after the timeout, none of the instance's processes is.
    assert!(
        eventually(Duration::from_secs(5), || !instance_alive(&id)).await,
        "left running: {:?}",
        instance_pids(&id)
    );
    // A fresh instance serves the next request.
    let r = pp.invoke("sleepy", "{}").await;
    assert_eq!(r.status, 200);
    assert_ne!(r.json()["instance"].as_str().unwrap(), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_request_is_a_502_with_the_cause_and_the_next_request_works() {
    let p = Petrel::start().await;
    for (runtime, status) in [("python3", 3), ("nodejs", 5)] {
        let name = format!("crash-{runtime}");
        p.deploy(echo_function(&name, runtime, "").path());
        let m = p
            .invoke(&name, r#"{"action": "crash"}"#)
            .await
            .assert_error(502, "function_crashed");
        assert!(m.contains(&format!("exited with status {status}")), "{m}");
        assert!(m.contains("about to crash"), "stderr tail missing: {m}");
        assert_eq!(p.invoke(&name, "{}").await.status, 200);
    }
    p.deploy(echo_function("crash-http", "http", "").path());
    let m = p
        .http("GET", "/fn/crash-http/crash", None)
        .await
        .assert_error(502, "function_crashed");
    assert!(
        m.contains("exited with status 4") && m.contains("http about to crash"),
        "{m}"
    );
    assert_eq!(p.http("GET", "/fn/crash-http/ok", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_that_cannot_start_says_why() {
    let p = Petrel::start().await;
    let py = function_dir(&[
        (
            "petrel.toml",
            &manifest("bad-import", "python3", "app.handler", ""),
        ),
        ("app.py", "raise RuntimeError('bad config at import')\n"),
    ]);
    p.deploy(py.path());
    let m = p
        .invoke("bad-import", "{}")
        .await
        .assert_error(502, "function_init_failed");
    assert!(m.contains("bad config at import"), "{m}");

    let js = function_dir(&[
        (
            "petrel.toml",
            &manifest("bad-syntax", "nodejs", "index.handler", ""),
        ),
        ("index.js", "exports.handler = async (e) => {{ nope\n"),
    ]);
    p.deploy(js.path());
    let m = p
        .invoke("bad-syntax", "{}")
        .await
        .assert_error(502, "function_init_failed");
    assert!(m.contains("SyntaxError"), "{m}");

    let nohandler = function_dir(&[
        (
            "petrel.toml",
            &manifest("no-handler", "python3", "app.missing", ""),
        ),
        ("app.py", "def handler(e, c):\n    return 1\n"),
    ]);
    p.deploy(nohandler.path());
    let m = p
        .invoke("no-handler", "{}")
        .await
        .assert_error(502, "function_init_failed");
    assert!(m.contains("missing"), "{m}");

    let http = function_dir(&[(
        "petrel.toml",
        &manifest("exits", "http", "echo listening nowhere; exit 7", ""),
    )]);
    p.deploy(http.path());
    let m = p
        .http("GET", "/fn/exits", None)
        .await
        .assert_error(502, "function_init_failed");
    assert!(m.contains("exited with status 7"), "{m}");

    // The failures are in the function's logs too.
    p.wait_for_log("bad-import", "bad config at import", 1)
        .await;
    p.deploy(echo_function("healthy", "python3", "").path());
    healthy(&p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_over_the_limit_is_refused_and_the_instance_keeps_serving() {
    let p = Petrel::start().await;
    // Petrel refuses the body and closes the shim's Runtime API connection: the shim must open
    // another for its next invocation, on the same instance.
    for (name, runtime) in [("healthy", "python3"), ("healthy-node", "nodejs")] {
        p.deploy(echo_function(name, runtime, "").path());
        let id = p.invoke(name, "{}").await.json()["instance"].to_string();
        p.invoke(name, r#"{"action": "big"}"#)
            .await
            .assert_error(502, "response_too_large");
        let r = p.invoke(name, "{}").await;
        assert_eq!(r.status, 200, "{runtime}: {}", r.text());
        assert_eq!(
            r.json()["instance"].to_string(),
            id,
            "{runtime}: the instance was not at fault"
        );
    }
}
