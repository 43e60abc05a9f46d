//! Prometheus metrics of the data plane. Labels are bounded: namespace, function, runtime and
//! outcome of deployed functions, or an error code; never a request id, a path or a name a
//! client made up. Counters are updated off the request's critical work (a few atomic adds);
//! pool gauges are read at scrape time.

use crate::DataPlane;
use petrel_core::api::{AsyncBacklog, AsyncStatus, InvocationOutcome};
use petrel_core::FunctionSpec;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub namespace: String,
    pub function: String,
    pub runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub namespace: String,
    pub function: String,
    pub runtime: String,
    pub outcome: String,
}

/// An invocation's function, the version that ran it (bounded by the versions deployed), and
/// its outcome: what a rollout compares between two versions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionOutcomeLabels {
    pub namespace: String,
    pub function: String,
    pub runtime: String,
    pub version: u32,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub namespace: String,
    pub function: String,
    pub runtime: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub namespace: String,
    pub function: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

fn seconds_histogram() -> Histogram {
    // 100 µs to about 3.3 min.
    Histogram::new(exponential_buckets(0.0001, 2.0, 22))
}

pub struct Metrics {
    registry: Registry,
    invocations: Family<VersionOutcomeLabels, Counter>,
    duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    cold_starts: Family<OutcomeLabels, Counter>,
    cold_start_duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    acquire: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    rejected: Family<CodeLabels, Counter>,
    instances: Family<StateLabels, Gauge>,
    log_lines_dropped: Counter,
    records_dropped: Counter,
    bytes: Family<DirectionLabels, Counter>,
    evictions: Family<FunctionLabels, Counter>,
    cold_start_phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    memory_budget: Family<BudgetLabels, Gauge>,
    async_accepted: Family<FunctionLabels, Counter>,
    async_attempts: Family<OutcomeLabels, Counter>,
    async_finished: Family<StatusLabels, Counter>,
    async_invocations: Family<StatusLabels, Gauge>,
    async_oldest_queued: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    trigger_records: Family<TriggerResultLabels, Counter>,
    trigger_batches: Family<TriggerResultLabels, Counter>,
    trigger_batch_size: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    trigger_batch_duration: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    trigger_lag: Family<TriggerLabels, Gauge>,
    /// Every function's last hour, minute by minute (the console's charts).
    series: crate::series::Series,
}

/// A function's event trigger, by its manifest name (bounded: the deployed manifests').
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub namespace: String,
    pub function: String,
    pub trigger: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerResultLabels {
    namespace: String,
    function: String,
    trigger: String,
    kind: &'static str,
    result: &'static str,
}

