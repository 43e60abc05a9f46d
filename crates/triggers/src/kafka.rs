//! A Kafka trigger's consumer: one group member (librdkafka) per trigger and server, reading
//! the topic into per-partition lanes, committing each partition's offset up to the first
//! record not yet settled.

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::failure::Publisher;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use bytes::Bytes;
use petrel_core::trigger::{FailureDestination, KafkaSource, StartingPosition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// librdkafka's callbacks: errors make the trigger show as failing; a revoked partition's
/// waiting records are dropped (its new owner reads them from the committed offset).
struct Ctx {
    run: Arc<TriggerRun>,
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(function = %self.run.function, trigger = %self.run.spec.name, error = %error, reason, "kafka trigger: client error");
        self.run.status.failing(format!("{error}: {reason}"));
    }
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::warn!(trigger = %self.run.spec.name, fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(trigger = %self.run.spec.name, fac, "librdkafka: {message}"),
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.revoked.lock().unwrap();
            r.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

/// The offsets of one partition not yet committed: each waiting, running or settled record.
#[derive(Default)]
struct Track {
    pending: BTreeMap<i64, bool>,
    committed: Option<i64>,
}

type Consumer_ = StreamConsumer<Ctx>;

fn consumer(run: &Arc<TriggerRun>, src: &KafkaSource) -> Result<Arc<Consumer_>, KafkaError> {
    let settings = &src.settings;
    let group = run.group(src.group.as_ref());
    let c: Consumer_ = ClientConfig::new()
        .set("bootstrap.servers", src.brokers.join(","))
        .set("group.id", &group)
        .set(
            "client.id",
            format!("petrel-{}-{}", run.function, run.spec.name),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match settings.starting_position {
                StartingPosition::Latest => "latest",
                StartingPosition::Earliest => "earliest",
            },
        )
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // Batches run apart from the poll loop, but a full lane holds it: allow long batches.
        .set("max.poll.interval.ms", "3600000")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "10000")
        .create_with_context(Ctx {
            run: run.clone(),
            revoked: Mutex::new(Vec::new()),
        })?;
    c.subscribe(&[src.topic.as_str()])?;
    Ok(Arc::new(c))
}

fn producer(brokers: &[String]) -> Result<rdkafka::producer::FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers.join(","))
        .set("message.timeout.ms", "10000")
        .set("enable.idempotence", "true")
        .create()
}

pub(crate) async fn run(run: Arc<TriggerRun>, src: KafkaSource, stop: watch::Receiver<bool>) {
    crate::supervise(&run, stop, |stop| consume(&run, &src, stop)).await
}

/// One consumer's life: until `stop` (Ok) or an error it cannot go on from.
async fn consume(
    run: &Arc<TriggerRun>,
    src: &KafkaSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = &src.settings;
    let c = consumer(run, src).map_err(|e| format!("could not start the consumer: {e}"))?;
    let publisher = match &settings.on_failure {
        FailureDestination::Kafka(_) => Some(Arc::new(Publisher::Kafka(
            producer(&src.brokers)
                .map_err(|e| format!("could not start the on_failure producer: {e}"))?,
        ))),
        _ => None,
    };
    let origin = Arc::new(Origin::Kafka {
        brokers: src.brokers.clone(),
    });
    let slots = run.slots();
    let tracks: Arc<Mutex<HashMap<i32, Track>>> = Arc::default();
    let mut lanes: HashMap<(i32, usize), Arc<Lane<i64>>> = HashMap::new();
    let mut workers = tokio::task::JoinSet::new();
    let (lanes_stop_tx, lanes_stop) = watch::channel(false);
    let lag_task = tokio::spawn(report_lag(
        run.clone(),
        c.clone(),
        src.topic.clone(),
        tracks.clone(),
    ));
    run.status.set(RunState::Running);
    // Partitions taken away: what waits for them is read again by their new owner.
    let drop_revoked = |lanes: &HashMap<(i32, usize), Arc<Lane<i64>>>| {
        let revoked: Vec<i32> = std::mem::take(&mut *c.context().revoked.lock().unwrap());
        for p in revoked {
            for ((lp, _), lane) in lanes.iter() {
                if *lp == p {
                    lane.clear();
                }
            }
            tracks.lock().unwrap().remove(&p);
        }
    };
    let result = loop {
        drop_revoked(&lanes);
        let msg = tokio::select! {
            m = c.recv() => m,
            _ = stop.changed() => break Ok(()),
        };
        let m = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(trigger = %run.spec.name, error = %e, "kafka trigger: receive error");
                run.status.failing(e.to_string());
                continue;
            }
        };
        // A rebalance runs inside `recv`: the message it returned is from the new assignment,
        // and what the revoked partitions held must be dropped before it is tracked, or the
        // drop would take it too (and its offset be committed past by the next ones).
        drop_revoked(&lanes);
        let partition = m.partition();
        let offset = m.offset();
        let (ts, ts_type) = match m.timestamp() {
            rdkafka::Timestamp::CreateTime(t) => (t, "CREATE_TIME"),
            rdkafka::Timestamp::LogAppendTime(t) => (t, "LOG_APPEND_TIME"),
            rdkafka::Timestamp::NotAvailable => (petrel_core::now_ms(), "CREATE_TIME"),
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            Bytes::copy_from_slice(h.value.unwrap_or_default()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let key = m.key().map(Bytes::copy_from_slice);
        let record = Record {
            id: offset.to_string(),
            value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            key,
            headers,
            timestamp_ms: ts,
            meta: RecordMeta::Kafka {
                topic: m.topic().to_owned(),
                partition,
                offset,
                timestamp_type: ts_type,
            },
        };
        drop(m);
        let lane_ix = lanes::lane_of(record.key.as_deref(), settings.parallelization);
        let lane = lanes
            .entry((partition, lane_ix))
            .or_insert_with(|| {
                let lane = Lane::new(settings.batch_size);
                let commit = {
                    let (c, tracks, topic, run) = (c.clone(), tracks.clone(), src.topic.clone(), run.clone());
                    move |offsets: Vec<i64>| {
                        let next = settle(&tracks, partition, &offsets);
                        if let Some(next) = next {
                            let mut tpl = TopicPartitionList::new();
                            if tpl.add_partition_offset(&topic, partition, Offset::Offset(next)).is_ok() {
                                if let Err(e) = c.commit(&tpl, CommitMode::Async) {
                                    tracing::warn!(trigger = %run.spec.name, partition, error = %e, "kafka trigger: could not commit; the records will be delivered again");
                                }
                            }
                        }
                        std::future::ready(())
                    }
                };
                workers.spawn(lanes::work(
                    run.clone(),
                    origin.clone(),
                    lane.clone(),
                    publisher.clone(),
                    slots.clone(),
                    commit,
                    // Kafka keeps what is not committed; nothing to tell it meanwhile.
                    |_: &[i64]| std::future::ready(()),
                    lanes_stop.clone(),
                ));
                lane
            })
            .clone();
        tracks
            .lock()
            .unwrap()
            .entry(partition)
            .or_default()
            .pending
            .insert(offset, false);
        if !lane.push(record, offset, &mut stop).await {
            break Ok(());
        }
    };
    // Stop: batches being invoked finish (and commit); what waits is read again next time.
    let _ = lanes_stop_tx.send(true);
    while workers.join_next().await.is_some() {}
    lag_task.abort();
    c.unsubscribe();
    result
}

