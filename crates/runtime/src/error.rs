//! Why an invocation, or a start, did not produce the function's answer.

use std::time::Duration;

/// Why an invocation (or a start) did not produce the function's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("the function did not answer within its timeout of {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Crashed(String),
    #[error("the function failed to start: {message}")]
    InitFailed {
        error_type: Option<String>,
        message: String,
    },
    #[error("{0}")]
    OutOfMemory(String),
    #[error("the function's response is larger than the limit of {0} bytes")]
    ResponseTooLarge(usize),
    #[error("the function answered in a way Petrel cannot use: {0}")]
    BadResponse(String),
    /// Petrel stopped the instance on purpose (its invocation was cancelled).
    #[error("{0}")]
    Stopped(String),
    /// The instance ended before it took the invocation: the function never saw it, so it can
    /// run on another instance.
    #[error("the instance ended before it took the request: {0}")]
    NotDelivered(String),
}

impl InvokeError {
    /// Whether the instance that gave this error must not take another request: it ran out of
    /// time, crashed, or was stopped (it is killed, or already gone).
    pub fn retires_instance(&self) -> bool {
        match self {
            InvokeError::Timeout(_)
            | InvokeError::Crashed(_)
            | InvokeError::Stopped(_)
            | InvokeError::NotDelivered(_) => true,
            InvokeError::InitFailed { .. }
            | InvokeError::OutOfMemory(_)
            | InvokeError::ResponseTooLarge(_)
            | InvokeError::BadResponse(_) => false,
        }
    }
}

pub(crate) fn init_failed(message: impl Into<String>) -> InvokeError {
    InvokeError::InitFailed {
        error_type: None,
        message: message.into(),
    }
}
