//! A real browser against the rest_cherrypy surface: headless Chromium loads
//! the single-page app in `tests/data/app/index.html`, served by halite as
//! rest_cherrypy's `app` under `/app`. The page logs in through `/login`,
//! opens `new EventSource('/events?token=…')` (a browser cannot send headers
//! on an EventSource), POSTs a `local_async` test.ping to `/` with
//! `X-Auth-Token`, and lists every event tag it receives; its `#status`
//! becomes `done` once every minion of its job has returned.
//!
//! `chromium --dump-dom --virtual-time-budget` never finishes on this page
//! (the open event stream keeps virtual time from advancing), so the test
//! drives Chromium over the DevTools protocol instead: it polls the page's
//! state with `Runtime.evaluate` until `done` or a bounded timeout, and
//! saves a screenshot (`Page.captureScreenshot`) to `build/browser/app.png`.
//!
//! Needs the Salt lab (`SALT_MASTER_CONFIG`) and Chromium, which
//! `scripts/ensure-chromium` installs from Debian when missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{repo_root, temp_dir, Halite};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message;

/// How long the page may take to see its job's returns.
/// Generous: the lab is shared with other tests and benchmarks, and a busy
/// lab's minions can take long to answer.
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Chromium's path, installing it through `scripts/ensure-chromium` if needed.
fn chromium() -> PathBuf {
    let script = repo_root().join("scripts/ensure-chromium");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): Chromium is needed for this test",
        script.display(),
        out.status
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A headless Chromium with the DevTools protocol on a port of its choosing;
/// killed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
    devtools_port: u16,
}

