//! The rest_wsgi surface against the real lab: every status code, every
//! client, the seed's examples, client disconnects, secrets and TLS.

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// Every minion of the lab answered `true`.
#[track_caller]
fn all_true(lab: &Lab, v: &Value) {
    assert_eq!(sorted_keys(v), lab.minions, "minions in {v}");
    for m in &lab.minions {
        assert_eq!(v[m], json!(true), "{m} in {v}");
    }
}

#[tokio::test]
async fn get_root_and_other_methods() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let url = h.wsgi_url();
    let r = Reply::from(h.http.get(format!("{url}/")).send().await.unwrap()).await;
    r.expect_status(200);
    // Every rest_wsgi reply is `{"return": ...}`; clients unwrap `return`.
    let v = r.json();
    assert!(
        v.as_object().is_some_and(|m| m.len() == 1) && v["return"].is_string(),
        "GET / must answer {{\"return\": \"<message>\"}}: {}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    for method in ["PUT", "DELETE", "PATCH"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = Reply::from(
            h.http
                .request(m, format!("{url}/"))
                .header("Content-Type", "application/json")
                .body("[]")
                .send()
                .await
                .unwrap(),
        )
        .await;
        r.expect_error(405, &[]);
    }
}

#[tokio::test]
async fn wrong_content_type_is_406() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let body = serde_json::to_vec(&json!([low(
        &hal("pw"),
        json!({"client": "local", "tgt": "*", "fun": "test.ping"})
    )]))
    .unwrap();
    for ct in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
        Some("application/yaml"),
    ] {
        let r = h.post("rest_wsgi", "/", ct, body.clone()).await;
        let msg = r.expect_error(406, &["pw"]);
        assert!(
            msg.contains("application/json"),
            "406 message should say what is accepted: {msg}"
        );
    }
    // Parameters after the media type are fine.
    let r = h
        .post(
            "rest_wsgi",
            "/",
            Some("application/json; charset=utf-8"),
            body,
        )
        .await;
    r.expect_status(200);
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let cases: [&[u8]; 6] = [
        br#"[{"client": "local", "tgt": "*""#,
        b"not json at all",
        br#"{"eauth": "auto", "username": "hal", "password": "pw400", "client": "local", "tgt": "*", "fun": "test.ping"}"#,
        br#"[1, 2]"#,
        br#"["local", "test.ping"]"#,
        br#"[{"eauth": "auto", "username": "hal", "password": "pw400", "client": "local", "tgt": "*", "fun": "test.ping"}, null]"#,
    ];
    for body in cases {
        let r = h
            .post("rest_wsgi", "/", Some("application/json"), body.to_vec())
            .await;
        r.expect_error(400, &["pw400"]);
    }
}

#[tokio::test]
async fn authentication_and_authorization_failures_are_401() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let ping = json!({"client": "local", "tgt": "*", "fun": "test.ping"});

    // No credentials at all.
    let r = h.wsgi(&json!([ping.clone()])).await;
    r.expect_error(401, &[]);

    // A wrong PAM password.
    let wrong = unique_secret("wrong-pam");
    let r = h
        .wsgi(&json!([low(
            &eauth_creds("pam", &lab.pam_user, &wrong),
            ping.clone()
        )]))
        .await;
    r.expect_error(401, &[&wrong]);

    // A well-formed token the master does not know.
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut tok = serde_json::Map::new();
    tok.insert("token".into(), json!(unknown));
    let r = h.wsgi(&json!([low(&tok, ping.clone())])).await;
    r.expect_error(401, &[unknown]);

    // A token that is not even a token.
    tok.insert("token".into(), json!("../../etc/passwd"));
    let r = h.wsgi(&json!([low(&tok, ping.clone())])).await;
    r.expect_error(401, &["passwd"]);

    // The limited user: test.arg denied, test.ping allowed.
    let pw = unique_secret("limited");
    let limited = eauth_creds("auto", "limited", &pw);
    let r = h
        .wsgi(&json!([low(
            &limited,
            json!({"client": "local", "tgt": "*", "fun": "test.arg", "arg": [1]})
        )]))
        .await;
    r.expect_error(401, &[&pw]);
    let r = h.wsgi(&json!([low(&limited, ping.clone())])).await;
    r.expect_status(200);
    all_true(&lab, &r.ret()[0]);
    // ... and no runner at all.
    let r = h
        .wsgi(&json!([low(
            &limited,
            json!({"client": "runner", "fun": "jobs.list_jobs"})
        )]))
        .await;
    r.expect_error(401, &[&pw]);
}

