//! Error answers of the services, in the Spring shape the classic clients
//! know: `{"timestamp","status","error","message","path"}`, plus `errors`
//! (field and reason) for a 400.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field (`id`, `message`, or a path parameter).
    pub field: String,
    /// Why it is refused.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a handler can answer besides success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is not valid; nothing was written.
    #[error("{0}")]
    BadRequest(String, Vec<FieldError>),
    /// 503: the database (or the service) is not available now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// 400 for the given fields.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let message = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::BadRequest(message, errors)
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => ApiError::Unavailable(format!(
                "the database is not reachable ({err}); try again shortly"
            )),
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::Internal("database error".into())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let text = rejection.body_text();
        // serde names the field in its message ("missing field `id`", "invalid type … at line").
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.contains("missing field") || text.contains("unknown field"))
            .unwrap_or("body")
            .to_string();
        ApiError::invalid(vec![FieldError::new(&field, text)])
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::invalid(vec![FieldError::new("path", rejection.body_text())])
    }
}

impl ApiError {
    /// The JSON answer for a request to `path`.
    pub fn to_response(&self, path: &str) -> Response {
        let status = self.status();
        let errors = match self {
            ApiError::BadRequest(_, e) => e.as_slice(),
            _ => &[],
        };
        let json = shoal_http::spring::error_json(status, &self.to_string(), path, errors);
        (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
    }
}

/// Handlers return this. The request path is not known here; the
/// [`crate::access_log`] middleware finds the error in the answer's
/// extensions and renders it again with the path.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.to_response("");
        response.extensions_mut().insert(self);
        response
    }
}
