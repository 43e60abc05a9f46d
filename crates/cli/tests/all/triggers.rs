//! Event triggers against the real brokers `scripts/services.sh` starts (Apache Kafka in KRaft
//! mode, nats-server with JetStream): the consumer runs in Petrel, records reach the function in
//! its runtime's shape, positions are committed only once settled, a poison record ends in the
//! dead-letter list without blocking its partition, and cron fires once per due time across
//! servers.

use crate::harness::*;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::Duration;

pub(crate) fn kafka() -> String {
    std::env::var("PETREL_TEST_KAFKA").expect(
        "trigger tests need PETREL_TEST_KAFKA: run them through scripts/test.sh, or `. scripts/services.sh` first",
    )
}

fn nats() -> String {
    std::env::var("PETREL_TEST_NATS").expect(
        "trigger tests need PETREL_TEST_NATS: run them through scripts/test.sh, or `. scripts/services.sh` first",
    )
}

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

pub(crate) async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    for x in r {
        x.unwrap();
    }
}

pub(crate) fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap()
}

pub(crate) async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &str,
) {
    p.send(
        FutureRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(value),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
}

/// The group's committed offsets, by partition.
pub(crate) fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).unwrap().offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// A Python handler that POSTs each event it gets to `SINK`, and fails a batch holding a
/// record whose value is `poison`.
const SINK_PY: &str = r#"
import base64, json, os, urllib.request

def values(event):
    recs = event.get("records", [])
    if isinstance(recs, dict):
        recs = [r for part in recs.values() for r in part]
    return [base64.b64decode(r.get("value") or r.get("data") or "") for r in recs]

def handler(event, context):
    if b"poison" in values(event):
        raise ValueError("a poison record")
    req = urllib.request.Request(os.environ["SINK"], data=json.dumps(event).encode(), method="POST")
    urllib.request.urlopen(req).read()
    return {}
"#;

pub(crate) fn sink_function(name: &str, sink: &str, triggers: &str) -> tempfile::TempDir {
    function_dir(&[
        ("app.py", SINK_PY),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n{triggers}",
                manifest(name, "python3", "app.handler", "")
            ),
        ),
    ])
}

pub(crate) fn events(seen: &Seen) -> Vec<serde_json::Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(p, _, _)| p == "/got")
        .map(|(_, _, b)| serde_json::from_slice(b).unwrap())
        .collect()
}

/// (partition, offset, value) of every Kafka record the sink got.
pub(crate) fn kafka_records(seen: &Seen) -> Vec<(i64, i64, String)> {
    use base64::Engine as _;
    let mut out = vec![];
    for e in events(seen) {
        for (_, recs) in e["records"].as_object().unwrap() {
            for r in recs.as_array().unwrap() {
                let v = base64::engine::general_purpose::STANDARD
                    .decode(r["value"].as_str().unwrap())
                    .unwrap();
                out.push((
                    r["partition"].as_i64().unwrap(),
                    r["offset"].as_i64().unwrap(),
                    String::from_utf8(v).unwrap(),
                ));
            }
        }
    }
    out
}

