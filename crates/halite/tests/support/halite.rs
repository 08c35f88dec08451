//! A halite child process: a master config of the test's choosing written
//! into a temporary directory, the binary started on it with its output in
//! a log file, waited for, and killed on drop.
//!
//! [`HaliteBuilder`] is the general way; [`Halite::cherrypy`],
//! [`Halite::start_cherrypy`] and [`Halite::start_in`] are shorthands the
//! tests use most.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as Json};

use super::http::client;
use super::lab::{base_config, free_port, lab, Lab, TempDir, SURFACE_SECTIONS};

/// How long a halite may take to start before the test fails.
const START_LIMIT: Duration = Duration::from_secs(60);

/// What "started" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `/health/ready` answers 200 (the event bus is connected).
    Ready,
    /// `/health/live` answers 200 (for a halite whose master is down).
    Live,
    /// The main surface's port accepts TCP connections.
    Listening,
}

/// How to start a halite.
pub struct HaliteBuilder {
    config: Map<String, Json>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    wait: Wait,
    dir: Option<TempDir>,
    main: Option<String>,
}

impl HaliteBuilder {
    /// The lab config with no surface; add some with [`surface`](Self::surface).
    pub fn new(lab: &Lab) -> Self {
        Self::with_config(base_config(lab))
    }

