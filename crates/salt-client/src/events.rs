//! The master event bus: one subscription per process, fanned out to waiters.
//!
//! The master publishes every event on `master_event_pub.ipc` (or
//! `tcp_master_pub_port` with `ipc_mode: tcp`) as msgpack maps
//! `{"head": {}, "body": <tag>\n\n<msgpack data>}`, with or without a 4-byte
//! big-endian length prefix depending on the patch release (docs/PROTOCOL.md
//! §4.2). The framing is detected from the first byte of each connection.
//!
//! Waiters register by jid ([`EventBus::subscribe_jid`]) or take the whole
//! stream ([`EventBus::subscribe_all`]). Every queue is bounded: an event that
//! does not fit is dropped for that waiter only and the waiter is told
//! ([`JidSubscription::lost_events`]), so a slow or vanished waiter never
//! stalls the bus or grows memory. Dropping a subscription unregisters it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rmpv::Value as Mp;
use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::{IpcMode, MasterConfig};
use crate::error::{Result, SaltError};
use crate::value;

/// Largest event accepted from the bus.
const MAX_EVENT: usize = 1 << 30;
/// Per-waiter queue length for jid subscriptions.
const JID_QUEUE: usize = 4096;
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
        self.data.get_or_init(|| match value::decode(&self.raw) {
            Ok(v) => value::to_json(&v),
            Err(_) => Json::Object(Default::default()),
        })
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
pub fn split_body(body: &Bytes) -> (String, Bytes) {
    match body.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (
            String::from_utf8_lossy(&body[..i]).into_owned(),
            body.slice(i + 2..),
        ),
        None => (String::from_utf8_lossy(body).into_owned(), Bytes::new()),
    }
}

/// Build the event body for `tag` and `data` (msgpack with bin/str types).
pub fn pack_body(tag: &str, data: &Json) -> Vec<u8> {
    let mut body = Vec::with_capacity(tag.len() + 64);
    body.extend_from_slice(tag.as_bytes());
    body.extend_from_slice(b"\n\n");
    body.extend_from_slice(&value::encode(&value::from_json(data)));
    body
}

/// How frames are delimited on one side of the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Concatenated msgpack maps.
    Bare,
    /// Each map preceded by its length as a 4-byte big-endian integer.
    Prefixed,
}

/// Detect the framing from the first byte of a subscription stream.
pub fn detect_framing(first: u8) -> Framing {
    if (0x80..=0x8f).contains(&first) || first == 0xde || first == 0xdf {
        Framing::Bare
    } else {
        Framing::Prefixed
    }
}

/// Encode one bus frame `{"head": {}, "body": bin}` in `framing`.
pub fn encode_frame(body: &[u8], framing: Framing) -> Vec<u8> {
    let msg = value::map([
        ("head", Mp::Map(vec![])),
        ("body", Mp::Binary(body.to_vec())),
    ]);
    let bytes = value::encode(&msg);
    match framing {
        Framing::Bare => bytes,
        Framing::Prefixed => {
            let mut out = Vec::with_capacity(bytes.len() + 4);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(&bytes);
            out
        }
    }
}

/// Incremental decoder of a subscription stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    framing: Option<Framing>,
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder that detects the framing from the first byte it sees.
    pub fn new() -> Self {
        Self::default()
    }

    /// The detected framing, once known.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Feed bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into directly.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> std::result::Result<Option<Event>, String> {
        loop {
            let Some(&first) = self.buf.first() else {
                return Ok(None);
            };
            let framing = *self.framing.get_or_insert_with(|| detect_framing(first));
            let frame = match framing {
                Framing::Prefixed => {
                    if self.buf.len() < 4 {
                        return Ok(None);
                    }
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                            as usize;
                    if len > MAX_EVENT {
                        return Err(format!("event frame of {len} bytes is too large"));
                    }
                    if self.buf.len() < 4 + len {
                        self.buf.reserve(4 + len - self.buf.len());
                        return Ok(None);
                    }
                    self.buf.advance(4);
                    self.buf.split_to(len).freeze()
                }
                Framing::Bare => match msgpack_len(&self.buf)? {
                    None => {
                        if self.buf.len() > MAX_EVENT {
                            return Err("event frame is too large".into());
                        }
                        return Ok(None);
                    }
                    Some(len) => self.buf.split_to(len).freeze(),
                },
            };
            match event_from_frame(&frame)? {
                Some(ev) => return Ok(Some(ev)),
                // Not an event (no body): skip it.
                None => continue,
            }
        }
    }
}

