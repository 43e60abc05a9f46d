//! A function's logs, read from the store and, when followed, from the log writer as they come.

use super::{bad_query, existing_function, since_ms, ApiResult, Caller};
use crate::logs::ndjson;
use crate::App;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use petrel_core::api::LogLine;
use petrel_core::error::ErrorBody;
use petrel_core::ApiError;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    namespace: Option<String>,
    /// Only lines newer than this long ago (`10m`, `2h`).
    since: Option<String>,
    /// Only lines of this invocation.
    invocation: Option<String>,
    /// The newest N lines (default 100 when `since` is not given).
    tail: Option<u32>,
    /// Keep the answer open and stream new lines as they come.
    #[serde(default)]
    follow: bool,
}

/// A function's logs as newline-delimited JSON, oldest first; with `follow`, the answer stays
/// open and new lines come as they are written.
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "functions",
    params(("name" = String, Path, description = "The function's name"), LogsQuery),
    responses(
        (status = 200, description = "One JSON log line per line", body = LogLine, content_type = "application/x-ndjson"),
        (status = 404, description = "No such function", body = ErrorBody),
    ))]
pub async fn logs(
    State(app): State<App>,
    caller: Caller,
    petrel_gateway::Checked(Path(name)): petrel_gateway::Checked<Path<String>>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(bad_query)?;
    let ns = existing_function(
        &app,
        &caller,
        petrel_core::auth::Action::Read,
        &name,
        q.namespace.as_deref(),
    )
    .await?;
    let since_ts = since_ms(q.since.as_deref(), None)?;
    let (limit, tail) = match (q.tail, q.since.is_some()) {
        (Some(n), _) => (n.min(100_000), true),
        (None, true) => (100_000, false),
        (None, false) => (100, true),
    };
    // Subscribe before reading so nothing written in between is missed.
    let live = q.follow.then(|| app.logs.subscribe());
    let stored = app
        .store
        .read_logs(
            &ns,
            &name,
            0,
            since_ts,
            q.invocation.as_deref(),
            limit,
            tail,
        )
        .await
        .map_err(ApiError::from)?;
    let last = stored.last().map(|(id, _)| *id).unwrap_or(0);
    let head: Vec<Result<Bytes, std::io::Error>> =
        stored.iter().map(|(_, l)| Ok(ndjson(l))).collect();
    let head = futures_util::stream::iter(head);
    let body = match live {
        None => Body::from_stream(head),
        Some(rx) => {
            let invocation = q.invocation.clone();
            let live = futures_util::stream::unfold(rx, move |mut rx| {
                let (ns, name, invocation) = (ns.clone(), name.clone(), invocation.clone());
                async move {
                    loop {
                        match rx.recv().await {
                            Ok((id, l)) => {
                                if id > last
                                    && l.namespace == ns
                                    && l.function == name
                                    && (invocation.is_none() || l.invocation == invocation)
                                {
                                    return Some((Ok::<_, std::io::Error>(ndjson(&l)), rx));
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(skipped = n, "a log follower fell behind");
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Body::from_stream(head.chain(live))
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
