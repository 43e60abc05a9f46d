//! The dispatcher: claims ready work per function within its async concurrency, runs each attempt
//! through the [`Invoker`], and records what comes next (success, a retry, the dead-letter list),
//! with the outcome's deliveries in the same transaction.

use crate::{attempt, backoff, deliver, AsyncQueue, Attempt, Invoker, Verdict};
use petrel_core::api::AsyncStatus;
use petrel_core::manifest::{AsyncSpec, Destination};
use petrel_core::now_ms;
use petrel_store::{Ended, Finish, LeasedAsync, NewAsync, NewDelivery};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

type Key = (String, String);

/// The running dispatcher; stopping it stops claiming work (claimed work keeps its claim, and a
/// restart of the same server takes it back).
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    running: Arc<Mutex<HashMap<Key, u32>>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

struct Ctx {
    queue: AsyncQueue,
    invoker: Arc<dyn Invoker>,
    running: Arc<Mutex<HashMap<Key, u32>>>,
    deliveries: Arc<tokio::sync::Notify>,
    stop: watch::Receiver<bool>,
    finisher: tokio::sync::mpsc::Sender<Finishing>,
}

/// An outcome to record, and where to answer: whether the claim held, or the error with the
/// outcome handed back to try again.
type Finishing = (
    Ended,
    tokio::sync::oneshot::Sender<Result<bool, (String, Ended)>>,
);

/// Outcomes recorded per transaction, at most.
const FINISH_GROUP: usize = 256;

/// Records outcomes in groups, as the queue's writer commits submissions: one transaction per
/// group while the next one gathers.
async fn finish_groups(queue: AsyncQueue, mut rx: tokio::sync::mpsc::Receiver<Finishing>) {
    let owner = queue.config().worker_id.clone();
    let mut group: Vec<Finishing> = Vec::with_capacity(FINISH_GROUP);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < FINISH_GROUP {
            match rx.try_recv() {
                Ok(f) => group.push(f),
                Err(_) => break,
            }
        }
        let (ended, replies): (Vec<Ended>, Vec<_>) = group.drain(..).unzip();
        match queue.store().finish_async(&owner, &ended).await {
            Ok(held) => {
                for (reply, h) in replies.into_iter().zip(held) {
                    let _ = reply.send(Ok(h));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for (reply, back) in replies.into_iter().zip(ended) {
                    let _ = reply.send(Err((e.clone(), back)));
                }
            }
        }
    }
}

