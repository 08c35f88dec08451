//! The rest_cherrypy surface: salt-api's URL map, request and response
//! shapes, so that clients written for salt-api (pepper, SaltGUI,
//! salt-netapi-client) work unchanged.
//!
//! One handler per endpoint family: `lowdata.rs` (`/`, `/run`, `/minions`,
//! `/jobs`, `/keys`), `login.rs` (`/login`, `/logout`, `/token`),
//! `stream.rs` (`/events`, `/ws`), `hook.rs` (`/hook`). Content negotiation
//! and the error shape live in `format.rs`, tokens in `session.rs`.

pub(crate) mod format;
mod hook;
mod login;
mod lowdata;
pub(crate) mod session;
mod stream;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::settings::CherrypyOptions;
use crate::state::AppState;
pub use format::Format;

/// State of the rest_cherrypy surface.
#[derive(Clone)]
pub struct CpState {
    pub app: AppState,
    pub opts: Arc<CherrypyOptions>,
}

/// The router of the rest_cherrypy surface.
pub fn router(app: AppState, opts: CherrypyOptions) -> Router {
    let opts = Arc::new(opts);
    let state = CpState {
        app: app.clone(),
        opts: opts.clone(),
    };
    let streamed = crate::stream_answer::StreamAnswerLayer::cherrypy(state.clone());
    let mut r = Router::new()
        .route(
            "/",
            get(lowdata::index)
                .post(lowdata::index_post)
                .route_layer(streamed.clone()),
        )
        .route("/run", post(lowdata::run).route_layer(streamed))
        .route("/token", post(login::token))
        .route("/keys", get(lowdata::keys).post(lowdata::keys_post))
        .route("/keys/{mid}", get(lowdata::keys))
        .route("/events", get(stream::events))
        .route("/ws", get(stream::ws))
        .route("/ws/{token}", get(stream::ws))
        .route("/stats", get(stats));
    if opts.enable_sessions {
        r = r
            .route("/login", get(login::login_get).post(login::login_post))
            .route("/logout", post(login::logout))
            .route(
                "/minions",
                get(lowdata::minions).post(lowdata::minions_post),
            )
            .route("/minions/{mid}", get(lowdata::minions))
            .route("/jobs", get(lowdata::jobs))
            .route("/jobs/{jid}", get(lowdata::jobs));
    }
    let hook = if opts.webhook_url.is_empty() {
        "/hook".to_owned()
    } else {
        opts.webhook_url.clone()
    };
    r = r
        .route(&hook, post(hook::hook))
        .route(&format!("{hook}/{{*path}}"), post(hook::hook));
    if let Some(dir) = &opts.static_dir {
        let path = if opts.static_path.is_empty() {
            "/static"
        } else {
            &opts.static_path
        };
        r = r.nest_service(path, tower_http::services::ServeDir::new(dir));
    }
    if let Some(file) = &opts.app {
        let path = if opts.app_path.is_empty() {
            "/app".to_owned()
        } else {
            opts.app_path.clone()
        };
        r = r
            .route_service(&path, tower_http::services::ServeFile::new(file))
            .route_service(
                &format!("{path}/{{*rest}}"),
                tower_http::services::ServeFile::new(file),
            );
    }
    let r = r
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state.clone())
        .merge(crate::health::routes().with_state(app))
        .layer(middleware::from_fn(shape_errors))
        .layer(middleware::from_fn(private_cache))
        .layer(middleware::from_fn_with_state(state.clone(), html_override))
        .layer(middleware::from_fn(cookie_needs_proof))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .layer(tower_http::compression::CompressionLayer::new().gzip(true));
    if opts.root_prefix.is_empty() {
        r
    } else {
        Router::new().nest(&opts.root_prefix, r)
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Every error of this surface, whoever produced it (handler, extractor,
/// fallback, layer), in rest_cherrypy's shape: `{"status": N, "return":
/// "<message>"}` in the negotiated format, `WWW-Authenticate` on 401. The
/// error travels in the response's extensions ([`ApiError`]'s
/// `IntoResponse`); headers set on the way (`Retry-After`, cookies) stay.
async fn shape_errors(req: Request, next: Next) -> Response {
    let fmt = Format::lenient(req.headers());
    let resp = next.run(req).await;
    let Some(e) = resp.extensions().get::<ApiError>().cloned() else {
        return resp;
    };
    let (parts, _) = resp.into_parts();
    let mut shaped = fmt.error(e);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().append(name.clone(), value.clone());
        }
    }
    shaped
}

