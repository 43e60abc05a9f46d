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
    mut rx: mpsc::Receiver<LogLine>,
) -> (LogHub, tokio::task::JoinHandle<()>) {
    let (tx, _) = broadcast::channel(4096);
    let hub = LogHub { tx: tx.clone() };
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(512);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(l) => batch.push(l),
                    Err(_) => break,
                }
            }
            match store.append_logs(&batch).await {
                Ok(ids) => {
                    for (id, line) in ids.into_iter().zip(batch.drain(..)) {
                        let _ = tx.send((id, line));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, lines = batch.len(), "could not store log lines; they are dropped");
                    batch.clear();
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
    mut rx: mpsc::Receiver<InvocationRecord>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(512);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if let Err(e) = store.append_invocations(&batch).await {
                tracing::warn!(error = %e, records = batch.len(), "could not store invocation records; they are dropped");
            }
            batch.clear();
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
