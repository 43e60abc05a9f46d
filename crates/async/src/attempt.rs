//! One attempt of a queued invocation: the stored request made an [`Invocation`] of the core,
//! and the core's [`Outcome`] (or [`Failure`]) made the attempt's verdict and stored result,
//! with no HTTP answer parsed back.

use crate::submit::stored_headers;
use crate::{Attempt, Invoker, Verdict};
use http_body_util::BodyExt;
use petrel_core::api::{AsyncKind, Trigger};
use petrel_core::manifest::AsyncSpec;
use petrel_core::{ApiError, ErrorCode, FunctionRef};
use petrel_dataplane::trace::TraceContext;
use petrel_dataplane::{Answer, AttemptOf, Failure, Invocation, Outcome, Payload};
use petrel_runtime::Body;
use petrel_store::LeasedAsync;

/// Runs one attempt of `job`; returns how it went, and the async settings of the version it
/// ran (which govern its retries), when it got that far.
pub(crate) async fn run(invoker: &dyn Invoker, job: LeasedAsync) -> (Attempt, Option<AsyncSpec>) {
    let target = FunctionRef {
        version: job.version,
        ..FunctionRef::latest(&job.namespace, &job.function)
    };
    let version = match invoker.resolve(&target).await {
        Ok(v) => v,
        Err(e) => return (refused(e, None), None),
    };
    let spec = version.spec.asynchronous.clone();
    let inv = match invocation(&job) {
        Ok(inv) => inv,
        Err(e) => return (refused(e, None), Some(spec)),
    };
    let attempt = match invoker.invoke(&target, inv).await {
        Ok(answer) => answered(answer, invoker.payload_limit()).await,
        Err(Failure { error, version }) => refused(error, version),
    };
    invoker.attempted(&version, attempt.verdict);
    (attempt, Some(spec))
}

/// The stored request as the core takes it: an HTTP request as it was sent to `/async-fn`, or
/// an event as the raw invoke (and Lambda's `Event`) took it.
fn invocation(job: &LeasedAsync) -> Result<Invocation, ApiError> {
    let invalid = |e: String| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the stored request is not valid: {e}"),
        )
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &job.headers {
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let value = http::HeaderValue::from_str(v).map_err(|e| invalid(e.to_string()))?;
        headers.append(name, value);
    }
    let parent = TraceContext::from_headers(&headers);
    let body = bytes::Bytes::from(job.body.clone());
    let payload = match job.kind {
        AsyncKind::Http => {
            let mut req = http::Request::builder()
                .method(job.method.as_str())
                .uri(job.path.as_str())
                .body(Body::from(body))
                .map_err(|e| invalid(e.to_string()))?;
            *req.headers_mut() = headers;
            Payload::Http(req)
        }
        AsyncKind::Event => Payload::Event { body, headers },
    };
    let mut inv = Invocation::new(Trigger::Async, payload);
    inv.id = job.id.clone();
    inv.parent = parent;
    inv.attempt = Some(AttemptOf {
        record_id: job.record_id(),
    });
    Ok(inv)
}

/// An attempt that got the function's answer: a function error, a stream that broke off, or a
/// 5xx answer is a failure to retry; anything else a success. The answer is kept as the HTTP
/// front ends give it (bounded by the payload limit).
async fn answered(answer: Answer, limit: usize) -> Attempt {
    let Answer { version, outcome } = answer;
    let failed = match &outcome {
        Outcome::FunctionError { error_type, .. } => {
            Some(format!("the function failed ({error_type})"))
        }
        Outcome::Http(resp) if resp.status().is_server_error() => {
            Some(format!("the function answered {}", resp.status()))
        }
        Outcome::Returned(_) | Outcome::Streamed { .. } | Outcome::Http(_) => None,
    };
    let (parts, body) = outcome.into_response().into_parts();
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Attempt {
                verdict: Verdict::Retry,
                executed_version: Some(version),
                result: None,
                error: Some(format!("the answer broke off: {e}")),
            }
        }
    };
    Attempt {
        verdict: if failed.is_some() {
            Verdict::Retry
        } else {
            Verdict::Succeeded
        },
        executed_version: Some(version),
        result: Some((
            parts.status.as_u16(),
            stored_headers(parts.headers),
            body.to_vec(),
        )),
        error: failed,
    }
}

/// An attempt Petrel refused or the function failed without an answer: retried unless running
/// again cannot help ([`ErrorCode::is_retryable`]).
fn refused(e: ApiError, version: Option<u32>) -> Attempt {
    Attempt {
        verdict: if e.code.is_retryable() {
            Verdict::Retry
        } else {
            Verdict::Fail
        },
        executed_version: version,
        result: None,
        error: Some(format!("{}: {}", e.code.as_str(), e.message)),
    }
}
