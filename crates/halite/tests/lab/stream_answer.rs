//! Streamed answers of a synchronous `local` call against the real lab:
//! `application/x-ndjson` and `text/event-stream` carry the same returns as
//! the default JSON answer, one line each, then the closing line; errors
//! before the publish keep their status.

use crate::support::*;
use serde_json::{json, Value};

fn body(lab: &Lab, fields: Value) -> String {
    let _ = lab;
    json!([low(&hal(&unique_secret("stream")), fields)]).to_string()
}

#[tokio::test]
async fn ndjson_lines_match_the_json_answer() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let url = h.wsgi_url();
    let r = h
        .http
        .post(format!("{url}/"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/x-ndjson")
        .body(body(
            &lab,
            json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
        ))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let text = r.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let n = lab.minions.len();
    assert_eq!(lines.len(), n + 2, "start, {n} returns, done: {text}");
    let mut minions: Vec<String> =
        serde_json::from_value(lines[0]["minions"].clone()).expect("list");
    minions.sort();
    assert_eq!(minions, lab.minions, "{text}");
    let mut returned: Vec<String> = lines[1..=n]
        .iter()
        .map(|l| {
            assert_eq!(l["return"], json!(true), "{l}");
            l["id"].as_str().expect("id").to_owned()
        })
        .collect();
    returned.sort();
    assert_eq!(returned, lab.minions);
    let done = &lines[n + 1];
    assert_eq!(done["done"], json!(true), "{done}");
    assert_eq!(done["returned"], json!(n), "{done}");
    assert_eq!(done["no_return"], json!({}), "{done}");
    assert_eq!(done["jid"], lines[0]["jid"]);
}

#[tokio::test]
async fn event_stream_and_fallbacks() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let url = h.wsgi_url();
    let post = |accept: &'static str, b: String| {
        h.http
            .post(format!("{url}/"))
            .header("Content-Type", "application/json")
            .header("Accept", accept)
            .body(b)
            .send()
    };
    // SSE: named events, the same objects.
    let r = post(
        "text/event-stream",
        body(
            &lab,
            json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
        ),
    )
    .await
    .expect("answered");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert_eq!(
        text.matches("event: return\ndata: ").count(),
        lab.minions.len(),
        "{text}"
    );
    assert!(text.starts_with("event: start\ndata: {\"jid\": "), "{text}");
    assert!(
        text.contains("event: done\ndata: {\"done\": true"),
        "{text}"
    );
    // Not a single local chunk: the ordinary JSON answer.
    let r = post(
        "application/x-ndjson",
        body(
            &lab,
            json!({"client": "local_async", "tgt": "*", "fun": "test.ping"}),
        ),
    )
    .await
    .expect("answered");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(v["return"][0]["jid"].is_string(), "{v}");
    // Bad credentials: an ordinary 401 before anything streams.
    let bad = json!([{"client": "local", "tgt": "*", "fun": "test.ping",
        "eauth": "auto", "username": "nobody-here", "password": "wrong"}]);
    let r = post("application/x-ndjson", bad.to_string())
        .await
        .expect("answered");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn rest_cherrypy_run_streams_form_bodies_too() {
    let lab = lab();
    let h = HaliteBuilder::new(&lab)
        .surface("rest_cherrypy", json!({"disable_ssl": true}))
        .start()
        .await;
    let url = h.surface_url("rest_cherrypy");
    // A form body (rest_cherrypy's own conventions) streams too.
    let pw = unique_secret("stream-cp");
    let r = h
        .http
        .post(format!("{url}/run"))
        .header("Accept", "application/x-ndjson")
        .form(&[
            ("client", "local"),
            ("tgt", "*"),
            ("fun", "test.ping"),
            ("eauth", "auto"),
            ("username", "hal"),
            ("password", pw.as_str()),
        ])
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert_eq!(text.lines().count(), lab.minions.len() + 2, "{text}");
    assert!(!text.contains(&pw), "the password is not echoed");
    // Without the stream type, rest_cherrypy answers as before.
    let r = h
        .http
        .post(format!("{url}/run"))
        .header("Accept", "application/json")
        .form(&[
            ("client", "local"),
            ("tgt", "*"),
            ("fun", "test.ping"),
            ("eauth", "auto"),
            ("username", "hal"),
            ("password", pw.as_str()),
        ])
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["return"][0].as_object().map(|m| m.len()),
        Some(lab.minions.len()),
        "{v}"
    );
}
