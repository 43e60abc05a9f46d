//! RabbitMQ and MQTT triggers against the real brokers `scripts/services.sh` starts: messages
//! reach a handler in its shape, a failing one is retried and ends in `on_failure`, nothing
//! settled is left unacknowledged, a pause holds messages in the broker, and a `kill -9` of
//! Petrel in the middle of a stream loses none.

use crate::harness::*;
use crate::triggers::{events, triggers_json, unique};
use amqprs::channel::{
    BasicGetArguments, BasicPublishArguments, Channel, ExchangeDeclareArguments,
    QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;
use std::collections::BTreeSet;
use std::time::Duration;

fn amqp_url() -> String {
    std::env::var("PETREL_TEST_AMQP").expect(
        "trigger tests need PETREL_TEST_AMQP: run them through scripts/test.sh, or `. scripts/services.sh` first",
    )
}

fn mqtt_url() -> String {
    std::env::var("PETREL_TEST_MQTT").expect(
        "trigger tests need PETREL_TEST_MQTT: run them through scripts/test.sh, or `. scripts/services.sh` first",
    )
}

async fn rabbit() -> (Connection, Channel) {
    // amqp://guest:guest@127.0.0.1:PORT/%2f
    let url = amqp_url();
    let hostport = url
        .rsplit_once('@')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let conn = Connection::open(&OpenConnectionArguments::new(
        host,
        port.parse().unwrap(),
        "guest",
        "guest",
    ))
    .await
    .unwrap();
    let ch = conn.open_channel(None).await.unwrap();
    (conn, ch)
}

async fn publish(ch: &Channel, queue: &str, body: &str) {
    let mut props = BasicProperties::default();
    props
        .with_content_type("text/plain")
        .with_persistence(true)
        .with_message_id(body);
    ch.basic_publish(
        props,
        body.as_bytes().to_vec(),
        BasicPublishArguments::new("", queue),
    )
    .await
    .unwrap();
}

/// Messages ready in a queue (not delivered, or given back).
async fn ready(ch: &Channel, queue: &str) -> u32 {
    let mut a = QueueDeclareArguments::new(queue);
    a.passive(true);
    ch.queue_declare(a).await.unwrap().unwrap().1
}

/// The bodies of every RabbitMQ message the sink got, in the order it got them.
fn rmq_bodies(seen: &Seen) -> Vec<String> {
    use base64::Engine as _;
    let mut out = vec![];
    for e in events(seen) {
        for (_, msgs) in e["rmqMessagesByQueue"].as_object().unwrap() {
            for m in msgs.as_array().unwrap() {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(m["data"].as_str().unwrap())
                    .unwrap();
                out.push(String::from_utf8(b).unwrap());
            }
        }
    }
    out
}

/// A handler that POSTs each event to `SINK` and fails on a message whose body is `poison`
/// (RabbitMQ's and MQTT's shapes both carry base64 `data`).
const QUEUE_SINK_PY: &str = r#"
import base64, json, os, urllib.request

def datas(event):
    if "rmqMessagesByQueue" in event:
        return [m["data"] for q in event["rmqMessagesByQueue"].values() for m in q]
    return [r["data"] for r in event["records"]]

def handler(event, context):
    if any(base64.b64decode(d) == b"poison" for d in datas(event)):
        raise ValueError("a poison message")
    req = urllib.request.Request(os.environ["SINK"], data=json.dumps(event).encode(), method="POST")
    urllib.request.urlopen(req).read()
    return {}
"#;

fn queue_function(name: &str, sink: &str, trigger: &str) -> tempfile::TempDir {
    function_dir(&[
        ("app.py", QUEUE_SINK_PY),
        (
            "petrel.toml",
            &format!(
                "{}network = \"host\"\n\n[env]\nSINK = \"{sink}/got\"\n\n{trigger}",
                manifest(name, "python3", "app.handler", "")
            ),
        ),
    ])
}

async fn start() -> (Petrel, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "trigger_retry_base = \"20ms\"\n").unwrap();
    let p = Petrel::start_with(
        StoreKind::Sqlite,
        &["--config", config.path().to_str().unwrap()],
    )
    .await;
    (p, config)
}

