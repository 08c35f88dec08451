//! A halite child process on a free loopback port, serving the lab's master
//! with a temporary config whose `rest_cherrypy` section the test chooses.
//! Used by `browser.rs` and `soak.rs`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The halite master config of the running lab; panics with a clear message
/// when the lab environment is missing.
pub fn lab_config() -> PathBuf {
    let Some(path) = std::env::var_os("SALT_MASTER_CONFIG") else {
        panic!(
            "SALT_MASTER_CONFIG is not set: these tests need the Salt lab; \
             run `scripts/lab start && eval \"$(scripts/lab env)\"` (scripts/test does this)"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "SALT_MASTER_CONFIG={} does not exist: start the lab with scripts/lab start",
        path.display()
    );
    path
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A fresh temporary directory (removed by [`Halite`]'s drop on success).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("halite-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// A running halite; killed on drop.
pub struct Halite {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Halite {
    /// Start halite for the lab master with `rest_cherrypy` set to
    /// `{port: <free>, host: 127.0.0.1, disable_ssl: true}` plus `extra`
    /// (YAML mapping entries), and wait until it answers HTTP.
    pub fn start_cherrypy(name: &str, extra: &[(&str, &str)]) -> Halite {
        let lab = lab_config();
        let text = std::fs::read_to_string(&lab).expect("read the lab's halite config");
        let mut cfg: serde_norway::Mapping =
            serde_norway::from_str(&text).expect("the lab config is a YAML mapping");
        cfg.remove("rest_wsgi");
        let port = free_port();
        let mut section = serde_norway::Mapping::new();
        section.insert("port".into(), port.into());
        section.insert("host".into(), "127.0.0.1".into());
        section.insert("disable_ssl".into(), true.into());
        for (k, v) in extra {
            section.insert((*k).into(), (*v).into());
        }
        cfg.insert("rest_cherrypy".into(), section.into());
        let dir = temp_dir(name);
        let config = dir.join("master");
        std::fs::write(&config, serde_norway::to_string(&cfg).unwrap()).unwrap();
        let log = dir.join("halite.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_halite"))
            .arg("--config")
            .arg(&config)
            .env_remove("SALT_MASTER_CONFIG")
            .env("HALITE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn halite");
        let mut h = Halite {
            child,
            port,
            dir,
            config,
            log,
        };
        h.wait_listening(Duration::from_secs(20));
        h
    }

    fn wait_listening(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("halite exited early ({status}); log:\n{}", self.log_text());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "halite did not listen on port {} within {limit:?}; log:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// VmRSS of the child in KiB, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Halite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("halite log kept in {}", self.log.display());
        }
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Log in through `/login` (eauth auto, saltdev) and return the token.
pub async fn login(h: &Halite) -> String {
    let resp = reqwest::Client::new()
        .post(h.url("/login"))
        .header("Accept", "application/json")
        .json(&serde_json::json!({"eauth": "auto", "username": "saltdev", "password": "x"}))
        .send()
        .await
        .expect("POST /login");
    assert_eq!(resp.status(), 200, "POST /login");
    let body: serde_json::Value = resp.json().await.expect("/login answers JSON");
    body["return"][0]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in the /login answer: {body}"))
        .to_owned()
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}
