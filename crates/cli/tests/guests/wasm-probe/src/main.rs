//! A component that misbehaves on request, to test the wasm runtime's limits.

use std::sync::atomic::{AtomicU64, Ordering};
use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

/// Counts requests this instance has served: with a fresh instance per request, always 1.
static SERVED: AtomicU64 = AtomicU64::new(0);

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn text(status: StatusCode, body: String) -> Result<Response<Body>, Error> {
    Ok(Response::builder().status(status).body(body.into())?)
}

/// Sends `req` and answers "{done} STATUS BODY", or 502 "{failed}: ERROR".
async fn send(req: Request<Body>, done: &str, failed: &str) -> Result<Response<Body>, Error> {
    match Client::new().send(req).await {
        Ok(mut resp) => {
            let status = resp.status();
            let body = resp.body_mut().str_contents().await.unwrap_or("").to_owned();
            text(StatusCode::OK, format!("{done} {} {body}", status.as_u16()))
        }
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("{failed}: {e:?}")),
    }
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    let query = request.uri().query().unwrap_or("").to_owned();
    println!("probe {} {}", request.method(), request.uri().path());
    eprintln!("probe stderr line");
    match request.uri().path() {
        "/served" => text(StatusCode::OK, served.to_string()),
        "/env" => {
            let key = param(&query, "key").unwrap_or("GREETING");
            text(StatusCode::OK, std::env::var(key).unwrap_or_default())
        }
        "/echo" => {
            let body = request.body_mut().contents().await?.to_vec();
            Ok(Response::new(body.into()))
        }
        "/trap" => panic!("probe panicked on purpose"),
        "/loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "/grow" => {
            let mb: usize = param(&query, "mb").and_then(|v| v.parse().ok()).unwrap_or(512);
            let mut v: Vec<u8> = Vec::new();
            v.resize(mb * 1024 * 1024, 1);
            text(StatusCode::OK, format!("allocated {}", v.iter().map(|b| *b as usize).sum::<usize>()))
        }
        "/fetch" => {
            let url = param(&query, "url").unwrap_or("http://127.0.0.1:9/");
            send(Request::get(url).body(Body::empty())?, "fetched", "fetch refused").await
        }
        "/upload" => {
            // A body sent in pieces, 100 ms apart: the server may answer (and close) before the
            // last piece, and the guest must still be able to finish its request.
            let url = param(&query, "url").unwrap_or("http://127.0.0.1:9/");
            let pieces: u32 = param(&query, "pieces").and_then(|v| v.parse().ok()).unwrap_or(3);
            let body = futures_lite::stream::unfold(0u32, move |i| async move {
                if i == pieces {
                    return None;
                }
                wstd::task::sleep(std::time::Duration::from_millis(100).into()).await;
                Some((format!("piece {i}\n").into_bytes(), i + 1))
            });
            let req = Request::post(url).body(Body::from_stream(body))?;
            send(req, "uploaded", "upload failed").await
        }
        _ => text(StatusCode::OK, format!("probe ok {}", request.uri().path())),
    }
}
