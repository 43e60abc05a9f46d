//! Lanes: the ordered queues a stream consumer feeds and its batch workers drain. A Kafka
//! partition has `parallelization` lanes (records hashed to one by key), a JetStream consumer
//! the same by subject; each lane runs one batch at a time, so order is kept per key, and a
//! trigger runs at most as many batches at once as it has busy lanes (and as the function's
//! share of the pool allows).
//!
//! A worker fills a batch up to `batch_size`, waiting at most `batch_window` from its first
//! record; while a batch runs, the next one fills, so batches grow with the lag.

use crate::batch::{self, Record};
use crate::events::Origin;
use crate::failure::{self, Publisher};
use crate::TriggerRun;
use petrel_core::now_ms;
use petrel_store::TriggerCounts;
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

/// One lane: records waiting with what acknowledges each.
pub(crate) struct Lane<A> {
    queue: Mutex<VecDeque<(Record, A, Instant)>>,
    more: Notify,
    space: Notify,
    capacity: usize,
    batch: usize,
}

impl<A> Lane<A> {
    pub fn new(batch_size: u32) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            more: Notify::new(),
            space: Notify::new(),
            capacity: (batch_size as usize * 2).max(64),
            batch: batch_size as usize,
        })
    }

    /// Queues a record, waiting while the lane is full (which holds the consumer back).
    pub async fn push(&self, record: Record, ack: A, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            let space = self.space.notified();
            {
                let mut q = self.queue.lock().unwrap();
                if q.len() < self.capacity {
                    q.push_back((record, ack, Instant::now()));
                    // The worker waits for a first record, then for a full batch (or its
                    // window): only those wake it, not every record.
                    let wake = q.len() == 1 || q.len() == self.batch;
                    drop(q);
                    if wake {
                        self.more.notify_one();
                    }
                    return true;
                }
            }
            tokio::select! {
                _ = space => {}
                _ = stop.changed() => return false,
            }
        }
    }

    /// Drops what waits (its partition went to another consumer).
    pub fn clear(&self) {
        self.queue.lock().unwrap().clear();
        self.space.notify_waiters();
    }

    fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

/// The lane of a record with this key, out of `n`.
pub(crate) fn lane_of(key: Option<&[u8]>, n: u32) -> usize {
    match key {
        None => 0,
        Some(k) if n > 1 => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            (h.finish() % n as u64) as usize
        }
        Some(_) => 0,
    }
}

/// How often a batch that is still being settled tells its source it is in progress
/// (JetStream would deliver its messages again after the consumer's `ack_wait`).
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Runs one lane's batches until `stop`: fill, invoke (through [`batch::process`]), send the
/// dead to `on_failure`, count, then `commit` the batch's acknowledgements. While a batch is
/// being settled, `progress` is called on its acknowledgements every [`PROGRESS_EVERY`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn work<A, C, Fut, P, PFut>(
    run: Arc<TriggerRun>,
    origin: Arc<Origin>,
    lane: Arc<Lane<A>>,
    publisher: Option<Arc<Publisher>>,
    slots: Arc<Semaphore>,
    commit: C,
    progress: P,
    mut stop: watch::Receiver<bool>,
) where
    C: Fn(Vec<A>) -> Fut,
    Fut: Future<Output = ()>,
    P: Fn(&[A]) -> PFut,
    PFut: Future<Output = ()>,
{
    let Some(settings) = run.spec.source.stream().cloned() else {
        return;
    };
    let window = Duration::from_millis(settings.batch_window_ms);
    let size = settings.batch_size as usize;
    loop {
        // Wait for a first record.
        loop {
            let more = lane.more.notified();
            if lane.len() > 0 {
                break;
            }
            tokio::select! {
                _ = more => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
        // Fill up to the batch size, for at most the window from the first record.
        let first = lane
            .queue
            .lock()
            .unwrap()
            .front()
            .map(|e| e.2)
            .unwrap_or_else(Instant::now);
        let deadline = first + window;
        while lane.len() < size && Instant::now() < deadline {
            let more = lane.more.notified();
            if lane.len() >= size {
                break;
            }
            tokio::select! {
                _ = more => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
        let taken: Vec<(Record, A, Instant)> = {
            let mut q = lane.queue.lock().unwrap();
            let n = q.len().min(size);
            q.drain(..n).collect()
        };
        lane.space.notify_waiters();
        if taken.is_empty() {
            continue;
        }
        let (records, acks): (Vec<Record>, Vec<A>) =
            taken.into_iter().map(|(r, a, _)| (r, a)).unzip();
        let n = records.len() as u64;
        run.deps.dp.metrics().trigger_records(&run.labels, "in", n);
        let Ok(_slot) = slots.acquire().await else {
            return;
        };
        let invoke = |recs: Vec<Record>| {
            let (run, origin) = (run.clone(), origin.clone());
            async move { crate::invoke::batch(&run, &origin, recs).await }
        };
        let mut stop_batch = stop.clone();
        let process = batch::process(
            &settings,
            run.deps.config.retry_base,
            records,
            &invoke,
            &mut stop_batch,
            now_ms,
        );
        tokio::pin!(process);
        let mut tick = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let settled = loop {
            tokio::select! {
                s = &mut process => break s,
                _ = tick.tick() => progress(&acks).await,
            }
        };
        let Some(settled) = settled else {
            return;
        };
        let dead: usize = settled.dead.iter().map(|d| d.records.len()).sum();
        if !failure::send_all(
            &run,
            &origin,
            publisher.as_deref(),
            &settled.dead,
            &mut stop,
        )
        .await
        {
            return;
        }
        let metrics = run.deps.dp.metrics();
        metrics.trigger_records(&run.labels, "delivered", settled.delivered as u64);
        metrics.trigger_records(&run.labels, "failed", settled.failed_records as u64);
        metrics.trigger_records(&run.labels, "dead", dead as u64);
        if dead > 0 {
            tracing::warn!(function = %run.function, trigger = %run.spec.name, records = dead, destination = %settings.on_failure, error = settled.last_error.as_deref().unwrap_or(""), "a trigger gave up on records");
        }
        run.count(
            TriggerCounts {
                delivered: settled.delivered as u64,
                failed: settled.failed_invocations as u64,
                dead: dead as u64,
            },
            settled.last_error.as_deref(),
        )
        .await;
        commit(acks).await;
        run.status.running();
    }
}
