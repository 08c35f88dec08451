//! The `Router` of each surface, with what every surface shares: request
//! accounting, the body read timeout, the health routes and rest_cherrypy's
//! trailing-slash rule.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};
use tower_http::normalize_path::NormalizePathLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::cherrypy;
use crate::metrics::{HttpLabels, Metrics};
use crate::settings::{Surface, SurfaceKind};
use crate::state::AppState;
use crate::throttle::RememberPeerLayer;
use crate::wsgi::{self, HttpService};

/// The complete `Router` of one surface, usable without a socket
/// (`tower::ServiceExt::oneshot`). `serve` runs the same services; for
/// rest_wsgi without the `Router` around them (see [`app`]).
pub fn router(surface: &Surface, state: AppState) -> Router {
    match surface.kind {
        SurfaceKind::Wsgi => Router::new().fallback_service(wsgi_app(surface, state)),
        SurfaceKind::Cherrypy => {
            let app = cherrypy::router(state.clone(), surface.cherrypy.clone())
                .layer(layers(surface, &state));
            // rest_cherrypy accepts `/login/` as `/login` (CherryPy's
            // trailing_slash tool).
            Router::new().fallback_service(trim_trailing_slash().layer(app))
        }
    }
}

/// The service of one surface as `serve` runs it. rest_wsgi's is not
/// wrapped in a `Router`: a `Router` boxes each call's future, which holds
/// the whole call, and hyper's connection task holds the same future
/// unboxed (~0.4 KiB less for every call waiting for its job).
pub fn app(
    surface: &Surface,
    state: AppState,
) -> tower::util::Either<impl HttpService<Incoming>, Router> {
    match surface.kind {
        SurfaceKind::Wsgi => tower::util::Either::Left(
            tower::ServiceBuilder::new()
                .map_request(|req: Request<Incoming>| req.map(Body::new))
                .service(wsgi_app(surface, state)),
        ),
        SurfaceKind::Cherrypy => tower::util::Either::Right(router(surface, state)),
    }
}

/// rest_wsgi: one tower service (see `wsgi::service`) under the shared
/// layers. Its health routes accept a trailing slash, as rest_cherrypy's
/// paths do.
fn wsgi_app(surface: &Surface, state: AppState) -> impl HttpService<Body> {
    let stack = layers(surface, &state);
    trim_trailing_slash().layer(stack.service(wsgi::service(state)))
}

fn trim_trailing_slash() -> NormalizePathLayer {
    NormalizePathLayer::trim_trailing_slash()
}

/// The layers every call of both surfaces passes, in one stack: axum boxes
/// each route's future once per `Router::layer`, and every call waiting for
/// its job holds those boxes.
type Layers = tower::ServiceBuilder<
    Stack<RememberPeerLayer, Stack<RequestBodyTimeoutLayer, Stack<Accounting, Identity>>>,
>;

fn layers(surface: &Surface, state: &AppState) -> Layers {
    let accounting = Accounting {
        metrics: state.metrics.clone(),
        surface: surface.kind.section(),
        root_prefix: Arc::from(surface.cherrypy.root_prefix.as_str()),
        kind: surface.kind,
    };
    tower::ServiceBuilder::new()
        .layer(accounting)
        // A body that stops arriving fails its read (408 from `read_body`).
        .layer(RequestBodyTimeoutLayer::new(
            surface.connections.body_read_timeout,
        ))
        // The client address, for the credential throttle.
        .layer(RememberPeerLayer)
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
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
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
}

/// Request accounting as a tower layer: the in-flight gauge, the request
/// metrics and the access-log line. Not a `from_fn` middleware: that boxes
/// an async block holding the request beside the inner future; this future
/// is the inner one plus what the log line needs (~0.9 KiB less for every
/// call waiting for its job).
impl<S> Layer<S> for Accounting {
    type Service = Accounted<S>;

    fn layer(&self, inner: S) -> Accounted<S> {
        Accounted {
            inner,
            accounting: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Accounted<S> {
    inner: S,
    accounting: Accounting,
}

impl<S: Service<Request, Response = Response>> Service<Request> for Accounted<S> {
    type Response = Response;
    type Error = S::Error;
    type Future = AccountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let a = &self.accounting;
        a.metrics.in_flight.inc();
        let request = RequestLog {
            in_flight: InFlight(a.metrics.clone()),
            surface: a.surface,
            endpoint: a.endpoint(req.uri().path()),
            method: req.method().clone(),
            // Tokens in paths (`/ws/<token>`) and queries are masked in the log.
            shown: crate::logsafe::uri(req.uri()),
            started: Instant::now(),
        };
        AccountedFuture {
            inner: self.inner.call(req),
            request: Some(request),
        }
    }
}

/// What a request's accounting needs once it is answered.
struct RequestLog {
    in_flight: InFlight,
    surface: &'static str,
    endpoint: &'static str,
    method: Method,
    shown: String,
    started: Instant,
}

impl RequestLog {
    fn answered(self, status: StatusCode) {
        let elapsed = self.started.elapsed();
        let m = &*self.in_flight.0;
        if status == StatusCode::TOO_MANY_REQUESTS && self.endpoint == "/login" {
            m.logins_throttled.inc();
        }
        m.observe_request(
            HttpLabels {
                surface: self.surface,
                endpoint: self.endpoint,
                status: status_class(status),
            },
            elapsed,
        );
        tracing::info!(method = %self.method, path = %self.shown, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request");
    }
}

pin_project! {
    /// The future of [`Accounted`].
    pub struct AccountedFuture<F> {
        #[pin]
        inner: F,
        request: Option<RequestLog>,
    }
}

impl<F: Future<Output = Result<Response, E>>, E> Future for AccountedFuture<F> {
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(request)) = (&out, this.request.take()) {
            request.answered(resp.status());
        }
        Poll::Ready(out)
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
