//! `petrel sim --cluster`: the cluster's placement (rendezvous hashing with bounded load, the
//! spill to the next node, re-homing when a node leaves or joins), with the same code as the
//! server (`petrel_core::cluster`), over the synthetic Azure-shaped workload of `petrel sim`, for
//! any number of nodes and functions. Each invocation lands on a random node (a load balancer in
//! front); routed, it runs at its function's home; unrouted, where it landed.

use super::sim::App;
use petrel_core::cluster::{place, stable_hash, LoadBound, Ring};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// How long an idle instance stays warm (the `fixed` policy's 10 minutes).
const KEEP_ALIVE: f64 = 600.0;

/// What one way of placing cost over a workload.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Placement {
    pub invocations: u64,
    pub warm: u64,
    pub started: u64,
    /// The busiest node's invocations over the mean.
    pub spread: f64,
    /// Invocations the bounded load sent past their home.
    pub spilled: u64,
}

impl Placement {
    pub fn warm_pct(&self) -> f64 {
        100.0 * self.warm as f64 / self.invocations.max(1) as f64
    }
}

/// Replays `apps` on `nodes` nodes, routed (`true`) or not.
pub(crate) fn replay(apps: &[App], nodes: usize, routed: bool, seed: u64) -> Placement {
    let ids: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
    let ring = Ring::new(ids.iter().map(String::as_str));
    let keys: Vec<u64> = (0..apps.len())
        .map(|i| stable_hash(&format!("default/fn-{i}")))
        .collect();
    // Every invocation in time order.
    let mut events: Vec<(f64, u32)> = apps
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.arrivals.iter().map(move |t| (*t, i as u32)))
        .collect();
    events.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let bound = LoadBound::default();
    let mut rng = seed | 1;
    let mut load = vec![0u64; nodes];
    let mut served = vec![0u64; nodes];
    let mut total_load = 0u64;
    let mut running: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    // (node, function) → when its instance goes cold.
    let mut warm_until: HashMap<(u32, u32), f64> = HashMap::new();
    let mut r = Placement::default();
    for (t, f) in events {
        let now = (t * 1000.0) as u64;
        while let Some(Reverse((end, n))) = running.peek().copied() {
            if end > now {
                break;
            }
            running.pop();
            load[n] -= 1;
            total_load -= 1;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let landed = (rng % nodes as u64) as usize;
        let node = if routed {
            let order = ring.rank(keys[f as usize], nodes.min(4));
            let limit = bound.limit(total_load, nodes);
            let chosen = place(&order, &load, limit, 1).unwrap_or(landed);
            if chosen != order[0] {
                r.spilled += 1;
            }
            chosen
        } else {
            landed
        };
        let exec = apps[f as usize].exec;
        r.invocations += 1;
        served[node] += 1;
        let until = warm_until.entry((node as u32, f)).or_insert(f64::MIN);
        if *until >= t {
            r.warm += 1;
        } else {
            r.started += 1;
        }
        *until = until.max(t + exec + KEEP_ALIVE);
        load[node] += 1;
        total_load += 1;
        running.push(Reverse((((t + exec) * 1000.0) as u64, node)));
    }
    let mean = r.invocations as f64 / nodes as f64;
    r.spread = served.iter().copied().max().unwrap_or(0) as f64 / mean.max(1e-9);
    r
}

/// The share of `functions` whose home moves when one of `nodes` nodes leaves, and when one
/// joins.
pub(crate) fn rehoming(nodes: usize, functions: usize) -> (f64, f64) {
    let ids: Vec<String> = (0..=nodes).map(|i| format!("node-{i}")).collect();
    let now = Ring::new(ids[..nodes].iter().map(String::as_str));
    let less = Ring::new(ids[1..nodes].iter().map(String::as_str));
    let more = Ring::new(ids.iter().map(String::as_str));
    let (mut left, mut joined) = (0u64, 0u64);
    for f in 0..functions {
        let key = stable_hash(&format!("default/fn-{f}"));
        let home = now.first(key).unwrap();
        if home == 0 || less.first(key).map(|i| i + 1) != Some(home) {
            left += 1;
        }
        if more.first(key) != Some(home) {
            joined += 1;
        }
    }
    (
        left as f64 / functions as f64,
        joined as f64 / functions as f64,
    )
}

/// `petrel sim --cluster`.
pub(crate) fn run(args: super::sim::Args) -> anyhow::Result<std::process::ExitCode> {
    let super::sim::Args {
        apps,
        days,
        seed,
        nodes,
        ..
    } = args;
    super::sim::check(apps, days)?;
    anyhow::ensure!(
        nodes.iter().all(|&n| n >= 2),
        "--nodes takes cluster sizes of at least 2, like 10,100,1000"
    );
    let workload = super::sim::azure_like(apps, days * 86400.0, seed);
    println!(
        "{apps} synthetic functions (seed {seed}), {days} days of virtual time, keep-alive 10 min\n"
    );
    print!("{}", report(&workload, &nodes, seed));
    Ok(std::process::ExitCode::SUCCESS)
}

/// The markdown table of `petrel sim --cluster`.
pub(crate) fn report(apps: &[App], nodes: &[usize], seed: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "| nodes | functions | invocations | warm, routed | warm, random node | instances started, routed | random | load max/mean, routed | random | spilled | moved when a node leaves | when one joins |");
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for &n in nodes {
        let routed = replay(apps, n, true, seed);
        let random = replay(apps, n, false, seed);
        let (left, joined) = rehoming(n, apps.len());
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {:.2}% | {:.2}% | {} | {} | {:.2} | {:.2} | {} | {:.2}% (1/N = {:.2}%) | {:.2}% |",
            apps.len(),
            routed.invocations,
            routed.warm_pct(),
            random.warm_pct(),
            routed.started,
            random.started,
            routed.spread,
            random.spread,
            routed.spilled,
            100.0 * left,
            100.0 / n as f64,
            100.0 * joined
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keeps_more_invocations_warm_than_random_nodes() {
        let apps = super::super::sim::azure_like(300, 6.0 * 3600.0, 3);
        let routed = replay(&apps, 10, true, 1);
        let random = replay(&apps, 10, false, 1);
        assert_eq!(routed.invocations, random.invocations);
        assert!(
            routed.warm_pct() > random.warm_pct() + 5.0,
            "{routed:?} {random:?}"
        );
        assert!(routed.started < random.started);
        let (left, joined) = rehoming(10, 20_000);
        assert!((0.08..0.12).contains(&left), "{left}");
        assert!((0.07..0.11).contains(&joined), "{joined}");
    }
}
