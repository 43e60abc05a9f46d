//! Keep-alive policies: `fixed` (stop an idle instance after `keep_alive`) and `hybrid`, the
//! hybrid-histogram policy of "Serverless in the Wild" (Shahrad et al., ATC'20).
//!
//! `hybrid` keeps, per function, a histogram of idle times (the time from the end of one
//! invocation to the start of the next) in 1-minute bins over 4 hours. Once it is
//! representative, after each invocation the function's instances are stopped at once and one is
//! pre-warmed at the histogram's 5th percentile (minus a 10% margin) and kept until its 99th
//! (plus 10%). While it is not representative (too few idle times, or most of them beyond 4
//! hours) the policy falls back to the fixed keep-alive.
//!
//! The same code drives the pools and the policy simulator ([`simulate`]), on virtual time.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bins of the idle-time histogram: 1 minute each, 4 hours in all.
pub const BINS: usize = 240;
const BIN: Duration = Duration::from_secs(60);
/// Idle times needed before the histogram is trusted.
const MIN_SAMPLES: u32 = 10;
/// Share of idle times that must fall inside the range for the histogram to be trusted.
const MIN_IN_RANGE: f64 = 0.5;
/// Histograms whose bin counts vary less than this (coefficient of variation) show no pattern
/// (the paper's test), nor do those within twice the CV that chance alone gives their samples.
const MIN_CV: f64 = 2.0;

/// What to do after an invocation ends, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Keep no instance for this long after the end (0: keep the instance right away).
    pub prewarm: Duration,
    /// Then keep one for this long.
    pub keep_alive: Duration,
}

/// The learned idle-time histogram of one function. Serialisable, so it survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleHistogram {
    /// Counts per 1-minute bin (`bins[i]`: idle times in [i, i+1) minutes).
    pub bins: Vec<u32>,
    /// Idle times of 4 hours or more.
    pub out_of_range: u32,
    /// Sum and sum of squares of the bin counts, kept as idle times come (not saved; derived).
    #[serde(skip)]
    sums: Option<(u64, u64)>,
}

impl Default for IdleHistogram {
    fn default() -> Self {
        Self {
            bins: vec![0; BINS],
            out_of_range: 0,
            sums: None,
        }
    }
}

impl IdleHistogram {
    pub fn record(&mut self, idle: Duration) {
        if self.bins.len() != BINS {
            self.bins.resize(BINS, 0);
        }
        let (mut sum, mut sq) = self.sums();
        let bin = (idle.as_secs() / BIN.as_secs()) as usize;
        match self.bins.get_mut(bin) {
            Some(c) => {
                sum += 1;
                sq += 2 * *c as u64 + 1;
                *c = c.saturating_add(1);
            }
            None => self.out_of_range = self.out_of_range.saturating_add(1),
        }
        self.sums = Some((sum, sq));
    }

    fn sums(&self) -> (u64, u64) {
        self.sums.unwrap_or_else(|| {
            self.bins.iter().fold((0, 0), |(s, q), &c| {
                (s + c as u64, q + (c as u64) * (c as u64))
            })
        })
    }

    pub fn samples(&self) -> u32 {
        self.bins.iter().sum::<u32>() + self.out_of_range
    }

    /// Whether the histogram shows a pattern worth following.
    pub fn representative(&self) -> bool {
        let (in_range, sq) = self.sums();
        let total = in_range + self.out_of_range as u64;
        if total < MIN_SAMPLES as u64 || (in_range as f64) < MIN_IN_RANGE * total as f64 {
            return false;
        }
        let n = self.bins.len() as f64;
        let mean = in_range as f64 / n;
        let var = (sq as f64 / n - mean * mean).max(0.0);
        // A few idle times scattered over 240 bins already give a high CV by chance (about
        // sqrt(bins / samples)): a pattern must stand well clear of that noise too.
        let noise = (n / in_range as f64).sqrt();
        var.sqrt() / mean >= MIN_CV.max(2.0 * noise)
    }

    /// The idle time below which `p` of the in-range idle times fall, at bin granularity:
    /// the lower edge of the bin for the head (pre-warm), the upper edge for the tail.
    fn percentile(&self, p: f64, upper_edge: bool) -> Duration {
        let in_range: u32 = self.bins.iter().sum();
        let want = (p * in_range as f64).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, &c) in self.bins.iter().enumerate() {
            seen += c;
            if seen >= want {
                let edge = if upper_edge { i + 1 } else { i };
                return BIN * edge as u32;
            }
        }
        BIN * self.bins.len() as u32
    }

    /// The hybrid policy's windows, or `None` while the fixed fallback applies.
    pub fn windows(&self) -> Option<Windows> {
        if !self.representative() {
            return None;
        }
        let head = self.percentile(0.05, false).mul_f64(0.9);
        let tail = self.percentile(0.99, true).mul_f64(1.1);
        Some(Windows {
            prewarm: head,
            keep_alive: tail.saturating_sub(head).max(BIN),
        })
    }
}

