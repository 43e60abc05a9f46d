//! The pool of one function version: its instances, their concurrency slots, the bounded wait
//! queue, and the keep-alive that stops idle instances.
//!
//! Admission is a semaphore holding `max_instances × concurrency` permits: a request that holds a
//! permit is guaranteed a slot, either in a warm or starting instance or in a new one, so the pool
//! never starts more than `max_instances`. A request without a permit waits in a queue of at most
//! `queue_size` for at most `queue_timeout`. An instance is started by a task of its own, so a
//! caller that goes away does not waste the start, and every request waiting for that instance is
//! told the same outcome.

use crate::budget::{Evictable, MemoryBudget, Reservation};
use crate::keepalive::{IdleHistogram, Policy};
use crate::DeployedVersion;
use petrel_core::{ApiError, ErrorCode};
use petrel_runtime::{Instance, InstanceSpec, InvokeError, Preloaded, Starter};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

type StartResult = Option<Result<Arc<dyn Instance>, InvokeError>>;

enum SlotState {
    Starting(watch::Receiver<StartResult>),
    Ready(Arc<dyn Instance>),
}

struct Slot {
    id: u64,
    state: SlotState,
    in_flight: u32,
    last_used: Instant,
    /// This instance's share of the node's memory budget, given back when the slot goes.
    _reservation: Option<Reservation>,
}

/// `take_slot` needs a new instance and the memory budget has no room for it.
struct NeedRoom;

#[derive(Default)]
struct PoolState {
    slots: Vec<Slot>,
    next_id: u64,
}

/// A snapshot of a pool, for status displays and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub ready: usize,
    pub starting: usize,
    pub in_flight: u32,
    pub waiting: usize,
}

pub struct Pool {
    version: Arc<DeployedVersion>,
    starter: Arc<dyn Starter>,
    metrics: Arc<crate::metrics::Metrics>,
    budget: Arc<MemoryBudget>,
    /// The function's idle-time histogram (shared by its versions, kept across restarts).
    idle_hist: Arc<Mutex<IdleHistogram>>,
    /// When the pool last had no request in flight; `None` while busy.
    idle_since: Mutex<Option<Instant>>,
    autoscaler: Mutex<crate::autoscale::Autoscaler>,
    state: Mutex<PoolState>,
    permits: Arc<Semaphore>,
    /// The semaphore's size: `max_instances × concurrency`.
    max_permits: usize,
    waiting: AtomicUsize,
    /// Keep this many instances warm (the latest version's `min_instances`; 0 once retired).
    min_instances: AtomicUsize,
    closed: AtomicBool,
    /// A newer version took over: no pre-warming for this one.
    preloaded_retired: AtomicBool,
    /// The version's code, loaded at deploy (wasm), so its first request only creates an instance.
    preloaded: Mutex<Option<Preloaded>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("function", &self.version.name)
            .field("version", &self.version.version)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A taken slot of an instance; releasing it (drop) frees the slot and wakes a waiter.
pub struct Lease {
    pool: Arc<Pool>,
    slot: u64,
    instance: Arc<dyn Instance>,
    broken: bool,
    cold: bool,
    slot_wait: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The version the slot's pool runs.
    pub fn version(&self) -> &Arc<DeployedVersion> {
        &self.pool.version
    }

    pub fn instance(&self) -> &dyn Instance {
        self.instance.as_ref()
    }

    /// Whether the request waited for its instance to start (a cold start).
    pub fn cold(&self) -> bool {
        self.cold
    }

    /// How long the request waited in the queue for capacity before its slot.
    pub fn slot_wait(&self) -> Duration {
        self.slot_wait
    }

