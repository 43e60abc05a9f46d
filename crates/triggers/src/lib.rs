//! Event triggers: consumers of Kafka topics, JetStream streams and cron schedules that run in
//! Petrel, apart from the function's instances, and invoke the function through the invocation
//! core ([`petrel_dataplane::DataPlane::invoke`]).
//!
//! [`Triggers`] keeps one consumer per deployed trigger: it reconciles the triggers of every
//! function's latest version (from the store, so deploys on other servers are seen too) with
//! what runs, starting new ones, keeping unchanged ones across redeploys, restarting changed
//! ones and stopping removed or paused ones. A consumer that cannot reach its broker shows as
//! failing and retries with backoff; it never blocks a deploy or the server.
//!
//! Delivery is at least once: a position (Kafka offset, JetStream ack) is committed only after
//! the batch's invocation succeeded or its records went to `on_failure`.

#![forbid(unsafe_code)]

mod amqp;
pub mod batch;
mod cron;
pub mod events;
mod failure;
mod invoke;
mod kafka;
mod lanes;
mod mqtt;
mod mysql;
mod nats;
mod postgres;
mod s3;
pub use s3::NotifyError;
mod redis;

use petrel_async::{AsyncQueue, HttpClient};
use petrel_core::api::{TriggerList, TriggerStatus};
use petrel_core::trigger::{TriggerSource, TriggerSpec};
use petrel_dataplane::metrics::TriggerLabels;
use petrel_dataplane::DataPlane;
use petrel_store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How the triggers run.
#[derive(Debug, Clone)]
pub struct TriggersConfig {
    /// How often the store is read for deploys, removals and pauses made elsewhere.
    pub reconcile_every: Duration,
    /// The first pause before a failed batch is retried (doubling, at most 30 s).
    pub retry_base: Duration,
    /// The first pause before a consumer that lost its broker connects again.
    pub reconnect_base: Duration,
    /// This server's name, which names its member of Redis consumer groups (so a restart reads
    /// again what it had not acknowledged).
    pub worker_id: String,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        Self {
            reconcile_every: Duration::from_secs(5),
            retry_base: Duration::from_secs(1),
            reconnect_base: Duration::from_secs(1),
            worker_id: "petrel".to_owned(),
        }
    }
}

/// What every consumer uses.
pub(crate) struct Deps {
    pub store: Store,
    pub dp: DataPlane,
    pub queue: AsyncQueue,
    pub http: HttpClient,
    pub config: TriggersConfig,
    /// Where the webhook route hands s3 notifications to the trigger running here.
    pub webhooks: Mutex<HashMap<Key, tokio::sync::mpsc::Sender<s3::Intake>>>,
}

/// A trigger's key: namespace, function, trigger name.
type Key = (String, String, String);

/// One trigger as it runs on this server.
pub(crate) struct TriggerRun {
    pub namespace: String,
    pub function: String,
    pub spec: TriggerSpec,
    pub labels: TriggerLabels,
    pub status: Status,
    pub deps: Arc<Deps>,
    /// Counts not yet written to the store, the last error, and when they last were.
    counts: Mutex<(
        petrel_store::TriggerCounts,
        Option<String>,
        Option<std::time::Instant>,
    )>,
}

impl TriggerRun {
    /// The label of its invocations' records: `kafka:orders`.
    pub fn label(&self) -> petrel_core::api::TriggerLabel {
        let kind = match self.spec.source.kind() {
            petrel_core::trigger::TriggerKind::Kafka => petrel_core::api::Trigger::Kafka,
            petrel_core::trigger::TriggerKind::Nats => petrel_core::api::Trigger::Nats,
            petrel_core::trigger::TriggerKind::Redis => petrel_core::api::Trigger::Redis,
            petrel_core::trigger::TriggerKind::Amqp => petrel_core::api::Trigger::Amqp,
            petrel_core::trigger::TriggerKind::Mqtt => petrel_core::api::Trigger::Mqtt,
            petrel_core::trigger::TriggerKind::Postgres => petrel_core::api::Trigger::Postgres,
            petrel_core::trigger::TriggerKind::Mysql => petrel_core::api::Trigger::Mysql,
            petrel_core::trigger::TriggerKind::S3 => petrel_core::api::Trigger::S3,
            petrel_core::trigger::TriggerKind::Cron => petrel_core::api::Trigger::Cron,
        };
        petrel_core::api::TriggerLabel::named(kind, &self.spec.name)
    }

