//! Listeners, TLS, request accounting and graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use salt_client::config::MasterConfig;
use salt_client::master::Master;

use crate::metrics::Metrics;
use crate::router::router;
use crate::settings::Surface;
use crate::state::{AppState, Limits};

/// Serve every surface of `config` until SIGINT/SIGTERM, all sharing one
/// connection to the master.
pub async fn serve(config: MasterConfig, surfaces: Vec<Surface>) -> Result<(), String> {
    if matches!(
        config.transport(),
        salt_client::config::RequestTransport::Ws
    ) {
        return Err(
            "the master uses `transport: ws`, which halite does not speak (use zeromq or tcp)"
                .into(),
        );
    }
    let master = Master::new(config);
    let metrics = std::sync::Arc::new(Metrics::default());
    let handle = axum_server::Handle::new();
    let mut servers = tokio::task::JoinSet::new();
    for surface in surfaces {
        let limits = Limits {
            max_body: surface.max_body,
        };
        let state = AppState::with_metrics(master.clone(), limits, metrics.clone());
        let app = router(&surface, state);
        let addr = resolve(&surface.host, surface.port).await?;
        let h = handle.clone();
        let name = surface.kind.section();
        match &surface.tls {
            Some((crt, key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let tls = tls_config(crt, key, surface.tls_chain.as_deref())
                    .await
                    .map_err(|e| format!("{name}: cannot load TLS certificate/key: {e}"))?;
                let listener = std::net::TcpListener::bind(addr)
                    .map_err(|e| format!("{name}: cannot bind {addr}: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                tracing::info!(surface = name, %addr, "serving https");
                servers.spawn(async move {
                    axum_server::from_tcp_rustls(listener, tls)
                        .handle(h)
                        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                        .await
                });
            }
            None => {
                let listener = std::net::TcpListener::bind(addr)
                    .map_err(|e| format!("{name}: cannot bind {addr}: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                tracing::info!(surface = name, %addr, "serving http");
                servers.spawn(async move {
                    axum_server::from_tcp(listener)
                        .handle(h)
                        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                        .await
                });
            }
        }
    }
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight (at most 10 s)");
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("server failed: {e}")),
            Err(e) => return Err(format!("server task failed: {e}")),
        }
    }
    Ok(())
}

/// The certificate (plus the `ssl_chain` intermediates) and key.
async fn tls_config(
    crt: &std::path::Path,
    key: &std::path::Path,
    chain: Option<&std::path::Path>,
) -> std::io::Result<RustlsConfig> {
    let mut cert = tokio::fs::read(crt).await?;
    if let Some(chain) = chain {
        if !cert.ends_with(b"\n") {
            cert.push(b'\n');
        }
        cert.extend(tokio::fs::read(chain).await?);
    }
    let key = tokio::fs::read(key).await?;
    RustlsConfig::from_pem(cert, key).await
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