    /// Marks the instance unusable (it timed out or crashed): it leaves the pool on release.
    pub fn discard_instance(&mut self) {
        self.broken = true;
        self.instance.kill();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock().unwrap();
        if let Some(pos) = st.slots.iter().position(|s| s.id == self.slot) {
            let s = &mut st.slots[pos];
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last_used = Instant::now();
            if self.broken || !self.instance.is_alive() {
                st.slots.remove(pos);
            }
        }
        if st.slots.iter().all(|s| s.in_flight == 0) {
            *self.pool.idle_since.lock().unwrap() = Some(Instant::now());
        }
    }
}

impl Pool {
    pub fn new(
        version: Arc<DeployedVersion>,
        starter: Arc<dyn Starter>,
        metrics: Arc<crate::metrics::Metrics>,
        budget: Arc<MemoryBudget>,
        idle_hist: Arc<Mutex<IdleHistogram>>,
        min_instances: usize,
    ) -> Arc<Self> {
        let spec = &version.spec;
        let permits = (spec.max_instances as usize) * (spec.concurrency as usize);
        let pool = Arc::new(Self {
            version,
            starter,
            metrics,
            budget,
            idle_hist,
            idle_since: Mutex::new(None),
            autoscaler: Mutex::default(),
            state: Mutex::new(PoolState::default()),
            permits: Arc::new(Semaphore::new(permits)),
            max_permits: permits,
            waiting: AtomicUsize::new(0),
            min_instances: AtomicUsize::new(min_instances),
            closed: AtomicBool::new(false),
            preloaded_retired: AtomicBool::new(false),
            preloaded: Mutex::new(None),
        });
        let holder: std::sync::Weak<dyn Evictable> = Arc::downgrade(&pool) as _;
        pool.budget.register(holder);
        pool.clone().spawn_keeper();
        pool
    }

    pub fn version(&self) -> &Arc<DeployedVersion> {
        &self.version
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.state.lock().unwrap();
        let mut s = PoolStats {
            waiting: self.waiting.load(Ordering::Relaxed),
            ..Default::default()
        };
        for slot in &st.slots {
            match slot.state {
                SlotState::Starting(_) => s.starting += 1,
                SlotState::Ready(_) => s.ready += 1,
            }
            s.in_flight += slot.in_flight;
        }
        s
    }

    /// Stops the instance that runs invocation `id` alone (see `Instance::stop_invocation`).
    pub fn stop_invocation(&self, id: &str, why: &str) -> bool {
        let instances: Vec<Arc<dyn Instance>> = {
            let st = self.state.lock().unwrap();
            st.slots
                .iter()
                .filter_map(|s| match &s.state {
                    SlotState::Ready(i) if s.in_flight > 0 => Some(i.clone()),
                    _ => None,
                })
                .collect()
        };
        instances.iter().any(|i| i.stop_invocation(id, why))
    }

    /// Loads the version's code ahead of its first request.
    pub async fn preload(self: &Arc<Self>) {
        if let Some(p) = self.starter.preload(&self.instance_spec()).await {
            if !self.closed.load(Ordering::Relaxed) {
                *self.preloaded.lock().unwrap() = Some(p);
            }
        }
    }

    fn instance_spec(&self) -> InstanceSpec {
        InstanceSpec {
            namespace: self.version.namespace.clone(),
            function: self.version.name.clone(),
            version: self.version.version,
            spec: self.version.spec.clone(),
            code_dir: self.version.code_dir.clone(),
        }
    }

    /// Stops keeping instances warm (a newer version took over): idle ones go at the next sweep.
    pub fn retire(self: &Arc<Self>) {
        self.preloaded_retired.store(true, Ordering::Relaxed);
        self.preloaded.lock().unwrap().take();
        self.min_instances.store(0, Ordering::Relaxed);
        self.sweep(Duration::ZERO);
    }

    /// Closes the pool: waiters are refused, idle instances stop now, busy ones after their request.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.permits.close();
        self.min_instances.store(0, Ordering::Relaxed);
        self.preloaded.lock().unwrap().take();
        let mut st = self.state.lock().unwrap();
        st.slots.retain(|s| s.in_flight > 0);
    }

    fn gone(&self) -> ApiError {
        ApiError::new(
            ErrorCode::FunctionNotFound,
            format!(
                "function {} version {} was removed while the request waited",
                self.version.name, self.version.version
            ),
        )
    }

