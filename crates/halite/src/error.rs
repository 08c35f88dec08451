//! Every HTTP status halite answers with an error, in one place.
//!
//! Handlers return `Result<_, ApiError>`; `ApiError` renders as the body shape
//! of the surface that produced it (`{"return": "<message>"}` for rest_wsgi;
//! rest_cherrypy adds `status`) and never contains a credential: messages come
//! from halite or from the master's error text, which never echoes secrets.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use salt_client::{ErrorKind, SaltError};
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, message)
    }

    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "The request body did not arrive in time",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "The path was not found")
    }

    /// A credential check refused by the throttle (`throttle.rs`).
    pub fn throttled(t: crate::throttle::Throttled) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many failed authentication attempts; try again in {} s",
                t.retry_after
            ),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than the limit of {limit} bytes"),
        )
    }
}

/// The status for each class of Salt failure (as rest_cherrypy maps Salt's
/// exceptions, with every authentication or authorization failure a 401).
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Authentication | ErrorKind::Token | ErrorKind::Authorization => {
            StatusCode::UNAUTHORIZED
        }
        ErrorKind::Invocation => StatusCode::BAD_REQUEST,
        ErrorKind::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Master => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<SaltError> for ApiError {
    fn from(e: SaltError) -> Self {
        let status = status_for(e.kind());
        let message = match e.kind() {
            ErrorKind::Authentication | ErrorKind::Token => {
                format!("Authentication failed: {}", e.message())
            }
            ErrorKind::Authorization => format!("Not authorized: {}", e.message()),
            _ => e.message().to_owned(),
        };
        ApiError::new(status, message)
    }
}

/// An error response in rest_wsgi's shape (`{"return": "<message>"}`), with
/// the error itself in the response's extensions: a surface that shapes
/// errors differently (rest_cherrypy: negotiated JSON or YAML with `status`)
/// re-renders it in one layer, so handlers and extractors just return
/// `Err(ApiError)` (the pattern of axum's error-handling example).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"return": self.message});
        let mut resp = crate::response::json_response(self.status, &body);
        resp.extensions_mut().insert(self);
        resp
    }
}
