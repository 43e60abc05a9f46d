//! Cluster mode: three `petrel serve` processes with their own data directories on one
//! PostgreSQL database, each advertising itself. Deploys reach every node through the change
//! feed, requests go to their function's home, and a killed node's work moves on.

use crate::asynchronous::{function, http_client, list, try_submit};
use crate::harness::*;
use crate::triggers::{create_topic, kafka, kafka_records, produce, producer, sink_function};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const FORWARDED: &str = "x-petrel-forwarded-by";
const TEN_S: Duration = Duration::from_secs(10);

async fn node(store: &StoreKind, id: &str) -> Petrel {
    Petrel::start_with(
        store.clone(),
        &["--node-id", id, "--advertise", "http://127.0.0.1:0"],
    )
    .await
}

async fn three_nodes() -> (StoreKind, Vec<Petrel>) {
    let store = StoreKind::fresh_postgres().await;
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(node(&store, id).await);
    }
    // Every node sees the three (heartbeats every second).
    for n in &nodes {
        let ok = eventually(Duration::from_secs(10), || live_nodes(n) == 3).await;
        assert!(ok, "{}", n.cli_ok(&["nodes"]));
    }
    (store, nodes)
}

fn live_nodes(p: &Petrel) -> usize {
    let list: serde_json::Value = serde_json::from_str(&p.cli_ok(&["nodes", "--json"])).unwrap();
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "up")
        .count()
}

/// Invokes `name` on `p` itself (as a forwarded request, which is served where it lands).
async fn invoke_here(p: &Petrel, name: &str, event: &str) -> Resp {
    p.http_with(
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        &[(FORWARDED, "test"), ("content-type", "application/json")],
        event.as_bytes().to_vec(),
    )
    .await
}

async fn invoke_routed(p: &Petrel, name: &str, event: &str) -> Resp {
    p.http_with(
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        &[("content-type", "application/json")],
        event.as_bytes().to_vec(),
    )
    .await
}