impl Browser {
    fn launch(url: &str) -> Browser {
        let exe = chromium();
        let profile = temp_dir("chromium");
        let child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1000,700",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let mut b = Browser {
            child,
            profile,
            devtools_port: 0,
        };
        // Chromium writes the port it picked into <profile>/DevToolsActivePort.
        let file = b.profile.join("DevToolsActivePort");
        let start = Instant::now();
        b.devtools_port = loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("chromium exited early: {status}");
            }
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromium did not open its DevTools port within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        b
    }

    /// The DevTools websocket of the page showing `url_part`.
    async fn page_socket(&self, url_part: &str) -> String {
        let list = format!("http://127.0.0.1:{}/json/list", self.devtools_port);
        let start = Instant::now();
        loop {
            if let Ok(resp) = reqwest::get(&list).await {
                if let Ok(targets) = resp.json::<Vec<Json>>().await {
                    if let Some(ws) = targets
                        .iter()
                        .find(|t| {
                            t["type"] == "page"
                                && t["url"].as_str().is_some_and(|u| u.contains(url_part))
                        })
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    {
                        return ws.to_owned();
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no page showing {url_part} in chromium's DevTools target list"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal DevTools protocol client: one command at a time.
struct Cdp {
    ws: Ws,
    next_id: u64,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect to chromium's DevTools websocket");
        Cdp { ws, next_id: 1 }
    }

    async fn call(&mut self, method: &str, params: Json) -> Json {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("send a DevTools command");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(msg) = self.ws.next().await {
                let msg = msg.expect("DevTools websocket");
                if let Message::Text(t) = msg {
                    let v: Json = serde_json::from_str(t.as_str()).expect("DevTools JSON");
                    if v["id"] == json!(id) {
                        return v;
                    }
                }
            }
            panic!("DevTools websocket closed");
        })
        .await
        .unwrap_or_else(|_| panic!("no DevTools answer to {method} within 30 s"));
        if let Some(err) = answer.get("error") {
            panic!("DevTools {method} failed: {err}");
        }
        answer["result"].clone()
    }

    /// Evaluate `expr` in the page and return its value (JSON-able).
    async fn eval(&mut self, expr: &str) -> Json {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page script threw: {ex}");
        }
        r["result"]["value"].clone()
    }
}

/// Standard base64 (what `Page.captureScreenshot` returns) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= if c == b'=' { 0 } else { val(c) } << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

/// The page's state: status, jid, its minions and every event tag shown.
const STATE_JS: &str = r#"(() => {
  const s = window.haliteApp || {};
  const status = document.getElementById('status');
  return {
    status: status ? status.textContent : 'page not loaded yet',
    title: document.title,
    jid: s.jid || null,
    minions: s.minions || null,
    error: s.error || null,
    tags: Array.from(document.querySelectorAll('#events li')).map(li => li.getAttribute('data-tag')),
  };
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_app_streams_job_events() {
    let app = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/app/index.html");
    assert!(app.is_file(), "{} is missing", app.display());
    let halite = Halite::start_cherrypy(
        "browser",
        &[("app", app.to_str().unwrap()), ("app_path", "/app")],
    );
    let url = halite.url("/app");
    let browser = Browser::launch(&url);
    let mut cdp = Cdp::connect(&browser.page_socket("/app").await).await;

    let start = Instant::now();
    let state = loop {
        let state = cdp.eval(STATE_JS).await;
        let status = state["status"].as_str().unwrap_or("");
        if status == "done" || status.starts_with("error") || start.elapsed() > PAGE_TIMEOUT {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The screenshot, whatever the outcome, to look at.
    let shot = cdp
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    let out_dir = repo_root().join("build/browser");
    std::fs::create_dir_all(&out_dir).unwrap();
    let png_path = out_dir.join("app.png");
    std::fs::write(&png_path, &png).unwrap();
    eprintln!(
        "browser: screenshot {} ({} bytes)",
        png_path.display(),
        png.len()
    );
    // What the page shows of its own job (the lab is shared: other tests'
    // events go by too).
    let mine: Vec<&str> = match state["jid"].as_str() {
        Some(jid) => state["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .filter(|t| t.starts_with(&format!("salt/job/{jid}/")))
            .collect(),
        None => Vec::new(),
    };
    let summary = json!({
        "status": state["status"], "jid": state["jid"], "minions": state["minions"],
        "error": state["error"], "events_shown": state["tags"].as_array().map_or(0, Vec::len),
        "events_of_its_job": mine,
    });
    eprintln!("browser: page after {:?}: {summary}", start.elapsed());

    let log = || halite.log();
    assert_eq!(
        state["status"],
        "done",
        "the page did not see its job's returns within {PAGE_TIMEOUT:?}: {summary}\nhalite log:\n{}",
        log()
    );
    assert_eq!(state["title"], "halite app: done");
    let jid = state["jid"].as_str().expect("the page's jid");
    let minions: Vec<&str> = state["minions"]
        .as_array()
        .expect("the page's minion list")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    for m in ["ms-0", "ms-1", "ms-2"] {
        assert!(
            minions.contains(&m),
            "local_async test.ping on '*' did not target {m}: {minions:?}"
        );
    }
    let tags: Vec<&str> = state["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    let new_tag = format!("salt/job/{jid}/new");
    assert!(
        tags.contains(&new_tag.as_str()),
        "the page never received {new_tag}: {summary}"
    );
    for m in &minions {
        let ret = format!("salt/job/{jid}/ret/{m}");
        assert!(
            tags.contains(&ret.as_str()),
            "the page never received {ret}: {summary}"
        );
    }
    // The DOM shows them too (the rendered list items, not just the state).
    let rendered = cdp
        .eval(&format!(
            "Array.from(document.querySelectorAll('#events li.ret')).filter(li => \
             li.getAttribute('data-tag').startsWith('salt/job/{jid}/ret/')).map(li => \
             li.getAttribute('data-minion')).sort()"
        ))
        .await;
    let mut want: Vec<&str> = minions.clone();
    want.sort_unstable();
    assert_eq!(rendered, json!(want), "the returns rendered in #events");
    drop(cdp);
    drop(browser);
}