impl Dispatcher {
    /// Takes back what this server was running when it last stopped, then starts the loops.
    pub async fn start(
        queue: AsyncQueue,
        invoker: Arc<dyn Invoker>,
    ) -> Result<Self, petrel_store::StoreError> {
        let me = queue.config().worker_id.clone();
        let resumed = queue.store().requeue_async(Some(&me), now_ms()).await?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "async: queued again the invocations this server was running when it stopped"
            );
        }
        // On PostgreSQL, every server hears of every submission at its commit.
        match queue.store().async_wakes().await {
            Ok(Some(mut wakes)) => {
                let q = queue.clone();
                tokio::spawn(async move {
                    while let Some((ns, f)) = wakes.recv().await {
                        q.wake_for(&ns, &f);
                    }
                });
                tracing::info!("async: listening for the queue's notifications (PostgreSQL)");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "async: could not listen for the queue's notifications; other servers' work is found by polling")
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let running: Arc<Mutex<HashMap<Key, u32>>> = Arc::default();
        let (finisher, finishing) = tokio::sync::mpsc::channel(16 * 1024);
        tokio::spawn(finish_groups(queue.clone(), finishing));
        let ctx = Arc::new(Ctx {
            finisher,
            queue: queue.clone(),
            invoker,
            running: running.clone(),
            deliveries: Arc::new(tokio::sync::Notify::new()),
            stop: stop_rx.clone(),
        });
        tokio::spawn(dispatch_loop(ctx.clone(), stop_rx.clone()));
        tokio::spawn(heartbeat_loop(
            queue.clone(),
            ctx.invoker.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(deliver::delivery_loop(
            queue.clone(),
            ctx.deliveries.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(retention_loop(queue, stop_rx));
        Ok(Self { stop, running })
    }

    /// Async invocations running on this server now.
    pub fn running(&self) -> u32 {
        self.running.lock().unwrap().values().sum()
    }

    /// Stops claiming work. Attempts already running go on; see [`Dispatcher::drain`].
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits up to `grace` for the running attempts to end and their outcomes to be recorded;
    /// returns how many are still running (they keep their claims).
    pub async fn drain(&self, grace: Duration) -> u32 {
        let deadline = Instant::now() + grace;
        loop {
            let left = self.running();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn dispatch_loop(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let config = ctx.queue.config().clone();
    let store = ctx.queue.store().clone();
    let me = config.worker_id.clone();
    let mut last_sweep: Option<Instant> = None;
    let mut tick = tokio::time::interval(config.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A wake names the functions that got work; the tick looks at every function's (retries
        // coming due, other servers' submissions), so no wake is ever needed for correctness.
        let ticked = tokio::select! {
            _ = ctx.queue.waker().notify.notified() => false,
            _ = tick.tick() => true,
            _ = stop.changed() => false,
        };
        if *stop.borrow() {
            return;
        }
        let named = ctx.queue.waker().take();
        let now = now_ms();
        // Claims of servers that stopped answering lapse; their work runs again here.
        if last_sweep.is_none_or(|t| t.elapsed() > config.lease / 3) {
            last_sweep = Some(Instant::now());
            match store.requeue_async(None, now).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    requeued = n,
                    "async: queued again the invocations of a server whose claims lapsed"
                ),
                Err(e) => tracing::warn!(error = %e, "async: could not look for lapsed claims"),
            }
        }
        let ready = if ticked {
            match store.ready_async(now).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "async: could not read the queue; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        } else {
            named.into_iter().map(|(ns, f)| (ns, f, u64::MAX)).collect()
        };
        for (ns, f, waiting) in ready {
            // Work of a function this server does not serve is left to a server that does,
            // unless no such function exists (a destination naming a function never deployed).
            let Some(spec) = ctx.invoker.settings(&ns, &f) else {
                if ticked {
                    fail_if_missing(&store, &ns, &f, now).await;
                }
                continue;
            };
            let key = (ns, f);
            let busy = ctx.running.lock().unwrap().get(&key).copied().unwrap_or(0);
            let free = spec.concurrency.saturating_sub(busy);
            if free == 0 {
                continue;
            }
            let want = free.min(waiting.min(u32::MAX as u64) as u32);
            let until = now + config.lease.as_millis() as i64;
            let jobs = match store
                .lease_async(&me, (&key.0, &key.1), want, now, until)
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(error = %e, function = %key.1, "async: could not claim work");
                    continue;
                }
            };
            if jobs.is_empty() {
                continue;
            }
            *ctx.running.lock().unwrap().entry(key.clone()).or_default() += jobs.len() as u32;
            for job in jobs {
                let (ctx, spec, key) = (ctx.clone(), spec.clone(), key.clone());
                tokio::spawn(async move {
                    run_one(&ctx, job, spec).await;
                    if let Some(n) = ctx.running.lock().unwrap().get_mut(&key) {
                        *n = n.saturating_sub(1);
                    }
                    ctx.queue.wake_for(&key.0, &key.1);
                });
            }
        }
    }
}

/// Ends the queued invocations of a function that does not exist in the store as `failed`.
async fn fail_if_missing(store: &petrel_store::Store, namespace: &str, function: &str, now: i64) {
    match store.get_function(namespace, function).await {
        Ok(None) => {
            let error = format!(
                "function {function} does not exist in namespace {namespace}: deploy it and submit again"
            );
            match store.fail_queued(namespace, function, &error, now).await {
                Ok(n) if n > 0 => tracing::warn!(
                    function,
                    failed = n,
                    "async: queued invocations of a function that does not exist ended failed"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "async: could not end invocations of a missing function")
                }
            }
        }
        Ok(Some(_)) => {}
        Err(e) => tracing::warn!(error = %e, "async: could not look a function up"),
    }
}

async fn heartbeat_loop(
    queue: AsyncQueue,
    invoker: Arc<dyn Invoker>,
    mut stop: watch::Receiver<bool>,
) {
    let config = queue.config().clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.lease / 3) => {}
            _ = stop.changed() => return,
        }
        let now = now_ms();
        let until = now + config.lease.as_millis() as i64;
        if let Err(e) = queue
            .store()
            .renew_async_leases(&config.worker_id, until)
            .await
        {
            tracing::warn!(error = %e, "async: could not renew this server's claims");
        }
        // Invocations cancelled through another server: stop their attempts here. (Cancelled
        // through this one, they were stopped at once.) Looking back a whole lease covers a
        // missed beat; stopping twice finds nothing the second time.
        match queue
            .store()
            .cancelled_claims(&config.worker_id, now - config.lease.as_millis() as i64)
            .await
        {
            Ok(ids) => {
                for id in ids {
                    if invoker.stop(&id) {
                        tracing::info!(%id, "async: stopped the attempt of a cancelled invocation");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "async: could not look for cancelled invocations"),
        }
    }
}

