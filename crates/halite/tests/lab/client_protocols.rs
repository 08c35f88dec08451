//! The protocols of the salt-api clients in the field, spoken exactly as
//! each client speaks them (read from their sources), against halite and,
//! side by side, against Salt's own salt-api (the lab's oracle) where the
//! two must agree:
//!
//! - SUSE's Java `salt-netapi-client` (used by Uyuni): `/login` with a JSON
//!   body, calls on `/` with `X-Auth-Token`, `/run` with inline
//!   credentials, events over `/ws/<token>` after `websocket client ready`
//!   (each message minus its `data: ` prefix is `{tag, data}`), and
//!   `/logout` with an empty JSON body and only the session cookie, whose
//!   answer must be "Your token has been cleared".
//! - pepper: `X-Requested-With: XMLHttpRequest` and `X-Auth-Token` on every
//!   path except `/run`; `full_return: true` on every non-wheel lowstate;
//!   with `--run-uri` a token from `/token` goes into each lowstate.
//! - browser UIs (SaltGUI): `fetch` with a JSON string body (so
//!   `text/plain;charset=UTF-8`), one lowstate object (not a list) posted to
//!   `/`, and `/events` as an `EventSource` carrying only the `session_id`
//!   cookie.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value as Json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

/// A tag with its jid masked.
fn mask_jids(tag: &str) -> String {
    tag.split('/')
        .map(|p| {
            if p.len() == 20 && p.bytes().all(|b| b.is_ascii_digit()) {
                "<jid>"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Replace values that change between calls (jids, stamps) for comparison.
fn normalise(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "jid" | "_stamp" => json!("<volatile>"),
                        "tag" => json!(mask_jids(v.as_str().unwrap_or_default())),
                        _ => normalise(v),
                    };
                    (k.clone(), v)
                })
                .collect::<Map<_, _>>(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// The `session_id=<value>` pair of a reply's `Set-Cookie`.
fn session_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("session_id="))
        .and_then(|v| v.split(';').next())
        .expect("a session_id cookie")
        .to_owned()
}

async fn reply_json(r: reqwest::Response) -> (u16, Json) {
    status_json(r).await
}

/// The servers compared: halite (started here) and the oracle.
fn servers(h: &Halite) -> [(&'static str, String); 2] {
    [("halite", h.base.clone()), ("salt-api", lab().api_url)]
}

/// salt-netapi-client: `SaltClient.login`, `call`, `run`, `events`,
/// `logout`. `websocket` is false for the lab's salt-api, which serves no
/// `/ws` (its websocket support needs ws4py, which the lab does not install).
async fn netapi_client_session(c: &reqwest::Client, base: &str, websocket: bool) -> Json {
    // login(): a LinkedHashMap username, password, eauth as JSON; Accept JSON.
    let r = c
        .post(format!("{base}/login"))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json; charset=UTF-8")
        .body(r#"{"username":"saltdev","password":"x","eauth":"auto"}"#)
        .send()
        .await
        .expect("POST /login");
    assert_eq!(r.status(), 200, "{base} /login");
    let cookie = session_cookie(&r);
    let (_, v) = reply_json(r).await;
    let token = v["return"][0]["token"].as_str().expect("token").to_owned();
    for k in ["token", "start", "expire", "user", "eauth", "perms"] {
        assert!(v["return"][0].get(k).is_some(), "{base}: Token.{k} in {v}");
    }

    // events(): /ws/<token>, "websocket client ready", "data: " + JSON.
    let mut ws = if websocket {
        let url = format!("{base}/ws/{token}").replacen("http", "ws", 1);
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws/<token>");
        ws.send(Message::Text("websocket client ready".into()))
            .await
            .expect("send ready");
        Some(ws)
    } else {
        None
    };

    // call(): POST / with X-Auth-Token and a one-element list.
    let call = json!([{"tgt": "ms-1", "tgt_type": "glob", "client": "local_async",
                        "fun": "test.ping"}]);
    let r = c
        .post(format!("{base}/"))
        .header("Accept", "application/json")
        .header("X-Auth-Token", &token)
        .header("Content-Type", "application/json; charset=UTF-8")
        .body(call.to_string())
        .send()
        .await
        .expect("POST /");
    let (s, v) = reply_json(r).await;
    assert_eq!(s, 200, "{base} call: {v}");
    let jid = v["return"][0]["jid"].as_str().expect("jid").to_owned();

    // The job's events arrive; "server received message" is skipped.
    let new_tag = format!("salt/job/{jid}/new");
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Some(ws) = ws.as_mut() {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{base}: no {new_tag} on /ws"));
        let Some(Ok(Message::Text(text))) = msg else {
            continue;
        };
        if text.as_str() == "server received message" {
            continue;
        }
        // `message.substring(6)`: the client drops six characters.
        let event: Json = serde_json::from_str(&text[6..])
            .unwrap_or_else(|e| panic!("{base}: not an event after 6 chars: {text:?}: {e}"));
        assert!(
            event["tag"].is_string() && event["data"].is_object(),
            "{event}"
        );
        if event["tag"] == json!(new_tag) {
            break;
        }
    }
    if let Some(mut ws) = ws {
        let _ = ws.close(None).await;
    }

    // run(): /run with the credentials in a HashMap, no session.
    let run = json!([{"username": "saltdev", "password": "x", "eauth": "auto", "client": "local",
                      "tgt": "ms-0", "tgt_type": "glob", "fun": "test.arg", "arg": ["netapi"],
                      "kwarg": {"k": "v"}}]);
    let r = c
        .post(format!("{base}/run"))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json; charset=UTF-8")
        .body(run.to_string())
        .send()
        .await
        .expect("POST /run");
    let (s, ran) = reply_json(r).await;
    assert_eq!(s, 200, "{base} run: {ran}");

    // logout(): an empty JSON body; the client's cookie store carries the
    // session_id cookie; no X-Auth-Token.
    let r = c
        .post(format!("{base}/logout"))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json; charset=UTF-8")
        .header("Cookie", &cookie)
        .body("")
        .send()
        .await
        .expect("POST /logout");
    let (s, v) = reply_json(r).await;
    assert_eq!(s, 200, "{base} logout: {v}");
    assert_eq!(v["return"], json!("Your token has been cleared"), "{base}");
    json!({"run": ran["return"][0]})
}

#[tokio::test(flavor = "multi_thread")]
async fn salt_netapi_client_protocol() {
    let h = Halite::cherrypy("");
    let c = client();
    let mut results = Vec::new();
    for (who, base) in servers(&h) {
        let ws = who == "halite";
        results.push((who, netapi_client_session(&c, &base, ws).await));
    }
    let k = |v: &Json| normalise(&v["run"]["ms-0"]["args"]);
    assert_eq!(k(&results[0].1), k(&results[1].1), "run() results");
    assert_eq!(results[0].1["run"]["ms-0"]["args"], json!(["netapi"]));
}

/// pepper's `Pepper.req`: these headers on every request, `X-Auth-Token`
/// except on `/run`.
async fn pepper_req(
    c: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    data: &Json,
) -> (u16, Json) {
    let mut req = c
        .post(format!("{base}{path}"))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .header("X-Requested-With", "XMLHttpRequest")
        .body(data.to_string());
    if let Some(t) = token.filter(|_| path != "/run") {
        req = req.header("X-Auth-Token", t);
    }
    reply_json(req.send().await.expect("pepper request")).await
}

/// A pepper session: login, then the lowstates its CLI builds.
async fn pepper_session(c: &reqwest::Client, base: &str) -> Vec<Json> {
    let (s, v) = pepper_req(
        c,
        base,
        "/login",
        None,
        &json!({"username": "saltdev", "password": "x", "eauth": "auto"}),
    )
    .await;
    assert_eq!(s, 200, "{base} /login: {v}");
    let token = v["return"][0]["token"].as_str().expect("token").to_owned();
    let mut out = Vec::new();
    // `pepper 'ms-*' test.ping`, `pepper --client runner test.arg a k=v`,
    // `pepper --client wheel key.list_all`: full_return on non-wheel.
    for low in [
        json!({"client": "local", "tgt_type": "glob", "tgt": "ms-*", "fun": "test.ping",
               "batch": null, "arg": [], "full_return": true}),
        json!({"client": "runner", "fun": "test.arg", "arg": ["a", "k=v"], "full_return": true}),
        json!({"client": "wheel", "fun": "key.list_all", "arg": []}),
    ] {
        let (s, v) = pepper_req(c, base, "/", Some(&token), &json!([low])).await;
        assert_eq!(s, 200, "{base} {low}: {v}");
        out.push(v);
    }
    // `pepper --run-uri`: a token from /token, inside each lowstate on /run.
    let (s, v) = pepper_req(
        c,
        base,
        "/token",
        None,
        &json!({"username": "saltdev", "password": "x", "eauth": "auto"}),
    )
    .await;
    assert_eq!(s, 200, "{base} /token: {v}");
    let run_token = v[0]["token"].as_str().expect("a /token token").to_owned();
    let low = json!([{"client": "local", "tgt_type": "glob", "tgt": "ms-0", "fun": "test.ping",
                      "batch": null, "arg": [], "full_return": true, "token": run_token}]);
    let (s, v) = pepper_req(c, base, "/run", Some(&token), &low).await;
    assert_eq!(s, 200, "{base} /run with a token: {v}");
    out.push(v);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pepper_protocol() {
    let h = Halite::cherrypy("");
    let c = client();
    let (hb, ob) = (h.base.clone(), lab().api_url);
    let (hr, or) = tokio::join!(pepper_session(&c, &hb), pepper_session(&c, &ob));
    assert_eq!(hr.len(), or.len());
    for (i, (h, o)) in hr.iter().zip(&or).enumerate() {
        assert_eq!(normalise(h), normalise(o), "pepper request {i}");
    }
    // full_return shapes: {minion: {ret, retcode, jid}} and {tag, data}.
    assert_eq!(hr[0]["return"][0]["ms-0"]["ret"], json!(true), "{}", hr[0]);
    assert!(
        hr[1]["return"][0]["data"]["return"].is_object(),
        "{}",
        hr[1]
    );
}

/// A browser UI (SaltGUI's `API.apiRequest`): `fetch` with a string body,
/// `Accept`, `Cache-Control: no-cache` and the stored token (`""` before
/// login).
async fn gui_request(
    c: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Json>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = c
        .request(method, format!("{base}{path}"))
        .header("Accept", "application/json")
        .header("Cache-Control", "no-cache")
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req
            .header("Content-Type", "text/plain;charset=UTF-8")
            .body(b.to_string());
    }
    req.send().await.expect("fetch")
}

async fn gui_session(c: &reqwest::Client, base: &str) -> Json {
    let r = gui_request(
        c,
        base,
        "POST",
        "/login",
        "",
        Some(&json!({"eauth": "auto", "password": "x", "username": "saltdev"})),
    )
    .await;
    assert_eq!(r.status(), 200, "{base} /login");
    let cookie = session_cookie(&r);
    let (_, v) = reply_json(r).await;
    let token = v["return"][0]["token"].as_str().expect("token").to_owned();
    // SaltGUI refuses a login whose perms are empty ("No permissions").
    assert!(
        v["return"][0]["perms"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "perms: {v}"
    );

    // new EventSource(API_URL + "/events"): the cookie only.
    let events = c
        .get(format!("{base}/events"))
        .header("Accept", "text/event-stream")
        .header("Cache-Control", "no-cache")
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("GET /events");
    assert_eq!(events.status(), 200, "{base} /events with the cookie only");
    let mut sse = Sse::new(events);

    // One lowstate object, not a list, posted to /.
    let low = json!({"client": "local", "fun": "test.version", "tgt_type": "list", "tgt": "ms-2"});
    let r = gui_request(c, base, "POST", "/", &token, Some(&low)).await;
    let (s, ran) = reply_json(r).await;
    assert_eq!(s, 200, "{base} POST / object: {ran}");
    let ret = sse
        .until(WAIT, "the job's return", |e| {
            e["tag"]
                .as_str()
                .is_some_and(|t| t.starts_with("salt/job/") && t.ends_with("/ret/ms-2"))
                && e["data"]["fun"] == json!("test.version")
        })
        .await;
    assert!(ret["data"]["return"].is_string(), "{ret}");

    let r = gui_request(c, base, "POST", "/logout", &token, Some(&json!({}))).await;
    let (s, v) = reply_json(r).await;
    assert_eq!(s, 200, "{base} /logout: {v}");
    json!({"run": ran})
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_ui_protocol() {
    let h = Halite::cherrypy("");
    let c = client();
    let (hb, ob) = (h.base.clone(), lab().api_url);
    let (hr, or) = tokio::join!(gui_session(&c, &hb), gui_session(&c, &ob));
    assert_eq!(normalise(&hr), normalise(&or), "POST / with one object");
}
