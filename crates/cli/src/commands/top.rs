//! `petrel top`: a live view of functions, computed from two scrapes of `/metrics` an interval
//! apart: request and error rates, p50/p99 from the duration histogram's buckets, instances,
//! requests in flight and waiting, cold starts.

use crate::client::Client;
use http::Method;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus / OpenMetrics text format (the subset Petrel writes).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

type Key = (String, String);

#[derive(Debug, Default, Clone)]
struct Totals {
    invocations: f64,
    errors: f64,
    cold_starts: f64,
    /// Duration histogram: upper bound -> cumulative count.
    buckets: BTreeMap<u64, f64>,
    ready: f64,
    starting: f64,
    in_flight: f64,
    waiting: f64,
}

fn key(s: &Sample) -> Option<Key> {
    Some((
        s.labels.get("namespace")?.clone(),
        s.labels.get("function")?.clone(),
    ))
}

fn totals(samples: &[Sample]) -> BTreeMap<Key, Totals> {
    let mut out: BTreeMap<Key, Totals> = BTreeMap::new();
    for s in samples {
        let Some(k) = key(s) else { continue };
        let t = out.entry(k).or_default();
        match s.name.as_str() {
            "petrel_invocations_total" => {
                t.invocations += s.value;
                if s.labels.get("outcome").map(String::as_str) != Some("success") {
                    t.errors += s.value;
                }
            }
            "petrel_cold_starts_total" => t.cold_starts += s.value,
            "petrel_invocation_duration_seconds_bucket" => {
                if let Some(le) = s.labels.get("le").and_then(|v| v.parse::<f64>().ok()) {
                    // Keyed in microseconds so the map orders the bounds.
                    *t.buckets.entry((le * 1e6) as u64).or_default() += s.value;
                } else {
                    *t.buckets.entry(u64::MAX).or_default() += s.value;
                }
            }
            "petrel_pool" => match s.labels.get("state").map(String::as_str) {
                Some("ready") => t.ready += s.value,
                Some("starting") => t.starting += s.value,
                Some("in_flight") => t.in_flight += s.value,
                Some("waiting") => t.waiting += s.value,
                _ => {}
            },
            _ => {}
        }
    }
    out
}

/// The bucket bound under which a fraction `q` of the window's invocations finished.
fn quantile(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = after.get(&u64::MAX).copied().unwrap_or(0.0)
        - before.get(&u64::MAX).copied().unwrap_or(0.0);
    if total <= 0.0 {
        return None;
    }
    after.iter().find_map(|(le, n)| {
        let d = n - before.get(le).copied().unwrap_or(0.0);
        (d >= q * total).then_some(if *le == u64::MAX {
            f64::INFINITY
        } else {
            *le as f64 / 1e6
        })
    })
}

fn fmt_latency(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s.is_infinite() => "slow".into(),
        Some(s) if s < 0.001 => format!("≤{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("≤{:.1}ms", s * 1e3),
        Some(s) => format!("≤{s:.1}s"),
    }
}

/// One frame: the functions' activity between two scrapes `secs` apart.
pub fn frame(before: &str, after: &str, secs: f64, namespace: Option<&str>) -> String {
    let (b, a) = (totals(&parse(before)), totals(&parse(after)));
    let mut out = format!(
        "{:<28} {:<10} {:>8} {:>8} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6} {:>8}\n",
        "FUNCTION",
        "NAMESPACE",
        "REQ/S",
        "ERR/S",
        "P50",
        "P99",
        "INST",
        "BUSY",
        "QUEUED",
        "COLD",
        "TOTAL"
    );
    for ((ns, f), t) in &a {
        if namespace.is_some_and(|n| n != ns) {
            continue;
        }
        let p = b.get(&(ns.clone(), f.clone())).cloned().unwrap_or_default();
        out.push_str(&format!(
            "{:<28} {:<10} {:>8.1} {:>8.1} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6} {:>8}\n",
            f,
            ns,
            (t.invocations - p.invocations) / secs,
            (t.errors - p.errors) / secs,
            fmt_latency(quantile(&p.buckets, &t.buckets, 0.5)),
            fmt_latency(quantile(&p.buckets, &t.buckets, 0.99)),
            t.ready + t.starting,
            t.in_flight,
            t.waiting,
            t.cold_starts - p.cold_starts,
            t.invocations,
        ));
    }
    out
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Print one frame (two scrapes an interval apart) and exit.
    #[arg(long)]
    once: bool,
    #[arg(long, short)]
    namespace: Option<String>,
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        interval,
        once,
        namespace,
    } = args;
    let interval = std::time::Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    let scrape = || async {
        let (_, body) = client.call(Method::GET, "/metrics", None).await?;
        anyhow::Ok((
            std::time::Instant::now(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    };
    let mut before = scrape().await?;
    loop {
        tokio::time::sleep(interval).await;
        let after = scrape().await?;
        let secs = after.0.duration_since(before.0).as_secs_f64();
        let text = frame(&before.1, &after.1, secs, namespace.as_deref());
        if once {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        // Clear the screen, then draw.
        print!(
            "\x1b[2J\x1b[H{} (every {:.1}s, Ctrl-C to quit)\n\n{text}",
            client.base(),
            interval.as_secs_f64()
        );
        std::io::stdout().flush()?;
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "petrel_invocations_total{namespace=\"default\",function=\"f\",runtime=\"python3\",outcome=\"success\"} 10
petrel_invocation_duration_seconds_bucket{namespace=\"default\",function=\"f\",runtime=\"python3\",le=\"0.001\"} 5
petrel_invocation_duration_seconds_bucket{namespace=\"default\",function=\"f\",runtime=\"python3\",le=\"0.002\"} 10
petrel_invocation_duration_seconds_bucket{namespace=\"default\",function=\"f\",runtime=\"python3\",le=\"+Inf\"} 10
# EOF
";
    const AFTER: &str = "petrel_invocations_total{namespace=\"default\",function=\"f\",runtime=\"python3\",outcome=\"success\"} 28
petrel_invocations_total{namespace=\"default\",function=\"f\",runtime=\"python3\",outcome=\"timeout\"} 2
petrel_cold_starts_total{namespace=\"default\",function=\"f\",runtime=\"python3\",outcome=\"success\"} 1
petrel_invocation_duration_seconds_bucket{namespace=\"default\",function=\"f\",runtime=\"python3\",le=\"0.001\"} 15
petrel_invocation_duration_seconds_bucket{namespace=\"default\",function=\"f\",runtime=\"python3\",le=\"0.002\"} 29
petrel_invocation_duration_seconds_bucket{namespace=\"default\",function=\"f\",runtime=\"python3\",le=\"+Inf\"} 30
petrel_pool{namespace=\"default\",function=\"f\",state=\"ready\"} 2
petrel_pool{namespace=\"default\",function=\"f\",state=\"in_flight\"} 1
";

    #[test]
    fn a_frame_shows_rates_and_quantiles_of_the_window() {
        let f = frame(BEFORE, AFTER, 2.0, None);
        let row = f.lines().nth(1).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        // 20 invocations in 2 s, 2 of them errors; of the 20: 10 under 1 ms, 19 under 2 ms.
        assert_eq!(
            cols,
            vec!["f", "default", "10.0", "1.0", "≤1.0ms", "slow", "2", "1", "0", "1", "30"],
            "{f}"
        );
    }
}
