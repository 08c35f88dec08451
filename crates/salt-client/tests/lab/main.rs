//! salt-client's lab tier: every test that needs the real Salt lab
//! (`scripts/lab`), in one test binary. Behind the `lab` feature;
//! `scripts/test` and `scripts/matrix` start the labs and enable it.
//! Run one area with e.g. `cargo test -p salt-client --features lab --test lab clients::`.

mod common;

mod clients;
mod errors;
mod events;
mod oracle;
mod restart;
mod tokens;
mod volume;