    /// Batches this trigger may invoke at once: the function's `async_concurrency`, its share
    /// of the pool beside synchronous calls.
    pub fn slots(&self) -> Arc<tokio::sync::Semaphore> {
        let n = self
            .deps
            .dp
            .async_settings(&self.namespace, &self.function)
            .map_or(1, |a| a.concurrency.max(1));
        Arc::new(tokio::sync::Semaphore::new(n as usize))
    }

    /// The consumer group or durable name.
    pub fn group(&self, given: Option<&String>) -> String {
        given.cloned().unwrap_or_else(|| {
            petrel_core::trigger::default_group(&self.namespace, &self.function, &self.spec.name)
        })
    }

    /// Adds a settled batch's counts (and the last error, if any); they reach the store at
    /// most once a second (at once with an error), so a busy trigger does not write per batch.
    pub async fn count(&self, counts: petrel_store::TriggerCounts, error: Option<&str>) {
        let due = {
            let mut c = self.counts.lock().unwrap();
            c.0.delivered += counts.delivered;
            c.0.failed += counts.failed;
            c.0.dead += counts.dead;
            if let Some(e) = error {
                c.1 = Some(e.to_owned());
            }
            c.2.is_none_or(|t| t.elapsed() >= COUNTS_EVERY) || error.is_some()
        };
        if due {
            self.flush_counts().await;
        }
    }

    /// Writes the counts not yet in the store.
    pub async fn flush_counts(&self) {
        let (counts, error) = {
            let mut c = self.counts.lock().unwrap();
            c.2 = Some(std::time::Instant::now());
            (std::mem::take(&mut c.0), c.1.take())
        };
        if counts == petrel_store::TriggerCounts::default() && error.is_none() {
            return;
        }
        if let Err(e) = self
            .deps
            .store
            .add_trigger_counts(
                &self.namespace,
                &self.function,
                &self.spec.name,
                counts,
                error.as_deref(),
            )
            .await
        {
            tracing::warn!(trigger = %self.spec.name, function = %self.function, error = %e, "could not record a trigger's counts");
        }
    }
}

/// How often a trigger's counts are written to the store, at most.
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// How a trigger is doing on this server.
#[derive(Debug, Default)]
pub(crate) struct Status {
    state: Mutex<RunState>,
    /// Records not yet processed; `u64::MAX`: not known.
    lag: AtomicU64,
    position: Mutex<Option<String>>,
    in_flight: AtomicU32,
    next_fire: AtomicU64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum RunState {
    #[default]
    Starting,
    Running,
    Failing(String),
    Paused,
    Disabled,
}

impl Status {
    pub fn new() -> Self {
        Self {
            lag: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }
    pub fn set(&self, s: RunState) {
        *self.state.lock().unwrap() = s;
    }
    pub fn failing(&self, e: impl Into<String>) {
        self.set(RunState::Failing(e.into()));
    }
    pub fn running(&self) {
        let mut s = self.state.lock().unwrap();
        if !matches!(*s, RunState::Running) {
            *s = RunState::Running;
        }
    }
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
    }
    pub fn set_position(&self, p: String) {
        *self.position.lock().unwrap() = Some(p);
    }
    pub fn set_next_fire(&self, ms: i64) {
        self.next_fire.store(ms.max(0) as u64, Ordering::Relaxed);
    }
    pub fn in_flight(&self) -> &AtomicU32 {
        &self.in_flight
    }
}

struct Running {
    run: Arc<TriggerRun>,
    stop: Option<watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// What watches a trigger that does not run (a paused change stream's slot).
    watcher: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    deps: Arc<Deps>,
    running: Mutex<HashMap<Key, Running>>,
    wake: Notify,
    stop: watch::Sender<bool>,
    /// Serialises reconciliations (a nudge and the timer may overlap).
    reconciling: tokio::sync::Mutex<()>,
}

/// The triggers of every deployed function, as this server runs them. Cheap to clone.
#[derive(Clone)]
pub struct Triggers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers").finish_non_exhaustive()
    }
}

