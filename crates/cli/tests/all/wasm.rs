//! The wasm runtime through the real binary: the Rust example, every bad component, and guests
//! that trap, loop, grow and reach out.

use crate::harness::{
    function_dir, https_receiver, manifest, test_ca, wasm_function, wasm_guests, Petrel, StoreKind,
};
use std::sync::Arc;

/// A tiny HTTP server on loopback for the guests' outbound calls: answers "pong", and counts
/// the connections it accepted.
async fn pong_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Read the whole request head before answering: closing a socket with unread
                // input resets the connection, and the guest would see that instead of "pong".
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                // `POST /read` reads the whole (chunked) body first and answers how many
                // pieces it held; anything else is answered at the head.
                let mut answer = "pong".to_owned();
                if seen.starts_with(b"POST /read ") {
                    while !seen.ends_with(b"0\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    answer = String::from_utf8_lossy(&seen)
                        .matches("piece ")
                        .count()
                        .to_string();
                }
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                            answer.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = s.shutdown().await;
                // Drain what the client still sends (a chunked terminator) until it closes:
                // dropping unread input would reset the connection under the client.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    });
    (port, accepted)
}

/// Whether the probe's log shows this line within a few seconds.
async fn logged(p: &Petrel, line: &str) -> bool {
    crate::harness::eventually(std::time::Duration::from_secs(5), || {
        p.cli_ok(&["logs", "probe", "--tail", "1000"])
            .contains(line)
    })
    .await
}

