//! The NetapiClient clients (`local`, `local_async`, `local_batch`,
//! `local_subset`, `runner`, `runner_async`, `wheel`, `wheel_async`), one per
//! file, each: parse the lowstate → call the master → shape the result as
//! Salt's `NetapiClient` returns it.
//!
//! [`Netapi::run`] performs NetapiClient's pre-checks in the same order
//! (docs/PROTOCOL.md §5.1) and dispatches on `client`.

mod batch;
mod local;
mod runner;
mod subset;
mod wheel;

use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::error::{Result, SaltError};
use crate::master::Master;

pub use local::{LocalJob, PubReply};
pub use runner::yamlify_arg;

/// One lowstate chunk: the JSON object an HTTP client sent.
pub type Lowstate = Map<String, Json>;

/// Every client NetapiClient knows, in its order.
pub const CLIENTS: [&str; 9] = [
    "local",
    "local_async",
    "local_batch",
    "local_subset",
    "runner",
    "runner_async",
    "wheel",
    "wheel_async",
    "ssh",
];

/// The keys that carry credentials in a lowstate.
pub const CREDENTIAL_KEYS: [&str; 4] = ["eauth", "username", "password", "token"];

/// What a client returns: one value, or — for `local_batch` — a sequence
/// that HTTP surfaces splice into their `return` list.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    One(Json),
    Many(Vec<Json>),
}

/// Salt's NetapiClient over the wire.
#[derive(Clone)]
pub struct Netapi {
    master: Master,
}

impl Netapi {
    /// Clients for `master`.
    pub fn new(master: Master) -> Self {
        Netapi { master }
    }

    /// The master handle.
    pub fn master(&self) -> &Master {
        &self.master
    }

    /// Run one lowstate chunk as `NetapiClient.run` does.
    pub async fn run(&self, low: Lowstate) -> Result<Output> {
        let config = self.master.config();
        let client = match low.get("client") {
            Some(Json::String(c)) => c.clone(),
            Some(other) => {
                return Err(SaltError::Invocation(format!(
                    "Invalid client specified: '{other}'"
                )))
            }
            None => return Err(SaltError::Invocation("No client specified".into())),
        };
        if !CLIENTS.contains(&client.as_str()) {
            return Err(SaltError::Invocation(format!(
                "Invalid client specified: '{client}'"
            )));
        }
        if !config.netapi_enable_clients().iter().any(|c| c == &client) {
            return Err(SaltError::Invocation(format!(
                "Client disabled: '{client}'. Add to 'netapi_enable_clients' master config option to enable."
            )));
        }
        if !low.contains_key("token") && !low.contains_key("eauth") {
            return Err(SaltError::Authentication(
                "No authentication credentials given".into(),
            ));
        }
        // Every eauth backend is called with a username and a password;
        // without one the master's eauth call raises (3006 answers with an
        // exception, 3008 with an authentication error). Either way the
        // caller failed to authenticate.
        if !low.contains_key("token")
            && (!low.contains_key("username") || !low.contains_key("password"))
        {
            let user = low
                .get("username")
                .and_then(Json::as_str)
                .unwrap_or("UNKNOWN");
            return Err(SaltError::Authentication(format!(
                "Authentication failure of type \"eauth\" occurred for user {user}."
            )));
        }
        if truthy(low.get("raw_shell")) && !config.netapi_allow_raw_shell() {
            return Err(SaltError::Authentication(
                "Raw shell option not allowed.".into(),
            ));
        }
        let m = &self.master;
        match client.as_str() {
            "local" => local::local(m, low).await.map(Output::One),
            "local_async" => local::local_async(m, low).await.map(Output::One),
            "local_batch" => batch::local_batch(m, low).await.map(Output::Many),
            "local_subset" => subset::local_subset(m, low).await.map(Output::One),
            "runner" => runner::runner(m, low).await.map(Output::One),
            "runner_async" => runner::runner_async(m, low).await.map(Output::One),
            "wheel" => wheel::wheel(m, low).await.map(Output::One),
            "wheel_async" => wheel::wheel_async(m, low).await.map(Output::One),
            _ => Err(SaltError::Invocation(
                "The 'ssh' client runs salt-ssh inside Python's salt-api process and has no \
                 equivalent on the master's wire protocol; use the runner 'ssh.cmd' instead \
                 (client: runner, fun: ssh.cmd)."
                    .into(),
            )),
        }
    }
}

/// Python truthiness of a JSON value.
pub(crate) fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// A number of seconds from a lowstate value (number or numeric string).
pub(crate) fn seconds(v: Option<&Json>) -> Option<f64> {
    match v? {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
}

/// Duration from seconds, saturating.
pub(crate) fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(86_400 * 365))
}

/// `arg` as a list: a scalar is one argument (rest_cherrypy wraps it).
pub(crate) fn arg_list(low: &Lowstate) -> Vec<Json> {
    match low.get("arg") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(a)) => a.clone(),
        Some(other) => vec![other.clone()],
    }
}

/// `kwarg` as a map; anything else is the caller's error.
pub(crate) fn kwarg_map(low: &Lowstate) -> Result<Map<String, Json>> {
    match low.get("kwarg") {
        None | Some(Json::Null) => Ok(Map::new()),
        Some(Json::Object(m)) => Ok(m.clone()),
        Some(_) => Err(SaltError::Invocation("'kwarg' must be a dictionary".into())),
    }
}

/// A required string field.
pub(crate) fn required_str<'a>(low: &'a Lowstate, key: &str) -> Result<&'a str> {
    match low.get(key) {
        Some(Json::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(SaltError::Invocation(format!(
            "'{key}' must be a non-empty string"
        ))),
        None => Err(SaltError::Invocation(format!(
            "Missing required argument '{key}'"
        ))),
    }
}

/// The OS user halite runs as, sent as the publish `user` (only checked
/// against `publisher_acl_blacklist`; the job's user is the eauth name).
pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into())
}
