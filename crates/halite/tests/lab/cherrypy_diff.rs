//! Differential tests of the rest_cherrypy surface: the same request to
//! halite and to Salt's own rest_cherrypy (the oracle at `$SALT_API_URL`),
//! status codes and bodies compared after normalising volatile values
//! (jids, tokens, timestamps, `_stamp`, `start`/`expire`, pids, StartTime).
//!
//! Python salt-api's `/login` returns a CherryPy session id: the oracle's
//! authenticated endpoints get that session id, halite gets its own token.
//! Where halite differs on purpose (see docs/COMPATIBILITY.md), the
//! test asserts halite's behaviour and says why.

use crate::support::*;
use serde_json::{json, Map, Value as Json};

/// Keys whose values change from call to call.
const VOLATILE: &[&str] = &[
    "jid",
    "token",
    "start",
    "expire",
    "_stamp",
    "pid",
    "StartTime",
    "Start Time",
];

/// Replace runs of 20 digits (jids) in a string.
fn mask_jids(s: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for ch in s.chars().chain(std::iter::once('\0')) {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        if digits.len() == 20 {
            out.push_str("<jid>");
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        if ch != '\0' {
            out.push(ch);
        }
    }
    out
}

fn normalise(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) {
                        json!("<volatile>")
                    } else {
                        normalise(v)
                    };
                    (mask_jids(k), v)
                })
                .collect::<Map<_, _>>(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(normalise).collect()),
        Json::String(s) => Json::String(mask_jids(s)),
        other => other.clone(),
    }
}

/// One side of the comparison: a base URL and its credential.
struct Side {
    base: String,
    token: String,
}

struct Pair {
    _halite: Halite,
    h: Side,
    o: Side,
    c: reqwest::Client,
}

async fn pair() -> Pair {
    let lab = lab();
    let halite = Halite::cherrypy("");
    let c = client();
    let h = Side {
        token: login(&c, &halite.base, "saltdev").await,
        base: halite.base.clone(),
    };
    let o = Side {
        token: login(&c, &lab.api_url, "saltdev").await,
        base: lab.api_url.clone(),
    };
    Pair {
        _halite: halite,
        h,
        o,
        c,
    }
}

impl Pair {
    async fn get(&self, path: &str, auth: bool) -> ((u16, Json), (u16, Json)) {
        let (hu, ou) = (
            format!("{}{path}", self.h.base),
            format!("{}{path}", self.o.base),
        );
        let h = get_json(&self.c, &hu, auth.then_some(self.h.token.as_str()));
        let o = get_json(&self.c, &ou, auth.then_some(self.o.token.as_str()));
        tokio::join!(h, o)
    }

    async fn post(&self, path: &str, auth: bool, body: &Json) -> ((u16, Json), (u16, Json)) {
        let (hu, ou) = (
            format!("{}{path}", self.h.base),
            format!("{}{path}", self.o.base),
        );
        let h = post_json(&self.c, &hu, auth.then_some(self.h.token.as_str()), body);
        let o = post_json(&self.c, &ou, auth.then_some(self.o.token.as_str()), body);
        tokio::join!(h, o)
    }
}

/// Same status and same normalised body.
fn same(what: &str, (h, o): ((u16, Json), (u16, Json))) {
    assert_eq!(
        h.0, o.0,
        "{what}: status (halite body {}, salt-api body {})",
        h.1, o.1
    );
    assert_eq!(
        normalise(&h.1),
        normalise(&o.1),
        "{what}: body (left halite, right salt-api)"
    );
}

/// Same status; halite's error body is JSON `{"status", "return"}` where
/// salt-api sends a CherryPy HTML page (deliberate, docs/COMPATIBILITY.md).
fn same_error(what: &str, (h, o): ((u16, Json), (u16, Json))) {
    assert_eq!(
        h.0, o.0,
        "{what}: status (halite {}, salt-api {})",
        h.1, o.1
    );
    assert_eq!(
        h.1["status"],
        json!(h.0),
        "{what}: halite error body {}",
        h.1
    );
    assert!(h.1["return"].is_string(), "{what}: {}", h.1);
}

