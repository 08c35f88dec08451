//! HTTP helpers: clients, login, JSON calls, server-sent events, fully read
//! replies; lowstate builders, lab tokens, condition waits and result
//! normalisation for comparisons with Salt's own salt-api.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as Json};

use super::lab::Lab;

/// A client builder with the settings every test wants: no redirects,
/// a generous overall timeout (a hung request fails the test).
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
}

/// A [`builder`] client that also accepts halite's self-signed test
/// certificates.
pub fn client() -> reqwest::Client {
    builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("build an HTTP client")
}

/// Credentials of the lab's `auto` eauth user `user` with full rights.
pub fn creds(user: &str) -> Json {
    json!({"eauth": "auto", "username": user, "password": "x"})
}

/// `POST /login` with JSON credentials of the `auto` user `user`; the token.
pub async fn login(c: &reqwest::Client, base: &str, user: &str) -> String {
    let r = c
        .post(format!("{base}/login"))
        .header("Accept", "application/json")
        .json(&creds(user))
        .send()
        .await
        .expect("POST /login");
    assert_eq!(r.status(), 200, "login of {user} at {base}");
    let v: Json = r.json().await.expect("login JSON");
    v["return"][0]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in the /login answer: {v}"))
        .to_owned()
}
/// Status and body (JSON, or the text as a JSON string when not JSON).
pub async fn status_json(r: reqwest::Response) -> (u16, Json) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Json::String(text));
    (status, v)
}

/// POST JSON, with an optional `X-Auth-Token`.
pub async fn post_json(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Json,
) -> (u16, Json) {
    let mut req = c.post(url).header("Accept", "application/json").json(body);
    if let Some(t) = token {
        req = req.header("X-Auth-Token", t);
    }
    status_json(req.send().await.expect("POST")).await
}

/// GET with an optional `X-Auth-Token`.
pub async fn get_json(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Json) {
    let mut req = c.get(url).header("Accept", "application/json");
    if let Some(t) = token {
        req = req.header("X-Auth-Token", t);
    }
    status_json(req.send().await.expect("GET")).await
}

/// `{ms-0: true, ...}` for the lab's minions.
pub fn all_true(lab: &Lab) -> Json {
    Json::Object(
        lab.minions
            .iter()
            .map(|m| (m.clone(), Json::Bool(true)))
            .collect(),
    )
}

/// Reads server-sent events from a streaming response.
///
/// The response is read in the background from the start, whatever the
/// test does meanwhile: a test that opens a stream, then waits on a long
/// call before it looks for its events, must not be a stalled reader to
/// the server (halite drops an `/events` client that leaves its budget full
/// for `SEND_TIMEOUT`, and the lab's bus is busy with the other tests).
pub struct Sse {
    chunks: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    buf: String,
    /// Everything read so far, for "never appears" checks.
    pub all: String,
}

impl Sse {
    pub fn new(mut resp: reqwest::Response) -> Sse {
        let (tx, chunks) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = resp.chunk().await {
                if tx.send(chunk).is_err() {
                    break;
                }
            }
        });
        Sse {
            chunks,
            buf: String::new(),
            all: String::new(),
        }
    }

    /// The first line of the stream (salt-api sends `retry: 400\n` alone,
    /// before any event), or `None` after `wait` without one.
    pub async fn first_line(&mut self, wait: Duration) -> Option<String> {
        self.take_through("\n", wait).await
    }

    /// The next frame (text up to a blank line), or `None` at the end of
    /// the stream or after `wait` without one.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<String> {
        self.take_through("\n\n", wait).await
    }

    /// The buffered text before the next `end` (which is consumed too),
    /// reading more of the stream as needed; `None` at the end of the
    /// stream or after `wait`.
    async fn take_through(&mut self, end: &str, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.find(end) {
                let taken = self.buf[..i].to_owned();
                self.buf.drain(..i + end.len());
                return Some(taken);
            }
            let chunk = tokio::time::timeout_at(deadline, self.chunks.recv())
                .await
                .ok()??;
            let text = String::from_utf8_lossy(&chunk);
            self.all.push_str(&text);
            self.buf.push_str(&text);
        }
    }

    /// Read events (`data:` JSON of frames) until `pred` holds for one;
    /// panics after `wait`.
    pub async fn until(
        &mut self,
        wait: Duration,
        what: &str,
        pred: impl Fn(&Json) -> bool,
    ) -> Json {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next_frame(left).await else {
                panic!("no event {what} within {wait:?}");
            };
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    if let Ok(v) = serde_json::from_str::<Json>(data) {
                        if pred(&v) {
                            return v;
                        }
                    }
                }
            }
        }
    }
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("read the response body").to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `return` field of a JSON body.
    pub fn ret(&self) -> Json {
        let j = self.json();
        j.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("no 'return' in {j}"))
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Assert the status, showing the body when it differs.
    #[track_caller]
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "expected HTTP {status}, got {}: {}",
            self.status,
            self.text()
        );
        self
    }

    /// Assert an error reply: this status, a JSON body `{"return": "<non-empty
    /// message>"}`, none of `secrets` in it. Returns the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, secrets: &[&str]) -> String {
        self.expect_status(status);
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "error content type is {ct:?}, not JSON: {}",
            self.text()
        );
        let msg = match self.json() {
            Json::Object(m) if m.len() == 1 => match m.get("return") {
                Some(Json::String(s)) if !s.is_empty() => s.clone(),
                _ => panic!(
                    "error body is not {{\"return\": \"<message>\"}}: {}",
                    self.text()
                ),
            },
            _ => panic!(
                "error body is not {{\"return\": \"<message>\"}}: {}",
                self.text()
            ),
        };
        let text = self.text();
        for s in secrets {
            assert!(
                !text.contains(s),
                "error body contains a secret {s:?}: {text}"
            );
        }
        msg
    }
}

