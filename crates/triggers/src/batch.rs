//! One batch of records from a stream source, from its first invocation to settled: delivered,
//! or given up on (dead), as Lambda's event source mappings do it. Retries with backoff up to
//! `max_retries` (or until the records are older than `max_record_age`), bisects a failing
//! batch when `bisect_on_error` is set, and honours a partial batch response.
//!
//! Nothing here commits a position: the caller commits once [`process`] has settled every
//! record (and sent the dead ones to `on_failure`). A stop before that leaves them uncommitted,
//! to be delivered again.

use bytes::Bytes;
use petrel_core::trigger::StreamSettings;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// One record of a stream source, as the consumers read it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's identifier within its batch, as `itemIdentifier` names it: the Kafka
    /// offset or the JetStream stream sequence, in decimal.
    pub id: String,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// When the record was produced, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub meta: RecordMeta,
}

/// Where a record comes from.
#[derive(Debug, Clone)]
pub enum RecordMeta {
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
        /// `CREATE_TIME` or `LOG_APPEND_TIME`.
        timestamp_type: &'static str,
    },
    Nats {
        stream: String,
        subject: String,
        sequence: u64,
        /// How many times JetStream has delivered it (1 the first time).
        delivered: i64,
    },
    Redis {
        stream: String,
        /// The entry id, `ms-seq`.
        id: String,
        /// How many times the group has delivered it (1 the first time).
        delivered: i64,
    },
    Amqp {
        queue: String,
        exchange: String,
        routing_key: String,
        delivery_tag: u64,
        redelivered: bool,
        /// Lambda's `basicProperties` of the message.
        properties: std::sync::Arc<serde_json::Value>,
    },
    Mqtt {
        topic: String,
        qos: u8,
        retain: bool,
        /// The broker sent it again (an earlier delivery was not acknowledged).
        dup: bool,
        /// The packet id within this connection.
        pkid: u16,
    },
    /// A change of a database row (postgres, mysql): the record's value is its envelope.
    Change {
        /// `schema.table` (postgres) or `db.table` (mysql).
        table: String,
        /// `lsn` (postgres) or `file:offset` (mysql) of the change.
        position: String,
    },
}

impl Record {
    /// Where the record is in its source, for dead letters: `topic-partition@offset` or
    /// `stream@sequence`.
    pub fn position(&self) -> String {
        match &self.meta {
            RecordMeta::Kafka {
                topic,
                partition,
                offset,
                ..
            } => format!("{topic}-{partition}@{offset}"),
            RecordMeta::Nats {
                stream, sequence, ..
            } => format!("{stream}@{sequence}"),
            RecordMeta::Redis { stream, id, .. } => format!("{stream}@{id}"),
            RecordMeta::Amqp {
                queue,
                delivery_tag,
                ..
            } => format!("{queue}@{delivery_tag}"),
            RecordMeta::Mqtt { topic, .. } => format!("{topic}@{}", self.id),
            RecordMeta::Change { table, position } => format!("{table}@{position}"),
        }
    }
}

/// How one invocation of a batch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchResult {
    /// Every record was handled.
    Ok,
    /// The function reported these records (`itemIdentifier`s) as failed, the others handled.
    Partial(Vec<String>),
    /// The invocation failed. `counts`: whether it counts against `max_retries` (a function's
    /// failure does; Petrel shedding load does not).
    Failed { error: String, counts: bool },
}

/// Why a record was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    RetriesExhausted,
    RecordAgeExceeded,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::RecordAgeExceeded => "RecordAgeExceeded",
        }
    }
}

/// Records given up on together, with why.
#[derive(Debug, Clone)]
pub struct Dead {
    pub records: Vec<Record>,
    pub condition: Condition,
    pub error: String,
    /// Invocations that included them.
    pub attempts: u32,
}

/// What became of a batch.
#[derive(Debug, Default)]
pub struct Settled {
    pub delivered: usize,
    pub dead: Vec<Dead>,
    /// Invocations that failed on the way (each counted once).
    pub failed_invocations: u32,
    /// Records in those failed invocations.
    pub failed_records: usize,
    pub last_error: Option<String>,
}

/// The pause before retry `n` (from 1): `base`·2^(n-1), at most 30 s.
pub fn backoff(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(Duration::from_secs(30))
}

