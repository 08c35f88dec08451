//! The sockets: where the bus lives, the subscription's connect/read/reconnect
//! loop.

#[allow(unused_imports)]
use super::*;

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

pub(super) trait Stream: AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

pub(super) async fn open(endpoint: &Endpoint) -> std::io::Result<Box<dyn Stream>> {
    Ok(match endpoint {
        Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr.as_str()).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

pub(super) async fn run(weak: std::sync::Weak<Shared>) {
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
                fanout::mark_bus_lost(&shared);
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

pub(super) async fn read_loop(
    weak: &std::sync::Weak<Shared>,
    stream: &mut Box<dyn Stream>,
) -> String {
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
                        // Not `data()`: the first event may be a job's
                        // `new` event, 10,000 minion names to decode.
                        if let Some(stamp) = event.string_at("_stamp") {
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
