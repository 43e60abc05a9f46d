//! Deploy, invoke, list, get, logs, redeploy, pin a version, restart with data kept, delete: for
//! every runtime, on both stores.

use crate::fixtures::{echo_function, log_marker};
use crate::harness::{eventually, Petrel, StoreKind};
use serde_json::Value;
use std::time::Duration;

const RUNTIMES: &[&str] = &["python3", "nodejs", "http", "provided"];

fn name_of(runtime: &str) -> String {
    format!("echo-{runtime}")
}

async fn lifecycle(store: StoreKind) {
    let mut p = Petrel::start_with(store, &[]).await;
    let dirs: Vec<_> = RUNTIMES
        .iter()
        .map(|r| echo_function(&name_of(r), r, "[env]\nMARK = \"one\""))
        .collect();

    for (r, dir) in RUNTIMES.iter().zip(&dirs) {
        let name = name_of(r);
        let out = p.deploy(dir.path());
        assert!(out.contains(&format!("Deployed {name} version 1")), "{out}");
        assert!(out.contains(&format!("{}/fn/{name}", p.url)), "{out}");
        // The same directory again adds no version.
        let out = p.deploy(dir.path());
        assert!(
            out.contains(&format!("{name} is unchanged at version 1")),
            "{out}"
        );

        // The raw invoke through the CLI: the payload is the event.
        let out = p.cli_ok(&["invoke", &name, "--data", r#"{"hello": "world"}"#]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{r}: {e}: {out}"));
        assert_eq!(v["mark"], "one", "{r}: {v}");
        assert!(
            v["secret"].is_null(),
            "{r}: the server's environment leaked: {v}"
        );
        if *r == "http" {
            assert_eq!(
                (
                    v["method"].as_str(),
                    v["path"].as_str(),
                    v["bytes"].as_u64()
                ),
                (Some("POST"), Some("/"), Some(18))
            );
        } else {
            assert_eq!(v["event"]["hello"], "world", "{r}: {v}");
        }
        if matches!(*r, "python3" | "nodejs") {
            assert_eq!(v["function_name"], name.as_str());
            assert_eq!(v["memory"], "128");
            assert_eq!(v["request_id"].as_str().unwrap().len(), 36);
            let remaining = v["remaining_ms"].as_i64().unwrap();
            assert!(
                remaining > 20_000 && remaining <= 30_000,
                "{r}: remaining {remaining}"
            );
        }

        // Through the HTTP gateway: Lambda handlers get an API Gateway v2 event.
        let resp = p
            .http("GET", &format!("/fn/{name}/a/b?x=1&x=2"), None)
            .await;
        assert_eq!(resp.status, 200, "{r}: {}", resp.text());
        assert_eq!(resp.header("x-petrel-version"), Some("1"));
        assert_eq!(
            resp.header("x-petrel-invocation-id").map(str::len),
            Some(36)
        );
        let v = resp.json();
        if *r == "http" {
            assert_eq!(
                (
                    v["method"].as_str(),
                    v["path"].as_str(),
                    v["query"].as_str()
                ),
                (Some("GET"), Some("/a/b"), Some("?x=1&x=2"))
            );
        } else {
            let ev = &v["event"];
            assert_eq!(ev["version"], "2.0", "{r}: {v}");
            assert_eq!(ev["rawPath"], "/a/b");
            assert_eq!(ev["queryStringParameters"]["x"], "1,2");
            assert_eq!(ev["requestContext"]["http"]["method"], "GET");
        }
    }

    let ls = p.cli_ok(&["ls"]);
    for r in RUNTIMES {
        assert!(ls.contains(&name_of(r)), "{ls}");
    }

    // Logs: each function's own line, tagged with an invocation.
    for r in RUNTIMES {
        let name = name_of(r);
        let found = eventually(Duration::from_secs(10), || {
            p.cli_ok(&["logs", &name]).contains(log_marker(r))
        })
        .await;
        assert!(
            found,
            "{r}: no log line; logs:\n{}",
            p.cli_ok(&["logs", &name])
        );
        let resp = p
            .http("GET", &format!("/v1/functions/{name}/logs?tail=50"), None)
            .await;
        let tagged = resp
            .text()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .any(|l| {
                l["line"].as_str().unwrap_or("").contains(log_marker(r))
                    && l["invocation"].as_str().is_some()
            });
        assert!(
            tagged,
            "{r}: log lines carry no invocation id: {}",
            resp.text()
        );
    }

    // Redeploy: a new immutable version; the old one stays callable by number.
    for (r, dir) in RUNTIMES.iter().zip(&dirs) {
        let name = name_of(r);
        let out = p.cli_ok(&["deploy", dir.path().to_str().unwrap(), "--env", "MARK=two"]);
        assert!(out.contains(&format!("Deployed {name} version 2")), "{out}");
        let v: Value = serde_json::from_str(&p.cli_ok(&["invoke", &name])).unwrap();
        assert_eq!(v["mark"], "two", "{r}");
        let v: Value = serde_json::from_str(&p.cli_ok(&["invoke", &format!("{name}:1")])).unwrap();
        assert_eq!(v["mark"], "one", "{r}: version 1 must stay as it was");
        let get = p.cli_ok(&["get", &name]);
        assert!(
            get.contains("Versions:") && get.contains(&format!("Runtime:    {r}")),
            "{get}"
        );
    }

    // Restart: every function and version is still there and serves.
    p.restart().await;
    for r in RUNTIMES {
        let name = name_of(r);
        let resp = p.invoke(&name, "{}").await;
        assert_eq!(resp.status, 200, "{r} after restart: {}", resp.text());
        assert_eq!(resp.header("x-petrel-version"), Some("2"));
        assert_eq!(resp.json()["mark"], "two");
        let detail = p
            .http("GET", &format!("/v1/functions/{name}"), None)
            .await
            .json();
        assert_eq!(detail["versions"].as_array().unwrap().len(), 2, "{detail}");
        assert_eq!(
            p.invoke(&format!("{name}:1"), "{}").await.json()["mark"],
            "one"
        );
    }

    // Delete: gone from the API and the gateway; the others carry on.
    assert!(p
        .cli_ok(&["rm", "echo-python3"])
        .contains("Deleted echo-python3"));
    p.invoke("echo-python3", "{}")
        .await
        .assert_error(404, "function_not_found");
    p.http("GET", "/fn/echo-python3", None)
        .await
        .assert_error(404, "function_not_found");
    let out = p.cli(&["get", "echo-python3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no function named echo-python3"));
    assert!(!p.cli_ok(&["ls"]).contains("echo-python3"));
    assert_eq!(p.invoke("echo-nodejs", "{}").await.status, 200);
    // Deployed again after deletion, it starts over at version 1.
    let out = p.deploy(dirs[0].path());
    assert!(out.contains("Deployed echo-python3 version 1"), "{out}");

    let status = p.stop();
    assert!(status.success(), "server exit: {status}");
    p.store.drop_postgres().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_of_every_runtime_on_sqlite() {
    lifecycle(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_of_every_runtime_on_postgres() {
    lifecycle(StoreKind::fresh_postgres().await).await;
}
