//! The accept side of every async way in (`/async-fn/...`, the raw invoke's `?async=true`,
//! Lambda's `InvocationType: Event`): a request checked, made a submission, and committed.

use crate::AsyncQueue;
use petrel_core::api::{AsyncKind, CALLBACK_URL_HEADER, IDEMPOTENCY_KEY_HEADER};
use petrel_core::{now_ms, ApiError, ErrorCode, FunctionRef};
use petrel_dataplane::{json_event, read_body, DataPlane};
use petrel_runtime::Body;
use petrel_store::NewAsync;

/// A message's headers as stored: without the ones of its hop and its framing (the body is
/// stored whole), as text pairs.
pub(crate) fn stored_headers(mut h: http::HeaderMap) -> Vec<(String, String)> {
    petrel_runtime::strip_hop_by_hop(&mut h);
    h.remove(http::header::CONTENT_LENGTH);
    h.iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// Commits `req` to the queue as invocation `id` of `target`; returns the id that stands (an
/// earlier one when the idempotency key matched) and whether it was such a duplicate. An
/// unknown function, or an event a Lambda handler could not take, is refused here, not queued.
/// Only an `Ok` may be answered with a `202`.
pub async fn submit(
    queue: &AsyncQueue,
    dp: &DataPlane,
    target: &FunctionRef,
    kind: AsyncKind,
    id: &str,
    req: http::Request<Body>,
) -> Result<(String, bool), ApiError> {
    // An alias (or a pin) is decided now: the queued request runs the version it was routed to,
    // whatever the alias says when its attempt comes. The latest stays the latest at the attempt.
    let hints = petrel_dataplane::RouteHints::from_headers(req.headers())?;
    let target = &dp.route(target, &hints).await?;
    let version = dp.version_of(target).await?;
    fn text(req: &http::Request<Body>, name: &str) -> Result<Option<String>, ApiError> {
        req.headers()
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("the {name} header is not text"),
                    )
                })
            })
            .transpose()
    }
    let callback_url = text(&req, CALLBACK_URL_HEADER)?;
    if let Some(u) = &callback_url {
        if !petrel_core::manifest::is_http_url(u) || u.parse::<http::Uri>().is_err() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("X-Callback-Url {u:?} is not an http:// or https:// URL; give one the result can be POSTed to"),
            ));
        }
    }
    let idem_key = text(&req, IDEMPOTENCY_KEY_HEADER)?;
    if idem_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the Idempotency-Key header must be 1 to 256 characters",
        ));
    }
    let (mut parts, body) = read_body(req, dp.payload_limit()).await?;
    let body = if kind == AsyncKind::Event && version.spec.runtime.speaks_lambda() {
        // Refused now, not after a retry cycle.
        json_event(body)?
    } else {
        body
    };
    // The ones Petrel acts on stay with Petrel.
    let mut request_headers = std::mem::take(&mut parts.headers);
    for h in [
        CALLBACK_URL_HEADER,
        IDEMPOTENCY_KEY_HEADER,
        http::header::EXPECT.as_str(),
    ] {
        request_headers.remove(h);
    }
    let now = now_ms();
    let n = NewAsync {
        id: id.to_owned(),
        namespace: target.namespace.clone(),
        function: target.name.clone(),
        version: target.version,
        kind,
        method: parts.method.to_string(),
        path: match kind {
            AsyncKind::Http => parts.uri.to_string(),
            AsyncKind::Event => String::new(),
        },
        headers: stored_headers(request_headers),
        body: body.to_vec(),
        created_at: now,
        run_at: now,
        callback_url,
        idem_key,
    };
    let accepted = queue.submit(n).await.map_err(|e| {
        tracing::error!(error = %e, "async submission refused");
        ApiError::new(
            ErrorCode::Internal,
            "the request could not be stored, so it was not accepted; send it again",
        )
    })?;
    dp.metrics()
        .async_accepted(&version.namespace, &version.spec);
    Ok(accepted)
}
