//! Helpers shared by halite's integration tests: the lab environment, a
//! halite child process on free ports with its own config file, and an HTTP
//! client.
//!
//! Every test runs against the real Salt lab started by `scripts/lab`
//! (`eval "$(scripts/lab env)"`, or `scripts/test`). Without it the tests
//! fail with a message that says so.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as Json};

/// The surfaces halite serves, by master-config section.
pub const SURFACE_SECTIONS: [&str; 2] = ["rest_wsgi", "rest_cherrypy"];

/// The lab, from the environment `scripts/lab env` exports.
#[derive(Debug, Clone)]
pub struct Lab {
    /// halite's config file for the lab (`$SALT_MASTER_CONFIG`).
    pub master_config: PathBuf,
    /// The master's own config (`$SALT_LAB_MASTER_CONFIG`).
    pub lab_master_config: PathBuf,
    /// Salt's own rest_cherrypy salt-api, the oracle (`$SALT_API_URL`).
    pub api_url: String,
    /// Minion ids, sorted.
    pub minions: Vec<String>,
    pub pam_user: String,
    pub pam_password: String,
    pub sock_dir: PathBuf,
    pub version: String,
}

fn env_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "${name} is not set: these integration tests need the Salt lab. \
             Run them with scripts/test, or `scripts/lab start && eval \"$(scripts/lab env)\"` first."
        ),
    }
}

/// The lab environment; panics with a clear message when it is missing.
pub fn lab() -> Lab {
    let mut minions: Vec<String> = env_var("SALT_LAB_MINIONS")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(!minions.is_empty(), "$SALT_LAB_MINIONS lists no minion");
    minions.sort();
    let lab = Lab {
        master_config: PathBuf::from(env_var("SALT_MASTER_CONFIG")),
        lab_master_config: PathBuf::from(env_var("SALT_LAB_MASTER_CONFIG")),
        api_url: env_var("SALT_API_URL").trim_end_matches('/').to_owned(),
        minions,
        pam_user: std::env::var("SALT_LAB_PAM_USER").unwrap_or_else(|_| "saltdev".into()),
        pam_password: std::env::var("SALT_LAB_PAM_PASSWORD").unwrap_or_else(|_| "saltdev".into()),
        sock_dir: PathBuf::from(env_var("SALT_LAB_SOCK_DIR")),
        version: std::env::var("SALT_VERSION_FULL").unwrap_or_default(),
    };
    assert!(
        lab.master_config.is_file(),
        "$SALT_MASTER_CONFIG={} does not exist: is the lab started (scripts/lab start)?",
        lab.master_config.display()
    );
    lab
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The lab's halite config as a YAML mapping, without any surface section.
pub fn base_config(lab: &Lab) -> Map<String, Json> {
    let text = std::fs::read_to_string(&lab.master_config)
        .unwrap_or_else(|e| panic!("read {}: {e}", lab.master_config.display()));
    let mut map: Map<String, Json> = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", lab.master_config.display()));
    for s in SURFACE_SECTIONS {
        map.remove(s);
    }
    map
}

/// How to start a halite.
#[derive(Debug, Clone)]
pub struct HaliteBuilder {
    config: Map<String, Json>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    wait: Wait,
}

/// What "started" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `/health/ready` answers 200 (the event bus is connected).
    Ready,
    /// `/health/live` answers 200 (for a halite whose master is down).
    Live,
}

impl HaliteBuilder {
    /// The lab config with no surface; add some with [`surface`](Self::surface).
    pub fn new(lab: &Lab) -> Self {
        HaliteBuilder {
            config: base_config(lab),
            env: vec![("HALITE_LOG".into(), "info".into())],
            args: Vec::new(),
            wait: Wait::Ready,
        }
    }

    /// The lab config with a rest_wsgi surface on a free loopback port.
    pub fn wsgi(lab: &Lab) -> Self {
        Self::new(lab).surface("rest_wsgi", json!({}))
    }

    /// Add (or replace) a surface section (`rest_wsgi`, `rest_cherrypy`);
    /// `port` and `host` default to a free loopback port.
    pub fn surface(mut self, section: &str, options: Json) -> Self {
        let mut opts = match options {
            Json::Object(m) => m,
            Json::Null => Map::new(),
            other => panic!("surface options must be a map, not {other}"),
        };
        opts.entry("port").or_insert_with(|| json!(free_port()));
        opts.entry("host").or_insert_with(|| json!("127.0.0.1"));
        self.config.insert(section.to_owned(), Json::Object(opts));
        self
    }