/// Settles `records` (in order): invokes, retries, bisects, until each is delivered or dead.
/// `None` when `stop` was signalled first (nothing is settled then, nothing may be committed).
pub async fn process<F, Fut>(
    settings: &StreamSettings,
    retry_base: Duration,
    records: Vec<Record>,
    invoke: &F,
    stop: &mut watch::Receiver<bool>,
    now_ms: impl Fn() -> i64,
) -> Option<Settled>
where
    F: Fn(Vec<Record>) -> Fut,
    Fut: Future<Output = BatchResult>,
{
    let mut settled = Settled::default();
    // Work left, in order: each piece with the invocations it has had (bisected halves start
    // again at none, as Lambda's splitting does not count against the retries).
    let mut work: Vec<(Vec<Record>, u32, u32)> = vec![(records, 0, 0)];
    while let Some((batch, mut failures, mut attempts)) = work.pop() {
        let mut batch = batch;
        loop {
            if batch.is_empty() {
                break;
            }
            if *stop.borrow() {
                return None;
            }
            let oldest = batch.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
            let age_limit = settings.max_record_age_ms as i64;
            if age_limit > 0 && attempts > 0 && now_ms() - oldest > age_limit {
                settled.dead.push(Dead {
                    records: std::mem::take(&mut batch),
                    condition: Condition::RecordAgeExceeded,
                    error: settled
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "the records are older than max_record_age".into()),
                    attempts,
                });
                break;
            }
            attempts += 1;
            let result = invoke(batch.clone()).await;
            // The records the function reported as failed, when it answered with a partial
            // batch response: only they are given up on when the retries run out.
            let mut reported: Option<Vec<String>> = None;
            let (error, counts) = match result {
                BatchResult::Ok => {
                    settled.delivered += batch.len();
                    break;
                }
                BatchResult::Partial(failed) => {
                    // As for streams: what precedes the first failed record is done; the
                    // rest is retried from it.
                    match batch.iter().position(|r| failed.contains(&r.id)) {
                        None => {
                            settled.delivered += batch.len();
                            break;
                        }
                        Some(i) => {
                            settled.delivered += i;
                            batch.drain(..i);
                            reported = Some(failed.clone());
                            (
                                format!(
                                    "the function reported record {} (and {} more) as failed",
                                    batch[0].id,
                                    failed.len().saturating_sub(1)
                                ),
                                true,
                            )
                        }
                    }
                }
                BatchResult::Failed { error, counts } => (error, counts),
            };
            settled.failed_invocations += 1;
            settled.failed_records += batch.len();
            settled.last_error = Some(error.clone());
            if counts {
                failures += 1;
            }
            if settings.bisect_on_error && counts && batch.len() > 1 {
                let second = batch.split_off(batch.len() / 2);
                work.push((second, 0, attempts));
                work.push((batch, 0, attempts));
                break;
            }
            let exhausted = settings.max_retries >= 0 && failures > settings.max_retries as u32;
            if exhausted {
                let mut records = std::mem::take(&mut batch);
                if let Some(failed) = reported {
                    let (dead, done): (Vec<Record>, Vec<Record>) =
                        records.into_iter().partition(|r| failed.contains(&r.id));
                    settled.delivered += done.len();
                    records = dead;
                }
                settled.dead.push(Dead {
                    records,
                    condition: Condition::RetriesExhausted,
                    error,
                    attempts,
                });
                break;
            }
            let pause = backoff(retry_base, failures.max(1));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
    Some(settled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_core::trigger::{FailureDestination, StartingPosition};
    use std::sync::Mutex;

    fn settings(max_retries: i32, bisect: bool) -> StreamSettings {
        StreamSettings {
            starting_position: StartingPosition::Earliest,
            batch_size: 100,
            batch_window_ms: 0,
            max_retries,
            max_record_age_ms: 3_600_000,
            bisect_on_error: bisect,
            report_batch_item_failures: true,
            parallelization: 1,
            on_failure: FailureDestination::Dlq,
        }
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                id: i.to_string(),
                key: None,
                value: Bytes::from(format!("v{i}")),
                headers: vec![],
                timestamp_ms: 1_000,
                meta: RecordMeta::Kafka {
                    topic: "t".into(),
                    partition: 0,
                    offset: i as i64,
                    timestamp_type: "CREATE_TIME",
                },
            })
            .collect()
    }

    /// A function that fails every batch holding one of `poison`, and logs each batch it got.
    fn poisoned<'a>(
        poison: &'static [&'static str],
        log: &'a Mutex<Vec<Vec<String>>>,
    ) -> impl Fn(Vec<Record>) -> std::future::Ready<BatchResult> + 'a {
        move |batch: Vec<Record>| {
            let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
            let bad = ids.iter().any(|i| poison.contains(&i.as_str()));
            log.lock().unwrap().push(ids);
            std::future::ready(if bad {
                BatchResult::Failed {
                    error: "boom".into(),
                    counts: true,
                }
            } else {
                BatchResult::Ok
            })
        }
    }

    async fn run(
        s: &StreamSettings,
        n: usize,
        f: &impl Fn(Vec<Record>) -> std::future::Ready<BatchResult>,
    ) -> Settled {
        let (_tx, mut rx) = watch::channel(false);
        process(s, Duration::from_millis(1), records(n), f, &mut rx, || {
            2_000
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_max_retries_times_then_dead_whole() {
        let log = Mutex::new(vec![]);
        let s = run(&settings(2, false), 4, &poisoned(&["2"], &log)).await;
        assert_eq!(log.lock().unwrap().len(), 3, "1 try and 2 retries");
        assert_eq!(s.delivered, 0);
        assert_eq!(s.dead.len(), 1);
        assert_eq!(s.dead[0].records.len(), 4);
        assert_eq!(s.dead[0].condition, Condition::RetriesExhausted);
        assert_eq!(s.dead[0].attempts, 3);
    }

    #[tokio::test]
    async fn bisecting_isolates_the_poison_record_and_delivers_the_rest_in_order() {
        let log = Mutex::new(vec![]);
        let s = run(&settings(1, true), 8, &poisoned(&["5"], &log)).await;
        assert_eq!(s.delivered, 7);
        assert_eq!(s.dead.len(), 1);
        let dead: Vec<&str> = s.dead[0].records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(dead, ["5"]);
        // Delivered pieces come in the records' order.
        let delivered: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|b| !b.contains(&"5".to_owned()))
            .flatten()
            .cloned()
            .collect();
        assert_eq!(delivered, ["0", "1", "2", "3", "4", "6", "7"]);
    }

    #[tokio::test]
    async fn a_partial_batch_response_retries_from_the_first_failed_record() {
        let calls = Mutex::new(Vec::<Vec<String>>::new());
        let f = |batch: Vec<Record>| {
            let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
            let n = {
                let mut c = calls.lock().unwrap();
                c.push(ids);
                c.len()
            };
            std::future::ready(if n == 1 {
                BatchResult::Partial(vec!["3".into()])
            } else {
                BatchResult::Ok
            })
        };
        let s = run(&settings(3, false), 6, &f).await;
        assert_eq!(s.delivered, 6);
        assert!(s.dead.is_empty());
        assert_eq!(calls.lock().unwrap()[1], ["3", "4", "5"]);
        assert_eq!(s.failed_invocations, 1);
    }

    #[tokio::test]
    async fn when_retries_run_out_only_the_reported_records_are_dead() {
        let f = |_b: Vec<Record>| std::future::ready(BatchResult::Partial(vec!["2".into()]));
        let s = run(&settings(1, false), 4, &f).await;
        assert_eq!(s.delivered, 3);
        let dead: Vec<&str> = s.dead[0].records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(dead, ["2"]);
    }

    #[tokio::test]
    async fn shed_load_is_retried_without_counting_and_old_records_end_dead() {
        let tries = Mutex::new(0);
        let f = |_b: Vec<Record>| {
            *tries.lock().unwrap() += 1;
            std::future::ready(BatchResult::Failed {
                error: "no capacity".into(),
                counts: false,
            })
        };
        let (_tx, mut rx) = watch::channel(false);
        let clock = Mutex::new(1_000i64);
        let now = || {
            let mut c = clock.lock().unwrap();
            *c += 1_000_000;
            *c
        };
        let s = process(
            &settings(0, false),
            Duration::from_millis(1),
            records(2),
            &f,
            &mut rx,
            now,
        )
        .await
        .unwrap();
        // max_retries = 0, but shed load does not count: it ran until the records aged out.
        assert!(*tries.lock().unwrap() >= 3, "{}", tries.lock().unwrap());
        assert_eq!(s.dead[0].condition, Condition::RecordAgeExceeded);
    }

    #[tokio::test]
    async fn a_stop_leaves_the_batch_unsettled() {
        let (tx, mut rx) = watch::channel(false);
        let f = |_b: Vec<Record>| {
            let _ = tx.send(true);
            std::future::ready(BatchResult::Failed {
                error: "boom".into(),
                counts: true,
            })
        };
        let r = process(
            &settings(5, false),
            Duration::from_secs(10),
            records(3),
            &f,
            &mut rx,
            || 0,
        )
        .await;
        assert!(r.is_none());
    }
}
