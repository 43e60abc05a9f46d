//! A Petrel function as a WebAssembly component of the `wasi:http/proxy` world. The same
//! component runs on `wasmtime serve` and Spin.
//!
//! Build: cargo build --release --target wasm32-wasip2 && cp target/wasm32-wasip2/release/hello-wasm.wasm hello.wasm
//! Deploy: petrel deploy .

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let query = request.uri().query().unwrap_or("").to_owned();
    let mut name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .map(str::to_owned);
    if name.is_none() {
        // `petrel invoke hello-wasm --data '{"name": "Ada"}'` POSTs the JSON to /.
        let body = request.body_mut().str_contents().await.unwrap_or("").to_owned();
        name = body
            .split("\"name\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .map(str::to_owned);
    }
    let name: String = name
        .unwrap_or_else(|| "world".into())
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .collect();
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    println!("greeting {name}");
    let body = format!(
        "{{\"message\":\"{greeting}, {name}!\",\"path\":\"{}\"}}",
        request.uri().path()
    );
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(body.into())?)
}