    /// Set a top-level master-config key.
    pub fn set(mut self, key: &str, value: Json) -> Self {
        self.config.insert(key.to_owned(), value);
        self
    }

    /// Remove a top-level master-config key.
    pub fn unset(mut self, key: &str) -> Self {
        self.config.remove(key);
        self
    }

    /// An environment variable for the child (e.g. `HALITE_LOG=debug`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An extra command-line argument.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// What to wait for before [`start`](Self::start) returns.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Write the config, start the child and wait for it.
    pub async fn start(self) -> Halite {
        let dir = tempfile::Builder::new()
            .prefix("halite-test-")
            .tempdir()
            .expect("create a temp dir");
        let config_path = dir.path().join("master");
        let yaml = serde_norway::to_string(&self.config).expect("serialise the config");
        std::fs::write(&config_path, yaml).expect("write the config");
        let log_path = dir.path().join("halite.log");
        let log = File::create(&log_path).expect("create the log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_halite"));
        cmd.arg("--config")
            .arg(&config_path)
            .args(&self.args)
            .env_remove("SALT_MASTER_CONFIG")
            .env_remove("HALITE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup the log file")))
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start halite");
        let mut halite = Halite {
            child,
            config: self.config,
            config_path,
            log_path,
            http: client(),
            _dir: dir,
        };
        halite.wait_started(self.wait).await;
        halite
    }
}

/// A running halite child, killed on drop.
pub struct Halite {
    child: Child,
    pub config: Map<String, Json>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Halite {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The base URL of a surface (`http(s)://127.0.0.1:<port>`), no trailing slash.
    pub fn url(&self, section: &str) -> String {
        let s = self
            .config
            .get(section)
            .and_then(Json::as_object)
            .unwrap_or_else(|| panic!("this halite has no {section} surface"));
        let port = s.get("port").and_then(Json::as_u64).expect("surface port");
        let tls = s.get("ssl_crt").is_some()
            && !s
                .get("disable_ssl")
                .and_then(Json::as_bool)
                .unwrap_or(false);
        format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" })
    }

    /// The rest_wsgi base URL.
    pub fn wsgi_url(&self) -> String {
        self.url("rest_wsgi")
    }

    /// The port of a surface.
    pub fn port(&self, section: &str) -> u16 {
        self.config[section]["port"].as_u64().expect("surface port") as u16
    }

    /// The first configured surface.
    fn first_surface(&self) -> &str {
        SURFACE_SECTIONS
            .into_iter()
            .find(|s| self.config.contains_key(*s))
            .expect("a halite needs a surface")
    }

    /// Everything halite wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        File::open(&self.log_path)
            .and_then(|mut f| f.read_to_string(&mut s))
            .expect("read the halite log");
        s
    }

    /// Is the child still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn wait_started(&mut self, wait: Wait) {
        let base = self.url(self.first_surface());
        let path = match wait {
            Wait::Ready => "/health/ready",
            Wait::Live => "/health/live",
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "halite exited ({status}) before it was started; its log:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self.http.get(format!("{base}{path}")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "halite did not answer 200 on {base}{path} within 30 s; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/metrics` of a surface as name (with labels) → value.
    pub async fn metrics(&self, section: &str) -> std::collections::BTreeMap<String, f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url(section)))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("read /metrics");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// Peak resident set size of the child (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// Current resident set size of the child (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// POST a body with a content type to a surface path; see [`Reply`].
    pub async fn post(
        &self,
        section: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url(section)))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        Reply::from(req.send().await.expect("send the request")).await
    }

    /// POST a lowstate list (JSON) to the rest_wsgi surface.
    pub async fn wsgi(&self, lowstate: &Json) -> Reply {
        self.post(
            "rest_wsgi",
            "/",
            Some("application/json"),
            serde_json::to_vec(lowstate).expect("serialise"),
        )
        .await
    }
}

impl Drop for Halite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// An HTTP client that accepts halite's test certificates.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build an HTTP client")
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
    creds("auto", "hal", password)
}

/// `eauth` + `username` + `password`.
pub fn creds(eauth: &str, user: &str, password: &str) -> Map<String, Json> {
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
