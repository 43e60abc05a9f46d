//! The one place where Petrel's errors become HTTP answers (its own API's and the gateway's;
//! AWS Lambda's API has its own shapes, in `petrel-aws`).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use petrel_core::api::INVOCATION_ID_HEADER;
use petrel_core::error::ERROR_HEADER;
use petrel_core::ApiError;
use petrel_dataplane::metrics::Metrics;

/// An [`ApiError`] as an HTTP answer: the contract's JSON body, `X-Petrel-Error`, `Retry-After`.
#[derive(Debug)]
pub struct ErrorResponse(pub ApiError);

impl From<ApiError> for ErrorResponse {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(e.body())).into_response();
        let h = resp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(e.code.as_str()));
        if let Some(secs) = e.retry_after {
            h.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The answer to an invocation: its response, or Petrel's error with the invocation id too (for
/// the logs). Errors of requests that never reached a function are counted, by code.
pub(crate) fn answer(metrics: &Metrics, id: &str, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| {
        if e.code.is_rejection() {
            metrics.rejected(e.code);
        }
        let mut r = ErrorResponse(e).into_response();
        if let Ok(v) = HeaderValue::from_str(id) {
            r.headers_mut().insert(INVOCATION_ID_HEADER, v);
        }
        r
    })
}