impl Triggers {
    /// Starts the triggers of every deployed function, and the loop that keeps them in step
    /// with the store.
    pub async fn start(
        store: Store,
        dp: DataPlane,
        queue: AsyncQueue,
        http: HttpClient,
        config: TriggersConfig,
    ) -> Self {
        let (stop, _) = watch::channel(false);
        let t = Self {
            inner: Arc::new(Inner {
                deps: Arc::new(Deps {
                    store,
                    dp,
                    queue,
                    http,
                    config,
                    webhooks: Mutex::new(HashMap::new()),
                }),
                running: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                stop,
                reconciling: tokio::sync::Mutex::new(()),
            }),
        };
        t.reconcile().await;
        let this = t.clone();
        let mut stop = t.inner.stop.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = this.inner.wake.notified() => {}
                    _ = tokio::time::sleep(this.inner.deps.config.reconcile_every) => {}
                    _ = stop.changed() => return,
                }
                this.reconcile().await;
            }
        });
        t
    }

    /// Looks at the store again now (after a deploy, a removal, a pause).
    pub fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// The trigger as it runs (or waits, paused) on this server.
    pub(crate) fn run_of(&self, key: &Key) -> Option<Arc<TriggerRun>> {
        self.inner
            .running
            .lock()
            .unwrap()
            .get(key)
            .map(|r| r.run.clone())
    }

    /// Brings what runs in step with the store, and waits for it (for the control API, which
    /// answers a deploy or a pause after its triggers took it in).
    pub async fn reconcile(&self) {
        self.reconcile_scope(None).await
    }

    /// The same for one function only (after its deploy, delete or a pause of one of its
    /// triggers), reading just its latest version.
    pub async fn reconcile_function(&self, namespace: &str, function: &str) {
        self.reconcile_scope(Some((namespace, function))).await
    }

    async fn reconcile_scope(&self, scope: Option<(&str, &str)>) {
        let _one = self.inner.reconciling.lock().await;
        let deps = &self.inner.deps;
        let specs: Vec<(String, petrel_core::FunctionSpec)> = match scope {
            None => match deps.store.latest_versions().await {
                Ok(v) => v.into_iter().map(|(ns, v)| (ns, v.spec)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "triggers: could not read the deployed functions; trying again");
                    return;
                }
            },
            Some((ns, name)) => {
                let latest = match deps.store.get_function(ns, name).await {
                    Ok(Some(f)) => deps.store.get_version(ns, name, f.latest_version).await,
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                match latest {
                    Ok(v) => v.into_iter().map(|v| (ns.to_owned(), v.spec)).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, function = %name, "triggers: could not read the function; trying again");
                        return;
                    }
                }
            }
        };
        let mut desired: HashMap<Key, (TriggerSpec, bool)> = HashMap::new();
        for (ns, spec) in specs {
            if spec.triggers.is_empty() {
                continue;
            }
            // A read that fails changes nothing: its triggers must not look removed.
            let paused: HashMap<String, bool> = match deps
                .store
                .trigger_states(&ns, &spec.name)
                .await
            {
                Ok(states) => states.into_iter().map(|s| (s.name, s.paused)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, function = %spec.name, "triggers: could not read trigger states; trying again");
                    return;
                }
            };
            for t in &spec.triggers {
                let p = paused.get(&t.name).copied().unwrap_or(false);
                desired.insert(
                    (ns.clone(), spec.name.clone(), t.name.clone()),
                    (t.clone(), p),
                );
            }
        }
        let in_scope = |k: &Key| scope.is_none_or(|(ns, name)| k.0 == ns && k.1 == name);
        let mut stopping = Vec::new();
        {
            let mut running = self.inner.running.lock().unwrap();
            let gone: Vec<Key> = running
                .keys()
                .filter(|k| in_scope(k) && !desired.contains_key(*k))
                .cloned()
                .collect();
            for k in gone {
                if let Some(r) = running.remove(&k) {
                    tracing::info!(function = %k.1, trigger = %k.2, "trigger removed: stopping its consumer");
                    stopping.push((k, r, true));
                }
            }
            for (k, (spec, paused)) in desired {
                let want_running = spec.enabled && !paused;
                if let Some(r) = running.get(&k) {
                    let same = r.run.spec == spec;
                    let is_running = r.task.is_some();
                    if same && is_running == want_running {
                        continue;
                    }
                    if let Some(r) = running.remove(&k) {
                        stopping.push((k.clone(), r, false));
                    }
                }
                let labels = TriggerLabels {
                    namespace: k.0.clone(),
                    function: k.1.clone(),
                    trigger: k.2.clone(),
                    kind: spec.source.kind().as_str(),
                };
                let run = Arc::new(TriggerRun {
                    namespace: k.0.clone(),
                    function: k.1.clone(),
                    spec,
                    labels,
                    status: Status::new(),
                    deps: deps.clone(),
                    counts: Mutex::new(Default::default()),
                });
                let entry = if want_running {
                    let (tx, rx) = watch::channel(false);
                    tracing::info!(function = %k.1, trigger = %k.2, kind = %run.spec.source.kind(), "starting a trigger's consumer");
                    let task = tokio::spawn(run_trigger(run.clone(), rx));
                    Running {
                        run,
                        stop: Some(tx),
                        task: Some(task),
                        watcher: None,
                    }
                } else {
                    run.status.set(if run.spec.enabled {
                        RunState::Paused
                    } else {
                        RunState::Disabled
                    });
                    let watcher = match &run.spec.source {
                        TriggerSource::Postgres(p) => {
                            Some(tokio::spawn(postgres::watch_paused(run.clone(), p.clone())))
                        }
                        _ => None,
                    };
                    Running {
                        run,
                        stop: None,
                        task: None,
                        watcher,
                    }
                };
                running.insert(k, entry);
            }
        }
        for (k, r, removed) in stopping {
            let run = r.run.clone();
            stop_one(r).await;
            // A removed change stream's slot goes with it (it would hold WAL back for ever).
            if let (true, TriggerSource::Postgres(p)) = (removed, &run.spec.source) {
                postgres::drop_slot(&run, p).await;
            }
            // A trigger whose function still exists was taken out of its manifest: forget its
            // state. A deleted function's went with it.
            if removed {
                if let Err(e) = deps.store.remove_trigger(&k.0, &k.1, &k.2).await {
                    tracing::warn!(error = %e, "triggers: could not remove a trigger's state");
                }
            }
        }
    }

    /// The triggers of a function, with this server's view of each and the stored counts.
    pub async fn list(
        &self,
        namespace: &str,
        function: &str,
        specs: &[TriggerSpec],
    ) -> anyhow::Result<TriggerList> {
        let states = self
            .inner
            .deps
            .store
            .trigger_states(namespace, function)
            .await?;
        let mut triggers = {
            let running = self.inner.running.lock().unwrap();
            specs
                .iter()
                .map(|spec| {
                    let key = (namespace.to_owned(), function.to_owned(), spec.name.clone());
                    let stored = states.iter().find(|s| s.name == spec.name);
                    let run = running.get(&key).map(|r| r.run.clone());
                    let paused = stored.is_some_and(|s| s.paused);
                    let (state, lag, position, in_flight, next_fire) = match &run {
                        Some(r) => {
                            let lag = r.status.lag.load(Ordering::Relaxed);
                            let next = r.status.next_fire.load(Ordering::Relaxed);
                            (
                                r.status.state.lock().unwrap().clone(),
                                (lag != u64::MAX).then_some(lag),
                                r.status.position.lock().unwrap().clone(),
                                r.status.in_flight.load(Ordering::Relaxed),
                                (next != 0).then_some(next as i64),
                            )
                        }
                        None if !spec.enabled => (RunState::Disabled, None, None, 0, None),
                        None if paused => (RunState::Paused, None, None, 0, None),
                        None => (RunState::Starting, None, None, 0, None),
                    };
                    let error = match &state {
                        RunState::Failing(e) => Some(e.clone()),
                        _ => None,
                    };
                    TriggerStatus {
                        name: spec.name.clone(),
                        kind: spec.source.kind().to_string(),
                        source: describe(&spec.source),
                        state: match state {
                            RunState::Starting => "starting",
                            RunState::Running => "running",
                            RunState::Failing(_) => "failing",
                            RunState::Paused => "paused",
                            RunState::Disabled => "disabled",
                        }
                        .to_owned(),
                        error,
                        target: spec.target.clone(),
                        lag,
                        position,
                        in_flight,
                        delivered: stored.map_or(0, |s| s.delivered),
                        failed: stored.map_or(0, |s| s.failed),
                        dead: stored.map_or(0, |s| s.dead),
                        last_error: stored.and_then(|s| s.last_error.clone()),
                        last_error_at: stored.and_then(|s| s.last_error_at),
                        last_fire: stored.and_then(|s| s.last_fire),
                        next_fire,
                        webhook: None,
                    }
                })
                .collect::<Vec<_>>()
        };
        for (t, spec) in triggers.iter_mut().zip(specs) {
            if let TriggerSource::S3(b) = &spec.source {
                if b.mode == petrel_core::trigger::S3Mode::Notify {
                    t.webhook = self.s3_webhook_path(namespace, function, &spec.name).await;
                }
            }
        }
        Ok(TriggerList {
            function: function.to_owned(),
            triggers,
        })
    }

    /// Stops every consumer, letting batches being invoked finish within `grace`; what they
    /// have not committed is delivered again later.
    pub async fn stop(&self, grace: Duration) {
        let _ = self.inner.stop.send(true);
        let all: Vec<Running> = self
            .inner
            .running
            .lock()
            .unwrap()
            .drain()
            .map(|(_, r)| r)
            .collect();
        let _ = tokio::time::timeout(grace, async {
            for r in all {
                stop_one(r).await;
            }
        })
        .await;
    }
}

