//! `http` functions see requests as sent; Lambda handlers can shape the HTTP answer.

use crate::fixtures::echo_function;
use crate::harness::Petrel;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread")]
async fn http_functions_get_the_request_as_sent_and_stream_back() {
    let p = Petrel::start().await;
    p.deploy(echo_function("web", "http", "timeout = \"1s\"").path());
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let digest = hex::encode(Sha256::digest(&body));
    let resp = p
        .http(
            "PUT",
            "/fn/web/files/a.bin?v=1&w=two",
            Some(("application/octet-stream", body)),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-from"), Some("http"));
    assert!(resp.header("x-petrel-invocation-id").is_some());
    let j = resp.json();
    assert_eq!(j["method"], "PUT");
    assert_eq!(j["path"], "/files/a.bin");
    assert_eq!(j["query"], "?v=1&w=two");
    assert_eq!(j["bytes"], 1024 * 1024);
    assert_eq!(j["sha256"], digest.as_str());
    assert_eq!(j["headers"]["content-type"], "application/octet-stream");
    assert!(j["headers"]["x-petrel-invocation-id"].is_string());

    let resp = p.http("GET", "/fn/web/stream", None).await;
    assert_eq!(resp.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");

    // A streamed upload (no Content-Length) that outgrows the 6 MB limit: 413, not the function's
    // fault, and the connection delivers the answer.
    let answer = chunked_upload(&p.url, "/fn/web/upload", 7 * 1024 * 1024);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(500)]
    );
    assert!(answer.contains("payload_too_large"), "{answer}");
    let answer = chunked_upload(&p.url, "/fn/web/upload", 1024 * 1024);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"bytes\":1048576"),
        "{answer}"
    );

    let m = p
        .http("GET", "/fn/web/hang", None)
        .await
        .assert_error(504, "function_timeout");
    assert!(m.contains("1s"), "{m}");
    assert_eq!(p.http("GET", "/fn/web/", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_handlers_shape_the_http_answer() {
    let p = Petrel::start().await;
    p.deploy(echo_function("shaped-py", "python3", "").path());
    p.deploy(echo_function("shaped-js", "nodejs", "").path());
    let r = p.http("GET", "/fn/shaped-py/x?action=http", None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-from"), Some("python"));
    assert_eq!(r.headers.get_all("set-cookie").iter().count(), 2);
    assert_eq!(r.text(), "created");
    let r = p
        .http(
            "POST",
            "/fn/shaped-js?action=http",
            Some(("application/json", b"{}".to_vec())),
        )
        .await;
    assert_eq!(
        (r.status, r.header("x-from"), r.text().as_str()),
        (202, Some("node"), "accepted")
    );

    // A body the handler returns without statusCode is a 200 JSON answer; request bodies arrive.
    let r = p
        .http(
            "POST",
            "/fn/shaped-py/p",
            Some(("application/json", br#"{"k": [1, 2]}"#.to_vec())),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["event"]["body"], r#"{"k": [1, 2]}"#);
    let r = p
        .http(
            "POST",
            "/fn/shaped-py/p",
            Some(("application/octet-stream", vec![0, 255, 1])),
        )
        .await;
    let ev = &r.json()["event"];
    assert_eq!(
        (ev["isBase64Encoded"].as_bool(), ev["body"].as_str()),
        (Some(true), Some("AP8B"))
    );
}

/// Sends `size` bytes as a chunked upload over a plain TCP connection; returns the raw answer.
/// A chunked answer through Petrel on a keep-alive connection must not wait for the client's
/// delayed ACK: with Nagle's algorithm on Petrel's socket, the answer's last chunk sat ~40 ms
/// behind the first (23 requests/s). 20 requests take ~20 ms when healthy and ~900 ms with the
/// stall; the bound is 25x the healthy time, so load on the machine does not fail it.
#[tokio::test(flavor = "multi_thread")]
async fn chunked_answers_on_a_keep_alive_connection_do_not_stall() {
    use std::io::{BufRead, BufReader, Read, Write};
    let p = Petrel::start().await;
    p.deploy(echo_function("chunky", "http", "").path());
    let addr = p.url.trim_start_matches("http://").to_owned();
    let took = tokio::task::spawn_blocking(move || {
        let s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        // One write per request, as HTTP clients send them (several small writes would meet
        // Nagle's algorithm on this client's own socket).
        let request = format!(
            "GET /fn/chunky/chunked HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\r\n",
            crate::harness::owner_bearer()
        );
        let mut one = |r: &mut BufReader<std::net::TcpStream>| {
            w.write_all(request.as_bytes()).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with("HTTP/1.1 200"), "{line}");
            let mut chunked = false;
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
            }
            assert!(
                chunked,
                "the answer must be chunked for this test to mean anything"
            );
            let mut body = Vec::new();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(body, b"chunked hello\n");
        };
        one(&mut r); // the cold start
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            one(&mut r);
        }
        t0.elapsed()
    })
    .await
    .unwrap();
    assert!(
        took < std::time::Duration::from_millis(500),
        "20 chunked answers on one connection took {took:?}"
    );
}

fn chunked_upload(url: &str, path: &str, size: usize) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", crate::harness::owner_bearer()).unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        let n = chunk.len().min(size - sent);
        if write!(s, "{n:x}\r\n")
            .and_then(|_| s.write_all(&chunk[..n]))
            .and_then(|_| s.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
        sent += n;
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_answer_over_the_payload_limit_is_refused_or_cut() {
    let p = Petrel::start().await;
    p.deploy(echo_function("big", "http", "").path());
    // Its length says it is too large: refused whole, the function's answer never starts.
    let r = p.http("GET", "/fn/big/big", None).await;
    let msg = r.assert_error(502, "response_too_large");
    assert!(msg.contains("limit"), "{msg}");
    // No length: streamed up to the limit, then the stream breaks, never a complete answer.
    let (status, mut body) = p.stream("GET", "/fn/big/bigstream", Vec::new()).await;
    assert_eq!(status, 200);
    let mut got = 0;
    let end = loop {
        match crate::harness::next_data(&mut body).await {
            Ok(Some(d)) => got += d.len(),
            other => break other,
        }
    };
    assert!(end.is_err(), "the stream must break, not end: {end:?}");
    assert!(got <= 6 * 1024 * 1024, "{got} bytes passed the 6 MiB limit");
    // The function keeps serving.
    assert_eq!(p.http("GET", "/fn/big/", None).await.status, 200);
}

/// grpcio, the gRPC implementation Python users install, for both the server (a function) and
/// the client.
const GRPCIO: &str = "grpcio==1.85.4";

/// A gRPC service as an `http` function: unary, server-streaming and client-streaming calls,
/// trailing metadata and an error status, none of it knowing Petrel is there.
const GRPC_SERVER: &str = r#"
import os, grpc
from concurrent import futures

def say(request, context):
    meta = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-echo-trailer", "seen " + meta.get("x-caller", "?")),))
    return b"hello " + request

def count(request, context):
    for i in range(int(request)):
        yield str(i).encode()

def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

def join(requests, context):
    return b",".join(requests)

service = grpc.method_handlers_generic_handler("echo.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Join": grpc.stream_unary_rpc_method_handler(join),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((service,))
server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
print("serving gRPC", flush=True)
server.wait_for_termination()
"#;

/// The client: plain grpcio over HTTP/2 without TLS, every method under the function's prefix.
const GRPC_CLIENT: &str = r#"
import json, sys, grpc
target, prefix = sys.argv[1], sys.argv[2]
ch = grpc.insecure_channel(target)
out = {}
resp, call = ch.unary_unary(prefix + "/echo.Echo/Say").with_call(b"petrel", metadata=(("x-caller", "test"),), timeout=20)
out["say"] = resp.decode()
out["trailer"] = dict(call.trailing_metadata()).get("x-echo-trailer")
out["count"] = [m.decode() for m in ch.unary_stream(prefix + "/echo.Echo/Count")(b"5", timeout=20)]
try:
    ch.unary_unary(prefix + "/echo.Echo/Fail")(b"x", timeout=20)
    out["fail"] = None
except grpc.RpcError as e:
    out["fail"] = [e.code().name, e.details()]
out["join"] = ch.stream_unary(prefix + "/echo.Echo/Join")(iter([b"a", b"b", b"c"]), timeout=20).decode()
try:
    ch.unary_unary("/fn/no-such-fn/echo.Echo/Say")(b"x", timeout=20)
    out["unknown"] = None
except grpc.RpcError as e:
    out["unknown"] = e.code().name
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_service_runs_unchanged_behind_its_function_over_h2c() {
    let grpcio = crate::lambda_clients::pip_target(GRPCIO);
    let d = tempfile::tempdir().unwrap();
    crate::lambda_clients::copy_tree(&grpcio, d.path());
    std::fs::write(d.path().join("server.py"), GRPC_SERVER).unwrap();
    std::fs::write(
        d.path().join("petrel.toml"),
        crate::harness::manifest(
            "greeter",
            "http",
            "python3 server.py",
            "http_protocol = \"h2c\"\ninvoke_auth = \"public\"\nconcurrency = 50\n",
        ),
    )
    .unwrap();
    let p = Petrel::start().await;
    p.deploy(d.path());

    let client = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(client.path(), GRPC_CLIENT).unwrap();
    let mut python = std::process::Command::new("python3");
    python
        .arg(client.path())
        .arg(p.url.trim_start_matches("http://"))
        .arg("/fn/greeter")
        .env("PYTHONPATH", &grpcio);
    let out = crate::lambda_clients::json_output(python).await;
    assert_eq!(out["say"], "hello petrel", "{out}");
    // Request metadata reached the server and trailing metadata came back (HTTP/2 trailers).
    assert_eq!(out["trailer"], "seen test", "{out}");
    assert_eq!(
        out["count"],
        serde_json::json!(["0", "1", "2", "3", "4"]),
        "{out}"
    );
    assert_eq!(
        out["fail"],
        serde_json::json!(["NOT_FOUND", "no such thing: x"]),
        "{out}"
    );
    assert_eq!(out["join"], "a,b,c", "{out}");
    // Petrel's own refusal is not a gRPC answer: the client sees it as one of its errors.
    assert_ne!(out["unknown"], serde_json::Value::Null, "{out}");
    p.wait_for_log("greeter", "serving gRPC", 1).await;
}
