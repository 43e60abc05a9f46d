//! The events a trigger's batch becomes. A Lambda-style handler (python3, nodejs, provided)
//! gets Lambda's own shapes: `SelfManagedKafka` for Kafka, a JetStream shape in the same spirit,
//! EventBridge's scheduled event for cron. An `http` or `wasm` function gets a CloudEvents 1.0
//! batch in structured JSON (`application/cloudevents-batch+json`).
//!
//! `docs/triggers.md` shows an example of each.

use crate::batch::{Record, RecordMeta};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The content type of a CloudEvents batch.
pub const CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json";

/// What the source of a batch is, for the event's envelope.
#[derive(Debug, Clone)]
pub enum Origin {
    Kafka {
        brokers: Vec<String>,
    },
    Nats {
        servers: Vec<String>,
        consumer: String,
    },
    Redis {
        url: String,
        group: String,
    },
    Amqp {
        url: String,
        vhost: String,
    },
    Mqtt {
        url: String,
    },
    /// A database's change stream: `kind` is `postgres` or `mysql`.
    Change {
        kind: &'static str,
        url: String,
    },
    /// A bucket's object events: each record's value is its S3 event record.
    S3 {
        bucket: String,
    },
}

/// The host (and port) of a URL, without credentials.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

fn millis_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Lambda's shape for a batch (`SelfManagedKafka`, or Petrel's JetStream shape).
pub fn lambda_event(origin: &Origin, records: &[Record]) -> Value {
    match origin {
        Origin::Kafka { brokers } => {
            let mut by_partition: Map<String, Value> = Map::new();
            for r in records {
                let RecordMeta::Kafka {
                    topic,
                    partition,
                    offset,
                    timestamp_type,
                } = &r.meta
                else {
                    continue;
                };
                // Lambda gives each header as {name: [byte, ...]}.
                let headers: Vec<Value> = r
                    .headers
                    .iter()
                    .map(|(k, v)| json!({ k: v.iter().map(|b| *b as i8).collect::<Vec<_>>() }))
                    .collect();
                let mut rec = json!({
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "timestamp": r.timestamp_ms,
                    "timestampType": timestamp_type,
                    "value": B64.encode(&r.value),
                    "headers": headers,
                });
                if let Some(k) = &r.key {
                    rec["key"] = json!(B64.encode(k));
                }
                by_partition
                    .entry(format!("{topic}-{partition}"))
                    .or_insert_with(|| Value::Array(vec![]))
                    .as_array_mut()
                    .expect("an array")
                    .push(rec);
            }
            json!({
                "eventSource": "SelfManagedKafka",
                "bootstrapServers": brokers.join(","),
                "records": by_partition,
            })
        }
        Origin::Nats { servers, consumer } => {
            let recs: Vec<Value> = records
                .iter()
                .filter_map(|r| {
                    let RecordMeta::Nats {
                        stream,
                        subject,
                        sequence,
                        delivered,
                    } = &r.meta
                    else {
                        return None;
                    };
                    let mut headers: Map<String, Value> = Map::new();
                    for (k, v) in &r.headers {
                        headers
                            .entry(k.clone())
                            .or_insert_with(|| Value::Array(vec![]))
                            .as_array_mut()
                            .expect("an array")
                            .push(json!(String::from_utf8_lossy(v)));
                    }
                    Some(json!({
                        "stream": stream,
                        "subject": subject,
                        "sequence": sequence,
                        "timestamp": r.timestamp_ms,
                        "deliveryCount": delivered,
                        "data": B64.encode(&r.value),
                        "headers": headers,
                    }))
                })
                .collect();
            json!({
                "eventSource": "petrel:nats",
                "servers": servers.join(","),
                "consumer": consumer,
                "records": recs,
            })
        }
        Origin::Redis { url, group } => {
            let recs: Vec<Value> = records
                .iter()
                .filter_map(|r| {
                    let RecordMeta::Redis {
                        stream,
                        id,
                        delivered,
                    } = &r.meta
                    else {
                        return None;
                    };
                    Some(json!({
                        "stream": stream,
                        "id": id,
                        "timestamp": r.timestamp_ms,
                        "deliveryCount": delivered,
                        "fields": serde_json::from_slice::<Value>(&r.value).unwrap_or(Value::Null),
                    }))
                })
                .collect();
            json!({
                "eventSource": "petrel:redis",
                "url": redact(url),
                "group": group,
                "records": recs,
            })
        }
        Origin::Amqp { url, vhost } => {
            // Lambda's Amazon MQ (RabbitMQ) shape: messages by "queue::vhost".
            let mut by_queue: Map<String, Value> = Map::new();
            for r in records {
                let RecordMeta::Amqp {
                    queue,
                    redelivered,
                    properties,
                    ..
                } = &r.meta
                else {
                    continue;
                };
                by_queue
                    .entry(format!("{queue}::{vhost}"))
                    .or_insert_with(|| Value::Array(vec![]))
                    .as_array_mut()
                    .expect("an array")
                    .push(json!({
                        "basicProperties": properties.as_ref(),
                        "redelivered": redelivered,
                        "data": B64.encode(&r.value),
                    }));
            }
            json!({
                "eventSource": "aws:rmq",
                "eventSourceArn": format!("arn:aws:mq:{}:{}:broker:{}", petrel_core::arn::REGION, petrel_core::arn::ACCOUNT, host_of(url)),
                "rmqMessagesByQueue": by_queue,
            })
        }
        Origin::Mqtt { url } => {
            let recs: Vec<Value> = records
                .iter()
                .filter_map(|r| {
                    let RecordMeta::Mqtt {
                        topic,
                        qos,
                        retain,
                        dup,
                        ..
                    } = &r.meta
                    else {
                        return None;
                    };
                    Some(json!({
                        "topic": topic,
                        "qos": qos,
                        "retain": retain,
                        "dup": dup,
                        "timestamp": r.timestamp_ms,
                        "data": B64.encode(&r.value),
                    }))
                })
                .collect();
            json!({
                "eventSource": "petrel:mqtt",
                "broker": redact(url),
                "records": recs,
            })
        }
        Origin::S3 { .. } => {
            // Lambda's S3 event.
            let recs: Vec<Value> = records
                .iter()
                .map(|r| serde_json::from_slice::<Value>(&r.value).unwrap_or(Value::Null))
                .collect();
            json!({ "Records": recs })
        }
        Origin::Change { kind, .. } => {
            // Each record's value is its change envelope (op, before, after, source).
            let recs: Vec<Value> = records
                .iter()
                .map(|r| serde_json::from_slice::<Value>(&r.value).unwrap_or(Value::Null))
                .collect();
            json!({
                "eventSource": format!("petrel:{kind}"),
                "records": recs,
            })
        }
    }
}

