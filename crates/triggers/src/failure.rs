//! Where records a trigger gave up on go (`on_failure`): Petrel's dead-letter list, an async
//! invocation of another function, an `http(s)://` URL, a Kafka topic or a NATS subject.
//!
//! Each destination gets one failure document per dead group (the records, why, how many
//! invocations, the last error), except Kafka and NATS, which get each record as it was, with
//! the failure in headers. A destination that fails is tried again (with backoff) before the
//! records' position is committed: nothing is lost, though the partition waits.

use crate::batch::{Dead, Record, RecordMeta};
use crate::events::{self, Origin};
use crate::TriggerRun;
use bytes::Bytes;
use petrel_core::now_ms;
use petrel_core::trigger::FailureDestination;
use petrel_store::{NewAsync, TriggerDeadLetter};
use serde_json::json;

/// What a Kafka or NATS destination publishes with.
pub(crate) enum Publisher {
    Kafka(rdkafka::producer::FutureProducer),
    Nats(Box<async_nats::jetstream::Context>),
    Amqp(AmqpPublisher),
}

/// An AMQP destination's channel, opened again on its connection when the broker closed it
/// (a publish to an exchange that is not there closes the channel).
pub(crate) struct AmqpPublisher {
    pub conn: amqprs::connection::Connection,
    pub ch: tokio::sync::Mutex<Option<amqprs::channel::Channel>>,
}

/// The failure document: Lambda's on-failure record, with the records as CloudEvents.
fn document(run: &TriggerRun, origin: &Origin, dead: &Dead) -> serde_json::Value {
    json!({
        "version": "1.0",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "requestContext": {
            "condition": dead.condition.as_str(),
            "functionArn": petrel_core::arn::function(&run.function, None),
            "approximateInvokeCount": dead.attempts,
            "trigger": run.label().to_string(),
        },
        "responseContext": { "error": dead.error },
        "records": events::cloudevents_batch(origin, &dead.records),
    })
}

/// Sends one dead group to the trigger's `on_failure`.
pub(crate) async fn send(
    run: &TriggerRun,
    origin: &Origin,
    destination: &FailureDestination,
    publisher: Option<&Publisher>,
    dead: &Dead,
) -> Result<(), String> {
    let deps = &run.deps;
    match destination {
        FailureDestination::Dlq => {
            let now = now_ms();
            let letters: Vec<TriggerDeadLetter> = dead
                .records
                .iter()
                .map(|r| TriggerDeadLetter {
                    // The same record dying twice (redelivered after a crash) is kept once.
                    id: format!("{}/{}", run.spec.name, r.position()),
                    position: r.position(),
                    record: events::cloudevents_batch(origin, std::slice::from_ref(r))[0]
                        .to_string(),
                    error: format!("{}: {}", dead.condition.as_str(), dead.error),
                    attempts: dead.attempts,
                    dead_at: now,
                })
                .collect();
            deps.store
                .add_trigger_dead_letters(&run.namespace, &run.function, &run.spec.name, &letters)
                .await
                .map_err(|e| format!("could not keep the dead letters: {e}"))
        }
        FailureDestination::Function(name) => {
            let body =
                serde_json::to_vec(&document(run, origin, dead)).expect("a document serialises");
            let first = dead
                .records
                .first()
                .map(Record::position)
                .unwrap_or_default();
            let mut n = NewAsync::event(
                petrel_dataplane::new_invocation_id(),
                &run.namespace,
                name,
                body,
                now_ms(),
            );
            // Sent again after a crash, it is still one invocation.
            n.idem_key = Some(format!(
                "trigger:{}/{}/{}/{first}",
                run.function,
                run.spec.name,
                dead.records.len()
            ));
            deps.queue
                .submit(n)
                .await
                .map(|_| ())
                .map_err(|e| format!("could not queue the failure for function {name}: {e}"))
        }
        FailureDestination::Url(url) => {
            let body = Bytes::from(
                serde_json::to_vec(&document(run, origin, dead)).expect("a document serialises"),
            );
            petrel_async::post_json(&deps.http, url, body).await
        }
        FailureDestination::Kafka(topic) => {
            let Some(Publisher::Kafka(p)) = publisher else {
                return Err("no Kafka producer for the failure topic".into());
            };
            for r in &dead.records {
                use rdkafka::message::{Header, OwnedHeaders};
                let mut headers = OwnedHeaders::new();
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_ref()),
                    });
                }
                let position = r.position();
                headers = headers
                    .insert(Header {
                        key: "petrel-condition",
                        value: Some(dead.condition.as_str()),
                    })
                    .insert(Header {
                        key: "petrel-error",
                        value: Some(dead.error.as_str()),
                    })
                    .insert(Header {
                        key: "petrel-position",
                        value: Some(position.as_str()),
                    });
                let mut rec = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic)
                    .payload(r.value.as_ref())
                    .headers(headers);
                if let Some(k) = &r.key {
                    rec = rec.key(k.as_ref());
                }
                p.send(rec, std::time::Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| format!("could not produce to {topic}: {e}"))?;
            }
            Ok(())
        }
        FailureDestination::Nats(subject) => {
            let Some(Publisher::Nats(js)) = publisher else {
                return Err("no NATS connection for the failure subject".into());
            };
            for r in &dead.records {
                let mut headers = async_nats::HeaderMap::new();
                for (k, v) in &r.headers {
                    headers.append(k.as_str(), String::from_utf8_lossy(v).as_ref());
                }
                headers.insert("Petrel-Condition", dead.condition.as_str());
                headers.insert("Petrel-Error", dead.error.as_str());
                headers.insert("Petrel-Position", r.position().as_str());
                if let RecordMeta::Nats { subject: s, .. } = &r.meta {
                    headers.insert("Petrel-Subject", s.as_str());
                }
                js.publish_with_headers(subject.clone(), headers, r.value.clone())
                    .await
                    .map_err(|e| format!("could not publish to {subject}: {e}"))?
                    .await
                    .map_err(|e| {
                        format!("{subject} did not acknowledge (is it bound to a stream?): {e}")
                    })?;
            }
            Ok(())
        }
        FailureDestination::Amqp(exchange) => {
            let Some(Publisher::Amqp(p)) = publisher else {
                return Err("no AMQP channel for the failure exchange".into());
            };
            let mut slot = p.ch.lock().await;
            let result = publish_amqp(&p.conn, &mut slot, exchange, dead).await;
            if result.is_err() {
                // The broker closes a channel on an error (an exchange that is not there):
                // the next try starts on a new one, never on a closed one (a frame on a closed
                // channel costs the whole connection).
                *slot = None;
            }
            result
        }
    }
}

