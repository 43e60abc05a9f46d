//! Petrel's async mode: submissions are committed to the store before their `202` (many per
//! transaction, so that durable accepts are cheap), a dispatcher claims ready work and runs it
//! through the same pools as synchronous calls under a per-function concurrency limit, retries
//! failures with exponential backoff and jitter, moves exhausted work to the dead-letter list, and
//! delivers outcomes (callback URLs, destinations) at least once.
//!
//! It knows nothing of pools or instances: an attempt is an invocation of the data plane's core
//! ([`petrel_dataplane::DataPlane::invoke`], behind [`Invoker`]), and its verdict comes from the
//! core's outcome directly (`attempt.rs`). Every state change is a row update guarded by the
//! claim, so a server killed at any moment leaves nothing that a restart (or, on a shared
//! PostgreSQL, another server) does not resume.

#![forbid(unsafe_code)]

mod attempt;
mod deliver;
mod dispatch;
mod submit;

pub use deliver::{client as http_client, post_json, tls_client_config, HttpClient};
pub use dispatch::Dispatcher;
pub use submit::submit;

use petrel_core::api::AsyncStatus;
use petrel_core::manifest::AsyncSpec;
use petrel_core::{ApiError, BoxFuture, FunctionRef};
use petrel_dataplane::{Answer, DataPlane, DeployedVersion, Failure, Invocation};
use petrel_store::{NewAsync, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// How the async mode behaves on this server.
#[derive(Debug, Clone)]
pub struct AsyncConfig {
    /// This server's name in claims. Stable across restarts (kept in the data directory), so a
    /// restarted server takes back at once what it was running when it died.
    pub worker_id: String,
    /// How long a claim holds without a heartbeat; then another server may take the work.
    pub lease: Duration,
    /// How often the dispatcher looks for work it was not told about (retries coming due, other
    /// servers' submissions).
    pub poll: Duration,
    /// The first retry's delay; each later one doubles, up to `retry_cap`, with jitter.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long an idempotency key keeps deduplicating.
    pub idempotency_window: Duration,
    /// How long results of finished invocations are kept.
    pub retention: Duration,
    /// How long dead-lettered invocations are kept.
    pub dead_retention: Duration,
    /// Attempts to deliver one outcome before giving up.
    pub delivery_attempts: u32,
    /// TLS for `https://` deliveries; `None`: the system's trust store alone.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        Self {
            worker_id: uuid::Uuid::new_v4().to_string(),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(300),
            idempotency_window: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            dead_retention: Duration::from_secs(14 * 24 * 3600),
            delivery_attempts: 10,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the async queue could not store the request: {0}")]
    Store(#[from] petrel_store::StoreError),
    #[error("the async queue is stopped")]
    Stopped,
}

type Pending = (NewAsync, oneshot::Sender<Result<(), String>>);

/// The accept side: commits submissions (in groups) and wakes the dispatcher.
#[derive(Clone)]
pub struct AsyncQueue {
    store: Store,
    tx: mpsc::Sender<Pending>,
    wake: Arc<Wake>,
    config: Arc<AsyncConfig>,
}

/// What the dispatcher is told: functions that may have ready work. (Its poll looks at every
/// function's work.)
#[derive(Default)]
pub(crate) struct Wake {
    notify: Notify,
    due: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl Wake {
    fn function(&self, namespace: &str, function: &str) {
        self.due
            .lock()
            .unwrap()
            .insert((namespace.to_owned(), function.to_owned()));
        self.notify.notify_one();
    }

    /// The functions named since the last call.
    pub(crate) fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.due.lock().unwrap())
            .into_iter()
            .collect()
    }
}

impl std::fmt::Debug for AsyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueue")
            .field("worker_id", &self.config.worker_id)
            .finish_non_exhaustive()
    }
}

/// Submissions written per transaction, at most.
const GROUP: usize = 512;