async fn retention_loop(queue: AsyncQueue, mut stop: watch::Receiver<bool>) {
    let config = queue.config().clone();
    // Often enough that nothing outlives its retention by more than a quarter of it.
    let every = (config.retention.min(config.dead_retention) / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match queue
            .store()
            .trim_async(
                now_ms(),
                config.retention.as_millis() as i64,
                config.dead_retention.as_millis() as i64,
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(dropped = n, "async: dropped invocations past retention"),
            Err(e) => tracing::warn!(error = %e, "async: retention skipped"),
        }
    }
}

/// Runs one claimed attempt and records what comes next.
async fn run_one(ctx: &Ctx, job: LeasedAsync, latest: AsyncSpec) {
    let config = ctx.queue.config();
    let started = now_ms();
    let age = started - job.created_at;
    let (attempt, spec) = if age > latest.max_event_age_ms as i64 {
        let error = format!(
            "waited {}s, longer than max_event_age ({}s), before it could run",
            age / 1000,
            latest.max_event_age_ms / 1000
        );
        let a = Attempt {
            verdict: Verdict::Retry,
            executed_version: None,
            result: None,
            error: Some(error),
        };
        (
            a,
            AsyncSpec {
                max_retries: 0,
                ..latest
            },
        )
    } else {
        let (a, spec) = attempt::run(ctx.invoker.as_ref(), job.clone()).await;
        (a, spec.unwrap_or(latest))
    };
    if attempt.verdict == Verdict::Retry && *ctx.stop.borrow() {
        // Cut short by this server's stop: not the function's failure. The claim stays, and
        // this server takes the work back when it starts again.
        tracing::info!(id = %job.id, "async: an attempt was cut short by the stop; it runs again after the restart");
        return;
    }
    let now = now_ms();
    let (status, run_at, condition) = match attempt.verdict {
        Verdict::Succeeded => (AsyncStatus::Succeeded, now, Some(Condition::Success)),
        Verdict::Fail => (AsyncStatus::Failed, now, Some(Condition::Failure)),
        Verdict::Retry if job.attempt > spec.max_retries => {
            (AsyncStatus::Dead, now, Some(Condition::RetriesExhausted))
        }
        Verdict::Retry => {
            let delay = backoff(config, job.attempt).as_millis() as i64;
            if now + delay - job.created_at > spec.max_event_age_ms as i64 {
                (AsyncStatus::Dead, now, Some(Condition::EventAgeExceeded))
            } else {
                (AsyncStatus::Queued, now + delay, None)
            }
        }
    };
    let error = match (condition, &attempt.error) {
        (Some(Condition::RetriesExhausted), Some(e)) => Some(format!(
            "failed {} times (max_retries = {}); the last error: {e}",
            job.attempt, spec.max_retries
        )),
        (Some(Condition::EventAgeExceeded), Some(e)) => Some(format!(
            "too old for another retry (max_event_age = {}s); the last error: {e}",
            spec.max_event_age_ms / 1000
        )),
        _ => attempt.error.clone(),
    };
    let mut finish = Finish {
        status,
        run_at,
        executed_version: attempt.executed_version,
        result: attempt.result.clone(),
        error: error.clone(),
        deliveries: Vec::new(),
        follow_ups: Vec::new(),
    };
    if let Some(condition) = condition {
        outcome_deliveries(&mut finish, &job, &spec, &attempt, condition, now);
    }
    // The claim guards the write: if it lapsed (this server was thought dead) and another server
    // took the work, this outcome is dropped and theirs stands.
    // What to wake once it is recorded (the outcome itself goes to the recorder).
    let delivers = !finish.deliveries.is_empty();
    let follow_ups: Vec<(String, String)> = finish
        .follow_ups
        .iter()
        .map(|n| (n.namespace.clone(), n.function.clone()))
        .collect();
    let mut ended = Ended {
        id: job.id.clone(),
        attempt: job.attempt,
        now,
        finish,
    };
    for wait in [0u64, 100, 1000, 5000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (reply, answer) = tokio::sync::oneshot::channel();
        if ctx.finisher.send((ended, reply)).await.is_err() {
            return;
        }
        let Ok(answer) = answer.await else {
            tracing::error!(id = %job.id, "async: the outcome recorder stopped; the invocation runs again when its claim lapses");
            return;
        };
        match answer {
            Ok(true) => {
                if status != AsyncStatus::Queued {
                    ctx.invoker.finished(&job.namespace, &job.function, status);
                }
                if status == AsyncStatus::Queued {
                    // Run the retry when it is due, not at the next poll.
                    let (queue, delay) = (ctx.queue.clone(), (run_at - now).max(0) as u64);
                    let (ns, f) = (job.namespace.clone(), job.function.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        queue.wake_for(&ns, &f);
                    });
                }
                if delivers {
                    ctx.deliveries.notify_one();
                }
                for (ns, f) in &follow_ups {
                    ctx.queue.wake_for(ns, f);
                }
                return;
            }
            Ok(false) => {
                tracing::warn!(id = %job.id, "async: the invocation was cancelled, or this server's claim lapsed, before it ended; its outcome is dropped");
                return;
            }
            Err((e, back)) => {
                tracing::warn!(id = %job.id, error = %e, "async: could not record an outcome; trying again");
                ended = back;
            }
        }
    }
    tracing::error!(id = %job.id, "async: the outcome could not be recorded; the invocation runs again when its claim lapses");
}

