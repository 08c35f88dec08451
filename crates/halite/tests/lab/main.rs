//! halite's lab tier: every test that needs the real Salt lab
//! (`scripts/lab`), in one test binary (one link instead of one per file).
//! Behind the `lab` feature; `scripts/test` starts the labs and enables it.
//! Run one area with e.g. `cargo test -p halite --features lab --test lab cherrypy::`.

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod cherrypy;
mod cherrypy_clients;
mod cherrypy_diff;
mod client_protocols;
mod differential;
mod hostile;
mod ops;
mod soak;
mod stream_answer;
mod wsgi;
mod wsgi_load;