/// The event in one complete frame `{"head": {...}, "body": <tag>\n\n<data>}`,
/// without copying: the body is found by walking the map's markers and the
/// event data stays a slice of the frame (the bus carries every event of the
/// master; most are only looked at for their tag). `Ok(None)` when the frame
/// has no body.
pub fn event_from_frame(frame: &Bytes) -> std::result::Result<Option<Event>, String> {
    let bad = || "undecodable event frame".to_string();
    let be = |at: usize, n: usize| -> std::result::Result<usize, String> {
        frame
            .get(at..at + n)
            .map(|b| b.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x)))
            .ok_or_else(bad)
    };
    // (header length, payload length) of a str/bin item at `at`.
    let string_at = |at: usize| -> std::result::Result<Option<(usize, usize)>, String> {
        let Some(&m) = frame.get(at) else {
            return Err(bad());
        };
        Ok(match m {
            0xa0..=0xbf => Some((1, usize::from(m & 0x1f))),
            0xc4 | 0xd9 => Some((2, be(at + 1, 1)?)),
            0xc5 | 0xda => Some((3, be(at + 1, 2)?)),
            0xc6 | 0xdb => Some((5, be(at + 1, 4)?)),
            _ => None,
        })
    };
    let Some(&m) = frame.first() else {
        return Ok(None);
    };
    let (mut pos, pairs) = match m {
        0x80..=0x8f => (1, usize::from(m & 0x0f)),
        0xde => (3, be(1, 2)?),
        0xdf => (5, be(1, 4)?),
        _ => return Ok(None),
    };
    for _ in 0..pairs {
        let key = match string_at(pos)? {
            Some((hdr, len)) => {
                let key = frame.get(pos + hdr..pos + hdr + len).ok_or_else(bad)?;
                pos += hdr + len;
                key
            }
            None => {
                let len = msgpack_len(&frame[pos..])?.ok_or_else(bad)?;
                pos += len;
                &frame[0..0]
            }
        };
        if key == b"body" {
            let (hdr, len) = string_at(pos)?.ok_or_else(bad)?;
            if frame.len() < pos + hdr + len {
                return Err(bad());
            }
            let body = frame.slice(pos + hdr..pos + hdr + len);
            let (tag, data) = split_body(&body);
            return Ok(Some(Event::new(tag, data)));
        }
        let len = msgpack_len(frame.get(pos..).ok_or_else(bad)?)?.ok_or_else(bad)?;
        pos += len;
    }
    Ok(None)
}

/// The length of the msgpack item at the start of `buf`, or `None` if it is
/// not complete yet. Walks markers without building values, so re-scanning a
/// large partial event is cheap.
pub fn msgpack_len(buf: &[u8]) -> std::result::Result<Option<usize>, String> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        let Some(&m) = buf.get(pos) else {
            return Ok(None);
        };
        pending -= 1;
        pos += 1;
        let be = |n: usize, pos: usize| -> Option<u64> {
            buf.get(pos..pos + n)
                .map(|b| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        };
        let (skip, items): (u64, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (0, u64::from(m & 0x0f)),
            0xa0..=0xbf => (u64::from(m & 0x1f), 0),
            0xc4 | 0xd9 => match be(1, pos) {
                Some(n) => (1 + n, 0),
                None => return Ok(None),
            },
            0xc5 | 0xda => match be(2, pos) {
                Some(n) => (2 + n, 0),
                None => return Ok(None),
            },
            0xc6 | 0xdb => match be(4, pos) {
                Some(n) => (4 + n, 0),
                None => return Ok(None),
            },
            0xc7 => match be(1, pos) {
                Some(n) => (2 + n, 0),
                None => return Ok(None),
            },
            0xc8 => match be(2, pos) {
                Some(n) => (3 + n, 0),
                None => return Ok(None),
            },
            0xc9 => match be(4, pos) {
                Some(n) => (5 + n, 0),
                None => return Ok(None),
            },
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => match be(2, pos) {
                Some(n) => (2, n),
                None => return Ok(None),
            },
            0xdd => match be(4, pos) {
                Some(n) => (4, n),
                None => return Ok(None),
            },
            0xde => match be(2, pos) {
                Some(n) => (2, 2 * n),
                None => return Ok(None),
            },
            0xdf => match be(4, pos) {
                Some(n) => (4, 2 * n),
                None => return Ok(None),
            },
            0xc1 => return Err("invalid msgpack marker 0xc1".into()),
        };
        let skip = usize::try_from(skip).map_err(|_| "msgpack length overflow".to_string())?;
        pos = pos.checked_add(skip).ok_or("msgpack length overflow")?;
        if pos > MAX_EVENT {
            return Err("event frame is too large".into());
        }
        pending = pending
            .checked_add(items)
            .ok_or("msgpack length overflow")?;
    }
    if pos > buf.len() {
        Ok(None)
    } else {
        Ok(Some(pos))
    }
}

