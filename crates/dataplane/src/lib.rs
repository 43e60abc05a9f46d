//! Petrel's data plane: the invocation core ([`DataPlane::invoke`], the one entry point of every
//! way in), the router that resolves a function reference to a deployed version, and one
//! [`Pool`] of instances per version, with its autoscaler, keep-alive policy and the node's
//! memory budget.
//!
//! It does not store anything: the server tells it what is deployed ([`DataPlane::deployed`],
//! [`DataPlane::removed`]) and gives it a [`VersionSource`] to load older versions on demand.
//! It speaks no wire format of its own: the HTTP front ends (`petrel-gateway`), AWS Lambda's API
//! (`petrel-aws`), the async dispatcher (`petrel-async`) and the triggers translate theirs to
//! an [`Invocation`] and back.

#![forbid(unsafe_code)]

mod admission;
mod apigw;
pub use admission::NamespaceLimits;
pub mod autoscale;
pub mod body;
pub mod budget;
mod invoke;
pub mod keepalive;
pub mod metrics;
pub mod pool;
pub mod router;
pub mod series;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;

pub use invoke::{
    invoke_error, json_event, new_invocation_id, payload_too_large, read_body, Answer, AttemptOf,
    Failure, Invocation, Outcome, Payload,
};
pub use pool::{Pool, PoolStats};
pub use router::RouteHints;

use petrel_core::api::InvocationRecord;
use petrel_core::manifest::AsyncSpec;
use petrel_core::{ApiError, BoxFuture, ErrorCode, FunctionRef, FunctionSpec};
use petrel_runtime::Starter;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A version ready to run: its configuration and unpacked code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployedVersion {
    pub namespace: String,
    pub name: String,
    pub version: u32,
    pub digest: String,
    pub spec: Arc<FunctionSpec>,
    pub code_dir: PathBuf,
}

struct RecordSink {
    tx: tokio::sync::mpsc::Sender<InvocationRecord>,
    dropped: std::sync::atomic::AtomicU64,
}

/// Loads a specific version that the data plane has not seen yet (an older version named by
/// number). `Ok(None)` means it does not exist.
pub trait VersionSource: Send + Sync + 'static {
    fn load(
        &self,
        namespace: &str,
        name: &str,
        version: u32,
    ) -> BoxFuture<'_, anyhow::Result<Option<DeployedVersion>>>;

    /// Where an alias sends traffic; `None` is no such alias.
    fn alias(
        &self,
        _namespace: &str,
        _name: &str,
        _alias: &str,
    ) -> BoxFuture<'_, anyhow::Result<Option<petrel_core::release::AliasRoute>>> {
        Box::pin(async { Ok(None) })
    }
}

type Key = (String, String);

struct Inner {
    spans: std::sync::OnceLock<trace::SpanSink>,
    starter: Arc<dyn Starter>,
    /// Largest request or response payload, in bytes.
    payload_limit: usize,
    metrics: Arc<metrics::Metrics>,
    budget: Arc<budget::MemoryBudget>,
    /// Each function's idle-time histogram, for the hybrid keep-alive policy.
    idle_hists: Mutex<HashMap<Key, Arc<Mutex<keepalive::IdleHistogram>>>>,
    records: RecordSink,
    source: Arc<dyn VersionSource>,
    /// Latest version of each deployed function.
    latest: RwLock<HashMap<Key, u32>>,
    /// Pools by (namespace, name) then version.
    pools: Mutex<HashMap<Key, HashMap<u32, Arc<Pool>>>>,
    draining: AtomicBool,
    /// Rate limits and namespace quotas.
    admission: admission::Admission,
    /// Aliases the router read recently.
    aliases: router::AliasCache,
}

/// The data plane. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane").finish_non_exhaustive()
    }
}

impl DataPlane {
    /// A data plane whose instances `starter` starts, and the receiving end of its invocation
    /// records (write them somewhere).
    pub fn new(
        starter: Arc<dyn Starter>,
        source: Arc<dyn VersionSource>,
        payload_limit: usize,
    ) -> (Self, tokio::sync::mpsc::Receiver<InvocationRecord>) {
        let (tx, rx) = tokio::sync::mpsc::channel(16 * 1024);
        let dp = Self {
            inner: Arc::new(Inner {
                spans: std::sync::OnceLock::new(),
                starter,
                payload_limit,
                metrics: Arc::new(metrics::Metrics::default()),
                budget: Arc::default(),
                idle_hists: Mutex::default(),
                admission: Default::default(),
                aliases: Default::default(),
                records: RecordSink {
                    tx,
                    dropped: std::sync::atomic::AtomicU64::new(0),
                },
                source,
                latest: RwLock::new(HashMap::new()),
                pools: Mutex::new(HashMap::new()),
                draining: AtomicBool::new(false),
            }),
        };
        (dp, rx)
    }

