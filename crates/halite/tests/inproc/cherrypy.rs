//! rest_cherrypy through its real `Router` against the in-process fake
//! master: login and tokens, throttling, every endpoint family, content
//! negotiation, `root_prefix`, trailing slashes, 404/405/406/413, `/hook`
//! into the bus and `/events` out of it. The same behaviour is checked
//! against real Salt and salt-api in `cherrypy.rs` and `cherrypy_diff.rs`
//! (lab tier).

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::inproc::{auto, get, json_request, Inproc};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value as Json};
use tower::ServiceExt;

fn form(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn login_in_every_body_format_gives_a_master_token() {
    let h = Inproc::start().await;
    let yaml = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-yaml")
        .body(Body::from("eauth: auto\nusername: saltdev\npassword: x\n"))
        .unwrap();
    for req in [
        json_request(
            "/login",
            &json!({"eauth": "pam", "username": "saltdev", "password": "saltdev"}),
            None,
        ),
        form("/login", "eauth=auto&username=saltdev&password=x"),
        yaml,
    ] {
        let r = h.cp(req).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        let token = v["return"][0]["token"].as_str().expect("token").to_owned();
        assert_eq!(r.header("x-auth-token").as_deref(), Some(token.as_str()));
        assert!(
            r.header("set-cookie")
                .is_some_and(|c| c.starts_with(&format!("session_id={token}"))),
            "{:?}",
            r.headers
        );
        assert_eq!(v["return"][0]["user"], "saltdev");
        assert!(v["return"][0]["perms"].is_array(), "{v}");
        // The token is the master's own.
        let sent = h.fake.requests();
        assert!(sent.iter().any(|l| l["cmd"] == "mk_token"), "{sent:?}");
    }
}

#[tokio::test]
async fn wrong_passwords_are_401_then_throttled_429() {
    let h = Inproc::start().await;
    let bad = json!({"eauth": "pam", "username": "saltdev", "password": "wrong"});
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = h.cp(json_request("/login", &bad, None)).await;
        assert!(!r.text().contains("wrong"), "{}", r.text());
        statuses.push(r.status.as_u16());
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");
}

#[tokio::test]
async fn tokens_from_header_cookie_and_body() {
    let h = Inproc::start().await;
    let token = h.login().await;
    let ping = json!([{"client": "local", "tgt": "*", "fun": "test.ping"}]);
    let header_req = json_request("/", &ping, Some(&token));
    let cookie_req = Request::post("/")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, format!("session_id={token}"))
        .body(Body::from(ping.to_string()))
        .unwrap();
    for req in [header_req, cookie_req] {
        let r = h.cp(req).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.json()["return"][0],
            json!({"ms-0": true, "ms-1": true, "ms-2": true})
        );
    }
    // /run takes credentials or a token in the chunk, never the session.
    let r = h
        .cp(json_request(
            "/run",
            &json!([auto(
                json!({"client": "runner", "fun": "test.arg", "arg": ["r"]})
            )]),
            None,
        ))
        .await;
    assert_eq!(r.json()["return"][0]["args"], json!(["r"]), "{}", r.text());
    let r = h
        .cp(json_request(
            "/run",
            &json!([{"client": "wheel", "fun": "key.list_all", "token": token}]),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // No token at all, or one the master does not know: 401.
    let r = h.cp(json_request("/", &ping, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = h.cp(json_request("/", &ping, Some(&"ab".repeat(32)))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = h.cp(json_request("/", &ping, Some("not-hex!"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
}

#[tokio::test]
async fn minions_jobs_and_keys() {
    let h = Inproc::start().await;
    let token = h.login().await;
    let r = h.cp(get("/minions", Some(&token))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["return"][0]["ms-1"]["id"], "ms-1");
    let r = h.cp(get("/minions/ms-2", Some(&token))).await;
    let got = r.json();
    assert_eq!(
        got["return"][0].as_object().map(|o| o.len()),
        Some(1),
        "{got}"
    );

    let r = h
        .cp(json_request(
            "/minions",
            &json!([{"tgt": "*", "fun": "test.ping"}]),
            Some(&token),
        ))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json();
    let jid = v["return"][0]["jid"].as_str().expect("jid").to_owned();
    assert_eq!(v["_links"]["jobs"][0]["href"], format!("/jobs/{jid}"));

    let r = h.cp(get(&format!("/jobs/{jid}"), Some(&token))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("ms-0"), "{}", r.text());

    let r = h.cp(get("/keys", Some(&token))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["return"]["minions"],
        json!(["ms-0", "ms-1", "ms-2"])
    );
}

#[tokio::test]
async fn content_negotiation_and_error_shapes() {
    let h = Inproc::with("", "max_request_body_size: 2000").await;
    let token = h.login().await;
    let yaml = Request::get("/")
        .header(header::ACCEPT, "application/x-yaml")
        .body(Body::empty())
        .unwrap();
    let r = h.cp(yaml).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-yaml")
    );
    let v: Json = serde_norway::from_str(&r.text()).expect("a YAML body");
    assert!(v["return"].is_string(), "{v}");

    let unacceptable = Request::get("/")
        .header(header::ACCEPT, "image/png")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.cp(unacceptable).await.status, StatusCode::NOT_ACCEPTABLE);

    let r = h.cp(get("/no/such/path", None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json().is_object(), "{}", r.text());

    let put = Request::put("/run").body(Body::empty()).unwrap();
    assert_eq!(h.cp(put).await.status, StatusCode::METHOD_NOT_ALLOWED);

    let big = json!([{"client": "runner", "fun": "test.arg", "arg": ["x".repeat(3000)]}]);
    let r = h.cp(json_request("/", &big, Some(&token))).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());

    let r = h
        .cp(json_request(
            "/",
            &json!({"not": ["a", "lowstate"]}),
            Some(&token),
        ))
        .await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text());
}

#[tokio::test]
async fn root_prefix_trailing_slashes_and_disabled_sessions() {
    let h = Inproc::with("", "root_prefix: /api").await;
    let r = h.cp(get("/api/", None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        h.cp(get("/login", None)).await.status,
        StatusCode::NOT_FOUND
    );
    let r = h
        .cp(json_request(
            "/api/login/",
            &json!({"eauth": "auto", "username": "saltdev", "password": "x"}),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let h = Inproc::with("", "enable_sessions: False").await;
    let r = h
        .cp(json_request(
            "/login",
            &json!({"eauth": "auto", "username": "saltdev", "password": "x"}),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .cp(json_request(
            "/run",
            &json!([auto(
                json!({"client": "runner", "fun": "test.arg", "arg": ["s"]})
            )]),
            None,
        ))
        .await;
    assert_eq!(r.json()["return"][0]["args"], json!(["s"]), "{}", r.text());
}

#[tokio::test]
async fn hook_fires_into_the_bus_without_credentials() {
    let h = Inproc::start().await;
    let token = h.login().await;
    let req = Request::post("/hook/deploy/web")
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Auth-Token", &token)
        .header("X-Custom", "v1")
        .body(Body::from(r#"{"marker": "m1"}"#))
        .unwrap();
    let r = h.cp(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"success": true}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let event = loop {
        if let Some(e) = h.fake.events("salt/netapi/hook/deploy/web").pop() {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hook event reached the bus"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(event.1["post"], json!({"marker": "m1"}));
    assert_eq!(event.1["headers"]["X-Custom"], "v1");
    assert!(!event.1.to_string().contains(&token), "{}", event.1);

    let r = h.cp(json_request("/hook/x", &json!({}), None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// Read an SSE body until an event satisfies `want`; the events seen.
async fn sse_until(body: Body, want: impl Fn(&Json) -> bool) -> Json {
    let mut body = body;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no matching event in 5 s; stream so far:\n{text}"))
            .expect("the stream is open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    if let Ok(ev) = serde_json::from_str::<Json>(data) {
                        if want(&ev) {
                            return ev;
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn events_stream_bus_events_with_secrets_redacted() {
    let h = Inproc::start().await;
    let token = h.login().await;
    let mut req = get(&format!("/events?token={token}"), None);
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40001))));
    let resp = h.cherrypy.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    // Give the stream a moment to subscribe, then make the master put a
    // password on the bus (a failed publish fires the whole load).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bad = json!([{"client": "local", "tgt": "*", "fun": "test.ping",
        "eauth": "pam", "username": "saltdev", "password": "hunter2-secret"}]);
    let _ = h.wsgi_post(&bad).await;
    h.fake.fire(
        "custom/marker",
        &json!({"marker": "visible", "token": token}),
    );
    let ev = sse_until(resp.into_body(), |e| {
        e["tag"] == "custom/marker" || e.to_string().contains("hunter2")
    })
    .await;
    assert_eq!(ev["tag"], "custom/marker", "a secret leaked first: {ev}");
    assert_eq!(ev["data"]["marker"], "visible");
    assert!(!ev.to_string().contains(&token), "{ev}");
}

#[tokio::test]
async fn logout_and_stats() {
    let h = Inproc::start().await;
    assert_eq!(
        h.cp(get("/stats", None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let token = h.login().await;
    let r = h.cp(get("/stats", Some(&token))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = h
        .cp(json_request("/logout", &json!({}), Some(&token)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.text().contains("Your token has been cleared"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn login_fields_cookie_cache_control_and_hook_remote_addr() {
    let h = Inproc::start().await;
    // A login must carry a username and a password.
    for body in [
        json!({"eauth": "auto", "username": "saltdev"}),
        json!({"eauth": "auto", "password": "x"}),
    ] {
        let r = h.cp(json_request("/login", &body, None)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{body}: {}", r.text());
        assert!(r.header("set-cookie").is_none());
    }
    // The session cookie: expires, Max-Age (the token's remaining lifetime), Path.
    let r = h
        .cp(json_request(
            "/login",
            &json!({"eauth": "auto", "username": "saltdev", "password": "x"}),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let cookie = r.header("set-cookie").expect("Set-Cookie");
    let v = r.json();
    let token = v["return"][0]["token"].as_str().expect("token").to_owned();
    assert!(
        cookie.starts_with(&format!("session_id={token}; expires=")),
        "{cookie}"
    );
    assert!(cookie.contains("; Path=/"), "{cookie}");
    assert!(cookie.contains("; HttpOnly; SameSite=Strict"), "{cookie}");
    let max_age: f64 = cookie
        .split("Max-Age=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .expect("Max-Age");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let left = v["return"][0]["expire"].as_f64().expect("expire") - now;
    assert!(
        (left - 5.0..=left + 1.0).contains(&max_age),
        "{cookie} ({left} s left)"
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("private"));
    // Cache-Control: private with a session (header or cookie), not without.
    let r = h.cp(get("/stats", Some(&token))).await;
    assert_eq!(r.header("cache-control").as_deref(), Some("private"));
    let by_cookie = Request::get("/stats")
        .header(header::ACCEPT, "application/json")
        .header(header::COOKIE, format!("session_id={token}"))
        .body(Body::empty())
        .unwrap();
    let r = h.cp(by_cookie).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("private"));
    assert_eq!(h.cp(get("/", None)).await.header("cache-control"), None);
    // /hook events carry the caller's address; a sent Remote-Addr is replaced.
    let mut req = Request::post("/hook/from/peer")
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Auth-Token", &token)
        .header("Remote-Addr", "10.9.9.9")
        .body(Body::from("{}"))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40001))));
    let r = h.cp(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let event = loop {
        if let Some(e) = h.fake.events("salt/netapi/hook/from/peer").pop() {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hook event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(event.1["headers"]["Remote-Addr"], json!("192.0.2.7"));
}
