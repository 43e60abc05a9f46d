//! A RabbitMQ (AMQP 0-9-1) trigger's consumer: one consumer per server on the trigger's queue
//! (the broker spreads deliveries over the servers), manual acknowledgements once a batch is
//! settled, a prefetch of two batches (so the next one fills while one runs). Deliveries not
//! acknowledged when a server stops or dies go back to the queue for another consumer: the
//! broker does that when the channel closes.

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::failure::Publisher;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, Channel, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{FieldTable, FieldValue};
use bytes::Bytes;
use petrel_core::trigger::{AmqpSource, FailureDestination};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub(crate) async fn run(run: Arc<TriggerRun>, src: AmqpSource, stop: watch::Receiver<bool>) {
    crate::supervise(&run, stop, |stop| consume(&run, &src, stop)).await
}

/// The parts of `amqp://user:password@host:port/vhost` (RabbitMQ's URI form: the vhost is
/// percent-encoded, `%2f` for `/`, which is also the default).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AmqpUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

pub(crate) fn parse_url(url: &str) -> Result<AmqpUrl, String> {
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| format!("{}: not an amqp:// URL", crate::events::redact(url)))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((a, b)) => (percent_decode(a)?, percent_decode(b)?),
            None => (percent_decode(u)?, String::new()),
        },
        None => ("guest".to_owned(), "guest".to_owned()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_owned(),
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} in the amqp URL is not a port"))?,
        ),
        _ => (hostport.to_owned(), 5672),
    };
    if host.is_empty() {
        return Err("the amqp URL names no host".into());
    }
    let vhost = match path.split('?').next().unwrap_or("") {
        "" => "/".to_owned(),
        p => percent_decode(p)?,
    };
    Ok(AmqpUrl {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        user,
        password,
        vhost,
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{s:?} has a bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Opens a connection and a channel, within 5 s.
pub(crate) async fn connect(url: &str, name: &str) -> Result<(Connection, Channel), String> {
    let u = parse_url(url)?;
    let shown = crate::events::redact(url);
    let mut args = OpenConnectionArguments::new(&u.host, u.port, &u.user, &u.password);
    args.virtual_host(&u.vhost)
        .connection_name(name)
        .heartbeat(30);
    let open = async {
        let conn = Connection::open(&args)
            .await
            .map_err(|e| format!("could not connect to {shown}: {e}"))?;
        let ch = conn
            .open_channel(None)
            .await
            .map_err(|e| format!("could not open a channel on {shown}: {e}"))?;
        Ok::<_, String>((conn, ch))
    };
    tokio::time::timeout(Duration::from_secs(5), open)
        .await
        .map_err(|_| format!("could not connect to {shown} within 5 s"))?
}

/// The messages ready in the queue (the broker's count), or why it could not be read. A
/// passive declare, so a queue that does not exist is an error rather than created.
async fn ready(ch: &Channel, queue: &str) -> Result<u64, String> {
    let mut args = QueueDeclareArguments::new(queue);
    args.passive(true);
    match ch.queue_declare(args).await {
        Ok(Some((_, count, _))) => Ok(count as u64),
        Ok(None) => Ok(0),
        Err(e) => Err(format!(
            "queue {queue:?} is not there ({e}): declare it (with its arguments, such as a dead-letter exchange) before the trigger reads it"
        )),
    }
}

/// A header or property table as JSON, the way Lambda shows RabbitMQ's: text as
/// `{"bytes": [...]}`, numbers and booleans as themselves.
fn field_value(v: &FieldValue) -> Value {
    match v {
        FieldValue::t(b) => json!(b),
        FieldValue::b(n) => json!(n),
        FieldValue::B(n) => json!(n),
        FieldValue::s(n) => json!(n),
        FieldValue::u(n) => json!(n),
        FieldValue::I(n) => json!(n),
        FieldValue::i(n) => json!(n),
        FieldValue::l(n) => json!(n),
        FieldValue::f(n) => json!(n),
        FieldValue::d(n) => json!(n),
        FieldValue::T(t) => json!(t),
        FieldValue::S(s) => {
            let text: &String = s.as_ref();
            json!({ "bytes": text.as_bytes() })
        }
        FieldValue::F(t) => field_table(t),
        FieldValue::V => Value::Null,
        other => match serde_json::to_value(other) {
            Ok(Value::Object(m)) => m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null),
            Ok(v) => v,
            Err(_) => Value::Null,
        },
    }
}

fn field_table(t: &FieldTable) -> Value {
    let map: &HashMap<amqprs::FieldName, FieldValue> = t.as_ref();
    let mut out = Map::new();
    let mut names: Vec<_> = map.keys().collect();
    names.sort_by_key(|k| k.to_string());
    for k in names {
        out.insert(k.to_string(), field_value(&map[k]));
    }
    Value::Object(out)
}

/// Lambda's `basicProperties` of a message.
fn basic_properties(p: Option<&amqprs::BasicProperties>, body_size: usize) -> Value {
    let text = |v: Option<&String>| v.map_or(Value::Null, |s| json!(s));
    let Some(p) = p else {
        return json!({ "bodySize": body_size });
    };
    json!({
        "contentType": text(p.content_type()),
        "contentEncoding": text(p.content_encoding()),
        "headers": p.headers().map_or(Value::Null, field_table),
        "deliveryMode": p.delivery_mode(),
        "priority": p.priority(),
        "correlationId": text(p.correlation_id()),
        "replyTo": text(p.reply_to()),
        "expiration": text(p.expiration()),
        "messageId": text(p.message_id()),
        // Lambda writes it as "Jan 1, 1970, 12:33:41 AM".
        "timestamp": p.timestamp().and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0)).map(|t| t.format("%b %-d, %Y, %-I:%M:%S %p").to_string()),
        "type": text(p.message_type()),
        "userId": text(p.user_id()),
        "appId": text(p.app_id()),
        "clusterId": text(p.cluster_id()),
        "bodySize": body_size,
    })
}

