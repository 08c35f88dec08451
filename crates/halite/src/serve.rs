//! Listeners, TLS, connection limits, readiness and signals.
//!
//! * SIGTERM/SIGINT: stop accepting, end `/events` and `/ws` streams with a
//!   final event, let requests in flight finish for up to the grace period
//!   (`graceful_shutdown_timeout`), then return (exit 0). Calls still
//!   waiting for their jobs when the grace period is over answer 503 with
//!   the jid ([`Shutdown::cut`]); connections still open [`CUT_MARGIN`]
//!   later are closed.
//! * SIGHUP: re-read every surface's TLS certificate, key and chain; a file
//!   that does not load keeps the old certificate and logs why. Open
//!   connections are not touched; new handshakes use the new certificate.
//!   The master config is read again too and its per-request parts (eauth
//!   ACLs, nodegroups, enabled clients, timeouts) take effect for the next
//!   request; a config that does not load, or that moves the master (address,
//!   ports, transport, bus sockets: those need a restart), keeps the current
//!   one and logs why.
//! * systemd (`Type=notify`): `READY=1` once the listeners are bound and the
//!   event bus is connected, `STOPPING=1` on SIGTERM. Without systemd these
//!   notifications are no-ops.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::ServiceExt as _;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use prometheus_client::metrics::gauge::Gauge;
use salt_client::config::MasterConfig;
use salt_client::master::Master;
use sd_notify::NotifyState;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, SurfaceLabel};
use crate::router::app;
use crate::settings::{ConnectionLimits, Surface, TlsOptions, DEFAULT_GRACE};
use crate::shutdown::Shutdown;
use crate::state::{AppState, Limits};
use crate::tls::{self, TlsFiles};

/// How long an HTTP/2 keep-alive ping may go unanswered before the
/// connection is closed.
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long after the grace period the answers of cut calls get to be
/// written before their connections are closed.
const CUT_MARGIN: Duration = Duration::from_secs(5);

/// A surface's TLS, kept to be reloaded on SIGHUP.
struct Reloadable {
    surface: &'static str,
    files: TlsFiles,
    options: TlsOptions,
    live: RustlsConfig,
}

/// Serve every surface of `config` until SIGTERM/SIGINT, all sharing one
/// connection to the master.
pub async fn serve(config: MasterConfig, surfaces: Vec<Surface>) -> Result<(), String> {
    let started = Instant::now();
    if matches!(
        config.transport(),
        salt_client::config::RequestTransport::Ws
    ) {
        return Err(
            "the master uses `transport: ws`, which halite does not speak (use zeromq or tcp)"
                .into(),
        );
    }
    // Before any port opens: a SIGTERM that comes as soon as a port accepts
    // (a service stopped while it starts) drains instead of killing.
    let signals = Signals::install();
    let master = Master::new(config);
    let metrics = Arc::new(Metrics::default());
    let shutdown = Shutdown::default();
    let handle = axum_server::Handle::new();
    let grace = surfaces
        .iter()
        .map(|s| s.grace)
        .max()
        .unwrap_or(DEFAULT_GRACE);
    let mut reloadable = Vec::new();
    let mut servers = tokio::task::JoinSet::new();
    for surface in surfaces {
        let limits = Limits {
            max_body: surface.max_body,
        };
        let state = AppState::with_metrics(master.clone(), limits, metrics.clone())
            .with_shutdown(shutdown.clone());
        let app = app(&surface, state).into_make_service_with_connect_info::<SocketAddr>();
        let name = surface.kind.section();
        let addr = resolve(&surface.host, surface.port).await?;
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{name}: cannot bind {addr}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let capped = Capped::new(&surface.connections, metrics.clone(), name);
        let h = handle.clone();
        match &surface.tls {
            Some((crt, key)) => {
                let files = TlsFiles {
                    crt: crt.clone(),
                    key: key.clone(),
                    chain: surface.tls_chain.clone(),
                };
                let config = tls::server_config(&files, &surface.tls_options)
                    .map_err(|e| format!("{name}: cannot load TLS certificate/key: {e}"))?;
                let live = RustlsConfig::from_config(config);
                let acceptor = RustlsAcceptor::new(live.clone())
                    .handshake_timeout(surface.connections.header_read_timeout)
                    .acceptor(capped);
                reloadable.push(Reloadable {
                    surface: name,
                    files,
                    options: surface.tls_options.clone(),
                    live,
                });
                let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
                configure(server.http_builder(), &surface.connections);
                tracing::info!(surface = name, %addr, "serving https (HTTP/2 and HTTP/1.1)");
                servers.spawn(async move { server.handle(h).serve(app).await });
            }
            None => {
                let mut server = axum_server::from_tcp(listener).acceptor(capped);
                configure(server.http_builder(), &surface.connections);
                tracing::info!(surface = name, %addr, "serving http");
                servers.spawn(async move { server.handle(h).serve(app).await });
            }
        }
    }
    tokio::spawn(notify_ready(master.clone(), started));
    tokio::spawn(crate::metrics::watch_bus_lag(
        master.clone(),
        metrics.clone(),
    ));
    tokio::spawn(handle_signals(
        signals,
        handle.clone(),
        shutdown,
        grace,
        reloadable,
        master.clone(),
        metrics,
    ));
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("server failed: {e}")),
            Err(e) => return Err(format!("server task failed: {e}")),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// hyper's limits for one surface's connections.
