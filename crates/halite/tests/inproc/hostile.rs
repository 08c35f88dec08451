//! Hostile clients through the real rest_cherrypy `Router` against the
//! in-process fake master: the millisecond versions of `hostile.rs` (lab
//! tier) for the attacks that need no real Salt.

use std::time::Duration;

use crate::support::inproc::{get, json_request, Inproc};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

#[tokio::test]
async fn a_yaml_alias_bomb_is_refused_before_login() {
    let h = Inproc::start().await;
    let mut body = String::from("[&a [");
    body.push_str(&["0"; 1000].join(","));
    body.push(']');
    for _ in 0..20_000 {
        body.push_str(", *a");
    }
    body.push(']');
    let req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-yaml")
        .header(header::ACCEPT, "application/json")
        .body(Body::from(body))
        .unwrap();
    let r = h.cp(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        r.json()["return"],
        json!("YAML document expands beyond its size limit")
    );
}

#[tokio::test]
async fn cookie_flags_cors_and_cookie_only_posts() {
    let h = Inproc::with("", "cors_origins: ['https://ui.example']").await;
    let login = h
        .cp(json_request(
            "/login",
            &json!({"eauth": "auto", "username": "saltdev", "password": "x"}),
            None,
        ))
        .await;
    let cookie = login.header("set-cookie").expect("Set-Cookie");
    assert!(
        cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"),
        "{cookie}"
    );
    let token = login.json()["return"][0]["token"]
        .as_str()
        .expect("token")
        .to_owned();

    for (origin, allowed) in [
        ("https://ui.example", true),
        ("https://evil.example", false),
    ] {
        let mut req = get("/", None);
        req.headers_mut()
            .insert(header::ORIGIN, origin.parse().expect("header"));
        let r = h.cp(req).await;
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            allowed.then_some(origin),
            "{origin}"
        );
    }

    let form = |with_header: bool| {
        let mut b = Request::post("/")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("session_id={token}"));
        if with_header {
            b = b.header("x-auth-token", &token);
        }
        b.body(Body::from("client=local&tgt=*&fun=test.ping"))
            .unwrap()
    };
    let r = h.cp(form(false)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(
        h.fake.requests().iter().all(|l| l["fun"] != "test.ping"),
        "the forged post reached the master"
    );
    let r = h.cp(form(true)).await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
}

#[tokio::test]
async fn a_crlf_tag_stays_one_sse_event() {
    let h = Inproc::start().await;
    let token = h.login().await;
    let mut req = get(&format!("/events?token={token}"), None);
    req.extensions_mut().insert(ConnectInfo(h.peer));
    let resp = h.cherrypy.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What a minion's event.send can put on the bus.
    h.fake
        .fire("x\r\rdata: {\"forged\":true}\r\r", &json!({"a": 1}));
    h.fake.fire("after/forged", &json!({}));
    let mut body = resp.into_body();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains("after/forged") {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no events in 5 s:\n{text}"))
            .expect("open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(
        !text
            .split(['\r', '\n'])
            .any(|l| l.starts_with("data: {\"forged\"")),
        "{text:?}"
    );
    assert!(
        text.contains("tag: x\\r\\rdata: {\"forged\":true}\\r\\r\n"),
        "{text:?}"
    );
}

#[tokio::test]
async fn parallel_guesses_are_throttled_on_every_eauth_path() {
    let h = Inproc::start().await;
    let guess = |i: usize| {
        json!([{"client": "local", "tgt": "*", "fun": "test.ping",
            "eauth": "pam", "username": "saltdev", "password": format!("guess{i}")}])
    };
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            h.cp(json_request("/run", &guess(i), None))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // rest_wsgi shares the throttle.
    let r = h.wsgi_post(&guess(99)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
}