    /// Takes a slot, starting an instance if none is free, or waits in the bounded queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, AcquireError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(AcquireError::Refused(self.gone()));
        }
        let queued_at = Instant::now();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(AcquireError::Refused(self.gone()))
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => self.wait_for_permit().await?,
        };
        let slot_wait = queued_at.elapsed();
        self.autoscaler
            .lock()
            .unwrap()
            .observe(Instant::now(), self.concurrency_now());
        if let Some(since) = self.idle_since.lock().unwrap().take() {
            self.idle_hist.lock().unwrap().record(since.elapsed());
        }
        let mut tries = 0;
        let (slot_id, state) = loop {
            match self.take_slot() {
                Ok(taken) => break taken,
                // Room freed by an eviction can be taken by another start first: try again a
                // few times, evicting each time.
                Err(NeedRoom) if tries < 8 && self.budget.evict_one(self.as_ref()) => tries += 1,
                Err(NeedRoom) => {
                    drop(permit);
                    return Err(AcquireError::Refused(self.over_budget()));
                }
            }
        };
        let cold = state.is_err();
        let instance = match state {
            Ok(i) => i,
            Err(mut rx) => {
                let outcome = rx
                    .wait_for(|r| r.is_some())
                    .await
                    .map(|r| r.clone().expect("checked is_some"))
                    .unwrap_or_else(|_| {
                        Err(InvokeError::Crashed(
                            "the instance start was abandoned".into(),
                        ))
                    });
                match outcome {
                    Ok(i) => i,
                    Err(e) => {
                        // The start task already removed the slot; nothing to release.
                        drop(permit);
                        return Err(AcquireError::Start(e));
                    }
                }
            }
        };
        Ok(Lease {
            pool: self.clone(),
            slot: slot_id,
            instance,
            broken: false,
            cold,
            slot_wait,
            _permit: permit,
        })
    }

    async fn wait_for_permit(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, AcquireError> {
        let spec = &self.version.spec;
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        struct Unqueue<'a>(&'a AtomicUsize);
        impl Drop for Unqueue<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _unqueue = Unqueue(&self.waiting);
        if queued >= spec.queue_size as usize {
            return Err(AcquireError::Refused(
                ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "function {} is at its limit ({} instances × {} concurrent requests) and its wait queue of {} is full; retry later, or raise max_instances, concurrency or queue_size",
                        self.version.name, spec.max_instances, spec.concurrency, spec.queue_size
                    ),
                )
                .with_retry_after(1),
            ));
        }
        match tokio::time::timeout(spec.queue_timeout(), self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(AcquireError::Refused(self.gone())),
            Err(_) => Err(AcquireError::Refused(
                ApiError::new(
                    ErrorCode::NoCapacity,
                    format!(
                        "function {} had no free instance within its queue_timeout of {}; retry later, or raise max_instances or concurrency",
                        self.version.name,
                        humantime::format_duration(spec.queue_timeout())
                    ),
                )
                .with_retry_after(1),
            )),
        }
    }

    fn over_budget(&self) -> ApiError {
        ApiError::new(
            ErrorCode::NoCapacity,
            format!(
                "no room to start an instance of {} ({} MiB): the node's memory budget of {} MiB is held by running instances and none is idle; retry later, lower memory_mb, or raise --memory-budget",
                self.version.name,
                self.version.spec.memory_mb,
                self.budget.limit_mb()
            ),
        )
        .with_retry_after(1)
    }

    /// The memory a new instance holds against the node's budget (none for wasm).
    fn reserve(&self) -> Result<Option<Reservation>, NeedRoom> {
        if self.version.spec.runtime == petrel_core::Runtime::Wasm {
            return Ok(None);
        }
        self.budget
            .try_reserve(self.version.spec.memory_mb as u64)
            .map(Some)
            .ok_or(NeedRoom)
    }

    /// With a permit held: picks the fullest instance that has a free slot (so the others can go
    /// idle and be stopped), preferring ready ones, or begins a new instance.
    #[allow(clippy::type_complexity)]
    fn take_slot(
        self: &Arc<Self>,
    ) -> Result<(u64, Result<Arc<dyn Instance>, watch::Receiver<StartResult>>), NeedRoom> {
        let concurrency = self.version.spec.concurrency;
        let mut st = self.state.lock().unwrap();
        st.slots.retain(|s| match &s.state {
            SlotState::Ready(i) => i.is_alive() || s.in_flight > 0,
            SlotState::Starting(_) => true,
        });
        let best = st
            .slots
            .iter_mut()
            .filter(|s| s.in_flight < concurrency)
            .filter(|s| match &s.state {
                SlotState::Ready(i) => i.is_alive(),
                SlotState::Starting(_) => true,
            })
            .max_by_key(|s| (matches!(s.state, SlotState::Ready(_)), s.in_flight));
        if let Some(s) = best {
            s.in_flight += 1;
            s.last_used = Instant::now();
            let r = match &s.state {
                SlotState::Ready(i) => Ok(i.clone()),
                SlotState::Starting(rx) => Err(rx.clone()),
            };
            return Ok((s.id, r));
        }
        let reservation = self.reserve()?;
        let (id, rx) = self.begin_instance(&mut st, reservation, 1);
        Ok((id, Err(rx)))
    }

    /// Adds a slot for a new instance and starts it; `in_flight` requests already count on it.
    fn begin_instance(
        self: &Arc<Self>,
        st: &mut PoolState,
        reservation: Option<Reservation>,
        in_flight: u32,
    ) -> (u64, watch::Receiver<StartResult>) {
        let id = st.next_id;
        st.next_id += 1;
        let rx = self.clone().start_instance(id);
        st.slots.push(Slot {
            id,
            state: SlotState::Starting(rx.clone()),
            in_flight,
            last_used: Instant::now(),
            _reservation: reservation,
        });
        (id, rx)
    }

    fn start_instance(self: Arc<Self>, slot: u64) -> watch::Receiver<StartResult> {
        let (tx, rx) = watch::channel(None);
        let spec = self.instance_spec();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let result = self.starter.start(spec).await;
            self.metrics.cold_start(
                &self.version.namespace,
                &self.version.spec,
                result.is_ok(),
                t0.elapsed(),
            );
            if let Ok(i) = &result {
                let t = i.start_timings();
                let (ns, fs) = (&self.version.namespace, &self.version.spec);
                self.metrics.cold_start_phase(ns, fs, "start", t.start);
                self.metrics.cold_start_phase(ns, fs, "init", t.init);
            }
            {
                let mut st = self.state.lock().unwrap();
                if let Some(pos) = st.slots.iter().position(|s| s.id == slot) {
                    match &result {
                        Ok(i) if !self.closed.load(Ordering::Relaxed) => {
                            st.slots[pos].state = SlotState::Ready(i.clone())
                        }
                        _ => {
                            st.slots.remove(pos);
                        }
                    }
                }
            }
            if let Err(e) = &result {
                tracing::warn!(function = %self.version.name, version = self.version.version, error = %e, "instance failed to start");
            }
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// Stops idle instances past `keep_alive` (beyond `min_instances`) and starts instances up to
    /// `min_instances`.
    fn sweep(self: &Arc<Self>, keep_alive: Duration) {
        self.sweep_keeping(keep_alive, 0);
    }

    /// [`Pool::sweep`], keeping at least `floor` instances (started if need be) besides
    /// `min_instances`.
    fn sweep_keeping(self: &Arc<Self>, keep_alive: Duration, floor: usize) {
        let min = self.min_instances.load(Ordering::Relaxed).max(floor);
        let mut st = self.state.lock().unwrap();
        st.slots.retain(|s| match &s.state {
            SlotState::Ready(i) => i.is_alive() || s.in_flight > 0,
            SlotState::Starting(_) => true,
        });
        let mut live = st.slots.len();
        // Oldest idle first.
        let mut idle: Vec<(Instant, u64)> = st
            .slots
            .iter()
            .filter(|s| s.in_flight == 0 && matches!(s.state, SlotState::Ready(_)))
            .filter(|s| s.last_used.elapsed() >= keep_alive)
            .map(|s| (s.last_used, s.id))
            .collect();
        idle.sort();
        for (_, id) in idle {
            if live <= min {
                break;
            }
            st.slots.retain(|s| s.id != id);
            live -= 1;
        }
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        while live < min {
            let Ok(reservation) = self.reserve() else {
                tracing::warn!(function = %self.version.name, min_instances = min, "the memory budget has no room for min_instances; starting fewer");
                break;
            };
            self.begin_instance(&mut st, reservation, 0);
            live += 1;
        }
    }

    /// One keep-alive decision. `fixed`: stop instances idle for `keep_alive`. `hybrid`: follow
    /// the learned windows after the pool went idle: nothing kept during the pre-warm window,
    /// one instance (pre-warmed if need be) during the keep-alive window, nothing after.
    ///
    /// Before either, instances the autoscaler wants beyond the live ones are started ahead of
    /// demand (see [`crate::autoscale`]); stopping stays the keep-alive policy's call.
    fn keep(self: &Arc<Self>) {
        let spec = &self.version.spec;
        let want = self.autoscale();
        if !self.retired() {
            self.prestart(want);
        }
        let policy = match spec.keep_alive_policy {
            petrel_core::KeepAlivePolicy::Fixed => return self.sweep(spec.keep_alive()),
            petrel_core::KeepAlivePolicy::Hybrid => Policy::Hybrid {
                fallback: spec.keep_alive(),
            },
        };
        let w = policy.windows(&self.idle_hist.lock().unwrap());
        let idle_for = self.idle_since.lock().unwrap().map(|t| t.elapsed());
        match idle_for {
            // Busy, or a pattern with no pre-warm gap: per-instance idle time decides.
            None => self.sweep(w.prewarm + w.keep_alive),
            Some(_) if w.prewarm.is_zero() => self.sweep(w.keep_alive),
            Some(e) if e < w.prewarm || e >= w.prewarm + w.keep_alive => self.sweep(Duration::ZERO),
            Some(_) if self.retired() => self.sweep(Duration::ZERO),
            Some(_) => self.sweep_keeping(Duration::MAX, 1),
        }
    }

    /// Starts instances until `want` are live (never past max_instances or the memory budget).
    fn prestart(self: &Arc<Self>, want: usize) {
        let max = self.version.spec.max_instances as usize;
        let mut st = self.state.lock().unwrap();
        while st.slots.len() < want.min(max) {
            let Ok(reservation) = self.reserve() else {
                break;
            };
            self.begin_instance(&mut st, reservation, 0);
        }
    }

    /// Observes the pool's concurrency now and returns the instances the autoscaler wants.
    fn autoscale(&self) -> usize {
        let live = self.state.lock().unwrap().slots.len();
        let spec = &self.version.spec;
        let now = Instant::now();
        let mut a = self.autoscaler.lock().unwrap();
        a.observe(now, self.concurrency_now());
        a.desired(now, live, spec.concurrency, spec.max_instances as usize)
    }

    /// Requests in flight plus waiting. Every request in flight holds one admission permit, so
    /// the semaphore counts them without taking the pool's lock.
    fn concurrency_now(&self) -> f64 {
        let taken = self.max_permits - self.permits.available_permits();
        (taken + self.waiting.load(Ordering::Relaxed)) as f64
    }

    /// Whether a newer version took over (or the pool closed): nothing is pre-warmed for it.
    fn retired(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.preloaded_retired.load(Ordering::Relaxed)
    }

    fn spawn_keeper(self: Arc<Self>) {
        let keep_alive = self.version.spec.keep_alive();
        // Once a second at most, for the autoscaler's one-second buckets.
        let tick = (keep_alive / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let weak = Arc::downgrade(&self);
        self.sweep(keep_alive);
        drop(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(pool) = weak.upgrade() else { return };
                if pool.closed.load(Ordering::Relaxed) {
                    return;
                }
                pool.keep();
            }
        });
    }
}

