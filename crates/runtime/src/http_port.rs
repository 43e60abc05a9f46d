//! The HTTP protocol of process instances that serve HTTP on `$PORT` (the Knative / Cloud Run /
//! of-watchdog contract): Petrel waits for the port to accept connections, then proxies
//! requests to it as sent.

use crate::Body;
use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use petrel_core::manifest::HttpProtocol;
use petrel_sandbox::NetNs;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

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

/// Removes the headers that describe one hop (and those `Connection` names).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
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
    net: Option<Arc<NetNs>>,
    client: Client<Connector, Body>,
    protocol: HttpProtocol,
}

/// Connects to the instance's port: on the host's loopback, or on the loopback of the
/// instance's own network namespace (a socket made in it).
#[derive(Clone)]
pub(crate) struct Connector {
    net: Option<Arc<NetNs>>,
    plain: HttpConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let net = self.net.clone();
        let mut plain = self.plain.clone();
        Box::pin(async move {
            match net {
                Some(net) => {
                    let port = uri.port_u16().unwrap_or(80);
                    let s = connect_in(&net, port).await?;
                    Ok(TokioIo::new(s))
                }
                None => plain.call(uri).await.map_err(std::io::Error::other),
            }
        })
    }
}

async fn connect_in(net: &NetNs, port: u16) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(net.tcp_socket()?));
    let s = s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

impl Endpoint {
    pub(crate) fn new(port: u16, net: Option<Arc<NetNs>>, protocol: HttpProtocol) -> Self {
        let mut plain = HttpConnector::new();
        plain.set_nodelay(true);
        let connector = Connector {
            net: net.clone(),
            plain,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(60));
        if protocol == HttpProtocol::H2c {
            // One connection carries every request as a stream of its own.
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        Self {
            port,
            net,
            client,
            protocol,
        }
    }

    /// What to check when a connection to the server fails: the protocol may not be its own.
    pub(crate) fn failure_hint(&self) -> &'static str {
        match self.protocol {
            HttpProtocol::Http1 => "; a server that speaks HTTP/2 only, such as a gRPC server, needs http_protocol = \"h2c\" in its manifest",
            HttpProtocol::H2c => "; with http_protocol = \"h2c\" the server must speak HTTP/2 without TLS (prior knowledge)",
        }
    }

    /// Whether the instance accepts connections yet.
    pub(crate) async fn accepts(&self) -> bool {
        match &self.net {
            Some(net) => connect_in(net, self.port).await.is_ok(),
            None => TcpStream::connect(("127.0.0.1", self.port)).await.is_ok(),
        }
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
        // A request that came over HTTP/2 names its host in the URI only.
        let authority = req.uri().authority().cloned();
        *req.uri_mut() = Uri::try_from(format!("http://127.0.0.1:{}{pq}", self.port))
            .expect("a loopback URI with a valid path is valid");
        // `TE: trailers` is the one TE value HTTP/2 keeps: gRPC servers ask for it.
        let trailers = req.headers().get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        strip_hop_by_hop(req.headers_mut());
        match self.protocol {
            HttpProtocol::Http1 => {
                *req.version_mut() = http::Version::HTTP_11;
                if let (false, Some(a)) = (req.headers().contains_key(header::HOST), authority) {
                    if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                }
            }
            HttpProtocol::H2c => {
                *req.version_mut() = http::Version::HTTP_2;
                // The authority travels as :authority; a Host header beside it is not allowed.
                req.headers_mut().remove(header::HOST);
                if trailers {
                    req.headers_mut()
                        .insert(header::TE, http::HeaderValue::from_static("trailers"));
                }
            }
        }
        self.client.request(req).await
    }
}