fn records_histogram() -> Histogram {
    // 1 to 16384 records.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    namespace: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub namespace: String,
    pub function: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    function: String,
    runtime: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    kind: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<VersionOutcomeLabels, Counter>::default();
        registry.register(
            "petrel_invocations",
            "Invocations that reached a function, by the version that ran them and outcome",
            invocations.clone(),
        );
        let duration = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "petrel_invocation_duration_seconds",
            "Time from taking a slot to the function's answer",
            duration.clone(),
        );
        let cold_starts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "petrel_cold_starts",
            "Instances started, by outcome (success or failure)",
            cold_starts.clone(),
        );
        let cold_start_duration =
            Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "petrel_cold_start_duration_seconds",
            "Time to start an instance until it is ready",
            cold_start_duration.clone(),
        );
        let acquire = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "petrel_pool_acquire_seconds",
            "Time a request waited for a slot: queueing plus its own cold start",
            acquire.clone(),
        );
        let rejected = Family::<CodeLabels, Counter>::default();
        registry.register(
            "petrel_requests_rejected",
            "Requests answered with a Petrel error before reaching a function, by error code",
            rejected.clone(),
        );
        let instances = Family::<StateLabels, Gauge>::default();
        registry.register(
            "petrel_pool",
            "Per function: instances ready and starting, requests in flight and waiting",
            instances.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "petrel_log_lines_dropped",
            "Function log lines dropped because the log writer fell behind",
            log_lines_dropped.clone(),
        );
        let records_dropped = Counter::default();
        registry.register(
            "petrel_invocation_records_dropped",
            "Invocation records dropped because the record writer fell behind",
            records_dropped.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "petrel_bytes",
            "Body bytes to functions (direction=in) and from them (direction=out)",
            bytes.clone(),
        );
        let evictions = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "petrel_evictions",
            "Idle instances stopped to make room under the node's memory budget",
            evictions.clone(),
        );
        let cold_start_phases =
            Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "petrel_cold_start_phase_seconds",
            "Cold starts split into phases: wait_for_slot (queued for capacity), start (process or component), init (until ready), first_response (the first request's call)",
            cold_start_phases.clone(),
        );
        let memory_budget = Family::<BudgetLabels, Gauge>::default();
        registry.register(
            "petrel_memory_budget_mib",
            "The node's memory budget (kind=limit) and what live instances hold of it (kind=used)",
            memory_budget.clone(),
        );
        let async_accepted = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "petrel_async_accepted",
            "Async invocations committed to the queue and answered 202",
            async_accepted.clone(),
        );
        let async_attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "petrel_async_attempts",
            "Async attempts run, by outcome: succeeded, retry (failed, may run again) or fail (cannot succeed)",
            async_attempts.clone(),
        );
        let async_invocations = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "petrel_async_invocations",
            "Async invocations now queued, running or dead (in the dead-letter list), in the store every server shares",
            async_invocations.clone(),
        );
        let async_oldest_queued =
            Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "petrel_async_oldest_queued_age_seconds",
            "Age of the oldest queued async invocation (a retry waiting for its backoff included)",
            async_oldest_queued.clone(),
        );
        let trigger_records = Family::<TriggerResultLabels, Counter>::default();
        registry.register(
            "petrel_trigger_records",
            "Records of event triggers, by what became of them: in (read from the source), delivered (a successful invocation took them), failed (in a failed invocation), dead (given to on_failure)",
            trigger_records.clone(),
        );
        let trigger_batches = Family::<TriggerResultLabels, Counter>::default();
        registry.register(
            "petrel_trigger_batches",
            "Invocations of event triggers' batches, by result (success or failure)",
            trigger_batches.clone(),
        );
        let trigger_batch_size =
            Family::new_with_constructor(records_histogram as fn() -> Histogram);
        registry.register(
            "petrel_trigger_batch_size",
            "Records per invocation of an event trigger",
            trigger_batch_size.clone(),
        );
        let trigger_batch_duration =
            Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "petrel_trigger_batch_duration_seconds",
            "Time an event trigger's batch took, from its invocation to its answer",
            trigger_batch_duration.clone(),
        );
        let trigger_lag = Family::<TriggerLabels, Gauge>::default();
        registry.register(
            "petrel_trigger_lag",
            "Records of an event trigger's source not yet processed (Kafka: end offsets less committed positions; JetStream: pending)",
            trigger_lag.clone(),
        );
        let async_finished = Family::<StatusLabels, Counter>::default();
        registry.register(
            "petrel_async_finished",
            "Async invocations that ended, by status: succeeded, failed or dead (dead-lettered)",
            async_finished.clone(),
        );
        Self {
            async_attempts,
            async_finished,
            async_invocations,
            async_oldest_queued,
            async_accepted,
            trigger_records,
            trigger_batches,
            trigger_batch_size,
            trigger_batch_duration,
            trigger_lag,
            series: Default::default(),
            cold_start_phases,
            evictions,
            memory_budget,
            bytes,
            records_dropped,
            registry,
            invocations,
            duration,
            cold_starts,
            cold_start_duration,
            acquire,
            rejected,
            instances,
            log_lines_dropped,
        }
    }
}

