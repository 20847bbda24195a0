//! The error body clients of the classic stack know, written once for the
//! gateway and the services: Spring's `{"timestamp","status","error",
//! "message","path"}`, plus `errors` (field and reason) when there are any.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Serialize;

#[derive(Serialize)]
struct SpringError<'a, E: Serialize> {
    timestamp: u64,
    status: u16,
    error: &'a str,
    message: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [E],
}

/// The JSON bytes of an error answer; `errors` is left out when empty.
pub fn error_json<E: Serialize>(
    status: StatusCode,
    message: &str,
    path: &str,
    errors: &[E],
) -> Vec<u8> {
    let body = SpringError {
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        status: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error"),
        message,
        path,
        errors,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