async fn healthy(p: &Petrel) {
    let r = p.http("GET", "/fn/probe/ok", None).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "probe ok /ok"),
        "the probe stopped serving"
    );
    let r = p.http("GET", "/fn/hello-wasm?name=again", None).await;
    assert_eq!(
        r.status,
        200,
        "another function stopped serving: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_example_deploys_answers_and_survives_a_restart_without_recompiling() {
    let guests = wasm_guests();
    let mut p = Petrel::start().await;
    let example = guests.hello.parent().unwrap();
    let out = p.deploy(example);
    assert!(out.contains("Deployed hello-wasm version 1"), "{out}");
    let out = p.cli_ok(&["invoke", "hello-wasm", "--data", r#"{"name": "Ada"}"#]);
    assert!(out.contains("Hello, Ada!"), "{out}");
    let r = p
        .http("GET", "/fn/hello-wasm/some/path?name=Bob", None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["message"], "Hello, Bob!");
    assert_eq!(r.json()["path"], "/some/path");
    // Log lines reach the store a few milliseconds after the answer.
    p.wait_for_log("hello-wasm", "greeting Bob", 1).await;

    // Compiled once, at deploy; a restart loads the cached artifact instead of compiling.
    let cache = p.data_dir.path().join("data/cache/wasm");
    let files = || {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().modified().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = files();
    assert_eq!(before.len(), 1, "{before:?}");
    p.restart().await;
    let out = p.cli_ok(&["invoke", "hello-wasm", "--data", r#"{"name": "Cy"}"#]);
    assert!(out.contains("Hello, Cy!"), "{out}");
    assert_eq!(
        files(),
        before,
        "the component was compiled again after the restart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_components_and_hostile_guests_get_their_errors_and_others_keep_serving() {
    let guests = wasm_guests();
    let (allowed, allowed_hits) = pong_server().await;
    let (denied, denied_hits) = pong_server().await;
    assert_ne!(allowed, denied);
    // https: one server whose CA the Petrel server trusts (tls_ca_file), one whose CA it does not.
    let (trusted, untrusted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [ca, cert, key] = test_ca(trusted.path());
    let [_, bad_cert, bad_key] = test_ca(untrusted.path());
    let (secure, secure_seen) = https_receiver(&cert, &key).await;
    let (forged, forged_seen) = https_receiver(&bad_cert, &bad_key).await;
    let cfg = trusted.path().join("petrel-node.toml");
    std::fs::write(&cfg, format!("tls_ca_file = {:?}\n", ca.to_str().unwrap())).unwrap();
    let p =
        Arc::new(Petrel::start_with(StoreKind::Sqlite, &["--config", cfg.to_str().unwrap()]).await);
    p.deploy(guests.hello.parent().unwrap());
    let probe = wasm_function(
        "probe",
        &guests.probe,
        &format!("timeout = \"1s\"\nmemory_mb = 32\nallowed_outbound_hosts = [\"http://127.0.0.1:{allowed}\", \"{secure}\", \"{forged}\"]\n[env]\nGREETING = \"from the manifest\""),
    );
    p.deploy(probe.path());
    healthy(&p).await;

    // Bad components are refused at deploy, saying what is wrong.
    let garbage = function_dir(&[
        ("petrel.toml", &manifest("bad", "wasm", "app.wasm", "")),
        ("app.wasm", "not wasm at all"),
    ]);
    let out = p.cli(&["deploy", garbage.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly binary"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    healthy(&p).await;
    let core = function_dir(&[("petrel.toml", &manifest("bad", "wasm", "app.wasm", ""))]);
    std::fs::write(core.path().join("app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let out = p.cli(&["deploy", core.path().to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("core WebAssembly module"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    healthy(&p).await;
    let command = wasm_function("bad", &guests.command, "");
    let out = p.cli(&["deploy", command.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wasi:http/proxy") && err.contains("incoming-handler"),
        "{err}"
    );
    p.invoke("bad", "{}")
        .await
        .assert_error(404, "function_not_found");
    healthy(&p).await;

    // A fresh instance per request: nothing carries over.
    for _ in 0..3 {
        assert_eq!(p.http("GET", "/fn/probe/served", None).await.text(), "1");
    }
    assert_eq!(
        p.http("GET", "/fn/probe/env?key=GREETING", None)
            .await
            .text(),
        "from the manifest"
    );
    let r = p
        .http(
            "POST",
            "/fn/probe/echo",
            Some(("text/plain", b"round trip".to_vec())),
        )
        .await;
    assert_eq!(r.text(), "round trip");

    // A trap is the function's failure, with its message; the server carries on.
    let m = p
        .http("GET", "/fn/probe/trap", None)
        .await
        .assert_error(502, "function_crashed");
    assert!(
        m.contains("trapped") && m.contains("probe panicked on purpose"),
        "{m}"
    );
    healthy(&p).await;

    // An endless loop is stopped at the timeout and holds no server thread meanwhile.
    let looping = {
        let p = p.clone();
        tokio::spawn(async move { p.http("GET", "/fn/probe/loop", None).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    healthy(&p).await;
    let m = looping.await.unwrap().assert_error(504, "function_timeout");
    assert!(m.contains("1s"), "{m}");
    healthy(&p).await;

    // Memory: growth past memory_mb fails the request; within it is fine.
    let m = p
        .http("GET", "/fn/probe/grow?mb=64", None)
        .await
        .assert_error(502, "function_out_of_memory");
    assert!(m.contains("memory_mb"), "{m}");
    let r = p.http("GET", "/fn/probe/grow?mb=8", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    healthy(&p).await;

    // Outbound HTTP: only to allowed_outbound_hosts.
    let r = p
        .http(
            "GET",
            &format!("/fn/probe/fetch?url=http://127.0.0.1:{allowed}/x"),
            None,
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "fetched 200 pong"));
    let r = p
        .http(
            "GET",
            &format!("/fn/probe/fetch?url=http://127.0.0.1:{denied}/x"),
            None,
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    // The denied host never sees a connection; the guest is told why.
    let (a, d) = (
        allowed_hits.load(std::sync::atomic::Ordering::SeqCst),
        denied_hits.load(std::sync::atomic::Ordering::SeqCst),
    );
    assert_eq!(
        (a, d),
        (1, 0),
        "connections to the allowed and denied hosts: {}",
        r.text()
    );
    // The guest's own error text depends on which of its reads fails first; the platform says
    // plainly what was denied, in the function's log.
    let denied_line = format!("outbound request to http://127.0.0.1:{denied} denied");
    assert!(
        logged(&p, &denied_line).await,
        "no platform line {denied_line:?}"
    );
    healthy(&p).await;

    // A server may answer at the request's head and close (an HTTP/1.0 server does): the guest
    // still finishes writing its body, which goes nowhere, and reads the answer.
    for _ in 0..3 {
        let r = p
            .http(
                "GET",
                &format!("/fn/probe/upload?pieces=3&url=http://127.0.0.1:{allowed}/up"),
                None,
            )
            .await;
        assert_eq!((r.status, r.text().as_str()), (200, "uploaded 200 pong"));
    }
    // https, verified against the server's trusted CAs: the trusted one answers; the other is
    // refused in the handshake, and the function's log says why.
    let r = p
        .http("GET", &format!("/fn/probe/fetch?url={secure}/tls"), None)
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "fetched 200 "));
    assert_eq!(secure_seen.lock().unwrap()[0].0, "/tls");
    let r = p
        .http("GET", &format!("/fn/probe/fetch?url={forged}/tls"), None)
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(forged_seen.lock().unwrap().is_empty());
    let refused = format!(
        "outbound request to {forged} failed its TLS handshake: invalid peer certificate: UnknownIssuer"
    );
    assert!(logged(&p, &refused).await, "no platform line {refused:?}");

    // And a server that reads the body gets all of it.
    let r = p
        .http(
            "GET",
            &format!("/fn/probe/upload?pieces=4&url=http://127.0.0.1:{allowed}/read"),
            None,
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "uploaded 200 4"));
    healthy(&p).await;

    // An endless async run (async_timeout is 15 minutes) stops when it is cancelled: its guest
    // is dropped where it runs, and only that request's.
    let r = p.http("POST", "/async-fn/probe/loop", None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let running = crate::harness::eventually(std::time::Duration::from_secs(10), || {
        p.cli_ok(&["inv", "get", &id]).contains("\"running\"")
    })
    .await;
    assert!(running, "{}", p.cli_ok(&["inv", "get", &id]));
    let r = p
        .http("DELETE", &format!("/v1/invocations/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    p.wait_record(
        "probe",
        &format!("{id}.1"),
        "stopped",
        std::time::Duration::from_secs(10),
    )
    .await;
    healthy(&p).await;

    // The guest's stdout and stderr are the invocation's logs.
    let logs = p.cli_ok(&["logs", "probe", "--tail", "1000"]);
    assert!(
        logs.contains("[stdout] probe GET /served") && logs.contains("[stderr] probe stderr line"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_reuse_keeps_a_guest_for_so_many_requests_and_retires_it_on_a_trap() {
    let guests = wasm_guests();
    let p = Petrel::start().await;
    // One instance (a share of the component) and one request at a time, so that each request
    // finds the guest the one before left.
    let probe = wasm_function(
        "probe",
        &guests.probe,
        "instance_reuse = 3\nconcurrency = 1\nmax_instances = 1\n",
    );
    p.deploy(probe.path());
    let served = || async { p.http("GET", "/fn/probe/served", None).await.text() };
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(served().await);
    }
    // Three requests in one guest (its memory, and so its counter, survive), then a fresh one.
    assert_eq!(seen, ["1", "2", "3", "1"], "{seen:?}");
    p.http("GET", "/fn/probe/trap", None)
        .await
        .assert_error(502, "function_crashed");
    // The guest that trapped was retired with its request: the next one starts afresh.
    assert_eq!(served().await, "1");
    assert_eq!(served().await, "2");
    // Each request's output is its own, in the logs, once (not again with the next request
    // of the same guest).
    p.wait_for_log("probe", "[stdout] probe GET /served", 6)
        .await;
    let logs = p.cli_ok(&["logs", "probe", "--tail", "1000"]);
    assert_eq!(
        logs.matches("[stdout] probe GET /served").count(),
        6,
        "{logs}"
    );

    // Not a key of process runtimes, and bounded.
    let node = function_dir(&[(
        "petrel.toml",
        &manifest(
            "reuse-node",
            "http",
            "node server.js",
            "instance_reuse = 10\n",
        ),
    )]);
    let out = p.cli(&["deploy", node.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("instance_reuse") && err.contains("wasm functions only"),
        "{err}"
    );
}
