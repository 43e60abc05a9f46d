//! A Redis Streams trigger's consumer: one member of the trigger's consumer group per server
//! (named after the server, so a restart reads again what it had read and not acknowledged),
//! `XREADGROUP` into lanes, `XACK` once settled, and `XAUTOCLAIM` of entries another member
//! left pending for a minute (a server that died).

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use bytes::Bytes;
use petrel_core::trigger::{RedisSource, StartingPosition};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Entries another member left pending this long are taken over.
const CLAIM_IDLE: Duration = Duration::from_secs(60);

pub(crate) async fn run(run: Arc<TriggerRun>, src: RedisSource, stop: watch::Receiver<bool>) {
    crate::supervise(&run, stop, |stop| consume(&run, &src, stop)).await
}

fn record(stream: &str, e: StreamId) -> Record {
    // An entry id is `ms-seq`: its first part is when it was added.
    let ts =
        e.id.split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .unwrap_or_else(petrel_core::now_ms);
    let mut fields = serde_json::Map::new();
    let mut key = None;
    let mut names: Vec<&String> = e.map.keys().collect();
    names.sort();
    for name in names {
        let bytes: Vec<u8> = redis::from_redis_value_ref(&e.map[name]).unwrap_or_default();
        if name == "key" {
            key = Some(Bytes::from(bytes.clone()));
        }
        fields.insert(
            name.clone(),
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        );
    }
    Record {
        id: e.id.clone(),
        key,
        value: Bytes::from(serde_json::to_vec(&fields).expect("fields serialise")),
        headers: Vec::new(),
        timestamp_ms: ts,
        meta: RecordMeta::Redis {
            stream: stream.to_owned(),
            id: e.id,
            delivered: e.delivered_count.unwrap_or(1) as i64,
        },
    }
}