/// A manifest's keep-alive policy with its fixed duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Fixed(Duration),
    Hybrid { fallback: Duration },
}

impl Policy {
    /// The windows after an invocation ends, for a function with this histogram.
    pub fn windows(&self, hist: &IdleHistogram) -> Windows {
        match self {
            Policy::Fixed(d) => Windows {
                prewarm: Duration::ZERO,
                keep_alive: *d,
            },
            Policy::Hybrid { fallback } => hist.windows().unwrap_or(Windows {
                prewarm: Duration::ZERO,
                keep_alive: *fallback,
            }),
        }
    }
}

// --- the policy simulator ---------------------------------------------------------------------

/// One synthetic application of the workload.
#[derive(Debug, Clone)]
pub struct App {
    /// Invocation start times, seconds from the start, ascending.
    pub arrivals: Vec<f64>,
    /// Execution time of each invocation, seconds.
    pub exec: f64,
    pub memory_mb: f64,
}

/// What a policy cost over a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimResult {
    pub invocations: u64,
    pub cold_starts: u64,
    /// Memory held by instances that were loaded but not running, in GB-seconds.
    pub idle_gb_s: f64,
}

impl SimResult {
    pub fn cold_pct(&self) -> f64 {
        100.0 * self.cold_starts as f64 / self.invocations.max(1) as f64
    }
}

/// Replays `apps` under `policy` on virtual time: one instance per application, loaded while
/// the policy says so; an invocation that finds none loaded is a cold start.
pub fn simulate(apps: &[App], policy: Policy, horizon: f64) -> SimResult {
    let mut r = SimResult::default();
    for app in apps {
        let mut hist = IdleHistogram::default();
        // The instance is loaded over [from, until) after the last invocation ended at `end`.
        let mut end: Option<f64> = None;
        let mut loaded = (0.0f64, 0.0f64);
        for &t in &app.arrivals {
            r.invocations += 1;
            let warm = match end {
                None => false,
                Some(e) if t < e => true, // still running: served by the same instance
                Some(_) => t >= loaded.0 && t < loaded.1,
            };
            if !warm {
                r.cold_starts += 1;
            }
            if let Some(e) = end {
                // Idle memory up to now (or up to where the instance was stopped).
                let from = loaded.0.max(e);
                let until = loaded.1.min(t);
                if until > from {
                    r.idle_gb_s += (until - from) * app.memory_mb / 1024.0;
                }
                if t >= e {
                    hist.record(Duration::from_secs_f64(t - e));
                }
            }
            let e = t + app.exec;
            let w = policy.windows(&hist);
            let start = e + w.prewarm.as_secs_f64();
            loaded = (start, start + w.keep_alive.as_secs_f64());
            end = Some(e);
        }
        if let Some(e) = end {
            let from = loaded.0.max(e);
            let until = loaded.1.min(horizon.max(e));
            if until > from {
                r.idle_gb_s += (until - from) * app.memory_mb / 1024.0;
            }
        }
    }
    r
}

/// A small deterministic random source (xorshift), so the workload is the same on every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).ln()
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next_f64().max(1e-12), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
}

/// A synthetic workload shaped like the Azure Functions trace of the paper: 45% of applications
/// invoked at most once an hour, 81% at most once a minute (the rest more often); about a third
/// on timers (periodic, with jitter), the rest Poisson; execution times log-normal around 1 s,
/// memory log-normal around 170 MB (90% under ~400 MB).
pub fn azure_like(apps: usize, horizon: f64, seed: u64) -> Vec<App> {
    let mut rng = Rng::new(seed);
    (0..apps)
        .map(|_| {
            let u = rng.next_f64();
            // Mean inter-arrival time, seconds.
            let mean_iat = if u < 0.45 {
                3600.0 * (1.0 + 23.0 * rng.next_f64()) // once an hour to once a day
            } else if u < 0.81 {
                60.0 * (1.0 + 59.0 * rng.next_f64()) // once a minute to once an hour
            } else {
                1.0 + 59.0 * rng.next_f64() // more than once a minute
            };
            let periodic = rng.next_f64() < 0.5;
            let mut arrivals = Vec::new();
            let mut t = rng.next_f64() * mean_iat;
            while t < horizon {
                arrivals.push(t);
                t += if periodic {
                    mean_iat * (1.0 + 0.02 * rng.normal())
                } else {
                    rng.exp(mean_iat)
                }
                .max(0.001);
            }
            App {
                arrivals,
                exec: rng.lognormal(1.0, 1.2).min(600.0),
                memory_mb: rng.lognormal(170.0, 0.7).clamp(32.0, 3008.0),
            }
        })
        .collect()
}

