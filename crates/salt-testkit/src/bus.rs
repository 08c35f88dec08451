//! The fake master's event bus: a publish side every subscriber reads all
//! events from, and a pull side clients fire events into (re-published to
//! every subscriber, as the master's `EventPublisher` does).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use rmpv::Value as Mp;
use salt_client::events::{encode_frame, msgpack_len, pack_body, split_body, Framing};
use salt_client::value;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};

use crate::lock;

/// Events kept for [`Bus::history`].
const KEPT_EVENTS: usize = 10_000;
/// Frames a subscriber may fall behind by before it loses some (as a slow
/// subscriber of a real master would).
const QUEUE: usize = 1 << 16;
/// A pull-side frame larger than this closes the connection.
const MAX_PULL_FRAME: usize = 64 << 20;

/// A handle on the bus; clones share it.
#[derive(Clone)]
pub struct Bus(Arc<Inner>);

struct Inner {
    tx: broadcast::Sender<Bytes>,
    pub_framing: Framing,
    pull_framing: Framing,
    generation: watch::Sender<u64>,
    subscribers: AtomicUsize,
    history: Option<Mutex<VecDeque<(String, Json)>>>,
}

impl Bus {
    /// A bus with these framings that remembers the last 10,000 events.
    pub fn new(pub_framing: Framing, pull_framing: Framing) -> Bus {
        Bus::build(pub_framing, pull_framing, true)
    }

    /// A bus that keeps no history (for benchmarks: no decoding per event).
    pub fn without_history(pub_framing: Framing, pull_framing: Framing) -> Bus {
        Bus::build(pub_framing, pull_framing, false)
    }

    fn build(pub_framing: Framing, pull_framing: Framing, history: bool) -> Bus {
        let (tx, _) = broadcast::channel(QUEUE);
        Bus(Arc::new(Inner {
            tx,
            pub_framing,
            pull_framing,
            generation: watch::Sender::new(0),
            subscribers: AtomicUsize::new(0),
            history: history.then(Mutex::default),
        }))
    }

    /// Publish an event.
    pub fn fire(&self, tag: &str, data: &Json) {
        self.publish_body(&pack_body(tag, data));
    }

    /// Publish an event body (`tag + "\n\n" + msgpack(data)`).
    pub fn publish_body(&self, body: &[u8]) {
        if let Some(history) = &self.0.history {
            let (tag, data) = split_body(&Bytes::copy_from_slice(body));
            let data = value::decode(&data)
                .map(|d| value::to_json(&d))
                .unwrap_or(Json::Null);
            let mut h = lock(history);
            if h.len() == KEPT_EVENTS {
                h.pop_front();
            }
            h.push_back((tag, data));
        }
        let _ = self
            .0
            .tx
            .send(Bytes::from(encode_frame(body, self.0.pub_framing)));
    }

    /// Send these bytes to every subscriber as they are.
    pub fn fire_raw(&self, bytes: &[u8]) {
        let _ = self.0.tx.send(Bytes::copy_from_slice(bytes));
    }

    /// Send a pre-built frame (already in the publish framing).
    pub fn send_frame(&self, frame: Bytes) {
        let _ = self.0.tx.send(frame);
    }

    /// Close every subscriber's connection.
    pub fn disconnect_all(&self) {
        self.0.generation.send_modify(|g| *g += 1);
    }

    /// Connected subscribers.
    pub fn subscribers(&self) -> usize {
        self.0.subscribers.load(Ordering::Relaxed)
    }

    /// Events published so far whose tag starts with `prefix`.
    pub fn history(&self, prefix: &str) -> Vec<(String, Json)> {
        match &self.0.history {
            Some(h) => lock(h)
                .iter()
                .filter(|(t, _)| t.starts_with(prefix))
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Accept subscribers on the publish side until the task is aborted.
    pub async fn serve_publish(self, listener: UnixListener) {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(self.clone().serve_subscriber(stream));
        }
    }

    /// Accept pushers on the pull side until the task is aborted.
    pub async fn serve_pull(self, listener: UnixListener) {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(self.clone().serve_pusher(stream));
        }
    }

    /// Stream every event to one subscriber, batching writes, until it goes
    /// away or [`disconnect_all`](Self::disconnect_all).
    async fn serve_subscriber(self, mut stream: UnixStream) {
        let mut rx = self.0.tx.subscribe();
        let mut generation = self.0.generation.subscribe();
        generation.mark_unchanged();
        self.0.subscribers.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(64 * 1024);
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = generation.changed() => break,
            }
            while out.len() < (1 << 20) {
                match rx.try_recv() {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Read frames in the pull framing and re-publish their bodies. A frame
    /// in the other framing is not recognised and gets lost, as on a real
    /// master.
    async fn serve_pusher(self, mut stream: UnixStream) {
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            loop {
                let (skip, len) = match self.0.pull_framing {
                    Framing::Prefixed => {
                        if buf.len() < 4 {
                            break;
                        }
                        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        (4, len)
                    }
                    Framing::Bare => match msgpack_len(&buf) {
                        Ok(Some(len)) => (0, len),
                        Ok(None) => break,
                        Err(_) => return,
                    },
                };
                if len > MAX_PULL_FRAME {
                    return;
                }
                if buf.len() < skip + len {
                    break;
                }
                buf.advance(skip);
                let frame = buf.split_to(len);
                if let Ok(msg) = value::decode(&frame) {
                    if let Some(Mp::Binary(body)) = value::get(&msg, "body") {
                        self.publish_body(body);
                    }
                }
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}
