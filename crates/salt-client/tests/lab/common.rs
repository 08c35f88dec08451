//! Shared helpers of the integration tests: the lab's environment, a
//! `Netapi` on the lab master, lowstate shorthands.
//!
//! Every integration test talks to a real Salt lab started by `scripts/test`
//! (or `scripts/matrix`). Without the lab's environment the tests fail with a
//! message saying so; they never pass silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use salt_client::clients::{Lowstate, Netapi, Output};
use salt_client::config::MasterConfig;
use salt_client::master::Master;
use salt_client::SaltError;
use serde_json::{json, Map, Value as Json};

/// The settings of one running lab, from `scripts/lab env` (optionally with a
/// prefix, e.g. `RESTART_` for the restart lab of `scripts/test`).
#[derive(Debug, Clone)]
pub struct Lab {
    pub prefix: &'static str,
    /// The master config halite loads (`SALT_MASTER_CONFIG`).
    pub config: PathBuf,
    pub lab_dir: PathBuf,
    pub version: String,
    pub transport: String,
    pub ipc_mode: String,
    pub api_url: String,
    pub minions: Vec<String>,
    pub port_base: u16,
    pub ret_port: u16,
    pub venv: PathBuf,
    pub sock_dir: PathBuf,
    pub pam_user: String,
    pub pam_password: String,
}

fn var(prefix: &str, name: &str) -> String {
    let key = format!("{prefix}{name}");
    match std::env::var(&key) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "environment variable {key} is not set: these integration tests need a running Salt \
             lab; run scripts/test (or scripts/matrix), or start one with scripts/lab start and \
             eval \"$(scripts/lab env)\""
        ),
    }
}

impl Lab {
    fn from_env(prefix: &'static str) -> Lab {
        let num = |n: &str| -> u16 {
            var(prefix, n)
                .parse()
                .unwrap_or_else(|_| panic!("{prefix}{n} is not a port number"))
        };
        Lab {
            prefix,
            config: var(prefix, "SALT_MASTER_CONFIG").into(),
            lab_dir: var(prefix, "HALITE_LAB_DIR").into(),
            version: var(prefix, "SALT_VERSION_FULL"),
            transport: var(prefix, "SALT_LAB_TRANSPORT"),
            ipc_mode: var(prefix, "SALT_LAB_IPC_MODE"),
            api_url: var(prefix, "SALT_API_URL"),
            minions: var(prefix, "SALT_LAB_MINIONS")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            port_base: num("SALT_LAB_PORT_BASE"),
            ret_port: num("SALT_LAB_RET_PORT"),
            venv: var(prefix, "SALT_LAB_VENV").into(),
            sock_dir: var(prefix, "SALT_LAB_SOCK_DIR").into(),
            pam_user: var(prefix, "SALT_LAB_PAM_USER"),
            pam_password: var(prefix, "SALT_LAB_PAM_PASSWORD"),
        }
    }

    /// `(major, minor)` of the lab's Salt, e.g. `(3008, 5)`.
    pub fn salt_version(&self) -> (u32, u32) {
        let mut parts = self.version.split('.').map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// The master config as the library loads it.
    pub fn master_config(&self) -> MasterConfig {
        MasterConfig::from_file(&self.config)
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", self.config.display()))
    }

    /// The master config with top-level keys replaced (`null` removes a key).
    pub fn master_config_with(&self, changes: Json) -> MasterConfig {
        let text = std::fs::read_to_string(&self.config)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.config.display()));
        let mut doc: Json = serde_norway::from_str(&text).expect("lab master config is YAML");
        let map = doc.as_object_mut().expect("config is a mapping");
        for (k, v) in changes.as_object().expect("changes is an object") {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
        let yaml = serde_norway::to_string(&doc).expect("serialises");
        let dir = self.config.parent().unwrap_or(Path::new("/"));
        MasterConfig::from_yaml_str(&yaml, dir).expect("modified config loads")
    }

    /// The minion map `{id: value}` for every minion of the lab.
    pub fn all(&self, value: Json) -> Json {
        self.only(
            &self.minions.iter().map(String::as_str).collect::<Vec<_>>(),
            value,
        )
    }

    /// The minion map `{id: value}` for `ids`.
    pub fn only(&self, ids: &[&str], value: Json) -> Json {
        Json::Object(
            ids.iter()
                .map(|id| (id.to_string(), value.clone()))
                .collect(),
        )
    }