async fn stop_one(r: Running) {
    if let Some(w) = r.watcher {
        w.abort();
    }
    if let Some(tx) = r.stop {
        let _ = tx.send(true);
    }
    if let Some(task) = r.task {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(trigger = %r.run.spec.name, "a trigger's consumer did not stop within 30 s; its uncommitted records will be delivered again")
            }
        }
    }
}

/// What a trigger reads, in a line.
fn describe(s: &TriggerSource) -> String {
    match s {
        TriggerSource::Kafka(k) => format!("kafka://{}/{}", k.brokers.join(","), k.topic),
        TriggerSource::Nats(n) => match &n.subject {
            Some(subj) => format!("{}/{} ({subj})", n.servers.join(","), n.stream),
            None => format!("{}/{}", n.servers.join(","), n.stream),
        },
        TriggerSource::Redis(r) => format!("{}/{}", events::redact(&r.url), r.stream),
        TriggerSource::Amqp(a) => format!("{} queue {}", events::redact(&a.url), a.queue),
        TriggerSource::Mqtt(m) => format!("{}/{}", events::redact(&m.url), m.topic),
        TriggerSource::Postgres(p) => {
            format!("{} publication {}", events::redact(&p.url), p.publication)
        }
        TriggerSource::Mysql(m) => format!("{} binlog", events::redact(&m.url)),
        TriggerSource::S3(b) => format!(
            "{}/{}/{}* ({})",
            events::redact(&b.endpoint),
            b.bucket,
            b.prefix.as_deref().unwrap_or(""),
            match b.mode {
                petrel_core::trigger::S3Mode::Notify => "notify",
                petrel_core::trigger::S3Mode::Poll => "poll",
            }
        ),
        TriggerSource::Cron(c) => format!("{} ({})", c.schedule, c.timezone),
    }
}

