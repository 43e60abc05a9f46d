//! `trigger-bare produce-kafka BROKERS TOPIC PARTITIONS N` and `drain-kafka BROKERS TOPIC GROUP
//! N BATCH`; `produce-nats URL STREAM SUBJECT N` and `drain-nats URL STREAM DURABLE N BATCH`.
//! A drain prints `records/s` for N records, committing (acknowledging) per batch.
//! `produce-redis URL STREAM N` and `drain-redis URL STREAM GROUP N BATCH`.
//! `produce-amqp URL QUEUE N` and `drain-amqp URL QUEUE N BATCH` (RabbitMQ; URL as
//! amqp://user:pass@host:port/%2f); `mqtt-live URL TOPIC N BATCH [bare]` publishes N messages
//! at QoS 1 to TOPIC, and with `bare` also receives them (manual acks, one per message, in
//! batches), printing records/s of the receiving side.
//! `paced-kafka BROKERS TOPIC N RATE` produces N records at RATE per second, printing each
//! one's send time.

use futures_util::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a[0].as_str() {
        "produce-kafka" => {
            let (brokers, topic, parts, n) = (&a[1], &a[2], a[3].parse::<i32>().unwrap(), a[4].parse::<usize>().unwrap());
            let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
                ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
            let _ = admin
                .create_topics(
                    &[rdkafka::admin::NewTopic::new(topic, parts, rdkafka::admin::TopicReplication::Fixed(1))],
                    &rdkafka::admin::AdminOptions::new(),
                )
                .await;
            let p: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "5")
                .create()
                .unwrap();
            let mut pending = futures_util::stream::FuturesUnordered::new();
            for i in 0..n {
                let v = format!("{{\"n\": {i}}}");
                let k = format!("k{}", i % 64);
                let p = p.clone();
                let topic = topic.clone();
                pending.push(async move {
                    p.send(FutureRecord::to(&topic).key(&k).payload(&v), Duration::from_secs(60)).await.map(|_| ())
                });
                if pending.len() >= 10_000 {
                    pending.next().await.unwrap().unwrap();
                }
            }
            while let Some(r) = pending.next().await {
                r.unwrap();
            }
        }
        "paced-kafka" => {
            // One record every 1/RATE s to partition 0; prints each one's send time (ms).
            let (brokers, topic, n, rate) = (&a[1], &a[2], a[3].parse::<usize>().unwrap(), a[4].parse::<f64>().unwrap());
            let p: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "0")
                .create()
                .unwrap();
            let every = Duration::from_secs_f64(1.0 / rate);
            for i in 0..n {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                let v = format!("{{\"n\": {i}}}");
                p.send(FutureRecord::<(), _>::to(topic).partition(0).payload(&v), Duration::from_secs(10))
                    .await
                    .unwrap();
                println!("{t}");
                tokio::time::sleep(every).await;
            }
        }
        "drain-kafka" => {
            let (brokers, topic, group, n, batch) = (&a[1], &a[2], &a[3], a[4].parse::<usize>().unwrap(), a[5].parse::<usize>().unwrap());
            let c: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "100")
                .create()
                .unwrap();
            c.subscribe(&[topic.as_str()]).unwrap();
            let mut got = 0;
            let mut start = None;
            let mut since_commit = 0;
            while got < n {
                let m = c.recv().await.unwrap();
                start.get_or_insert_with(Instant::now);
                got += 1;
                since_commit += 1;
                if since_commit >= batch {
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    tpl.add_partition_offset(m.topic(), m.partition(), rdkafka::Offset::Offset(m.offset() + 1)).unwrap();
                    c.commit(&tpl, CommitMode::Async).unwrap();
                    since_commit = 0;
                }
            }
            let s = start.unwrap().elapsed().as_secs_f64();
            println!("{:.0}", n as f64 / s);
        }
        "produce-nats" => {
            let (url, stream, subject, n) = (&a[1], &a[2], &a[3], a[4].parse::<usize>().unwrap());
            let c = async_nats::connect(url.as_str()).await.unwrap();
            let js = async_nats::jetstream::new(c);
            let _ = js.delete_stream(stream).await;
            js.create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{subject}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
            let mut acks = futures_util::stream::FuturesUnordered::new();
            for i in 0..n {
                let ack = js
                    .publish(format!("{subject}.k{}", i % 64), bytes::Bytes::from(format!("{{\"n\": {i}}}")))
                    .await
                    .unwrap();
                acks.push(std::future::IntoFuture::into_future(ack));
                if acks.len() >= 5_000 {
                    acks.next().await.unwrap().unwrap();
                }
            }
            while let Some(r) = acks.next().await {
                r.unwrap();
            }
        }
        "drain-nats" => {
            let (url, stream, durable, n, batch) = (&a[1], &a[2], &a[3], a[4].parse::<usize>().unwrap(), a[5].parse::<usize>().unwrap());
            let c = async_nats::connect(url.as_str()).await.unwrap();
            let js = async_nats::jetstream::new(c.clone());
            let s = js.get_stream(stream).await.unwrap();
            let consumer = s
                .get_or_create_consumer(
                    durable,
                    async_nats::jetstream::consumer::pull::Config {
                        durable_name: Some(durable.clone()),
                        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                        max_ack_pending: 10_000,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let mut msgs = consumer.stream().max_messages_per_batch(batch.max(64)).messages().await.unwrap();
            let mut got = 0;
            let mut start = None;
            let mut held = Vec::with_capacity(batch);
            while got < n {
                let m = msgs.next().await.unwrap().unwrap();
                start.get_or_insert_with(Instant::now);
                got += 1;
                held.push(m);
                if held.len() >= batch || got == n {
                    for m in held.drain(..) {
                        m.ack().await.unwrap();
                    }
                }
            }
            c.flush().await.unwrap();
            let s = start.unwrap().elapsed().as_secs_f64();
            println!("{:.0}", n as f64 / s);
        }
        "produce-redis" => {
            let (url, stream, n) = (&a[1], &a[2], a[3].parse::<usize>().unwrap());
            let c = redis::Client::open(url.as_str()).unwrap();
            let mut conn = c.get_multiplexed_async_connection().await.unwrap();
            let mut i = 0;
            while i < n {
                let mut pipe = redis::pipe();
                for j in i..(i + 1000).min(n) {
                    pipe.cmd("XADD").arg(stream).arg("*").arg("n").arg(j).arg("key").arg(format!("k{}", j % 64)).ignore();
                }
                let _: () = pipe.query_async(&mut conn).await.unwrap();
                i += 1000;
            }
        }
        "drain-redis" => {
            let (url, stream, group, n, batch) = (&a[1], &a[2], &a[3], a[4].parse::<usize>().unwrap(), a[5].parse::<usize>().unwrap());
            let c = redis::Client::open(url.as_str()).unwrap();
            let mut conn = c.get_multiplexed_async_connection().await.unwrap();
            let _: Result<(), _> = redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg("0").query_async(&mut conn).await;
            let mut got = 0;
            let mut start = None;
            while got < n {
                let r: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP").arg(group).arg("bare").arg("COUNT").arg(batch)
                    .arg("STREAMS").arg(stream).arg(">")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                start.get_or_insert_with(Instant::now);
                let ids: Vec<String> = r.keys.into_iter().flat_map(|k| k.ids).map(|e| e.id).collect();
                got += ids.len();
                if !ids.is_empty() {
                    let _: u64 = redis::cmd("XACK").arg(stream).arg(group).arg(&ids).query_async(&mut conn).await.unwrap();
                }
            }
            let s = start.unwrap().elapsed().as_secs_f64();
            println!("{:.0}", n as f64 / s);
        }
        "produce-amqp" | "drain-amqp" => {
            use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, QueueDeclareArguments};
            let (url, queue, n) = (&a[1], &a[2], a[3].parse::<usize>().unwrap());
            let rest = url.trim_start_matches("amqp://");
            let (creds, hostport) = rest.split('/').next().unwrap().rsplit_once('@').unwrap();
            let (user, pass) = creds.split_once(':').unwrap();
            let (host, port) = hostport.rsplit_once(':').unwrap();
            let conn = amqprs::connection::Connection::open(&amqprs::connection::OpenConnectionArguments::new(host, port.parse().unwrap(), user, pass)).await.unwrap();
            let ch = conn.open_channel(None).await.unwrap();
            ch.queue_declare(QueueDeclareArguments::durable_client_named(queue)).await.unwrap();
            if a[0] == "produce-amqp" {
                for i in 0..n {
                    ch.basic_publish(amqprs::BasicProperties::default(), format!("{{\"n\": {i}}}").into_bytes(), BasicPublishArguments::new("", queue)).await.unwrap();
                }
                // A round trip after the publishes: the broker has them all.
                let mut a = QueueDeclareArguments::new(queue);
                a.passive(true);
                while ch.queue_declare(a.clone()).await.unwrap().unwrap().1 < n as u32 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } else {
                let batch = a[4].parse::<usize>().unwrap();
                ch.basic_qos(BasicQosArguments::new(0, (batch * 2) as u16, false)).await.unwrap();
                let (_, mut rx) = ch.basic_consume_rx(BasicConsumeArguments::new(queue, "bare")).await.unwrap();
                let (mut got, mut start, mut in_batch) = (0, None, 0);
                while got < n {
                    let m = rx.recv().await.unwrap();
                    start.get_or_insert_with(Instant::now);
                    got += 1;
                    in_batch += 1;
                    if in_batch == batch || got == n {
                        ch.basic_ack(BasicAckArguments::new(m.deliver.unwrap().delivery_tag(), true)).await.unwrap();
                        in_batch = 0;
                    }
                }
                println!("{:.0}", n as f64 / start.unwrap().elapsed().as_secs_f64());
            }
            let _ = conn.close().await;
        }
        "mqtt-live" => {
            let (url, topic, n, batch) = (&a[1], &a[2], a[3].parse::<usize>().unwrap(), a[4].parse::<usize>().unwrap());
            let bare = a.get(5).map(String::as_str) == Some("bare");
            // A run that has not finished within two minutes is reported as such (seen: a
            // bare rumqttc pair stalling now and then at full speed on this machine).
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                eprintln!("mqtt-live: not finished within 120 s");
                println!("nan");
                std::process::exit(0);
            });
            let (host, port) = url.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
            let port: u16 = port.parse().unwrap();
            let receiver = if bare {
                let mut o = rumqttc::MqttOptions::new(format!("bare-{}", std::process::id()), host, port);
                o.set_manual_acks(true).set_clean_session(true).set_keep_alive(Duration::from_secs(30));
                let (c, mut ev) = rumqttc::AsyncClient::new(o, batch * 4 + 64);
                c.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.unwrap();
                loop {
                    if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = ev.poll().await.unwrap() {
                        break;
                    }
                }
                Some(tokio::spawn(async move {
                    let (mut got, mut start, mut held) = (0, None, Vec::new());
                    while got < n {
                        let Ok(e) = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await else {
                            eprintln!("mqtt-live: stalled after {got} of {n} messages");
                            println!("nan");
                            std::process::exit(0);
                        };
                        let e = e.unwrap();
                        if std::env::var("MQTT_DEBUG").is_ok() && !matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) | rumqttc::Event::Outgoing(rumqttc::Outgoing::PubAck(_))) {
                            eprintln!("recv side at {got}: {e:?}");
                        }
                        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = e {
                            start.get_or_insert_with(Instant::now);
                            got += 1;
                            held.push(p);
                            if held.len() == batch || got == n {
                                for p in held.drain(..) {
                                    c.ack(&p).await.unwrap();
                                }
                            }
                        }
                    }
                    // Let the last acknowledgements go out.
                    let _ = tokio::time::timeout(Duration::from_millis(200), async { loop { let _ = ev.poll().await; } }).await;
                    println!("{:.0}", n as f64 / start.unwrap().elapsed().as_secs_f64());
                }))
            } else {
                None
            };
            let mut o = rumqttc::MqttOptions::new(format!("pub-{}", std::process::id()), host, port);
            o.set_keep_alive(Duration::from_secs(30)).set_inflight(1000);
            let (c, mut ev) = rumqttc::AsyncClient::new(o, 1000);
            let publisher = tokio::spawn(async move {
                let mut acked = 0;
                while acked < n {
                    let Ok(e) = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await else {
                        eprintln!("mqtt-live: the publisher stalled after {acked} of {n} acknowledgements");
                        return;
                    };
                    if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = e.unwrap() {
                        acked += 1;
                    }
                }
            });
            for i in 0..n {
                c.publish(topic, rumqttc::QoS::AtLeastOnce, false, format!("{{\"n\": {i}}}").into_bytes()).await.unwrap();
            }
            publisher.await.unwrap();
            if let Some(r) = receiver {
                r.await.unwrap();
            }
        }
        other => panic!("unknown command {other}"),
    }
}
