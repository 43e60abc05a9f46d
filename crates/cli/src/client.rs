//! A small HTTP client for Petrel's API, with Petrel's errors turned into readable messages.

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use petrel_core::error::{ErrorBody, ERROR_HEADER};

/// An error the server reported with the contract's body.
#[derive(Debug)]
pub struct ServerError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ServerError {}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The API key sent as `Authorization: Bearer` on every request.
    token: Option<String>,
}

impl Client {
    /// A client of `server` (`http://` or `https://`); an https server's certificate is
    /// checked against the system's roots and the PEM file in `PETREL_CA_FILE`, if set.
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let ca = std::env::var_os("PETREL_CA_FILE").map(std::path::PathBuf::from);
        Self::with_ca(server, ca.as_deref())
    }

    /// Like [`Client::new`], trusting the certificates in `ca` besides the system's.
    pub fn with_ca(server: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(anyhow!(
                "server URL {server:?} must start with http:// or https:// (for example http://127.0.0.1:8080)"
            ));
        }
        base.parse::<http::Uri>()
            .with_context(|| format!("server URL {server:?} is not a valid URL"))?;
        let connector = if base.starts_with("https://") {
            let tls =
                petrel_async::tls_client_config(ca).map_err(|e| anyhow!("PETREL_CA_FILE: {e}"))?;
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .build()
        } else {
            // Plain http: no roots to read; https URLs are never asked of this client.
            use tokio_rustls::rustls;
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS: {e}"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            HttpsConnector::from((http, tls))
        };
        Ok(Self {
            base,
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
            token: None,
        })
    }

    /// The client, sending `token` as its API key.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; a connection failure says how to fix it.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<Response<Incoming>> {
        let (headers, body) = match body {
            Some((ct, bytes)) => (
                vec![(http::header::CONTENT_TYPE.as_str(), ct.to_owned())],
                bytes,
            ),
            None => (Vec::new(), Bytes::new()),
        };
        self.send_with(method, path, &headers, body).await
    }

    /// Sends a request with headers of its own.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        if let Some(t) = &self.token {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
        }
        let req = b
            .body(Full::new(body))
            .context("could not build the request")?;
        self.inner.request(req).await.map_err(|e| {
            anyhow!(
                "cannot reach Petrel at {} ({e}); is `petrel serve` running? Point to it with --server or PETREL_SERVER",
                self.base
            )
        })
    }

    /// Sends a request with headers and reads the whole answer, whatever its status.
    pub async fn fetch_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> anyhow::Result<(http::response::Parts, Bytes)> {
        read_whole(self.send_with(method, path, headers, body).await?).await
    }

    /// Sends a request and reads the whole answer, whatever its status.
    pub async fn fetch(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<(http::response::Parts, Bytes)> {
        read_whole(self.send(method, path, body).await?).await
    }

    /// Sends a request and fails with the server's own message on a Petrel error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<(http::response::Parts, Bytes)> {
        let (parts, bytes) = self.fetch(method, path, body).await?;
        if !parts.status.is_success() {
            return Err(server_error(&parts, &bytes).into());
        }
        Ok((parts, bytes))
    }

    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<T> {
        let (_, bytes) = self.call(method, path, None).await?;
        serde_json::from_slice(&bytes).context("the server answered with unexpected JSON")
    }
}

/// An answer's head and whole body.
async fn read_whole(resp: Response<Incoming>) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .context("the answer was cut off")?
        .to_bytes();
    Ok((parts, bytes))
}

/// Reads a Petrel error answer (or describes a non-Petrel one).
pub fn server_error(parts: &http::response::Parts, body: &[u8]) -> ServerError {
    if parts.headers.contains_key(ERROR_HEADER) {
        if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
            return ServerError {
                status: parts.status,
                code: e.error.code,
                message: e.error.message,
            };
        }
    }
    ServerError {
        status: parts.status,
        code: format!("http_{}", parts.status.as_u16()),
        message: format!(
            "the server answered {}: {}",
            parts.status,
            String::from_utf8_lossy(&body[..body.len().min(500)])
        ),
    }
}