#[tokio::test]
async fn master_down_is_503() {
    let lab = lab();
    let empty_sock_dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let h = HaliteBuilder::wsgi(&lab)
        .set("ret_port", json!(closed))
        .set("sock_dir", json!(empty_sock_dir.path()))
        .wait(Wait::Live)
        .start()
        .await;
    let r = Reply::from(
        h.http
            .get(format!("{}/health/ready", h.wsgi_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503, "ready with the master down: {}", r.text());
    let pw = unique_secret("down");
    for lowstate in [
        json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
        json!({"client": "local_async", "tgt": "*", "fun": "test.ping"}),
        json!({"client": "runner", "fun": "jobs.list_jobs"}),
        json!({"client": "wheel", "fun": "key.list_all"}),
    ] {
        let r = h.wsgi(&json!([low(&hal(&pw), lowstate.clone())])).await;
        let msg = r.expect_error(503, &[&pw]);
        eprintln!("{lowstate} with the master down: {msg}");
    }
}

#[tokio::test]
async fn master_not_answering_is_504() {
    let lab = lab();
    // A runner that outlives its timeout: RunnerClient's SaltClientTimeout.
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let pw = unique_secret("slow");
    let r = h
        .wsgi(&json!([low(
            &hal(&pw),
            json!({"client": "runner", "fun": "test.sleep", "s_time": 5, "timeout": 1})
        )]))
        .await;
    let msg = r.expect_error(504, &[&pw]);
    assert!(msg.contains("timed out"), "{msg}");
    drop(h);

    // A request port that completes the ZMTP handshake as a master's ROUTER
    // socket does, then never answers a request: the request times out.
    // Never ready (/health/ready needs the master to answer a ping): wait
    // for the listener only.
    let zmq_silent = silent_master(true).await;
    let h = HaliteBuilder::wsgi(&lab)
        .set("ret_port", json!(zmq_silent.0))
        .wait(Wait::Live)
        .start()
        .await;
    for lowstate in [
        json!({"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 2}),
        json!({"client": "local_async", "tgt": "*", "fun": "test.ping", "timeout": 2}),
    ] {
        let r = h.wsgi(&json!([low(&hal(&pw), lowstate.clone())])).await;
        let msg = r.expect_error(504, &[&pw]);
        eprintln!("{lowstate} against a master that never answers: {msg}");
    }
    drop(h);
    zmq_silent.1.abort();

    // A port that accepts TCP connections but never even greets: halite cannot
    // open a channel to it, which is "master unavailable" (as rest_cherrypy maps
    // SaltReqTimeoutError), 503.
    let tcp_silent = silent_master(false).await;
    let h = HaliteBuilder::wsgi(&lab)
        .set("ret_port", json!(tcp_silent.0))
        .wait(Wait::Live)
        .start()
        .await;
    let r = h
        .wsgi(&json!([low(
            &hal(&pw),
            json!({"client": "wheel", "fun": "key.list_all"})
        )]))
        .await;
    let msg = r.expect_error(503, &[&pw]);
    eprintln!("wheel against a port that never greets: {msg}");
    tcp_silent.1.abort();
}

/// A listener on a free port that holds every connection and never answers
/// a request; with `zmtp`, it first completes the ZMTP 3.1 handshake the way
/// a Salt master's ROUTER socket does.
async fn silent_master(zmtp: bool) -> (u16, tokio::task::JoinHandle<()>) {
    use salt_client::transport::zmtp;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if zmtp {
                    let mut hello = zmtp::greeting().to_vec();
                    let mut body = vec![5];
                    body.extend_from_slice(b"READY");
                    body.push(11);
                    body.extend_from_slice(b"Socket-Type");
                    body.extend_from_slice(&6u32.to_be_bytes());
                    body.extend_from_slice(b"ROUTER");
                    zmtp::put_frame(&mut hello, &body, false, true);
                    if s.write_all(&hello).await.is_err() {
                        return;
                    }
                }
                // Read and ignore everything until the peer goes away.
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn master_side_exception_is_500() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let pw = unique_secret("exc");
    // The master raises while handling a load whose eauth is not a string.
    let mut c = hal(&pw);
    c.insert("eauth".into(), json!(["auto"]));
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "wheel", "fun": "key.list_all"})
        )]))
        .await;
    r.expect_error(500, &[&pw]);
}

