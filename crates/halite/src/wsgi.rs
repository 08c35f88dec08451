//! The rest_wsgi surface (the seed): `POST /` with a JSON list of lowstates,
//! each carrying its own credentials. Like rest_wsgi, the path is not
//! looked at: every path behaves as `/`. Every reply, errors included, is
//! `{"return": ...}`.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::json;

use crate::body::read_body;
use crate::error::ApiError;
use crate::lowstate;
use crate::response::json_response;
use crate::state::AppState;

/// The router of the rest_wsgi surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .fallback(handle)
        .layer(crate::stream_answer::StreamAnswerLayer::wsgi(state.clone()))
        .with_state(state)
        .layer(crate::throttle::RememberPeerLayer)
}

async fn handle(State(state): State<AppState>, req: Request<Body>) -> Result<Response, ApiError> {
    match *req.method() {
        Method::GET | Method::HEAD => Ok(json_response(
            StatusCode::OK,
            &json!({"return": "Welcome to halite, a REST API for Salt (rest_wsgi surface). POST a JSON list of lowstate objects to /."}),
        )),
        Method::POST => {
            let content_type = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let mime = content_type.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::not_acceptable(format!(
                    "Content-Type must be application/json, not '{}'",
                    if mime.is_empty() { "(none)" } else { mime }
                )));
            }
            // The request (its headers and body are slices of the
            // connection's read buffer) is gone before the call waits.
            let body: Bytes = read_body(req.into_body(), state.limits.max_body).await?;
            let parsed: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))?;
            drop(body);
            let chunks = lowstate::chunks_from_json(parsed, false)?;
            let ret = lowstate::run_chunks(&state, chunks).await?;
            Ok(json_response(StatusCode::OK, &json!({"return": ret})))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}