/// Runs one trigger's consumer until `stop`, writing what it counts every second.
async fn run_trigger(run: Arc<TriggerRun>, stop: watch::Receiver<bool>) {
    let flusher = {
        let run = run.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(COUNTS_EVERY).await;
                run.flush_counts().await;
            }
        })
    };
    match run.spec.source.clone() {
        TriggerSource::Kafka(k) => kafka::run(run.clone(), k, stop).await,
        TriggerSource::Nats(n) => nats::run(run.clone(), n, stop).await,
        TriggerSource::Redis(r) => redis::run(run.clone(), r, stop).await,
        TriggerSource::Amqp(a) => amqp::run(run.clone(), a, stop).await,
        TriggerSource::Mqtt(m) => mqtt::run(run.clone(), m, stop).await,
        TriggerSource::Postgres(p) => postgres::run(run.clone(), p, stop).await,
        TriggerSource::Mysql(m) => mysql::run(run.clone(), m, stop).await,
        TriggerSource::S3(b) => s3::run(run.clone(), b, stop).await,
        TriggerSource::Cron(c) => cron::run(run.clone(), c, stop).await,
    }
    flusher.abort();
    run.flush_counts().await;
}

/// Runs a stream trigger's consumer until `stop`: `consume` again, after a pause doubling
/// from `reconnect_base`, each time it ends with an error it cannot go on from.
pub(crate) async fn supervise<F, Fut>(
    run: &TriggerRun,
    mut stop: watch::Receiver<bool>,
    mut consume: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut failures = 0;
    while !*stop.borrow() {
        match consume(stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!(function = %run.function, trigger = %run.spec.name, kind = %run.spec.source.kind(), error = %e, "trigger: consumer failed; starting it again");
                run.status.failing(e);
                tokio::select! {
                    _ = tokio::time::sleep(batch::backoff(run.deps.config.reconnect_base, failures)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}
