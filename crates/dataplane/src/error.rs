//! The one place where errors become HTTP answers.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use petrel_core::error::ERROR_HEADER;
use petrel_core::{ApiError, ErrorCode};
use petrel_runtime::InvokeError;

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

/// What a failed invocation tells the caller.
pub fn invoke_error(function: &str, version: u32, e: &InvokeError) -> ApiError {
    match e {
        InvokeError::Timeout(d) => ApiError::new(
            ErrorCode::FunctionTimeout,
            format!(
                "function {function} did not answer within its timeout of {}; the instance was stopped. Raise `timeout` in petrel.toml or make the handler faster",
                humantime::format_duration(*d)
            ),
        ),
        InvokeError::Crashed(detail) => ApiError::new(
            ErrorCode::FunctionCrashed,
            format!("function {function} (version {version}) crashed while handling the request: {detail}"),
        ),
        InvokeError::InitFailed { message, .. } => ApiError::new(
            ErrorCode::FunctionInitFailed,
            format!(
                "function {function} (version {version}) failed to start: {message}. Fix the code and deploy again; `petrel logs {function}` shows its output"
            ),
        ),
        InvokeError::OutOfMemory(detail) => ApiError::new(
            ErrorCode::FunctionOutOfMemory,
            format!("function {function} (version {version}) ran out of memory: {detail}. Raise memory_mb in petrel.toml or use less"),
        ),
        InvokeError::ResponseTooLarge(limit) => ApiError::new(
            ErrorCode::ResponseTooLarge,
            format!("function {function} returned more than the response limit of {limit} bytes; return less data, or store it elsewhere and return a reference"),
        ),
        InvokeError::BadResponse(detail) => ApiError::new(
            ErrorCode::BadFunctionResponse,
            format!("function {function} answered in a way Petrel cannot use: {detail}"),
        ),
        InvokeError::Unsupported(detail) => ApiError::new(ErrorCode::UnsupportedRuntime, detail.clone()),
        InvokeError::Stopped(why) => ApiError::new(
            ErrorCode::FunctionCrashed,
            format!("function {function} (version {version}) was stopped: {why}"),
        ),
    }
}
