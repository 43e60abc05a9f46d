//! The last hour of every function on this node, minute by minute, for the console's charts:
//! invocations, errors (every outcome but success), the 99th percentile of durations and
//! GB-seconds. Kept in memory, only for functions invoked in the last hour: 60 minutes × 88
//! bytes (a stamp, two counters, MB·ms, 16 duration buckets) = 5.2 KiB per such function. Recording takes no lock but a
//! shared read of the function map (a write the first time a function is seen in the hour);
//! every counter is an atomic.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

const MINUTES: usize = 60;
const BUCKETS: usize = 16;
/// Upper bound of the first duration bucket; each next one doubles (the last: 8.2 s, then
/// everything above).
const FIRST_BUCKET_MS: f64 = 0.25;

#[derive(Default)]
struct Minute {
    /// The minute (since the epoch) plus one that the counters hold; 0: none.
    stamp: AtomicU64,
    invocations: AtomicU32,
    errors: AtomicU32,
    /// Memory × time, in MB·ms (GB-seconds × 1,024,000).
    mb_ms: AtomicU64,
    buckets: [AtomicU32; BUCKETS],
}

struct FunctionSeries {
    minutes: [Minute; MINUTES],
}

impl Default for FunctionSeries {
    fn default() -> Self {
        Self {
            minutes: std::array::from_fn(|_| Minute::default()),
        }
    }
}

/// One function's hour, oldest minute first, as the API answers it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunctionHour {
    /// The first minute's start, in ms since the epoch.
    pub start_ms: i64,
    pub invocations: Vec<u32>,
    pub errors: Vec<u32>,
    /// The 99th percentile of the minute's durations (a bucket's upper bound), in ms; null when
    /// nothing ran with a duration.
    pub p99_ms: Vec<Option<f64>>,
    /// GB-seconds per minute (memory_mb / 1024 × seconds run), as metering counts them.
    pub gb_seconds: Vec<f64>,
}

#[derive(Default)]
pub struct Series {
    /// By namespace, then function: looked up by `&str`, so recording allocates nothing.
    functions: RwLock<HashMap<String, HashMap<String, Arc<FunctionSeries>>>>,
}

fn bucket(took: Duration) -> usize {
    let ms = took.as_secs_f64() * 1000.0;
    let mut bound = FIRST_BUCKET_MS;
    for i in 0..BUCKETS - 1 {
        if ms <= bound {
            return i;
        }
        bound *= 2.0;
    }
    BUCKETS - 1
}

fn upper_bound_ms(bucket: usize) -> f64 {
    FIRST_BUCKET_MS * 2f64.powi(bucket as i32)
}

impl Series {
    /// Counts one invocation that ended at minute `now_min`.
    pub fn record(
        &self,
        (namespace, function): (&str, &str),
        ok: bool,
        took: Option<Duration>,
        memory_mb: u32,
        now_min: u64,
    ) {
        let existing = self
            .functions
            .read()
            .unwrap()
            .get(namespace)
            .and_then(|fs| fs.get(function))
            .cloned();
        let f = match existing {
            Some(f) => f,
            None => self
                .functions
                .write()
                .unwrap()
                .entry(namespace.to_owned())
                .or_default()
                .entry(function.to_owned())
                .or_default()
                .clone(),
        };
        let m = &f.minutes[now_min as usize % MINUTES];
        let stamp = now_min + 1;
        if m.stamp.load(Relaxed) != stamp && m.stamp.swap(stamp, Relaxed) != stamp {
            // An hour-old minute: start it again (a count racing with the reset may be lost).
            m.invocations.store(0, Relaxed);
            m.errors.store(0, Relaxed);
            m.mb_ms.store(0, Relaxed);
            for b in &m.buckets {
                b.store(0, Relaxed);
            }
        }
        m.invocations.fetch_add(1, Relaxed);
        if !ok {
            m.errors.fetch_add(1, Relaxed);
        }
        if let Some(d) = took {
            m.buckets[bucket(d)].fetch_add(1, Relaxed);
            // Billed as metering bills: whole milliseconds, at least one.
            let ms = (d.as_micros() as u64).div_ceil(1000).max(1);
            m.mb_ms.fetch_add(ms * memory_mb as u64, Relaxed);
        }
    }