/// Credentials of the full-rights `auto` user `hal` with a password.
pub fn hal(password: &str) -> Map<String, Json> {
    eauth_creds("auto", "hal", password)
}

/// `eauth` + `username` + `password`.
pub fn eauth_creds(eauth: &str, user: &str, password: &str) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("eauth".into(), json!(eauth));
    m.insert("username".into(), json!(user));
    m.insert("password".into(), json!(password));
    m
}

/// A lowstate object: `credentials` + `fields`.
pub fn low(credentials: &Map<String, Json>, fields: Json) -> Json {
    let mut m = credentials.clone();
    match fields {
        Json::Object(f) => m.extend(f),
        other => panic!("lowstate fields must be a map, not {other}"),
    }
    Json::Object(m)
}

/// A password no test uses twice, so a log search cannot find it by accident.
pub fn unique_secret(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh jid (Salt's format: 20 digits, local time to the microsecond).
pub fn new_jid() -> String {
    chrono::Local::now().format("%Y%m%d%H%M%S%6f").to_string()
}

/// A master token for `eauth`/`user`/`password`, from the master's own
/// `mk_token` (what halite's rest_cherrypy `/login` returns).
pub async fn mk_token(lab: &Lab, eauth: &str, user: &str, password: &str) -> String {
    let config = salt_client::config::MasterConfig::load(Some(&lab.lab_master_config))
        .expect("load the lab master config");
    let master = salt_client::master::Master::new(config);
    let token = salt_client::auth::mk_token(&master, eauth, user, password, &Map::new())
        .await
        .expect("mk_token request")
        .unwrap_or_else(|| panic!("the master refused a token for {eauth}/{user}"));
    token["token"].as_str().expect("token text").to_owned()
}

/// Poll `cond` until it holds (a condition wait, not a timing assertion);
/// panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A self-signed certificate for 127.0.0.1/localhost, written as PEM files
/// into `dir`: (cert path, key path).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate a certificate");
    let crt = dir.join("halite.crt");
    let key = dir.join("halite.key");
    std::fs::write(&crt, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    (crt, key)
}

/// Replace volatile values (jids, timestamps, pids, durations) so two runs
/// of the same call compare equal.
pub fn normalise(v: &Json) -> Json {
    const VOLATILE_KEYS: [&str; 9] = [
        "_stamp",
        "start_time",
        "StartTime",
        "pid",
        "duration",
        "_jid",
        "jid",
        "__jid__",
        "time",
    ];
    match v {
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let nk = normalise_str(k);
                    if VOLATILE_KEYS.contains(&k.as_str()) && !v.is_object() && !v.is_array() {
                        (nk, json!("<volatile>"))
                    } else {
                        (nk, normalise(v))
                    }
                })
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(normalise).collect()),
        Json::String(s) => Json::String(normalise_str(s)),
        other => other.clone(),
    }
}

/// Replace every 20-digit run (a jid) in a string.
pub fn normalise_str(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 20 {
                out.push_str("<jid>");
            } else {
                out.push_str(&s[start..i]);
            }
        } else {
            let ch = s[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}
