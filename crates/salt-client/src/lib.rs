//! Drive an unmodified Salt master from Rust, as Salt's own Python
//! `NetapiClient` does, with no HTTP in sight.
//!
//! * [`config`] loads the master config as Salt does.
//! * [`transport`] sends clear requests over the `zeromq` or `tcp` request
//!   transport; [`events`] keeps one event-bus subscription and fans it out.
//! * [`master::Master`] ties them together; [`clients::Netapi`] runs
//!   lowstates with the `local*`, `runner*` and `wheel*` clients.
//! * [`value`] is the one place msgpack becomes JSON.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use salt_client::{clients::Netapi, config::MasterConfig, master::Master};
//! let master = Master::new(MasterConfig::load(None)?);
//! let netapi = Netapi::new(master);
//! let low = serde_json::json!({"client": "local", "tgt": "*", "fun": "test.ping",
//!     "eauth": "pam", "username": "saltdev", "password": "saltdev"});
//! let out = netapi.run(low.as_object().cloned().unwrap_or_default()).await?;
//! # Ok(()) }
//! ```

pub mod acl;
pub mod auth;
pub mod clients;
pub mod config;
pub mod error;
pub mod events;
pub mod master;
pub mod redact;
pub mod targeting;
pub mod transport;
pub mod value;
pub mod yaml;

pub use error::{ErrorKind, SaltError};
