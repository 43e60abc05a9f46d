//! Outbound HTTP from guests: denied unless `allowed_outbound_hosts` names the destination
//! (see `petrel_core::outbound`). Allowed requests go out over plain HTTP/1.1; HTTPS is refused
//! until TLS is built in.

use crate::logs::{LogSink, LogSource};
use petrel_core::outbound::{default_port, HostPattern};
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The hooks of one request's store: the outbound policy and the sender.
pub struct OutboundPolicy {
    allowed: Arc<Vec<HostPattern>>,
    /// Says in the function's log what was denied (the guest's own error may be less clear).
    log: Option<(LogSink, LogSource, String)>,
}

impl OutboundPolicy {
    pub fn new(allowed: Arc<Vec<HostPattern>>, log: Option<(LogSink, LogSource, String)>) -> Self {
        Self { allowed, log }
    }
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let allowed = self.allowed.clone();
        let log = self.log.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("http").to_owned();
            let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_owned();
            let port = uri
                .port_u16()
                .or_else(|| default_port(&scheme))
                .ok_or(Error::HttpRequestUriInvalid)?;
            if !allowed.iter().any(|p| p.allows(&scheme, &host, port)) {
                if let Some((sink, source, id)) = log {
                    sink.emit(source.line(
                        "platform",
                        Some(id),
                        format!("outbound request to {scheme}://{host}:{port} denied: it is not in allowed_outbound_hosts"),
                    ));
                }
                return Err(Error::HttpRequestDenied);
            }
            if scheme != "http" {
                // Outbound TLS is not built in yet; refuse clearly rather than send in the clear.
                return Err(Error::TlsProtocolError);
            }
            let connect_timeout = options
                .and_then(|o| o.connect_timeout)
                .unwrap_or(Duration::from_secs(30));
            let first_byte_timeout = options
                .and_then(|o| o.first_byte_timeout)
                .unwrap_or(Duration::from_secs(600));
            let stream = tokio::time::timeout(
                connect_timeout,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Connect)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(Error::Hyper)?;
            tokio::spawn(conn);
            *request.uri_mut() = http::Uri::builder()
                .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .build()
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let resp = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(Error::Hyper)?;
            let resp = resp.map(|b| b.map_err(Error::Hyper).boxed_unsync());
            Ok((
                resp,
                Box::new(async { Ok(()) }) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}
