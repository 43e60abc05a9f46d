//! The pool of one function version: its instances, their concurrency slots, the bounded wait
//! queue, and the keep-alive that stops idle instances.
//!
//! Admission is a semaphore holding `max_instances × concurrency` permits: a request that holds a
//! permit is guaranteed a slot, either in a warm or starting instance or in a new one, so the pool
//! never starts more than `max_instances`. A request without a permit waits in a queue of at most
//! `queue_size` for at most `queue_timeout`. An instance is started by a task of its own, so a
//! caller that goes away does not waste the start, and every request waiting for that instance is
//! told the same outcome.

use crate::DeployedVersion;
use petrel_core::{ApiError, ErrorCode};
use petrel_runtime::{Instance, InstanceSpec, InvokeError, RuntimeEnv};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

type StartResult = Option<Result<Arc<Instance>, InvokeError>>;

enum SlotState {
    Starting(watch::Receiver<StartResult>),
    Ready(Arc<Instance>),
}

struct Slot {
    id: u64,
    state: SlotState,
    in_flight: u32,
    last_used: Instant,
}

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
    env: RuntimeEnv,
    metrics: Arc<crate::metrics::Metrics>,
    state: Mutex<PoolState>,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Keep this many instances warm (the latest version's `min_instances`; 0 once retired).
    min_instances: AtomicUsize,
    closed: AtomicBool,
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
    instance: Arc<Instance>,
    broken: bool,
    cold: bool,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Whether the request waited for its instance to start (a cold start).
    pub fn cold(&self) -> bool {
        self.cold
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
    }
}

impl Pool {
    pub fn new(
        version: Arc<DeployedVersion>,
        env: RuntimeEnv,
        metrics: Arc<crate::metrics::Metrics>,
        min_instances: usize,
    ) -> Arc<Self> {
        let spec = &version.spec;
        let permits = (spec.max_instances as usize) * (spec.concurrency as usize);
        let pool = Arc::new(Self {
            version,
            env,
            metrics,
            state: Mutex::new(PoolState::default()),
            permits: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            min_instances: AtomicUsize::new(min_instances),
            closed: AtomicBool::new(false),
        });
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

    /// Stops keeping instances warm (a newer version took over): idle ones go at the next sweep.
    pub fn retire(self: &Arc<Self>) {
        self.min_instances.store(0, Ordering::Relaxed);
        self.sweep(Duration::ZERO);
    }

    /// Closes the pool: waiters are refused, idle instances stop now, busy ones after their request.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.permits.close();
        self.min_instances.store(0, Ordering::Relaxed);
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
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(AcquireError::Refused(self.gone()))
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => self.wait_for_permit().await?,
        };
        let (slot_id, state) = self.take_slot();
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

    /// With a permit held: picks the fullest instance that has a free slot (so the others can go
    /// idle and be stopped), preferring ready ones, or begins a new instance.
    fn take_slot(self: &Arc<Self>) -> (u64, Result<Arc<Instance>, watch::Receiver<StartResult>>) {
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
            return (s.id, r);
        }
        let id = st.next_id;
        st.next_id += 1;
        let rx = self.clone().start_instance(id);
        st.slots.push(Slot {
            id,
            state: SlotState::Starting(rx.clone()),
            in_flight: 1,
            last_used: Instant::now(),
        });
        (id, Err(rx))
    }

    fn start_instance(self: Arc<Self>, slot: u64) -> watch::Receiver<StartResult> {
        let (tx, rx) = watch::channel(None);
        let spec = InstanceSpec {
            namespace: self.version.namespace.clone(),
            function: self.version.name.clone(),
            version: self.version.version,
            spec: self.version.spec.clone(),
            code_dir: self.version.code_dir.clone(),
        };
        tokio::spawn(async move {
            let t0 = Instant::now();
            let result = Instance::start(&self.env, spec).await.map(Arc::new);
            self.metrics.cold_start(
                &self.version.namespace,
                &self.version.spec,
                result.is_ok(),
                t0.elapsed(),
            );
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
        let min = self.min_instances.load(Ordering::Relaxed);
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
            let id = st.next_id;
            st.next_id += 1;
            let rx = self.clone().start_instance(id);
            st.slots.push(Slot {
                id,
                state: SlotState::Starting(rx),
                in_flight: 0,
                last_used: Instant::now(),
            });
            live += 1;
        }
    }

    fn spawn_keeper(self: Arc<Self>) {
        let keep_alive = self.version.spec.keep_alive();
        let tick = (keep_alive / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
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
                pool.sweep(keep_alive);
            }
        });
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
