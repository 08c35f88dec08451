//! halite's tier that needs no Salt lab, in one test binary: the real
//! `Router` driven in-process against salt-testkit's fake master
//! (`cherrypy`, `wsgi`, `hostile`, `router`), and the binary run against a
//! master that is not running (`ops`). A bare `cargo test` runs it.
//! Run one area with e.g. `cargo test -p halite --test inproc wsgi::`.

#[path = "../support/mod.rs"]
mod support;

mod cherrypy;
mod hostile;
mod ops;
mod router;
mod wsgi;
