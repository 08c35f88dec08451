//! One throttle for every path that checks credentials: `/login`, `/token`,
//! `/run`, `/keys`, `/hook`, the streams, rest_wsgi `POST /`.
//!
//! Each failed eauth attempt holds one of the master's few workers for
//! seconds (PAM), so a guessing loop through any of them would starve the
//! master. The throttle counts failures per client address and per user *at*
//! that address; an attempt still in flight counts as a failure until it
//! ends, so a burst of parallel guesses cannot all pass the check before the
//! first failure is recorded. Failures of one user never lock out other
//! addresses: an attacker guessing `root` from far away does not stop `root`
//! logging in from the office.
//!
//! Memory is bounded: keys are 64-bit keyed hashes (a user name of a
//! mebibyte costs nothing), kept in a fixed-size LRU. Under a spray of more
//! addresses than it holds, the least recently seen key is forgotten; the
//! keys of an active guesser stay recent, so that never reopens a throttled
//! door.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use lru::LruCache;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

/// Failures (plus attempts in flight) allowed per user at one address
/// within [`WINDOW`].
pub const MAX_USER_FAILURES: u32 = 5;
/// Failures (plus attempts in flight) allowed per address, whatever the
/// user names, within [`WINDOW`].
pub const MAX_ADDRESS_FAILURES: u32 = 20;
/// The window: counts start over this long after a key's first failure.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most (about 40 bytes each).
pub const MAX_KEYS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    in_flight: u32,
    since: Instant,
}

impl Count {
    fn fresh() -> Count {
        Count {
            failures: 0,
            in_flight: 0,
            since: Instant::now(),
        }
    }

    fn current(&mut self) -> &mut Count {
        if self.since.elapsed() >= WINDOW {
            self.failures = 0;
            self.since = Instant::now();
        }
        self
    }
}

/// The throttle. [`Throttle::global`] is the process's one instance.
pub struct Throttle {
    counts: Mutex<LruCache<u64, Count>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

static GLOBAL: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(MAX_KEYS));

tokio::task_local! {
    static PEER: Option<IpAddr>;
}

/// Refused: wait this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: u64,
}

/// One credential check in progress. Report its outcome with
/// [`Attempt::failed`] or [`Attempt::succeeded`]; dropped without either
/// (the master was unreachable, the client went away) it counts as neither.
#[derive(Debug)]
pub struct Attempt<'t> {
    throttle: &'t Throttle,
    keys: [u64; 3],
    done: bool,
}

/// The address key: IPv6 clients usually hold a whole /64, so it is one key.
fn address(ip: Option<IpAddr>) -> Option<IpAddr> {
    match ip? {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                Some(IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0]))
            }
        },
        v4 => Some(v4),
    }
}

impl Throttle {
    /// A throttle remembering at most `capacity` keys.
    pub fn new(capacity: usize) -> Throttle {
        // Bounded, but grown with its keys: `LruCache::new` allocates the
        // table for every key it may hold up front (~2 MiB for
        // `MAX_KEYS`), at the first call with credentials.
        let mut counts = LruCache::unbounded();
        counts.resize(NonZeroUsize::new(capacity.max(2)).unwrap_or(NonZeroUsize::MIN));
        Throttle {
            counts: Mutex::new(counts),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The process's throttle, shared by every surface.
    pub fn global() -> &'static Throttle {
        &GLOBAL
    }

    fn keys(&self, user: &str, secret: &str, ip: Option<IpAddr>) -> [u64; 3] {
        let ip = address(ip);
        [
            self.hasher.hash_one(("address", ip)),
            self.hasher.hash_one(("user", ip, user)),
            self.hasher.hash_one(("credentials", ip, user, secret)),
        ]
    }

    /// Start a credential check by `user` with `secret` (a password or a
    /// token) from `ip`, or refuse it.
    ///
    /// In flight, each *distinct* credential counts once: a client that
    /// sends the same credentials with many parallel requests (rest_wsgi
    /// clients send them with every call) is one attempt, parallel guesses
    /// are one each.
    pub fn begin(
        &self,
        user: &str,
        secret: &str,
        ip: Option<IpAddr>,
    ) -> Result<Attempt<'_>, Throttled> {
        let keys = self.keys(user, secret, ip);
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let new_credential = map.peek(&keys[2]).is_none_or(|c| c.in_flight == 0);
        let mut wait = None;
        for (key, max) in keys[..2]
            .iter()
            .zip([MAX_ADDRESS_FAILURES, MAX_USER_FAILURES])
        {
            if let Some(c) = map.get_mut(key) {
                let c = c.current();
                let in_flight = if new_credential { c.in_flight } else { 0 };
                if c.failures + in_flight >= max {
                    let left = WINDOW.saturating_sub(c.since.elapsed()).as_secs().max(1);
                    wait = Some(wait.map_or(left, |w: u64| w.max(left)));
                }
            }
        }
        if let Some(retry_after) = wait {
            return Err(Throttled { retry_after });
        }
        let cred = map.get_or_insert_mut(keys[2], Count::fresh);
        cred.in_flight = cred.in_flight.saturating_add(1);
        if new_credential {
            for key in &keys[..2] {
                let c = map.get_or_insert_mut(*key, Count::fresh);
                c.in_flight = c.in_flight.saturating_add(1);
            }
        }
        Ok(Attempt {
            throttle: self,
            keys,
            done: false,
        })
    }