    /// The last hour (ending at minute `now_min`) of every function of `namespace` invoked in
    /// it; the others are forgotten.
    pub fn hour(&self, namespace: &str, now_min: u64) -> BTreeMap<String, FunctionHour> {
        let first = now_min + 1 - MINUTES as u64;
        self.forget_idle(first);
        let all = self.functions.read().unwrap();
        let Some(functions) = all.get(namespace) else {
            return BTreeMap::new();
        };
        functions
            .iter()
            .map(|(name, f)| (name.clone(), f.hour(first)))
            .collect()
    }

    /// Drops the functions with no minute at or after `first`.
    fn forget_idle(&self, first: u64) {
        let idle = |f: &FunctionSeries| f.minutes.iter().all(|m| m.stamp.load(Relaxed) <= first);
        let any_idle = self
            .functions
            .read()
            .unwrap()
            .values()
            .any(|fs| fs.values().any(|f| idle(f)));
        if any_idle {
            let mut w = self.functions.write().unwrap();
            for fs in w.values_mut() {
                fs.retain(|_, f| !idle(f));
            }
            w.retain(|_, fs| !fs.is_empty());
        }
    }
}

impl FunctionSeries {
    /// The hour starting at minute `first`, oldest minute first.
    fn hour(&self, first: u64) -> FunctionHour {
        let mut hour = FunctionHour {
            start_ms: (first * 60_000) as i64,
            invocations: vec![0; MINUTES],
            errors: vec![0; MINUTES],
            p99_ms: vec![None; MINUTES],
            gb_seconds: vec![0.0; MINUTES],
        };
        for i in 0..MINUTES {
            let minute = first + i as u64;
            let m = &self.minutes[minute as usize % MINUTES];
            if m.stamp.load(Relaxed) != minute + 1 {
                continue;
            }
            hour.invocations[i] = m.invocations.load(Relaxed);
            hour.errors[i] = m.errors.load(Relaxed);
            hour.gb_seconds[i] = m.mb_ms.load(Relaxed) as f64 / 1_024_000.0;
            let counts: Vec<u32> = m.buckets.iter().map(|b| b.load(Relaxed)).collect();
            let total: u64 = counts.iter().map(|&c| c as u64).sum();
            let want = (total * 99).div_ceil(100);
            let mut seen = 0;
            hour.p99_ms[i] = counts.iter().enumerate().find_map(|(b, &c)| {
                seen += c as u64;
                (total > 0 && seen >= want).then(|| upper_bound_ms(b))
            });
        }
        hour
    }
}

/// The current minute since the epoch.
pub fn now_minute() -> u64 {
    (petrel_core::now_ms().max(0) / 60_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_counts_per_minute_and_forgets_what_is_older() {
        let s = Series::default();
        let ms = Duration::from_millis;
        for _ in 0..98 {
            s.record(("default", "f"), true, Some(ms(1)), 1024, 1000);
        }
        s.record(("default", "f"), false, Some(ms(50)), 1024, 1000);
        s.record(("default", "f"), false, Some(ms(3000)), 1024, 1000);
        s.record(("default", "f"), true, Some(ms(1)), 1024, 1001);
        s.record(("other", "g"), true, None, 1024, 1001);

        let h = s.hour("default", 1001);
        assert_eq!(h.len(), 1, "only the namespace asked for");
        let f = &h["f"];
        assert_eq!(f.start_ms, (1001 - 59) * 60_000);
        assert_eq!(f.invocations[58..], [100, 1]);
        assert_eq!(f.errors[58..], [2, 0]);
        // 100 calls: the 99th is the 50 ms one, in the (32, 64] ms bucket.
        assert_eq!(f.p99_ms[58..], [Some(64.0), Some(1.0)]);
        assert!(f.invocations[..58].iter().all(|&n| n == 0));
        // 1 GB for 98 × 1 ms + 50 ms + 3000 ms.
        assert!(
            (f.gb_seconds[58] - 3.148).abs() < 1e-9,
            "{:?}",
            f.gb_seconds[58]
        );

        // An hour later minute 1000's slot is reused, and a function silent for an hour goes.
        s.record(("default", "f"), true, Some(ms(1)), 1024, 1060);
        let h = s.hour("default", 1060);
        assert_eq!(h["f"].invocations[59], 1);
        assert_eq!(
            h["f"].invocations.iter().sum::<u32>(),
            2,
            "minutes 1001 and 1060"
        );
        assert!(s.hour("other", 1062).is_empty());
        assert!(s.functions.read().unwrap().get("other").is_none());
    }
}
