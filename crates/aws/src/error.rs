//! Lambda's error shapes. A function's own failure is a `200` with `X-Amz-Function-Error:
//! Unhandled` and the error document; the service's errors carry `x-amzn-ErrorType` and
//! `{"Type", "message"}`, which the SDKs turn into `ResourceNotFoundException` and the like.
//! Which Petrel error becomes which is the core's policy ([`petrel_core::ErrorCode::lambda`]).

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use petrel_core::{ApiError, LambdaError};

/// One of Lambda's service errors, as the SDKs read them.
pub fn service_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"Type": "User", "message": message}).to_string();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(kind) {
        h.insert("x-amzn-errortype", v);
    }
    resp
}

/// A refusal in Lambda's shape (boxed: a response is large).
pub(crate) type Refused = Box<Response>;

pub(crate) fn refused(status: StatusCode, kind: &str, message: &str) -> Refused {
    Box::new(service_error(status, kind, message))
}

/// `InvalidParameterValueException`.
pub(crate) fn invalid(message: &str) -> Refused {
    refused(
        StatusCode::BAD_REQUEST,
        "InvalidParameterValueException",
        message,
    )
}

/// A function's error document, as `Invoke` answers it.
pub(crate) fn function_error_response(body: Bytes) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-amz-function-error",
        HeaderValue::from_static("Unhandled"),
    );
    resp
}

/// A Petrel error in Lambda's terms: the function's own as function errors (of the type Lambda
/// uses: `Sandbox.Timedout`, `Runtime.ExitError`, ...), the rest as service errors.
pub(crate) fn lambda_error(e: ApiError, request_id: &str) -> Response {
    match e.code.lambda() {
        LambdaError::Function(error_type) => {
            let body = serde_json::json!({
                "errorType": error_type,
                "errorMessage": format!("RequestId: {request_id} Error: {}", e.message),
            });
            function_error_response(body.to_string().into())
        }
        LambdaError::Service(status, kind) => service_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind,
            &e.message,
        ),
    }
}

/// A Petrel error as a refusal of a management call.
pub(crate) fn refused_by(e: ApiError) -> Refused {
    Box::new(lambda_error(e, ""))
}