fn configure(builder: &mut Builder<TokioExecutor>, limits: &ConnectionLimits) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper keeps reading a connection while its request waits; capped
        // at 8 KiB (the default) its read buffer stays at 8 KiB instead of
        // growing to 16 KiB (10,000 waiting calls: ~45 MiB less).
        .max_buf_size(limits.http1_max_buf_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
}

/// Tell systemd (if it started us) that we are ready once the event bus is
/// connected: before that, synchronous calls could not see their returns.
async fn notify_ready(master: Master, started: Instant) {
    while !master.bus().is_connected() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(ms, "ready: the event bus is connected");
    if let Err(e) = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status("serving; the event bus is connected"),
    ]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment they are installed.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some(Signals { term, int, hup }),
            _ => {
                tracing::error!("cannot install signal handlers; SIGTERM will not drain");
                None
            }
        }
    }
}

async fn handle_signals(
    signals: Option<Signals>,
    handle: axum_server::Handle,
    shutdown: Shutdown,
    grace: Duration,
    reloadable: Vec<Reloadable>,
    master: Master,
    metrics: Arc<Metrics>,
) {
    let Some(Signals {
        mut term,
        mut int,
        mut hup,
    }) = signals
    else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                reload_tls(&reloadable, &metrics);
                reload_master_config(&master);
            }
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    tracing::info!(
        grace_s = grace.as_secs_f64(),
        in_flight = metrics.requests_in_flight(),
        "shutting down: no new connections; finishing requests in flight"
    );
    shutdown.trigger();
    handle.graceful_shutdown(Some(grace + CUT_MARGIN));
    tokio::time::sleep(grace).await;
    // Still running: the server has requests in flight (it ends as soon as
    // it has none).
    tracing::warn!(
        in_flight = metrics.requests_in_flight(),
        "graceful_shutdown_timeout is over: calls still waiting answer 503 with their jid (the jobs go on)"
    );
    shutdown.cut();
}

/// SIGHUP: load every surface's certificate again; a surface whose files do
/// not load keeps serving the old one.
fn reload_tls(reloadable: &[Reloadable], metrics: &Metrics) {
    if reloadable.is_empty() {
        tracing::info!("SIGHUP: no TLS surface to reload");
    }
    for r in reloadable {
        match tls::server_config(&r.files, &r.options) {
            Ok(config) => {
                r.live.reload_from_config(config);
                metrics.tls_reloads.inc();
                tracing::info!(surface = r.surface, crt = %r.files.crt.display(), "SIGHUP: TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_reload_failures.inc();
                tracing::error!(surface = r.surface, error = %e, "SIGHUP: TLS reload failed; keeping the current certificate");
            }
        }
    }
}

/// SIGHUP: read the master config again (from the same file) and put its
/// per-request parts in force; see [`Master::reload_config`].
fn reload_master_config(master: &Master) {
    let path = master.config().path().to_owned();
    match MasterConfig::load(Some(&path)) {
        Ok(new) => match master.reload_config(new) {
            Ok(()) => tracing::info!(config = %path.display(), "SIGHUP: master config reloaded"),
            Err(moved) => tracing::error!(
                config = %path.display(),
                keys = %moved.join(", "),
                "SIGHUP: the new master config moves the master; restart halite to apply it (keeping the current config)"
            ),
        },
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the master config does not load; keeping the current one")
        }
    }
}

/// Accepts at most `max_connections` connections at once; one more is
/// closed as soon as it is accepted (and counted), so a flood of idle
/// connections cannot exhaust file descriptors or memory.
#[derive(Clone)]
struct Capped {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    surface: &'static str,
}

impl Capped {
    fn new(limits: &ConnectionLimits, metrics: Arc<Metrics>, surface: &'static str) -> Capped {
        // Every series of the surface exists from the start, at 0.
        let label = SurfaceLabel { surface };
        let _ = metrics.connections.get_or_create(&label);
        let _ = metrics.connections_open.get_or_create(&label);
        let _ = metrics.connections_refused.get_or_create(&label);
        Capped {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            metrics,
            surface,
        }
    }
}

impl<S> Accept<TcpStream, S> for Capped {
    type Stream = Counted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Counted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let label = SurfaceLabel {
            surface: self.surface,
        };
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.connections.get_or_create(&label).inc();
                let open = self.metrics.connections_open.get_or_create(&label).clone();
                open.inc();
                std::future::ready(Ok((
                    Counted {
                        stream,
                        open,
                        _permit: permit,
                    },
                    service,
                )))
            }
            Err(_) => {
                self.metrics.connections_refused.get_or_create(&label).inc();
                tracing::warn!(
                    surface = self.surface,
                    "max_connections reached: closing a new connection"
                );
                std::future::ready(Err(io::Error::other("max_connections reached")))
            }
        }
    }
}

/// A connection holding one of its surface's connection permits.
struct Counted {
    stream: TcpStream,
    open: Gauge,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The address to bind. IP addresses and `localhost` are resolved without
/// the system resolver (the static build's glibc cannot load NSS modules
/// reliably); other names go through it.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{host} resolves to no address"))
}