    /// Hands a record to the writer; a full channel drops it and counts the drop.
    pub fn record(&self, r: InvocationRecord) {
        if self.inner.records.tx.try_send(r).is_err() {
            self.inner.records.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The version this server serves as a function's latest, if any.
    pub fn latest_version(&self, namespace: &str, name: &str) -> Option<u32> {
        self.inner
            .latest
            .read()
            .unwrap()
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// Exports invocation spans as OTLP to `endpoint` (e.g. `http://127.0.0.1:4318`) from now on.
    pub fn export_spans_to(&self, endpoint: &str) {
        let _ = self.inner.spans.set(trace::spawn_exporter(endpoint));
    }

    pub(crate) fn spans(&self) -> Option<&trace::SpanSink> {
        self.inner.spans.get()
    }

    fn idle_hist(&self, key: &Key) -> Arc<Mutex<keepalive::IdleHistogram>> {
        self.inner
            .idle_hists
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// What the hybrid policy learned so far, per function with any idle time recorded.
    pub fn idle_histograms(&self) -> Vec<(String, String, keepalive::IdleHistogram)> {
        let hists = self.inner.idle_hists.lock().unwrap();
        hists
            .iter()
            .map(|((ns, name), h)| (ns.clone(), name.clone(), h.lock().unwrap().clone()))
            .filter(|(_, _, h)| h.samples() > 0)
            .collect()
    }

    /// Restores a histogram learned before a restart.
    pub fn restore_idle_histogram(&self, ns: &str, name: &str, hist: keepalive::IdleHistogram) {
        *self
            .idle_hist(&(ns.to_owned(), name.to_owned()))
            .lock()
            .unwrap() = hist;
    }

    /// The node's memory budget for process instances.
    pub fn memory_budget(&self) -> &budget::MemoryBudget {
        &self.inner.budget
    }

    /// Records lost to back-pressure since start.
    pub fn records_dropped(&self) -> u64 {
        self.inner.records.dropped.load(Ordering::Relaxed)
    }

    /// Largest request or response payload, in bytes.
    pub fn payload_limit(&self) -> usize {
        self.inner.payload_limit
    }

    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.inner.metrics
    }

    /// A new version is the latest: requests without a version go to it from now on. Its pool is
    /// created now (starting `min_instances`), older versions stop keeping instances warm.
    pub fn deployed(&self, v: DeployedVersion) {
        let key = (v.namespace.clone(), v.name.clone());
        let version = v.version;
        let min = v.spec.min_instances as usize;
        {
            let mut pools = self.inner.pools.lock().unwrap();
            let by_version = pools.entry(key.clone()).or_default();
            for p in by_version.values() {
                p.retire();
            }
            by_version.insert(
                version,
                Pool::new(
                    Arc::new(v),
                    self.inner.starter.clone(),
                    self.inner.metrics.clone(),
                    self.inner.budget.clone(),
                    self.idle_hist(&key),
                    min,
                ),
            );
        }
        self.inner.latest.write().unwrap().insert(key, version);
    }

    /// Loads the latest version's code ahead of its first request (wasm; a no-op otherwise).
    /// Called after a deploy, not at restore: a restart should not load every component.
    pub async fn preload_latest(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(v) = self.inner.latest.read().unwrap().get(&key).copied() else {
            return;
        };
        let pool = self
            .inner
            .pools
            .lock()
            .unwrap()
            .get(&key)
            .and_then(|m| m.get(&v))
            .cloned();
        if let Some(p) = pool {
            p.preload().await;
        }
    }

    /// A function was deleted: its pools close (busy instances finish their request).
    pub fn removed(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        self.inner.latest.write().unwrap().remove(&key);
        self.alias_changed(namespace, name);
        if let Some(pools) = self.inner.pools.lock().unwrap().remove(&key) {
            for p in pools.values() {
                p.close();
            }
        }
    }

    /// Sets a namespace's invocation quotas on this server (the default removes them).
    pub fn set_namespace_limits(&self, ns: &str, limits: NamespaceLimits) {
        self.inner.admission.set_namespace(ns, limits);
    }

    /// The version a reference names (the latest, one by number, or one its alias routes to at
    /// random: route first with [`DataPlane::route`] when the same call is invoked next).
    pub async fn version_of(&self, r: &FunctionRef) -> Result<Arc<DeployedVersion>, ApiError> {
        self.resolve(r).await.map(|p| p.version().clone())
    }

    /// The pool serving a reference, loading an older version from the source when needed.
    pub(crate) async fn resolve(&self, r: &FunctionRef) -> Result<Arc<Pool>, ApiError> {
        if r.alias.is_some() && r.version.is_none() {
            let routed = self.route(r, &RouteHints::default()).await?.into_owned();
            return Box::pin(self.resolve(&routed)).await;
        }
        if self.inner.draining.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "this Petrel server is shutting down; retry against another server or after restart",
            )
            .with_retry_after(1));
        }
        let key = (r.namespace.clone(), r.name.clone());
        let latest = self.inner.latest.read().unwrap().get(&key).copied();
        let Some(latest) = latest else {
            return Err(not_found(r));
        };
        let version = r.version.unwrap_or(latest);
        if let Some(p) = self
            .inner
            .pools
            .lock()
            .unwrap()
            .get(&key)
            .and_then(|m| m.get(&version))
        {
            return Ok(p.clone());
        }
        let loaded = self
            .inner
            .source
            .load(&r.namespace, &r.name, version)
            .await
            .map_err(|e| {
                tracing::error!(function = %r, error = %e, "could not load a version");
                ApiError::internal()
            })?;
        let Some(v) = loaded else {
            return Err(ApiError::new(
                ErrorCode::VersionNotFound,
                format!(
                    "function {} has no version {version}; its latest is {latest} (see `petrel get {}`)",
                    r.name, r.name
                ),
            ));
        };
        let mut pools = self.inner.pools.lock().unwrap();
        let by_version = pools.entry(key).or_default();
        let pool = by_version.entry(version).or_insert_with(|| {
            Pool::new(
                Arc::new(v),
                self.inner.starter.clone(),
                self.inner.metrics.clone(),
                self.inner.budget.clone(),
                self.idle_hist(&(r.namespace.clone(), r.name.clone())),
                0,
            )
        });
        Ok(pool.clone())
    }