impl AsyncQueue {
    /// Starts the group-commit writer.
    pub fn new(store: Store, config: AsyncConfig) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        let wake = Arc::new(Wake::default());
        tokio::spawn(write_groups(store.clone(), rx, wake.clone()));
        Self {
            store,
            tx,
            wake,
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &AsyncConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Commits a submission; returns its id, or with an idempotency key that matched an earlier
    /// submission, that one's id and `true`. Only an `Ok` may be answered with a `202`.
    pub async fn submit(&self, n: NewAsync) -> Result<(String, bool), QueueError> {
        if n.idem_key.is_some() {
            let window = self.config.idempotency_window.as_millis() as i64;
            let r = self.store.insert_async_once(&n, window).await?;
            self.wake.function(&n.namespace, &n.function);
            return Ok(r);
        }
        let id = n.id.clone();
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send((n, done_tx))
            .await
            .map_err(|_| QueueError::Stopped)?;
        match done_rx.await {
            Ok(Ok(())) => Ok((id, false)),
            Ok(Err(e)) => Err(QueueError::Store(petrel_store::StoreError::Corrupt(e))),
            Err(_) => Err(QueueError::Stopped),
        }
    }

    /// Wakes the dispatcher for one function: it may have ready work (a replay, a freed slot,
    /// a retry coming due).
    pub fn wake_for(&self, namespace: &str, function: &str) {
        self.wake.function(namespace, function);
    }

    pub(crate) fn waker(&self) -> &Wake {
        &self.wake
    }
}

/// Writes what is waiting in one transaction, answers each submitter, and wakes the dispatcher.
/// While one group commits the next one gathers, so the commit rate bounds groups, not requests.
async fn write_groups(store: Store, mut rx: mpsc::Receiver<Pending>, wake: Arc<Wake>) {
    let mut group: Vec<Pending> = Vec::with_capacity(GROUP);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let (rows, replies): (Vec<NewAsync>, Vec<_>) = group.drain(..).unzip();
        let result = store.insert_async(&rows).await.map_err(|e| e.to_string());
        match &result {
            Ok(()) => {
                for n in &rows {
                    wake.function(&n.namespace, &n.function);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, submissions = rows.len(), "could not store async submissions; they were refused")
            }
        }
        for done in replies {
            let _ = done.send(result.clone());
        }
    }
}

/// How an attempt ended, as the dispatcher decides what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// The function failed (an error, a timeout, a crash, out of memory) or Petrel could not run
    /// it now: retry while retries and age allow.
    Retry,
    /// It cannot succeed by running again (the function is gone, the input is refused).
    Fail,
}

impl Verdict {
    /// Its name in `petrel_async_attempts`' `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Succeeded => "succeeded",
            Verdict::Retry => "retry",
            Verdict::Fail => "fail",
        }
    }
}

/// One attempt's outcome.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub verdict: Verdict,
    pub executed_version: Option<u32>,
    /// The answer, when there was one: a function error's body is an answer too.
    pub result: Option<petrel_store::StoredResult>,
    pub error: Option<String>,
}

/// What the dispatcher needs of the data plane; [`DataPlane`] is the one in a server, a fake in
/// the dispatcher's tests.
pub trait Invoker: Send + Sync + 'static {
    /// The async settings of the function's latest version on this server, if it serves it.
    fn settings(&self, namespace: &str, function: &str) -> Option<AsyncSpec>;
    /// The version an attempt of `target` runs (its async settings govern the attempt).
    fn resolve<'a>(
        &'a self,
        target: &'a FunctionRef,
    ) -> BoxFuture<'a, Result<Arc<DeployedVersion>, ApiError>>;
    /// Runs one attempt through the invocation core.
    fn invoke<'a>(
        &'a self,
        target: &'a FunctionRef,
        inv: Invocation,
    ) -> BoxFuture<'a, Result<Answer, Failure>>;
    /// The largest answer an attempt keeps, in bytes.
    fn payload_limit(&self) -> usize;
    /// An attempt of version `v` ended with `verdict`: for metrics.
    fn attempted(&self, _v: &DeployedVersion, _verdict: Verdict) {}
    /// An invocation ended (`succeeded`, `failed` or `dead`): for metrics.
    fn finished(&self, _namespace: &str, _function: &str, _status: AsyncStatus) {}
    /// Stops the attempt of invocation `id` running on this server, if it can (it was
    /// cancelled): whether it did.
    fn stop(&self, _id: &str) -> bool {
        false
    }
}

impl Invoker for DataPlane {
    fn settings(&self, namespace: &str, function: &str) -> Option<AsyncSpec> {
        self.async_settings(namespace, function)
    }

