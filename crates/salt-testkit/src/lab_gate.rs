//! The gate between the lab tests that share the Salt lab and the few that
//! must have it alone, across test binaries: `scripts/test` runs halite's
//! and salt-client's lab tests at the same time, on the same lab.
//!
//! The lab has three minions on a 2-CPU machine. A test that floods them
//! (hundreds of jobs, one Python process each, or ten thousand bus events)
//! made the `test.ping` of a test running beside it go unanswered within
//! Salt's timeout; so a flooding test takes the lab [`alone`], and every
//! other test [`share`]s it. So does a test that holds the master's workers
//! with failing PAM logins, and one that accepts a minion key for a while:
//! every `*` job beside it would wait for that minion.
//!
//! The gate is two lock files in the lab's directory (`$HALITE_LAB_DIR`,
//! from `scripts/lab env`), locked with `flock` through `std::fs::File`:
//!
//! * `.test-gate-lab`: shared by each test that shares the lab, exclusive
//!   for the one that has it alone;
//! * `.test-gate-turnstile`: a test waiting to have the lab alone holds it,
//!   and a sharing test passes through it before it takes its share, so a
//!   waiting test is not starved by a stream of sharing ones.
//!
//! A sharing test holds its share until its thread ends (libtest runs each
//! test on a thread of its own, even with `--test-threads 1`): a
//! thread-local keeps the locked file, and its destructor closes it. A test
//! with the lab alone must not call [`share`] from another thread (a task
//! on a multi-thread runtime): that call would wait for the test itself.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longer than any test: a gate still shut after this is a bug of the
/// harness, and the waiting test says so rather than hanging CI.
const WAIT: Duration = Duration::from_secs(15 * 60);
/// How often a waiting test tries the lock again.
const POLL: Duration = Duration::from_millis(20);

/// What this thread holds of the lab.
#[derive(Clone, Copy, PartialEq)]
enum Held {
    Nothing,
    Share,
    Alone,
}

thread_local! {
    static HELD: Cell<Held> = const { Cell::new(Held::Nothing) };
    /// The locked `.test-gate-lab` of this thread's share.
    static SHARE: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// Share the lab until this thread ends: waits while a test has it alone.
/// Does nothing when this thread already shares it or has it alone.
pub fn share() {
    if HELD.get() != Held::Nothing {
        return;
    }
    let lab = enter(Lock::Shared, "share");
    HELD.set(Held::Share);
    SHARE.with(|s| *s.borrow_mut() = Some(lab));
}

/// The lab to this test alone while the guard lives: waits until no other
/// test, in any process, shares it. Take it first, before anything else of
/// the lab.
#[must_use = "the lab is the test's alone while the guard lives"]
pub fn alone() -> Alone {
    assert!(
        HELD.get() == Held::Nothing,
        "take the lab alone before anything else of it"
    );
    let lab = enter(Lock::Exclusive, "have alone");
    HELD.set(Held::Alone);
    Alone { _lab: lab }
}

/// See [`alone`]; dropping it gives the lab back.
pub struct Alone {
    _lab: File,
}

impl Drop for Alone {
    fn drop(&mut self) {
        HELD.set(Held::Nothing);
    }
}

#[derive(Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// Pass the turnstile in `lock`'s mode, then lock the lab file the same
/// way; the turnstile is let go once the lab file is held.
fn enter(lock: Lock, what: &str) -> File {
    let turnstile = gate_file("turnstile");
    take(&turnstile, lock, what);
    let lab = gate_file("lab");
    take(&lab, lock, what);
    lab
}

fn gate_file(name: &str) -> File {
    let dir = std::env::var_os("HALITE_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "$HALITE_LAB_DIR is not set: these integration tests need the Salt lab. \
             Run them with scripts/test, or `scripts/lab start && eval \"$(scripts/lab env)\"` first."
        )
    });
    let path = dir.join(format!(".test-gate-{name}"));
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open the lab's test gate {}: {e}", path.display()))
}

/// Lock `file`, trying every [`POLL`] (the blocking calls cannot time out).
fn take(file: &File, lock: Lock, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let tried = match lock {
            Lock::Shared => file.try_lock_shared(),
            Lock::Exclusive => file.try_lock(),
        };
        match tried {
            Ok(()) => return,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => panic!("lock the lab's test gate: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} to {what} the Salt lab"
        );
        std::thread::sleep(POLL);
    }
}