    /// Any master config (add surfaces with [`surface`](Self::surface)).
    pub fn with_config(config: Map<String, Json>) -> Self {
        HaliteBuilder {
            config,
            env: vec![("HALITE_LOG".into(), "info".into())],
            args: Vec::new(),
            wait: Wait::Ready,
            dir: None,
            main: None,
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

    /// What to wait for before the start returns.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Use `dir` (with files written there beforehand) for the config and
    /// the log; it is removed when the halite is dropped.
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// The surface [`Halite::base`] and the start-up wait use (default: the
    /// first of rest_wsgi, rest_cherrypy that is configured).
    pub fn main_surface(mut self, section: &str) -> Self {
        self.main = Some(section.to_owned());
        self
    }

    /// Write the config, start the child and wait for it, from a task that
    /// may block (the wait polls from a thread of its own).
    pub async fn start(self) -> Halite {
        match tokio::task::spawn_blocking(move || self.start_blocking()).await {
            Ok(h) => h,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// As [`start`](Self::start), blocking the calling thread (usable from
    /// inside a test's runtime too).
    pub fn start_blocking(self) -> Halite {
        let dir = self.dir.unwrap_or_default();
        let config_path = dir.path().join("master");
        let yaml = serde_norway::to_string(&self.config).expect("serialise the config");
        std::fs::write(&config_path, yaml).expect("write the config");
        let log_path = dir.path().join("halite.log");
        let log = std::fs::File::create(&log_path).expect("create the log file");
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
        let main = self.main.unwrap_or_else(|| {
            SURFACE_SECTIONS
                .into_iter()
                .find(|s| self.config.contains_key(*s))
                .expect("a halite needs a surface")
                .to_owned()
        });
        let child = cmd.spawn().expect("start halite");
        let port = surface_port(&self.config, &main);
        let prefix = self.config[&main]
            .get("root_prefix")
            .and_then(Json::as_str)
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        let mut halite = Halite {
            child,
            base: format!("{}{prefix}", surface_base(&self.config, &main)),
            port,
            dir: dir.path().to_owned(),
            config: self.config,
            config_path,
            log_path,
            http: client(),
            _dir: dir,
        };
        halite.wait_started(&main, self.wait);
        halite
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

fn surface_port(config: &Map<String, Json>, section: &str) -> u16 {
    config
        .get(section)
        .and_then(|s| s.get("port"))
        .and_then(Json::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("this halite has no {section} surface with a port"))
}

fn surface_base(config: &Map<String, Json>, section: &str) -> String {
    let s = &config[section];
    let tls = s.get("ssl_crt").is_some()
        && !s
            .get("disable_ssl")
            .and_then(Json::as_bool)
            .unwrap_or(false);
    let port = surface_port(config, section);
    format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" })
}

/// YAML `key: value` lines as a mapping (later lines win).
fn yaml_lines(lines: &str) -> Map<String, Json> {
    let mut map = Map::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Map<String, Json> = serde_norway::from_str(line.trim())
            .unwrap_or_else(|e| panic!("not a YAML `key: value` line ({e}): {line}"));
        map.extend(entry);
    }
    map
}

/// A running halite child, killed on drop.
pub struct Halite {
    child: Child,
    /// The main surface's base URL (`http(s)://127.0.0.1:<port>` and its
    /// `root_prefix`), no trailing slash.
    pub base: String,
    /// The main surface's port.
    pub port: u16,
    /// The directory of its config and log (and whatever the test put there).
    pub dir: PathBuf,
    pub config: Map<String, Json>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// A client for it (accepts its test certificates).
    pub http: reqwest::Client,
    _dir: TempDir,
}

impl Halite {
    /// The lab's master, rest_cherrypy over plain HTTP with `extra` options
    /// (one YAML `key: value` per line); waits until ready.
    pub fn cherrypy(extra: &str) -> Halite {
        Halite::cherrypy_in(TempDir::new(), &format!("disable_ssl: true\n{extra}"))
    }

    /// The lab's master, rest_cherrypy with exactly `section` (YAML lines;
    /// host and port are added), in `dir` (for certificates or static files
    /// written there beforehand); waits until ready.
    pub fn cherrypy_in(dir: TempDir, section: &str) -> Halite {
        HaliteBuilder::new(&lab())
            .surface("rest_cherrypy", Json::Object(yaml_lines(section)))
            .dir(dir)
            .start_blocking()
    }

    /// The lab's master, rest_cherrypy over plain HTTP with `extra` string
    /// options; waits until it listens.
    pub fn start_cherrypy(name: &str, extra: &[(&str, &str)]) -> Halite {
        let mut section = Map::new();
        section.insert("disable_ssl".into(), json!(true));
        for (k, v) in extra {
            section.insert((*k).into(), json!(v));
        }
        HaliteBuilder::new(&lab())
            .surface("rest_cherrypy", Json::Object(section))
            .dir(TempDir(super::lab::temp_dir(name)))
            .wait(Wait::Listening)
            .start_blocking()
    }

    /// The master config `cfg` (its surfaces included), in `dir`; waits
    /// until the surface on `port` listens.
    pub fn start_in(dir: PathBuf, cfg: &serde_norway::Mapping, port: u16) -> Halite {
        let Json::Object(config) = serde_json::to_value(cfg).expect("a JSON-compatible config")
        else {
            panic!("a master config is a mapping");
        };
        let main = SURFACE_SECTIONS
            .into_iter()
            .find(|s| {
                config
                    .get(*s)
                    .and_then(|s| s.get("port"))
                    .and_then(Json::as_u64)
                    == Some(u64::from(port))
            })
            .unwrap_or_else(|| panic!("no surface of the config is on port {port}"));
        HaliteBuilder::with_config(config)
            .main_surface(main)
            .dir(TempDir(dir))
            .wait(Wait::Listening)
            .start_blocking()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `ws://` (or `wss://`) URL of a path.
    pub fn ws_url(&self, path: &str) -> String {
        self.url(path).replacen("http", "ws", 1)
    }

    /// The base URL of a surface (`http(s)://127.0.0.1:<port>`, no
    /// `root_prefix`), no trailing slash.
    pub fn surface_url(&self, section: &str) -> String {
        surface_base(&self.config, section)
    }

    /// The rest_wsgi base URL.
    pub fn wsgi_url(&self) -> String {
        self.surface_url("rest_wsgi")
    }

    /// The port of a surface.
    pub fn surface_port(&self, section: &str) -> u16 {
        surface_port(&self.config, section)
    }

    /// Everything halite wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Is the child still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send `signal` (`TERM`, `HUP`, ...) to halite.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Wait up to `limit` for halite to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for halite") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "halite did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for `wait` on the main surface `section` (under its
    /// `root_prefix`), failing with the log when the
    /// child exits first or [`START_LIMIT`] passes. HTTP probes run on a
    /// thread with a runtime of its own, so that this may block inside a
    /// test's runtime.
    fn wait_started(&mut self, section: &str, wait: Wait) {
        let url = match wait {
            Wait::Ready => Some(self.url("/health/ready")),
            Wait::Live => Some(self.url("/health/live")),
            Wait::Listening => None,
        };
        let port = self.surface_port(section);
        let (done_tx, done) = mpsc::channel::<()>();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let prober = url.clone().map(|url| {
            let http = self.http.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async {
                    while stop_rx.try_recv().is_err() {
                        let probe = http.get(&url).timeout(Duration::from_secs(5)).send();
                        if matches!(probe.await, Ok(r) if r.status() == 200) {
                            let _ = done_tx.send(());
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            })
        });
        let what = url.unwrap_or_else(|| format!("a listener on port {port}"));
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "halite exited ({status}) before {what} answered; its log:\n{}",
                    self.log()
                );
            }
            let started = match prober {
                Some(_) => done.try_recv().is_ok(),
                None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            };
            if started {
                break;
            }
            if Instant::now() > deadline {
                let _ = stop.send(());
                panic!(
                    "halite: no answer from {what} within {START_LIMIT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = stop.send(());
        if let Some(p) = prober {
            let _ = p.join();
        }
    }

    /// `/metrics` of a surface as name (with labels) → value.
    pub async fn metrics(&self, section: &str) -> std::collections::BTreeMap<String, f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.surface_url(section)))
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

    /// POST a body with a content type to a surface path; see
    /// [`Reply`](super::http::Reply).
    pub async fn post(
        &self,
        section: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> super::http::Reply {
        let mut req = self
            .http
            .post(format!("{}{path}", self.surface_url(section)))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        super::http::Reply::from(req.send().await.expect("send the request")).await
    }

    /// POST a lowstate list (JSON) to the rest_wsgi surface.
    pub async fn wsgi(&self, lowstate: &Json) -> super::http::Reply {
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
        if std::thread::panicking() {
            eprintln!("halite log: {}", self.log_path.display());
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// Run halite on the lab's master with a `rest_cherrypy` section (YAML
/// lines) that must make it refuse to start; its exit status and output.
pub fn run_to_exit(section: &str) -> (ExitStatus, String) {
    let dir = TempDir::new();
    let mut config = base_config(&lab());
    config.insert("rest_cherrypy".into(), Json::Object(yaml_lines(section)));
    let path = dir.path().join("master");
    std::fs::write(&path, serde_norway::to_string(&config).unwrap()).expect("write the config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_halite"))
        .arg("--config")
        .arg(&path)
        .env_remove("SALT_MASTER_CONFIG")
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
