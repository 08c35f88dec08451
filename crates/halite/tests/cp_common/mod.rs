//! Helpers of the rest_cherrypy integration tests: the lab's settings, a
//! halite child process serving rest_cherrypy on a free port with a
//! temporary config derived from the lab's, and small HTTP helpers.
//!
//! Every test runs against the real lab started by `scripts/lab` (see
//! `scripts/test`); nothing here mocks the master.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

/// The lab's settings, from `eval "$(scripts/lab env)"`.
#[derive(Debug, Clone)]
pub struct Lab {
    /// halite's copy of the master config (`<lab>/halite/master`).
    pub config: PathBuf,
    /// Salt's own rest_cherrypy (the oracle).
    pub api_url: String,
    pub minions: Vec<String>,
    pub venv: PathBuf,
}

fn env_or_die(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need the Salt lab. Run them with scripts/test, \
             or `scripts/lab start && eval \"$(scripts/lab env)\"` first"
        ),
    }
}

/// The lab, or a panic that says how to start it.
pub fn lab() -> Lab {
    let config = PathBuf::from(env_or_die("SALT_MASTER_CONFIG"));
    assert!(
        config.is_file(),
        "SALT_MASTER_CONFIG={} does not exist: is the lab started (scripts/lab start)?",
        config.display()
    );
    Lab {
        config,
        api_url: env_or_die("SALT_API_URL").trim_end_matches('/').to_owned(),
        minions: env_or_die("SALT_LAB_MINIONS")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        venv: PathBuf::from(env_or_die("SALT_LAB_VENV")),
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A unique short name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A fresh temporary directory, removed by [`TempDir`]'s `Drop`.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("halite-cp-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lab's master config without its `rest_wsgi`/`rest_cherrypy` sections.
fn base_config(lab: &Lab) -> String {
    let text = std::fs::read_to_string(&lab.config).expect("read the lab's halite config");
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let top_level = !line.starts_with([' ', '\t']) && !line.trim().is_empty();
        if top_level {
            skipping = line.starts_with("rest_wsgi:") || line.starts_with("rest_cherrypy:");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Write a master config whose `rest_cherrypy` section is `section` (lines
/// without indentation; they are indented here). Returns its path.
pub fn write_config(lab: &Lab, dir: &Path, section: &str) -> PathBuf {
    let mut text = base_config(lab);
    text.push_str("rest_cherrypy:\n");
    for line in section.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str("  ");
        text.push_str(line.trim());
        text.push('\n');
    }
    let path = dir.join("master");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// A halite child process serving rest_cherrypy.
pub struct Halite {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>` (or https), plus `root_prefix`.
    pub base: String,
    pub dir: TempDir,
    stderr: PathBuf,
}

fn option_of(section: &str, key: &str) -> Option<String> {
    section.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_owned())
    })
}

impl Halite {
    /// Plain HTTP with `extra` options (one `key: value` per line).
    pub fn start(extra: &str) -> Halite {
        Halite::start_with(&format!("disable_ssl: true\n{extra}"), "http", None)
    }

    /// Start with exactly `section` (plus host and port); `scheme` is what
    /// the URLs use; `ca` (PEM) is trusted to check readiness over TLS.
    pub fn start_with(section: &str, scheme: &str, ca: Option<&[u8]>) -> Halite {
        let dir = TempDir::new();
        Halite::start_in(dir, section, scheme, ca)
    }

    /// As [`Halite::start_with`], in an existing directory (for certs or
    /// static files written there beforehand).
    pub fn start_in(dir: TempDir, section: &str, scheme: &str, ca: Option<&[u8]>) -> Halite {
        let lab = lab();
        let port = free_port();
        let config = write_config(
            &lab,
            dir.path(),
            &format!("host: 127.0.0.1\nport: {port}\n{section}"),
        );
        let stderr = dir.path().join("halite.stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_halite"))
            .arg("--config")
            .arg(&config)
            .env("HALITE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start halite");
        let prefix = option_of(section, "root_prefix")
            .map(|p| p.trim_matches('/').to_owned())
            .filter(|p| !p.is_empty())
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        let mut h = Halite {
            child,
            port,
            base: format!("{scheme}://127.0.0.1:{port}{prefix}"),
            dir,
            stderr,
        };
        h.wait_ready(ca);
        h
    }

    /// Wait until `/health/ready` answers 200 (listening, event bus
    /// connected). Polls from a thread of its own, so that it may be
    /// called from inside a test's runtime.
    fn wait_ready(&mut self, ca: Option<&[u8]>) {
        let url = format!("{}/health/ready", self.base);
        let ca = ca.map(<[u8]>::to_vec);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "halite exited ({status}) before it was ready:\n{}",
                    self.stderr_text()
                );
            }
            let (u, ca) = (url.clone(), ca.clone());
            let ok = std::thread::spawn(move || {
                let mut b = builder().timeout(Duration::from_secs(5));
                if let Some(ca) = ca {
                    b = b.add_root_certificate(
                        reqwest::Certificate::from_pem(&ca).expect("CA certificate"),
                    );
                }
                let client = b.build().expect("client");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    matches!(client.get(&u).send().await, Ok(r) if r.status() == 200)
                })
            })
            .join()
            .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "halite not ready on {url} after 60 s:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `ws://` URL of a path.
    pub fn ws_url(&self, path: &str) -> String {
        self.url(path).replacen("http", "ws", 1)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Halite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run halite with a `rest_cherrypy` section that must make it refuse to
/// start; its exit status and stderr.
pub fn run_to_exit(section: &str) -> (ExitStatus, String) {
    let lab = lab();
    let dir = TempDir::new();
    let config = write_config(&lab, dir.path(), section);
    let mut child = Command::new(env!("CARGO_BIN_EXE_halite"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start halite");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("halite did not exit with the section:\n{section}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

/// An HTTP client without cookie store or redirects.
pub fn client() -> reqwest::Client {
    builder().build().expect("client")
}

/// A client builder with the settings every test wants: no redirects,
/// a generous overall timeout (a hung request fails the test).
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
}

/// Credentials of the lab's `auto` eauth user with full rights.
pub fn creds(user: &str) -> Json {
    json!({"eauth": "auto", "username": user, "password": "x"})
}

/// `POST /login` with JSON credentials; the token.
pub async fn login(c: &reqwest::Client, base: &str, user: &str) -> String {
    let r = c
        .post(format!("{base}/login"))
        .json(&creds(user))
        .send()
        .await
        .expect("POST /login");
    assert_eq!(r.status(), 200, "login of {user} at {base}");
    let v: Json = r.json().await.expect("login JSON");
    v["return"][0]["token"]
        .as_str()
        .expect("a token in the login reply")
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
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
    /// Everything read so far, for "never appears" checks.
    pub all: String,
}

impl Sse {
    pub fn new(resp: reqwest::Response) -> Sse {
        Sse {
            resp,
            buf: String::new(),
            all: String::new(),
        }
    }

    /// The first line of the stream (salt-api sends `retry: 400\n` alone,
    /// before any event), or `None` after `wait` without one.
    pub async fn first_line(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.find('\n') {
                let line = self.buf[..i].to_owned();
                self.buf.drain(..i + 1);
                return Some(line);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?
                .ok()??;
            let text = String::from_utf8_lossy(&chunk);
            self.all.push_str(&text);
            self.buf.push_str(&text);
        }
    }

    /// The next frame (text up to a blank line), or `None` at the end of
    /// the stream or after `wait` without one.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let frame = self.buf[..i].to_owned();
                self.buf.drain(..i + 2);
                return Some(frame);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?
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