/// A URL without its password, for events and status.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// One record as a CloudEvent: `data` when the value is JSON, else `data_base64`.
fn cloud_event(origin: &Origin, r: &Record) -> Value {
    let (source, kind, subject) = match (&r.meta, origin) {
        (
            RecordMeta::Kafka {
                topic, partition, ..
            },
            Origin::Kafka { brokers },
        ) => (
            format!(
                "kafka://{}/{topic}",
                brokers.first().map(String::as_str).unwrap_or("")
            ),
            "dev.petrel.kafka.record",
            format!("{partition}"),
        ),
        (
            RecordMeta::Nats {
                stream, subject, ..
            },
            Origin::Nats { servers, .. },
        ) => (
            format!(
                "{}/{stream}",
                servers.first().map(String::as_str).unwrap_or("nats://")
            ),
            "dev.petrel.nats.message",
            subject.clone(),
        ),
        (RecordMeta::Redis { stream, .. }, Origin::Redis { url, .. }) => (
            format!("{}/{stream}", redact(url).trim_end_matches('/')),
            "dev.petrel.redis.entry",
            stream.clone(),
        ),
        (
            RecordMeta::Amqp {
                queue, routing_key, ..
            },
            Origin::Amqp { url, vhost },
        ) => (
            format!(
                "amqp://{}/{}/{queue}",
                host_of(url),
                vhost.trim_matches('/')
            ),
            "dev.petrel.amqp.message",
            routing_key.clone(),
        ),
        (RecordMeta::Mqtt { topic, .. }, Origin::Mqtt { url }) => (
            format!("mqtt://{}", host_of(url)),
            "dev.petrel.mqtt.message",
            topic.clone(),
        ),
        (RecordMeta::Change { table, .. }, Origin::S3 { bucket }) => (
            format!("s3://{bucket}"),
            "dev.petrel.s3.object",
            table.clone(),
        ),
        (RecordMeta::Change { table, .. }, Origin::Change { kind, url }) => (
            format!("{kind}://{}/{table}", host_of(url)),
            if *kind == "postgres" {
                "dev.petrel.postgres.change"
            } else {
                "dev.petrel.mysql.change"
            },
            table.clone(),
        ),
        _ => (String::new(), "dev.petrel.record", String::new()),
    };
    let mut e = json!({
        "specversion": "1.0",
        "id": r.id,
        "source": source,
        "type": kind,
        "subject": subject,
        "time": millis_rfc3339(r.timestamp_ms),
    });
    match serde_json::from_slice::<Value>(&r.value) {
        Ok(v) if !r.value.is_empty() => {
            e["datacontenttype"] = json!("application/json");
            e["data"] = v;
        }
        _ => {
            e["datacontenttype"] = json!("application/octet-stream");
            e["data_base64"] = json!(B64.encode(&r.value));
        }
    }
    if let Some(k) = &r.key {
        e["partitionkey"] = json!(String::from_utf8_lossy(k));
    }
    match &r.meta {
        RecordMeta::Kafka { offset, .. } => e["kafkaoffset"] = json!(offset),
        RecordMeta::Nats {
            sequence,
            delivered,
            ..
        } => {
            e["natssequence"] = json!(sequence);
            e["natsdelivered"] = json!(delivered);
        }
        RecordMeta::Redis { delivered, .. } => e["redisdelivered"] = json!(delivered),
        RecordMeta::Amqp { redelivered, .. } => e["amqpredelivered"] = json!(redelivered),
        RecordMeta::Mqtt { dup, .. } => e["mqttdup"] = json!(dup),
        RecordMeta::Change { position, .. } => e["changeposition"] = json!(position),
    }
    e
}

