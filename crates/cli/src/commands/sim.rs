//! `petrel sim`: the keep-alive policy simulator. A synthetic workload shaped like the Azure
//! Functions trace replayed through the policies (`fixed` 10 minutes and `hybrid`) on virtual
//! time, with the same policy code the pools run; out of the server, which never needs it.

use petrel_server::keepalive::{IdleHistogram, Policy};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Applications in the workload.
    #[arg(long, default_value_t = 1000)]
    pub apps: usize,
    /// Days of virtual time.
    #[arg(long, default_value_t = 3.0)]
    pub days: f64,
    /// Seed of the workload generator (the same seed gives the same workload).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Simulate the cluster's placement instead of the keep-alive policies: warm hits, load
    /// spread and re-homing, routed by rendezvous hashing against a random node.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: the cluster sizes to simulate.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000])]
    pub nodes: Vec<usize>,
}

/// The workload's bounds, checked before either simulation.
pub(crate) fn check(apps: usize, days: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        apps > 0 && days > 0.0 && days <= 60.0,
        "use --apps of at least 1 and --days between 0 and 60"
    );
    Ok(())
}

pub(crate) fn run(
    Args {
        apps, days, seed, ..
    }: Args,
) -> anyhow::Result<ExitCode> {
    check(apps, days)?;
    print!("{}", report(apps, days, seed));
    Ok(ExitCode::SUCCESS)
}

/// One synthetic application of the workload.
#[derive(Debug, Clone)]
pub(crate) struct App {
    /// Invocation start times, seconds from the start, ascending.
    pub arrivals: Vec<f64>,
    /// Execution time of each invocation, seconds.
    pub exec: f64,
    pub memory_mb: f64,
}

/// What a policy cost over a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct SimResult {
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
pub(crate) fn simulate(apps: &[App], policy: Policy, horizon: f64) -> SimResult {
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
pub(crate) struct Rng(u64);

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
pub(crate) fn azure_like(apps: usize, horizon: f64, seed: u64) -> Vec<App> {
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
pub(crate) fn report(apps: usize, days: f64, seed: u64) -> String {
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
