//! The platform's error codes and the user-facing error every non-2xx answer of Petrel's own carries
//! (`{"error": {"code": ..., "message": ...}}` with an `X-Petrel-Error` header).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Header set on every error answer produced by Petrel itself (never on a function's own answer).
pub const ERROR_HEADER: &str = "x-petrel-error";
/// Header set when the answer carries a function's own error (a handler that raised).
pub const FUNCTION_ERROR_HEADER: &str = "x-petrel-function-error";

/// Every error code Petrel answers with. The HTTP status lives here so it is decided in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidName,
    InvalidManifest,
    InvalidPackage,
    InvalidPayload,
    InvalidRequest,
    UnsupportedRuntime,
    Unauthorized,
    Forbidden,
    NamespaceNotFound,
    SecretNotFound,
    KeyNotFound,
    FunctionNotFound,
    VersionNotFound,
    InvocationNotFound,
    RouteNotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    ResponseTooLarge,
    TooManyRequests,
    NoCapacity,
    FunctionTimeout,
    FunctionCrashed,
    FunctionInitFailed,
    FunctionOutOfMemory,
    BadFunctionResponse,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        Self::InvalidName,
        Self::InvalidManifest,
        Self::InvalidPackage,
        Self::InvalidPayload,
        Self::InvalidRequest,
        Self::UnsupportedRuntime,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NamespaceNotFound,
        Self::SecretNotFound,
        Self::KeyNotFound,
        Self::FunctionNotFound,
        Self::VersionNotFound,
        Self::InvocationNotFound,
        Self::RouteNotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::ResponseTooLarge,
        Self::TooManyRequests,
        Self::NoCapacity,
        Self::FunctionTimeout,
        Self::FunctionCrashed,
        Self::FunctionInitFailed,
        Self::FunctionOutOfMemory,
        Self::BadFunctionResponse,
        Self::ShuttingDown,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidName => "invalid_name",
            Self::InvalidManifest => "invalid_manifest",
            Self::InvalidPackage => "invalid_package",
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedRuntime => "unsupported_runtime",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NamespaceNotFound => "namespace_not_found",
            Self::SecretNotFound => "secret_not_found",
            Self::KeyNotFound => "key_not_found",
            Self::FunctionNotFound => "function_not_found",
            Self::VersionNotFound => "version_not_found",
            Self::InvocationNotFound => "invocation_not_found",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ResponseTooLarge => "response_too_large",
            Self::TooManyRequests => "too_many_requests",
            Self::NoCapacity => "no_capacity",
            Self::FunctionTimeout => "function_timeout",
            Self::FunctionCrashed => "function_crashed",
            Self::FunctionInitFailed => "function_init_failed",
            Self::FunctionOutOfMemory => "function_out_of_memory",
            Self::BadFunctionResponse => "bad_function_response",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
        }
    }

    pub fn from_str_code(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// The HTTP status of an answer carrying this code.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidName
            | Self::InvalidManifest
            | Self::InvalidPackage
            | Self::InvalidPayload
            | Self::InvalidRequest
            | Self::UnsupportedRuntime => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NamespaceNotFound
            | Self::SecretNotFound
            | Self::KeyNotFound
            | Self::FunctionNotFound
            | Self::VersionNotFound
            | Self::InvocationNotFound
            | Self::RouteNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
            Self::FunctionCrashed
            | Self::FunctionInitFailed
            | Self::FunctionOutOfMemory
            | Self::BadFunctionResponse
            | Self::ResponseTooLarge => 502,
            Self::NoCapacity | Self::ShuttingDown => 503,
            Self::FunctionTimeout => 504,
        }
    }
}

/// What kind of failure a code is, which decides how every caller treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request was refused before any function ran, and sending it again as it is cannot
    /// succeed (bad input, an unknown function): counted as rejected, never retried.
    Refused,
    /// Admission shed the request for now (limits, capacity, shutdown): counted as rejected,
    /// worth retrying later.
    Shed,
    /// The function ran, or its instance started, and failed: counted as its invocation, and
    /// an async attempt is retried.
    Function,
    /// Petrel itself failed: retried.
    Internal,
}