async fn consume(
    run: &Arc<TriggerRun>,
    src: &AmqpSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = &src.settings;
    let me = format!("petrel-{}-{}", run.deps.config.worker_id, run.spec.name);
    let (conn, ch) = connect(&src.url, &me).await?;
    // The lag and the failure exchange go on a channel of their own: a failed passive declare
    // closes its channel, which must not be the consumer's.
    let control = conn
        .open_channel(None)
        .await
        .map_err(|e| format!("could not open a channel: {e}"))?;
    ready(&control, &src.queue).await?;
    let publisher = match &settings.on_failure {
        FailureDestination::Amqp(_) => {
            Some(Arc::new(Publisher::Amqp(crate::failure::AmqpPublisher {
                ch: tokio::sync::Mutex::new(None),
                conn: conn.clone(),
            })))
        }
        _ => None,
    };
    let prefetch = (settings.batch_size as usize * 2).min(u16::MAX as usize) as u16;
    ch.basic_qos(BasicQosArguments::new(0, prefetch, false))
        .await
        .map_err(|e| format!("could not set the prefetch: {e}"))?;
    let (_tag, mut deliveries) = ch
        .basic_consume_rx(BasicConsumeArguments::new(&src.queue, &me))
        .await
        .map_err(|e| format!("could not consume from {:?}: {e}", src.queue))?;
    let vhost = parse_url(&src.url)?.vhost;
    let origin = Arc::new(Origin::Amqp {
        url: src.url.clone(),
        vhost: vhost.clone(),
    });
    let slots = run.slots();
    let mut lanes: HashMap<usize, Arc<Lane<u64>>> = HashMap::new();
    let mut workers = tokio::task::JoinSet::new();
    let (lanes_stop_tx, lanes_stop) = watch::channel(false);
    let lag_task = tokio::spawn(report_lag(run.clone(), control.clone(), src.queue.clone()));
    run.status.set(RunState::Running);
    // One lane acknowledges in delivery order, so a batch's last tag acknowledges it whole.
    let one_lane = settings.parallelization <= 1;
    let result: Result<(), String> = loop {
        let msg = tokio::select! {
            m = deliveries.recv() => m,
            _ = stop.changed() => break Ok(()),
            _ = conn.listen_network_io_failure() => break Err("the connection to the broker was lost".into()),
        };
        let Some(msg) = msg else {
            break Err("the broker closed the consumer's channel".into());
        };
        let (Some(deliver), Some(body)) = (msg.deliver, msg.content) else {
            continue;
        };
        let tag = deliver.delivery_tag();
        let props = msg.basic_properties;
        let ts = props
            .as_ref()
            .and_then(|p| p.timestamp())
            .map(|t| t as i64 * 1000)
            .unwrap_or_else(petrel_core::now_ms);
        let routing_key = deliver.routing_key().clone();
        let rec = Record {
            id: tag.to_string(),
            key: Some(Bytes::from(routing_key.clone().into_bytes())),
            headers: Vec::new(),
            timestamp_ms: ts,
            meta: RecordMeta::Amqp {
                queue: src.queue.clone(),
                exchange: deliver.exchange().clone(),
                routing_key,
                delivery_tag: tag,
                redelivered: deliver.redelivered(),
                properties: Arc::new(basic_properties(props.as_ref(), body.len())),
            },
            value: Bytes::from(body),
        };
        let lane_ix = lanes::lane_of(rec.key.as_deref(), settings.parallelization);
        let lane = lanes
            .entry(lane_ix)
            .or_insert_with(|| {
                let lane = Lane::new(settings.batch_size);
                let commit = {
                    let (run, ch) = (run.clone(), ch.clone());
                    move |tags: Vec<u64>| {
                        let (run, ch) = (run.clone(), ch.clone());
                        async move {
                            let acked = if one_lane {
                                match tags.last() {
                                    Some(last) => ch.basic_ack(BasicAckArguments::new(*last, true)).await,
                                    None => Ok(()),
                                }
                            } else {
                                let mut r = Ok(());
                                for t in &tags {
                                    r = ch.basic_ack(BasicAckArguments::new(*t, false)).await;
                                    if r.is_err() {
                                        break;
                                    }
                                }
                                r
                            };
                            match acked {
                                Ok(()) => {
                                    if let Some(last) = tags.last() {
                                        run.status.set_position(last.to_string());
                                    }
                                }
                                Err(e) => tracing::warn!(trigger = %run.spec.name, error = %e, "amqp trigger: could not acknowledge; the broker will deliver the messages again"),
                            }
                        }
                    }
                };
                workers.spawn(lanes::work(
                    run.clone(),
                    origin.clone(),
                    lane.clone(),
                    publisher.clone(),
                    slots.clone(),
                    commit,
                    // The broker keeps unacknowledged deliveries for as long as the channel
                    // lives: nothing to renew.
                    |_: &[u64]| async {},
                    lanes_stop.clone(),
                ));
                lane
            })
            .clone();
        if !lane.push(rec, tag, &mut stop).await {
            break Ok(());
        }
    };
    let _ = lanes_stop_tx.send(true);
    while workers.join_next().await.is_some() {}
    lag_task.abort();
    // Closing the connection hands what was not acknowledged back to the queue.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    result
}

