//! The wasm runtime's request path, measured in-process: a fresh instance of the hello example
//! per request (instantiate from the shared `ProxyPre`, run the handler, collect the answer), the
//! first request of a freshly deployed component (load the compiled artifact from the cache,
//! pre-instantiate, then the same request), and, as the baseline in the same run, the same
//! answer produced by native Rust behind the same `http` types.
//!
//!     cargo bench -p petrel-runtime --bench wasm
//!
//! The hello component is built from examples/hello-wasm when missing (needs the wasm32-wasip2
//! target).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::BodyExt;
use petrel_core::Manifest;
use petrel_runtime::logs::LogSink;
use petrel_runtime::wasm::{WasmEngine, WasmInstance};
use petrel_runtime::{Body, HttpInstance, InstanceSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn hello_component() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target/wasm-guests");
    let wasm = target.join("wasm32-wasip2/release/hello-wasm.wasm");
    if !wasm.is_file() {
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                ])
                .arg(root.join("examples/hello-wasm/Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .expect("cargo runs");
        assert!(status.success(), "building the hello component failed");
    }
    wasm
}

fn request() -> http::Request<Body> {
    http::Request::get("http://bench/hello?name=bench")
        .header("host", "bench")
        .body(Body::empty())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    // One thread: the request and the guest's task run where they were started, as on one of
    // the server's workers, without the cross-thread wake-ups of a bench thread handing work to
    // a pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("hello.wasm");
    std::fs::copy(hello_component(), &component).unwrap();
    let engine = Arc::new(WasmEngine::new(dir.path().join("cache")).unwrap());
    engine.prepare(&component).unwrap();
    let spec_with = |extra: &str| {
        InstanceSpec {
        namespace: "default".into(),
        function: "hello".into(),
        version: 1,
        spec: Arc::new(
            Manifest::from_toml(&format!(
                "name = \"hello\"\nruntime = \"wasm\"\nhandler = \"hello.wasm\"\nmemory_mb = 64\n{extra}[env]\nGREETING = \"Hello\"\n",
            ))
            .unwrap()
            .validate()
            .unwrap(),
        ),
        code_dir: dir.path().to_owned(),
    }
    };
    let spec = spec_with("");
    let (sink, mut rx) = LogSink::new(1 << 16);
    rt.spawn(async move { while rx.recv().await.is_some() {} });
    let start =
        || WasmInstance::start(engine.clone(), spec.clone(), None, sink.clone(), Vec::new());
    let warm = rt.block_on(start()).unwrap();
    let timeout = Duration::from_secs(5);

    let mut g = c.benchmark_group("wasm-request");
    g.bench_function("native-baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let req = request();
            let name = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("name="))
                .unwrap_or("world");
            let body = format!(
                "{{\"message\":\"Hello, {name}!\",\"path\":\"{}\"}}",
                req.uri().path()
            );
            let resp = http::Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        })
    });
    g.bench_function("fresh-instance-per-request", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = warm.handle("bench", request(), timeout).await.unwrap();
            let bytes: Bytes = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(bytes.starts_with(b"{\"message\":\"Hello, bench!\""));
            bytes
        })
    });
    let reused = rt
        .block_on(WasmInstance::start(
            engine.clone(),
            spec_with("instance_reuse = 1000000\n"),
            None,
            sink.clone(),
            Vec::new(),
        ))
        .unwrap();
    g.bench_function("instance-reused", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = reused.handle("bench", request(), timeout).await.unwrap();
            let bytes: Bytes = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(bytes.starts_with(b"{\"message\":\"Hello, bench!\""));
            bytes
        })
    });
    drop((warm, reused));
    g.bench_function("first-request-after-deploy", |b| {
        b.to_async(&rt).iter(|| async {
            // Nothing holds the component between iterations: each loads it from the cache.
            let f = start().await.unwrap();
            let resp = f.handle("bench", request(), timeout).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
