//! The master's request channel (`ret_port`): clear-payload requests over the
//! `zeromq` or `tcp` transport.
//!
//! Requests never share a connection while in flight (ZeroMQ replies carry no
//! id), so there is no head-of-line blocking between callers. Idle connections
//! are kept in a small pool and re-checked before reuse; a connection whose
//! request timed out or failed is dropped, never reused. Each request makes at
//! most one connection attempt, so a stopped master fails a call at once, and
//! a restarted master is picked up by the next call.

pub mod tcp;
pub mod zmtp;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmpv::Value as Mp;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::RequestTransport;
use crate::error::{Result, SaltError};
use crate::value;

/// How long an idle connection may wait in the pool. Below 3008's 10 s
/// heartbeat interval, so pooled sockets are never asked for a PONG.
const MAX_IDLE: Duration = Duration::from_secs(5);
/// Idle connections kept for reuse.
const MAX_POOLED: usize = 64;
/// Connections open at once (bounds file descriptors under any load).
const MAX_OPEN: usize = 1024;
/// Connections open at once with the `tcp` transport. Salt's tcp request
/// server listens with a backlog of 5 (`salt/transport/tcp.py`, 3006–3008):
/// 150 simultaneous connects overflowed its accept queue and the rest waited
/// on SYN retransmission for tens of seconds. The master has few workers
/// (`worker_threads`, 5 by default), so a handful of connections loses nothing.
const MAX_OPEN_TCP: usize = 8;
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Conn {
    Zmq(zmtp::ZmtpConnection),
    Tcp(tcp::TcpConnection),
}

impl Conn {
    fn is_reusable(&mut self) -> bool {
        match self {
            Conn::Zmq(c) => c.is_reusable(),
            Conn::Tcp(c) => c.is_reusable(),
        }
    }
}

/// A pool of connections to the master's request server.
pub struct RequestChannel {
    transport: RequestTransport,
    addr: String,
    idle: Mutex<Vec<(Conn, Instant)>>,
    open: Semaphore,
}

/// A reply as a transport gives it: zeromq's as its msgpack bytes, tcp's
/// already decoded (its frame is a `{head, body}` map).
enum Reply {
    Bytes(bytes::BytesMut),
    Decoded(Mp),
}

impl RequestChannel {
    /// A channel to `addr` (`host:port`) using `transport`.
    pub fn new(transport: RequestTransport, addr: String) -> Self {
        RequestChannel {
            transport,
            addr,
            idle: Mutex::new(Vec::new()),
            open: Semaphore::new(match transport {
                RequestTransport::Tcp => MAX_OPEN_TCP,
                _ => MAX_OPEN,
            }),
        }
    }

    /// The address requests go to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send one clear `load` and return the master's decoded reply, unwrapping
    /// the `{"enc": "clear", "load": ...}` envelope and turning Salt's error
    /// replies into [`SaltError`]s.
    pub async fn send(&self, load: Mp, timeout: Duration) -> Result<Mp> {
        let never = |_: &[u8]| None::<std::convert::Infallible>;
        match self.send_read(load, timeout, never).await? {
            Ok(never) => match never {},
            Err(reply) => Ok(reply),
        }
    }

    /// [`RequestChannel::send`], with the reply's msgpack bytes offered to
    /// `read` first (over zeromq): `Ok(t)` when `read` takes them, without
    /// a decoded tree of the reply (for a publish to 10,000 minions, ~0.7
    /// MiB); otherwise `Err` with the reply as `send` returns it.
    pub async fn send_read<T>(
        &self,
        load: Mp,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<std::result::Result<T, Mp>> {
        // Encoded before the wait for a connection (and the tree of values
        // dropped): a burst of calls waits there, each holding a few
        // hundred bytes instead of the load's values.
        let envelope = value::encode(&value::map([
            ("enc", Mp::from("clear")),
            ("load", load),
            ("version", Mp::from(3)),
        ]));
        let reply = match self.exchange(envelope, timeout).await? {
            Reply::Bytes(bytes) => {
                if let Some(t) = read(&bytes) {
                    return Ok(Ok(t));
                }
                value::decode(&bytes).map_err(|e| {
                    SaltError::Unreachable(format!(
                        "connection to the Salt master at {} failed: undecodable reply: {e}",
                        self.addr
                    ))
                })?
            }
            Reply::Decoded(reply) => reply,
        };
        interpret_reply(reply).map(Err)
    }

    async fn exchange(&self, envelope: Vec<u8>, timeout: Duration) -> Result<Reply> {
        // Waiting for a free connection is part of the request's time.
        let deadline = Instant::now() + timeout;
        let permit = match tokio::time::timeout_at(deadline.into(), self.open.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SaltError::Unreachable("request channel closed".into())),
            Err(_) => {
                return Err(SaltError::Timeout(format!(
                    "no connection to the Salt master at {} became free within {:.1}s",
                    self.addr,
                    timeout.as_secs_f64()
                )))
            }
        };
        // Boxed: a burst of calls waits above for a connection, each holding
        // only what waiting needs; the exchange's own state (~0.6 KiB) exists
        // for the connections in use.
        Box::pin(self.exchange_on(permit, envelope, deadline, timeout)).await
    }