impl Evictable for Pool {
    /// The idle instance an eviction would stop here (when above `min_instances`): when it was
    /// last used, and its slot.
    fn oldest_evictable(&self) -> Option<(Instant, u64)> {
        let min = self.min_instances.load(Ordering::Relaxed);
        let st = self.state.lock().unwrap();
        if st.slots.len() <= min {
            return None;
        }
        st.slots
            .iter()
            .filter(|s| s.in_flight == 0 && s._reservation.is_some())
            .filter(|s| matches!(s.state, SlotState::Ready(_)))
            .map(|s| (s.last_used, s.id))
            .min()
    }

    /// Stops an idle instance to make room under the memory budget; false if it is busy now.
    fn evict(&self, slot: u64) -> bool {
        let removed = {
            let mut st = self.state.lock().unwrap();
            let pos = st.slots.iter().position(|s| {
                s.id == slot && s.in_flight == 0 && matches!(s.state, SlotState::Ready(_))
            });
            pos.map(|p| st.slots.remove(p))
        };
        let Some(slot) = removed else { return false };
        if let SlotState::Ready(i) = &slot.state {
            tracing::info!(function = %self.version.name, version = self.version.version, instance = i.id(), "idle instance stopped to make room under the memory budget");
            i.log_platform(
                None,
                "instance stopped to make room under the node's memory budget",
            );
        }
        self.metrics
            .evicted(&self.version.namespace, &self.version.spec);
        true
    }
}

