//! Outbound HTTP from guests: denied unless `allowed_outbound_hosts` names the destination
//! (see `petrel_core::outbound`). Allowed requests go out over HTTP/1.1, `https://` ones over
//! TLS verified against the server's trusted CAs (refused when the server gave none).

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
    tls: Option<tokio_rustls::TlsConnector>,
}

impl OutboundPolicy {
    pub fn new(
        allowed: Arc<Vec<HostPattern>>,
        log: Option<(LogSink, LogSource, String)>,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> Self {
        Self { allowed, log, tls }
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
        let tls = self.tls.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("http").to_owned();
            let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_owned();
            let port = uri
                .port_u16()
                .or_else(|| default_port(&scheme))
                .ok_or(Error::HttpRequestUriInvalid)?;
            // Says in the function's log why a request went nowhere.
            let tell = |what: String| {
                if let Some((sink, source, id)) = &log {
                    sink.emit(source.line("platform", Some(id.clone()), what));
                }
            };
            if !allowed.iter().any(|p| p.allows(&scheme, &host, port)) {
                tell(format!("outbound request to {scheme}://{host}:{port} denied: it is not in allowed_outbound_hosts"));
                return Err(Error::HttpRequestDenied);
            }
            let tls = match (scheme.as_str(), tls) {
                ("http", _) => None,
                ("https", Some(tls)) => Some(tls),
                _ => {
                    // Never send in the clear what was meant for TLS.
                    tell(format!(
                        "outbound request to {scheme}://{host}:{port} refused: this server has no TLS for guests"
                    ));
                    return Err(Error::TlsProtocolError);
                }
            };
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
            let mut sender = match tls {
                None => handshake(stream).await?,
                Some(tls) => {
                    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|_| Error::HttpRequestUriInvalid)?;
                    let stream = tokio::time::timeout(connect_timeout, tls.connect(name, stream))
                        .await
                        .map_err(|_| Error::ConnectionTimeout)?
                        .map_err(|e| {
                            tell(format!(
                                "outbound request to {scheme}://{host}:{port} failed its TLS handshake: {e}"
                            ));
                            Error::Tls(e)
                        })?;
                    handshake(stream).await?
                }
            };
            *request.uri_mut() = http::Uri::builder()
                .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .build()
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let request = request.map(detach_body);
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

/// An HTTP/1.1 connection over `io`, driven by a task of its own.
async fn handshake<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<WasiBody>, Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(Error::Hyper)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The guest's request body, handed to hyper through a channel, so that the guest can always
/// finish writing it. A server may answer at the request's head and close the connection (an
/// HTTP/1.0 server answering a GET does); hyper then drops the body, and the guest's next write,
/// or its `finish`, would fail with its stream closed although the answer arrived. Once hyper
/// has let go, the rest of the body is read and dropped: it has nowhere to go. The guest's own
/// deadline bounds how long that lasts.
fn detach_body(body: WasiBody) -> WasiBody {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        return body;
    }
    let exact = body.size_hint().exact();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut body = body;
        let mut to_hyper = Some(tx);
        while let Some(frame) = body.frame().await {
            if let Some(tx) = &to_hyper {
                if tx.send(frame).await.is_err() {
                    to_hyper = None;
                }
            }
        }
    });
    ChannelBody { rx, exact }.boxed_unsync()
}

/// The receiving end of [`detach_body`]'s channel, keeping the body's exact length (so a
/// `content-length` request stays one).
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<http_body::Frame<bytes::Bytes>, Error>>,
    exact: Option<u64>,
}

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.exact {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => http_body::SizeHint::default(),
        }
    }
}