/// Why an invocation ended, in Lambda's destination records (`requestContext.condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Success,
    Failure,
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    fn as_str(self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::Failure => "Failure",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// The callback and the destination of a final outcome.
fn outcome_deliveries(
    finish: &mut Finish,
    job: &LeasedAsync,
    spec: &AsyncSpec,
    attempt: &Attempt,
    condition: Condition,
    now: i64,
) {
    let status = finish.status;
    if let Some(url) = &job.callback_url {
        // The callback gets the function's answer as it is (OpenFaaS's X-Callback-Url), with
        // the invocation's id and status in headers.
        let (code, mut headers, body) = match &attempt.result {
            Some((c, h, b)) => (*c, h.clone(), b.clone()),
            None => (
                0,
                vec![("content-type".into(), "application/json".into())],
                serde_json::to_vec(&serde_json::json!({
                    "error": {"message": finish.error.clone().unwrap_or_default()}
                }))
                .expect("json"),
            ),
        };
        headers.extend([
            ("x-petrel-invocation-id".to_owned(), job.id.clone()),
            ("x-petrel-function".to_owned(), job.function.clone()),
            ("x-petrel-status".to_owned(), status.as_str().to_owned()),
            ("x-petrel-attempts".to_owned(), job.attempt.to_string()),
        ]);
        if code != 0 {
            headers.push(("x-petrel-function-status".to_owned(), code.to_string()));
        }
        finish.deliveries.push(NewDelivery {
            url: url.clone(),
            headers,
            body,
        });
    }
    let destination = if status == AsyncStatus::Succeeded {
        &spec.on_success
    } else {
        &spec.on_failure
    };
    let Some(destination) = destination else {
        return;
    };
    let record = destination_record(job, attempt, finish, condition, now);
    let body = serde_json::to_vec(&record).expect("json");
    match destination {
        Destination::Url(url) => finish.deliveries.push(NewDelivery {
            url: url.clone(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-petrel-invocation-id".into(), job.id.clone()),
            ],
            body,
        }),
        Destination::Function(name) => finish.follow_ups.push(NewAsync::event(
            uuid::Uuid::now_v7().to_string(),
            &job.namespace,
            name,
            body,
            now,
        )),
    }
}

/// JSON of a body when it is JSON, else its text (or nothing).
fn payload(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| match std::str::from_utf8(body) {
        Ok("") | Err(_) => serde_json::Value::Null,
        Ok(s) => serde_json::Value::String(s.to_owned()),
    })
}