/// Why a slot could not be had.
#[derive(Debug)]
pub enum AcquireError {
    /// Admission refused the request (queue full, waited too long, pool closed).
    Refused(ApiError),
    /// The instance the request waited for failed to start.
    Start(InvokeError),
}

/// Admission, starts, failures and eviction, behind a starter whose instances are plain
/// in-memory objects.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeStarter;
    use petrel_core::Manifest;

    fn pool_with(
        name: &str,
        manifest: &str,
        starter: Arc<FakeStarter>,
        budget: Arc<MemoryBudget>,
    ) -> Arc<Pool> {
        let spec = Manifest::from_toml(&format!(
            "name = \"{name}\"\nruntime = \"http\"\nhandler = \"server\"\n{manifest}"
        ))
        .unwrap()
        .validate()
        .unwrap();
        let min = spec.min_instances as usize;
        let version = Arc::new(DeployedVersion {
            namespace: "default".into(),
            name: name.into(),
            version: 1,
            digest: "d".into(),
            spec: Arc::new(spec),
            code_dir: "/nonexistent".into(),
        });
        Pool::new(
            version,
            starter,
            Arc::default(),
            budget,
            Arc::default(),
            min,
        )
    }

    fn pool(manifest: &str, starter: Arc<FakeStarter>) -> Arc<Pool> {
        pool_with("f", manifest, starter, Arc::default())
    }

    fn refused(r: Result<Lease, AcquireError>) -> ErrorCode {
        match r {
            Err(AcquireError::Refused(e)) => e.code,
            Err(AcquireError::Start(e)) => panic!("a start failed: {e}"),
            Ok(_) => panic!("a slot was given"),
        }
    }

    #[tokio::test]
    async fn the_first_request_starts_an_instance_and_the_next_reuses_it() {
        let starter = Arc::new(FakeStarter::default());
        let p = pool("", starter.clone());
        let lease = p.acquire().await.unwrap();
        assert!(lease.cold());
        let first = lease.instance().id().to_owned();
        drop(lease);
        let lease = p.acquire().await.unwrap();
        assert!(!lease.cold());
        assert_eq!(lease.instance().id(), first);
        assert_eq!(starter.started.load(Ordering::SeqCst), 1);
        assert_eq!(p.stats().in_flight, 1);
    }

    #[tokio::test]
    async fn never_more_than_max_instances_and_the_rest_wait_for_a_slot() {
        let starter = Arc::new(FakeStarter::default());
        let p = pool("max_instances = 3\nqueue_size = 100\n", starter.clone());
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(p.acquire().await.unwrap());
        }
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.acquire().await.map(|l| l.instance().id().to_owned()) })
            })
            .collect();
        while p.stats().waiting < 5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(starter.started.load(Ordering::SeqCst), 3);
        // Each slot freed lets one waiter in, onto a warm instance.
        let ids: Vec<String> = held.iter().map(|l| l.instance().id().to_owned()).collect();
        held.clear();
        for w in waiting {
            let id = w.await.unwrap().unwrap();
            assert!(ids.contains(&id), "{id} is not one of {ids:?}");
        }
        assert_eq!(starter.started.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_full_wait_queue_refuses_at_once_with_retry_after() {
        let starter = Arc::new(FakeStarter::default());
        let p = pool("max_instances = 1\nqueue_size = 1\n", starter);
        let held = p.acquire().await.unwrap();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire().await.is_ok() })
        };
        while p.stats().waiting < 1 {
            tokio::task::yield_now().await;
        }
        match p.acquire().await {
            Err(AcquireError::Refused(e)) => {
                assert_eq!(e.code, ErrorCode::TooManyRequests);
                assert_eq!(e.retry_after, Some(1));
                assert!(e.message.contains("queue_size"), "{}", e.message);
            }
            _ => panic!("the third request was not refused"),
        }
        drop(held);
        assert!(
            waiter.await.unwrap(),
            "the queued request got the freed slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_after_queue_timeout() {
        let starter = Arc::new(FakeStarter::default());
        let p = pool("max_instances = 1\nqueue_timeout = \"2s\"\n", starter);
        let _held = p.acquire().await.unwrap();
        let t0 = tokio::time::Instant::now();
        assert_eq!(refused(p.acquire().await), ErrorCode::NoCapacity);
        assert!(t0.elapsed() >= Duration::from_secs(2));
        assert_eq!(p.stats().waiting, 0, "the waiter left the queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_is_told_to_everyone_waiting_for_it_and_leaves_no_slot() {
        let starter = Arc::new(FakeStarter {
            delay: Duration::from_millis(50),
            fail: Some(InvokeError::InitFailed {
                error_type: None,
                message: "boom".into(),
            }),
            ..Default::default()
        });
        // Two requests fit one instance: both wait for the same start.
        let p = pool("concurrency = 2\n", starter.clone());
        let (a, b) = tokio::join!(p.acquire(), p.acquire());
        for r in [a, b] {
            match r {
                Err(AcquireError::Start(InvokeError::InitFailed { message, .. })) => {
                    assert_eq!(message, "boom")
                }
                _ => panic!("the failed start was not reported"),
            }
        }
        assert_eq!(starter.started.load(Ordering::SeqCst), 1);
        assert_eq!(p.stats(), PoolStats::default());
    }

    #[tokio::test]
    async fn a_discarded_instance_leaves_the_pool_and_the_next_request_starts_another() {
        let starter = Arc::new(FakeStarter::default());
        let p = pool("", starter.clone());
        let mut lease = p.acquire().await.unwrap();
        lease.discard_instance();
        assert!(starter.instances.lock().unwrap()[0]
            .killed
            .load(Ordering::SeqCst));
        drop(lease);
        assert_eq!(p.stats().ready, 0);
        let lease = p.acquire().await.unwrap();
        assert!(lease.cold());
        assert_eq!(starter.started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_closed_pool_refuses_as_a_removed_function() {
        let p = pool("", Arc::default());
        p.close();
        assert_eq!(refused(p.acquire().await), ErrorCode::FunctionNotFound);
    }

    #[tokio::test]
    async fn min_instances_start_ahead_of_any_request() {
        let starter = Arc::new(FakeStarter::default());
        let p = pool("min_instances = 2\n", starter.clone());
        while p.stats().ready < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(starter.started.load(Ordering::SeqCst), 2);
        let lease = p.acquire().await.unwrap();
        assert!(!lease.cold(), "the first request found a warm instance");
    }

    #[tokio::test]
    async fn the_memory_budget_evicts_the_idle_instance_of_another_function_never_a_busy_one() {
        let budget = Arc::new(MemoryBudget::default());
        budget.set_limit_mb(128);
        let (sa, sb) = (
            Arc::new(FakeStarter::default()),
            Arc::new(FakeStarter::default()),
        );
        let a = pool_with("a", "memory_mb = 128\n", sa.clone(), budget.clone());
        let b = pool_with("b", "memory_mb = 128\n", sb.clone(), budget.clone());
        drop(a.acquire().await.unwrap()); // a's instance stays warm, idle
        assert_eq!(budget.used_mb(), 128);
        let lease = b.acquire().await.unwrap();
        // a's idle instance made room: its pool let go of it (dropping an instance stops it).
        assert_eq!(a.stats().ready, 0);
        assert_eq!(Arc::strong_count(&sa.instances.lock().unwrap()[0]), 1);
        assert_eq!(budget.used_mb(), 128);
        // b's instance is busy now: nothing can be evicted for a.
        match a.acquire().await {
            Err(AcquireError::Refused(e)) => {
                assert_eq!(e.code, ErrorCode::NoCapacity);
                assert!(e.message.contains("memory budget"), "{}", e.message);
            }
            _ => panic!("a got room held by a busy instance"),
        }
        drop(lease);
        assert_eq!(b.stats().ready, 1, "b keeps its warm instance");
    }
}
