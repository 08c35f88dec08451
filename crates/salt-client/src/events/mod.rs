//! The master event bus: one subscription per process, fanned out to waiters.
//!
//! The master publishes every event on `master_event_pub.ipc` (or
//! `tcp_master_pub_port` with `ipc_mode: tcp`) as msgpack maps
//! `{"head": {}, "body": <tag>\n\n<msgpack data>}`, with or without a 4-byte
//! big-endian length prefix depending on the patch release (docs/PROTOCOL.md
//! §4.2). The framing is detected from the first byte of each connection.
//!
//! Waiters register by jid ([`EventBus::subscribe_jid`]) or take the whole
//! stream ([`EventBus::subscribe_all`]). Every queue is bounded, and an event
//! that does not fit is dropped for that waiter only (the waiter is told,
//! [`JidSubscription::lost_events`]), so a slow or vanished waiter never
//! stalls the bus. A jid waiter's bound depends on the kind of event: other
//! events (`new`, progress, ...) may queue up to [`JID_QUEUE`], but returns
//! (`.../ret/...`) queue up to [`JID_RETURN_BYTES`] of event data, because a
//! job on 10,000 minions publishes 10,000 returns at once and every one of
//! them is the answer its waiter is waiting for. Dropping a subscription
//! unregisters it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rmpv::Value as Mp;
use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

use crate::config::{IpcMode, MasterConfig};
use crate::error::{Result, SaltError};
use crate::value;

mod fanout;
mod frame;
mod socket;
#[cfg(test)]
mod tests;

use fanout::*;
pub use fanout::{Delivery, JidSubscription, Shaped, Shaper};
pub use frame::*;
use socket::*;
pub use socket::{endpoints, Endpoint};

/// Largest event accepted from the bus.
const MAX_EVENT: usize = 1 << 30;
/// Per-waiter queue length for a jid subscription's events other than
/// returns (a slow waiter loses those first).
pub const JID_QUEUE: usize = 4096;
/// Event data (plus [`RETURN_OVERHEAD`] per event) of returns one jid
/// waiter may have queued: 30,000 `test.ping` returns are ~5 MiB, 10,000
/// `grains.items` returns ~60 MiB. Beyond it returns are dropped for that
/// waiter (a hostile or runaway bus cannot grow memory without bound).
pub const JID_RETURN_BYTES: usize = 256 << 20;
/// What one queued return is charged besides its data (tag, `Arc`, queue
/// slot), so a flood of empty returns is bounded too.
const RETURN_OVERHEAD: usize = 256;
/// Queue length of the whole-stream broadcast (SSE, websockets).
const STREAM_QUEUE: usize = 4096;
/// Runner and wheel events kept for waiters that learn their jid only from
/// the master's reply (the event may come before the reply).
const RECENT_EVENTS: usize = 1024;
/// Bytes of event data those recent events may hold.
const RECENT_BYTES: usize = 16 << 20;

/// One event from the bus. The data is decoded to JSON on first use.
#[derive(Debug)]
pub struct Event {
    /// The event tag, e.g. `salt/job/20261126203708483354/ret/ms-0`.
    pub tag: String,
    raw: Bytes,
    data: OnceLock<Json>,
}

impl Event {
    /// Build an event from its tag and msgpack-encoded data.
    pub fn new(tag: String, raw: Bytes) -> Self {
        Event {
            tag,
            raw,
            data: OnceLock::new(),
        }
    }

    /// The event data as JSON (an empty object if it is not decodable).
    pub fn data(&self) -> &Json {
        self.data
            .get_or_init(|| match value::decode_to_json(&self.raw) {
                Ok(v) => v,
                Err(_) => Json::Object(Default::default()),
            })
    }

    /// The event data as JSON, without keeping it: decoded again unless
    /// [`Event::data`] has been called. For the bus's own use of an event
    /// that others may keep (a whole-stream queue), so they do not hold
    /// its decoded data as well as its frame.
    pub fn data_once(&self) -> std::borrow::Cow<'_, Json> {
        match self.data.get() {
            Some(data) => std::borrow::Cow::Borrowed(data),
            None => std::borrow::Cow::Owned(
                value::decode_to_json(&self.raw)
                    .unwrap_or_else(|_| Json::Object(Default::default())),
            ),
        }
    }

    /// Each string of the array under `key` in the event data, without
    /// decoding the rest (see [`map_strings`]); nothing when the data is
    /// not a map or cannot be read.
    pub fn strings_at<'a>(&'a self, key: &str, f: impl FnMut(&'a str)) {
        let _ = map_strings(&self.raw, key, f);
    }

    /// The string under `key` in the event data, without decoding the rest
    /// (see [`map_string`]).
    pub fn string_at(&self, key: &str) -> Option<&str> {
        map_string(&self.raw, key).ok().flatten()
    }

    /// The jid this event belongs to, from its tag.
    pub fn jid(&self) -> Option<&str> {
        jid_of_tag(&self.tag)
    }

    /// Size of the raw data.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }
}

