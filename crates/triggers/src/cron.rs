//! A cron trigger: fires once per due time, in its time zone. Each fire is claimed in the store
//! first (the due time replaces the last one only if later), so of several servers sharing one
//! PostgreSQL exactly one fires it; after a restart, due times missed while no server ran fire
//! once, not once each.

use crate::batch::BatchResult;
use crate::events;
use crate::{RunState, TriggerRun};
use petrel_core::now_ms;
use petrel_core::trigger::{parse_timezone, CronSource, Schedule};
use petrel_store::TriggerCounts;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub(crate) async fn run(run: Arc<TriggerRun>, src: CronSource, mut stop: watch::Receiver<bool>) {
    // Validated at deploy; a stored spec that no longer parses is reported, not fired.
    let (schedule, tz) = match (
        Schedule::parse(&src.schedule),
        parse_timezone(&src.timezone),
    ) {
        (Ok(s), Ok(tz)) => (s, tz),
        (Err(e), _) | (_, Err(e)) => {
            run.status.failing(e);
            return;
        }
    };
    let detail: serde_json::Value = src
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let store = &run.deps.store;
    let mut failures = 0;
    let mut last = loop {
        match store
            .cron_last_fire(&run.namespace, &run.function, &run.spec.name, now_ms())
            .await
        {
            Ok(l) => break l,
            Err(e) => {
                failures += 1;
                run.status
                    .failing(format!("could not read the last fire: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(crate::batch::backoff(run.deps.config.reconnect_base, failures)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    run.status.set(RunState::Running);
    loop {
        let now = now_ms();
        let Some(last_dt) = chrono::DateTime::from_timestamp_millis(last) else {
            return;
        };
        let Some(next) = schedule.next_after(last_dt, tz) else {
            run.status.failing("the schedule has no further due time");
            return;
        };
        let mut due = next.timestamp_millis();
        if due <= now {
            // Missed while no server ran it: fire the latest missed due time, once.
            let mut t = next;
            while let Some(n) = schedule.next_after(t, tz) {
                if n.timestamp_millis() > now {
                    break;
                }
                t = n;
            }
            due = t.timestamp_millis();
        } else {
            run.status.set_next_fire(due);
            let wait = Duration::from_millis((due - now) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
        match store
            .claim_cron_fire(&run.namespace, &run.function, &run.spec.name, due)
            .await
        {
            Ok(true) => fire(&run, due, detail.clone()).await,
            Ok(false) => {} // another server fired it
            Err(e) => {
                run.status.failing(format!("could not claim a fire: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        last = due;
    }
}

/// One fire: the scheduled event (or a CloudEvent), invoked once; its outcome counted.
async fn fire(run: &TriggerRun, due: i64, detail: serde_json::Value) {
    let id = petrel_dataplane::new_invocation_id();
    let rule = format!("{}-{}", run.function, run.spec.name);
    let started = std::time::Instant::now();
    let result = crate::invoke::event(run, |lambda| {
        if lambda {
            (
                events::scheduled_event(&id, &rule, due, detail),
                "application/json",
            )
        } else {
            (
                events::scheduled_cloudevent(&id, &rule, due, detail),
                events::CLOUDEVENTS_BATCH,
            )
        }
    })
    .await;
    let ok = !matches!(result, BatchResult::Failed { .. });
    run.deps
        .dp
        .metrics()
        .trigger_batch(&run.labels, ok, 1, started.elapsed());
    let metrics = run.deps.dp.metrics();
    metrics.trigger_records(&run.labels, "in", 1);
    match result {
        BatchResult::Failed { error, .. } => {
            metrics.trigger_records(&run.labels, "failed", 1);
            tracing::warn!(function = %run.function, trigger = %run.spec.name, error = %error, "a cron fire failed");
            run.count(
                TriggerCounts {
                    failed: 1,
                    ..Default::default()
                },
                Some(&error),
            )
            .await;
        }
        _ => {
            metrics.trigger_records(&run.labels, "delivered", 1);
            run.count(
                TriggerCounts {
                    delivered: 1,
                    ..Default::default()
                },
                None,
            )
            .await;
        }
    }
    run.status.running();
}
