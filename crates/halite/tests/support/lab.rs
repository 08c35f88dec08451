//! The Salt lab (`scripts/lab`), free ports and temporary directories.
//!
//! The lab's settings come from the environment `scripts/lab env` exports
//! (`scripts/test` does this). A lab test asked to run without them fails
//! with a message that says how to start the lab; it never skips.

use std::cell::Cell;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

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

/// The gate between the tests that share the lab's three minions and the few
/// that flood them (hundreds of jobs, one Python process each). On 2 CPUs a
/// flood made the `test.ping` of a test running beside it go unanswered
/// within Salt's timeout; so a flooding test takes the lab [`alone`], and
/// every other test, through [`lab`], shares it. So does a test that holds
/// the master's workers with failing PAM logins, and one that accepts a
/// minion key for a while: every `*` job beside it would wait for that
/// minion.
///
/// A sharing test holds its share until its thread ends (libtest runs each
/// test on a thread of its own): a thread-local records it, and its
/// destructor gives it back. A test with the lab alone must not call [`lab`]
/// from another thread (a task on a multi-thread runtime): that call would
/// wait for the test itself.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

struct GateState {
    /// Threads sharing the lab.
    sharing: usize,
    /// A test has the lab alone.
    alone: bool,
}

static GATE: Gate = Gate {
    state: Mutex::new(GateState {
        sharing: 0,
        alone: false,
    }),
    changed: Condvar::new(),
};

/// Longer than any test: a gate still shut after this is a bug of the
/// harness, and the waiting test says so rather than hanging CI.
const GATE_WAIT: Duration = Duration::from_secs(15 * 60);

impl Gate {
    /// Wait until `free`, then `take`.
    fn enter(
        &self,
        what: &str,
        free: impl Fn(&GateState) -> bool,
        take: impl FnOnce(&mut GateState),
    ) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut state, waited) = self
            .changed
            .wait_timeout_while(state, GATE_WAIT, |s| !free(s))
            .unwrap_or_else(PoisonError::into_inner);
        assert!(
            !waited.timed_out(),
            "waited {GATE_WAIT:?} to {what} the Salt lab"
        );
        take(&mut state);
    }

    fn leave(&self, give_back: impl FnOnce(&mut GateState)) {
        give_back(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }
}

/// What this thread holds of the lab.
#[derive(Clone, Copy, PartialEq)]
enum Held {
    Nothing,
    Share,
    Alone,
}

/// Gives this thread's share back when the thread ends.
struct Share;

impl Drop for Share {
    fn drop(&mut self) {
        GATE.leave(|s| s.sharing -= 1);
    }
}

thread_local! {
    static HELD: Cell<Held> = const { Cell::new(Held::Nothing) };
    static SHARE: Cell<Option<Share>> = const { Cell::new(None) };
}

fn share_the_lab() {
    if HELD.get() != Held::Nothing {
        return;
    }
    GATE.enter("share", |s| !s.alone, |s| s.sharing += 1);
    HELD.set(Held::Share);
    SHARE.set(Some(Share));
}

/// The lab to this test alone while the guard lives: for the tests that
/// flood the minions. Waits until no other test shares it. Take it first,
/// before [`lab`].
#[must_use = "the lab is the test's alone while the guard lives"]
pub fn alone() -> Alone {
    assert!(
        HELD.get() == Held::Nothing,
        "take the lab alone before anything else of it"
    );
    GATE.enter(
        "have alone",
        |s| !s.alone && s.sharing == 0,
        |s| s.alone = true,
    );
    HELD.set(Held::Alone);
    Alone(())
}

pub struct Alone(());

impl Drop for Alone {
    fn drop(&mut self) {
        HELD.set(Held::Nothing);
        GATE.leave(|s| s.alone = false);
    }
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
