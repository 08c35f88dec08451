//! The rest_cherrypy surface against the real lab: every endpoint, success
//! and error, and the options of the `rest_cherrypy` section. Each test
//! starts its own halite child process (a few milliseconds) so that tests
//! run concurrently and options do not interfere.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A runner call (`test.arg`): runs on the master, so it does not wait
/// for minions that a busy shared lab may leave slow.
fn echo(word: &str) -> Json {
    json!([{"client": "runner", "fun": "test.arg", "arg": [word]}])
}

fn echoed(v: &Json, word: &str) -> bool {
    v["return"][0]["args"] == json!([word])
}

fn ping(tgt: &str) -> Json {
    json!([{"client": "local", "tgt": tgt, "fun": "test.ping", "timeout": 60}])
}

/// An error body as halite shapes it: `{"status": N, "return": "..."}`.
fn assert_error(status: u16, body: &Json, want: u16) {
    assert_eq!(status, want, "status, body {body}");
    assert_eq!(body["status"], json!(want), "error body {body}");
    assert!(body["return"].is_string(), "error body {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn index_get() {
    let h = Halite::cherrypy("");
    let c = client();
    let r = c.get(h.url("/")).send().await.unwrap();
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let (s, v) = status_json(r).await;
    assert_eq!(s, 200);
    assert_eq!(v["return"], "Welcome");
    let clients: Vec<&str> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for want in ["local", "local_async", "runner", "wheel"] {
        assert!(clients.contains(&want), "{clients:?}");
    }
    // Deliberate (docs/COMPATIBILITY.md): only clients halite serves; no destroy/ssh.
    assert!(!clients.contains(&"ssh") && !clients.contains(&"destroy"));
}

#[tokio::test(flavor = "multi_thread")]
async fn root_post_with_header_and_cookie() {
    let lab = lab();
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &ping("ms-*")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"return": [all_true(&lab)]}));

    let r = c
        .post(h.url("/"))
        .header("Cookie", format!("session_id={token}"))
        .json(&ping("ms-0"))
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"return": [{"ms-0": true}]}));

    // No token; a well-formed but unknown token.
    let (s, v) = post_json(&c, &h.url("/"), None, &ping("*")).await;
    assert_error(s, &v, 401);
    let (s, v) = post_json(&c, &h.url("/"), Some(&"ab".repeat(32)), &ping("*")).await;
    assert_error(s, &v, 401);
    // A token of a user who may only run test.ping.
    let limited = login(&c, &h.base, "limited").await;
    let body = json!([{"client": "local", "tgt": "*", "fun": "test.arg"}]);
    let (s, v) = post_json(&c, &h.url("/"), Some(&limited), &body).await;
    assert_error(s, &v, 401);
    // Not a lowstate.
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &json!(["x"])).await;
    assert_error(s, &v, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_inline_eauth_and_tokens() {
    let lab = lab();
    let h = Halite::cherrypy("");
    let c = client();
    let mut chunk = ping("ms-*");
    chunk[0]
        .as_object_mut()
        .unwrap()
        .extend(creds("saltdev").as_object().unwrap().clone());
    let (s, v) = post_json(&c, &h.url("/run"), None, &chunk).await;
    assert_eq!((s, v), (200, json!({"return": [all_true(&lab)]})));

    // The /login token as lowstate `token` (halite's token is the master's).
    let token = login(&c, &h.base, "saltdev").await;
    let body = json!([{"client": "runner", "fun": "test.arg", "arg": ["a"], "kwarg": {"k": 1}, "token": token}]);
    let (s, v) = post_json(&c, &h.url("/run"), None, &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["return"][0]["args"], json!(["a"]), "{v}");
    assert_eq!(v["return"][0]["kwargs"]["k"], json!(1), "{v}");

    // A master token from /token.
    let (s, v) = post_json(&c, &h.url("/token"), None, &creds("hal")).await;
    assert_eq!(s, 200, "{v}");
    let master_token = v[0]["token"].as_str().unwrap().to_owned();
    let body = json!({"client": "local", "tgt": "ms-1", "fun": "test.ping", "timeout": 60, "token": master_token});
    let (s, v) = post_json(&c, &h.url("/run"), None, &body).await;
    assert_eq!((s, v), (200, json!({"return": [{"ms-1": true}]})));

    // Rejected credentials, unknown token, no credentials.
    let body = json!([{"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 60, "eauth": "nosuch", "username": "u", "password": "p"}]);
    let (s, v) = post_json(&c, &h.url("/run"), None, &body).await;
    assert_error(s, &v, 401);
    let body = json!([{"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 60, "token": "cd".repeat(32)}]);
    let (s, v) = post_json(&c, &h.url("/run"), None, &body).await;
    assert_error(s, &v, 401);
    let (s, v) = post_json(&c, &h.url("/run"), None, &ping("*")).await;
    assert_error(s, &v, 401);
}

fn check_login_reply(r: &reqwest::Response) -> String {
    let token = header(r, "x-auth-token").expect("X-Auth-Token").to_owned();
    let cookie = header(r, "set-cookie").expect("Set-Cookie");
    assert!(
        cookie.starts_with(&format!("session_id={token};")),
        "{cookie}"
    );
    assert!(cookie.contains("Path=/"), "{cookie}");
    token
}

#[tokio::test(flavor = "multi_thread")]
async fn login_forms_and_token_uses() {
    let h = Halite::cherrypy("");
    let c = client();
    let r = c.get(h.url("/login")).send().await.unwrap();
    assert_eq!(header(&r, "www-authenticate"), Some("Session"));
    let (s, v) = status_json(r).await;
    assert_eq!(s, 200);
    assert_eq!(v["return"], "Please log in");

    // JSON
    let r = c
        .post(h.url("/login"))
        .json(&creds("saltdev"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = check_login_reply(&r);
    let v: Json = r.json().await.unwrap();
    let ret = &v["return"][0];
    assert_eq!(ret["token"], json!(token));
    assert_eq!(ret["user"], "saltdev");
    assert_eq!(ret["eauth"], "auto");
    assert!(ret["start"].as_f64().unwrap() < ret["expire"].as_f64().unwrap());
    let mut perms: Vec<&str> = ret["perms"]
        .as_array()
        .expect("perms is a list")
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    perms.sort();
    assert_eq!(perms, [".*", "@jobs", "@runner", "@wheel"]);
    assert_eq!(
        ret.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["token", "expire", "start", "user", "eauth", "perms"]
    );

    // YAML
    let r = c
        .post(h.url("/login"))
        .header("Content-Type", "application/x-yaml")
        .body("eauth: auto\nusername: limited\npassword: x\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check_login_reply(&r);
    let v: Json = r.json().await.unwrap();
    assert_eq!(v["return"][0]["user"], "limited");
    assert_eq!(v["return"][0]["perms"], json!(["test.ping"]));

    // urlencoded, and the trailing slash CherryPy accepts
    let r = c
        .post(h.url("/login/"))
        .form(&[("eauth", "auto"), ("username", "hal"), ("password", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hal = check_login_reply(&r);
    let v: Json = r.json().await.unwrap();
    assert_eq!(v["return"][0]["user"], "hal");

    // Errors: wrong PAM password, unknown eauth, no body.
    let body = json!({"eauth": "pam", "username": "saltdev", "password": "not-the-password"});
    let (s, v) = post_json(&c, &h.url("/login"), None, &body).await;
    assert_error(s, &v, 401);
    let body = json!({"eauth": "nosuch", "username": "saltdev", "password": "x"});
    let (s, v) = post_json(&c, &h.url("/login"), None, &body).await;
    assert_error(s, &v, 401);
    let r = c.post(h.url("/login")).send().await.unwrap();
    let (s, v) = status_json(r).await;
    assert_error(s, &v, 400);

    // The token works as X-Auth-Token, as the cookie, and as lowstate token.
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &echo("hdr")).await;
    assert!(s == 200 && echoed(&v, "hdr"), "{s} {v}");
    let r = c
        .get(h.url("/keys/ms-2"))
        .header("Cookie", format!("other=1; session_id={hal}"))
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["return"]["minions"]["ms-2"].is_string(), "{v}");
    let mut body = echo("low");
    body[0]["token"] = json!(token);
    let (s, v) = post_json(&c, &h.url("/run"), None, &body).await;
    assert!(s == 200 && echoed(&v, "low"), "{s} {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_throttling() {
    // Own instance: the throttle also counts failures per client address.
    let h = Halite::cherrypy("");
    let c = client();
    let user = unique("throttle-");
    // An eauth the master does not know fails at once (a wrong PAM password
    // takes seconds).
    let body = json!({"eauth": "nosuch", "username": user, "password": "p"});
    for i in 0..5 {
        let (s, v) = post_json(&c, &h.url("/login"), None, &body).await;
        assert_eq!(s, 401, "failure {i}: {v}");
    }
    let (s, v) = post_json(&c, &h.url("/login"), None, &body).await;
    assert_error(s, &v, 429);
    // Even right credentials of that user are refused while throttled.
    let good = json!({"eauth": "auto", "username": user, "password": "p"});
    let (s, _) = post_json(&c, &h.url("/login"), None, &good).await;
    assert_eq!(s, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_token() {
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    let (s, _) = post_json(&c, &h.url("/"), Some(&token), &echo("x")).await;
    assert_eq!(s, 200);
    let r = c
        .post(h.url("/logout"))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = header(&r, "set-cookie").unwrap();
    assert!(cookie.starts_with("session_id=;"), "{cookie}");
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &echo("x")).await;
    assert_error(s, &v, 401);
    let body = json!({"client": "runner", "fun": "test.arg", "token": token});
    let (s, v) = post_json(&c, &h.url("/run"), None, &body).await;
    assert_error(s, &v, 401);
    // Logging out again, or without a token: 401.
    let r = c
        .post(h.url("/logout"))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(h.url("/logout")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Deliberate (docs/COMPATIBILITY.md): GET /logout is 405 (salt-api: 500).
    let (s, v) = get_json(&c, &h.url("/logout"), None).await;
    assert_error(s, &v, 405);
}

/// A halite that cannot reach the master's token store on disk (another
/// host, or a cache driver such as redis) still revokes the token on
/// `/logout`, through the master, and everywhere: here its `cachedir` (and
/// so `token_dir`, which Salt derives from it) is an empty directory of its
/// own, and another halite refuses the token afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_through_the_master_when_the_tokens_are_not_on_disk() {
    let elsewhere = temp_dir("tokens-elsewhere");
    let remote = HaliteBuilder::new(&lab())
        .surface("rest_cherrypy", json!({"disable_ssl": true}))
        .set("cachedir", json!(elsewhere))
        .start_blocking();
    let local = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &local.base, "saltdev").await;
    let (s, _) = post_json(&c, &remote.url("/"), Some(&token), &echo("x")).await;
    assert_eq!(
        s, 200,
        "a token minted through one halite works on the other"
    );
    let r = c
        .post(remote.url("/logout"))
        .header("X-Auth-Token", &token)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Json = r.json().await.unwrap();
    assert_eq!(body["return"], "Your token has been cleared", "{body}");
    for h in [&remote, &local] {
        let (s, v) = post_json(&c, &h.url("/"), Some(&token), &echo("x")).await;
        assert_error(s, &v, 401);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint() {
    let h = Halite::cherrypy("");
    let c = client();
    let (s, v) = post_json(&c, &h.url("/token"), None, &creds("saltdev")).await;
    assert_eq!(s, 200, "{v}");
    // A bare list, not {"return": ...}.
    let t = &v.as_array().expect("a bare list")[0];
    assert_eq!(t["name"], "saltdev");
    assert_eq!(t["eauth"], "auto");
    assert!(t["expire"].is_number() && t["start"].is_number());
    let token = t["token"].as_str().unwrap();
    let (s, v) = post_json(&c, &h.url("/"), Some(token), &echo("tok")).await;
    assert!(s == 200 && echoed(&v, "tok"), "{s} {v}");
    let (s, v) = post_json(&c, &h.url("/token"), None, &json!({"username": "saltdev"})).await;
    assert_error(s, &v, 400);
    let body = json!({"eauth": "nosuch", "username": "u", "password": "p"});
    let (s, v) = post_json(&c, &h.url("/token"), None, &body).await;
    assert_error(s, &v, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn minions_and_jobs() {
    let lab = lab();
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    // GET /minions cannot set a timeout: retried while the shared lab is
    // slow to answer (a minion that does not return has no grains).
    let mut v = Json::Null;
    for _ in 0..3 {
        let (s, got) = get_json(&c, &h.url("/minions"), Some(&token)).await;
        assert_eq!(s, 200, "{got}");
        v = got;
        if lab.minions.iter().all(|m| v["return"][0][m].is_object()) {
            break;
        }
    }
    let grains = v["return"][0].as_object().unwrap();
    for m in &lab.minions {
        assert_eq!(grains[m]["id"], json!(m), "grains of {m}");
    }
    let (s, v) = get_json(&c, &h.url("/minions/ms-1"), Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    let only: Vec<&String> = v["return"][0].as_object().unwrap().keys().collect();
    assert_eq!(only, ["ms-1"]);
    assert!(v["return"][0]["ms-1"]["os"].is_string());
    let (s, v) = get_json(&c, &h.url("/minions"), None).await;
    assert_error(s, &v, 401);

    // POST /minions: a job, 202, links to /jobs.
    let body = json!({"tgt": "ms-*", "fun": "test.arg", "arg": ["halite"]});
    let (s, v) = post_json(&c, &h.url("/minions"), Some(&token), &body).await;
    assert_eq!(s, 202, "{v}");
    let jid = v["return"][0]["jid"].as_str().expect("a jid").to_owned();
    let mut minions: Vec<String> =
        serde_json::from_value(v["return"][0]["minions"].clone()).unwrap();
    minions.sort();
    assert_eq!(minions, lab.minions);
    assert_eq!(
        v["_links"]["jobs"],
        json!([{"href": format!("/jobs/{jid}")}])
    );
    let (s, v) = post_json(&c, &h.url("/minions"), None, &body).await;
    assert_error(s, &v, 401);

    // GET /jobs/<jid>: wait until every minion returned (not a timing
    // assertion: the loop only bounds the wait).
    let deadline = tokio::time::Instant::now() + WAIT;
    let v = loop {
        let (s, v) = get_json(&c, &h.url(&format!("/jobs/{jid}")), Some(&token)).await;
        assert_eq!(s, 200, "{v}");
        if v["return"][0].as_object().map(|m| m.len()) == Some(lab.minions.len()) {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {jid}: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(v["info"][0]["jid"], json!(jid));
    assert_eq!(v["info"][0]["Function"], "test.arg");
    for m in &lab.minions {
        assert_eq!(v["return"][0][m]["args"], json!(["halite"]), "{v}");
    }
    let (s, v) = get_json(&c, &h.url("/jobs"), Some(&token)).await;
    assert_eq!(s, 200);
    assert!(v["return"][0].get(&jid).is_some(), "{jid} in /jobs");
    assert_eq!(v["return"][0][&jid]["Function"], "test.arg");
    let (s, v) = get_json(&c, &h.url("/jobs"), None).await;
    assert_error(s, &v, 401);
}

/// Deletes a minion key created by a test, even when the test fails.
struct KeyGuard(String);

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let out = std::process::Command::new(repo_root().join("scripts/lab"))
            .args(["cli", "salt-key", "-d", &self.0, "-y"])
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(
                    "could not delete key {}: {}",
                    self.0,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_list_finger_and_gen_accept() {
    // An accepted key is a minion every `*` job of the tests beside this one
    // would wait for, in vain: the lab is this test's alone (the guard is
    // dropped last, after the key is deleted).
    let _alone = alone();
    let lab = lab();
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    let (s, v) = get_json(&c, &h.url("/keys"), Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    for m in &lab.minions {
        assert!(
            v["return"]["minions"]
                .as_array()
                .unwrap()
                .contains(&json!(m)),
            "{v}"
        );
    }
    let (s, v) = get_json(&c, &h.url("/keys/ms-0"), Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["return"]["minions"]["ms-0"]
        .as_str()
        .unwrap()
        .contains(':'));
    let (s, v) = get_json(&c, &h.url("/keys"), None).await;
    assert_error(s, &v, 401);

    let id = unique("halitetest-");
    let _guard = KeyGuard(id.clone());
    let mut form = vec![("mid", id.as_str())];
    form.extend([
        ("eauth", "auto"),
        ("username", "saltdev"),
        ("password", "x"),
    ]);
    let r = c.post(h.url("/keys")).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("application/x-tar"));
    let disposition = header(&r, "content-disposition").unwrap().to_owned();
    assert!(
        disposition.contains(&format!("saltkeys-{id}.tar")),
        "{disposition}"
    );
    let bytes = r.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
        files.insert(name, text);
    }
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["minion.pem", "minion.pub"]
    );
    assert!(files["minion.pub"].contains("PUBLIC KEY"), "{files:?}");
    assert!(files["minion.pem"].contains("PRIVATE KEY"));
    let (s, v) = get_json(&c, &h.url(&format!("/keys/{id}")), Some(&token)).await;
    assert_eq!(s, 200);
    assert!(v["return"]["minions"][&id].is_string(), "accepted: {v}");

    // Delete through the API (the guard makes sure on failure).
    let body = json!({"client": "wheel", "fun": "key.delete", "match": id, "token": token});
    let (s, v) = post_json(&c, &h.url("/run"), None, &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["return"][0]["data"]["success"], json!(true), "{v}");
    let (s, v) = get_json(&c, &h.url("/keys"), Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["return"]["minions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("ms-0"))),
        "{v}"
    );
    assert!(!v.to_string().contains(&id), "{v}");

    // Errors: no mid, bad credentials.
    let body = creds("saltdev");
    let (s, v) = post_json(&c, &h.url("/keys"), None, &body).await;
    assert_error(s, &v, 400);
    let body =
        json!({"mid": unique("halitetest-"), "eauth": "nosuch", "username": "u", "password": "p"});
    let (s, v) = post_json(&c, &h.url("/keys"), None, &body).await;
    assert_error(s, &v, 401);
}

async fn open_events(c: &reqwest::Client, req: reqwest::RequestBuilder) -> Sse {
    let _ = c;
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    let mut sse = Sse::new(r);
    let first = sse.first_line(WAIT).await.expect("a first line");
    assert_eq!(first, "retry: 400");
    sse
}

#[tokio::test(flavor = "multi_thread")]
async fn events_stream() {
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    let url = h.url("/events");
    // Every way to give the token opens the stream.
    let mut by_header = open_events(&c, c.get(&url).header("X-Auth-Token", &token)).await;
    let _by_cookie = open_events(
        &c,
        c.get(&url).header("Cookie", format!("session_id={token}")),
    )
    .await;
    // Deliberate (docs/COMPATIBILITY.md): ?token= and ?salt_token= work (salt-api: 400).
    let _by_query = open_events(&c, c.get(format!("{url}?token={token}"))).await;
    let _by_salt = open_events(&c, c.get(format!("{url}?salt_token={token}"))).await;
    for bad in [
        c.get(&url),
        c.get(&url).header("X-Auth-Token", "ef".repeat(32)),
        c.get(format!("{url}?token=not-a-token")),
    ] {
        let (s, v) = status_json(bad.send().await.unwrap()).await;
        assert_error(s, &v, 401);
    }

    // A job's new and ret events.
    let body = json!({"client": "local_async", "tgt": "ms-0", "fun": "test.ping", "timeout": 60});
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &body).await;
    assert_eq!(s, 200, "{v}");
    let jid = v["return"][0]["jid"].as_str().unwrap().to_owned();
    let new_tag = format!("salt/job/{jid}/new");
    let ev = by_header
        .until(WAIT, &new_tag, |e| e["tag"] == json!(new_tag))
        .await;
    assert_eq!(ev["data"]["fun"], "test.ping");
    let ret_tag = format!("salt/job/{jid}/ret/ms-0");
    let ev = by_header
        .until(WAIT, &ret_tag, |e| e["tag"] == json!(ret_tag))
        .await;
    assert_eq!(ev["data"]["return"], json!(true));

    // A failed login: the master fires salt/job/error (salt/job/<jid>/error
    // when the publish carries a jid, as halite's do) with the password in
    // `kwargs`; halite redacts it.
    let secret = unique("Sekrit-");
    let user = unique("nobody-");
    let body = json!({"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 60, "eauth": "auto", "username": user, "password": secret});
    let (s, _) = post_json(&c, &h.url("/run"), None, &body).await;
    assert_eq!(s, 401);
    let ev = by_header
        .until(WAIT, "salt/job/.../error", |e| {
            let tag = e["tag"].as_str().unwrap_or("");
            tag.starts_with("salt/job/")
                && tag.ends_with("/error")
                && e["data"]["kwargs"]["username"] == json!(user)
        })
        .await;
    assert_eq!(ev["data"]["kwargs"]["password"], "<redacted>", "{ev}");
    // Read a little more, then check the secret never went out.
    let marker = unique("marker-");
    let (s, _) = post_json(
        &c,
        &h.url("/hook/marker"),
        Some(&token),
        &json!({"m": marker}),
    )
    .await;
    assert_eq!(s, 200);
    by_header
        .until(WAIT, "the marker", |e| e.to_string().contains(&marker))
        .await;
    assert!(!by_header.all.contains(&secret), "the password leaked");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message (other frames skipped); panics after [`WAIT`].
async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text message: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_stream() {
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    // /ws/<token>
    let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url(&format!("/ws/{token}")))
        .await
        .expect("ws/<token>");
    ws.send(Message::Text("websocket client ready".into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "server received message");
    // /ws with the header, formatted events
    let mut req = h.ws_url("/ws?format_events").into_client_request().unwrap();
    req.headers_mut()
        .insert("X-Auth-Token", token.parse().unwrap());
    let (mut fws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws with header");
    fws.send(Message::Text("websocket client ready".into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut fws).await, "server received message");

    let body = json!({"client": "local_async", "tgt": "ms-1", "fun": "test.ping", "timeout": 60});
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &body).await;
    assert_eq!(s, 200, "{v}");
    let jid = v["return"][0]["jid"].as_str().unwrap().to_owned();
    let new_tag = format!("salt/job/{jid}/new");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {new_tag} on /ws"
        );
        let t = next_text(&mut ws).await;
        let data = t.strip_prefix("data: ").expect("data: frame");
        let ev: Json = serde_json::from_str(data.trim_end()).unwrap();
        if ev["tag"] == json!(new_tag) {
            assert_eq!(ev["data"]["fun"], "test.ping");
            break;
        }
    }
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {jid} in format_events"
        );
        let t = next_text(&mut fws).await;
        let v: Json = serde_json::from_str(&t).expect("format_events JSON");
        if let Some(job) = v.get("jobs").and_then(|j| j.get(&jid)) {
            assert_eq!(job["fun"], "test.ping");
            assert!(job["minions"].get("ms-1").is_some(), "{job}");
            break;
        }
    }
    // Bad token: the handshake is refused.
    let err = tokio_tungstenite::connect_async(h.ws_url(&format!("/ws/{}", "aa".repeat(32))))
        .await
        .expect_err("bad token");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_fires_events() {
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    let mut sse = open_events(&c, c.get(h.url("/events")).header("X-Auth-Token", &token)).await;
    let marker = unique("m-");
    let r = c
        .post(h.url("/hook/a/b"))
        .header("X-Auth-Token", &token)
        .header("Cookie", format!("session_id={token}"))
        .header("X-Custom", "v1")
        .json(&json!({"marker": marker, "n": 1}))
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert_eq!((s, v), (200, json!({"success": true})));
    let ev = sse
        .until(WAIT, "the hook event", |e| {
            e["data"]["post"]["marker"] == json!(marker)
        })
        .await;
    assert_eq!(ev["tag"], "salt/netapi/hook/a/b");
    assert_eq!(ev["data"]["post"], json!({"marker": marker, "n": 1}));
    let body: Json = serde_json::from_str(ev["data"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["marker"], json!(marker));
    let headers = ev["data"]["headers"].as_object().unwrap();
    assert_eq!(headers["X-Custom"], "v1");
    assert_eq!(headers["Content-Type"], "application/json");
    // Deliberate (docs/COMPATIBILITY.md): credentials are not copied into the event.
    assert!(!headers.contains_key("X-Auth-Token") && !headers.contains_key("Cookie"));
    assert!(!ev.to_string().contains(&token));

    // /hook without a path; urlencoded body.
    let marker2 = unique("m-");
    let r = c
        .post(h.url("/hook"))
        .header("X-Auth-Token", &token)
        .form(&[("marker", marker2.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = sse
        .until(WAIT, "the /hook event", |e| {
            e["data"]["post"]["marker"] == json!(marker2)
        })
        .await;
    assert_eq!(ev["tag"], "salt/netapi/hook");

    // Auth is required by default.
    let (s, v) = post_json(&c, &h.url("/hook/a"), None, &json!({})).await;
    assert_error(s, &v, 401);
    let (s, v) = post_json(&c, &h.url("/hook/a"), Some(&"ab".repeat(32)), &json!({})).await;
    assert_error(s, &v, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_options() {
    let h = Halite::cherrypy("webhook_disable_auth: true\nwebhook_url: /myhook");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    let mut sse = open_events(&c, c.get(h.url("/events")).header("X-Auth-Token", &token)).await;
    let marker = unique("m-");
    let (s, v) = post_json(&c, &h.url("/myhook/x/y"), None, &json!({"marker": marker})).await;
    assert_eq!((s, v), (200, json!({"success": true})));
    let ev = sse
        .until(WAIT, "the hook event", |e| {
            e["data"]["post"]["marker"] == json!(marker)
        })
        .await;
    assert_eq!(ev["tag"], "salt/netapi/hook/x/y");
    let (s, _) = post_json(&c, &h.url("/hook/x"), None, &json!({})).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_auth() {
    let h = Halite::cherrypy("");
    let c = client();
    let (s, v) = get_json(&c, &h.url("/stats"), None).await;
    assert_error(s, &v, 401);
    let token = login(&c, &h.base, "saltdev").await;
    let (s, v) = get_json(&c, &h.url("/stats"), Some(&token)).await;
    assert_eq!(s, 200);
    assert!(v.is_object() && !v.as_object().unwrap().is_empty(), "{v}");

    let open = Halite::cherrypy("stats_disable_auth: true");
    let (s, v) = get_json(&c, &open.url("/stats"), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(v.is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn content_negotiation_and_errors() {
    let h = Halite::cherrypy("max_request_body_size: 2000");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    // YAML out.
    let r = c
        .post(h.url("/"))
        .header("X-Auth-Token", &token)
        .header("Accept", "application/x-yaml")
        .json(&echo("yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("application/x-yaml"));
    let text = r.text().await.unwrap();
    let v: Json = serde_norway::from_str(&text).expect("YAML body");
    assert!(echoed(&v, "yaml"), "{text}");
    // YAML in (a lowstate list).
    let r = c
        .post(h.url("/"))
        .header("X-Auth-Token", &token)
        .header("Content-Type", "application/x-yaml")
        .body("- client: runner\n  fun: test.arg\n  arg: [yamlin]\n")
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert!(s == 200 && echoed(&v, "yamlin"), "{s} {v}");
    // Errors in the negotiated format.
    let r = c
        .post(h.url("/"))
        .header("Accept", "application/x-yaml")
        .json(&ping("*"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "content-type"), Some("application/x-yaml"));
    let v: Json = serde_norway::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["status"], 401);
    assert!(v["return"].is_string());
    // Nothing acceptable.
    let r = c
        .get(h.url("/"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert_error(s, &v, 406);
    // Unsupported body type, invalid JSON, invalid YAML.
    let r = c
        .post(h.url("/"))
        .header("X-Auth-Token", &token)
        .header("Content-Type", "application/xml")
        .body("<x/>")
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert_error(s, &v, 406);
    let r = c
        .post(h.url("/run"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert_error(s, &v, 400);
    let r = c
        .post(h.url("/run"))
        .header("Content-Type", "application/x-yaml")
        .body("a: [unclosed")
        .send()
        .await
        .unwrap();
    let (s, v) = status_json(r).await;
    assert_error(s, &v, 400);
    // Body limit (2000 bytes here): over is 413, under runs.
    let mut chunk = echo("big");
    chunk[0]["token"] = json!(token);
    chunk[0]["arg"] = json!(["x".repeat(2100)]);
    let (s, v) = post_json(&c, &h.url("/run"), None, &chunk).await;
    assert_error(s, &v, 413);
    let small = "x".repeat(1000);
    chunk[0]["arg"] = json!([small]);
    let (s, v) = post_json(&c, &h.url("/run"), None, &chunk).await;
    assert!(s == 200 && echoed(&v, &small), "{s} {v}");
    // Unknown path: 404 in JSON.
    let (s, v) = get_json(&c, &h.url("/nosuch"), None).await;
    assert_error(s, &v, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_headers_and_preflight() {
    // Only configured origins get CORS headers (salt-api reflects any
    // origin with credentials allowed); the shape is rest_cherrypy's.
    let h = Halite::cherrypy("cors_origins: ['https://ui.example']");
    let c = client();
    let r = c
        .get(h.url("/"))
        .header("Origin", "https://ui.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://ui.example")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("GET, POST")
    );
    let r = c.get(h.url("/")).send().await.unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = c
        .get(h.url("/"))
        .header("Origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = c
        .request(reqwest::Method::OPTIONS, h.url("/run"))
        .header("Origin", "https://ui.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "X-Auth-Token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, POST")
    );
    let allowed = header(&r, "access-control-allow-headers").unwrap();
    assert!(allowed.contains("X-Auth-Token") && allowed.contains("Content-Type"));
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://ui.example")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn root_prefix() {
    let h = Halite::cherrypy("root_prefix: /api");
    assert!(h.base.ends_with("/api"));
    let c = client();
    let (s, v) = get_json(&c, &h.url("/"), None).await;
    assert_eq!((s, &v["return"]), (200, &json!("Welcome")));
    let token = login(&c, &h.base, "saltdev").await;
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &echo("ok")).await;
    assert!(s == 200 && echoed(&v, "ok"), "{s} {v}");
    let (s, _) = get_json(&c, &h.url("/keys/ms-0"), Some(&token)).await;
    assert_eq!(s, 200);
    let root = format!("http://127.0.0.1:{}", h.port);
    let (s, _) = get_json(&c, &format!("{root}/login"), None).await;
    assert_eq!(s, 404);
    let (s, _) = post_json(&c, &format!("{root}/run"), None, &ping("*")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_disabled() {
    let h = Halite::cherrypy("enable_sessions: False");
    let c = client();
    let (s, v) = post_json(&c, &h.url("/login"), None, &creds("saltdev")).await;
    assert_error(s, &v, 404);
    let (s, _) = get_json(&c, &h.url("/login"), None).await;
    assert_eq!(s, 404);
    let (s, _) = get_json(&c, &h.url("/minions"), None).await;
    assert_eq!(s, 404);
    let mut chunk = echo("nosess");
    chunk[0]
        .as_object_mut()
        .unwrap()
        .extend(creds("saltdev").as_object().unwrap().clone());
    let (s, v) = post_json(&c, &h.url("/run"), None, &chunk).await;
    assert!(s == 200 && echoed(&v, "nosess"), "{s} {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn static_and_app() {
    let dir = TempDir::new();
    let statics = dir.path().join("static");
    std::fs::create_dir_all(statics.join("css")).unwrap();
    std::fs::write(statics.join("css/site.css"), "body { color: teal }").unwrap();
    let app = dir.path().join("index.html");
    std::fs::write(&app, "<html>halite app</html>").unwrap();
    let section = format!(
        "disable_ssl: true\nstatic: {}\nstatic_path: /assets\napp: {}\napp_path: /ui",
        statics.display(),
        app.display()
    );
    let h = Halite::cherrypy_in(dir, &section);
    let c = client();
    let r = c.get(h.url("/assets/css/site.css")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "body { color: teal }");
    let r = c.get(h.url("/assets/nope.css")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    for path in ["/ui", "/ui/", "/ui/deep/link"] {
        let r = c.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), "<html>halite app</html>", "{path}");
    }
    // The API itself is still there.
    let (s, v) = get_json(&c, &h.url("/"), None).await;
    assert_eq!((s, &v["return"]), (200, &json!("Welcome")));
}

#[tokio::test(flavor = "multi_thread")]
async fn trailing_slashes() {
    let h = Halite::cherrypy("");
    let c = client();
    let token = login(&c, &h.base, "saltdev").await;
    let (s, v) = get_json(&c, &h.url("/minions/"), Some(&token)).await;
    assert_eq!(s, 200, "{v}");
    let mut body = echo("slash");
    body[0]["token"] = json!(token);
    let (s, v) = post_json(&c, &h.url("/run/"), None, &body).await;
    assert!(s == 200 && echoed(&v, "slash"), "{s} {v}");
    let (s, _) = get_json(&c, &h.url("/keys/"), Some(&token)).await;
    assert_eq!(s, 200);
}

struct Pki {
    ca: String,
    intermediate: String,
    leaf: String,
    leaf_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "halite test root");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut int_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    int_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    int_params
        .distinguished_name
        .push(DnType::CommonName, "halite test intermediate");
    let int_key = KeyPair::generate().unwrap();
    let int = int_params.signed_by(&int_key, &ca, &ca_key).unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &int, &int_key).unwrap();
    Pki {
        ca: ca.pem(),
        intermediate: int.pem(),
        leaf: leaf.pem(),
        leaf_key: leaf_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_chain() {
    let pki = pki();
    let dir = TempDir::new();
    let crt = dir.path().join("leaf.crt");
    let key = dir.path().join("leaf.key");
    let chain = dir.path().join("chain.crt");
    std::fs::write(&crt, &pki.leaf).unwrap();
    std::fs::write(&key, &pki.leaf_key).unwrap();
    std::fs::write(&chain, &pki.intermediate).unwrap();
    let section = format!(
        "ssl_crt: {}\nssl_key: {}\nssl_chain: {}",
        crt.display(),
        key.display(),
        chain.display()
    );
    let h = Halite::cherrypy_in(dir, &section);
    // Only the root is trusted: verification needs the served intermediate.
    let c = builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let (s, v) = get_json(&c, &h.url("/"), None).await;
    assert_eq!((s, &v["return"]), (200, &json!("Welcome")));
    let token = login(&c, &h.base, "saltdev").await;
    let (s, v) = post_json(&c, &h.url("/"), Some(&token), &echo("ok")).await;
    assert!(s == 200 && echoed(&v, "ok"), "{s} {v}");
    // Plain HTTP on the TLS port does not get an API answer.
    let plain = format!("http://127.0.0.1:{}/", h.port);
    let r = client().get(&plain).send().await;
    assert!(r.map(|r| r.status() != 200).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn https_without_chain_serves_only_the_leaf() {
    let pki = pki();
    let dir = TempDir::new();
    let crt = dir.path().join("leaf.crt");
    let key = dir.path().join("leaf.key");
    std::fs::write(&crt, &pki.leaf).unwrap();
    std::fs::write(&key, &pki.leaf_key).unwrap();
    // Readiness is checked trusting the intermediate directly.
    let section = format!("ssl_crt: {}\nssl_key: {}", crt.display(), key.display());
    let h = Halite::cherrypy_in(dir, &section);
    let root_only = builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(
        root_only.get(h.url("/")).send().await.is_err(),
        "without ssl_chain the intermediate is not sent"
    );
}

#[test]
fn refuses_to_start_without_tls_or_disable_ssl() {
    let port = free_port();
    let (status, stderr) = run_to_exit(&format!("host: 127.0.0.1\nport: {port}"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ssl_crt") && stderr.contains("disable_ssl"),
        "{stderr}"
    );
    let (status, stderr) = run_to_exit(&format!(
        "host: 127.0.0.1\nport: {port}\nssl_crt: /nonexistent/halite.crt\nssl_key: /nonexistent/halite.key"
    ));
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("TLS") || stderr.contains("certificate"),
        "{stderr}"
    );
}
