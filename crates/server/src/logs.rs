//! Function logs: a writer that batches captured lines into the store off the hot path and
//! fans them out to live followers, a retention sweeper, and the read/follow endpoint's stream.

use bytes::Bytes;
use petrel_core::api::{InvocationRecord, LogLine};
use petrel_store::{LogCursor, Store};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Live log lines with their store cursors, for `--follow`.
#[derive(Debug, Clone)]
pub struct LogHub {
    tx: broadcast::Sender<(LogCursor, LogLine)>,
}

impl LogHub {
    pub fn subscribe(&self) -> broadcast::Receiver<(LogCursor, LogLine)> {
        self.tx.subscribe()
    }
}

/// Starts the writer; it ends when every sender of `rx` is gone, after writing what was queued.
pub fn spawn_writer(
    store: Store,
    rx: mpsc::Receiver<LogLine>,
) -> (LogHub, tokio::task::JoinHandle<()>) {
    let (tx, _) = broadcast::channel(4096);
    let hub = LogHub { tx: tx.clone() };
    let task = spawn_batched(rx, move |batch: Vec<LogLine>| {
        let (store, tx) = (store.clone(), tx.clone());
        async move {
            match store.append_logs(&batch).await {
                Ok(ids) => {
                    for (id, line) in ids.into_iter().zip(batch) {
                        let _ = tx.send((id, line));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, lines = batch.len(), "could not store log lines; they are dropped")
                }
            }
        }
    });
    (hub, task)
}

/// Writes invocation records in batches; ends when the data plane is gone, after writing what
/// was queued.
pub fn spawn_record_writer(
    store: Store,
    rx: mpsc::Receiver<InvocationRecord>,
) -> tokio::task::JoinHandle<()> {
    spawn_batched(rx, move |batch: Vec<InvocationRecord>| {
        let store = store.clone();
        async move {
            if let Err(e) = store.append_invocations(&batch).await {
                tracing::warn!(error = %e, records = batch.len(), "could not store invocation records; they are dropped");
            }
        }
    })
}

/// How long a batch waits for company after its first item. Under load this turns one SQLite
/// transaction (and one hop to its worker thread) per invocation into one per few milliseconds;
/// a record or log line reaches the store at most this much later.
const LINGER: Duration = Duration::from_millis(5);

/// Takes what a channel holds, up to 512 items at a time, waiting up to [`LINGER`] after the
/// first, and hands each batch to `write`; ends when every sender is gone, after writing what
/// was queued.
fn spawn_batched<T, F, Fut>(mut rx: mpsc::Receiver<T>, write: F) -> tokio::task::JoinHandle<()>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < 512 {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(item)) => batch.push(item),
                    Ok(None) | Err(_) => break,
                }
            }
            write(batch).await;
        }
    })
}

/// Trims logs and invocation records to the retention bounds now and then.
pub fn spawn_retention(store: Store, max_lines: u32, max_age: Duration) {
    tokio::spawn(async move {
        loop {
            match store.trim_logs(max_lines, max_age.as_millis() as i64).await {
                Ok(n) if n > 0 => tracing::debug!(dropped = n, "log retention"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "log retention failed"),
            }
            if let Err(e) = store.trim_invocations(max_age.as_millis() as i64).await {
                tracing::warn!(error = %e, "invocation record retention failed");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
}

/// One NDJSON line.
pub fn ndjson(line: &LogLine) -> Bytes {
    let mut v = serde_json::to_vec(line).expect("a log line serialises");
    v.push(b'\n');
    Bytes::from(v)
}
