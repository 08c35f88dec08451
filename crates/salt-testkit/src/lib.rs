//! An in-process fake Salt master that speaks the real wire protocol.
//!
//! [`FakeMaster::start`] binds a ZMTP 3.1 ROUTER request server on an
//! ephemeral loopback port and the event bus (`master_event_pub.ipc`,
//! `master_event_pull.ipc`) in a temporary `sock_dir`, and writes a master
//! config that points at both. Anything that loads that config
//! (`salt_client::config::MasterConfig`, halite) talks to it exactly as to a
//! real master: the same envelopes, replies, error shapes and event frames
//! (docs/PROTOCOL.md describes them).
//!
//! By default it behaves like a Salt 3008 master with the lab's eauth users
//! (`auto`: `saltdev` and `hal` with every right, `limited` with `test.ping`
//! only; `pam`: `saltdev`/`saltdev`) and three minions `ms-0` .. `ms-2` that
//! answer every job at once. Tests change that with [`FakeMaster::script`]
//! (any reply, a delay, silence, a closed connection), [`FakeMaster::fire`]
//! and [`FakeMaster::fire_raw`] (events, byte-exact frames), and
//! [`FakeMaster::disconnect_bus`].
//!
//! Every task belongs to the fake and ends when it is dropped.

mod bus;
mod handler;
pub mod lab_gate;
mod zmtp_server;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use salt_client::events::Framing;
use serde_json::Value as Json;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

pub use bus::Bus;
pub use handler::Handler;
pub use zmtp_server::serve_request_server;

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This value, sent as msgpack.
    Value(Json),
    /// These exact msgpack bytes (a reply captured from a real master).
    Raw(Vec<u8>),
    /// Salt's error reply `{"error": {"name": .., "message": ..}}`.
    Error { name: String, message: String },
    /// The reply after a delay.
    Delay(Duration, Box<Reply>),
    /// No reply at all; the connection stays open.
    Never,
    /// Close the connection without replying.
    Close,
}

