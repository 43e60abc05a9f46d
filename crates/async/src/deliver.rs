//! Delivers outcomes (callback URLs, URL destinations) at least once: a delivery is a row written
//! with the outcome, claimed for a minute per try, retried with backoff until it gets a 2xx or
//! runs out of tries.

use crate::{backoff, AsyncConfig, AsyncQueue};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use petrel_core::now_ms;
use petrel_store::Delivery;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// A try that takes longer than this counts as failed.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery stays claimed (a try is much shorter).
const CLAIM: Duration = Duration::from_secs(60);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) async fn delivery_loop(
    queue: AsyncQueue,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
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

async fn post(client: &HttpClient, d: &Delivery) -> Result<(), String> {
    if d.url.starts_with("https://") {
        return Err("https URLs are not supported yet: use http:// (a TLS-terminating proxy on the receiving side, or a function destination)".into());
    }
    let mut req = http::Request::post(&d.url);
    for (k, v) in &d.headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(d.body.clone())))
        .map_err(|e| format!("the delivery request is invalid: {e}"))?;
    match tokio::time::timeout(TRY_TIMEOUT, client.request(req)).await {
        Err(_) => Err(format!("no answer within {}s", TRY_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("could not reach {}: {e}", d.url)),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("{} answered {}", d.url, resp.status())),
    }
}

async fn settle(queue: &AsyncQueue, d: &Delivery, result: Result<(), String>) {
    let config: &AsyncConfig = queue.config();
    let now = now_ms();
    let (status, next_at, error) = match result {
        Ok(()) => ("delivered", now, None),
        Err(e) if d.attempt >= config.delivery_attempts || d.url.starts_with("https://") => {
            tracing::warn!(invocation = %d.invocation, url = %d.url, attempts = d.attempt, error = %e, "async: gave up delivering an outcome");
            ("failed", now, Some(e))
        }
        Err(e) => {
            let delay = backoff(config, d.attempt).as_millis() as i64;
            ("pending", now + delay, Some(e))
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
