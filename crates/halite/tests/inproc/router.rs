//! The public router API without a socket or a Salt lab: each surface's
//! `Router` driven with `tower::ServiceExt::oneshot`, against a master that
//! is not there (requests that need it are not made here).

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use futures_util::StreamExt;
use halite::settings::CherrypyOptions;
use halite::{router, AppState, Limits, Surface};
use http_body_util::BodyExt;
use salt_client::config::MasterConfig;
use salt_client::master::Master;
use tower::ServiceExt;

/// A master config whose sockets live in a fresh empty directory: the event
/// bus never connects, nothing listens on the request port.
fn absent_master(dir: &tempfile::TempDir) -> Master {
    let yaml = format!(
        "sock_dir: {0}\ncachedir: {0}\ninterface: 127.0.0.1\nret_port: 9\nnetapi_enable_clients: [local]\n",
        dir.path().display()
    );
    Master::new(MasterConfig::from_yaml_str(&yaml, dir.path()).expect("a valid config"))
}

async fn call(app: axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.oneshot(req).await.expect("the router is infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("a body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn health_routes_on_every_surface() {
    let dir = tempfile::tempdir().unwrap();
    let master = absent_master(&dir);
    for surface in [
        Surface::wsgi(),
        Surface::cherrypy(CherrypyOptions::default()),
    ] {
        let app = router(&surface, AppState::new(master.clone(), Limits::default()));
        let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
        assert_eq!(
            call(app.clone(), get("/health/live")).await,
            (StatusCode::OK, "ok".to_owned())
        );
        let (status, body) = call(app.clone(), get("/health/ready")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (status, body) = call(app.clone(), get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.lines().any(|l| l == "halite_job_waiters 0"), "{body}");
    }
}

#[tokio::test]
async fn wsgi_refuses_bad_requests_before_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(absent_master(&dir), Limits { max_body: 16 });
    let app = router(&Surface::wsgi(), state);

    let put = Request::put("/").body(Body::empty()).unwrap();
    assert_eq!(
        call(app.clone(), put).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let text = Request::post("/")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("[]"))
        .unwrap();
    let (status, body) = call(app.clone(), text).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    assert!(body.contains("text/plain"), "{body}");

    let big = Request::post("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b' '; 17]))
        .unwrap();
    assert_eq!(call(app, big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn cherrypy_trims_trailing_slashes() {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(absent_master(&dir), Limits::default());
    let app = router(&Surface::cherrypy(CherrypyOptions::default()), state);
    let (status, body) = call(app, Request::get("/login/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408() {
    let dir = tempfile::tempdir().unwrap();
    let mut surface = Surface::wsgi();
    surface.connections.body_read_timeout = std::time::Duration::from_millis(200);
    let app = router(
        &surface,
        AppState::new(absent_master(&dir), Limits::default()),
    );
    // One chunk, then nothing: the client stalls mid-body.
    let stalled = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"[{\"client\":"))
    })
    .chain(futures_util::stream::pending());
    let req = Request::post("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stalled))
        .unwrap();
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), call(app, req))
        .await
        .expect("the stalled body is given up on");
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
}
