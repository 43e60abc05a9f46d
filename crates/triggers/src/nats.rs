//! A NATS JetStream trigger's consumer: a durable pull consumer per trigger (shared by every
//! server running it), its messages hashed by subject into lanes, each acknowledged once
//! settled.

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::failure::Publisher;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use bytes::Bytes;
use futures_util::StreamExt;
use petrel_core::trigger::{FailureDestination, NatsSource, StartingPosition};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub(crate) async fn run(run: Arc<TriggerRun>, src: NatsSource, stop: watch::Receiver<bool>) {
    crate::supervise(&run, stop, |stop| consume(&run, &src, stop)).await
}

async fn consume(
    run: &Arc<TriggerRun>,
    src: &NatsSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = &src.settings;
    let servers = src.servers.join(",");
    let client = async_nats::ConnectOptions::new()
        .name(format!("petrel-{}-{}", run.function, run.spec.name))
        .connection_timeout(Duration::from_secs(5))
        .connect(servers.as_str())
        .await
        .map_err(|e| format!("could not connect to {servers}: {e}"))?;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(&src.stream).await.map_err(|e| {
        format!(
            "stream {:?} is not there ({e}): create it (nats stream add) with the trigger's subjects",
            src.stream
        )
    })?;
    let durable = run.group(src.group.as_ref());
    // Before JetStream sends a message again: a batch still being settled keeps its messages
    // with progress acknowledgements (every 10 s), however long its retries take.
    let ack_wait = Duration::from_secs(30);
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: src.subject.clone().unwrap_or_default(),
        deliver_policy: match settings.starting_position {
            StartingPosition::Latest => DeliverPolicy::New,
            StartingPosition::Earliest => DeliverPolicy::All,
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: (settings.batch_size as i64 * settings.parallelization as i64 * 4)
            .max(1000),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&durable, config)
        .await
        .map_err(|e| format!("could not create the durable consumer {durable:?}: {e}"))?;
    // Explicit pull requests of one batch each, taken as they come, rather than the client's
    // continuous stream: that one stops asking when its consumer is held back (a full lane)
    // and waits out its request's expiry (seen: a 35 s pause in one drain of three).
    let pull = || {
        consumer
            .batch()
            .max_messages(settings.batch_size as usize)
            .expires(Duration::from_secs(1))
            .messages()
    };
    let mut messages = pull()
        .await
        .map_err(|e| format!("could not pull from {durable:?}: {e}"))?;
    let publisher = match &settings.on_failure {
        FailureDestination::Nats(_) => Some(Arc::new(Publisher::Nats(Box::new(js.clone())))),
        _ => None,
    };
    let origin = Arc::new(Origin::Nats {
        servers: src.servers.clone(),
        consumer: durable.clone(),
    });
    let slots = run.slots();
    let mut lanes: HashMap<usize, Arc<Lane<jetstream::Message>>> = HashMap::new();
    let mut workers = tokio::task::JoinSet::new();
    let (lanes_stop_tx, lanes_stop) = watch::channel(false);
    let lag_task = tokio::spawn(report_lag(run.clone(), consumer.clone()));
    run.status.set(RunState::Running);
    let result = loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = stop.changed() => break Ok(()),
        };
        let msg = match next {
            // This request is done (full, or expired): ask again.
            None => {
                messages = match pull().await {
                    Ok(m) => m,
                    Err(e) => break Err(format!("could not pull from {durable:?}: {e}")),
                };
                continue;
            }
            Some(Err(e)) => {
                // Missed heartbeats and the like: the stream recovers; say so meanwhile.
                tracing::debug!(trigger = %run.spec.name, error = %e, "nats trigger: pull error");
                run.status.failing(e.to_string());
                continue;
            }
            Some(Ok(m)) => m,
        };
        let Ok(info) = msg.info() else {
            // Not a JetStream message: nothing to acknowledge.
            continue;
        };
        let (sequence, delivered) = (info.stream_sequence, info.delivered);
        let published = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
        let stream_name = info.stream.to_owned();
        let subject = msg.subject.to_string();
        let mut headers = Vec::new();
        if let Some(h) = &msg.headers {
            for (k, vs) in h.iter() {
                for v in vs {
                    headers.push((k.to_string(), Bytes::copy_from_slice(v.as_str().as_bytes())));
                }
            }
        }
        let record = Record {
            id: sequence.to_string(),
            key: Some(Bytes::from(subject.clone())),
            value: msg.payload.clone(),
            headers,
            timestamp_ms: published,
            meta: RecordMeta::Nats {
                stream: stream_name,
                subject: subject.clone(),
                sequence,
                delivered,
            },
        };
        let lane_ix = lanes::lane_of(Some(subject.as_bytes()), settings.parallelization);
        let lane = lanes
            .entry(lane_ix)
            .or_insert_with(|| {
                let lane = Lane::new(settings.batch_size);
                let commit = {
                    let (run, client) = (run.clone(), client.clone());
                    move |acks: Vec<jetstream::Message>| {
                        let (run, client) = (run.clone(), client.clone());
                        async move {
                            let mut last = None;
                            for m in acks {
                                if let Err(e) = m.ack().await {
                                    tracing::warn!(trigger = %run.spec.name, error = %e, "nats trigger: could not acknowledge; the message will be delivered again");
                                }
                                last = m.info().ok().map(|i| i.stream_sequence);
                            }
                            // Acknowledgements are buffered publishes: send them now, or the
                            // server holds back delivery at max_ack_pending until a flush.
                            if let Err(e) = client.flush().await {
                                tracing::warn!(trigger = %run.spec.name, error = %e, "nats trigger: could not flush acknowledgements");
                            }
                            if let Some(seq) = last {
                                run.status.set_position(format!("{seq}"));
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
                    |acks: &[jetstream::Message]| {
                        let acks = acks.to_vec();
                        async move {
                            for m in acks {
                                let _ = m.ack_with(jetstream::AckKind::Progress).await;
                            }
                        }
                    },
                    lanes_stop.clone(),
                ));
                lane
            })
            .clone();
        if !lane.push(record, msg, &mut stop).await {
            break Ok(());
        }
    };
    let _ = lanes_stop_tx.send(true);
    while workers.join_next().await.is_some() {}
    lag_task.abort();
    // Acknowledgements are published: send them before the connection goes.
    let _ = client.flush().await;
    result
}

/// Every 5 s: the consumer's pending count (messages of its subjects not yet delivered, plus
/// those delivered and not acknowledged).
async fn report_lag(run: Arc<TriggerRun>, consumer: jetstream::consumer::Consumer<pull::Config>) {
    loop {
        match consumer.get_info().await {
            Ok(info) => {
                let lag = info.num_pending + info.num_ack_pending as u64;
                run.status.set_lag(lag);
                run.deps.dp.metrics().trigger_lag(&run.labels, lag);
                run.status.running();
            }
            Err(e) => run
                .status
                .failing(format!("could not read the consumer's state: {e}")),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