/// A CloudEvents batch of the records.
pub fn cloudevents_batch(origin: &Origin, records: &[Record]) -> Value {
    Value::Array(records.iter().map(|r| cloud_event(origin, r)).collect())
}

/// A cron fire as EventBridge's scheduled event, for a Lambda-style handler.
pub fn scheduled_event(id: &str, rule: &str, due_ms: i64, detail: Value) -> Value {
    json!({
        "version": "0",
        "id": id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": petrel_core::arn::ACCOUNT,
        "time": chrono::DateTime::from_timestamp_millis(due_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": petrel_core::arn::REGION,
        "resources": [petrel_core::arn::schedule_rule(rule)],
        "detail": detail,
    })
}

/// A cron fire as a CloudEvents batch of one, for an `http` or `wasm` function.
pub fn scheduled_cloudevent(id: &str, rule: &str, due_ms: i64, detail: Value) -> Value {
    json!([{
        "specversion": "1.0",
        "id": id,
        "source": format!("petrel:cron/{rule}"),
        "type": "dev.petrel.cron.fire",
        "time": chrono::DateTime::from_timestamp_millis(due_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "datacontenttype": "application/json",
        "data": detail,
    }])
}

/// The `itemIdentifier`s of a partial batch response (`{"batchItemFailures": [...]}`), or
/// `None` when the answer is not one. Identifiers may be strings or numbers.
pub fn batch_item_failures(answer: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(answer).ok()?;
    let list = v.get("batchItemFailures")?.as_array()?;
    Some(
        list.iter()
            .filter_map(|f| match f.get("itemIdentifier")? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kafka_record(offset: i64, value: &str) -> Record {
        Record {
            id: offset.to_string(),
            key: Some(Bytes::from_static(b"k1")),
            value: Bytes::from(value.to_owned()),
            headers: vec![("h".into(), Bytes::from_static(b"ab"))],
            timestamp_ms: 1_700_000_000_000,
            meta: RecordMeta::Kafka {
                topic: "orders".into(),
                partition: 2,
                offset,
                timestamp_type: "CREATE_TIME",
            },
        }
    }

    #[test]
    fn kafka_batches_take_lambdas_self_managed_shape() {
        let origin = Origin::Kafka {
            brokers: vec!["b1:9092".into(), "b2:9092".into()],
        };
        let e = lambda_event(
            &origin,
            &[kafka_record(7, "{\"a\":1}"), kafka_record(8, "x")],
        );
        assert_eq!(e["eventSource"], "SelfManagedKafka");
        assert_eq!(e["bootstrapServers"], "b1:9092,b2:9092");
        let recs = e["records"]["orders-2"].as_array().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["offset"], 7);
        assert_eq!(recs[0]["key"], B64.encode("k1"));
        assert_eq!(recs[1]["value"], B64.encode("x"));
        assert_eq!(recs[0]["headers"][0]["h"], json!([97, 98]));
    }

    #[test]
    fn cloudevents_carry_json_as_data_and_bytes_as_base64() {
        let origin = Origin::Kafka {
            brokers: vec!["b1:9092".into()],
        };
        let b = cloudevents_batch(
            &origin,
            &[kafka_record(7, "{\"a\":1}"), kafka_record(8, "x")],
        );
        assert_eq!(b[0]["specversion"], "1.0");
        assert_eq!(b[0]["data"]["a"], 1);
        assert_eq!(b[0]["source"], "kafka://b1:9092/orders");
        assert_eq!(b[1]["data_base64"], B64.encode("x"));
        assert_eq!(b[1]["id"], "8");
    }

    #[test]
    fn partial_batch_responses_read_strings_and_numbers() {
        assert_eq!(
            batch_item_failures(
                br#"{"batchItemFailures":[{"itemIdentifier":"3"},{"itemIdentifier":9}]}"#
            ),
            Some(vec!["3".to_owned(), "9".to_owned()])
        );
        assert_eq!(
            batch_item_failures(br#"{"batchItemFailures":[]}"#),
            Some(vec![])
        );
        assert_eq!(batch_item_failures(b"null"), None);
        assert_eq!(batch_item_failures(b"ok"), None);
    }
}