/// The passive declare that checks the exchange is there (and, after publishes on the same
/// ordered channel, that the broker has taken them).
async fn exchange_there(ch: &amqprs::channel::Channel, exchange: &str) -> Result<(), String> {
    let mut check = amqprs::channel::ExchangeDeclareArguments::new(exchange, "direct");
    check.passive(true);
    ch.exchange_declare(check)
        .await
        .map_err(|e| format!("exchange {exchange:?} is not there or did not take the records: {e}"))
}

async fn publish_amqp(
    conn: &amqprs::connection::Connection,
    slot: &mut Option<amqprs::channel::Channel>,
    exchange: &str,
    dead: &Dead,
) -> Result<(), String> {
    if slot.is_none() {
        *slot = Some(
            conn.open_channel(None)
                .await
                .map_err(|e| format!("could not open a channel for exchange {exchange:?}: {e}"))?,
        );
    }
    let ch = slot.as_ref().expect("opened above");
    exchange_there(ch, exchange).await?;
    for r in &dead.records {
        let RecordMeta::Amqp { routing_key, .. } = &r.meta else {
            continue;
        };
        let mut headers = amqprs::FieldTable::new();
        for (k, v) in [
            ("x-petrel-condition", dead.condition.as_str().to_owned()),
            ("x-petrel-error", dead.error.clone()),
            ("x-petrel-position", r.position()),
        ] {
            let (Ok(name), Ok(value)) = (k.try_into(), v.as_str().try_into()) else {
                continue;
            };
            headers.insert(name, amqprs::FieldValue::S(value));
        }
        let mut props = amqprs::BasicProperties::default();
        props.with_headers(headers).with_persistence(true);
        ch.basic_publish(
            props,
            r.value.to_vec(),
            amqprs::channel::BasicPublishArguments::new(exchange, routing_key),
        )
        .await
        .map_err(|e| format!("could not publish to exchange {exchange:?}: {e}"))?;
    }
    exchange_there(ch, exchange).await
}

/// Sends every dead group, trying each again (with backoff) until it goes, or `stop`. Whether
/// all went (only then may their position be committed).
pub(crate) async fn send_all(
    run: &TriggerRun,
    origin: &Origin,
    publisher: Option<&Publisher>,
    dead: &[Dead],
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let Some(settings) = run.spec.source.stream() else {
        return true;
    };
    for d in dead {
        let mut n = 0;
        loop {
            match send(run, origin, &settings.on_failure, publisher, d).await {
                Ok(()) => break,
                Err(e) => {
                    n += 1;
                    tracing::warn!(function = %run.function, trigger = %run.spec.name, destination = %settings.on_failure, error = %e, "could not send dead records to on_failure; trying again");
                    run.status
                        .failing(format!("on_failure {}: {e}", settings.on_failure));
                    tokio::select! {
                        _ = tokio::time::sleep(crate::batch::backoff(run.deps.config.retry_base, n)) => {}
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() {
                        return false;
                    }
                }
            }
        }
    }
    true
}