/// Send a raw request and read the whole answer (the server closes or the
/// response is complete); returns the status and body.
async fn raw_exchange(port: u16, head: &str, body_chunks: Vec<Vec<u8>>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Keep writing while reading: the server may answer before it has read
    // everything, and may then stop reading.
    let writer = tokio::spawn(async move {
        for c in body_chunks {
            if wr.write_all(&c).await.is_err() {
                break;
            }
        }
        wr
    });
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let text = loop {
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut tmp))
            .await
            .expect("the server answers within a minute")
            .unwrap_or(0);
        if n == 0 {
            break String::from_utf8_lossy(&buf).into_owned();
        }
        buf.extend_from_slice(&tmp[..n]);
        let t = String::from_utf8_lossy(&buf).into_owned();
        if let Some((h, b)) = t.split_once("\r\n\r\n") {
            let cl = h.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if cl.is_some_and(|cl| b.len() >= cl) {
                break t;
            }
        }
    };
    writer.abort();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let lab = lab();
    let limit = 1024;
    let h = HaliteBuilder::new(&lab)
        .surface("rest_wsgi", json!({"max_request_body_size": limit}))
        .start()
        .await;
    let port = h.surface_port("rest_wsgi");

    // Within the limit: fine.
    let r = h
        .wsgi(&json!([low(
            &hal("pw"),
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    r.expect_status(200);

    // A body padded beyond the limit, with a Content-Length.
    let pad = "x".repeat(limit * 2);
    let big = serde_json::to_vec(&json!([low(
        &hal("pw413"),
        json!({"client": "local", "tgt": "*", "fun": "test.echo", "arg": [pad]})
    )]))
    .unwrap();
    let r = h
        .post("rest_wsgi", "/", Some("application/json"), big)
        .await;
    r.expect_error(413, &["pw413"]);

    // Content-Length announcing 100 MB; only a little is ever sent.
    let head = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        100_000_000
    );
    let (status, body) = raw_exchange(port, &head, vec![vec![b'['; 4096]]).await;
    assert_eq!(status, 413, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["return"].is_string());

    // Chunked, no length: 64 MiB in 64 KiB chunks (the server stops reading early).
    let head = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = {
        let mut c = format!("{:x}\r\n", 65536).into_bytes();
        c.extend(std::iter::repeat_n(b' ', 65536));
        c.extend_from_slice(b"\r\n");
        c
    };
    let (status, body) = raw_exchange(port, head, vec![chunk; 1024]).await;
    assert_eq!(status, 413, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["return"].is_string());

    // The server is still fine.
    let r = h
        .wsgi(&json!([low(
            &hal("pw"),
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    r.expect_status(200);
}

#[tokio::test]
async fn every_client() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let c = hal(&unique_secret("clients"));

    // local
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    r.expect_status(200);
    all_true(&lab, &r.ret()[0]);

    // local_async
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "local_async", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    r.expect_status(200);
    let ret = &r.ret()[0];
    assert!(ret["jid"].as_str().is_some_and(|j| j.len() == 20), "{ret}");
    let mut minions: Vec<String> = serde_json::from_value(ret["minions"].clone()).unwrap();
    minions.sort();
    assert_eq!(minions, lab.minions);

    // local_batch: one entry per minion, spliced into the return list.
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "local_batch", "tgt": "*", "fun": "test.ping", "batch": "2"})
        )]))
        .await;
    r.expect_status(200);
    let ret = r.ret();
    let entries = ret.as_array().unwrap();
    assert_eq!(
        entries.len(),
        lab.minions.len(),
        "one entry per minion: {ret}"
    );
    let mut seen = Vec::new();
    for e in entries {
        let m = e.as_object().unwrap();
        assert_eq!(m.len(), 1, "one minion per entry: {e}");
        let (id, v) = m.iter().next().unwrap();
        assert_eq!(v, &json!(true), "{e}");
        seen.push(id.clone());
    }
    seen.sort();
    assert_eq!(seen, lab.minions);

    // local_subset
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "local_subset", "tgt": "*", "fun": "test.ping", "subset": 2})
        )]))
        .await;
    r.expect_status(200);
    let ret = &r.ret()[0];
    let keys = sorted_keys(ret);
    assert_eq!(keys.len(), 2, "subset of 2: {ret}");
    for k in keys {
        assert!(lab.minions.contains(&k) && ret[&k] == json!(true), "{ret}");
    }

    // runner
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "runner", "fun": "test.arg", "arg": ["a", 1], "kwarg": {"k": "v"}})
        )]))
        .await;
    r.expect_status(200);
    let ret = &r.ret()[0];
    assert_eq!(ret["args"], json!(["a", 1]), "{ret}");
    assert_eq!(ret["kwargs"]["k"], json!("v"), "{ret}");

    // runner_async
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "runner_async", "fun": "test.arg", "arg": [1]})
        )]))
        .await;
    r.expect_status(200);
    let ret = &r.ret()[0];
    let jid = ret["jid"].as_str().unwrap();
    assert_eq!(ret["tag"], json!(format!("salt/run/{jid}")), "{ret}");

    // wheel
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "wheel", "fun": "key.list_all"})
        )]))
        .await;
    r.expect_status(200);
    let ret = &r.ret()[0];
    let jid = ret["data"]["jid"].as_str().unwrap();
    assert_eq!(ret["tag"], json!(format!("salt/wheel/{jid}")), "{ret}");
    assert_eq!(ret["data"]["success"], json!(true), "{ret}");
    let mut accepted: Vec<String> =
        serde_json::from_value(ret["data"]["return"]["minions"].clone()).unwrap();
    accepted.sort();
    assert_eq!(accepted, lab.minions);

    // wheel_async
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "wheel_async", "fun": "key.list_all"})
        )]))
        .await;
    r.expect_status(200);
    let ret = &r.ret()[0];
    let jid = ret["jid"].as_str().unwrap();
    assert_eq!(ret["tag"], json!(format!("salt/wheel/{jid}")), "{ret}");
}