/// The jid in a job, runner, wheel or batch tag, or a bare jid tag.
pub fn jid_of_tag(tag: &str) -> Option<&str> {
    let mut parts = tag.splitn(4, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("salt"), Some("job" | "run" | "wheel" | "batch"), Some(jid)) if !jid.is_empty() => {
            Some(jid)
        }
        (Some(bare), None, None)
            if bare.len() >= 20 && bare.as_bytes()[..20].iter().all(u8::is_ascii_digit) =>
        {
            Some(bare)
        }
        _ => None,
    }
}

/// Split an event body `<tag>\n\n<msgpack>` into tag and data.
/// The data stays a slice of `body` (no copy).
/// A handle on the process's one subscription to the master event bus.
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
}

impl EventBus {
    /// Start the subscription task for the master described by `config`.
    /// Must be called inside a Tokio runtime. The task reconnects (and
    /// re-detects the framing) whenever the master goes away.
    pub fn start(config: &MasterConfig) -> Self {
        let (sub, pull) = endpoints(config);
        Self::start_at(sub, pull)
    }

    /// Start a subscription to explicit endpoints.
    pub fn start_at(sub: Endpoint, pull: Endpoint) -> Self {
        let (stream, _) = broadcast::channel(STREAM_QUEUE);
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            sub,
            pull,
            state: Mutex::new(State::default()),
            stream,
            connected,
            next_id: AtomicU64::new(1),
            stamp_style: AtomicU8::new(0),
            pub_framing: Mutex::new(None),
            pull_framing: tokio::sync::Mutex::new(None),
            pusher: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            events_seen: AtomicU64::new(0),
            next_event: Mutex::new(Vec::new()),
            next_wanted: AtomicBool::new(false),
        });
        tokio::spawn(run(Arc::downgrade(&shared)));
        EventBus { shared }
    }

    /// Whether the subscription is currently connected.
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Wait until connected, at most `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> Result<()> {
        let mut rx = self.shared.connected.subscribe();
        let ok = tokio::time::timeout(limit, rx.wait_for(|c| *c)).await;
        match ok {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SaltError::Unreachable(format!(
                "the Salt master event bus at {} is not available",
                self.shared.sub
            ))),
        }
    }

    /// Resolves once the subscription is lost (at once when it is not
    /// connected now): a job waiting for returns will not see them.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.connected.subscribe();
        async move {
            let _ = rx.wait_for(|c| !*c).await;
        }
    }

    /// How many times the subscription has (re)connected.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    /// Events received since start.
    pub fn events_seen(&self) -> u64 {
        self.shared.events_seen.load(Ordering::Relaxed)
    }

    /// Whether the master stamps events with a UTC offset (Salt 3008 and
    /// later); `None` until an event with `_stamp` has been seen.
    pub fn stamps_have_offset(&self) -> Option<bool> {
        match self.shared.stamp_style.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// Record the stamp style from an event's `_stamp`.
    pub fn note_stamp(&self, stamp: &str) {
        let style = if stamp.ends_with("+00:00") || stamp.ends_with('Z') {
            2
        } else {
            1
        };
        self.shared.stamp_style.store(style, Ordering::Relaxed);
    }

    /// The next event the bus receives; `None` if the bus is dropped
    /// first. Unlike a whole-stream subscription, whose queue keeps every
    /// event until its slowest receiver has seen it, this costs the bus
    /// nothing once it has resolved (a sampler such as the bus-lag metric).
    pub fn next_event(&self) -> impl std::future::Future<Output = Option<Arc<Event>>> + Send {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut waiting = self
            .shared
            .next_event
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Callers that gave up (a timeout) are forgotten here, so a bus
        // that stays quiet does not collect them.
        waiting.retain(|tx| !tx.is_closed());
        waiting.push(tx);
        self.shared.next_wanted.store(true, Ordering::Release);
        drop(waiting);
        async move { rx.await.ok() }
    }

    /// Receive every event from now on (bounded; a receiver that falls behind
    /// gets `RecvError::Lagged` and skips ahead).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.stream.subscribe()
    }

    /// Receive the events of one jid. Register before sending the request
    /// that creates them. Recent runner/wheel events of that jid that arrived
    /// before registration are delivered first.
    pub fn subscribe_jid(&self, jid: &str) -> JidSubscription {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Inbox::default());
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        for ev in state.recent_by_jid.get(jid).into_iter().flatten() {
            queue.deliver(ev, None);
        }
        // Most jids have one waiter: a list for one, not the default four.
        state
            .by_jid
            .entry(jid.to_owned())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(Waiter {
                id,
                inbox: queue.clone(),
                shaper: None,
            });
        // Under the lock: see `mark_bus_lost`.
        if !*self.shared.connected.borrow() {
            queue.mark_bus_lost();
        }
        drop(state);
        JidSubscription {
            id,
            jid: jid.to_owned(),
            queue,
            shared: self.shared.clone(),
        }
    }

    /// Number of jids with at least one waiter (for metrics and tests).
    pub fn waiting_jids(&self) -> usize {
        self.shared
            .state
            .lock()
            .map(|s| s.by_jid.len())
            .unwrap_or(0)
    }

    /// Whether an event fired now comes back on this subscription within
    /// `limit`: the master's publisher has registered the subscriber (a
    /// connected socket alone does not prove it).
    pub async fn round_trip(&self, limit: Duration) -> bool {
        let tag = format!("salt/netapi/ready/{}", uuid::Uuid::new_v4());
        let mut rx = self.subscribe_all();
        if self
            .fire(&tag, &serde_json::json!({"probe": "halite"}))
            .await
            .is_err()
        {
            return false;
        }
        tokio::time::timeout(limit, async {
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.tag == tag => return true,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Fire an event into the bus (what `/hook` does), adding `_stamp` as
    /// Salt's own `fire_event` does.
    pub async fn fire(&self, tag: &str, data: &Json) -> Result<()> {
        let mut data = data.clone();
        if let Json::Object(map) = &mut data {
            if !map.contains_key("_stamp") {
                map.insert("_stamp".into(), Json::String(self.stamp_now()));
            }
        }
        let body = pack_body(tag, &data);
        let framing = self.pull_framing().await?;
        self.push(&body, framing).await
    }

    fn stamp_now(&self) -> String {
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string();
        if self.stamps_have_offset() == Some(true) {
            now + "+00:00"
        } else {
            now
        }
    }

    /// Write one frame to the pull side on a connection kept open between
    /// fires (opening one per event exhausts the socket's backlog under a
    /// burst, as Salt's own `fire_event` avoids too). The connection is
    /// replaced after an error and whenever the subscription reconnected
    /// (the master restarted), with one retry on a fresh connection.
    async fn push(&self, body: &[u8], framing: Framing) -> Result<()> {
        let unreachable = |e: std::io::Error| {
            SaltError::Unreachable(format!(
                "cannot fire into the Salt event bus at {}: {e}",
                self.shared.pull
            ))
        };
        let frame = encode_frame(body, framing);
        let generation = self.generation();
        let mut pusher = self.shared.pusher.lock().await;
        if pusher.as_ref().is_some_and(|(g, _)| *g != generation) {
            *pusher = None;
        }
        let mut last_error = None;
        for _ in 0..2 {
            if pusher.is_none() {
                match open(&self.shared.pull).await {
                    Ok(s) => *pusher = Some((generation, s)),
                    Err(e) => {
                        last_error = Some(e);
                        continue;
                    }
                }
            }
            if let Some((_, s)) = pusher.as_mut() {
                match async {
                    s.write_all(&frame).await?;
                    s.flush().await
                }
                .await
                {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        *pusher = None;
                        last_error = Some(e);
                    }
                }
            }
        }
        Err(unreachable(
            last_error.unwrap_or_else(|| std::io::Error::other("no connection")),
        ))
    }

    /// The framing the pull side expects. A prefixed publish side means a
    /// prefixed pull side (3006.26+); otherwise probe (docs/PROTOCOL.md §4.3).
    async fn pull_framing(&self) -> Result<Framing> {
        let mut known = self.shared.pull_framing.lock().await;
        if let Some(f) = *known {
            return Ok(f);
        }
        self.wait_connected(Duration::from_secs(5)).await?;
        let pub_framing = *self
            .shared
            .pub_framing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pub_framing == Some(Framing::Prefixed) {
            *known = Some(Framing::Prefixed);
            return Ok(Framing::Prefixed);
        }
        for framing in [Framing::Prefixed, Framing::Bare] {
            let tag = format!("salt/netapi/probe/{}", uuid::Uuid::new_v4());
            let mut rx = self.subscribe_all();
            let body = pack_body(&tag, &serde_json::json!({"probe": "halite"}));
            self.push(&body, framing).await?;
            // A frame in the wrong framing can leave the master's reader
            // misaligned on that connection: never reuse a probe's.
            *self.shared.pusher.lock().await = None;
            let seen = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match rx.recv().await {
                        Ok(ev) if ev.tag == tag => return true,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return false,
                    }
                }
            })
            .await
            .unwrap_or(false);
            if seen {
                *known = Some(framing);
                return Ok(framing);
            }
        }
        Err(SaltError::Unreachable(
            "the Salt master event bus does not accept fired events in any known framing".into(),
        ))
    }
}
