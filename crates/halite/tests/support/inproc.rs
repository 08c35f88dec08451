//! The in-process test tier: halite's real `Router` for each surface, driven
//! with `tower::ServiceExt::oneshot`, against salt-testkit's fake master
//! (real ZMTP and event-bus frames, no Salt lab, no root). Each test takes
//! milliseconds.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use halite::settings::{self, Overrides};
use halite::{router, AppState, Limits, Shutdown, SurfaceKind};
use http_body_util::BodyExt;
use salt_client::config::MasterConfig;
use salt_client::master::Master;
use salt_testkit::{FakeMaster, Options};
use serde_json::{json, Value as Json};
use tower::ServiceExt;

/// The sections every in-process halite serves; tests add options with
/// [`Inproc::with`].
const SURFACES: &str = "rest_wsgi:\n  port: 1\nrest_cherrypy:\n  port: 2\n  disable_ssl: true\n";

/// A fake master and halite's routers for it.
pub struct Inproc {
    pub fake: FakeMaster,
    pub master: Master,
    pub wsgi: Router,
    pub cherrypy: Router,
    /// Both surfaces' stop signal, as `serve` would give it on SIGTERM.
    pub shutdown: Shutdown,
    /// The client address of this harness's requests: one loopback address
    /// per harness, so that tests running in parallel in one process do not
    /// share the process-wide eauth throttle's per-address counts.
    pub peer: SocketAddr,
}

fn next_peer() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let [_, a, b, c] = n.to_be_bytes();
    SocketAddr::from(([127, a, b, c.max(1)], 40000))
}

fn from_peer(mut req: Request<Body>, peer: SocketAddr) -> Request<Body> {
    if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
        req.extensions_mut().insert(ConnectInfo(peer));
    }
    req
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) when it is not.
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.status, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Inproc {
    /// Both surfaces with their default options.
    pub async fn start() -> Inproc {
        Inproc::with("", "").await
    }

    /// Both surfaces; `wsgi` and `cherrypy` are extra YAML lines (indented by
    /// two spaces) for the `rest_wsgi` and `rest_cherrypy` sections.
    pub async fn with(wsgi: &str, cherrypy: &str) -> Inproc {
        let indent = |extra: &str| -> String {
            extra
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        };
        let sections = SURFACES
            .replace("  port: 1\n", &format!("  port: 1\n{}", indent(wsgi)))
            .replace(
                "  disable_ssl: true\n",
                &format!("  disable_ssl: true\n{}", indent(cherrypy)),
            );
        let fake = FakeMaster::with(Options {
            extra_config: sections,
            ..Options::default()
        })
        .await;
        let config = MasterConfig::load(Some(fake.config_path())).expect("the fake's config loads");
        let surfaces =
            settings::surfaces(&config, &Overrides::default()).expect("surfaces are valid");
        let master = Master::new(config);
        master
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("the bus connects to the fake");
        let mut wsgi = None;
        let mut cherrypy = None;
        let shutdown = Shutdown::default();
        for s in &surfaces {
            let state = AppState::new(
                master.clone(),
                Limits {
                    max_body: s.max_body,
                },
            )
            .with_shutdown(shutdown.clone());
            match s.kind {
                SurfaceKind::Wsgi => wsgi = Some(router(s, state)),
                SurfaceKind::Cherrypy => cherrypy = Some(router(s, state)),
            }
        }
        Inproc {
            fake,
            master,
            wsgi: wsgi.expect("a rest_wsgi surface"),
            cherrypy: cherrypy.expect("a rest_cherrypy surface"),
            shutdown,
            peer: next_peer(),
        }
    }

    /// Send one request to a surface, from 127.0.0.1:40000 (or the peer
    /// address already set in its extensions).
    pub async fn send(app: &Router, mut req: Request<Body>) -> Reply {
        if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        }
        let resp = app
            .clone()
            .oneshot(req)
            .await
            .expect("routers are infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("a complete body")
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `POST /` on rest_wsgi with a JSON body.
    pub async fn wsgi_post(&self, body: &Json) -> Reply {
        Inproc::send(
            &self.wsgi,
            from_peer(json_request("/", body, None), self.peer),
        )
        .await
    }

    /// A request to rest_cherrypy.
    pub async fn cp(&self, req: Request<Body>) -> Reply {
        Inproc::send(&self.cherrypy, from_peer(req, self.peer)).await
    }

    /// Log in to rest_cherrypy as the `auto` user `saltdev`; the token.
    pub async fn login(&self) -> String {
        let r = self
            .cp(json_request(
                "/login",
                &json!({"eauth": "auto", "username": "saltdev", "password": "x"}),
                None,
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["return"][0]["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }
}

/// A POST with a JSON body (and an `X-Auth-Token` when given).
pub fn json_request(path: &str, body: &Json, token: Option<&str>) -> Request<Body> {
    let mut b = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json");
    if let Some(t) = token {
        b = b.header("X-Auth-Token", t);
    }
    b.body(Body::from(body.to_string())).expect("a request")
}

/// A GET (with an `X-Auth-Token` when given).
pub fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path).header(header::ACCEPT, "application/json");
    if let Some(t) = token {
        b = b.header("X-Auth-Token", t);
    }
    b.body(Body::empty()).expect("a request")
}

/// A lowstate with the `auto` user's credentials.
pub fn auto(mut low: Json) -> Json {
    if let Some(o) = low.as_object_mut() {
        o.insert("eauth".into(), json!("auto"));
        o.insert("username".into(), json!("saltdev"));
        o.insert("password".into(), json!("x"));
    }
    low
}