/// Lambda's destination record, so code written for Lambda destinations reads it unchanged.
fn destination_record(
    job: &LeasedAsync,
    attempt: &Attempt,
    finish: &Finish,
    condition: Condition,
    now: i64,
) -> serde_json::Value {
    let qualifier = attempt
        .executed_version
        .map(|v| v.to_string())
        .unwrap_or_else(|| "$LATEST".into());
    let (status_code, response) = match &attempt.result {
        Some((c, _, b)) => (Some(*c), payload(b)),
        None => (None, serde_json::Value::Null),
    };
    let function_error = attempt
        .result
        .as_ref()
        .filter(|_| finish.status != AsyncStatus::Succeeded)
        .map(|_| "Unhandled");
    let ts = std::time::UNIX_EPOCH + Duration::from_millis(now as u64);
    serde_json::json!({
        "version": "1.0",
        "timestamp": humantime::format_rfc3339_millis(ts).to_string(),
        "requestContext": {
            "requestId": job.id,
            "functionArn": petrel_core::arn::function(&job.function, Some(&qualifier)),
            "condition": condition.as_str(),
            "approximateInvokeCount": job.attempt,
        },
        "requestPayload": payload(&job.body),
        "responseContext": {
            "statusCode": status_code,
            "executedVersion": qualifier,
            "functionError": function_error,
        },
        "responsePayload": response,
        "petrel": {
            "namespace": job.namespace,
            "function": job.function,
            "status": finish.status,
            "error": finish.error,
        },
    })
}

