//! The `Router` of each surface, with what every surface shares: request
//! accounting, the health routes and rest_cherrypy's trailing-slash rule.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;

use crate::settings::{Surface, SurfaceKind};
use crate::state::AppState;
use crate::{cherrypy, health, wsgi};

/// The complete `Router` of one surface, as `serve` runs it: usable without
/// a socket (`tower::ServiceExt::oneshot`).
pub fn router(surface: &Surface, state: AppState) -> Router {
    let app = match surface.kind {
        SurfaceKind::Wsgi => health::routes()
            .with_state(state.clone())
            .merge(wsgi::router(state.clone())),
        SurfaceKind::Cherrypy => cherrypy::router(state.clone(), surface.cherrypy.clone()),
    };
    let app = app.layer(middleware::from_fn_with_state(state, account));
    // rest_cherrypy accepts `/login/` as `/login` (CherryPy's trailing_slash tool).
    Router::new().fallback_service(tower::Layer::layer(
        &tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash(),
        app,
    ))
}

/// Decrements a gauge when dropped, so a request whose client went away
/// (its future dropped) is no longer counted in flight.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn account(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let m = &state.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    m.in_flight.fetch_add(1, Ordering::Relaxed);
    let _guard = InFlight(&m.in_flight);
    let method = req.method().clone();
    let path = crate::logsafe::uri(req.uri());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    if status.is_client_error() {
        m.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        m.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(%method, %path, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    resp
}
