//! The Salt lab (`scripts/lab`), free ports and temporary directories.
//!
//! The lab's settings come from the environment `scripts/lab env` exports
//! (`scripts/test` does this). A lab test asked to run without them fails
//! with a message that says how to start the lab; it never skips.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

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
    /// The lab's Python virtualenv (Salt's own clients live there).
    pub venv: PathBuf,
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
///
/// The calling test shares the lab until it ends: it waits while a test
/// that has the lab [`alone`] runs.
pub fn lab() -> Lab {
    share_the_lab();
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
        venv: PathBuf::from(env_var("SALT_LAB_VENV")),
        version: std::env::var("SALT_VERSION_FULL").unwrap_or_default(),
    };
    assert!(
        lab.master_config.is_file(),
        "$SALT_MASTER_CONFIG={} does not exist: is the lab started (scripts/lab start)?",
        lab.master_config.display()
    );
    lab
}

pub use salt_testkit::lab_gate::alone;

/// Share the lab through the gate of `salt_testkit::lab_gate`, which
/// salt-client's lab tests take too.
fn share_the_lab() {
    salt_testkit::lab_gate::share();
}

/// halite's config file for the lab.
pub fn lab_config() -> PathBuf {
    lab().master_config
}

/// The lab's halite config as a mapping, without any surface section.
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

/// A master config for a master that is not running (sockets in `dir`,
/// nothing on the request port): halite serves, `/health/ready` is 503.
/// For tests of the HTTP layer that need no Salt lab.
pub fn absent_master_config(dir: &Path) -> serde_norway::Mapping {
    let yaml = format!(
        "sock_dir: {0}\ncachedir: {0}\npki_dir: {0}\ninterface: 127.0.0.1\nret_port: {1}\n\
         netapi_enable_clients: [local]\n",
        dir.display(),
        free_port()
    );
    serde_norway::from_str(&yaml).expect("a YAML mapping")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A unique short name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A fresh temporary directory that the test removes itself (or hands to
/// [`Halite::start_in`](crate::support::Halite::start_in), which removes it).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("halite-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// A temporary directory removed on drop, unless the test is failing (then
/// it is kept, and named on stderr, for its logs).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(temp_dir("test"))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