pub(crate) async fn triggers_json(p: &Petrel, function: &str) -> serde_json::Value {
    let r = p
        .http("GET", &format!("/v1/functions/{function}/triggers"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The function's triggers once every one has `delivered` records (the stored counts move
/// once a second), or as they are after 15 s.
async fn triggers_once_delivered(p: &Petrel, function: &str, delivered: u64) -> serde_json::Value {
    let mut t = serde_json::Value::Null;
    for _ in 0..60 {
        t = triggers_json(p, function).await;
        if t["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["delivered"].as_u64() >= Some(delivered))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    t
}

#[tokio::test]
async fn kafka_records_reach_a_handler_in_lambdas_shape_and_a_poison_record_ends_in_the_dlq() {
    let topic = unique("orders");
    create_topic(&topic, 2).await;
    let (sink, seen) = receiver().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "trigger_retry_base = \"50ms\"\n").unwrap();
    let p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    let dir = sink_function(
        "kconsumer",
        &sink,
        &format!(
            "[[trigger]]\nname = \"orders\"\nkind = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\nstarting_position = \"earliest\"\nbatch_size = 10\nbatch_window = \"200ms\"\nmax_retries = 1\nbisect_on_error = true\n",
            kafka()
        ),
    );
    p.deploy(dir.path());
    let prod = producer();
    for i in 0..30 {
        let value = if i == 13 {
            "poison".to_owned()
        } else {
            format!("v{i}")
        };
        produce(&prod, &topic, i % 2, &format!("k{i}"), &value).await;
    }
    // Every good record arrives, in order within its partition; the poison one never does.
    let ok = eventually(Duration::from_secs(60), || kafka_records(&seen).len() >= 29).await;
    let got = kafka_records(&seen);
    assert!(ok, "got {} records: {got:?}\n{}", got.len(), p.server_log());
    let values: BTreeSet<String> = got.iter().map(|r| r.2.clone()).collect();
    assert_eq!(values.len(), 29, "{got:?}");
    assert!(!values.contains("poison"));
    for part in 0..2 {
        let offsets: Vec<i64> = got.iter().filter(|r| r.0 == part).map(|r| r.1).collect();
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(offsets, sorted, "partition {part} out of order");
    }
    let e = &events(&seen)[0];
    assert_eq!(e["eventSource"], "SelfManagedKafka");
    assert_eq!(e["bootstrapServers"], kafka());
    let key = e["records"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert!(key.starts_with(&format!("{topic}-")), "{key}");
    // The poison record is a dead letter, and the partition went on past it.
    let ok = eventually(Duration::from_secs(30), || {
        let out = p.cli_ok(&["trigger", "dlq", "kconsumer", "orders"]);
        out.contains(&format!("{topic}-1@6"))
    })
    .await;
    assert!(
        ok,
        "{}",
        p.cli_ok(&["trigger", "dlq", "kconsumer", "orders"])
    );
    // Positions are committed once settled: both partitions at their end (15 records each).
    let group = "petrel-default-kconsumer-orders";
    let ok = eventually(Duration::from_secs(30), || {
        committed(group, &topic, 2) == vec![15, 15]
    })
    .await;
    assert!(ok, "committed {:?}", committed(group, &topic, 2));
    let t = triggers_once_delivered(&p, "kconsumer", 29).await;
    let t = &t["triggers"][0];
    assert_eq!(t["state"], "running", "{t}");
    assert_eq!(t["delivered"], 29, "{t}");
    assert_eq!(t["dead"], 1, "{t}");
    assert!(t["last_error"].as_str().unwrap().contains("poison"), "{t}");
    // Each batch is an invocation record of the trigger.
    let r = p
        .http("GET", "/v1/functions/kconsumer/invocations", None)
        .await;
    let recs = r.json();
    assert!(
        recs["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["trigger"] == "kafka:orders"),
        "{recs}"
    );
    let m = p.http("GET", "/metrics", None).await.text();
    let delivered = m
        .lines()
        .find(|l| {
            l.starts_with("petrel_trigger_records_total")
                && l.contains("trigger=\"orders\"")
                && l.contains("result=\"delivered\"")
        })
        .unwrap_or_else(|| panic!("{m}"));
    assert!(delivered.ends_with(" 29"), "{delivered}");
    assert!(m.contains("petrel_trigger_lag{"), "{m}");
    let ls = p.cli_ok(&["trigger", "ls", "kconsumer"]);
    assert!(ls.contains("orders") && ls.contains("running"), "{ls}");

    // Paused: nothing is delivered; resumed: it goes on from its position.
    p.cli_ok(&["trigger", "pause", "kconsumer", "orders"]);
    assert_eq!(
        triggers_json(&p, "kconsumer").await["triggers"][0]["state"],
        "paused"
    );
    produce(&prod, &topic, 0, "k", "after-pause").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!kafka_records(&seen).iter().any(|r| r.2 == "after-pause"));
    p.cli_ok(&["trigger", "resume", "kconsumer", "orders"]);
    let ok = eventually(Duration::from_secs(30), || {
        kafka_records(&seen).iter().any(|r| r.2 == "after-pause")
    })
    .await;
    assert!(ok, "{}", p.server_log());
    // Nothing delivered twice on the way (at least once, but no reason to repeat here).
    let got = kafka_records(&seen);
    let distinct: BTreeSet<(i64, i64)> = got.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(distinct.len(), got.len(), "{got:?}");
}

/// An HTTP function that POSTs the body and content type it got to `SINK`.
const SINK_HTTP: &str = r#"
const http = require('http');
http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => body += c);
  req.on('end', () => {
    const r = http.request(process.env.SINK, { method: 'POST', headers: { 'x-content-type': req.headers['content-type'] || '' } }, (rr) => {
      rr.resume();
      rr.on('end', () => { res.setHeader('content-type', 'application/json'); res.end('{}'); });
    });
    r.end(body);
  });
}).listen(Number(process.env.PORT), '127.0.0.1');
"#;

#[tokio::test]
async fn nats_messages_reach_an_http_function_as_cloudevents_and_are_acknowledged() {
    let stream = unique("EVENTS").to_uppercase().replace('-', "_");
    let subject = format!("{}.>", stream.to_lowercase());
    let client = async_nats::connect(nats()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (sink, seen) = receiver().await;
    let p = Petrel::start().await;
    let dir = function_dir(&[
        ("server.js", SINK_HTTP),
        (
            "petrel.toml",
            &format!(
                "name = \"nconsumer\"\nruntime = \"http\"\nhandler = \"node server.js\"\nnetwork = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n[[trigger]]\nname = \"events\"\nkind = \"nats\"\nservers = [\"{}\"]\nstream = \"{stream}\"\nsubject = \"{subject}\"\nstarting_position = \"earliest\"\nbatch_size = 5\nbatch_window = \"100ms\"\nparallelization = 2\n",
                nats()
            ),
        ),
    ]);
    p.deploy(dir.path());
    let base = stream.to_lowercase();
    for i in 0..20 {
        js.publish(
            format!("{base}.k{}", i % 3),
            Bytes::from(format!("{{\"n\": {i}}}")),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let count = || {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| {
                serde_json::from_slice::<serde_json::Value>(b)
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .len()
            })
            .sum::<usize>()
    };
    let ok = eventually(Duration::from_secs(60), || count() >= 20).await;
    assert!(ok, "got {}\n{}", count(), p.server_log());
    let all = seen.lock().unwrap().clone();
    assert!(all
        .iter()
        .all(|(_, h, _)| h["x-content-type"] == "application/cloudevents-batch+json"));
    let mut per_subject: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (_, _, b) in &all {
        let batch: serde_json::Value = serde_json::from_slice(b).unwrap();
        for e in batch.as_array().unwrap() {
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["type"], "dev.petrel.nats.message");
            per_subject
                .entry(e["subject"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["data"]["n"].as_i64().unwrap());
        }
    }
    // Order is kept per subject, with two lanes.
    for (s, ns) in &per_subject {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, &sorted, "{s}");
    }
    assert_eq!(per_subject.values().map(Vec::len).sum::<usize>(), 20);
    // Every message is acknowledged once delivered.
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_consumer("petrel-default-nconsumer-events")
        .await
        .unwrap();
    let ok = eventually(Duration::from_secs(20), || {
        let info = futures_util::FutureExt::now_or_never(consumer.get_info());
        matches!(info, Some(Ok(i)) if i.num_ack_pending == 0 && i.num_pending == 0)
    })
    .await;
    let info = consumer.get_info().await.unwrap();
    assert!(
        ok || (info.num_ack_pending == 0 && info.num_pending == 0),
        "{info:?}"
    );
    let t = triggers_once_delivered(&p, "nconsumer", 20).await;
    assert_eq!(t["triggers"][0]["delivered"], 20, "{t}");
}

#[tokio::test]
async fn malformed_triggers_are_refused_and_an_unreachable_broker_fails_without_blocking() {
    let p = Petrel::start().await;
    for (trigger, field) in [
        ("kind = \"sqs\"", "trigger.t.kind"),
        ("kind = \"kafka\"\ntopic = \"x\"", "trigger.t.brokers"),
        (
            "kind = \"cron\"\nschedule = \"99 * * * *\"",
            "trigger.t.schedule",
        ),
        (
            "kind = \"cron\"\nschedule = \"0 3 * * *\"\ntimezone = \"Moon/Base\"",
            "trigger.t.timezone",
        ),
        (
            "kind = \"cron\"\nschedule = \"0 3 * * *\"\ntopic = \"x\"",
            "trigger.t.topic",
        ),
    ] {
        let dir = function_dir(&[
            ("app.py", "def handler(e, c):\n    return {}\n"),
            (
                "petrel.toml",
                &format!(
                    "{}\n[[trigger]]\nname = \"t\"\n{trigger}\n",
                    manifest("bad", "python3", "app.handler", "")
                ),
            ),
        ]);
        let out = p.cli(&["deploy", dir.path().to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{trigger}: {err}");
    }
    // A broker nobody listens on: the deploy succeeds, the trigger shows failing, the function
    // still answers.
    let dir = function_dir(&[
        ("app.py", "def handler(e, c):\n    return {\"ok\": True}\n"),
        (
            "petrel.toml",
            &format!(
                "{}\n[[trigger]]\nname = \"lost\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:1\"]\ntopic = \"nowhere\"\n\n[[trigger]]\nname = \"gone\"\nkind = \"nats\"\nservers = [\"nats://127.0.0.1:1\"]\nstream = \"NOPE\"\n",
                manifest("lonely", "python3", "app.handler", "")
            ),
        ),
    ]);
    p.deploy(dir.path());
    let mut states = serde_json::Value::Null;
    let ok = {
        let mut ok = false;
        for _ in 0..60 {
            states = triggers_json(&p, "lonely").await;
            if states["triggers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["state"] == "failing")
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ok
    };
    assert!(ok, "{states}");
    for t in states["triggers"].as_array().unwrap() {
        assert!(!t["error"].as_str().unwrap().is_empty(), "{t}");
    }
    assert_eq!(p.invoke("lonely", "{}").await.json()["ok"], true);
    let ls = p.cli_ok(&["trigger", "ls"]);
    assert!(ls.contains("lost") && ls.contains("failing"), "{ls}");
}

#[tokio::test]
async fn cron_fires_once_per_due_time_with_two_servers_on_one_postgres() {
    let store = StoreKind::fresh_postgres().await;
    let (sink, seen) = receiver().await;
    let a = Petrel::start_with(store.clone(), &[]).await;
    let b = Petrel::start_with(store.clone(), &[]).await;
    let dir = function_dir(&[
        (
            "app.py",
            "import json, os, urllib.request\n\ndef handler(event, context):\n    urllib.request.urlopen(urllib.request.Request(os.environ['SINK'], data=json.dumps(event).encode(), method='POST')).read()\n    return {}\n",
        ),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n[[trigger]]\nname = \"tick\"\nkind = \"cron\"\nschedule = \"*/2 * * * * *\"\ntimezone = \"Europe/Paris\"\npayload = '{{\"job\": \"tick\"}}'\n",
                manifest("ticker", "python3", "app.handler", "")
            ),
        ),
    ]);
    a.deploy(dir.path());
    let ok = eventually(Duration::from_secs(30), || events(&seen).len() >= 4).await;
    assert!(ok, "{}\n{}", a.server_log(), b.server_log());
    let fired = events(&seen);
    let e = &fired[0];
    assert_eq!(e["detail-type"], "Scheduled Event");
    assert_eq!(e["detail"]["job"], "tick");
    assert!(
        e["resources"][0]
            .as_str()
            .unwrap()
            .ends_with(":rule/ticker-tick"),
        "{e}"
    );
    // Each due time fired once, though both servers run the trigger.
    let times: Vec<String> = fired
        .iter()
        .map(|e| e["time"].as_str().unwrap().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "{times:?}");
    let t = triggers_json(&b, "ticker").await;
    assert_eq!(t["triggers"][0]["kind"], "cron");
    assert!(t["triggers"][0]["next_fire"].as_i64().is_some(), "{t}");
    drop((a, b));
    store.drop_postgres().await;
}

#[tokio::test]
async fn a_kill_9_in_a_stream_of_10000_records_loses_none_and_repeats_only_uncommitted_ones() {
    let topic = unique("stream");
    create_topic(&topic, 2).await;
    let (sink, seen) = receiver().await;
    let mut p = Petrel::start().await;
    let dir = sink_function(
        "survivor",
        &sink,
        &format!(
            "[[trigger]]\nname = \"s\"\nkind = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\nstarting_position = \"earliest\"\nbatch_size = 100\nbatch_window = \"50ms\"\n",
            kafka()
        ),
    );
    p.deploy(dir.path());
    let prod = producer();
    let sends = (0..10_000).map(|i| {
        let (prod, topic) = (prod.clone(), topic.clone());
        async move {
            let v = format!("r{i}");
            prod.send(
                FutureRecord::to(&topic)
                    .partition(i % 2)
                    .key("k")
                    .payload(&v),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
        }
    });
    for r in futures_util::future::join_all(sends).await {
        r.unwrap();
    }
    let ok = eventually(Duration::from_secs(120), || {
        kafka_records(&seen).len() >= 3_000
    })
    .await;
    assert!(ok, "{}", p.server_log());
    p.kill9_and_restart().await;
    let distinct = || {
        kafka_records(&seen)
            .iter()
            .map(|r| (r.0, r.1))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let ok = eventually(Duration::from_secs(180), || distinct() >= 10_000).await;
    assert!(
        ok,
        "{} of 10000 distinct records\n{}",
        distinct(),
        p.server_log()
    );
    let total = kafka_records(&seen).len();
    // Redelivered: only what was not yet committed when the server died, at most what two
    // partitions' lanes hold (a running batch and a full queue each).
    assert!(
        total - 10_000 <= 2 * 300,
        "{} records delivered twice",
        total - 10_000
    );
}

#[tokio::test]
async fn a_redeploy_keeps_an_unchanged_trigger_and_restarts_a_changed_one() {
    let p = Petrel::start().await;
    let write = |dir: &std::path::Path, mark: &str, schedule: &str| {
        std::fs::write(dir.join("app.py"), "def handler(e, c):\n    return {}\n").unwrap();
        std::fs::write(
            dir.join("petrel.toml"),
            format!(
                "{}\n[env]\nMARK = \"{mark}\"\n\n[[trigger]]\nname = \"slow\"\nkind = \"cron\"\nschedule = \"{schedule}\"\n",
                manifest("keeper", "python3", "app.handler", "")
            ),
        )
        .unwrap();
    };
    let starts = |p: &Petrel| {
        p.server_log()
            .matches("starting a trigger's consumer")
            .count()
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "1", "rate(1 hour)");
    p.deploy(dir.path());
    assert_eq!(starts(&p), 1, "{}", p.server_log());
    // New code, same trigger: a new version, the consumer goes on.
    write(dir.path(), "2", "rate(1 hour)");
    assert!(p.deploy(dir.path()).contains('2'));
    assert_eq!(starts(&p), 1, "{}", p.server_log());
    // A changed trigger starts again.
    write(dir.path(), "2", "rate(2 hours)");
    p.deploy(dir.path());
    assert_eq!(starts(&p), 2, "{}", p.server_log());
    // Taken out of the manifest: it stops.
    std::fs::write(
        dir.path().join("petrel.toml"),
        manifest("keeper", "python3", "app.handler", ""),
    )
    .unwrap();
    p.deploy(dir.path());
    assert!(
        p.server_log().contains("trigger removed"),
        "{}",
        p.server_log()
    );
    let t = triggers_json(&p, "keeper").await;
    assert_eq!(t["triggers"].as_array().unwrap().len(), 0, "{t}");
}

/// A cron trigger that starts again (after a restart, or here a resume, which runs the same
/// start) fires the latest due time it missed, once, not once per missed slot.
#[tokio::test]
async fn cron_due_times_missed_while_not_running_fire_once_when_it_runs_again() {
    let (sink, seen) = receiver().await;
    let p = Petrel::start().await;
    let dir = function_dir(&[
        (
            "app.py",
            "import json, os, urllib.request\n\ndef handler(event, context):\n    urllib.request.urlopen(urllib.request.Request(os.environ['SINK'], data=json.dumps(event).encode(), method='POST')).read()\n    return {}\n",
        ),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n[[trigger]]\nname = \"tick\"\nkind = \"cron\"\nschedule = \"*/2 * * * * *\"\n",
                manifest("catchup", "python3", "app.handler", "")
            ),
        ),
    ]);
    p.deploy(dir.path());
    let ok = eventually(Duration::from_secs(20), || !events(&seen).is_empty()).await;
    assert!(ok, "{}", p.server_log());
    p.cli_ok(&["trigger", "pause", "catchup", "tick"]);
    let paused_at = now_ms();
    // At least three due times pass while it does not run.
    tokio::time::sleep(Duration::from_secs(7)).await;
    p.cli_ok(&["trigger", "resume", "catchup", "tick"]);
    let resumed_at = now_ms();
    let due = || -> Vec<i64> {
        events(&seen)
            .iter()
            .map(|e| parse_rfc3339_ms(e["time"].as_str().unwrap()))
            .collect()
    };
    let ok = eventually(Duration::from_secs(20), || {
        due().iter().any(|t| *t > resumed_at)
    })
    .await;
    assert!(ok, "{}", p.server_log());
    let missed: Vec<i64> = due()
        .into_iter()
        .filter(|t| *t > paused_at && *t <= resumed_at)
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "{missed:?} between {paused_at} and {resumed_at}"
    );
    let all = due();
    let distinct: BTreeSet<&i64> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a due time fired twice: {all:?}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `2026-12-03T14:00:02Z` as ms since the epoch (UTC, whole seconds, as the event writes it).
fn parse_rfc3339_ms(s: &str) -> i64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000
}

/// A handler that reports every record whose value is `bad` as failed, in Lambda's partial
/// batch response.
const PARTIAL_PY: &str = r#"
import base64

def handler(event, context):
    failed = []
    for part in event["records"].values():
        for r in part:
            if base64.b64decode(r["value"]) == b"bad":
                failed.append({"itemIdentifier": str(r["offset"])})
    return {"batchItemFailures": failed}
"#;

#[tokio::test]
async fn partial_batch_failures_go_to_a_kafka_topic_and_a_url_on_failure() {
    let (topic_a, topic_b, dead) = (unique("pa"), unique("pb"), unique("dead"));
    for t in [&topic_a, &topic_b, &dead] {
        create_topic(t, 1).await;
    }
    let (sink, seen) = receiver().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "trigger_retry_base = \"20ms\"\n").unwrap();
    let p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    let k = kafka();
    let common = "starting_position = \"earliest\"\nbatch_size = 10\nbatch_window = \"300ms\"\nmax_retries = 1\nreport_batch_item_failures = true\n";
    let dir = function_dir(&[
        ("app.py", PARTIAL_PY),
        (
            "petrel.toml",
            &format!(
                "{}\n[[trigger]]\nname = \"a\"\nkind = \"kafka\"\nbrokers = [\"{k}\"]\ntopic = \"{topic_a}\"\n{common}on_failure = \"kafka:{dead}\"\n\n[[trigger]]\nname = \"b\"\nkind = \"kafka\"\nbrokers = [\"{k}\"]\ntopic = \"{topic_b}\"\n{common}on_failure = \"{sink}/failed\"\n",
                manifest("partial", "python3", "app.handler", "")
            ),
        ),
    ]);
    p.deploy(dir.path());
    let prod = producer();
    for (i, v) in ["ok0", "ok1", "bad", "ok3"].iter().enumerate() {
        produce(&prod, &topic_a, 0, &format!("k{i}"), v).await;
        produce(&prod, &topic_b, 0, &format!("k{i}"), v).await;
    }
    // Trigger a: the bad record (offset 2) is produced to the dead topic, with why.
    let c: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[dead.as_str()]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing on the dead topic\n{}", p.server_log()))
        .unwrap();
    use rdkafka::message::{Headers, Message};
    assert_eq!(m.payload(), Some(&b"bad"[..]));
    assert_eq!(m.key(), Some(&b"k2"[..]));
    let header = |name: &str| {
        m.headers()
            .unwrap()
            .iter()
            .find(|h| h.key == name)
            .map(|h| String::from_utf8_lossy(h.value.unwrap()).into_owned())
    };
    assert_eq!(
        header("petrel-condition").as_deref(),
        Some("RetriesExhausted")
    );
    assert_eq!(header("petrel-position"), Some(format!("{topic_a}-0@2")));
    // Trigger b: the failure document is POSTed to the URL.
    let ok = eventually(Duration::from_secs(60), || {
        seen.lock().unwrap().iter().any(|(p, _, _)| p == "/failed")
    })
    .await;
    assert!(ok, "{}", p.server_log());
    let doc: serde_json::Value = {
        let s = seen.lock().unwrap();
        let (_, _, b) = s.iter().find(|(p, _, _)| p == "/failed").unwrap();
        serde_json::from_slice(b).unwrap()
    };
    assert_eq!(doc["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(doc["requestContext"]["trigger"], "kafka:b");
    let recs = doc["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{doc}");
    assert_eq!(recs[0]["kafkaoffset"], 2);
    // Past the bad record, each partition is committed to its end.
    for (t, trig) in [(&topic_a, "a"), (&topic_b, "b")] {
        let group = format!("petrel-default-partial-{trig}");
        let ok = eventually(Duration::from_secs(30), || {
            committed(&group, t, 1) == vec![4]
        })
        .await;
        assert!(ok, "{trig}: committed {:?}", committed(&group, t, 1));
    }
    let t = triggers_once_delivered(&p, "partial", 3).await;
    for tr in t["triggers"].as_array().unwrap() {
        assert_eq!(tr["delivered"], 3, "{tr}");
        assert_eq!(tr["dead"], 1, "{tr}");
    }
}

/// A wasm component gets a trigger's events too (a CloudEvents batch POSTed to `/`, which
/// names no authority: the component sees `localhost`).
#[tokio::test]
async fn a_wasm_function_takes_a_triggers_events() {
    let p = Petrel::start().await;
    let dir = wasm_function(
        "wasm-ticker",
        &wasm_guests().hello,
        "\n[[trigger]]\nname = \"tick\"\nkind = \"cron\"\nschedule = \"* * * * * *\"\n",
    );
    p.deploy(dir.path());
    let mut t = serde_json::Value::Null;
    for _ in 0..80 {
        t = triggers_json(&p, "wasm-ticker").await;
        if t["triggers"][0]["delivered"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        t["triggers"][0]["delivered"].as_u64().unwrap() >= 2,
        "{t}\n{}",
        p.server_log()
    );
    assert_eq!(t["triggers"][0]["failed"], 0, "{t}");
    let recs = p
        .http("GET", "/v1/functions/wasm-ticker/invocations", None)
        .await
        .json();
    let fires: Vec<&serde_json::Value> = recs["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "cron:tick")
        .collect();
    assert!(!fires.is_empty(), "{recs}");
    assert!(fires.iter().all(|r| r["outcome"] == "success"), "{recs}");
}

fn redis_url() -> String {
    std::env::var("PETREL_TEST_REDIS").expect(
        "trigger tests need PETREL_TEST_REDIS: run them through scripts/test.sh, or `. scripts/services.sh` first",
    )
}

/// The `n` fields of every Redis entry the sink got, in the order it got them.
fn redis_values(seen: &Seen) -> Vec<String> {
    events(seen)
        .iter()
        .flat_map(|e| {
            e["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["fields"]["n"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A Python handler that POSTs each Redis event to `SINK` and fails on an entry whose `n` is
/// `poison`.
const REDIS_SINK_PY: &str = r#"
import json, os, urllib.request

def handler(event, context):
    if any(r["fields"].get("n") == "poison" for r in event["records"]):
        raise ValueError("a poison entry")
    req = urllib.request.Request(os.environ["SINK"], data=json.dumps(event).encode(), method="POST")
    urllib.request.urlopen(req).read()
    return {}
"#;

#[tokio::test]
async fn redis_stream_entries_reach_a_handler_are_acknowledged_and_survive_a_kill_9() {
    use redis::AsyncCommands;
    let stream = unique("events");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (sink, seen) = receiver().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "trigger_retry_base = \"20ms\"\n").unwrap();
    let mut p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    let dir = function_dir(&[
        ("app.py", REDIS_SINK_PY),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n[[trigger]]\nname = \"events\"\nkind = \"redis\"\nurl = \"{}\"\nstream = \"{stream}\"\nstarting_position = \"earliest\"\nbatch_size = 5\nbatch_window = \"100ms\"\nmax_retries = 1\nbisect_on_error = true\n",
                manifest("rconsumer", "python3", "app.handler", ""),
                redis_url()
            ),
        ),
    ]);
    p.deploy(dir.path());
    for i in 0..20 {
        let n = if i == 7 {
            "poison".to_owned()
        } else {
            format!("{i}")
        };
        let _: String = conn.xadd(&stream, "*", &[("n", n.as_str())]).await.unwrap();
    }
    let ok = eventually(Duration::from_secs(60), || redis_values(&seen).len() >= 19).await;
    assert!(ok, "{:?}\n{}", redis_values(&seen), p.server_log());
    let expected: Vec<String> = (0..20).filter(|i| *i != 7).map(|i| i.to_string()).collect();
    assert_eq!(
        redis_values(&seen),
        expected,
        "in order, the poison entry left out\n{}",
        p.server_log()
    );
    let e = &events(&seen)[0];
    assert_eq!(e["eventSource"], "petrel:redis");
    assert_eq!(e["group"], "petrel-default-rconsumer-events");
    // Everything settled is acknowledged: nothing pending in the group.
    let pending = || async {
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("petrel-default-rconsumer-events")
            .query_async(&mut client.get_multiplexed_async_connection().await.unwrap())
            .await
            .unwrap();
        match v {
            redis::Value::Array(a) => redis::from_redis_value_ref::<u64>(&a[0]).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let mut left = u64::MAX;
    for _ in 0..40 {
        left = pending().await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(left, 0);
    let ok = eventually(Duration::from_secs(30), || {
        p.cli_ok(&["trigger", "dlq", "rconsumer", "events"])
            .contains(&stream)
    })
    .await;
    assert!(
        ok,
        "{}",
        p.cli_ok(&["trigger", "dlq", "rconsumer", "events"])
    );

    // Paused, entries wait in the stream; resumed, they come.
    p.cli_ok(&["trigger", "pause", "rconsumer", "events"]);
    for i in 1000..1005 {
        let _: String = conn
            .xadd(&stream, "*", &[("n", i.to_string().as_str())])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!redis_values(&seen).contains(&"1000".to_owned()));
    p.cli_ok(&["trigger", "resume", "rconsumer", "events"]);
    let ok = eventually(Duration::from_secs(30), || {
        let got: BTreeSet<String> = redis_values(&seen).into_iter().collect();
        (1000..1005).all(|i| got.contains(&i.to_string()))
    })
    .await;
    assert!(ok, "{}", p.server_log());

    // kill -9 with entries arriving: after the restart every one arrives, at least once.
    for i in 20..220 {
        let _: String = conn
            .xadd(&stream, "*", &[("n", i.to_string().as_str())])
            .await
            .unwrap();
        if i == 60 {
            p.kill9_and_restart().await;
        }
    }
    let ok = eventually(Duration::from_secs(90), || {
        let got: BTreeSet<String> = redis_values(&seen).into_iter().collect();
        (20..220).all(|i| got.contains(&i.to_string()))
    })
    .await;
    assert!(ok, "{}", p.server_log());
}

/// A handler that POSTs its version's MARK with each event to `SINK`, failing on `poison`.
const MARKED_PY: &str = r#"
import base64, json, os, urllib.request

def handler(event, context):
    if any(base64.b64decode(r["data"]) == b"poison" for r in event["records"]):
        raise ValueError("a poison message")
    body = json.dumps({"mark": os.environ["MARK"], "event": event}).encode()
    urllib.request.urlopen(urllib.request.Request(os.environ["SINK"], data=body, method="POST")).read()
    return {}
"#;

/// `target` pins a version across redeploys; `on_failure` names a function (queued as an async
/// invocation with the failure document) or a NATS subject (each message republished).
#[tokio::test]
async fn a_pinned_target_and_function_and_nats_destinations() {
    let base = unique("PIN").to_uppercase().replace('-', "_");
    let (stream, dead) = (format!("{base}_IN"), format!("{base}_DEAD"));
    let (subject, dead_subject) = (
        format!("{}.in", base.to_lowercase()),
        format!("{}.dead", base.to_lowercase()),
    );
    let client = async_nats::connect(nats()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for (name, subj) in [(&stream, &subject), (&dead, &dead_subject)] {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subj}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (sink, seen) = receiver().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "trigger_retry_base = \"20ms\"\nasync_retry_base = \"50ms\"\n",
    )
    .unwrap();
    let p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    let catcher = function_dir(&[
        (
            "app.py",
            "import json, os, urllib.request\n\ndef handler(event, context):\n    urllib.request.urlopen(urllib.request.Request(os.environ['SINK'], data=json.dumps(event).encode(), method='POST')).read()\n    return {}\n",
        ),
        (
            "petrel.toml",
            &format!("{}network = \"host\"\n\n[env]\nSINK = \"{sink}/caught\"\n", manifest("catcher", "python3", "app.handler", "")),
        ),
    ]);
    p.deploy(catcher.path());
    let n = nats();
    let common = "starting_position = \"earliest\"\nbatch_size = 1\nbatch_window = \"0s\"\nmax_retries = 0\ntarget = \"1\"\n";
    let consumer = |mark: &str| {
        function_dir(&[
            ("app.py", MARKED_PY),
            (
                "petrel.toml",
                &format!(
                    "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\nMARK = \"{mark}\"\n\n[[trigger]]\nname = \"tofn\"\nkind = \"nats\"\nservers = [\"{n}\"]\nstream = \"{stream}\"\nsubject = \"{subject}.fn\"\n{common}on_failure = \"function:catcher\"\n\n[[trigger]]\nname = \"tonats\"\nkind = \"nats\"\nservers = [\"{n}\"]\nstream = \"{stream}\"\nsubject = \"{subject}.nats\"\n{common}on_failure = \"nats:{dead_subject}.x\"\n",
                    manifest("pinned", "python3", "app.handler", "")
                ),
            ),
        ])
    };
    let v1 = consumer("v1");
    p.deploy(v1.path());
    // A second version; the triggers, pinned to 1, keep invoking version 1.
    let v2 = consumer("v2");
    assert!(p.deploy(v2.path()).contains('2'));
    for s in ["fn", "nats"] {
        for v in ["ok", "poison"] {
            js.publish(format!("{subject}.{s}"), Bytes::from(v))
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let got = |path: &str| -> Vec<serde_json::Value> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, _, b)| serde_json::from_slice(b).unwrap())
            .collect()
    };
    let ok = eventually(Duration::from_secs(60), || {
        got("/got").len() >= 2 && !got("/caught").is_empty()
    })
    .await;
    assert!(
        ok,
        "{:?} {:?}\n{}",
        got("/got"),
        got("/caught"),
        p.server_log()
    );
    assert!(
        got("/got").iter().all(|e| e["mark"] == "v1"),
        "{:?}",
        got("/got")
    );
    // The function destination got the failure document.
    let doc = &got("/caught")[0];
    assert_eq!(doc["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(doc["requestContext"]["trigger"], "nats:tofn");
    assert_eq!(doc["records"][0]["data_base64"], "cG9pc29u");
    // The NATS destination got the message as it was, with why.
    let reader = js
        .get_stream(&dead)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    use futures_util::StreamExt;
    let mut batch = reader
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), batch.next())
        .await
        .unwrap_or_else(|_| panic!("nothing on {dead}\n{}", p.server_log()))
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"poison");
    let h = m.headers.as_ref().unwrap();
    assert_eq!(
        h.get("Petrel-Condition").map(|v| v.as_str()),
        Some("RetriesExhausted")
    );
    assert_eq!(
        h.get("Petrel-Subject").map(|v| v.as_str()),
        Some(format!("{subject}.nats").as_str())
    );
}
