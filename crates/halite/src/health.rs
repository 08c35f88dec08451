//! Routes served on every surface: `/metrics` (Prometheus), `/health/live`,
//! `/health/ready` and `/openapi.json`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::response::json_response;
use crate::state::AppState;

/// `/metrics`, `/health/live`, `/health/ready`, `/openapi.json`.
pub fn routes() -> Router<AppState> {
    let [m, live, ready_path, doc] = PATHS;
    Router::new()
        .route(m, get(metrics))
        .route(live, get(|| async { "ok" }))
        .route(ready_path, get(ready))
        .route(doc, get(openapi))
}

/// The paths of [`routes`]: rest_wsgi sends these to them and every other
/// path to its lowstate handler.
pub const PATHS: [&str; 4] = ["/metrics", "/health/live", "/health/ready", "/openapi.json"];

/// The OpenAPI document of both surfaces (`docs/openapi.yaml`, built in).
const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

async fn openapi() -> Response {
    match serde_norway::from_str::<serde_json::Value>(OPENAPI_YAML) {
        Ok(doc) => json_response(StatusCode::OK, &doc),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the built-in OpenAPI document is invalid: {e}"),
        )
            .into_response(),
    }
}

/// Ready while the master serves: the event bus is connected (before that,
/// `local` calls could not see their returns) and the master answers a
/// `ping` (checked at most once a second; a master cluster member that is
/// not serving yet answers `cluster_retry`). A load balancer that checks
/// this drains a halite whose own master is down.
async fn ready(State(state): State<AppState>) -> Response {
    let master = state.netapi.master();
    if !master.bus().is_connected() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Salt event bus is not connected",
        )
            .into_response();
    }
    if master.serving().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Salt master does not answer requests",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_document_parses() {
        let doc: serde_json::Value =
            serde_norway::from_str(super::OPENAPI_YAML).expect("valid YAML");
        assert_eq!(doc["openapi"], "3.0.3");
        assert!(doc["paths"]["/login"]["post"].is_object());
    }
}