/// The simulator's markdown report: `fixed` 10 min against `hybrid` over `apps` synthetic
/// applications and `days` of virtual time, overall and by kind of application.
pub fn report(apps: usize, days: f64, seed: u64) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let horizon = days * 86400.0;
    let workload = azure_like(apps, horizon, seed);
    let fixed = Policy::Fixed(Duration::from_secs(600));
    let hybrid = Policy::Hybrid {
        fallback: Duration::from_secs(600),
    };
    let mut classes: BTreeMap<&str, (SimResult, SimResult, usize)> = BTreeMap::new();
    let add = |a: &mut SimResult, b: SimResult| {
        a.invocations += b.invocations;
        a.cold_starts += b.cold_starts;
        a.idle_gb_s += b.idle_gb_s;
    };
    for app in &workload {
        let n = app.arrivals.len().max(1) as f64;
        let gaps: Vec<f64> = app.arrivals.windows(2).map(|w| w[1] - w[0]).collect();
        let m = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
        let sd =
            (gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len().max(1) as f64).sqrt();
        let periodic = sd < 0.5 * m;
        let class = match (horizon / n, periodic) {
            (x, true) if x <= 60.0 => "more than once a minute, periodic",
            (x, false) if x <= 60.0 => "more than once a minute, random",
            (x, true) if x <= 3600.0 => "minute to hour, periodic",
            (x, false) if x <= 3600.0 => "minute to hour, random",
            (_, true) => "at most hourly, periodic",
            (_, false) => "at most hourly, random",
        };
        let e = classes.entry(class).or_default();
        add(
            &mut e.0,
            simulate(std::slice::from_ref(app), fixed, horizon),
        );
        add(
            &mut e.1,
            simulate(std::slice::from_ref(app), hybrid, horizon),
        );
        e.2 += 1;
    }
    let (mut tf, mut th) = (SimResult::default(), SimResult::default());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{apps} synthetic applications (seed {seed}), {days} days of virtual time\n"
    );
    let _ = writeln!(out, "| applications | count | invocations | cold starts, fixed 10 min | cold starts, hybrid | idle GB-s, fixed | idle GB-s, hybrid |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for (class, (f, h, count)) in &classes {
        add(&mut tf, *f);
        add(&mut th, *h);
        let _ = writeln!(
            out,
            "| {class} | {count} | {} | {:.2}% | {:.2}% | {:.0} | {:.0} |",
            f.invocations,
            f.cold_pct(),
            h.cold_pct(),
            f.idle_gb_s,
            h.idle_gb_s
        );
    }
    let _ = writeln!(
        out,
        "| **all** | {apps} | {} | **{:.2}%** | **{:.2}%** | **{:.0}** | **{:.0}** |",
        tf.invocations,
        tf.cold_pct(),
        th.cold_pct(),
        tf.idle_gb_s,
        th.idle_gb_s
    );
    let _ = writeln!(
        out,
        "\nhybrid ÷ fixed: cold starts {:.2}×, idle memory {:.2}×",
        th.cold_pct() / tf.cold_pct().max(1e-9),
        th.idle_gb_s / tf.idle_gb_s.max(1e-9)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    #[test]
    fn a_sparse_histogram_falls_back_to_the_fixed_keep_alive() {
        let mut h = IdleHistogram::default();
        for _ in 0..5 {
            h.record(min(30));
        }
        assert_eq!(h.windows(), None, "five samples are not a pattern");
        let p = Policy::Hybrid { fallback: min(10) };
        assert_eq!(p.windows(&h).keep_alive, min(10));
        assert_eq!(p.windows(&h).prewarm, Duration::ZERO);
    }

    #[test]
    fn a_periodic_function_is_prewarmed_just_before_its_next_call() {
        let mut h = IdleHistogram::default();
        for i in 0..40 {
            h.record(min(30) + Duration::from_secs(i % 50));
        }
        let w = h.windows().expect("a clear pattern");
        // 5th percentile: the 30-minute bin's lower edge, minus 10%; 99th: its upper edge + 10%.
        assert_eq!(w.prewarm, min(27));
        assert_eq!(w.prewarm + w.keep_alive, Duration::from_secs(31 * 66));
    }

    #[test]
    fn idle_times_beyond_four_hours_make_it_unrepresentative() {
        let mut h = IdleHistogram::default();
        for _ in 0..20 {
            h.record(min(300));
        }
        for _ in 0..5 {
            h.record(min(2));
        }
        assert_eq!(h.out_of_range, 20);
        assert_eq!(h.windows(), None);
    }

    #[test]
    fn hybrid_lowers_cold_starts_and_idle_memory_against_fixed_ten_minutes() {
        let horizon = 3.0 * 86400.0;
        let apps = azure_like(400, horizon, 7);
        let fixed = simulate(&apps, Policy::Fixed(min(10)), horizon);
        let hybrid = simulate(&apps, Policy::Hybrid { fallback: min(10) }, horizon);
        assert_eq!(fixed.invocations, hybrid.invocations);
        assert!(
            hybrid.cold_pct() < fixed.cold_pct(),
            "cold starts: hybrid {:.2}% vs fixed {:.2}%",
            hybrid.cold_pct(),
            fixed.cold_pct()
        );
        assert!(
            hybrid.idle_gb_s < fixed.idle_gb_s,
            "idle memory: hybrid {:.0} vs fixed {:.0} GB-s",
            hybrid.idle_gb_s,
            fixed.idle_gb_s
        );
    }
}