/// Invokes `name` with `event` (on `p` itself with `here`, else routed) until `done` accepts
/// the answer, for at most `limit`; returns that answer.
async fn invoke_until(
    p: &Petrel,
    (name, event): (&str, &str),
    here: bool,
    limit: Duration,
    done: impl Fn(&Resp) -> bool,
) -> Resp {
    let t0 = Instant::now();
    loop {
        let r = if here {
            invoke_here(p, name, event).await
        } else {
            invoke_routed(p, name, event).await
        };
        if done(&r) {
            return r;
        }
        assert!(
            t0.elapsed() < limit,
            "{name} on {}: {} {} {:?}\n{}",
            p.url,
            r.status,
            r.text(),
            r.headers,
            p.server_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cold starts this node made, from its metrics.
async fn cold_starts(p: &Petrel) -> u64 {
    let text = p.http("GET", "/metrics", None).await.text();
    text.lines()
        .filter(|l| l.starts_with("petrel_cold_starts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_on_one_node_serves_on_every_node_and_calls_go_to_its_home_postgres() {
    let (store, nodes) = three_nodes().await;
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    let text = a.cli_ok(&["nodes"]);
    for id in ["node-a", "node-b", "node-c"] {
        assert!(text.contains(id), "{text}");
    }

    // Deployed on A; B and C serve it themselves, without a redeploy.
    let dir = function("shared", "keep_alive = \"10m\"");
    a.deploy(dir.path());
    let deployed = Instant::now();
    for p in [b, c] {
        let r = invoke_until(p, ("shared", r#"{"n": 1}"#), true, TEN_S, |r| {
            r.status == 200
        })
        .await;
        assert_eq!(r.json()["n"], 1);
    }
    eprintln!(
        "deploy on A served on B and C after {:?}",
        deployed.elapsed()
    );

    // Every node sends the function's calls to the same home.
    let mut served_by = HashSet::new();
    for p in [a, b, c, a, b, c] {
        let r = invoke_routed(p, "shared", r#"{"n": 2}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        served_by.insert(r.header("x-petrel-node").unwrap().to_owned());
    }
    assert_eq!(served_by.len(), 1, "{served_by:?}");

    // A new version deployed on B is the latest everywhere; an alias set on C routes on A.
    let v2 = function("shared", "keep_alive = \"10m\"\n[env]\nV = \"2\"");
    b.deploy(v2.path());
    c.cli_ok(&["alias", "set", "shared", "prod", "--version", "1"]);
    for p in [a, c] {
        invoke_until(p, ("shared", "{}"), true, TEN_S, |r| {
            r.header("x-petrel-version") == Some("2")
        })
        .await;
    }
    invoke_until(a, ("shared:prod", "{}"), true, TEN_S, |r| {
        r.status == 200 && r.header("x-petrel-version") == Some("1")
    })
    .await;

    // Deleted on A: gone on B and C.
    a.cli_ok(&["rm", "shared"]);
    for p in [b, c] {
        let r = invoke_until(p, ("shared", "{}"), true, TEN_S, |r| r.status == 404).await;
        r.assert_error(404, "function_not_found");
    }
    drop(nodes);
    store.drop_postgres().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_keeps_300_functions_warm_called_through_random_nodes_postgres() {
    let (store, nodes) = three_nodes().await;
    let names: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
    let dirs: Vec<_> = names
        .iter()
        .map(|n| function(n, "keep_alive = \"10m\"\nmemory_mb = 64"))
        .collect();
    // Deployed through the three nodes, a few at a time.
    std::thread::scope(|s| {
        for (k, chunk) in dirs.chunks(75).enumerate() {
            let p = &nodes[k % 3];
            s.spawn(move || {
                for d in chunk {
                    p.deploy(d.path());
                }
            });
        }
    });
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut pick = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 3) as usize
    };
    // Warm-up: one call each through a random node, until every node serves every function.
    for n in &names {
        let p = &nodes[pick()];
        invoke_until(p, (n, r#"{"n": 0}"#), false, TEN_S * 2, |r| r.status == 200).await;
    }
    let mut before = 0;
    for p in &nodes {
        before += cold_starts(p).await;
    }
    let mut homes: HashMap<String, HashSet<String>> = HashMap::new();
    let calls = 3 * names.len();
    for round in 0..3 {
        for n in &names {
            let p = &nodes[pick()];
            let r = invoke_routed(p, n, &json!({ "n": round }).to_string()).await;
            assert_eq!(r.status, 200, "{n}: {}", r.text());
            homes
                .entry(n.clone())
                .or_default()
                .insert(r.header("x-petrel-node").unwrap().to_owned());
        }
    }
    let mut after = 0;
    for p in &nodes {
        after += cold_starts(p).await;
    }
    let cold = after - before;
    eprintln!("{calls} routed calls after warm-up: {cold} cold starts");
    assert!(
        cold * 100 <= calls as u64,
        "{cold} of {calls} calls started an instance (at most 1% may)"
    );
    assert!(homes.values().all(|h| h.len() == 1), "one home each");
    // Spread: each node is home to some of the functions.
    let per_node: HashMap<&str, usize> =
        homes.values().flatten().fold(HashMap::new(), |mut m, h| {
            *m.entry(h.as_str()).or_default() += 1;
            m
        });
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&c| c >= 50), "{per_node:?}");

    // Without routing (served where they land), a call on a node that is not the home starts
    // an instance there: what the routing saves.
    let mut unrouted_before = 0;
    for p in &nodes {
        unrouted_before += cold_starts(p).await;
    }
    let id_of = |i: usize| ["node-a", "node-b", "node-c"][i];
    let mut tried = 0;
    for n in names.iter().take(30) {
        let home = homes[n].iter().next().unwrap().clone();
        let other = (0..3).find(|&i| id_of(i) != home).unwrap();
        let r = invoke_here(&nodes[other], n, "{}").await;
        assert_eq!(r.status, 200);
        tried += 1;
    }
    let mut unrouted_after = 0;
    for p in &nodes {
        unrouted_after += cold_starts(p).await;
    }
    assert_eq!(
        unrouted_after - unrouted_before,
        tried,
        "every call off its home was a cold start"
    );
    drop(nodes);
    store.drop_postgres().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_a_busy_functions_home_loses_nothing_postgres() {
    let (store, mut nodes) = three_nodes().await;
    let topic = crate::triggers::unique("cluster");
    create_topic(&topic, 3).await;
    let (sink, seen) = receiver().await;
    let consumer = sink_function(
        "kconsumer",
        &sink,
        &format!(
            "[[trigger]]\nname = \"orders\"\nkind = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\nstarting_position = \"earliest\"\nbatch_size = 10\nbatch_window = \"100ms\"\n",
            kafka()
        ),
    );
    nodes[0].deploy(consumer.path());
    let busy = function(
        "busy",
        "max_instances = 4\nasync_concurrency = 4\nkeep_alive = \"10m\"",
    );
    nodes[1].deploy(busy.path());
    let r = invoke_routed(&nodes[2], "busy", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let home = r.header("x-petrel-node").unwrap().to_owned();
    let victim = ["node-a", "node-b", "node-c"]
        .iter()
        .position(|id| *id == home)
        .unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();

    // Load: async submissions through every node, and Kafka records, while the home dies.
    let client = http_client();
    let mut ids = HashSet::new();
    let prod = producer();
    for n in 0..120 {
        // Through every node until the kill (after the 61st), then through the survivors.
        let (p, secs) = if n <= 60 {
            (&nodes[n % 3], 0.05)
        } else {
            (&nodes[survivors[n % 2]], 0.02)
        };
        let event = json!({"action": "sleep", "secs": secs, "n": n});
        ids.insert(try_submit(&client, &p.url, "busy", &event).await.unwrap());
        produce(
            &prod,
            &topic,
            (n % 3) as i32,
            &format!("k{n}"),
            &format!("v{n}"),
        )
        .await;
        if n == 60 {
            signal(nodes[victim].pid(), "KILL");
        }
    }
    // Synchronous calls through the survivors succeed within a few seconds of the kill.
    let s = &nodes[survivors[0]];
    let t0 = Instant::now();
    let r = invoke_until(s, ("busy", "{}"), false, TEN_S + TEN_S / 2, |r| {
        r.status == 200
    })
    .await;
    assert_ne!(r.header("x-petrel-node"), Some(home.as_str()));
    eprintln!(
        "synchronous calls served again {:?} after the kill",
        t0.elapsed()
    );
    for _ in 0..20 {
        let r = invoke_routed(s, "busy", "{}").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let nodes_text = s.cli_ok(&["nodes"]);
    let ok = eventually(Duration::from_secs(10), || {
        s.cli_ok(&["nodes", "--json"]).contains("\"out\"")
    })
    .await;
    assert!(ok, "{nodes_text}");

    // Every accepted async invocation completes (the dead node's claims after their lease).
    let t0 = Instant::now();
    loop {
        let done = list(s, "busy", Some("succeeded")).await;
        let done: HashSet<String> = done
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        if ids.is_subset(&done) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{} of {} done",
            done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every Kafka record reaches the handler (at least once: the group rebalanced).
    let ok = eventually(Duration::from_secs(90), || {
        let got: HashSet<String> = kafka_records(&seen).into_iter().map(|r| r.2).collect();
        got.len() == 120
    })
    .await;
    let got: HashSet<String> = kafka_records(&seen).into_iter().map(|r| r.2).collect();
    let missing: Vec<String> = (0..120)
        .map(|n| format!("v{n}"))
        .filter(|v| !got.contains(v))
        .collect();
    assert!(
        ok,
        "{} of 120 records delivered; missing {missing:?}; committed {:?}\n{}",
        got.len(),
        crate::triggers::committed(
            &petrel_core::trigger::default_group("default", "kconsumer", "orders"),
            &topic,
            3
        ),
        nodes
            .iter()
            .map(|p| p.server_log())
            .filter(|l| l.contains("kafka"))
            .map(|l| l
                .lines()
                .filter(|x| x.contains("kafka"))
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    );

    // The node comes back and takes its share again.
    nodes[victim].kill9_and_restart().await;
    let s = &nodes[survivors[0]];
    let ok = eventually(Duration::from_secs(15), || live_nodes(s) == 3).await;
    assert!(ok);
    // Every call succeeds meanwhile; the home takes it back.
    invoke_until(s, ("busy", "{}"), false, TEN_S + TEN_S / 2, |r| {
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-petrel-node") == Some(home.as_str())
    })
    .await;
    drop(nodes);
    store.drop_postgres().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_stopped_with_sigterm_drains_and_leaves_postgres() {
    let (store, mut nodes) = three_nodes().await;
    let dir = function("drained", "keep_alive = \"10m\"");
    nodes[0].deploy(dir.path());
    let r = invoke_routed(&nodes[0], "drained", "{}").await;
    assert_eq!(r.status, 200);
    let home = r.header("x-petrel-node").unwrap().to_owned();
    let i = ["node-a", "node-b", "node-c"]
        .iter()
        .position(|id| *id == home)
        .unwrap();
    let other = (i + 1) % 3;
    let status = nodes[i].stop();
    assert!(status.success(), "{}", nodes[i].server_log());
    let list: serde_json::Value =
        serde_json::from_str(&nodes[other].cli_ok(&["nodes", "--json"])).unwrap();
    let me = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == home.as_str())
        .unwrap()
        .clone();
    assert_eq!(me["state"], "left", "{list}");
    // At once (no heartbeat timeout to wait out), the function is served elsewhere.
    let r = invoke_routed(&nodes[other], "drained", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.header("x-petrel-node"), Some(home.as_str()));
    drop(nodes);
    store.drop_postgres().await;
}