/// Where the bus lives.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// The subscribe and fire endpoints of a master's bus.
pub fn endpoints(config: &MasterConfig) -> (Endpoint, Endpoint) {
    match config.ipc_mode() {
        IpcMode::Tcp => {
            let host = if config.ipv6() { "[::1]" } else { "127.0.0.1" };
            (
                Endpoint::Tcp(format!("{host}:{}", config.tcp_master_pub_port())),
                Endpoint::Tcp(format!("{host}:{}", config.tcp_master_pull_port())),
            )
        }
        IpcMode::Ipc => {
            let dir = config.sock_dir();
            (
                Endpoint::Unix(dir.join("master_event_pub.ipc")),
                Endpoint::Unix(dir.join("master_event_pull.ipc")),
            )
        }
    }
}

trait Stream: AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn open(endpoint: &Endpoint) -> std::io::Result<Box<dyn Stream>> {
    Ok(match endpoint {
        Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

struct Waiter {
    id: u64,
    tx: mpsc::Sender<Arc<Event>>,
    lost: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    by_jid: HashMap<String, Vec<Waiter>>,
    /// Recent runner/wheel events in arrival order (for eviction) ...
    recent: VecDeque<Arc<Event>>,
    /// ... and the same events by jid, so registering a waiter is a lookup,
    /// not a scan (every `local` call registers one).
    recent_by_jid: HashMap<String, Vec<Arc<Event>>>,
    recent_bytes: usize,
}

struct Shared {
    sub: Endpoint,
    pull: Endpoint,
    state: Mutex<State>,
    stream: broadcast::Sender<Arc<Event>>,
    connected: watch::Sender<bool>,
    next_id: AtomicU64,
    /// 0 unknown, 1 `_stamp` without offset (≤3007), 2 with `+00:00` (3008+).
    stamp_style: AtomicU8,
    pub_framing: Mutex<Option<Framing>>,
    pull_framing: tokio::sync::Mutex<Option<Framing>>,
    pusher: tokio::sync::Mutex<Option<(u64, Box<dyn Stream>)>>,
    generation: AtomicU64,
    events_seen: AtomicU64,
}

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

    /// Receive every event from now on (bounded; a receiver that falls behind
    /// gets `RecvError::Lagged` and skips ahead).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.stream.subscribe()
    }

    /// Receive the events of one jid. Register before sending the request
    /// that creates them. Recent runner/wheel events of that jid that arrived
    /// before registration are delivered first.
    pub fn subscribe_jid(&self, jid: &str) -> JidSubscription {
        let (tx, rx) = mpsc::channel(JID_QUEUE);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(AtomicBool::new(false));
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        for ev in state.recent_by_jid.get(jid).into_iter().flatten() {
            let _ = tx.try_send(ev.clone());
        }
        state
            .by_jid
            .entry(jid.to_owned())
            .or_default()
            .push(Waiter {
                id,
                tx,
                lost: lost.clone(),
            });
        drop(state);
        JidSubscription {
            rx,
            id,
            jid: jid.to_owned(),
            lost,
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

/// The events of one jid, in arrival order. Dropping it unregisters.
pub struct JidSubscription {
    rx: mpsc::Receiver<Arc<Event>>,
    id: u64,
    jid: String,
    lost: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl JidSubscription {
    /// The next event, or `None` when the bus handle is gone.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        self.rx.recv().await
    }

    /// Whether any event for this jid was dropped because the queue was full.
    pub fn lost_events(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// The jid.
    pub fn jid(&self) -> &str {
        &self.jid
    }
}

impl Drop for JidSubscription {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = state.by_jid.get_mut(&self.jid) {
            list.retain(|w| w.id != self.id);
            if list.is_empty() {
                state.by_jid.remove(&self.jid);
            }
        }
    }
}

fn dispatch(shared: &Shared, event: Event) {
    shared.events_seen.fetch_add(1, Ordering::Relaxed);
    let event = Arc::new(event);
    if let Some(jid) = event.jid() {
        let cache = event.tag.starts_with("salt/run/") || event.tag.starts_with("salt/wheel/");
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = state.by_jid.get_mut(jid) {
            list.retain(|w| match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.lost.store(true, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if list.is_empty() {
                state.by_jid.remove(jid);
            }
        }
        if cache && event.raw_len() < RECENT_BYTES / 4 {
            state.recent_bytes += event.raw_len();
            state.recent.push_back(event.clone());
            state
                .recent_by_jid
                .entry(jid.to_owned())
                .or_default()
                .push(event.clone());
            while state.recent.len() > RECENT_EVENTS || state.recent_bytes > RECENT_BYTES {
                let Some(old) = state.recent.pop_front() else {
                    break;
                };
                state.recent_bytes -= old.raw_len();
                if let Some(old_jid) = old.jid() {
                    if let Some(list) = state.recent_by_jid.get_mut(old_jid) {
                        // The oldest event of a jid is the first in its list.
                        if !list.is_empty() {
                            list.remove(0);
                        }
                        if list.is_empty() {
                            state.recent_by_jid.remove(old_jid);
                        }
                    }
                }
            }
        }
    }
    if shared.stream.receiver_count() > 0 {
        let _ = shared.stream.send(event);
    }
}

async fn run(weak: std::sync::Weak<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let endpoint = shared.sub.clone();
        drop(shared);
        match open(&endpoint).await {
            Ok(mut stream) => {
                backoff = Duration::from_millis(100);
                let Some(shared) = weak.upgrade() else { return };
                shared.generation.fetch_add(1, Ordering::Relaxed);
                shared.connected.send_replace(true);
                tracing::info!(bus = %endpoint, "subscribed to the Salt event bus");
                drop(shared);
                let why = read_loop(&weak, &mut stream).await;
                let Some(shared) = weak.upgrade() else { return };
                shared.connected.send_replace(false);
                *shared.pull_framing.lock().await = None;
                tracing::warn!(bus = %endpoint, reason = %why, "lost the Salt event bus; reconnecting");
            }
            Err(e) => {
                tracing::debug!(bus = %endpoint, error = %e, "Salt event bus not reachable");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn read_loop(weak: &std::sync::Weak<Shared>, stream: &mut Box<dyn Stream>) -> String {
    let mut decoder = FrameDecoder::new();
    loop {
        let buf = decoder.buffer();
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match stream.read_buf(buf).await {
            Ok(0) => return "closed by the master".into(),
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
        let Some(shared) = weak.upgrade() else {
            return "shut down".into();
        };
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => {
                    if shared.stamp_style.load(Ordering::Relaxed) == 0 {
                        if let Some(stamp) = event.data().get("_stamp").and_then(Json::as_str) {
                            let style = if stamp.ends_with("+00:00") { 2 } else { 1 };
                            shared.stamp_style.store(style, Ordering::Relaxed);
                        }
                    }
                    dispatch(&shared, event)
                }
                Ok(None) => break,
                Err(e) => return e,
            }
        }
        if let Some(f) = decoder.framing() {
            *shared.pub_framing.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame_bytes(tag: &str, data: &Json, framing: Framing) -> Vec<u8> {
        encode_frame(&pack_body(tag, data), framing)
    }

    #[test]
    fn frame_walker_matches_a_full_decode() {
        for data in [
            json!({"a": 1}),
            json!({"return": "x".repeat(70_000)}),
            json!(null),
        ] {
            let body = pack_body("salt/job/1/ret/m", &data);
            // body as bin (3006+) and as str (what 3008 accepts on the pull side)
            for msg in [
                value::map([
                    ("head", Mp::Map(vec![])),
                    ("body", Mp::Binary(body.clone())),
                ]),
                value::map([
                    (
                        "body",
                        Mp::from(String::from_utf8_lossy(&body).into_owned()),
                    ),
                    ("head", Mp::Map(vec![])),
                ]),
            ] {
                let frame = Bytes::from(value::encode(&msg));
                let ev = event_from_frame(&frame)
                    .expect("valid")
                    .expect("has a body");
                assert_eq!(ev.tag, "salt/job/1/ret/m");
                if msg.as_map().is_some_and(|m| matches!(m[0].1, Mp::Map(_))) {
                    assert_eq!(ev.data(), &data);
                }
            }
        }
        let no_body = Bytes::from(value::encode(&value::map([("head", Mp::Map(vec![]))])));
        assert!(event_from_frame(&no_body).expect("valid").is_none());
        let truncated = Bytes::from(vec![0x81, 0xa4, b'b', b'o', b'd', b'y', 0xc4, 0x10, 1, 2]);
        assert!(event_from_frame(&truncated).is_err());
    }

    #[tokio::test]
    async fn recent_runner_events_are_replayed_and_evicted() {
        let bus = EventBus::start_at(
            Endpoint::Unix("/nonexistent/pub".into()),
            Endpoint::Unix("/nonexistent/pull".into()),
        );
        let data = Bytes::from(value::encode(&value::from_json(&json!({"return": 1}))));
        for i in 0..(RECENT_EVENTS + 10) {
            dispatch(
                &bus.shared,
                Event::new(format!("salt/run/{:020}/ret", i), data.clone()),
            );
        }
        // The oldest were evicted, the newest are replayed to a late waiter.
        let mut late = bus.subscribe_jid(&format!("{:020}", RECENT_EVENTS + 9));
        let ev = late.recv().await.expect("replayed");
        assert_eq!(ev.data(), &json!({"return": 1}));
        let mut early = bus.subscribe_jid(&format!("{:020}", 0));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), early.recv())
                .await
                .is_err()
        );
        let state = bus.shared.state.lock().expect("lock");
        assert_eq!(state.recent.len(), RECENT_EVENTS);
        assert_eq!(state.recent_by_jid.len(), RECENT_EVENTS);
    }

    #[test]
    fn jid_extraction() {
        assert_eq!(
            jid_of_tag("salt/job/20261126203708483354/ret/ms-0"),
            Some("20261126203708483354")
        );
        assert_eq!(
            jid_of_tag("salt/run/20261126203708483354/ret"),
            Some("20261126203708483354")
        );
        assert_eq!(
            jid_of_tag("20261126203708483354"),
            Some("20261126203708483354")
        );
        assert_eq!(jid_of_tag("salt/auth"), None);
        assert_eq!(jid_of_tag("minion_start"), None);
        assert_eq!(jid_of_tag("salt/job//ret"), None);
    }

    #[test]
    fn detects_both_framings_and_decodes_stream_split_anywhere() {
        for framing in [Framing::Bare, Framing::Prefixed] {
            let mut stream = frame_bytes("a/b", &json!({"x": 1}), framing);
            stream.extend(frame_bytes(
                "salt/job/1/ret/m",
                &json!({"return": [1, 2]}),
                framing,
            ));
            for split in 0..stream.len() {
                let mut d = FrameDecoder::new();
                let mut got = Vec::new();
                d.extend(&stream[..split]);
                while let Some(e) = d.next_event().expect("valid") {
                    got.push(e);
                }
                d.extend(&stream[split..]);
                while let Some(e) = d.next_event().expect("valid") {
                    got.push(e);
                }
                assert_eq!(d.framing(), Some(framing));
                assert_eq!(got.len(), 2, "split at {split}");
                assert_eq!(got[0].tag, "a/b");
                assert_eq!(got[1].data(), &json!({"return": [1, 2]}));
            }
        }
    }

    #[test]
    fn msgpack_len_matches_encoder() {
        let samples = [
            json!(null),
            json!([1, 2, {"a": "b"}]),
            json!({"k": "x".repeat(300), "n": -5, "f": 1.5, "big": u64::MAX}),
            json!("y".repeat(70000)),
        ];
        for s in samples {
            let bytes = value::encode(&value::from_json(&s));
            assert_eq!(msgpack_len(&bytes), Ok(Some(bytes.len())));
            assert_eq!(msgpack_len(&bytes[..bytes.len() - 1]), Ok(None));
        }
        assert!(msgpack_len(&[0xc1]).is_err());
    }

    #[test]
    fn garbage_prefixed_length_is_an_error_not_an_allocation() {
        let mut d = FrameDecoder::new();
        d.extend(&[0x7f, 0xff, 0xff, 0xff, 0x00]);
        assert!(d.next_event().is_err());
    }
}