fn with_creds(mut chunk: Json) -> Json {
    chunk
        .as_object_mut()
        .unwrap()
        .extend(creds("saltdev").as_object().unwrap().clone());
    chunk
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_index() {
    let p = pair().await;
    let ((hs, h), (os, o)) = p.get("/", false).await;
    assert_eq!((hs, os), (200, 200));
    assert_eq!(h["return"], o["return"]);
    // Deliberate: halite lists only the clients it serves; salt-api also
    // lists `destroy` and `ssh`, which no netapi request can use here.
    let served: Vec<Json> = o["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| *c != "destroy" && *c != "ssh")
        .cloned()
        .collect();
    assert_eq!(h["clients"], Json::Array(served));
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_run() {
    let p = pair().await;
    let cases = [
        json!({"client": "local", "tgt": "ms-*", "fun": "test.ping", "timeout": 60}),
        json!({"client": "local", "tgt": "ms-0,ms-2", "tgt_type": "list", "fun": "test.arg",
               "arg": ["a", 1], "kwarg": {"k": "v"}, "timeout": 60}),
        json!({"client": "local", "tgt": "first_two", "tgt_type": "nodegroup", "fun": "test.echo",
               "arg": "hello world", "timeout": 60}),
        json!({"client": "local_async", "tgt": "ms-1", "fun": "test.ping"}),
        json!({"client": "runner", "fun": "test.arg", "arg": ["x"], "kwarg": {"y": 2}}),
        json!({"client": "wheel", "fun": "key.finger", "match": "ms-0"}),
        json!({"client": "local", "tgt": "nomatch-*", "fun": "test.ping"}),
    ];
    let runs = cases.iter().map(|case| {
        let body = json!([with_creds(case.clone())]);
        let p = &p;
        async move { (case, p.post("/run", false, &body).await) }
    });
    for (case, result) in futures_util::future::join_all(runs).await {
        same(&format!("/run {case}"), result);
    }
    // Rejected credentials: 401 on both.
    let bad = json!([{"client": "local", "tgt": "*", "fun": "test.ping",
                      "eauth": "nosuch", "username": "u", "password": "p"}]);
    same_error("/run bad eauth", p.post("/run", false, &bad).await);
    let limited = json!([{"client": "local", "tgt": "*", "fun": "test.arg",
                          "eauth": "auto", "username": "limited", "password": "x"}]);
    same_error("/run ACL denial", p.post("/run", false, &limited).await);
    // Malformed bodies.
    for (ct, body, want) in [
        ("application/json", "{not json", 400),
        ("application/xml", "<x/>", 406),
    ] {
        let h =
            p.c.post(format!("{}/run", p.h.base))
                .header("Content-Type", ct)
                .body(body)
                .send();
        let o =
            p.c.post(format!("{}/run", p.o.base))
                .header("Content-Type", ct)
                .body(body)
                .send();
        let (h, o) = tokio::join!(h, o);
        let (h, o) = (status_json(h.unwrap()).await, status_json(o.unwrap()).await);
        assert_eq!(o.0, want, "salt-api {ct}");
        same_error(&format!("/run {ct}"), (h, o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_root_post_with_session() {
    let p = pair().await;
    let body = json!([{"client": "local", "tgt": "ms-*", "fun": "test.ping", "timeout": 60},
                      {"client": "runner", "fun": "test.arg", "arg": [1]}]);
    same("POST / with session", p.post("/", true, &body).await);
    same_error("POST / without session", p.post("/", false, &body).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_minions() {
    let p = pair().await;
    // Grains of one minion; retried while the (shared) lab is slow to answer.
    let mut last = None;
    for _ in 0..3 {
        let ((hs, h), (os, o)) = p.get("/minions/ms-0", true).await;
        assert_eq!((hs, os), (200, 200));
        if h["return"][0]["ms-0"].is_object() && o["return"][0]["ms-0"].is_object() {
            last = Some(((hs, h), (os, o)));
            break;
        }
    }
    same("GET /minions/ms-0", last.expect("grains of ms-0 from both"));
    let body = json!({"tgt": "ms-*", "fun": "test.ping"});
    let ((hs, h), (os, o)) = p.post("/minions", true, &body).await;
    assert_eq!((hs, os), (202, 202));
    // minions lists may come in any order
    let sorted = |v: &Json| {
        let mut v = normalise(v);
        if let Some(Json::Array(m)) = v["return"][0].get_mut("minions") {
            m.sort_by_key(|x| x.to_string());
        }
        v
    };
    assert_eq!(sorted(&h), sorted(&o));
    same_error(
        "GET /minions without session",
        p.get("/minions", false).await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_jobs() {
    let p = pair().await;
    // A job both look up: run through salt-api, waited for.
    let body = json!([with_creds(
        json!({"client": "local", "tgt": "ms-*", "fun": "test.arg",
                                         "arg": ["diff"], "timeout": 60})
    )]);
    let (s, _) = post_json(&p.c, &format!("{}/run", p.o.base), None, &body).await;
    assert_eq!(s, 200);
    let (s, v) = post_json(
        &p.c,
        &format!("{}/run", p.o.base),
        None,
        &json!([with_creds(
            json!({"client": "runner", "fun": "jobs.list_jobs",
                                   "search_function": "test.arg"})
        )]),
    )
    .await;
    assert_eq!(s, 200);
    let jid = v["return"][0]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, j)| j["Arguments"] == json!(["diff"]))
        .map(|(jid, _)| jid.clone())
        .max()
        .expect("the job in the job cache");
    same(
        &format!("GET /jobs/{jid}"),
        p.get(&format!("/jobs/{jid}"), true).await,
    );
    let ((hs, h), (os, o)) = p.get("/jobs", true).await;
    assert_eq!((hs, os), (200, 200));
    assert_eq!(h["return"][0][&jid], o["return"][0][&jid]);
    assert!(h["return"][0][&jid].is_object());
    same_error("GET /jobs without session", p.get("/jobs", false).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_keys() {
    let p = pair().await;
    same("GET /keys", p.get("/keys", true).await);
    same("GET /keys/ms-0", p.get("/keys/ms-0", true).await);
    same_error("GET /keys without session", p.get("/keys", false).await);
    // POST /keys without `mid`: salt-api fails with 500 (a KeyError);
    // halite says what is missing with 400.
    let ((hs, h), (os, _)) = p.post("/keys", false, &creds("saltdev")).await;
    assert_eq!(os, 500);
    assert_eq!((hs, &h["status"]), (400, &json!(400)), "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_login() {
    let p = pair().await;
    same("GET /login", p.get("/login", false).await);
    for user in ["saltdev", "limited"] {
        let ((hs, h), (os, o)) = p.post("/login", false, &creds(user)).await;
        assert_eq!((hs, os), (200, 200));
        assert_eq!(normalise(&h), normalise(&o), "/login {user}");
        let keys = |v: &Json| {
            v["return"][0]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&h), keys(&o));
        // Deliberate: halite's token is the master's eauth token and works
        // as a lowstate `token`; salt-api's is a CherryPy session id that
        // the master does not know.
        let token_run = |t: &Json| json!([{"client": "local", "tgt": "ms-0", "fun": "test.ping", "timeout": 60, "token": t}]);
        let (hu, ou) = (format!("{}/run", p.h.base), format!("{}/run", p.o.base));
        let (hb, ob) = (
            token_run(&h["return"][0]["token"]),
            token_run(&o["return"][0]["token"]),
        );
        let ((hs, _), (os, _)) = tokio::join!(
            post_json(&p.c, &hu, None, &hb),
            post_json(&p.c, &ou, None, &ob),
        );
        assert_eq!((hs, os), (200, 401), "lowstate token from /login ({user})");
    }
    let bad = json!({"eauth": "nosuch", "username": "u", "password": "p"});
    same_error("POST /login bad eauth", p.post("/login", false, &bad).await);
    // Deliberate: a body-less POST /login is 400 (salt-api: 500) and
    // GET /logout is 405 (salt-api: 500).
    let (h, o) = tokio::join!(
        p.c.post(format!("{}/login", p.h.base)).send(),
        p.c.post(format!("{}/login", p.o.base)).send()
    );
    assert_eq!(
        (h.unwrap().status().as_u16(), o.unwrap().status().as_u16()),
        (400, 500)
    );
    let ((hs, _), (os, _)) = p.get("/logout", false).await;
    assert_eq!((hs, os), (405, 500));
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_logout() {
    let p = pair().await;
    let h =
        p.c.post(format!("{}/logout", p.h.base))
            .header("X-Auth-Token", &p.h.token)
            .send();
    let o =
        p.c.post(format!("{}/logout", p.o.base))
            .header("X-Auth-Token", &p.o.token)
            .send();
    let (h, o) = tokio::join!(h, o);
    let (h, o) = (h.unwrap(), o.unwrap());
    assert_eq!((h.status().as_u16(), o.status().as_u16()), (200, 200));
    // Both clear the session; halite also revokes the token on the master.
    let body = json!([{"client": "runner", "fun": "test.arg", "arg": [1]}]);
    let ((hs, _), (os, _)) = p.post("/", true, &body).await;
    assert_eq!((hs, os), (401, 401));
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_token() {
    let p = pair().await;
    same("POST /token", p.post("/token", false, &creds("hal")).await);
    let (h, _) = p.post("/token", false, &creds("hal")).await;
    assert!(h.1.is_array(), "a bare list: {}", h.1);
    same_error(
        "POST /token without password",
        p.post(
            "/token",
            false,
            &json!({"username": "hal", "eauth": "auto"}),
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_hook() {
    let p = pair().await;
    let body = json!({"diff": true, "list": [1, 2]});
    same(
        "POST /hook/diff/test",
        p.post("/hook/diff/test", true, &body).await,
    );
    same("POST /hook", p.post("/hook", true, &body).await);
    same_error(
        "POST /hook without session",
        p.post("/hook/x", false, &body).await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_stats() {
    let p = pair().await;
    same_error("GET /stats without session", p.get("/stats", false).await);
    let ((hs, h), (os, o)) = p.get("/stats", true).await;
    assert_eq!((hs, os), (200, 200));
    // Deliberate: the content differs; salt-api shows CherryPy's thread
    // pool counters, halite its own request and event-bus counters.
    assert!(o.get("CherryPy Applications").is_some());
    assert!(h["halite"]["requests"].is_number(), "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_events_token_in_query() {
    let p = pair().await;
    let h =
        p.c.get(format!("{}/events?token={}", p.h.base, p.h.token))
            .send();
    let o =
        p.c.get(format!("{}/events?token={}", p.o.base, p.o.token))
            .send();
    let (h, o) = tokio::join!(h, o);
    // Deliberate: salt-api documents ?token= but rejects it (400); a
    // browser EventSource cannot send headers, so halite accepts it.
    assert_eq!(o.unwrap().status(), 400);
    let h = h.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(
        h.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_errors_and_limits() {
    let p = pair().await;
    // Unknown path: 404 on both; halite's body is JSON (salt-api: HTML).
    let ((hs, h), (os, o)) = p.get("/nosuch", false).await;
    assert_eq!((hs, os), (404, 404));
    assert_eq!(h["status"], 404);
    assert!(o.as_str().unwrap_or("").contains("<html"), "{o}");
    // Nothing acceptable: 406 on both.
    let (h, o) = tokio::join!(
        p.c.get(format!("{}/", p.h.base))
            .header("Accept", "text/html")
            .send(),
        p.c.get(format!("{}/", p.o.base))
            .header("Accept", "text/html")
            .send()
    );
    assert_eq!(
        (h.unwrap().status().as_u16(), o.unwrap().status().as_u16()),
        (406, 406)
    );
    // Deliberate: max_request_body_size (1 MiB by default) is enforced
    // (413); salt-api reads any size (here: fails the credentials, 401).
    let body = json!([{"client": "local", "tgt": "*", "fun": "test.ping",
                       "eauth": "nosuch", "username": "u", "password": "p",
                       "pad": "x".repeat(1_200_000)}]);
    let ((hs, _), (os, _)) = p.post("/run", false, &body).await;
    assert_eq!((hs, os), (413, 401));
}

/// Whether the lab's master is of this Salt release (`SALT_VERSION_FULL`
/// from `scripts/lab env`, e.g. `3008.5`).
fn lab_release(prefix: &str) -> bool {
    std::env::var("SALT_VERSION_FULL").is_ok_and(|v| v.starts_with(prefix))
}

fn lab_is_3008() -> bool {
    lab_release("3008")
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_login_needs_username_and_password() {
    let p = pair().await;
    // A login must carry both; salt-api's master refuses it (401) and so
    // must halite, never answering with a token for user "".
    for body in [
        json!({"eauth": "auto", "username": "hal"}),
        json!({"eauth": "auto", "password": "x"}),
        json!([{"eauth": "auto", "username": "hal"}]),
    ] {
        same_error(
            &format!("POST /login {body}"),
            p.post("/login", false, &body).await,
        );
    }
    // The same for inline lowstate credentials.
    for low in [
        json!({"client": "runner", "fun": "test.arg", "eauth": "auto", "username": "hal"}),
        json!({"client": "local", "tgt": "*", "fun": "test.ping", "eauth": "auto", "password": "x"}),
    ] {
        let (h, o) = p.post("/run", false, &json!([low])).await;
        if o.0 != 401 && lab_release("3006") {
            // Deliberate: 3006's master raises on such credentials and its
            // salt-api answers 500; a login must carry both: 401.
            assert_eq!(o.0, 500, "3006 salt-api {}", o.1);
            assert_eq!(h.0, 401, "/run {low}: halite {}", h.1);
            continue;
        }
        same_error(&format!("/run {low}"), (h, o));
    }
}

/// The attributes of a `Set-Cookie` value, lower-cased names.
fn cookie_attrs(v: &str) -> Map<String, Json> {
    v.split(';')
        .skip(1)
        .filter_map(|a| {
            let (k, v) = a.trim().split_once('=').unwrap_or((a.trim(), ""));
            (!k.is_empty()).then(|| (k.to_ascii_lowercase(), json!(v)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_session_cookie_and_cache_control() {
    let p = pair().await;
    let login = |base: String| {
        let c = p.c.clone();
        async move {
            c.post(format!("{base}/login"))
                .json(&creds("hal"))
                .send()
                .await
                .expect("POST /login")
        }
    };
    let (h, o) = tokio::join!(login(p.h.base.clone()), login(p.o.base.clone()));
    assert_eq!((h.status().as_u16(), o.status().as_u16()), (200, 200));
    let cookie = |r: &reqwest::Response| {
        r.headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (hc, oc) = (cookie(&h), cookie(&o));
    assert!(hc.starts_with("session_id="), "{hc}");
    assert!(oc.starts_with("session_id="), "{oc}");
    let (ha, oa) = (cookie_attrs(&hc), cookie_attrs(&oc));
    for attr in ["expires", "max-age", "path"] {
        assert!(oa.contains_key(attr), "salt-api's cookie has {attr}: {oc}");
        assert!(ha.contains_key(attr), "halite's cookie lacks {attr}: {hc}");
    }
    assert_eq!(ha["path"], oa["path"]);
    // halite's Max-Age is the token's remaining lifetime.
    let body: Json = h.json().await.expect("login JSON");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let left = body["return"][0]["expire"].as_f64().unwrap() - now;
    let max_age: f64 = ha["max-age"].as_str().unwrap().parse().unwrap();
    assert!(
        (left - 5.0..=left + 1.0).contains(&max_age),
        "Max-Age {max_age} for a token with {left} s left"
    );

    // Cache-Control: private on replies to authenticated requests.
    let cache_control = |r: &reqwest::Response| {
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let get = |base: &str, token: &str, path: &str| {
        p.c.get(format!("{base}{path}"))
            .header("Accept", "application/json")
            .header("X-Auth-Token", token)
            .send()
    };
    let (h, o) = tokio::join!(
        get(&p.h.base, &p.h.token, "/stats"),
        get(&p.o.base, &p.o.token, "/stats")
    );
    let (h, o) = (h.unwrap(), o.unwrap());
    assert_eq!(cache_control(&o).as_deref(), Some("private"), "salt-api");
    assert_eq!(cache_control(&h), cache_control(&o), "GET /stats");
    // Not on an anonymous request.
    let (h, o) = tokio::join!(
        p.c.get(format!("{}/", p.h.base)).send(),
        p.c.get(format!("{}/", p.o.base)).send()
    );
    let (h, o) = (h.unwrap(), o.unwrap());
    assert_eq!(cache_control(&o), None, "salt-api GET /");
    assert_eq!(cache_control(&h), None, "halite GET /");
    // Logout: private, and the cookie is expired.
    let logout = |base: &str, token: &str| {
        p.c.post(format!("{base}/logout"))
            .header("X-Auth-Token", token)
            .send()
    };
    let (h, o) = tokio::join!(logout(&p.h.base, &p.h.token), logout(&p.o.base, &p.o.token));
    let (h, o) = (h.unwrap(), o.unwrap());
    assert_eq!(
        cache_control(&o).as_deref(),
        Some("private"),
        "salt-api /logout"
    );
    assert_eq!(cache_control(&h), cache_control(&o), "POST /logout");
    let hc = cookie(&h);
    assert!(hc.starts_with("session_id=;"), "{hc}");
    assert!(hc.contains("expires=Thu, 01 Jan 1970"), "{hc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_hook_event_headers() {
    let p = pair().await;
    let mut sse = Sse::new(
        p.c.get(format!("{}/events?token={}", p.h.base, p.h.token))
            .send()
            .await
            .expect("GET /events"),
    );
    let marker = unique("hook");
    let body = json!({"marker": marker});
    let post = |base: &str, token: &str, side: &str, spoof: bool| {
        let mut req =
            p.c.post(format!("{base}/hook/fidelity/{marker}/{side}"))
                .header("X-Auth-Token", token)
                .json(&body);
        if spoof {
            req = req.header("Remote-Addr", "10.9.9.9");
        }
        req.send()
    };
    // Give the stream a moment to be subscribed before the hooks fire.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (h, o) = tokio::join!(
        post(&p.h.base, &p.h.token, "h", false),
        post(&p.o.base, &p.o.token, "o", false)
    );
    assert_eq!(
        (h.unwrap().status().as_u16(), o.unwrap().status().as_u16()),
        (200, 200)
    );
    let wait = std::time::Duration::from_secs(30);
    let mut headers = std::collections::BTreeMap::new();
    while headers.len() < 2 {
        let ev = sse
            .until(wait, "the hook events", |e| {
                e["tag"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("salt/netapi/hook/fidelity/{marker}/")))
            })
            .await;
        let side = ev["tag"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        headers.insert(side, ev["data"]["headers"].clone());
    }
    let (h, o) = (&headers["h"], &headers["o"]);
    assert_eq!(o["Remote-Addr"], json!("127.0.0.1"), "salt-api {o}");
    assert_eq!(h["Remote-Addr"], o["Remote-Addr"], "halite {h}");
    // The same header names, except the credential salt-api copies in.
    let names = |v: &Json| {
        v.as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "X-Auth-Token")
            .cloned()
            .collect::<Vec<_>>()
    };
    let (mut hn, mut on) = (names(h), names(o));
    hn.sort();
    on.sort();
    assert_eq!(hn, on, "header names (halite {h}, salt-api {o})");
    // A caller cannot pose as another address.
    let r = post(&p.h.base, &p.h.token, "spoofed", true).await.unwrap();
    assert_eq!(r.status(), 200);
    let ev = sse
        .until(wait, "the spoofed hook", |e| {
            e["tag"] == json!(format!("salt/netapi/hook/fidelity/{marker}/spoofed"))
        })
        .await;
    assert_eq!(ev["data"]["headers"]["Remote-Addr"], json!("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_unknown_runner_function() {
    let p = pair().await;
    for client in ["runner", "runner_async"] {
        let body = json!([with_creds(
            json!({"client": client, "fun": "no_such.runner_fn"})
        )]);
        let ((hs, h), (os, o)) = p.post("/run", false, &body).await;
        assert_eq!((hs, os), (500, 500), "{client}: halite {h}, salt-api {o}");
        // salt-api hides the message in its reply (it logs it); halite
        // gives Salt's own message, not the master's traceback.
        assert_eq!(
            h["return"],
            json!("'no_such.runner_fn' is not available."),
            "{client}"
        );
    }
    // With the session too, and a known function still works.
    let body = json!([{"client": "runner", "fun": "no_such.runner_fn"}]);
    let ((hs, h), (os, _)) = p.post("/", true, &body).await;
    assert_eq!((hs, os), (500, 500), "{h}");
    same(
        "runner test.arg",
        p.post(
            "/",
            true,
            &json!([{"client": "runner", "fun": "test.arg", "arg": ["ok"]}]),
        )
        .await,
    );
}

/// The `salt/batch/<jid>/*` events of the batches whose `arg` holds one
/// of `markers`, in order, until each has ended: tag suffixes and data.
async fn batch_events(sse: &mut Sse, markers: &[&str]) -> Vec<Vec<(String, Json)>> {
    let mut out: Vec<Vec<(String, Json)>> = vec![Vec::new(); markers.len()];
    let ended = |v: &Vec<(String, Json)>| {
        v.last()
            .is_some_and(|(s, _)| s == "complete" || s == "halted")
    };
    while !out.iter().all(ended) {
        let ev = sse
            .until(std::time::Duration::from_secs(60), "batch events", |e| {
                let arg = e["data"]["state"]["arg"].to_string();
                e["tag"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("salt/batch/"))
                    && markers.iter().any(|m| arg.contains(m))
            })
            .await;
        let arg = ev["data"]["state"]["arg"].to_string();
        let Some(i) = markers.iter().position(|m| arg.contains(m)) else {
            continue;
        };
        let suffix = ev["tag"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        out[i].push((suffix, ev["data"].clone()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_batch_events() {
    let p = pair().await;
    let mut sse = Sse::new(
        p.c.get(format!("{}/events?token={}", p.h.base, p.h.token))
            .send()
            .await
            .expect("GET /events"),
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (hm, om) = (unique("batch-h-"), unique("batch-o-"));
    let low = |m: &str| {
        json!([with_creds(
            json!({"client": "local_batch", "tgt": "ms-*", "fun": "test.arg",
                                  "arg": [m], "kwarg": {"k": 1}, "batch": "2", "timeout": 60})
        )])
    };
    let (hu, ou) = (format!("{}/run", p.h.base), format!("{}/run", p.o.base));
    let (hb, ob) = (low(&hm), low(&om));
    let ((hs, _), (os, _)) = tokio::join!(
        post_json(&p.c, &hu, None, &hb),
        post_json(&p.c, &ou, None, &ob),
    );
    assert_eq!((hs, os), (200, 200));
    if !lab_is_3008() {
        // 3006/3007's client fires no batch events; neither does halite.
        let seen = sse
            .next_frame(std::time::Duration::from_secs(3))
            .await
            .unwrap_or_default();
        let all = format!("{}{seen}", sse.all);
        assert!(
            !all.contains("salt/batch/"),
            "batch events on a pre-3008 master"
        );
        return;
    }
    let mut both = batch_events(&mut sse, &[&hm, &om]).await;
    let o = both.pop().unwrap();
    let h = both.pop().unwrap();
    let suffixes = |v: &[(String, Json)]| v.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
    for (who, evs) in [("halite", &h), ("salt-api", &o)] {
        let s = suffixes(evs);
        assert_eq!(s.first().map(String::as_str), Some("new"), "{who}: {s:?}");
        assert_eq!(
            s.last().map(String::as_str),
            Some("complete"),
            "{who}: {s:?}"
        );
        assert!(
            s[1..s.len() - 1].iter().all(|x| x == "progress") && s.len() >= 3,
            "{who}: {s:?}"
        );
    }
    let keys = |v: &Json| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let (hn, on) = (&h[0].1, &o[0].1);
    assert_eq!(keys(hn), keys(on), "event data keys");
    assert_eq!(keys(&hn["state"]), keys(&on["state"]), "state keys");
    let (hc, oc) = (&h.last().unwrap().1["state"], &o.last().unwrap().1["state"]);
    for k in [
        "batch_size",
        "fun",
        "kwargs",
        "tgt",
        "tgt_type",
        "failhard",
        "batch_wait",
        "timeout",
        "gather_job_timeout",
        "halted",
        "halted_reason",
        "driver",
        "ret",
        "user",
        "pending",
        "active",
        "failed",
        "wait",
    ] {
        assert_eq!(hc[k], oc[k], "state.{k} (halite {hc}, salt-api {oc})");
    }
    let sorted = |v: &Json| {
        let mut a: Vec<String> = match v {
            Json::Array(a) => a.iter().map(|x| x.to_string()).collect(),
            Json::Object(m) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        a.sort();
        a
    };
    assert_eq!(sorted(&hc["all_minions"]), sorted(&oc["all_minions"]));
    assert_eq!(sorted(&hc["done"]), sorted(&oc["done"]));
    assert_eq!(hc["arg"][1], oc["arg"][1], "the kwarg map");
    for (m, d) in hc["done"].as_object().unwrap() {
        assert_eq!(keys(d), keys(&oc["done"][m]), "done.{m}");
        assert_eq!(d["retcode"], json!(0));
    }
    assert_eq!(hn["user"], on["user"]);
}
