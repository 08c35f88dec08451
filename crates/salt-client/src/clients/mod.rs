//! The NetapiClient clients (`local`, `local_async`, `local_batch`,
//! `local_subset`, `runner`, `runner_async`, `wheel`, `wheel_async`), one per
//! file, each: parse the lowstate → call the master → shape the result as
//! Salt's `NetapiClient` returns it.
//!
//! [`Netapi::run`] performs NetapiClient's pre-checks in the same order
//! (docs/PROTOCOL.md §5.1) and dispatches on `client`.

mod batch;
mod expected;
mod local;
mod low;
mod runner;
mod subset;
mod wheel;

use std::future::Future;

use futures_util::future::Either;
use serde_json::{Map, Value as Json};

use crate::error::{Result, SaltError};
use crate::master::Master;

pub use crate::args::yamlify_arg;
pub use expected::Names;
pub use local::{Collected, Gatherer, LocalJob, PubReply, Text, WriteReturn};
pub use low::{Credentials, Low};

/// One lowstate chunk: the JSON object an HTTP client sent. [`Netapi`]
/// parses it once into a [`Low`], which the clients read.
pub type Lowstate = Map<String, Json>;

/// A lowstate `client`: every client NetapiClient knows, in its order.
/// Adding one is compiler-guided: [`Netapi::run`] matches exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    Local,
    LocalAsync,
    LocalBatch,
    LocalSubset,
    Runner,
    RunnerAsync,
    Wheel,
    WheelAsync,
    /// Runs salt-ssh inside Python's salt-api process: no wire equivalent.
    Ssh,
}

impl Client {
    /// Every client, in NetapiClient's order.
    pub const ALL: [Client; 9] = [
        Client::Local,
        Client::LocalAsync,
        Client::LocalBatch,
        Client::LocalSubset,
        Client::Runner,
        Client::RunnerAsync,
        Client::Wheel,
        Client::WheelAsync,
        Client::Ssh,
    ];

    /// The name a lowstate uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Client::Local => "local",
            Client::LocalAsync => "local_async",
            Client::LocalBatch => "local_batch",
            Client::LocalSubset => "local_subset",
            Client::Runner => "runner",
            Client::RunnerAsync => "runner_async",
            Client::Wheel => "wheel",
            Client::WheelAsync => "wheel_async",
            Client::Ssh => "ssh",
        }
    }
}

impl std::str::FromStr for Client {
    type Err = SaltError;

    /// NetapiClient's error for a name it does not know.
    fn from_str(name: &str) -> Result<Client> {
        Client::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| SaltError::Invocation(format!("Invalid client specified: '{name}'")))
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub async fn run(&self, low: impl Into<Low>) -> Result<Output> {
        let low = low.into();
        let client = self.precheck(&low)?;
        let m = &self.master;
        match client {
            Client::Local => local::local(m, low).await.map(Output::One),
            Client::LocalAsync => local::local_async(m, low).await.map(Output::One),
            Client::LocalBatch => batch::local_batch(m, low).await.map(Output::Many),
            Client::LocalSubset => subset::local_subset(m, low).await.map(Output::One),
            Client::Runner => runner::runner(m, low).await.map(Output::One),
            Client::RunnerAsync => runner::runner_async(m, low).await.map(Output::One),
            Client::Wheel => wheel::wheel(m, low).await.map(Output::One),
            Client::WheelAsync => wheel::wheel_async(m, low).await.map(Output::One),
            Client::Ssh => Err(SaltError::Invocation(
                "The 'ssh' client runs salt-ssh inside Python's salt-api process and has no \
                 equivalent on the master's wire protocol; use the runner 'ssh.cmd' instead \
                 (client: runner, fun: ssh.cmd)."
                    .into(),
            )),
        }
    }

    /// Start a `local` chunk (after the same pre-checks as [`Netapi::run`])
    /// and hand back its returns one at a time instead of one answer, for
    /// callers that stream them or write the answer themselves (with
    /// `write`, see [`LocalJob::start`]). `None` when no minion matched the
    /// target. Any other client is an invocation error.
    ///
    /// Not an `async fn`, for the reason [`local::start_local`] gives: the
    /// checks run here and the lowstate is gone before the job is published.
    pub fn start_local(
        &self,
        low: impl Into<Low>,
        write: Option<WriteReturn>,
    ) -> impl Future<Output = Result<Option<Gatherer>>> + Send + '_ {
        let low = low.into();
        let refused = match self.precheck(&low) {
            Ok(Client::Local) => return Either::Left(local::start_local(&self.master, low, write)),
            Ok(_) => SaltError::Invocation("only the 'local' client can stream its returns".into()),
            Err(e) => e,
        };
        Either::Right(std::future::ready(Err(refused)))
    }

    /// NetapiClient's checks, in its order; the client.
    fn precheck(&self, low: &Low) -> Result<Client> {
        let config = self.master.config();
        let client = low.client.clone()?;
        if !config
            .netapi_enable_clients()
            .iter()
            .any(|c| c == client.as_str())
        {
            return Err(SaltError::Invocation(format!(
                "Client disabled: '{client}'. Add to 'netapi_enable_clients' master config option to enable."
            )));
        }
        let creds = &low.credentials;
        if creds.token.is_none() && creds.eauth.is_none() {
            return Err(SaltError::Authentication(
                "No authentication credentials given".into(),
            ));
        }
        // Every eauth backend is called with a username and a password;
        // without one the master's eauth call raises (3006 answers with an
        // exception, 3008 with an authentication error). Either way the
        // caller failed to authenticate.
        if creds.token.is_none() && (creds.username.is_none() || creds.password.is_none()) {
            let user = creds
                .username
                .as_ref()
                .and_then(Json::as_str)
                .unwrap_or("UNKNOWN");
            return Err(SaltError::Authentication(format!(
                "Authentication failure of type \"eauth\" occurred for user {user}."
            )));
        }
        if low.raw_shell && !config.netapi_allow_raw_shell() {
            return Err(SaltError::Authentication(
                "Raw shell option not allowed.".into(),
            ));
        }
        Ok(client)
    }
}

/// The OS user halite runs as, sent as the publish `user` (only checked
/// against `publisher_acl_blacklist`; the job's user is the eauth name).
pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into())
}
