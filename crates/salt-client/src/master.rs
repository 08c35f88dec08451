//! [`Master`]: everything needed to talk to one Salt master — its config, the
//! request channel and the shared event-bus subscription — behind one
//! cheaply cloneable handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmpv::Value as Mp;

use crate::config::MasterConfig;
use crate::error::Result;
use crate::events::EventBus;
use crate::transport::RequestChannel;
use crate::value;

/// How long a [`Master::serving`] answer is reused.
pub const SERVING_PROBE_EVERY: Duration = Duration::from_secs(1);

struct Inner {
    /// Swapped whole on reload ([`Master::reload_config`]).
    config: RwLock<Arc<MasterConfig>>,
    channel: RequestChannel,
    bus: EventBus,
    last_jid: Mutex<u128>,
    requests: AtomicU64,
    /// The last `serving` probe: when, and whether the master answered.
    serving: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    /// The bus generation whose subscription an event round trip proved.
    bus_proved: AtomicU64,
}

/// A handle on one Salt master. Clone it freely; all clones share one pool
/// of request connections and one event-bus subscription.
#[derive(Clone)]
pub struct Master {
    inner: Arc<Inner>,
}

impl Master {
    /// Connect to the master described by `config`. Starts the event-bus
    /// subscription in the background; does not wait for the master (a
    /// master that is down now is picked up when it comes back).
    pub fn new(config: MasterConfig) -> Self {
        let config = Arc::new(config);
        let addr = master_addr(&config);
        let channel = RequestChannel::new(config.transport(), addr);
        let bus = EventBus::start(&config);
        Master {
            inner: Arc::new(Inner {
                config: RwLock::new(config),
                channel,
                bus,
                last_jid: Mutex::new(0),
                requests: AtomicU64::new(0),
                serving: tokio::sync::Mutex::new(None),
                bus_proved: AtomicU64::new(0),
            }),
        }
    }

    /// The master config in force (the one halite was started with, or the
    /// last one [`reload_config`](Self::reload_config) accepted).
    pub fn config(&self) -> Arc<MasterConfig> {
        self.inner
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Put a re-read config in force (an operator's SIGHUP): eauth ACLs,
    /// nodegroups, enabled clients, timeouts, token settings and every other
    /// key read per request. Where the master *is* (address, ports,
    /// transport, event-bus sockets) is bound at start: a config that moves
    /// it is refused whole, with the keys that differ, and the current one
    /// stays.
    pub fn reload_config(&self, new: MasterConfig) -> std::result::Result<(), Vec<&'static str>> {
        let mut current = self.inner.config.write().unwrap_or_else(|p| p.into_inner());
        let moved: Vec<&'static str> = [
            ("interface", current.interface() != new.interface()),
            ("ret_port", current.ret_port() != new.ret_port()),
            ("transport", current.transport() != new.transport()),
            ("ipc_mode", current.ipc_mode() != new.ipc_mode()),
            ("sock_dir", current.sock_dir() != new.sock_dir()),
            (
                "tcp_master_pub_port",
                current.tcp_master_pub_port() != new.tcp_master_pub_port(),
            ),
            (
                "tcp_master_pull_port",
                current.tcp_master_pull_port() != new.tcp_master_pull_port(),
            ),
            ("ipv6", current.ipv6() != new.ipv6()),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !moved.is_empty() {
            return Err(moved);
        }
        *current = Arc::new(new);
        Ok(())
    }

    /// The event bus subscription.
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    /// The request server address (`host:port`).
    pub fn addr(&self) -> &str {
        self.inner.channel.addr()
    }

    /// Requests sent since start.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Send one clear load (`{"cmd": ..., ...}`) and return the reply.
    pub async fn request(&self, load: Mp, timeout: Duration) -> Result<Mp> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.channel.send(load, timeout).await
    }

    /// [`Master::request`], with the reply's bytes offered to `read` first
    /// (see [`crate::transport::RequestChannel::send_read`]).
    pub async fn request_read<T>(
        &self,
        load: Mp,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<std::result::Result<T, Mp>> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.channel.send_read(load, timeout, read).await
    }

    /// Round-trip a `ping` (the cheapest liveness check).
    pub async fn ping(&self, timeout: Duration) -> Result<()> {
        let load = value::map([("cmd", Mp::from("ping"))]);
        self.request(load, timeout).await.map(|_| ())
    }

    /// Whether the master serves requests now: the event bus is connected,
    /// an event fired since it (re)connected came back on it (the publisher
    /// has registered the subscription; once per connection), and the
    /// master answers a `ping` within 2 s. At most one ping per
    /// [`SERVING_PROBE_EVERY`] whatever the number of callers (a load
    /// balancer's health checks); a master cluster member that defers
    /// requests (`cluster_retry`) does not serve.
    pub async fn serving(&self) -> bool {
        if !self.inner.bus.is_connected() {
            return false;
        }
        let mut last = self.inner.serving.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < SERVING_PROBE_EVERY {
                return ok;
            }
        }
        let generation = self.inner.bus.generation();
        let mut ok = true;
        if self.inner.bus_proved.load(Ordering::Relaxed) != generation {
            ok = self.inner.bus.round_trip(Duration::from_secs(2)).await;
            if ok {
                self.inner.bus_proved.store(generation, Ordering::Relaxed);
            }
        }
        let ok = ok && self.ping(Duration::from_secs(2)).await.is_ok();
        *last = Some((std::time::Instant::now(), ok));
        ok
    }

    /// Make sure the master can be used for a call that needs returns from
    /// the event bus: the bus is connected, or (when it is not) the master
    /// answers a `ping` and the bus reconnects within `limit`. A master that
    /// is down fails at once with [`SaltError::Unreachable`](crate::SaltError::Unreachable) (connection
    /// refused) instead of after `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<()> {
        if self.bus().is_connected() {
            return Ok(());
        }
        // Boxed: rare, and inline this future would be room reserved in
        // every call that publishes (~1 KiB).
        Box::pin(async {
            self.ping(limit).await?;
            self.bus().wait_connected(limit).await
        })
        .await
    }

    /// A new jid `YYYYMMDDhhmmssffffff` (UTC), strictly increasing within this
    /// process, as Salt's `gen_jid` makes them.
    pub fn new_jid(&self) -> String {
        let now = chrono::Utc::now();
        let candidate: u128 = now
            .format("%Y%m%d%H%M%S%6f")
            .to_string()
            .parse()
            .unwrap_or(0);
        let mut last = self
            .inner
            .last_jid
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let jid = if candidate > *last {
            candidate
        } else {
            *last + 1
        };
        *last = jid;
        format!("{jid:020}")
    }
}

fn master_addr(config: &MasterConfig) -> String {
    let host = config.interface();
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", config.ret_port())
    } else {
        format!("{host}:{}", config.ret_port())
    }
}
