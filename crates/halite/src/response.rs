//! JSON responses, written as Python's `json.dumps` writes them.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use crate::pyjson;

/// A JSON response, written as Python's `json.dumps` writes it, with an
/// exact `Content-Length` (bytes, not characters).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = pyjson::to_vec(body)
        .unwrap_or_else(|_| b"{\"return\": \"unserialisable result\"}".to_vec());
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
