//! halite: a REST API for Salt masters, replacing Python's salt-api.
//!
//! The library is the whole server; the `halite` binary only parses the
//! command line and starts a runtime. The public API is small:
//!
//! * [`settings`] turns the master config (plus [`settings::Overrides`] from
//!   the command line) into the [`Surface`]s to serve;
//! * [`AppState`] is what the handlers of a surface share (the master
//!   handle, the surface's [`Limits`], the metrics);
//! * [`router`] builds one surface's complete axum `Router`, which tests can
//!   drive without a socket (`tower::ServiceExt::oneshot`);
//! * [`serve`] binds every surface and runs until SIGINT/SIGTERM.
//!
//! Modules depend downwards only: `serve` → `router` → the surfaces
//! (`wsgi`, `cherrypy`) → `lowstate`, `health` → `state` → `metrics`,
//! `settings` → `body`, `error`, `response` → `pyjson`.
//!
//! ```no_run
//! # async fn demo(master: salt_client::master::Master) {
//! use halite::{router, AppState, Limits, Surface};
//! use tower::ServiceExt;
//!
//! let app = router(&Surface::wsgi(), AppState::new(master, Limits::default()));
//! let req = axum::http::Request::get("/health/live")
//!     .body(axum::body::Body::empty())
//!     .unwrap();
//! let resp = app.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! # }
//! ```

mod body;
mod cherrypy;
pub mod error;
mod health;
mod logsafe;
mod lowstate;
pub mod metrics;
mod pyjson;
mod response;
mod router;
mod serve;
pub mod settings;
mod state;
mod throttle;
mod wsgi;

pub use router::router;
pub use serve::serve;
pub use settings::{Overrides, Surface, SurfaceKind};
pub use state::{AppState, Limits};
