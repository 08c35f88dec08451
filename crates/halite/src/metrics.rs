//! Prometheus metrics, health endpoints and the OpenAPI document, served on
//! every surface.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Counters kept by halite itself.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
}

/// `/metrics`, `/health/live`, `/health/ready`, `/openapi.json`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .route("/openapi.json", get(openapi))
}

/// The OpenAPI document of both surfaces (`docs/openapi.yaml`, built in).
const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

async fn openapi() -> Response {
    match serde_norway::from_str::<serde_json::Value>(OPENAPI_YAML) {
        Ok(doc) => crate::json_response(StatusCode::OK, &doc),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the built-in OpenAPI document is invalid: {e}"),
        )
            .into_response(),
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.netapi.master().bus().is_connected() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Salt event bus is not connected",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let master = state.netapi.master();
    let bus = master.bus();
    let text = format!(
        "# TYPE halite_http_requests_total counter\nhalite_http_requests_total {}\n\
         # TYPE halite_http_requests_in_flight gauge\nhalite_http_requests_in_flight {}\n\
         # TYPE halite_http_errors_total counter\nhalite_http_errors_total{{class=\"4xx\"}} {}\nhalite_http_errors_total{{class=\"5xx\"}} {}\n\
         # TYPE halite_master_requests_total counter\nhalite_master_requests_total {}\n\
         # TYPE halite_event_bus_connected gauge\nhalite_event_bus_connected {}\n\
         # TYPE halite_event_bus_reconnects_total counter\nhalite_event_bus_reconnects_total {}\n\
         # TYPE halite_events_total counter\nhalite_events_total {}\n\
         # TYPE halite_job_waiters gauge\nhalite_job_waiters {}\n",
        m.requests.load(Ordering::Relaxed),
        m.in_flight.load(Ordering::Relaxed),
        m.errors_4xx.load(Ordering::Relaxed),
        m.errors_5xx.load(Ordering::Relaxed),
        master.requests_sent(),
        u8::from(bus.is_connected()),
        bus.generation().saturating_sub(1),
        bus.events_seen(),
        bus.waiting_jids(),
    );
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
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