    fn finish(&self, keys: [u64; 3], failed: bool, forget_user: bool) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let last_of_credential = match map.get_mut(&keys[2]) {
            Some(c) => {
                c.in_flight = c.in_flight.saturating_sub(1);
                c.in_flight == 0
            }
            None => true,
        };
        for key in &keys[..2] {
            if let Some(c) = map.get_mut(key) {
                if last_of_credential {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
                if failed {
                    let c = c.current();
                    c.failures = c.failures.saturating_add(1);
                }
            }
        }
        if forget_user {
            if let Some(c) = map.get_mut(&keys[1]) {
                c.failures = 0;
            }
        }
    }

    /// Keys held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Attempt<'_> {
    /// The credentials were wrong.
    pub fn failed(mut self) {
        self.done = true;
        self.throttle.finish(self.keys, true, false);
    }

    /// The credentials were right: this user's failures at this address
    /// are forgotten (the address's are not).
    pub fn succeeded(mut self) {
        self.done = true;
        self.throttle.finish(self.keys, false, true);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.throttle.finish(self.keys, false, false);
        }
    }
}

/// The client address of the request being served (set by
/// [`RememberPeerLayer`]), for code deep in a request that checks credentials.
pub fn peer() -> Option<IpAddr> {
    PEER.try_with(|p| *p).ok().flatten()
}

/// Makes the client address available to [`peer`] while the request is
/// handled. A tower layer rather than a `from_fn` middleware: its future is
/// the inner one in a task-local scope, not a boxed async block holding the
/// request beside it (~0.7 KiB more per call waiting for its job).
#[derive(Debug, Clone, Copy, Default)]
pub struct RememberPeerLayer;

impl<S> Layer<S> for RememberPeerLayer {
    type Service = RememberPeer<S>;

    fn layer(&self, inner: S) -> RememberPeer<S> {
        RememberPeer { inner }
    }
}

/// The service of [`RememberPeerLayer`].
#[derive(Debug, Clone)]
pub struct RememberPeer<S> {
    inner: S,
}

impl<S: Service<Request<B>>, B> Service<Request<B>> for RememberPeer<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Option<IpAddr>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ip = req
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        PEER.scope(ip, self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn failures_throttle_the_user_at_that_address_only() {
        let t = Throttle::new(1024);
        for _ in 0..MAX_USER_FAILURES {
            t.begin("root", "pw", ip(1))
                .expect("not yet throttled")
                .failed();
        }
        assert!(t.begin("root", "pw", ip(1)).is_err());
        // Another address, and another user at the same address, still pass.
        t.begin("root", "pw", ip(2))
            .expect("other address")
            .succeeded();
        t.begin("alice", "pw", ip(1))
            .expect("other user")
            .succeeded();
    }

    #[test]
    fn the_address_is_throttled_across_user_names() {
        let t = Throttle::new(1024);
        for i in 0..MAX_ADDRESS_FAILURES {
            t.begin(&format!("user{i}"), "pw", ip(3))
                .expect("not yet throttled")
                .failed();
        }
        let refused = t
            .begin("new-name", "pw", ip(3))
            .expect_err("address throttled");
        assert!(refused.retry_after >= 1 && refused.retry_after <= WINDOW.as_secs());
        assert!(t.begin("new-name", "pw", ip(4)).is_ok());
    }

    #[test]
    fn attempts_in_flight_count() {
        let t = Throttle::new(1024);
        let held: Vec<_> = (0..MAX_USER_FAILURES)
            .map(|i| {
                t.begin("bob", &format!("guess{i}"), ip(5))
                    .expect("in flight")
            })
            .collect();
        assert!(
            t.begin("bob", "another guess", ip(5)).is_err(),
            "parallel guesses must not all pass"
        );
        drop(held);
        assert!(t.begin("bob", "guess", ip(5)).is_ok());
    }

    #[test]
    fn the_same_credentials_in_parallel_are_one_attempt() {
        let t = Throttle::new(1024);
        let held: Vec<_> = (0..200)
            .map(|_| t.begin("load", "right", ip(6)).expect("same credentials"))
            .collect();
        assert!(t.begin("load", "guess", ip(6)).is_ok());
        for a in held {
            a.succeeded();
        }
    }

    #[test]
    fn memory_is_bounded_and_names_are_hashed() {
        let t = Throttle::new(100);
        let long = "x".repeat(64 << 10);
        for i in 0..300u32 {
            let a = Some(IpAddr::from(i.to_be_bytes()));
            t.begin(&long, "pw", a).expect("fresh").failed();
        }
        assert_eq!(t.len(), 100);
    }

    #[test]
    fn an_active_guesser_is_not_forgotten_under_a_spray() {
        let t = Throttle::new(64);
        for i in 0..200u32 {
            if i < MAX_USER_FAILURES {
                t.begin("root", "pw", ip(9))
                    .expect("first guesses")
                    .failed();
            } else {
                // The guesser keeps trying (and so stays recent) while a
                // spray of other addresses fills the table.
                assert!(t.begin("root", "pw", ip(9)).is_err(), "attempt {i}");
            }
            let a = Some(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
            t.begin("x", "pw", a).expect("fresh").failed();
        }
    }

    #[test]
    fn ipv6_clients_are_one_address_per_64() {
        let t = Throttle::new(1024);
        for i in 0..MAX_ADDRESS_FAILURES {
            let a: IpAddr = format!("2001:db8::{i:x}").parse().expect("ip");
            t.begin(&format!("u{i}"), "pw", Some(a))
                .expect("fresh")
                .failed();
        }
        let a: IpAddr = "2001:db8::ffff".parse().expect("ip");
        assert!(t.begin("v", "pw", Some(a)).is_err());
    }
}