fn function_labels(namespace: &str, spec: &FunctionSpec) -> FunctionLabels {
    FunctionLabels {
        namespace: namespace.to_owned(),
        function: spec.name.clone(),
        runtime: spec.runtime.to_string(),
    }
}

fn outcome_labels(namespace: &str, spec: &FunctionSpec, outcome: &str) -> OutcomeLabels {
    OutcomeLabels {
        namespace: namespace.to_owned(),
        function: spec.name.clone(),
        runtime: spec.runtime.to_string(),
        outcome: outcome.to_owned(),
    }
}

impl Metrics {
    pub fn invocation(
        &self,
        (namespace, version): (&str, u32),
        spec: &FunctionSpec,
        outcome: InvocationOutcome,
        took: Option<Duration>,
    ) {
        self.invocations
            .get_or_create(&VersionOutcomeLabels {
                namespace: namespace.to_owned(),
                function: spec.name.clone(),
                runtime: spec.runtime.to_string(),
                version,
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
        if let Some(d) = took {
            self.duration
                .get_or_create(&function_labels(namespace, spec))
                .observe(d.as_secs_f64());
        }
        self.series.record(
            (namespace, &spec.name),
            outcome == InvocationOutcome::Success,
            took,
            spec.memory_mb,
            crate::series::now_minute(),
        );
    }

    /// Every function's last hour on this node.
    pub fn series(&self) -> &crate::series::Series {
        &self.series
    }

    pub fn cold_start(&self, namespace: &str, spec: &FunctionSpec, ok: bool, took: Duration) {
        let outcome = if ok { "success" } else { "failure" };
        self.cold_starts
            .get_or_create(&outcome_labels(namespace, spec, outcome))
            .inc();
        self.cold_start_duration
            .get_or_create(&function_labels(namespace, spec))
            .observe(took.as_secs_f64());
    }

    /// One phase of a cold start (see `petrel_cold_start_phase_seconds`).
    pub fn cold_start_phase(
        &self,
        namespace: &str,
        spec: &FunctionSpec,
        phase: &'static str,
        took: Duration,
    ) {
        self.cold_start_phases
            .get_or_create(&PhaseLabels {
                namespace: namespace.to_owned(),
                function: spec.name.clone(),
                runtime: spec.runtime.to_string(),
                phase,
            })
            .observe(took.as_secs_f64());
    }

    pub fn evicted(&self, namespace: &str, spec: &FunctionSpec) {
        self.evictions
            .get_or_create(&function_labels(namespace, spec))
            .inc();
    }

    /// Sets the memory budget gauges (at scrape time).
    pub fn memory_budget(&self, limit_mb: u64, used_mb: u64) {
        let limit = i64::try_from(limit_mb).unwrap_or(i64::MAX);
        self.memory_budget
            .get_or_create(&BudgetLabels { kind: "limit" })
            .set(limit);
        self.memory_budget
            .get_or_create(&BudgetLabels { kind: "used" })
            .set(used_mb as i64);
    }

    pub fn acquired(&self, namespace: &str, spec: &FunctionSpec, waited: Duration) {
        self.acquire
            .get_or_create(&function_labels(namespace, spec))
            .observe(waited.as_secs_f64());
    }

    /// Body bytes that went to (`in`) or came from (`out`) a function.
    pub fn bytes(&self, namespace: &str, spec: &FunctionSpec, direction: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.bytes
            .get_or_create(&DirectionLabels {
                namespace: namespace.to_owned(),
                function: spec.name.clone(),
                runtime: spec.runtime.to_string(),
                direction: direction.to_owned(),
            })
            .inc_by(n);
    }

    /// `n` records of trigger `t` became `result` (`in`, `delivered`, `failed` or `dead`).
    pub fn trigger_records(&self, t: &TriggerLabels, result: &'static str, n: u64) {
        if n > 0 {
            self.trigger_records
                .get_or_create(&TriggerResultLabels {
                    namespace: t.namespace.clone(),
                    function: t.function.clone(),
                    trigger: t.trigger.clone(),
                    kind: t.kind,
                    result,
                })
                .inc_by(n);
        }
    }

    /// One invocation of a batch of `size` records ended after `took`.
    pub fn trigger_batch(&self, t: &TriggerLabels, ok: bool, size: usize, took: Duration) {
        self.trigger_batches
            .get_or_create(&TriggerResultLabels {
                namespace: t.namespace.clone(),
                function: t.function.clone(),
                trigger: t.trigger.clone(),
                kind: t.kind,
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        self.trigger_batch_size
            .get_or_create(t)
            .observe(size as f64);
        self.trigger_batch_duration
            .get_or_create(t)
            .observe(took.as_secs_f64());
    }

    pub fn trigger_lag(&self, t: &TriggerLabels, lag: u64) {
        self.trigger_lag.get_or_create(t).set(lag as i64);
    }

    pub fn async_accepted(&self, namespace: &str, spec: &FunctionSpec) {
        self.async_accepted
            .get_or_create(&function_labels(namespace, spec))
            .inc();
    }

    /// An async attempt ended: `outcome` is its verdict (`succeeded`, `retry` or `fail`).
    pub fn async_attempt(&self, namespace: &str, spec: &FunctionSpec, outcome: &str) {
        self.async_attempts
            .get_or_create(&outcome_labels(namespace, spec, outcome))
            .inc();
    }

    pub fn async_finished(&self, namespace: &str, function: &str, status: AsyncStatus) {
        self.async_finished
            .get_or_create(&StatusLabels {
                namespace: namespace.to_owned(),
                function: function.to_owned(),
                status: status.as_str().to_owned(),
            })
            .inc();
    }

    pub fn rejected(&self, code: petrel_core::ErrorCode) {
        self.rejected
            .get_or_create(&CodeLabels {
                code: code.as_str().to_owned(),
            })
            .inc();
    }

    /// The metrics in the Prometheus (OpenMetrics) text format, with pool gauges read now, the
    /// async queue's depth as the store reported it (`None`: the store did not answer, and the
    /// queue's gauges are left out rather than shown stale), and the log lines the log writer
    /// dropped so far.
    pub fn render(
        &self,
        dp: &DataPlane,
        backlog: Option<&[AsyncBacklog]>,
        log_lines_dropped: u64,
    ) -> String {
        self.async_invocations.clear();
        self.async_oldest_queued.clear();
        let now = petrel_core::now_ms();
        for b in backlog.unwrap_or_default() {
            self.async_invocations
                .get_or_create(&StatusLabels {
                    namespace: b.namespace.clone(),
                    function: b.function.clone(),
                    status: b.status.as_str().to_owned(),
                })
                .set(b.count as i64);
            if b.status == AsyncStatus::Queued {
                self.async_oldest_queued
                    .get_or_create(&QueueLabels {
                        namespace: b.namespace.clone(),
                        function: b.function.clone(),
                    })
                    .set((now - b.oldest_created_at).max(0) as f64 / 1000.0);
            }
        }
        self.instances.clear();
        for (namespace, function, _version, s) in dp.pool_stats() {
            for (state, v) in [
                ("ready", s.ready as i64),
                ("starting", s.starting as i64),
                ("in_flight", s.in_flight as i64),
                ("waiting", s.waiting as i64),
            ] {
                self.instances
                    .get_or_create(&StateLabels {
                        namespace: namespace.clone(),
                        function: function.clone(),
                        state: state.to_owned(),
                    })
                    .inc_by(v);
            }
        }
        let budget = dp.memory_budget();
        self.memory_budget(budget.limit_mb(), budget.used_mb());
        let counted = self.log_lines_dropped.get();
        if log_lines_dropped > counted {
            self.log_lines_dropped.inc_by(log_lines_dropped - counted);
        }
        let dropped = dp.records_dropped();
        let counted = self.records_dropped.get();
        if dropped > counted {
            self.records_dropped.inc_by(dropped - counted);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
