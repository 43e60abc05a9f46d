//! Delivers outcomes (callback URLs, URL destinations) at least once: a delivery is a row written
//! with the outcome, claimed for a minute per try, retried with backoff until it gets a 2xx or
//! runs out of tries.

use crate::{backoff, AsyncConfig, AsyncQueue};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use petrel_core::api::DeliveryState;
use petrel_core::now_ms;
use petrel_store::Delivery;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// A try that takes longer than this counts as failed.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery stays claimed (a try is much shorter).
const CLAIM: Duration = Duration::from_secs(60);

/// The outbound HTTP(S) client deliveries use.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// TLS for outbound HTTPS: the system's trust store (`SSL_CERT_FILE` or `SSL_CERT_DIR` name
/// other certificates instead), plus the PEM certificates of `extra_ca` (an internal CA). Fails
/// only on an `extra_ca` that cannot be read; without any trusted certificate at all, https
/// deliveries fail with an unknown issuer, and the server says so at start.
pub fn tls_client_config(
    extra_ca: Option<&std::path::Path>,
) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer},
    };
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "could not read a trusted certificate of the system");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (system, _) = roots.add_parsable_certificates(found.certs);
    let mut extra = 0;
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("could not read certificates from {}: {e}", path.display()))?;
        for c in certs {
            roots.add(c).map_err(|e| {
                format!(
                    "{} holds a certificate that cannot be trusted: {e}",
                    path.display()
                )
            })?;
            extra += 1;
        }
        if extra == 0 {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
    }
    if roots.is_empty() {
        tracing::warn!("no trusted CA certificates (install ca-certificates, set SSL_CERT_FILE, or tls_ca_file): https callbacks and destinations will fail");
    } else {
        tracing::info!(system, extra, "trusted CA certificates for outbound https");
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The client outcomes are POSTed with, over `http://` or `https://`.
pub fn client(tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>) -> HttpClient {
    let tls = match tls {
        Some(t) => (*t).clone(),
        None => tls_client_config(None).expect("no extra certificates to read"),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

pub(crate) async fn delivery_loop(
    queue: AsyncQueue,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let client = client(queue.config().tls.clone());
    let slots = Arc::new(Semaphore::new(16));
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        let now = now_ms();
        let due = match queue
            .store()
            .lease_deliveries(now, 64, now + CLAIM.as_millis() as i64)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "async: could not read pending deliveries");
                continue;
            }
        };
        for d in due {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (client, queue) = (client.clone(), queue.clone());
            tokio::spawn(async move {
                let result = post(&client, &d).await;
                settle(&queue, &d, result).await;
                drop(permit);
            });
        }
    }
}

/// POSTs a JSON document to `url` once, for callers that retry themselves (the triggers'
/// `on_failure` URLs): `Ok` on a 2xx answer within the try timeout.
pub async fn post_json(client: &HttpClient, url: &str, body: Bytes) -> Result<(), String> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| format!("the request to {url} is invalid: {e}"))?;
    match tokio::time::timeout(TRY_TIMEOUT, client.request(req)).await {
        Err(_) => Err(format!(
            "{url}: no answer within {}s",
            TRY_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("could not reach {url}: {}", causes(&e))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("{url} answered {}", resp.status())),
    }
}

async fn post(client: &HttpClient, d: &Delivery) -> Result<(), String> {
    let mut req = http::Request::post(&d.url);
    for (k, v) in &d.headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(d.body.clone())))
        .map_err(|e| format!("the delivery request is invalid: {e}"))?;
    match tokio::time::timeout(TRY_TIMEOUT, client.request(req)).await {
        Err(_) => Err(format!("no answer within {}s", TRY_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("could not reach {}: {}", d.url, causes(&e))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("{} answered {}", d.url, resp.status())),
    }
}

async fn settle(queue: &AsyncQueue, d: &Delivery, result: Result<(), String>) {
    let config: &AsyncConfig = queue.config();
    let now = now_ms();
    let (status, next_at, error) = match result {
        Ok(()) => (DeliveryState::Delivered, now, None),
        Err(e) if d.attempt >= config.delivery_attempts => {
            tracing::warn!(invocation = %d.invocation, url = %d.url, attempts = d.attempt, error = %e, "async: gave up delivering an outcome");
            (DeliveryState::Failed, now, Some(e))
        }
        Err(e) => {
            let delay = backoff(config, d.attempt).as_millis() as i64;
            (DeliveryState::Pending, now + delay, Some(e))
        }
    };
    if let Err(e) = queue
        .store()
        .settle_delivery(d.id, status, next_at, error.as_deref())
        .await
    {
        // The claim lapses and the delivery is tried again: at least once.
        tracing::warn!(error = %e, "async: could not record a delivery");
    }
}

/// An error with its causes: hyper's own text ("client error (Connect)") hides what failed, such
/// as the certificate the server showed.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