/// How AWS Lambda's API answers in place of a Petrel error (see `crates/aws`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LambdaError {
    /// A `200` carrying the function's error document with `X-Amz-Function-Error`, of this
    /// `errorType`: the function's own failure.
    Function(&'static str),
    /// A service error: this status, and this type in `x-amzn-ErrorType`, which the SDKs turn
    /// into `ResourceNotFoundException` and the like.
    Service(u16, &'static str),
}

impl ErrorCode {
    /// The class of this code. Exhaustive: a new code must be classed here.
    pub fn class(self) -> ErrorClass {
        match self {
            Self::InvalidName
            | Self::InvalidManifest
            | Self::InvalidPackage
            | Self::InvalidPayload
            | Self::InvalidRequest
            | Self::UnsupportedRuntime
            | Self::Unauthorized
            | Self::Forbidden
            | Self::NamespaceNotFound
            | Self::SecretNotFound
            | Self::KeyNotFound
            | Self::FunctionNotFound
            | Self::VersionNotFound
            | Self::InvocationNotFound
            | Self::RouteNotFound
            | Self::MethodNotAllowed
            | Self::Conflict
            | Self::PayloadTooLarge => ErrorClass::Refused,
            Self::TooManyRequests | Self::NoCapacity | Self::ShuttingDown => ErrorClass::Shed,
            Self::ResponseTooLarge
            | Self::FunctionTimeout
            | Self::FunctionCrashed
            | Self::FunctionInitFailed
            | Self::FunctionOutOfMemory
            | Self::BadFunctionResponse => ErrorClass::Function,
            Self::Internal => ErrorClass::Internal,
        }
    }

    /// Whether an answer with this code is a rejection: the request never reached a function.
    pub fn is_rejection(self) -> bool {
        match self.class() {
            ErrorClass::Refused | ErrorClass::Shed => true,
            ErrorClass::Function | ErrorClass::Internal => false,
        }
    }

    /// Whether running the same request again may succeed (an async attempt is retried).
    pub fn is_retryable(self) -> bool {
        match self.class() {
            ErrorClass::Refused => false,
            ErrorClass::Shed | ErrorClass::Function | ErrorClass::Internal => true,
        }
    }

    /// Lambda's answer in place of this code. Exhaustive: a new code must be mapped here.
    pub fn lambda(self) -> LambdaError {
        use LambdaError::{Function, Service};
        match self {
            Self::FunctionTimeout => Function("Sandbox.Timedout"),
            Self::FunctionCrashed => Function("Runtime.ExitError"),
            Self::FunctionOutOfMemory => Function("Runtime.OutOfMemory"),
            Self::FunctionInitFailed => Function("Runtime.InitError"),
            Self::BadFunctionResponse => Function("Runtime.InvalidResponse"),
            Self::FunctionNotFound
            | Self::VersionNotFound
            | Self::InvocationNotFound
            | Self::NamespaceNotFound
            | Self::SecretNotFound
            | Self::KeyNotFound => Service(404, "ResourceNotFoundException"),
            Self::Unauthorized => Service(403, "UnrecognizedClientException"),
            Self::Forbidden => Service(403, "AccessDeniedException"),
            Self::RouteNotFound => Service(404, "UnknownOperationException"),
            Self::InvalidName => Service(400, "ValidationException"),
            Self::InvalidPayload => Service(400, "InvalidRequestContentException"),
            Self::InvalidRequest
            | Self::InvalidManifest
            | Self::InvalidPackage
            | Self::UnsupportedRuntime => Service(400, "InvalidParameterValueException"),
            Self::MethodNotAllowed => Service(405, "UnknownOperationException"),
            Self::Conflict => Service(409, "ResourceConflictException"),
            Self::PayloadTooLarge => Service(413, "RequestTooLargeException"),
            Self::ResponseTooLarge => Service(502, "ResponseSizeTooLargeException"),
            Self::TooManyRequests | Self::NoCapacity => Service(429, "TooManyRequestsException"),
            Self::ShuttingDown => Service(503, "ServiceException"),
            Self::Internal => Service(500, "ServiceException"),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user-facing error: a code and a message that says what went wrong and what to do.
/// Internal causes are logged where the error is handled and never put in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), for load-shedding answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
            },
        }
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "Petrel hit an internal error; the server log has the details. Retry, and report it if it persists.",
        )
    }
}

impl From<crate::NameError> for ApiError {
    fn from(e: crate::NameError) -> Self {
        Self::new(ErrorCode::InvalidName, e.to_string())
    }
}

impl From<crate::ManifestError> for ApiError {
    fn from(e: crate::ManifestError) -> Self {
        let code = match e {
            crate::ManifestError::UnsupportedRuntime { .. } => ErrorCode::UnsupportedRuntime,
            _ => ErrorCode::InvalidManifest,
        };
        Self::new(code, e.to_string())
    }
}

/// The JSON body of a Petrel error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_have_statuses() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_str_code(c.as_str()), Some(*c));
            assert!((400..600).contains(&c.status()));
        }
        assert_eq!(ErrorCode::FunctionTimeout.status(), 504);
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
    }

    #[test]
    fn the_policy_classes_every_code_consistently() {
        for c in ErrorCode::ALL {
            let class = c.class();
            // A function's own failure is answered by a 5xx, and in Lambda's terms as the
            // function's error (a too-large response is Lambda's service error, as on AWS).
            if class == ErrorClass::Function && *c != ErrorCode::ResponseTooLarge {
                assert!(matches!(c.lambda(), LambdaError::Function(_)), "{c}");
            }
            if let LambdaError::Function(_) = c.lambda() {
                assert_eq!(class, ErrorClass::Function, "{c}");
            }
            if class == ErrorClass::Refused {
                assert!((400..500).contains(&c.status()), "{c}");
                assert!(c.is_rejection() && !c.is_retryable(), "{c}");
            }
            if class == ErrorClass::Shed {
                assert!(c.is_rejection() && c.is_retryable(), "{c}");
            }
        }
    }
}
