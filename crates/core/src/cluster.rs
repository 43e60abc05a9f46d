//! Cluster vocabulary and placement: the nodes sharing a store, and which of them is a
//! function's home, by rendezvous (highest-random-weight) hashing with bounded load.
//!
//! Every node computes the same order of nodes for a function from the same list of live nodes,
//! with no coordination: the function's key is hashed with each node's id and the nodes are taken
//! by descending score. Removing a node moves only the functions it was first for (about 1/N of
//! them) to their second; adding one takes about 1/N from the others. The same code places
//! requests in the server and in `petrel sim --cluster`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

crate::api::wire_enum! {
    /// Where a node is.
    NodeState {
        /// Heartbeating and taking work.
        Up = "up",
        /// Stopping: finishing what it runs, taking nothing new.
        Draining = "draining",
        /// Stopped cleanly.
        Left = "left",
        /// Missed its heartbeats: taken for lost.
        Out = "out",
    }
}

/// A node as `petrel nodes` and `GET /v1/nodes` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub id: String,
    /// Where the other nodes forward requests to it.
    pub address: String,
    pub petrel_version: String,
    pub state: NodeState,
    /// Milliseconds since the Unix epoch.
    pub started_at: i64,
    /// How long ago its last heartbeat was written.
    pub heartbeat_age_ms: u64,
    /// Invocations running at its last heartbeat.
    pub in_flight: u64,
    /// Instances it holds.
    pub instances: u64,
    pub memory_used_mb: u64,
    pub memory_limit_mb: u64,
    /// Functions (`namespace/name`) that need more homes than one.
    pub hot: Vec<String>,
}

impl NodeInfo {
    /// Whether requests may be placed on it: up, and heard from within `timeout_ms`.
    pub fn is_live(&self, timeout_ms: u64) -> bool {
        self.state == NodeState::Up && self.heartbeat_age_ms <= timeout_ms
    }
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// The node that answered.
    pub this_node: String,
    pub nodes: Vec<NodeInfo>,
}

/// A request forwarded by a node names itself in this header; the receiving node serves it
/// wherever it may, never forwarding it again (one hop, no loops).
pub const FORWARDED_HEADER: &str = "x-petrel-forwarded-by";

/// A 64-bit hash that is the same on every node and every build (FNV-1a, then a finaliser).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous score of a node (by its id's hash) for a key (by its hash).
pub fn score(node: u64, key: u64) -> u64 {
    mix(node ^ key.rotate_left(17))
}

/// The live nodes, hashed once, in which functions are placed.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    hashes: Vec<u64>,
}

impl Ring {
    /// A ring of nodes by id; indices into it are the order of `ids`.
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            hashes: ids.into_iter().map(stable_hash).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The first `k` nodes of `key`'s order (indices, best first).
    pub fn rank(&self, key: u64, k: usize) -> Vec<usize> {
        let mut scored: Vec<(u64, usize)> = self
            .hashes
            .iter()
            .enumerate()
            .map(|(i, h)| (score(*h, key), i))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        // Highest score first; ties (never seen in practice) by index, so every node agrees.
        let cmp = |a: &(u64, usize), b: &(u64, usize)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, cmp);
            scored.truncate(k);
        }
        scored.sort_unstable_by(cmp);
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// The node `key`'s order puts first.
    pub fn first(&self, key: u64) -> Option<usize> {
        self.hashes
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| score(**a, key).cmp(&score(**b, key)).then(j.cmp(i)))
            .map(|(i, _)| i)
    }
}

/// When a node counts as full: more than `factor` times the mean load (consistent hashing with
/// bounded loads), and never below `floor`, so that a quiet cluster never spills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadBound {
    pub factor: f64,
    pub floor: u64,
}

impl Default for LoadBound {
    fn default() -> Self {
        Self {
            factor: 1.25,
            floor: 16,
        }
    }
}

impl LoadBound {
    /// The most a node may carry when the cluster carries `total` over `nodes` nodes (the new
    /// request counted).
    pub fn limit(&self, total: u64, nodes: usize) -> u64 {
        let mean = (total + 1) as f64 / nodes.max(1) as f64;
        ((self.factor * mean).ceil() as u64).max(self.floor)
    }
}

/// Picks where a request goes among `order` (a key's nodes, best first): the least loaded of its
/// first `homes` that is not full, else the next node in the order that is not full (the
/// spill), else the first home (everyone is full; it queues there). `load[i]` is node `i`'s load.
pub fn place(order: &[usize], load: &[u64], limit: u64, homes: usize) -> Option<usize> {
    let homes = homes.clamp(1, order.len().max(1));
    let open = |i: &&usize| load[**i] < limit;
    order[..homes.min(order.len())]
        .iter()
        .filter(open)
        .min_by_key(|i| load[**i])
        .or_else(|| order.iter().skip(homes).find(open))
        .or(order.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn every_node_computes_the_same_order_and_rank_agrees_with_first() {
        let names = ids(7);
        let ring = Ring::new(names.iter().map(String::as_str));
        for f in 0..500 {
            let key = stable_hash(&format!("default/fn-{f}"));
            let full = ring.rank(key, 7);
            assert_eq!(full.len(), 7);
            assert_eq!(ring.rank(key, 2), full[..2]);
            assert_eq!(ring.first(key), Some(full[0]));
            // The same nodes listed in another order rank the same ids.
            let rev: Vec<&str> = names.iter().rev().map(String::as_str).collect();
            let other = Ring::new(rev.iter().copied());
            let mapped: Vec<usize> = other.rank(key, 7).iter().map(|i| 6 - i).collect();
            assert_eq!(mapped, full);
        }
    }

    #[test]
    fn losing_a_node_moves_only_its_functions_and_spreads_them() {
        let names = ids(10);
        let ring = Ring::new(names.iter().map(String::as_str));
        let without: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "node-3")
            .collect();
        let smaller = Ring::new(without.iter().copied());
        let (mut moved, mut per_node) = (0, [0u32; 10]);
        let n = 20_000;
        for f in 0..n {
            let key = stable_hash(&format!("default/fn-{f}"));
            let before = names[ring.first(key).unwrap()].as_str();
            per_node[ring.first(key).unwrap()] += 1;
            let after = without[smaller.first(key).unwrap()];
            if before != after {
                assert_eq!(before, "node-3", "only the lost node's functions move");
                moved += 1;
            }
        }
        let share = moved as f64 / n as f64;
        assert!((0.08..0.12).contains(&share), "about 1/10 moved: {share}");
        // Balanced within a few per cent of the mean.
        for c in per_node {
            assert!((1800..2200).contains(&c), "{per_node:?}");
        }
    }

    #[test]
    fn a_full_home_spills_to_the_next_in_order_and_quiet_clusters_never_spill() {
        let bound = LoadBound::default();
        assert_eq!(bound.limit(0, 3), 16, "the floor");
        assert_eq!(bound.limit(299, 3), 125);
        let order = [2, 0, 1];
        assert_eq!(place(&order, &[0, 0, 5], 16, 1), Some(2), "not full: home");
        assert_eq!(place(&order, &[0, 3, 16], 16, 1), Some(0), "full: next");
        assert_eq!(place(&order, &[16, 3, 16], 16, 1), Some(1));
        assert_eq!(
            place(&order, &[16, 16, 16], 16, 1),
            Some(2),
            "all full: home"
        );
        assert_eq!(
            place(&order, &[4, 0, 9], 16, 2),
            Some(0),
            "two homes: the less loaded"
        );
        assert_eq!(place(&[], &[], 16, 1), None);
    }
}