/// `GET /stats`: halite's own counters (salt-api shows CherryPy's).
async fn stats(
    State(state): State<CpState>,
    fmt: Format,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if !state.opts.stats_disable_auth {
        let master = state.app.netapi.master().clone();
        session::validate(&master, &session::require_token(&headers)?).await?;
    }
    let m = &state.app.metrics;
    let master = state.app.netapi.master();
    Ok(fmt.ok(&json!({
        "halite": {
            "version": env!("CARGO_PKG_VERSION"),
            "requests": m.requests(),
            "requests_in_flight": m.requests_in_flight(),
            "errors_4xx": m.errors_4xx(),
            "errors_5xx": m.errors_5xx(),
            "master_requests": master.requests_sent(),
            "event_bus_connected": master.bus().is_connected(),
            "events": master.bus().events_seen(),
            "job_waiters": master.bus().waiting_jids(),
        }
    })))
}

/// `Cache-Control: private` on every reply to a request that carried a
/// session (token header, `session_id` cookie or `?token=`) and on every
/// reply that sets the session cookie, as CherryPy's session tool marks
/// them: a shared cache in front of halite must not hand one user's answer
/// to another. A reply that chose its own `Cache-Control` keeps it.
async fn private_cache(req: Request, next: Next) -> Response {
    let query_token = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.starts_with("token=") || kv.starts_with("salt_token="))
    });
    let with_session = query_token || session::request_token(req.headers()).is_some();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if (with_session || h.contains_key(header::SET_COOKIE))
        && !h.contains_key(header::CACHE_CONTROL)
    {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    resp
}

/// Whether `origin` may make credentialed cross-origin requests: only
/// origins listed in `cors_origins` (`*` lists every origin).
fn origin_allowed(opts: &CherrypyOptions, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    opts.cors_origins
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// CORS in rest_cherrypy's `cors_tool` shape, for the configured origins
/// only: rest_cherrypy reflects any `Origin` with credentials allowed, which
/// lets every web page drive the API with a logged-in user's cookie.
/// Preflights are answered here.
async fn cors(State(state): State<CpState>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| origin_allowed(&state.opts, o))
        .cloned();
    let preflight = req.method() == Method::OPTIONS;
    let wanted = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut resp = if preflight {
        let mut r = StatusCode::OK.into_response();
        if origin.is_some() && matches!(wanted.as_deref(), Some("GET" | "POST")) {
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type, X-Auth-Token, X-Requested-With"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("1400"),
            );
        }
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// Content types a page on another site can post without a CORS preflight
/// (an HTML form or a plain `fetch`).
fn cross_site_postable(headers: &axum::http::HeaderMap) -> bool {
    let ct = format::media_type(headers);
    !matches!(
        ct.as_str(),
        "application/json" | "application/x-yaml" | "text/yaml"
    )
}

/// Cross-site request forgery: a browser sends the `session_id` cookie with
/// a form another site posts. A state-changing request whose only
/// credential is that cookie must prove it came from a script allowed to
/// set headers: a JSON (or YAML) body, or the `X-Auth-Token` header.
async fn cookie_needs_proof(req: Request, next: Next) -> Response {
    let h = req.headers();
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let cookie_only = h.get("x-auth-token").is_none() && session::cookie(h, "session_id").is_some();
    if safe || !cookie_only || req.uri().path() == "/login" || !cross_site_postable(h) {
        return next.run(req).await;
    }
    ApiError::forbidden(
        "A request authenticated by the session cookie alone needs a JSON body or the X-Auth-Token header",
    )
    .into_response()
}

/// With `app` configured, a browser asking for HTML anywhere but under the
/// app and static paths gets the app (rest_cherrypy's `html_override`).
async fn html_override(State(state): State<CpState>, req: Request, next: Next) -> Response {
    let Some(app) = state.opts.app.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let under = |p: &str| !p.is_empty() && path.starts_with(p);
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wants_html = accept != "*/*"
        && accept
            .split(',')
            .next()
            .is_some_and(|f| f.trim().starts_with("text/html"));
    if req.method() != Method::GET
        || !wants_html
        || under(&state.opts.app_path)
        || under(&state.opts.static_path)
        || path == "/events"
        || path.starts_with("/ws")
    {
        return next.run(req).await;
    }
    match tower_http::services::ServeFile::new(app).oneshot(req).await {
        Ok(r) => r.into_response(),
        Err(e) => match e {},
    }
}
