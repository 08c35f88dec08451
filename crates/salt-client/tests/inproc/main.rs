//! salt-client's tests that need no Salt lab, in one test binary: the
//! clients against salt-testkit's fake master, frames captured from real
//! masters, and property tests of the decoders. A bare `cargo test` runs it.

mod captured;
mod fake_master;
mod fuzz;