impl Reply {
    /// Salt's error reply with this exception name and message.
    pub fn error(name: &str, message: &str) -> Reply {
        Reply::Error {
            name: name.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// What a fake master is like.
#[derive(Debug, Clone)]
pub struct Options {
    /// Minion ids that answer jobs.
    pub minions: Vec<String>,
    /// Framing of the publish side of the bus (3008: bare msgpack; 3006.26+:
    /// length-prefixed).
    pub pub_framing: Framing,
    /// Framing the pull side accepts (3007.15+ and 3008.2+: prefixed); frames
    /// in the other framing are dropped silently, as real masters do.
    pub pull_framing: Framing,
    /// YAML appended to the written master config (surface sections, ...).
    pub extra_config: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            minions: (0..3).map(|i| format!("ms-{i}")).collect(),
            pub_framing: Framing::Bare,
            pull_framing: Framing::Prefixed,
            extra_config: String::new(),
        }
    }
}

/// The fake's state, shared by its request server and bus tasks.
pub(crate) struct State {
    pub(crate) minions: Vec<String>,
    pub(crate) bus: Bus,
    scripts: Mutex<HashMap<String, Script>>,
    requests: Mutex<VecDeque<Json>>,
    pub(crate) tokens: Mutex<HashMap<String, Json>>,
    /// Returns of the jobs published so far, by jid (for `jobs.lookup_jid`).
    pub(crate) jobs: Mutex<HashMap<String, serde_json::Map<String, Json>>>,
    pub(crate) returns: Mutex<HashMap<String, Json>>,
    pub(crate) silent: Mutex<HashSet<String>>,
    /// Where tokens are stored as files, as Salt 3008 stores them
    /// (`<cachedir>/tokens/<token>.p`): removing the file revokes the token.
    pub(crate) token_dir: PathBuf,
    next_jid: AtomicU64,
}

#[derive(Default)]
struct Script {
    once: VecDeque<Reply>,
    always: Option<Reply>,
}

/// Requests kept for [`FakeMaster::requests`]; older ones are forgotten.
const KEPT_REQUESTS: usize = 10_000;

/// Lock a mutex, ignoring poisoning (a panicking test thread must not
/// cascade into every other assertion).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub(crate) fn new_jid(&self) -> String {
        // 20 digits like Salt's jids: a fixed date plus a counter.
        format!(
            "20260101{:012}",
            self.next_jid.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The scripted reply for `cmd`, if any (a one-shot reply first).
    pub(crate) fn scripted(&self, cmd: &str) -> Option<Reply> {
        let mut scripts = lock(&self.scripts);
        let script = scripts.get_mut(cmd)?;
        script.once.pop_front().or_else(|| script.always.clone())
    }

    pub(crate) fn record(&self, load: Json) {
        let mut requests = lock(&self.requests);
        if requests.len() == KEPT_REQUESTS {
            requests.pop_front();
        }
        requests.push_back(load);
    }
}

/// A running fake master. Dropping it stops every task and removes its
/// directory.
pub struct FakeMaster {
    state: Arc<State>,
    ret_port: u16,
    config_path: PathBuf,
    dir: tempfile::TempDir,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeMaster {
    /// A fake with the default [`Options`].
    pub async fn start() -> FakeMaster {
        FakeMaster::with(Options::default()).await
    }

    /// A fake with these options. Panics when it cannot bind (a test
    /// fixture has nothing better to do).
    pub async fn with(options: Options) -> FakeMaster {
        let dir = tempfile::Builder::new()
            .prefix("salt-testkit-")
            .tempdir()
            .expect("create a temporary directory");
        let sock_dir = dir.path().join("sock");
        for d in ["sock", "cache/tokens", "pki"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("create the fake's directories");
        }
        let req = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the request server");
        let ret_port = req.local_addr().expect("local address").port();
        let pub_listener = bind_unix(&sock_dir.join("master_event_pub.ipc"));
        let pull_listener = bind_unix(&sock_dir.join("master_event_pull.ipc"));

        let state = Arc::new(State {
            minions: options.minions.clone(),
            bus: Bus::new(options.pub_framing, options.pull_framing),
            scripts: Mutex::default(),
            requests: Mutex::default(),
            tokens: Mutex::default(),
            jobs: Mutex::default(),
            returns: Mutex::default(),
            silent: Mutex::default(),
            token_dir: dir.path().join("cache/tokens"),
            next_jid: AtomicU64::new(1),
        });
        let config_path = dir.path().join("master");
        std::fs::write(&config_path, config_text(dir.path(), ret_port, &options))
            .expect("write the fake's master config");

        let handler: Arc<dyn Handler> = state.clone();
        let tasks = vec![
            tokio::spawn(serve_request_server(req, handler)),
            tokio::spawn(state.bus.clone().serve_publish(pub_listener)),
            tokio::spawn(state.bus.clone().serve_pull(pull_listener)),
        ];
        FakeMaster {
            state,
            ret_port,
            config_path,
            dir,
            tasks,
        }
    }

    /// The master config file that points at this fake.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The fake's root directory (`root_dir`; `sock_dir` is `<root>/sock`).
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The request server's port (`ret_port`).
    pub fn ret_port(&self) -> u16 {
        self.ret_port
    }

    /// Minion ids of this fake.
    pub fn minions(&self) -> &[String] {
        &self.state.minions
    }

    /// Answer every later request whose `cmd` is `cmd` with `reply`, until
    /// [`unscript`](Self::unscript).
    pub fn script(&self, cmd: &str, reply: Reply) {
        lock(&self.state.scripts)
            .entry(cmd.to_owned())
            .or_default()
            .always = Some(reply);
    }

    /// Answer only the next request whose `cmd` is `cmd` with `reply`.
    pub fn script_once(&self, cmd: &str, reply: Reply) {
        lock(&self.state.scripts)
            .entry(cmd.to_owned())
            .or_default()
            .once
            .push_back(reply);
    }

    /// Back to the default behaviour for `cmd`.
    pub fn unscript(&self, cmd: &str) {
        lock(&self.state.scripts).remove(cmd);
    }

    /// What minions return for `fun` (default: `test.ping` true, `test.arg`
    /// its arguments, `grains.items` a few grains, anything else Salt's
    /// "not available" string). Runner and wheel functions use the same
    /// table, keyed `runner.<fun>` and `wheel.<fun>`.
    pub fn set_return(&self, fun: &str, ret: Json) {
        lock(&self.state.returns).insert(fun.to_owned(), ret);
    }

    /// This minion stops answering jobs (it is still targeted).
    pub fn silence(&self, minion: &str) {
        lock(&self.state.silent).insert(minion.to_owned());
    }

    /// The loads of the requests received so far (the newest 10,000), as
    /// JSON, credentials included: tests assert what reached the master.
    pub fn requests(&self) -> Vec<Json> {
        lock(&self.state.requests).iter().cloned().collect()
    }

    /// Publish an event on the bus.
    pub fn fire(&self, tag: &str, data: &Json) {
        self.state.bus.fire(tag, data);
    }

    /// Publish these bytes on the bus as they are (a frame captured from a
    /// real master, or a hostile one).
    pub fn fire_raw(&self, bytes: &[u8]) {
        self.state.bus.fire_raw(bytes);
    }

    /// Close every bus subscriber's connection (a master restart, as a
    /// subscriber sees it).
    pub fn disconnect_bus(&self) {
        self.state.bus.disconnect_all();
    }

    /// Connected bus subscribers.
    pub fn bus_subscribers(&self) -> usize {
        self.state.bus.subscribers()
    }

    /// Wait until at least `n` bus subscribers are connected (panics after
    /// 10 s).
    pub async fn wait_for_subscribers(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.bus_subscribers() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} bus subscribers after 10 s, want {n}",
                self.bus_subscribers()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every event published so far that matched `prefix`, as (tag, data),
    /// including events fired into the pull side by clients.
    pub fn events(&self, prefix: &str) -> Vec<(String, Json)> {
        self.state.bus.history(prefix)
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.state.bus.disconnect_all();
    }
}

fn bind_unix(path: &Path) -> UnixListener {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()))
}

fn config_text(root: &Path, ret_port: u16, options: &Options) -> String {
    let d = root.display();
    let first_two = options
        .minions
        .iter()
        .take(2)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "# A salt-testkit fake master on 127.0.0.1:{ret_port} (tests only).\n\
         root_dir: {d}\n\
         interface: 127.0.0.1\n\
         ret_port: {ret_port}\n\
         transport: zeromq\n\
         ipc_mode: ipc\n\
         sock_dir: {d}/sock\n\
         cachedir: {d}/cache\n\
         token_dir: {d}/cache/tokens\n\
         pki_dir: {d}/pki\n\
         log_file: {d}/master.log\n\
         external_auth:\n\
         \x20 auto:\n\
         \x20   saltdev: ['.*', '@runner', '@wheel', '@jobs']\n\
         \x20   hal: ['.*', '@runner', '@wheel', '@jobs']\n\
         \x20   limited: ['test.ping']\n\
         \x20 pam:\n\
         \x20   saltdev: ['.*', '@runner', '@wheel', '@jobs']\n\
         nodegroups:\n\
         \x20 first_two: 'L@{first_two}'\n\
         \x20 group_all: 'ms-*'\n\
         netapi_enable_clients: [local, local_async, local_batch, local_subset, runner, runner_async, wheel, wheel_async]\n\
         {extra}\n",
        extra = options.extra_config,
    )
}