    async fn exchange_on(
        &self,
        _permit: SemaphorePermit<'_>,
        envelope: Vec<u8>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Reply> {
        // Connecting is boxed: a pooled connection is the rule, and inline
        // the connect's future (~0.5 KiB) would be room in every exchange.
        let (mut conn, mut reused) = match self.checkout() {
            Some(c) => (c, true),
            None => (Box::pin(self.connect(deadline)).await?, false),
        };
        loop {
            let result = tokio::time::timeout_at(deadline.into(), async {
                match &mut conn {
                    Conn::Zmq(c) => c
                        .request(&envelope)
                        .await
                        .map(Reply::Bytes)
                        .map_err(|e| e.to_string()),
                    Conn::Tcp(c) => c
                        .request(&envelope)
                        .await
                        .map(Reply::Decoded)
                        .map_err(|e| e.to_string()),
                }
            })
            .await;
            return match result {
                Ok(Ok(reply)) => {
                    self.checkin(conn);
                    Ok(reply)
                }
                // A pooled connection the master closed or reset while it sat
                // idle: send again once on a fresh connection (Salt's own
                // channel re-sends identical loads after failures, too).
                Ok(Err(e)) if reused => {
                    tracing::debug!(error = %e, "pooled connection to the master failed; retrying on a new one");
                    reused = false;
                    conn = Box::pin(self.connect(deadline)).await?;
                    continue;
                }
                Ok(Err(e)) => Err(SaltError::Unreachable(format!(
                    "connection to the Salt master at {} failed: {e}",
                    self.addr
                ))),
                Err(_) => Err(SaltError::Timeout(format!(
                    "the Salt master at {} did not answer within {:.1}s",
                    self.addr,
                    timeout.as_secs_f64()
                ))),
            };
        }
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE && conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_POOLED {
            idle.push((conn, Instant::now()));
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<Conn> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let limit = remaining.min(CONNECT_TIMEOUT);
        let attempt = async {
            match self.transport {
                RequestTransport::Tcp => tcp::TcpConnection::connect(&self.addr)
                    .await
                    .map(Conn::Tcp)
                    .map_err(|e| e.to_string()),
                _ => zmtp::ZmtpConnection::connect(&self.addr)
                    .await
                    .map(Conn::Zmq)
                    .map_err(|e| e.to_string()),
            }
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(SaltError::Unreachable(format!(
                "the Salt master at {} is not available: {e}",
                self.addr
            ))),
            // The caller's deadline ran out during the handshake (a peer that
            // accepts but never answers): that is the request timing out.
            Err(_) if remaining <= CONNECT_TIMEOUT => Err(SaltError::Timeout(format!(
                "the Salt master at {} did not answer within {:.1}s (connection handshake)",
                self.addr,
                remaining.as_secs_f64()
            ))),
            Err(_) => Err(SaltError::Unreachable(format!(
                "the Salt master at {} is not available: connect timed out",
                self.addr
            ))),
        }
    }
}

/// Interpret a raw reply: unwrap the clear envelope, map Salt's error shapes.
pub fn interpret_reply(reply: Mp) -> Result<Mp> {
    match reply.as_str() {
        Some("Some exception handling minion payload") => {
            return Err(SaltError::Master(
                "the Salt master raised an exception handling the request (a required field may be missing)".into(),
            ))
        }
        Some(s @ ("bad load" | "payload and load must be a dict")) => {
            return Err(SaltError::Master(format!("the Salt master rejected the request: {s}")))
        }
        _ => {}
    }
    if let Some(err) = value::get(&reply, "error") {
        if let Some(name) = value::get(err, "name").and_then(Mp::as_str) {
            let message = value::get(err, "message")
                .and_then(Mp::as_str)
                .unwrap_or("");
            return Err(SaltError::from_master(name, message));
        }
        if let Some(text) = err.as_str() {
            return Err(SaltError::Master(format!(
                "the Salt master answered: {text}"
            )));
        }
    }
    let clear = value::get(&reply, "enc").and_then(Mp::as_str) == Some("clear");
    if !clear || value::get(&reply, "load").is_none() {
        return Ok(reply);
    }
    // Moved out, not copied: a publish to 30,000 minions has their names
    // in it.
    let load = value::take(reply, "load").unwrap_or(Mp::Nil);
    if value::get(&load, "cluster_retry").and_then(Mp::as_bool) == Some(true) {
        // A master cluster member that is not (yet) a committed member
        // defers every request; another member can serve it.
        return Err(SaltError::Unreachable(
            "this Salt master is a cluster member that is not serving requests yet (cluster_retry)"
                .into(),
        ));
    }
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mp(j: serde_json::Value) -> Mp {
        value::from_json(&j)
    }

    #[test]
    fn a_cluster_member_that_defers_is_unreachable() {
        // What a 3008 cluster member answers until it is a committed voter.
        let e = interpret_reply(mp(
            json!({"enc": "clear", "load": {"ret": false, "cluster_retry": true}}),
        ));
        assert!(matches!(e, Err(SaltError::Unreachable(_))), "{e:?}");
        let ok = interpret_reply(mp(json!({"enc": "clear", "load": {"ret": false}})));
        assert_eq!(ok, Ok(mp(json!({"ret": false}))));
    }

    #[test]
    fn master_errors_become_typed_errors() {
        // Reply shapes seen from a real 3008 master (docs/PROTOCOL.md §3.5).
        let e = interpret_reply(mp(
            json!({"error": {"name": "AuthenticationError", "message": "Authentication error occurred."}}),
        ));
        assert_eq!(
            e,
            Err(SaltError::Authentication(
                "Authentication error occurred.".into()
            ))
        );
        let e = interpret_reply(mp(
            json!({"error": {"name": "AuthorizationError", "message": "Authorization error occurred."}}),
        ));
        assert!(matches!(e, Err(SaltError::Authorization(_))));
        let e = interpret_reply(mp(
            json!({"error": {"name": "TokenAuthenticationError", "message": "x"}}),
        ));
        assert!(matches!(e, Err(SaltError::Token(_))));
        let e = interpret_reply(mp(json!("Some exception handling minion payload")));
        assert!(matches!(e, Err(SaltError::Master(_))));
        let e = interpret_reply(mp(json!("bad load")));
        assert!(matches!(e, Err(SaltError::Master(_))));
        let e = interpret_reply(mp(json!({"error": "Routing error"})));
        assert!(matches!(e, Err(SaltError::Master(_))));
    }

    #[test]
    fn clear_envelope_is_unwrapped() {
        let r = interpret_reply(mp(
            json!({"enc": "clear", "load": {"jid": "1", "minions": ["a"]}}),
        ));
        assert_eq!(
            r.map(|v| value::to_json(&v)),
            Ok(json!({"jid": "1", "minions": ["a"]}))
        );
        let r = interpret_reply(mp(json!({"jid": "2", "tag": "salt/run/2"})));
        assert_eq!(
            r.map(|v| value::to_json(&v)),
            Ok(json!({"jid": "2", "tag": "salt/run/2"}))
        );
    }

    #[tokio::test]
    async fn waiting_for_a_connection_is_inside_the_timeout() {
        // A master that accepts and never answers: every tcp connection
        // halite may open is taken by a request that waits for its reply.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let channel = std::sync::Arc::new(RequestChannel::new(RequestTransport::Tcp, addr));
        let mut busy = Vec::new();
        for _ in 0..MAX_OPEN_TCP {
            let ch = channel.clone();
            busy.push(tokio::spawn(async move {
                ch.send(mp(json!({"cmd": "x"})), Duration::from_secs(30))
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let r = channel
            .send(mp(json!({"cmd": "y"})), Duration::from_millis(300))
            .await;
        assert!(matches!(r, Err(SaltError::Timeout(_))), "{r:?}");
        // Not a benchmark: before, this waited for a free connection (30 s).
        assert!(started.elapsed() < Duration::from_secs(10));
        for b in busy {
            b.abort();
        }
        held.abort();
    }
}
