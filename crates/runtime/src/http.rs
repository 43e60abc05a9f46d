//! Instances that serve HTTP on `$PORT` (the Knative / Cloud Run / of-watchdog contract): Petrel
//! waits for the port to accept connections, then proxies requests to it as sent.

use crate::Body;
use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Headers that describe one hop, not the message; never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        h.remove(n);
    }
    h.remove("keep-alive");
}

/// Picks a free loopback port for an instance to listen on.
pub(crate) fn pick_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) struct Endpoint {
    pub(crate) port: u16,
    client: Client<HttpConnector, Body>,
}

impl Endpoint {
    pub(crate) fn new(port: u16) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self { port, client }
    }

    /// Whether the instance accepts connections yet.
    pub(crate) async fn accepts(&self) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
    }

    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        *req.uri_mut() = Uri::try_from(format!("http://127.0.0.1:{}{pq}", self.port))
            .expect("a loopback URI with a valid path is valid");
        strip_hop_by_hop(req.headers_mut());
        self.client.request(req).await
    }
}