/// The dispatcher on a real SQLite store, behind a data plane whose answers each test scripts.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::AsyncConfig;
    use bytes::Bytes;
    use petrel_core::{ApiError, BoxFuture, ErrorCode, FunctionRef, Manifest};
    use petrel_dataplane::{Answer, DeployedVersion, Failure, Invocation, Outcome, Payload};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Answers each attempt by its event's `do`: `ok` (a value), `raise` (a function error),
    /// `503` (an HTTP answer of 503), `gone` (the function is not there), `flaky` (raises
    /// twice, then answers).
    struct Scripted {
        version: Arc<DeployedVersion>,
        calls: AtomicU32,
        flaky: AtomicU32,
        finished: Mutex<Vec<AsyncStatus>>,
    }

    impl Scripted {
        fn new(manifest: &str) -> Arc<Self> {
            let spec = Manifest::from_toml(&format!(
                "name = \"f\"\nruntime = \"python3\"\nhandler = \"app.handler\"\n{manifest}"
            ))
            .unwrap()
            .validate()
            .unwrap();
            Arc::new(Self {
                version: Arc::new(DeployedVersion {
                    namespace: "default".into(),
                    name: "f".into(),
                    version: 3,
                    digest: "d".into(),
                    spec: Arc::new(spec),
                    code_dir: "/nonexistent".into(),
                }),
                calls: AtomicU32::new(0),
                flaky: AtomicU32::new(0),
                finished: Mutex::default(),
            })
        }
    }

    impl Invoker for Scripted {
        fn settings(&self, _: &str, _: &str) -> Option<AsyncSpec> {
            Some(self.version.spec.asynchronous.clone())
        }

        fn resolve<'a>(
            &'a self,
            _: &'a FunctionRef,
        ) -> BoxFuture<'a, Result<Arc<DeployedVersion>, ApiError>> {
            Box::pin(async { Ok(self.version.clone()) })
        }

        fn invoke<'a>(
            &'a self,
            _: &'a FunctionRef,
            inv: Invocation,
        ) -> BoxFuture<'a, Result<Answer, Failure>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let Payload::Event { body, .. } = inv.payload else {
                panic!("an event was queued")
            };
            assert!(inv.attempt.is_some(), "an attempt carries its record");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let outcome = match v["do"].as_str().unwrap() {
                "ok" => Ok(Outcome::Returned(Bytes::from_static(b"\"done\""))),
                "raise" => Ok(Outcome::FunctionError {
                    error_type: "Boom".into(),
                    body: Bytes::from_static(b"{\"errorType\": \"Boom\"}"),
                }),
                "503" => {
                    let mut r = http::Response::new(petrel_runtime::Body::from("busy"));
                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    Ok(Outcome::Http(r))
                }
                "flaky" if self.flaky.fetch_add(1, Ordering::SeqCst) < 2 => {
                    Ok(Outcome::FunctionError {
                        error_type: "Flaky".into(),
                        body: Bytes::new(),
                    })
                }
                "flaky" => Ok(Outcome::Returned(Bytes::from_static(b"1"))),
                "gone" => Err(Failure {
                    error: ApiError::new(ErrorCode::FunctionNotFound, "no function named f"),
                    version: None,
                }),
                other => panic!("{other}"),
            };
            Box::pin(async move {
                outcome.map(|outcome| Answer {
                    version: 3,
                    outcome,
                })
            })
        }

        fn payload_limit(&self) -> usize {
            1 << 20
        }

        fn finished(&self, _: &str, _: &str, status: AsyncStatus) {
            self.finished.lock().unwrap().push(status);
        }
    }

    async fn dispatcher(invoker: Arc<Scripted>) -> (AsyncQueue, Dispatcher, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = petrel_store::Store::open_sqlite(&dir.path().join("p.db"))
            .await
            .unwrap();
        let queue = AsyncQueue::new(
            store,
            AsyncConfig {
                retry_base: Duration::from_millis(10),
                retry_cap: Duration::from_millis(20),
                poll: Duration::from_millis(50),
                ..AsyncConfig::default()
            },
        );
        let d = Dispatcher::start(queue.clone(), invoker).await.unwrap();
        (queue, d, dir)
    }

    async fn submit(queue: &AsyncQueue, id: &str, event: &str) {
        let now = now_ms();
        queue
            .submit(NewAsync {
                id: id.into(),
                namespace: "default".into(),
                function: "f".into(),
                version: None,
                kind: petrel_core::api::AsyncKind::Event,
                method: "POST".into(),
                path: String::new(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: event.as_bytes().to_vec(),
                created_at: now,
                run_at: now,
                callback_url: None,
                idem_key: None,
            })
            .await
            .unwrap();
    }

    /// Waits until invocation `id` is in one of the statuses that end it.
    async fn ended(queue: &AsyncQueue, id: &str) -> petrel_core::api::AsyncInvocation {
        let t0 = Instant::now();
        loop {
            let a = queue.store().get_async(id).await.unwrap().unwrap();
            if matches!(
                a.status,
                AsyncStatus::Succeeded | AsyncStatus::Failed | AsyncStatus::Dead
            ) {
                return a;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{id} is still {}",
                a.status
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_answer_succeeds_once_with_its_result_and_version_kept() {
        let invoker = Scripted::new("");
        let (queue, _d, _dir) = dispatcher(invoker.clone()).await;
        submit(&queue, "a", r#"{"do": "ok"}"#).await;
        let a = ended(&queue, "a").await;
        assert_eq!(a.status, AsyncStatus::Succeeded);
        assert_eq!((a.attempts, a.executed_version), (1, Some(3)));
        let r = a.result.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "\"done\""));
        assert_eq!(invoker.calls.load(Ordering::SeqCst), 1);
        assert_eq!(*invoker.finished.lock().unwrap(), [AsyncStatus::Succeeded]);
    }

    #[tokio::test]
    async fn a_function_error_and_a_5xx_are_retried_until_max_retries_then_dead() {
        let invoker = Scripted::new("max_retries = 2\n");
        let (queue, _d, _dir) = dispatcher(invoker.clone()).await;
        submit(&queue, "raise", r#"{"do": "raise"}"#).await;
        submit(&queue, "busy", r#"{"do": "503"}"#).await;
        let a = ended(&queue, "raise").await;
        assert_eq!((a.status, a.attempts), (AsyncStatus::Dead, 3));
        let e = a.error.unwrap();
        assert!(
            e.contains("failed 3 times") && e.contains("the function failed (Boom)"),
            "{e}"
        );
        // The function's error document is its answer, kept with the header saying so.
        let r = a.result.unwrap();
        assert_eq!(r.status, 500);
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "x-petrel-function-error" && v == "Boom"));
        let b = ended(&queue, "busy").await;
        assert_eq!((b.status, b.attempts), (AsyncStatus::Dead, 3));
        assert!(b.error.unwrap().contains("answered 503"));
        assert_eq!(invoker.calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_ends_succeeded() {
        let invoker = Scripted::new("max_retries = 3\n");
        let (queue, _d, _dir) = dispatcher(invoker.clone()).await;
        submit(&queue, "f", r#"{"do": "flaky"}"#).await;
        let a = ended(&queue, "f").await;
        assert_eq!((a.status, a.attempts), (AsyncStatus::Succeeded, 3));
        assert_eq!(a.error, None);
    }

    #[tokio::test]
    async fn a_refusal_that_running_again_cannot_mend_fails_at_once() {
        let invoker = Scripted::new("max_retries = 5\n");
        let (queue, _d, _dir) = dispatcher(invoker.clone()).await;
        submit(&queue, "g", r#"{"do": "gone"}"#).await;
        let a = ended(&queue, "g").await;
        assert_eq!((a.status, a.attempts), (AsyncStatus::Failed, 1));
        assert!(a.error.unwrap().starts_with("function_not_found: "));
        assert_eq!(invoker.calls.load(Ordering::SeqCst), 1);
    }
}
