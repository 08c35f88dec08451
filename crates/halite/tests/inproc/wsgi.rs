//! rest_wsgi through its real `Router` against the in-process fake master:
//! every status code, every client, chunks in order. The same behaviour is
//! checked against real Salt in `wsgi.rs` (lab tier).

use std::time::{Duration, Instant};

use crate::support::inproc::{auto, Inproc};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use salt_testkit::Reply as Fake;
use serde_json::{json, Value as Json};

#[tokio::test]
async fn the_seed_examples() {
    let h = Inproc::start().await;
    let r = h
        .wsgi_post(&json!([auto(
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        r.json(),
        json!({"return": [{"ms-0": true, "ms-1": true, "ms-2": true}]})
    );
    // Python's json.dumps spacing, and an exact Content-Length.
    assert!(r.text().starts_with("{\"return\": [{"), "{}", r.text());

    let r = h
        .wsgi_post(&json!([auto(
            json!({"client": "local_async", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    let jid = r.json()["return"][0]["jid"]
        .as_str()
        .expect("a jid")
        .to_owned();
    assert_eq!(
        r.json()["return"][0]["minions"],
        json!(["ms-0", "ms-1", "ms-2"])
    );

    let r = h
        .wsgi_post(&json!([auto(
            json!({"client": "runner", "fun": "jobs.lookup_jid", "jid": jid})
        )]))
        .await;
    assert_eq!(
        r.json(),
        json!({"return": [{"ms-0": true, "ms-1": true, "ms-2": true}]})
    );
}

#[tokio::test]
async fn chunks_run_in_order_with_their_own_credentials() {
    let h = Inproc::start().await;
    let r = h
        .wsgi_post(&json!([
            auto(json!({"client": "runner", "fun": "test.arg", "arg": ["first"]})),
            auto(json!({"client": "wheel", "fun": "key.list_all"})),
            auto(json!({"client": "local", "tgt": "ms-1", "fun": "test.ping"})),
        ]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["return"][0]["args"], json!(["first"]), "{v}");
    assert_eq!(v["return"][1]["data"]["return"]["minions"][0], "ms-0");
    assert_eq!(v["return"][2], json!({"ms-1": true}));
    let cmds: Vec<Json> = h.fake.requests().iter().map(|l| l["cmd"].clone()).collect();
    let runner = cmds
        .iter()
        .position(|c| c == "runner")
        .expect("runner sent");
    let wheel = cmds.iter().position(|c| c == "wheel").expect("wheel sent");
    let publish = cmds
        .iter()
        .position(|c| c == "publish")
        .expect("publish sent");
    assert!(runner < wheel && wheel < publish, "{cmds:?}");
}

#[tokio::test]
async fn get_and_other_methods() {
    let h = Inproc::start().await;
    let r = Inproc::send(&h.wsgi, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.json().is_string() || r.json()["return"].is_string(),
        "{}",
        r.text()
    );
    for m in ["PUT", "DELETE", "PATCH"] {
        let r = Inproc::send(
            &h.wsgi,
            Request::builder()
                .method(m)
                .uri("/")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert!(
            r.json()["error"].is_string() || r.json().is_object(),
            "{}",
            r.text()
        );
    }
}

#[tokio::test]
async fn bad_bodies_are_400_406_413_with_json_errors() {
    let h = Inproc::with("max_request_body_size: 4096", "").await;
    let post = |ct: &str, body: Vec<u8>| {
        Request::post("/")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .unwrap()
    };
    let cases: Vec<(Request<Body>, StatusCode)> = vec![
        (
            post("application/json", b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("application/json", b"{\"client\": \"local\"}".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("application/json", b"[1, 2]".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("application/x-yaml", b"- client: local".to_vec()),
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            post("text/plain", b"[]".to_vec()),
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            post("application/json", vec![b' '; 4097]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (req, want) in cases {
        let r = Inproc::send(&h.wsgi, req).await;
        assert_eq!(r.status, want, "{}", r.text());
        let v = r.json();
        assert!(v.is_object(), "a JSON error object: {v}");
    }
    // Nothing of this reached the master.
    assert!(
        h.fake.requests().iter().all(|l| l["cmd"] != "publish"),
        "{:?}",
        h.fake.requests()
    );
}

#[tokio::test]
async fn credentials_missing_wrong_or_denied_are_401() {
    let h = Inproc::start().await;
    let ping = json!({"client": "local", "tgt": "*", "fun": "test.ping"});
    let mut wrong = ping.clone();
    for (k, v) in [
        ("eauth", "pam"),
        ("username", "saltdev"),
        ("password", "wrong"),
    ] {
        wrong[k] = json!(v);
    }
    let mut limited = auto(json!({"client": "local", "tgt": "*", "fun": "cmd.run", "arg": ["id"]}));
    limited["username"] = json!("limited");
    let mut bad_token = ping.clone();
    bad_token["token"] = json!("f".repeat(64));
    for low in [
        json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
        wrong,
        limited,
        bad_token,
    ] {
        let r = h.wsgi_post(&json!([low])).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{low}: {}", r.text());
        assert!(
            !r.text().contains("wrong"),
            "no password in the error: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn master_errors_map_to_500_503_504() {
    let h = Inproc::start().await;
    let ping = || {
        json!([auto(
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )])
    };

    h.fake.script_once(
        "publish",
        Fake::Value(json!("Some exception handling minion payload")),
    );
    let r = h.wsgi_post(&ping()).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());

    // A connection the master closes is retried once on a fresh one...
    h.fake.script_once("publish", Fake::Close);
    let r = h.wsgi_post(&ping()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // ... but a master that keeps closing them is unavailable.
    h.fake.script("publish", Fake::Close);
    let r = h.wsgi_post(&ping()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    h.fake.unscript("publish");

    h.fake.script_once("runner", Fake::Never);
    let started = Instant::now();
    let r = h
        .wsgi_post(&json!([auto(
            json!({"client": "runner", "fun": "test.arg", "timeout": 1})
        )]))
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_silent_minion_is_reported_as_salt_3008_does() {
    let h = Inproc::start().await;
    h.fake.silence("ms-2");
    let r = h
        .wsgi_post(&json!([auto(json!({"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 1, "gather_job_timeout": 1}))]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["return"][0]["ms-0"], json!(true));
    let missing = &v["return"][0]["ms-2"];
    assert!(
        missing == &json!(false)
            || missing
                .as_str()
                .is_some_and(|s| s.starts_with("Minion did not return")),
        "{v}"
    );
}

#[tokio::test]
async fn a_master_lost_mid_call_is_503_with_the_jid() {
    let h = Inproc::start().await;
    // One minion never answers, so the call is still gathering when the
    // master's bus goes away.
    h.fake.silence("ms-2");
    let body = json!([auto(
        json!({"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 60})
    )]);
    let call = h.wsgi_post(&body);
    let lose_the_bus = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !h.fake.requests().iter().any(|r| r["cmd"] == "publish") {
            assert!(
                Instant::now() < deadline,
                "the call never reached the master"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.fake.disconnect_bus();
    };
    let started = Instant::now();
    let (r, ()) = tokio::join!(call, lose_the_bus);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the call waited for its timeout instead of failing fast"
    );
    let jid = h
        .fake
        .requests()
        .iter()
        .find(|r| r["cmd"] == "publish")
        .and_then(|r| r["jid"].as_str().map(str::to_owned))
        .filter(|j| !j.is_empty());
    let text = r.text();
    match jid {
        Some(jid) => assert!(text.contains(&jid), "no jid {jid} in {text}"),
        None => assert!(text.contains("jobs.lookup_jid (jid "), "{text}"),
    }
}

/// SIGTERM lets calls in flight go on; when the grace period is over, a
/// call still waiting answers 503 with its jid, plainly or as the last line
/// of a streamed answer.
#[tokio::test]
async fn a_call_still_waiting_when_the_grace_period_ends_is_503_with_the_jid() {
    let h = Inproc::start().await;
    h.fake.silence("ms-2");
    let body = json!([auto(
        json!({"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 60})
    )]);
    let plain = h.wsgi_post(&body);
    let streamed = Inproc::send(
        &h.wsgi,
        Request::post("/")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/x-ndjson")
            .body(Body::from(body.to_string()))
            .unwrap(),
    );
    let stop = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while h
            .fake
            .requests()
            .iter()
            .filter(|r| r["cmd"] == "publish")
            .count()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "the calls never reached the master"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.shutdown.trigger();
        // Stopping alone does not end a call.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut = Instant::now();
        h.shutdown.cut();
        cut
    };
    let (plain, streamed, cut) = tokio::join!(plain, streamed, stop);
    let answered = Instant::now();
    assert!(answered >= cut);
    let jids: Vec<String> = h
        .fake
        .requests()
        .iter()
        .filter(|r| r["cmd"] == "publish")
        .filter_map(|r| r["jid"].as_str().map(str::to_owned))
        .collect();
    let names_a_jid = |text: &str| {
        jids.iter()
            .any(|j| !j.is_empty() && text.contains(j.as_str()))
    };

    assert_eq!(
        plain.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        plain.text()
    );
    let text = plain.text();
    assert!(text.contains("graceful_shutdown_timeout"), "{text}");
    assert!(names_a_jid(&text), "no jid of {jids:?} in {text}");

    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.text());
    let text = streamed.text();
    let last: Json = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {text}"));
    assert_eq!(last["done"], json!(true), "{text}");
    assert_eq!(last["interrupted"], json!(true), "{text}");
    assert_eq!(last["returned"], json!(2), "ms-0 and ms-1 returned: {text}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(error.contains("graceful_shutdown_timeout"), "{text}");
    assert!(names_a_jid(error), "no jid of {jids:?} in {text}");
}

#[tokio::test]
async fn disabled_and_unknown_clients_are_400() {
    let h = Inproc::start().await;
    for client in ["no_such_client", "ssh"] {
        let r = h
            .wsgi_post(&json!([auto(
                json!({"client": client, "tgt": "*", "fun": "test.ping"})
            )]))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{client}: {}", r.text());
    }
}