#[tokio::test]
async fn ssh_client_is_answered_with_a_clear_error() {
    let lab = lab();
    let pw = unique_secret("ssh");
    let ssh = json!([low(
        &hal(&pw),
        json!({"client": "ssh", "tgt": "*", "fun": "test.ping"})
    )]);

    // Not enabled in the lab: refused as disabled.
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let msg = h.wsgi(&ssh).await.expect_error(400, &[&pw]);
    assert!(msg.contains("disabled"), "{msg}");
    drop(h);

    // Enabled: still no wire route, and halite says so.
    let mut clients = base_config(&lab)["netapi_enable_clients"]
        .as_array()
        .unwrap()
        .clone();
    clients.push(json!("ssh"));
    let h = HaliteBuilder::wsgi(&lab)
        .set("netapi_enable_clients", json!(clients))
        .start()
        .await;
    let msg = h.wsgi(&ssh).await.expect_error(400, &[&pw]);
    assert!(msg.contains("ssh") && msg.contains("ssh.cmd"), "{msg}");
}

#[tokio::test]
async fn disabled_client_is_refused() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab)
        .set("netapi_enable_clients", json!(["local"]))
        .start()
        .await;
    let c = hal(&unique_secret("disabled"));
    for lowstate in [
        json!({"client": "runner", "fun": "test.arg"}),
        json!({"client": "local_async", "tgt": "*", "fun": "test.ping"}),
        json!({"client": "wheel", "fun": "key.list_all"}),
    ] {
        let msg = h
            .wsgi(&json!([low(&c, lowstate)]))
            .await
            .expect_error(400, &[]);
        assert!(msg.contains("Client disabled"), "{msg}");
    }
    // An unknown client.
    let msg = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "nosuch", "fun": "test.arg"})
        )]))
        .await
        .expect_error(400, &[]);
    assert!(msg.contains("Invalid client"), "{msg}");
    let r = h
        .wsgi(&json!([low(
            &c,
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    r.expect_status(200);
    all_true(&lab, &r.ret()[0]);
}

#[tokio::test]
async fn several_lowstates_run_in_order() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let c = hal(&unique_secret("order"));
    let limited = eauth_creds("auto", "limited", "x");
    let marker = unique_secret("marker");
    let r = h
        .wsgi(&json!([
            low(&c, json!({"client": "local", "tgt": "ms-0", "fun": "test.echo", "arg": ["first"]})),
            low(&c, json!({"client": "runner", "fun": "test.arg", "arg": ["second"]})),
            low(&c, json!({"client": "local_batch", "tgt": "*", "fun": "test.echo", "arg": ["third"], "batch": 1})),
            low(&c, json!({"client": "wheel", "fun": "key.list_all"})),
            low(&limited, json!({"client": "local", "tgt": "ms-1", "fun": "test.ping"})),
            // Runs after the first chunk published with a known jid: proves ordering
            // by looking the job up.
            low(&c, json!({"client": "local_async", "tgt": "ms-2", "fun": "test.echo", "arg": [marker]})),
        ]))
        .await;
    r.expect_status(200);
    let ret = r.ret();
    let ret = ret.as_array().unwrap();
    assert_eq!(ret.len(), 1 + 1 + lab.minions.len() + 1 + 1 + 1, "{ret:?}");
    assert_eq!(ret[0], json!({"ms-0": "first"}));
    assert_eq!(ret[1]["args"], json!(["second"]));
    let mut batch: Vec<String> = Vec::new();
    for e in &ret[2..2 + lab.minions.len()] {
        let (k, v) = e.as_object().unwrap().iter().next().unwrap();
        assert_eq!(v, &json!("third"));
        batch.push(k.clone());
    }
    batch.sort();
    assert_eq!(batch, lab.minions);
    let i = 2 + lab.minions.len();
    assert!(ret[i]["tag"].as_str().unwrap().starts_with("salt/wheel/"));
    assert_eq!(ret[i + 1], json!({"ms-1": true}));
    assert_eq!(ret[i + 2]["minions"], json!(["ms-2"]));

    // A failing chunk in the middle fails the request; the chunks before it ran.
    let jid = new_jid();
    let r = h
        .wsgi(&json!([
            low(&c, json!({"client": "local_async", "tgt": "ms-0", "fun": "test.echo", "arg": ["before"], "jid": jid})),
            low(&limited, json!({"client": "local", "tgt": "*", "fun": "test.arg"})),
            low(&c, json!({"client": "local", "tgt": "*", "fun": "test.ping"})),
        ]))
        .await;
    r.expect_error(401, &[]);
    let lookup = json!([low(
        &c,
        json!({"client": "runner", "fun": "jobs.lookup_jid", "jid": jid})
    )]);
    let mut found = Value::Null;
    for _ in 0..50 {
        found = h.wsgi(&lookup).await.ret()[0].clone();
        if found == json!({"ms-0": "before"}) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        found,
        json!({"ms-0": "before"}),
        "the chunk before the failure ran"
    );
}

#[tokio::test]
async fn token_authentication() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let token = mk_token(&lab, "auto", "hal", &unique_secret("tok")).await;
    let mut t = serde_json::Map::new();
    t.insert("token".into(), json!(token));
    let r = h
        .wsgi(&json!([
            low(
                &t,
                json!({"client": "local", "tgt": "*", "fun": "test.ping"})
            ),
            low(
                &t,
                json!({"client": "runner", "fun": "test.arg", "arg": ["r"]})
            ),
            low(&t, json!({"client": "wheel", "fun": "key.list_all"})),
        ]))
        .await;
    r.expect_status(200);
    let ret = r.ret();
    all_true(&lab, &ret[0]);
    assert_eq!(ret[1]["args"], json!(["r"]));
    assert_eq!(ret[2]["data"]["success"], json!(true));
    assert!(
        !r.text().contains(&token),
        "the token is echoed: {}",
        r.text()
    );

    // A limited user's token is limited too.
    let ltoken = mk_token(&lab, "auto", "limited", "x").await;
    t.insert("token".into(), json!(ltoken));
    let r = h
        .wsgi(&json!([low(
            &t,
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    all_true(&lab, &r.expect_status(200).ret()[0]);
    h.wsgi(&json!([low(
        &t,
        json!({"client": "local", "tgt": "*", "fun": "test.arg"})
    )]))
    .await
    .expect_error(401, &[&ltoken]);
}

/// The Content-Length header equals the body's byte length.
#[track_caller]
fn content_length_exact(r: &Reply) {
    let cl: usize = r
        .header("content-length")
        .expect("a Content-Length header")
        .parse()
        .unwrap();
    assert_eq!(cl, r.body.len(), "Content-Length vs body bytes");
}

#[tokio::test]
async fn seed_examples_verbatim() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    // The three curl examples of the seed, byte for byte (PAM saltdev/saltdev).
    let ping = format!(
        r#"[{{"eauth":"pam","username":"{u}","password":"{p}","client":"local","tgt":"*","fun":"test.ping"}}]"#,
        u = lab.pam_user,
        p = lab.pam_password
    );
    let r = h
        .post("rest_wsgi", "/", Some("application/json"), ping)
        .await;
    r.expect_status(200);
    content_length_exact(&r);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let ret = r.ret();
    assert_eq!(ret.as_array().unwrap().len(), 1);
    all_true(&lab, &ret[0]);
    // Python's json.dumps layout.
    assert!(r.text().starts_with(r#"{"return": [{""#), "{}", r.text());

    let async_ping = format!(
        r#"[{{"eauth":"pam","username":"{u}","password":"{p}","client":"local_async","tgt":"*","fun":"test.ping"}}]"#,
        u = lab.pam_user,
        p = lab.pam_password
    );
    let r = h
        .post("rest_wsgi", "/", Some("application/json"), async_ping)
        .await;
    r.expect_status(200);
    content_length_exact(&r);
    let ret = r.ret();
    let jid = ret[0]["jid"].as_str().expect("a jid").to_owned();
    assert!(
        jid.len() == 20 && jid.bytes().all(|b| b.is_ascii_digit()),
        "{jid}"
    );
    let mut minions: Vec<String> = serde_json::from_value(ret[0]["minions"].clone()).unwrap();
    minions.sort();
    assert_eq!(minions, lab.minions);
    assert!(
        r.text().starts_with(r#"{"return": [{"jid": ""#),
        "{}",
        r.text()
    );

    let lookup = format!(
        r#"[{{"eauth":"pam","username":"{u}","password":"{p}","client":"runner","fun":"jobs.lookup_jid","jid":"{jid}"}}]"#,
        u = lab.pam_user,
        p = lab.pam_password
    );
    // The minions return within moments; wait for the job cache to have all.
    let mut last = Value::Null;
    for _ in 0..50 {
        let r = h
            .post("rest_wsgi", "/", Some("application/json"), lookup.clone())
            .await;
        r.expect_status(200);
        content_length_exact(&r);
        last = r.ret()[0].clone();
        if sorted_keys(&last) == lab.minions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all_true(&lab, &last);

    // Non-ASCII: escaped as Python's json.dumps does, Content-Length in bytes.
    let echo = r#"[{"eauth":"auto","username":"hal","password":"x","client":"local","tgt":"ms-0","fun":"test.echo","arg":["héllo wörld ✓ 😀"]}]"#;
    let r = h
        .post("rest_wsgi", "/", Some("application/json"), echo)
        .await;
    r.expect_status(200);
    content_length_exact(&r);
    assert_eq!(
        r.text(),
        r#"{"return": [{"ms-0": "h\u00e9llo w\u00f6rld \u2713 \ud83d\ude00"}]}"#
    );
    assert_eq!(r.ret()[0]["ms-0"], json!("héllo wörld ✓ 😀"));
}

#[tokio::test]
async fn disconnected_client_frees_its_waiter() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab).start().await;
    let jid = new_jid();
    let pw = unique_secret("disc");
    let body = serde_json::to_vec(&json!([low(&hal(&pw), json!({
        "client": "local", "tgt": "ms-1", "fun": "test.sleep", "arg": [15], "timeout": 40, "jid": jid
    }))]))
    .unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", h.surface_port("rest_wsgi")))
        .await
        .unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();

    async fn waiters(h: &Halite) -> (f64, f64) {
        let m = h.metrics("rest_wsgi").await;
        (
            m.get("halite_job_waiters").copied().unwrap_or(-1.0),
            m.get("halite_http_requests_in_flight")
                .copied()
                .unwrap_or(-1.0),
        )
    }
    // Wait until the master has the job (it is in the job cache once
    // published): a client that leaves before the publish is acknowledged
    // cancels the publish with everything else.
    let list_job = json!([low(
        &hal(&pw),
        json!({"client": "runner", "fun": "jobs.list_job", "jid": jid})
    )]);
    let mut listed = Value::Null;
    for _ in 0..150 {
        listed = h.wsgi(&list_job).await.ret()[0].clone();
        if listed["Function"] == json!("test.sleep") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        listed["Function"],
        json!("test.sleep"),
        "the job was never published: {listed}"
    );
    let state = waiters(&h).await;
    eprintln!(
        "while waiting: halite_job_waiters {}, in flight {} (incl. this /metrics)",
        state.0, state.1
    );
    assert!(
        state.0 >= 1.0,
        "the synchronous call is not waiting for its job: {state:?}"
    );
    assert_eq!(
        state.1, 2.0,
        "the call and the /metrics request are in flight"
    );

    // The client goes away (the job has seconds left to run).
    drop(s);
    let mut state = (-1.0, -1.0);
    for _ in 0..50 {
        state = waiters(&h).await;
        if state == (0.0, 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        state,
        (0.0, 1.0),
        "(halite_job_waiters, in flight) within 5 s of the disconnect"
    );

    // The job itself keeps running on the master and returns.
    let lookup = json!([low(
        &hal(&pw),
        json!({"client": "runner", "fun": "jobs.lookup_jid", "jid": jid})
    )]);
    let mut found = Value::Null;
    for _ in 0..300 {
        found = h.wsgi(&lookup).await.ret()[0].clone();
        if found == json!({"ms-1": true}) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        found,
        json!({"ms-1": true}),
        "the abandoned job's return in the job cache"
    );
    assert!(!h.log().contains(&pw));
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let lab = lab();
    let h = HaliteBuilder::wsgi(&lab)
        .env("HALITE_LOG", "debug")
        .start()
        .await;
    let good_pw = unique_secret("goodpw");
    let bad_pam = unique_secret("badpam");
    let limited_pw = unique_secret("limitedpw");
    let token = mk_token(&lab, "auto", "hal", &unique_secret("tokpw")).await;
    let unknown_token = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let mut t = serde_json::Map::new();
    t.insert("token".into(), json!(token));
    let mut ut = serde_json::Map::new();
    ut.insert("token".into(), json!(unknown_token));
    let ping = json!({"client": "local", "tgt": "*", "fun": "test.ping"});
    let secrets = [
        good_pw.as_str(),
        bad_pam.as_str(),
        limited_pw.as_str(),
        token.as_str(),
        unknown_token,
    ];
    let requests = [
        (
            json!([
                low(&hal(&good_pw), ping.clone()),
                low(
                    &t,
                    json!({"client": "runner", "fun": "test.arg", "arg": [1]})
                )
            ]),
            200,
        ),
        (
            json!([low(
                &hal(&good_pw),
                json!({"client": "local_async", "tgt": "*", "fun": "test.ping"})
            )]),
            200,
        ),
        (
            json!([low(
                &hal(&good_pw),
                json!({"client": "wheel", "fun": "key.list_all"})
            )]),
            200,
        ),
        (
            json!([low(
                &eauth_creds("pam", &lab.pam_user, &bad_pam),
                ping.clone()
            )]),
            401,
        ),
        (
            json!([low(
                &eauth_creds("auto", "limited", &limited_pw),
                json!({"client": "local", "tgt": "*", "fun": "test.arg"})
            )]),
            401,
        ),
        (json!([low(&ut, ping.clone())]), 401),
        (
            json!({"eauth": "auto", "username": "hal", "password": good_pw, "client": "local"}),
            400,
        ),
    ];
    for (body, status) in requests {
        let r = h.wsgi(&body).await;
        r.expect_status(status);
        let text = r.text();
        for s in secrets {
            assert!(!text.contains(s), "response contains a secret: {text}");
        }
    }
    let log = h.log();
    assert!(
        log.contains("DEBUG"),
        "HALITE_LOG=debug gave no debug lines:\n{log}"
    );
    for s in secrets {
        assert!(
            !log.contains(s),
            "the log contains the secret {s:?}:\n{log}"
        );
    }
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = self_signed_cert(dir.path());
    let h = HaliteBuilder::new(&lab)
        .surface("rest_wsgi", json!({"ssl_crt": crt, "ssl_key": key}))
        .start()
        .await;
    let url = h.wsgi_url();
    assert!(url.starts_with("https://"), "{url}");
    let r = h
        .wsgi(&json!([low(
            &hal("x"),
            json!({"client": "local", "tgt": "*", "fun": "test.ping"})
        )]))
        .await;
    r.expect_status(200);
    all_true(&lab, &r.ret()[0]);
    // Plain HTTP on the TLS port does not get an answer as if it were fine.
    let plain = url.replace("https://", "http://");
    let res = h.http.get(format!("{plain}/")).send().await;
    assert!(
        res.as_ref().map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP on the TLS port answered 200"
    );
}