    fn resolve<'a>(
        &'a self,
        target: &'a FunctionRef,
    ) -> BoxFuture<'a, Result<Arc<DeployedVersion>, ApiError>> {
        Box::pin(self.version_of(target))
    }

    fn invoke<'a>(
        &'a self,
        target: &'a FunctionRef,
        inv: Invocation,
    ) -> BoxFuture<'a, Result<Answer, Failure>> {
        Box::pin(DataPlane::invoke(self, target, inv))
    }

    fn payload_limit(&self) -> usize {
        DataPlane::payload_limit(self)
    }

    fn attempted(&self, v: &DeployedVersion, verdict: Verdict) {
        self.metrics()
            .async_attempt(&v.namespace, &v.spec, verdict.as_str());
    }

    fn finished(&self, namespace: &str, function: &str, status: AsyncStatus) {
        self.metrics().async_finished(namespace, function, status);
    }

    fn stop(&self, id: &str) -> bool {
        self.stop_invocation(id, "its async invocation was cancelled")
    }
}

/// The delay before retry number `attempt` (1 for the first retry): `base × 2^(attempt-1)`,
/// capped, of which the second half is random ("equal jitter"), so retries of a burst spread out.
pub fn backoff(config: &AsyncConfig, attempt: u32) -> Duration {
    let exp = config
        .retry_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(config.retry_cap);
    let half = exp / 2;
    let r = (uuid::Uuid::new_v4().as_u128() as u64) % (half.as_millis() as u64 + 1);
    half + Duration::from_millis(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_core::api::AsyncKind;

    fn submission(id: &str, key: Option<&str>) -> NewAsync {
        NewAsync {
            id: id.into(),
            namespace: "default".into(),
            function: "f".into(),
            version: None,
            kind: AsyncKind::Event,
            method: "POST".into(),
            path: String::new(),
            headers: vec![],
            body: b"{}".to_vec(),
            created_at: 1,
            run_at: 1,
            callback_url: None,
            idem_key: key.map(str::to_owned),
        }
    }

    /// Concurrent submissions share transactions, and each answer comes after its own commit:
    /// every accepted id is in the store when its submit returns.
    #[tokio::test]
    async fn submissions_commit_in_groups_each_answered_after_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        let queue = AsyncQueue::new(store.clone(), AsyncConfig::default());
        let subs: Vec<_> = (0..300)
            .map(|i| {
                let q = queue.clone();
                tokio::spawn(async move {
                    let (id, duplicate) =
                        q.submit(submission(&format!("s{i}"), None)).await.unwrap();
                    assert!(!duplicate);
                    assert!(
                        q.store().get_async(&id).await.unwrap().is_some(),
                        "{id} answered before its commit"
                    );
                    id
                })
            })
            .collect();
        for s in subs {
            s.await.unwrap();
        }
        assert_eq!(
            store.ready_async(1).await.unwrap(),
            vec![("default".into(), "f".into(), 300)]
        );
    }

    #[tokio::test]
    async fn an_idempotency_key_gives_the_first_submissions_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("p.db")).await.unwrap();
        let queue = AsyncQueue::new(store.clone(), AsyncConfig::default());
        let first = queue.submit(submission("one", Some("k"))).await.unwrap();
        let again = queue.submit(submission("two", Some("k"))).await.unwrap();
        assert_eq!(first, ("one".to_owned(), false));
        assert_eq!(again, ("one".to_owned(), true));
        assert!(
            store.get_async("two").await.unwrap().is_none(),
            "nothing queued twice"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let c = AsyncConfig {
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(10),
            ..AsyncConfig::default()
        };
        for _ in 0..200 {
            let d1 = backoff(&c, 1);
            assert!(
                d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1),
                "{d1:?}"
            );
            let d3 = backoff(&c, 3);
            assert!(
                d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4),
                "{d3:?}"
            );
            let d9 = backoff(&c, 9);
            assert!(
                d9 >= Duration::from_secs(5) && d9 <= Duration::from_secs(10),
                "{d9:?}"
            );
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(&c, 4)).collect();
        assert!(spread.len() > 10, "the jitter spreads retries: {spread:?}");
    }
}
