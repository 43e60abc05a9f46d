//! TLS on the listener: rustls with a certificate chain and key from PEM files, HTTP/2 and
//! HTTP/1.1 by ALPN, and the files read again when they change (checked every two seconds) or
//! on SIGHUP, so a renewed certificate takes effect without a restart. A reload that fails
//! (a half-written file, a key that does not match) keeps the certificate in use and logs why.

use anyhow::Context;
use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;

/// The certificate and key files, and the configuration made of them.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<ServerConfig>, Option<SystemTime>)>,
}

fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

/// A server configuration of the chain in `cert` and the key in `key`.
fn load(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("could not read certificates from {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no PEM certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("could not read a private key from {}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the certificate and the private key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl TlsFiles {
    pub(crate) fn open(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let config = load(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new((Arc::new(config), modified(cert, key))),
        }))
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap().0.clone()
    }

    /// Reads the files again when `force` or when they changed.
    fn reload(&self, force: bool) {
        let stamp = modified(&self.cert, &self.key);
        if !force && stamp == self.current.read().unwrap().1 {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(config) => {
                *self.current.write().unwrap() = (Arc::new(config), stamp);
                tracing::info!(cert = %self.cert.display(), "TLS certificate loaded again");
            }
            Err(e) => {
                // Remember the stamp, so a broken file is reported once, not every tick.
                self.current.write().unwrap().1 = stamp;
                tracing::error!(error = %format!("{e:#}"), "could not load the TLS certificate again; the previous one stays in use");
            }
        }
    }

    /// Watches the files and SIGHUP for as long as the server runs.
    pub(crate) fn spawn_reloader(self: &Arc<Self>) {
        let files = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).ok();
            loop {
                let forced = tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => false,
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                files.reload(forced);
            }
        });
    }
}

/// Serves `router` over TLS on `listener` until `stop` is true; then stops accepting and waits
/// for open connections to finish their requests.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    files: Arc<TlsFiles>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(files.config());
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A client that never finishes its handshake does not hold a task for ever.
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    async move {
                        use tower_service::Service;
                        router.call(req.map(axum::body::Body::new)).await
                    }
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
