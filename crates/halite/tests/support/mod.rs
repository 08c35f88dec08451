//! The one test harness of halite's integration tests, shared by both test
//! binaries (`tests/inproc`, no Salt lab; `tests/lab`, behind the `lab`
//! feature):
//!
//! - [`lab`]: the Salt lab `scripts/lab` started (from the environment
//!   `scripts/lab env` exports), free ports, temporary directories;
//! - [`halite`]: a halite child process with a config of the test's choosing
//!   (the lab's master, or a master that is not running), started and waited
//!   for, killed on drop;
//! - [`http`]: HTTP clients and helpers (login, JSON calls, SSE, replies),
//!   lowstate builders and result normalisation;
//! - [`inproc`]: halite's real `Router` driven in-process against
//!   salt-testkit's fake master.
#![allow(dead_code, unused_imports)]

pub mod halite;
pub mod http;
pub mod inproc;
pub mod lab;

pub use halite::*;
pub use http::*;
pub use lab::*;