/// Marks `offsets` of `partition` settled; returns the offset to commit (the first not
/// settled, or one past the last) when it moved.
fn settle(tracks: &Mutex<HashMap<i32, Track>>, partition: i32, offsets: &[i64]) -> Option<i64> {
    let mut tracks = tracks.lock().unwrap();
    let t = tracks.get_mut(&partition)?;
    for o in offsets {
        if let Some(done) = t.pending.get_mut(o) {
            *done = true;
        }
    }
    let mut next = None;
    while let Some((&o, &done)) = t.pending.iter().next() {
        if !done {
            break;
        }
        t.pending.remove(&o);
        next = Some(o + 1);
    }
    if next.is_some() {
        t.committed = next;
    }
    next
}

/// Every 5 s: lag (end offsets less positions) and committed positions, for the status and
/// `/metrics`; whether the brokers answer decides between running and failing.
async fn report_lag(
    run: Arc<TriggerRun>,
    c: Arc<Consumer_>,
    topic: String,
    tracks: Arc<Mutex<HashMap<i32, Track>>>,
) {
    loop {
        let c2 = c.clone();
        let topic2 = topic.clone();
        let got =
            tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64, i64)>, KafkaError> {
                let assignment = c2.assignment()?;
                let committed = c2.committed_offsets(assignment.clone(), Duration::from_secs(5))?;
                let mut out = Vec::new();
                for e in assignment.elements_for_topic(&topic2) {
                    let p = e.partition();
                    let (low, high) = c2.fetch_watermarks(&topic2, p, Duration::from_secs(5))?;
                    let pos = committed
                        .find_partition(&topic2, p)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .unwrap_or(low);
                    out.push((p, pos, high));
                }
                Ok(out)
            })
            .await;
        match &got {
            // The brokers answer: whatever error librdkafka reported before has passed.
            Ok(Ok(_)) => run.status.running(),
            Ok(Err(e)) => run
                .status
                .failing(format!("could not read the topic's offsets: {e}")),
            Err(_) => {}
        }
        if let Ok(Ok(parts)) = got {
            let mut lag = 0u64;
            let mut positions = Vec::new();
            for (p, pos, high) in &parts {
                // What this server settled but librdkafka has not yet reported committed.
                let settled = tracks
                    .lock()
                    .unwrap()
                    .get(p)
                    .and_then(|t| t.committed)
                    .unwrap_or(*pos);
                let at = settled.max(*pos);
                lag += (high - at).max(0) as u64;
                positions.push(format!("{p}:{at}"));
            }
            run.status.set_lag(lag);
            run.status.set_position(positions.join(","));
            run.deps.dp.metrics().trigger_lag(&run.labels, lag);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