    /// Run `scripts/lab <args>` for this lab (its PORT_BASE and MINIONS).
    pub fn script(&self, args: &[&str]) {
        let script = project_dir().join("scripts/lab");
        let lab_env = std::fs::read_to_string(self.lab_dir.join("lab.env")).unwrap_or_default();
        let mut cmd = std::process::Command::new(&script);
        cmd.args(args);
        for line in lab_env.lines() {
            if let Some((k, v)) = line.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.env("LAB_NAME", self.lab_dir.file_name().expect("lab dir name"));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/lab {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The main lab (3 minions), shared with every test but one that has it
/// alone (halite's lab tests run beside these, on the same lab: see
/// `salt_testkit::lab_gate`).
pub fn lab() -> Lab {
    salt_testkit::lab_gate::share();
    Lab::from_env("")
}

/// The one-minion lab that the restart tests may stop and start.
pub fn restart_lab() -> Lab {
    Lab::from_env("RESTART_")
}

/// The project checkout.
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("project dir")
}

/// A `Master` on `config` whose event bus is connected.
pub async fn master_for(config: MasterConfig) -> Master {
    let master = Master::new(config);
    master
        .bus()
        .wait_connected(Duration::from_secs(20))
        .await
        .expect("the lab's event bus is reachable");
    master
}

/// A `Netapi` on the main lab.
pub async fn netapi() -> (Lab, Netapi) {
    let lab = lab();
    let master = master_for(lab.master_config()).await;
    (lab, Netapi::new(master))
}

/// A JSON object literal as a lowstate.
pub fn low(v: Json) -> Lowstate {
    match v {
        Json::Object(m) => m,
        other => panic!("a lowstate must be an object, not {other}"),
    }
}

/// Seconds a `local*` lowstate of these tests waits for returns before Salt's
/// `saltutil.find_job` probing starts (the lowstate's `timeout`). The lab is
/// shared with other test suites and load tests on a small machine, so a
/// minion may need far longer than Salt's default 5 s to answer. A healthy
/// call still returns as soon as every minion has answered; this is a budget,
/// not an expectation of speed.
pub const LOCAL_TIMEOUT: u64 = 90;

/// Add [`LOCAL_TIMEOUT`] to a `local*` lowstate that has no `timeout`.
pub fn with_local_timeout(l: &mut Lowstate) {
    let local = l
        .get("client")
        .and_then(Json::as_str)
        .is_some_and(|c| c.starts_with("local"));
    if local && !l.contains_key("timeout") {
        l.insert("timeout".into(), json!(LOCAL_TIMEOUT));
    }
}

/// `v` plus the auto-eauth credentials of `saltdev` (and, for `local*`
/// clients without their own `timeout`, [`LOCAL_TIMEOUT`]).
pub fn auto(v: Json) -> Lowstate {
    with(
        v,
        json!({"eauth": "auto", "username": "saltdev", "password": "anything"}),
    )
}

/// `v` plus the keys of `extra`.
pub fn with(v: Json, extra: Json) -> Lowstate {
    let mut l = low(v);
    if let Json::Object(e) = extra {
        l.extend(e);
    }
    with_local_timeout(&mut l);
    l
}

/// Run a lowstate and return its single value.
pub async fn run_one(netapi: &Netapi, l: Lowstate) -> Result<Json, SaltError> {
    match netapi.run(l).await? {
        Output::One(v) => Ok(v),
        Output::Many(v) => panic!("expected one value, got a sequence: {v:?}"),
    }
}

/// Run a lowstate that must succeed.
pub async fn ok(netapi: &Netapi, l: Lowstate) -> Json {
    let desc = Json::Object(redacted(&l)).to_string();
    run_one(netapi, l)
        .await
        .unwrap_or_else(|e| panic!("{desc} failed: {e:?}"))
}

/// Run a lowstate that must fail, returning the error.
pub async fn err(netapi: &Netapi, l: Lowstate) -> SaltError {
    let desc = Json::Object(redacted(&l)).to_string();
    match netapi.run(l).await {
        Ok(v) => panic!("{desc} should fail but returned {v:?}"),
        Err(e) => e,
    }
}

fn redacted(l: &Lowstate) -> Map<String, Json> {
    let mut j = Json::Object(l.clone());
    salt_client::redact::redact(&mut j);
    j.as_object().cloned().unwrap_or_default()
}

/// Wait (bounded) for the event whose tag satisfies `want` on `rx`.
pub async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<salt_client::events::Event>>,
    limit: Duration,
    what: &str,
    mut want: impl FnMut(&salt_client::events::Event) -> bool,
) -> std::sync::Arc<salt_client::events::Event> {
    let found = tokio::time::timeout(limit, async {
        loop {
            match rx.recv().await {
                Ok(ev) if want(&ev) => return ev,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    panic!("event stream closed while waiting for {what}")
                }
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no event {what} within {limit:?}"))
}