/// Every 5 s: the messages ready in the queue.
async fn report_lag(run: Arc<TriggerRun>, control: Channel, queue: String) {
    loop {
        match ready(&control, &queue).await {
            Ok(n) => {
                run.status.set_lag(n);
                run.deps.dp.metrics().trigger_lag(&run.labels, n);
                run.status.running();
            }
            Err(e) => run.status.failing(e),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_rabbitmqs_form() {
        assert_eq!(
            parse_url("amqp://u:p%40ss@h:5673/%2f").unwrap(),
            AmqpUrl {
                host: "h".into(),
                port: 5673,
                user: "u".into(),
                password: "p@ss".into(),
                vhost: "/".into()
            }
        );
        let d = parse_url("amqp://rabbit").unwrap();
        assert_eq!(
            (d.port, d.user.as_str(), d.vhost.as_str()),
            (5672, "guest", "/")
        );
        assert_eq!(parse_url("amqp://h/orders").unwrap().vhost, "orders");
        assert!(parse_url("amqp://h:x").is_err());
        assert!(parse_url("amqp://h/%zz").is_err());
    }

    #[test]
    fn text_headers_are_bytes_as_lambda_shows_them() {
        let mut t = FieldTable::new();
        t.insert("n".try_into().unwrap(), FieldValue::I(7));
        t.insert(
            "s".try_into().unwrap(),
            FieldValue::S("ab".try_into().unwrap()),
        );
        assert_eq!(field_table(&t), json!({"n": 7, "s": {"bytes": [97, 98]}}));
    }
}
