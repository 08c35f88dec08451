//! SIGTERM against the Salt lab: synchronous `local` calls in flight are
//! all answered, and `/events` streams end with a final event.
//! Needs the lab (`scripts/lab start`, then `eval "$(scripts/lab env)"`).

use std::time::{Duration, Instant};

use crate::support::{free_port, lab_config, temp_dir, Halite};
use futures_util::StreamExt;
use serde_json::json;

const CALLS: usize = 50;

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_every_call_in_flight_and_ends_streams() {
    let lab = lab_config();
    let text = std::fs::read_to_string(&lab).expect("read the lab's halite config");
    let mut cfg: serde_norway::Mapping = serde_norway::from_str(&text).expect("a YAML mapping");
    let (wsgi_port, cp_port) = (free_port(), free_port());
    let wsgi: serde_norway::Mapping =
        serde_norway::from_str(&format!("{{port: {wsgi_port}, host: 127.0.0.1}}")).unwrap();
    let cp: serde_norway::Mapping = serde_norway::from_str(&format!(
        "{{port: {cp_port}, host: 127.0.0.1, disable_ssl: true}}"
    ))
    .unwrap();
    cfg.insert("rest_wsgi".into(), wsgi.into());
    cfg.insert("rest_cherrypy".into(), cp.into());
    let mut h = Halite::start_in(temp_dir("drain"), &cfg, wsgi_port);
    let wsgi_url = format!("http://127.0.0.1:{wsgi_port}");
    let cp_url = format!("http://127.0.0.1:{cp_port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // Ready (event bus connected) before the calls, or they could not wait.
    let start = Instant::now();
    while http
        .get(format!("{wsgi_url}/health/ready"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(start.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An /events stream.
    let login: serde_json::Value = http
        .post(format!("{cp_url}/login"))
        .json(&json!({"eauth": "auto", "username": "saltdev", "password": "x"}))
        .send()
        .await
        .expect("POST /login")
        .json()
        .await
        .expect("a JSON login answer");
    let token = login["return"][0]["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let events = http
        .get(format!("{cp_url}/events"))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .expect("GET /events");
    assert_eq!(events.status(), 200);
    let stream = tokio::spawn(async move {
        let mut body = events.bytes_stream();
        let mut seen = String::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => return Err(format!("{e}: after {seen}")),
            }
        }
        Ok(seen)
    });

    // 50 synchronous calls, each a few seconds long, with the session's
    // token (inline credentials would meet the login throttle).
    let mut calls = Vec::new();
    for i in 0..CALLS {
        let http = http.clone();
        let url = wsgi_url.clone();
        let minion = format!("ms-{}", i % 3);
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            let body = json!([{
                "client": "local", "tgt": minion, "fun": "test.sleep", "arg": [4],
                "timeout": 60, "token": token
            }]);
            let resp = http.post(&url).json(&body).send().await;
            match resp {
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    (status.as_u16(), minion, text)
                }
                Err(e) => (0, minion, format!("{e:?}")),
            }
        }));
    }
    // Every call is waiting for its job when the signal comes.
    let start = Instant::now();
    loop {
        let waiting = metric(&http, &wsgi_url, "halite_job_waiters").await;
        if waiting >= CALLS as f64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {waiting} of {CALLS} calls waiting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.signal("TERM");
    let signalled = Instant::now();

    let mut failures = Vec::new();
    for c in calls {
        let (status, minion, text) = c.await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if status != 200 || body["return"][0][&minion] != json!(true) {
            failures.push(format!("{minion}: {status} {text}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls failed after SIGTERM:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let status = h.wait_exit(Duration::from_secs(40));
    eprintln!(
        "{CALLS} calls answered; halite exited {status} {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert!(status.success(), "exit status {status}; log:\n{}", h.log());
    let seen = tokio::time::timeout(Duration::from_secs(5), stream)
        .await
        .expect("the /events stream ended")
        .unwrap()
        .expect("the /events stream ended cleanly");
    assert!(
        seen.contains("event: shutdown\n"),
        "no final event on /events: {seen}"
    );
}