async fn state_of(p: &Petrel, function: &str) -> String {
    triggers_json(p, function).await["triggers"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn rabbitmq_messages_reach_a_handler_in_lambdas_shape_pause_and_survive_a_kill_9() {
    let queue = unique("orders");
    let dlx = unique("dead-orders");
    let (_conn, ch) = rabbit().await;
    ch.queue_declare(QueueDeclareArguments::durable_client_named(&queue))
        .await
        .unwrap();
    let (sink, seen) = receiver().await;
    let (mut p, _config) = start().await;
    let dir = queue_function(
        "rq",
        &sink,
        &format!(
            "[[trigger]]\nname = \"orders\"\nkind = \"amqp\"\nurl = \"{}\"\nqueue = \"{queue}\"\nbatch_size = 5\nbatch_window = \"100ms\"\nmax_retries = 1\nbisect_on_error = true\non_failure = \"amqp:{dlx}\"\n",
            amqp_url()
        ),
    );
    p.deploy(dir.path());
    for _ in 0..100 {
        if state_of(&p, "rq").await == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..20 {
        let body = if i == 7 {
            "poison".to_owned()
        } else {
            i.to_string()
        };
        publish(&ch, &queue, &body).await;
    }
    // The dead-letter exchange is not there yet: the trigger says so and keeps the poison
    // message (and what follows it) until it is.
    let mut said = serde_json::Value::Null;
    for _ in 0..200 {
        said = triggers_json(&p, "rq").await["triggers"][0].clone();
        if said["error"].as_str().is_some_and(|e| e.contains(&dlx)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(said["state"], "failing", "{said}\n{}", p.server_log());
    // The exchange and a queue bound to it, to read what was given up on.
    ch.exchange_declare(ExchangeDeclareArguments::new(&dlx, "fanout"))
        .await
        .unwrap();
    ch.queue_declare(QueueDeclareArguments::durable_client_named(&dlx))
        .await
        .unwrap();
    ch.queue_bind(QueueBindArguments::new(&dlx, &dlx, ""))
        .await
        .unwrap();
    let ok = eventually(Duration::from_secs(60), || rmq_bodies(&seen).len() >= 19).await;
    assert!(ok, "{:?}\n{}", rmq_bodies(&seen), p.server_log());
    let expected: Vec<String> = (0..20).filter(|i| *i != 7).map(|i| i.to_string()).collect();
    assert_eq!(rmq_bodies(&seen), expected, "{}", p.server_log());
    let e = &events(&seen)[0];
    assert_eq!(e["eventSource"], "aws:rmq");
    let msgs = &e["rmqMessagesByQueue"][format!("{queue}::/")];
    assert_eq!(msgs[0]["basicProperties"]["contentType"], "text/plain");
    assert_eq!(msgs[0]["basicProperties"]["deliveryMode"], 2);
    assert_eq!(msgs[0]["basicProperties"]["messageId"], "0");
    assert_eq!(msgs[0]["redelivered"], false);
    // The poison message went to the dead-letter exchange, with why.
    let mut dead = None;
    // Its retries back off; a loaded machine (the whole suite at once) stretches them.
    for _ in 0..300 {
        dead = ch
            .basic_get(BasicGetArguments::new(&dlx).no_ack(true).finish())
            .await
            .unwrap();
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, props, body) = dead.expect("the poison message in the dead-letter queue");
    assert_eq!(body, b"poison");
    let headers = props.headers().expect("failure headers").to_string();
    assert!(headers.contains("a poison message"), "{headers}");
    assert_eq!(ready(&ch, &queue).await, 0);

    // Paused, the trigger leaves messages in the queue; resumed, it takes them.
    p.cli_ok(&["trigger", "pause", "rq", "orders"]);
    for i in 100..105 {
        publish(&ch, &queue, &i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ready(&ch, &queue).await, 5, "{}", p.server_log());
    assert!(!rmq_bodies(&seen).contains(&"100".to_owned()));
    p.cli_ok(&["trigger", "resume", "rq", "orders"]);
    let ok = eventually(Duration::from_secs(30), || {
        let got: BTreeSet<String> = rmq_bodies(&seen).into_iter().collect();
        (100..105).all(|i| got.contains(&i.to_string()))
    })
    .await;
    assert!(ok, "{}", p.server_log());

    // kill -9 with messages arriving: after the restart every one arrives, at least once.
    for i in 200..400 {
        publish(&ch, &queue, &i.to_string()).await;
        if i == 240 {
            p.kill9_and_restart().await;
        }
    }
    let ok = eventually(Duration::from_secs(90), || {
        let got: BTreeSet<String> = rmq_bodies(&seen).into_iter().collect();
        (200..400).all(|i| got.contains(&i.to_string()))
    })
    .await;
    assert!(ok, "{}", p.server_log());
    // Everything settled was acknowledged: once Petrel is gone, nothing comes back to the
    // queue (what a consumer holds unacknowledged returns when its connection closes).
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ready(&ch, &queue).await, 0);
}

/// The payloads of every MQTT message the sink got, in the order it got them.
fn mqtt_payloads(seen: &Seen) -> Vec<String> {
    use base64::Engine as _;
    events(seen)
        .iter()
        .flat_map(|e| {
            e["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(r["data"].as_str().unwrap())
                        .unwrap();
                    String::from_utf8(b).unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An MQTT publisher at QoS 1, its event loop turning in the background.
async fn mqtt_publisher() -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    let url = mqtt_url();
    let hostport = url.trim_start_matches("mqtt://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let mut opts = rumqttc::MqttOptions::new(unique("pub"), host, port.parse().unwrap());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 1000);
    let task = tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (client, task)
}

#[tokio::test]
async fn mqtt_messages_reach_a_handler_are_acknowledged_and_survive_pause_and_a_kill_9() {
    let base = unique("sensors");
    let (sink, seen) = receiver().await;
    let (mut p, _config) = start().await;
    let dir = queue_function(
        "mq",
        &sink,
        &format!(
            "[[trigger]]\nname = \"temps\"\nkind = \"mqtt\"\nurl = \"{}\"\ntopic = \"{base}/+/temperature\"\nbatch_size = 5\nbatch_window = \"100ms\"\nmax_retries = 1\nbisect_on_error = true\n",
            mqtt_url()
        ),
    );
    p.deploy(dir.path());
    for _ in 0..100 {
        if state_of(&p, "mq").await == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state_of(&p, "mq").await, "running", "{}", p.server_log());
    let (client, _pub_task) = mqtt_publisher().await;
    let send = |topic: String, body: String| {
        let client = client.clone();
        async move {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.into_bytes())
                .await
                .unwrap()
        }
    };
    for i in 0..20 {
        let body = if i == 7 {
            "poison".to_owned()
        } else {
            i.to_string()
        };
        send(format!("{base}/kitchen/temperature"), body).await;
    }
    // Outside the filter: never delivered.
    send(format!("{base}/kitchen/humidity"), "no".into()).await;
    let ok = eventually(Duration::from_secs(60), || mqtt_payloads(&seen).len() >= 19).await;
    assert!(ok, "{:?}\n{}", mqtt_payloads(&seen), p.server_log());
    let expected: Vec<String> = (0..20).filter(|i| *i != 7).map(|i| i.to_string()).collect();
    assert_eq!(mqtt_payloads(&seen), expected, "{}", p.server_log());
    let e = &events(&seen)[0];
    assert_eq!(e["eventSource"], "petrel:mqtt");
    assert_eq!(
        e["records"][0]["topic"],
        format!("{base}/kitchen/temperature")
    );
    assert_eq!(e["records"][0]["qos"], 1);
    let ok = eventually(Duration::from_secs(30), || {
        p.cli_ok(&["trigger", "dlq", "mq", "temps"])
            .contains("poison")
            || p.cli_ok(&["trigger", "dlq", "mq", "temps"])
                .contains("cG9pc29u")
    })
    .await;
    assert!(ok, "{}", p.cli_ok(&["trigger", "dlq", "mq", "temps"]));

    // Paused, messages wait in the broker (the session persists); resumed, they come.
    p.cli_ok(&["trigger", "pause", "mq", "temps"]);
    for i in 100..105 {
        send(format!("{base}/hall/temperature"), i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!mqtt_payloads(&seen).contains(&"100".to_owned()));
    p.cli_ok(&["trigger", "resume", "mq", "temps"]);
    let ok = eventually(Duration::from_secs(30), || {
        let got: BTreeSet<String> = mqtt_payloads(&seen).into_iter().collect();
        (100..105).all(|i| got.contains(&i.to_string()))
    })
    .await;
    assert!(ok, "{:?}\n{}", mqtt_payloads(&seen), p.server_log());

    // kill -9 with messages arriving: after the restart every one arrives, at least once.
    for i in 200..400 {
        send(format!("{base}/hall/temperature"), i.to_string()).await;
        if i == 240 {
            p.kill9_and_restart().await;
        }
    }
    let ok = eventually(Duration::from_secs(90), || {
        let got: BTreeSet<String> = mqtt_payloads(&seen).into_iter().collect();
        (200..400).all(|i| got.contains(&i.to_string()))
    })
    .await;
    let got: BTreeSet<String> = mqtt_payloads(&seen).into_iter().collect();
    let missing: Vec<i32> = (200..400)
        .filter(|i| !got.contains(&i.to_string()))
        .collect();
    assert!(ok, "missing {missing:?}\n{}", p.server_log());
    assert!(!mqtt_payloads(&seen).contains(&"no".to_owned()));
}
