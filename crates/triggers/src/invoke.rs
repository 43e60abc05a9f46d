//! A batch made an invocation of the core, and the core's answer made a [`BatchResult`].

use crate::batch::{BatchResult, Record};
use crate::events::{self, Origin, CLOUDEVENTS_BATCH};
use crate::TriggerRun;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use petrel_core::{ApiError, ErrorCode, FunctionRef};
use petrel_dataplane::{Answer, Failure, Invocation, Outcome, Payload};
use petrel_runtime::Body;
use std::time::Instant;

/// The function version a trigger's batch invokes: its `target` version, one its alias routes
/// to (weighted aliases split batches), or the latest.
pub(crate) async fn target(run: &TriggerRun) -> Result<FunctionRef, ApiError> {
    let mut r = FunctionRef::latest(&run.namespace, &run.function);
    match run.spec.target.as_deref() {
        None => {}
        Some(t) => match t.parse::<u32>() {
            Ok(v) => r.version = Some(v),
            Err(_) => r.alias = Some(t.to_owned()),
        },
    }
    run.deps
        .dp
        .route(&r, &Default::default())
        .await
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| match e.code {
            ErrorCode::VersionNotFound if r.alias.is_some() => ApiError::new(
                ErrorCode::VersionNotFound,
                format!(
                    "the trigger's target alias {:?} does not exist: create it (petrel alias set) or change the trigger's target",
                    r.alias.as_deref().unwrap_or_default()
                ),
            ),
            _ => e,
        })
}

/// Invokes the function with `body` as its event, and reads its answer.
pub(crate) async fn event(
    run: &TriggerRun,
    build: impl FnOnce(bool) -> (serde_json::Value, &'static str),
) -> BatchResult {
    let target = match target(run).await {
        Ok(t) => t,
        Err(e) => return refused(e),
    };
    let version = match run.deps.dp.version_of(&target).await {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    let (doc, content_type) = build(version.spec.runtime.speaks_lambda());
    let body = Bytes::from(serde_json::to_vec(&doc).expect("an event serialises"));
    if body.len() > run.deps.dp.payload_limit() {
        return BatchResult::Failed {
            error: format!(
                "the batch's event is {} bytes, more than the payload limit of {}: lower batch_size",
                body.len(),
                run.deps.dp.payload_limit()
            ),
            counts: true,
        };
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let inv = Invocation::new(run.label(), Payload::Event { body, headers });
    let answer = run.deps.dp.invoke(&target, inv).await;
    answered(answer, run.deps.dp.payload_limit()).await
}

/// Invokes the function with a batch of stream records, in the shape its runtime takes.
pub(crate) async fn batch(run: &TriggerRun, origin: &Origin, records: Vec<Record>) -> BatchResult {
    let started = Instant::now();
    let n = records.len();
    let partial = run
        .spec
        .source
        .stream()
        .is_some_and(|s| s.report_batch_item_failures);
    run.status
        .in_flight()
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut result = event(run, |lambda| {
        if lambda {
            (events::lambda_event(origin, &records), "application/json")
        } else {
            (
                events::cloudevents_batch(origin, &records),
                CLOUDEVENTS_BATCH,
            )
        }
    })
    .await;
    run.status
        .in_flight()
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if !partial {
        if let BatchResult::Partial(_) = result {
            result = BatchResult::Ok;
        }
    }
    let metrics = run.deps.dp.metrics();
    metrics.trigger_batch(&run.labels, result == BatchResult::Ok, n, started.elapsed());
    result
}

fn refused(e: ApiError) -> BatchResult {
    BatchResult::Failed {
        counts: e.code.class() != petrel_core::error::ErrorClass::Shed,
        error: e.message,
    }
}

/// A function's answer: a handler's error, an HTTP error status, or an answer that breaks off
/// is a failure; a `{"batchItemFailures": [...]}` document a partial one.
async fn answered(answer: Result<Answer, Failure>, limit: usize) -> BatchResult {
    let outcome = match answer {
        Ok(a) => a.outcome,
        Err(Failure { error, .. }) => return refused(error),
    };
    let body = match outcome {
        Outcome::Returned(b) => b,
        Outcome::FunctionError { error_type, body } => {
            return BatchResult::Failed {
                error: format!("the function failed ({error_type}): {}", excerpt(&body)),
                counts: true,
            }
        }
        Outcome::Streamed { body, .. } => match read(body, limit).await {
            Ok(b) => b,
            Err(e) => return e,
        },
        Outcome::Http(resp) => {
            let status = resp.status();
            let body = match read(resp.into_body(), limit).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            if !status.is_success() {
                return BatchResult::Failed {
                    error: format!("the function answered {status}: {}", excerpt(&body)),
                    counts: true,
                };
            }
            body
        }
    };
    match events::batch_item_failures(&body) {
        Some(failed) if !failed.is_empty() => BatchResult::Partial(failed),
        _ => BatchResult::Ok,
    }
}

async fn read(body: Body, limit: usize) -> Result<Bytes, BatchResult> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(BatchResult::Failed {
            error: format!("the answer broke off: {e}"),
            counts: true,
        }),
    }
}

/// The start of an answer, for an error message.
fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
    if b.len() > 300 {
        format!("{s}…")
    } else {
        s
    }
}
