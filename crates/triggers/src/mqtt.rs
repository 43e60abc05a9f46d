//! An MQTT trigger's consumer: one client per server with a persistent session (so messages
//! that arrive while the server is away wait for it, and those it had not acknowledged come
//! again), subscribed at QoS 1 through a shared subscription, `$share/GROUP/FILTER`, so that
//! the servers of one trigger split the messages instead of each getting all of them. A
//! message is acknowledged (PUBACK) once its batch is settled.
//!
//! The broker bounds how many unacknowledged messages it sends to one client (Mosquitto's
//! `max_inflight_messages`, 20 by default): a batch cannot be larger than that.

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use bytes::Bytes;
use petrel_core::trigger::MqttSource;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub(crate) async fn run(run: Arc<TriggerRun>, src: MqttSource, stop: watch::Receiver<bool>) {
    crate::supervise(&run, stop, |stop| consume(&run, &src, stop)).await
}

/// A user name and password.
type Credentials = Option<(String, String)>;

/// `mqtt://user:password@host:port` as (host, port, credentials).
pub(crate) fn parse_url(url: &str) -> Result<(String, u16, Credentials), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("{}: not an mqtt:// URL", crate::events::redact(url)))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (creds, hostport) = match authority.rsplit_once('@') {
        Some((c, h)) => {
            let (u, p) = c.split_once(':').unwrap_or((c, ""));
            (Some((u.to_owned(), p.to_owned())), h)
        }
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} in the mqtt URL is not a port"))?,
        ),
        None => (hostport, 1883),
    };
    if host.is_empty() {
        return Err("the mqtt URL names no host".into());
    }
    Ok((host.to_owned(), port, creds))
}

/// The client id: stable for this server and trigger (its session survives a restart), and
/// short (MQTT 3.1.1 brokers must take 23 bytes; most take more).
fn client_id(worker: &str, namespace: &str, function: &str, trigger: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{worker}\0{namespace}\0{function}\0{trigger}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("petrel-{h:016x}")
}

async fn consume(
    run: &Arc<TriggerRun>,
    src: &MqttSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = &src.settings;
    let (host, port, creds) = parse_url(&src.url)?;
    let id = client_id(
        &run.deps.config.worker_id,
        &run.namespace,
        &run.function,
        &run.spec.name,
    );
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(16 << 20, 16 << 20)
        // Acknowledgements queue here while the event loop sends them: room for every message
        // the lanes may hold, so a worker never waits on it.
        .set_request_channel_capacity(settings.batch_size as usize * 4 + 64);
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (client, mut events) = AsyncClient::new(opts, settings.batch_size as usize * 4 + 64);
    let group = run.group(src.group.as_ref());
    let filter = format!("$share/{group}/{}", src.topic);
    let origin = Arc::new(Origin::Mqtt {
        url: src.url.clone(),
    });
    let slots = run.slots();
    let (lanes_stop_tx, lanes_stop) = watch::channel(false);
    // The event loop must keep turning (keep-alives, acknowledgements going out) while lanes
    // are full, so messages reach the lanes through a feeder of their own.
    let (tx, rx) = mpsc::unbounded_channel::<Publish>();
    let feeder = tokio::spawn(feed(
        run.clone(),
        client.clone(),
        origin,
        slots,
        rx,
        lanes_stop.clone(),
    ));
    let mut subscribed = false;
    let result: Result<(), String> = loop {
        let ev = tokio::select! {
            e = tokio::time::timeout(Duration::from_secs(10), events.poll()) => e,
            _ = stop.changed() => break Ok(()),
        };
        match ev {
            Err(_) if !subscribed => {
                break Err(format!(
                    "could not connect to {} within 10 s",
                    crate::events::redact(&src.url)
                ))
            }
            Err(_) => {}
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                // Subscribing again on a resumed session is harmless, and covers a broker that
                // lost it.
                client
                    .subscribe(filter.clone(), QoS::AtLeastOnce)
                    .await
                    .map_err(|e| format!("could not subscribe to {filter}: {e}"))?;
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    break Err(format!("the broker refused the subscription {filter}"));
                }
                subscribed = true;
                run.status.set(RunState::Running);
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if tx.send(p).is_err() {
                    break Ok(());
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                break Err(format!(
                    "the connection to {} failed: {e}",
                    crate::events::redact(&src.url)
                ))
            }
        }
    };
    drop(tx);
    let _ = lanes_stop_tx.send(true);
    let _ = feeder.await;
    // What was not acknowledged is sent again when the session resumes.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = events.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    result
}

/// Moves messages from the event loop into lanes (by topic) and runs their workers.
async fn feed(
    run: Arc<TriggerRun>,
    client: AsyncClient,
    origin: Arc<Origin>,
    slots: Arc<tokio::sync::Semaphore>,
    mut rx: mpsc::UnboundedReceiver<Publish>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(settings) = run.spec.source.stream().cloned() else {
        return;
    };
    let mut lanes: HashMap<usize, Arc<Lane<(u16, QoS)>>> = HashMap::new();
    let mut workers = tokio::task::JoinSet::new();
    let mut seq: u64 = 0;
    while let Some(p) = rx.recv().await {
        seq += 1;
        let topic = p.topic.clone();
        let rec = Record {
            // The packet id is reused within a connection: the record's own id counts up.
            id: seq.to_string(),
            key: Some(Bytes::from(topic.clone().into_bytes())),
            value: p.payload.clone(),
            headers: Vec::new(),
            timestamp_ms: petrel_core::now_ms(),
            meta: RecordMeta::Mqtt {
                topic,
                qos: p.qos as u8,
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
            },
        };
        let lane_ix = lanes::lane_of(rec.key.as_deref(), settings.parallelization);
        let lane = lanes
            .entry(lane_ix)
            .or_insert_with(|| {
                let lane = Lane::new(settings.batch_size);
                let commit = {
                    let (run, client) = (run.clone(), client.clone());
                    move |acks: Vec<(u16, QoS)>| {
                        let (run, client) = (run.clone(), client.clone());
                        async move {
                            for (pkid, qos) in acks {
                                let mut ack = Publish::new("", qos, Vec::new());
                                ack.pkid = pkid;
                                if let Err(e) = client.ack(&ack).await {
                                    tracing::warn!(trigger = %run.spec.name, error = %e, "mqtt trigger: could not acknowledge; the broker will send the messages again");
                                    return;
                                }
                            }
                        }
                    }
                };
                workers.spawn(lanes::work(
                    run.clone(),
                    origin.clone(),
                    lane.clone(),
                    None,
                    slots.clone(),
                    commit,
                    // The broker waits for the acknowledgement as long as the session lives.
                    |_: &[(u16, QoS)]| async {},
                    stop.clone(),
                ));
                lane
            })
            .clone();
        if !lane.push(rec, (p.pkid, p.qos), &mut stop).await {
            break;
        }
    }
    while workers.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_client_ids() {
        assert_eq!(
            parse_url("mqtt://u:p@h:1884").unwrap(),
            ("h".into(), 1884, Some(("u".into(), "p".into())))
        );
        assert_eq!(parse_url("mqtt://h").unwrap(), ("h".into(), 1883, None));
        assert!(parse_url("mqtt://:1").is_err());
        let a = client_id("w1", "default", "f", "t");
        assert!(a.len() <= 23, "{a}");
        assert_ne!(a, client_id("w2", "default", "f", "t"));
    }
}