async fn consume(
    run: &Arc<TriggerRun>,
    src: &RedisSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let settings = &src.settings;
    let client = redis::Client::open(src.url.as_str()).map_err(|e| format!("{}: {e}", src.url))?;
    // A blocking read waits up to a second for entries: answers may take longer than that.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let connect = || async {
        tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| format!("could not connect to {} within 5 s", src.url))?
        .map_err(|e| format!("could not connect to {}: {e}", src.url))
    };
    // Blocking reads hold their connection: acknowledgements and the rest go on another.
    let mut reader = connect().await?;
    let control = connect().await?;
    let group = run.group(src.group.as_ref());
    let me = format!("petrel-{}", run.deps.config.worker_id);
    let start = match settings.starting_position {
        StartingPosition::Latest => "$",
        StartingPosition::Earliest => "0",
    };
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&src.stream)
        .arg(&group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(&mut reader.clone())
        .await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(format!(
                "could not create the consumer group {group:?}: {e}"
            ));
        }
    }
    let origin = Arc::new(Origin::Redis {
        url: src.url.clone(),
        group: group.clone(),
    });
    let slots = run.slots();
    let mut lanes: HashMap<usize, Arc<Lane<String>>> = HashMap::new();
    let mut workers = tokio::task::JoinSet::new();
    let (lanes_stop_tx, lanes_stop) = watch::channel(false);
    let lag_task = tokio::spawn(report_lag(
        run.clone(),
        control.clone(),
        src.stream.clone(),
        group.clone(),
    ));
    run.status.set(RunState::Running);
    // First what this member read before and did not acknowledge (a restart), then new entries.
    let mut from = "0".to_owned();
    let mut last_claim = tokio::time::Instant::now();
    let count = settings.batch_size.max(1) as usize;
    let result: Result<(), String> = loop {
        if *stop.borrow() {
            break Ok(());
        }
        let mut entries: Vec<StreamId> = Vec::new();
        if last_claim.elapsed() >= CLAIM_IDLE / 2 {
            last_claim = tokio::time::Instant::now();
            let claimed: Result<StreamAutoClaimReply, _> = redis::cmd("XAUTOCLAIM")
                .arg(&src.stream)
                .arg(&group)
                .arg(&me)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut control.clone())
                .await;
            match claimed {
                Ok(c) => entries.extend(c.claimed),
                Err(e) => {
                    tracing::debug!(trigger = %run.spec.name, error = %e, "redis trigger: XAUTOCLAIM failed")
                }
            }
        }
        if entries.is_empty() {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&group)
                .arg(&me)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&src.stream)
                .arg(&from);
            let read = cmd.query_async::<Option<StreamReadReply>>(&mut reader);
            let reply = tokio::select! {
                r = read => r,
                _ = stop.changed() => break Ok(()),
            };
            match reply {
                Ok(Some(r)) => entries = r.keys.into_iter().flat_map(|k| k.ids).collect(),
                Ok(None) => {}
                Err(e) => break Err(format!("XREADGROUP failed: {e}")),
            }
            // The history of this member (read, not acknowledged) is read to its end once,
            // then only new entries.
            if from != ">" {
                from = match entries.last() {
                    Some(last) => last.id.clone(),
                    None => ">".to_owned(),
                };
            }
        }
        for e in entries {
            let rec = record(&src.stream, e);
            let id = rec.id.clone();
            let lane_ix = lanes::lane_of(rec.key.as_deref(), settings.parallelization);
            let lane = lanes
                .entry(lane_ix)
                .or_insert_with(|| {
                    let lane = Lane::new(settings.batch_size);
                    let commit = {
                        let (run, control, stream, group) = (run.clone(), control.clone(), src.stream.clone(), group.clone());
                        move |ids: Vec<String>| {
                            let (run, mut control, stream, group) = (run.clone(), control.clone(), stream.clone(), group.clone());
                            async move {
                                let acked: Result<u64, _> = redis::cmd("XACK").arg(&stream).arg(&group).arg(&ids).query_async(&mut control).await;
                                match acked {
                                    Ok(_) => {
                                        if let Some(last) = ids.last() {
                                            run.status.set_position(last.clone());
                                        }
                                    }
                                    Err(e) => tracing::warn!(trigger = %run.spec.name, error = %e, "redis trigger: could not acknowledge; the entries will be read again"),
                                }
                            }
                        }
                    };
                    let progress = {
                        let (control, stream, group, me) = (control.clone(), src.stream.clone(), group.clone(), me.clone());
                        move |ids: &[String]| {
                            // Claiming its own entries again resets their idle time, so no other
                            // member takes over a batch still being settled.
                            let (mut control, stream, group, me, ids) = (control.clone(), stream.clone(), group.clone(), me.clone(), ids.to_vec());
                            async move {
                                let _: Result<redis::Value, _> = redis::cmd("XCLAIM").arg(&stream).arg(&group).arg(&me).arg(0).arg(&ids).arg("JUSTID").query_async(&mut control).await;
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
                        progress,
                        lanes_stop.clone(),
                    ));
                    lane
                })
                .clone();
            if !lane.push(rec, id, &mut stop).await {
                break;
            }
        }
    };
    let _ = lanes_stop_tx.send(true);
    while workers.join_next().await.is_some() {}
    lag_task.abort();
    result
}

/// Every 5 s: the group's lag (entries not yet read, Redis 7) and pending ones.
async fn report_lag(
    run: Arc<TriggerRun>,
    mut control: redis::aio::MultiplexedConnection,
    stream: String,
    group: String,
) {
    loop {
        let info: Result<Vec<HashMap<String, redis::Value>>, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut control)
            .await;
        match info {
            Ok(groups) => {
                let g = groups.iter().find(|g| {
                    g.get("name")
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .as_deref()
                        == Some(group.as_str())
                });
                if let Some(g) = g {
                    let num = |k: &str| {
                        g.get(k)
                            .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                            .unwrap_or(0)
                    };
                    let lag = num("lag") + num("pending");
                    run.status.set_lag(lag);
                    run.deps.dp.metrics().trigger_lag(&run.labels, lag);
                }
                run.status.running();
            }
            Err(e) => run
                .status
                .failing(format!("could not read the group's state: {e}")),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