    /// Stats of every pool, by (namespace, name, version).
    pub fn pool_stats(&self) -> Vec<(String, String, u32, PoolStats)> {
        let pools = self.inner.pools.lock().unwrap();
        let mut out: Vec<_> = pools
            .iter()
            .flat_map(|((ns, name), m)| {
                m.iter()
                    .map(move |(v, p)| (ns.clone(), name.clone(), *v, p.stats()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
        out
    }

    /// Stops invocation `id` where it runs on this server (a cancelled async invocation; see
    /// `Instance::stop_invocation` for what can be stopped): whether it was.
    pub fn stop_invocation(&self, id: &str, why: &str) -> bool {
        let pools: Vec<Arc<Pool>> = {
            let pools = self.inner.pools.lock().unwrap();
            pools.values().flat_map(|m| m.values().cloned()).collect()
        };
        pools.iter().any(|p| p.stop_invocation(id, why))
    }

    /// Refuses new invocations from now on (in-flight ones carry on).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Stops every instance. Call after in-flight requests have finished.
    pub fn shutdown(&self) {
        self.start_draining();
        let pools = std::mem::take(&mut *self.inner.pools.lock().unwrap());
        for p in pools.values().flat_map(|m| m.values()) {
            p.close();
        }
    }
}

/// What an unknown function answers (and one the caller may not see, alike).
pub fn not_found(r: &FunctionRef) -> ApiError {
    let ns = if r.namespace == petrel_core::DEFAULT_NAMESPACE {
        String::new()
    } else {
        format!(" in namespace {}", r.namespace)
    };
    ApiError::new(
        ErrorCode::FunctionNotFound,
        format!(
            "no function named {}{ns}; deploy it with `petrel deploy`, or list functions with `petrel ls`",
            r.name
        ),
    )
}

impl DataPlane {
    /// The async settings of the function's latest version on this server, if it serves it.
    pub fn async_settings(&self, namespace: &str, function: &str) -> Option<AsyncSpec> {
        let key = (namespace.to_owned(), function.to_owned());
        let latest = self.inner.latest.read().unwrap().get(&key).copied()?;
        let pools = self.inner.pools.lock().unwrap();
        let pool = pools.get(&key)?.get(&latest)?;
        Some(pool.version().spec.asynchronous.clone())
    }
}
