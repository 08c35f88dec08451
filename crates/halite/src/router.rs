//! The `Router` of each surface, with what every surface shares: request
//! accounting, the body read timeout, the health routes and rest_cherrypy's
//! trailing-slash rule.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::metrics::{HttpLabels, Metrics};
use crate::settings::{Surface, SurfaceKind};
use crate::state::AppState;
use crate::{cherrypy, health, wsgi};

/// The complete `Router` of one surface, as `serve` runs it: usable without
/// a socket (`tower::ServiceExt::oneshot`).
pub fn router(surface: &Surface, state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let app = match surface.kind {
        SurfaceKind::Wsgi => health::routes()
            .with_state(state.clone())
            .merge(wsgi::router(state)),
        SurfaceKind::Cherrypy => cherrypy::router(state, surface.cherrypy.clone()),
    };
    let accounting = Accounting {
        metrics,
        surface: surface.kind.section(),
        root_prefix: Arc::from(surface.cherrypy.root_prefix.as_str()),
        kind: surface.kind,
    };
    let app = app
        // A body that stops arriving fails its read (408 from `read_body`).
        .layer(RequestBodyTimeoutLayer::new(
            surface.connections.body_read_timeout,
        ))
        .layer(middleware::from_fn(move |req, next| {
            accounting.clone().account(req, next)
        }));
    // rest_cherrypy accepts `/login/` as `/login` (CherryPy's trailing_slash tool).
    Router::new().fallback_service(tower::Layer::layer(
        &tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash(),
        app,
    ))
}

/// The endpoint families of the metrics' `endpoint` label: a fixed set, so
/// paths chosen by clients cannot create series.
const ENDPOINTS: &[&str] = &[
    "/login",
    "/logout",
    "/token",
    "/run",
    "/minions",
    "/jobs",
    "/keys",
    "/events",
    "/ws",
    "/hook",
    "/stats",
    "/metrics",
    "/health",
    "/openapi.json",
    "/static",
    "/app",
];

#[derive(Clone)]
struct Accounting {
    metrics: Arc<Metrics>,
    surface: &'static str,
    root_prefix: Arc<str>,
    kind: SurfaceKind,
}

/// Decrements the in-flight gauge when dropped, so a request whose client
/// went away (its future dropped) is no longer counted.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl Accounting {
    fn endpoint(&self, path: &str) -> &'static str {
        let path = match self.kind {
            SurfaceKind::Cherrypy => path.strip_prefix(&*self.root_prefix).unwrap_or(path),
            SurfaceKind::Wsgi => path,
        };
        let first = match path.trim_start_matches('/').split('/').next() {
            Some(seg) if !seg.is_empty() => seg,
            _ => return "/",
        };
        ENDPOINTS
            .iter()
            .find(|e| &e[1..] == first)
            .copied()
            // rest_wsgi serves every other path as `/`.
            .unwrap_or(match self.kind {
                SurfaceKind::Wsgi => "/",
                SurfaceKind::Cherrypy => "other",
            })
    }

    async fn account(self, req: Request, next: Next) -> Response {
        let m = &*self.metrics;
        m.in_flight.inc();
        let _guard = InFlight(m);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let endpoint = self.endpoint(&path);
        // Tokens in paths (`/ws/<token>`) and queries are masked in the log.
        let shown = crate::logsafe::uri(req.uri());
        let started = std::time::Instant::now();
        let resp = next.run(req).await;
        let elapsed = started.elapsed();
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS && endpoint == "/login" {
            m.logins_throttled.inc();
        }
        m.observe_request(
            HttpLabels {
                surface: self.surface,
                endpoint,
                status: status_class(status),
            },
            elapsed,
        );
        tracing::info!(%method, path = %shown, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request");
        resp
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
