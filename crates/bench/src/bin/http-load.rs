//! `http-load`: an HTTP/1.1 and HTTP/2 load generator (plain or TLS) that
//! checks every response body.
//!
//! Each of `--concurrency` workers owns one keep-alive connection and sends
//! its requests one after another, for `--duration` seconds or until
//! `--requests` have been sent in total. Every answer is validated
//! (`--check`), so a 200 whose `return` lacks a minion counts as
//! *incomplete*, not as a success. Prints one JSON object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{Check, Stats};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
#[command(about = "HTTP/1.1 and h2c load generator with response-body checks")]
struct Args {
    /// Target URL (http://127.0.0.1:PORT/PATH); only loopback is allowed.
    #[arg(long)]
    url: String,
    /// Request body (JSON); POST when given, GET otherwise.
    #[arg(long)]
    body: Option<String>,
    /// Extra header `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Concurrent connections, one request in flight on each.
    #[arg(short, long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds to keep sending (ignored with --requests).
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Total requests to send instead of a duration.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// What a good body contains: none, jid, true:N, objects:N, key:NAME.
    #[arg(long, default_value = "none")]
    check: Check,
    /// Label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) on this many
    /// connections, the concurrent requests spread over them as streams.
    #[arg(long)]
    h2_connections: Option<usize>,
    /// PEM certificate(s) to trust for an https:// URL (for example the
    /// server's self-signed certificate). With TLS, HTTP/2 or HTTP/1.1 is
    /// chosen by ALPN as `--h2-connections` asks.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
}

struct Target {
    addr: String,
    host: String,
    path: String,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        _ => return Err("only http:// and https:// URLs are supported".into()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(format!("refusing to load {host}: only loopback targets"));
    }
    let addr = if authority.contains(':') {
        authority.replace("localhost", "127.0.0.1")
    } else {
        let port = if tls { 443 } else { 80 };
        format!("{}:{port}", authority.replace("localhost", "127.0.0.1"))
    };
    Ok(Target {
        addr,
        host: authority.to_owned(),
        path: path.to_owned(),
        tls,
    })
}

/// A TLS client trusting the certificates in `cacert`, offering `h2` or
/// `http/1.1` by ALPN.
fn tls_connector(cacert: &std::path::Path, http2: bool) -> Result<TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(cacert).map_err(|e| format!("{}: {e}", cacert.display()))?
    {
        let cert = cert.map_err(|e| format!("{}: {e}", cacert.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", cacert.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(TlsConnector::from(Arc::new(config)))
}

struct Shared {
    target: Target,
    body: Option<Bytes>,
    headers: Vec<(String, String)>,
    check: Check,
    timeout: Duration,
    deadline: Option<Instant>,
    budget: Option<u64>,
    issued: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    connections: AtomicU64,
    statuses: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
    http2: bool,
    tls: Option<TlsConnector>,
}

impl Shared {
    /// Claim the next request, or `false` when the run is over.
    fn claim(&self) -> bool {
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return false;
            }
        }
        match self.budget {
            Some(b) => self.issued.fetch_add(1, Ordering::Relaxed) < b,
            None => {
                self.issued.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }
}

/// A connection to send on: HTTP/1.1 (one request at a time) or an
/// HTTP/2 connection shared by many workers (one stream each).
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

async fn connect(shared: &Shared) -> Result<Sender, String> {
    let mut last = String::new();
    for attempt in 0..20u32 {
        match TcpStream::connect(&shared.target.addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let sender = match &shared.tls {
                    Some(tls) => {
                        let name = rustls::pki_types::ServerName::try_from("localhost")
                            .map_err(|e| e.to_string())?;
                        let stream = tls
                            .connect(name, stream)
                            .await
                            .map_err(|e| format!("TLS: {e}"))?;
                        handshake(shared.http2, stream).await?
                    }
                    None => handshake(shared.http2, stream).await?,
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                return Ok(sender);
            }
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1))).await;
            }
        }
    }
    Err(format!("connect {}: {last}", shared.target.addr))
}

async fn handshake<S>(http2: bool, stream: S) -> Result<Sender, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    Ok(if http2 {
        let (sender, conn) = http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H1(sender)
    })
}

async fn one(shared: &Shared, sender: &mut Sender) -> Result<(u16, Bytes), String> {
    let mut b = Request::builder()
        .uri(shared.target.path.as_str())
        .header("host", shared.target.host.as_str())
        .header("accept", "application/json");
    for (k, v) in &shared.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let req = match &shared.body {
        Some(body) => b
            .method("POST")
            .header("content-type", "application/json")
            .body(Full::new(body.clone())),
        None => b.method("GET").body(Full::new(Bytes::new())),
    }
    .map_err(|e| e.to_string())?;
    let resp = sender.send(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn worker(shared: Arc<Shared>, first: Option<Sender>) -> Stats {
    let mut stats = Stats::default();
    let mut sender: Option<Sender> = first;
    while shared.claim() {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(&shared).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    stats.failed += 1;
                    stats.note(e);
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        if s.ready().await.is_err() {
            sender = None;
            match connect(&shared).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    stats.failed += 1;
                    stats.note(e);
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let t0 = Instant::now();
        let res = tokio::time::timeout(shared.timeout, one(&shared, s)).await;
        let took = t0.elapsed();
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        match res {
            Ok(Ok((status, body))) => {
                stats.latencies_us.push(took.as_micros() as u64);
                *shared
                    .statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(status)
                    .or_default() += 1;
                if !(200..300).contains(&status) {
                    stats.failed += 1;
                    stats.note(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(160)])
                    ));
                } else {
                    match shared.check.body(&body) {
                        Ok(()) => stats.ok += 1,
                        Err(e) => {
                            stats.incomplete += 1;
                            stats.note(e);
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                stats.failed += 1;
                stats.note(e);
                sender = None;
            }
            Err(_) => {
                stats.failed += 1;
                stats.note(format!(
                    "timeout after {:.0}s",
                    shared.timeout.as_secs_f64()
                ));
                sender = None;
            }
        }
    }
    stats
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let target = match parse_url(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("http-load: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_owned(), v.trim().to_owned())),
            None => {
                eprintln!("http-load: bad header '{h}' (want 'Name: value')");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let http2 = args.h2_connections.is_some();
    let tls = match (&args.cacert, target.tls) {
        (Some(ca), true) => match tls_connector(ca, http2) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("http-load: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        (None, true) => {
            eprintln!("http-load: an https:// URL needs --cacert");
            return std::process::ExitCode::from(2);
        }
        (_, false) => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("http-load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared {
        target,
        body: args.body.clone().map(Bytes::from),
        headers,
        check: args.check.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
        deadline: if args.requests.is_some() {
            None
        } else {
            Some(Instant::now() + Duration::from_secs_f64(args.duration))
        },
        budget: args.requests,
        issued: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        statuses: Default::default(),
        http2,
        tls,
    });
    let started = Instant::now();
    let stats = runtime.block_on(async {
        // HTTP/2: a fixed set of connections, each worker one stream on one.
        let mut pool = Vec::new();
        for _ in 0..args.h2_connections.unwrap_or(0) {
            match connect(&shared).await {
                Ok(Sender::H2(s)) => pool.push(s),
                Ok(Sender::H1(_)) => {}
                Err(e) => eprintln!("http-load: {e}"),
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for i in 0..args.concurrency.max(1) {
            let first = (!pool.is_empty()).then(|| Sender::H2(pool[i % pool.len()].clone()));
            set.spawn(worker(shared.clone(), first));
        }
        let mut total = Stats::default();
        while let Some(r) = set.join_next().await {
            if let Ok(s) = r {
                total.merge(s);
            }
        }
        total
    });
    let elapsed = started.elapsed();
    let statuses: serde_json::Map<String, serde_json::Value> = shared
        .statuses
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let report = stats.report(
        elapsed,
        json!({
            "tool": "http-load",
            "label": args.label,
            "url": args.url,
            "concurrency": args.concurrency,
            "check": format!("{:?}", args.check),
            "connections": shared.connections.load(Ordering::Relaxed),
            "http": match (shared.http2, shared.tls.is_some()) {
                (true, false) => "2 (h2c)",
                (true, true) => "2 (TLS)",
                (false, false) => "1.1",
                (false, true) => "1.1 (TLS)",
            },
            "max_in_flight": shared.max_in_flight.load(Ordering::Relaxed),
            "status": statuses,
        }),
    );
    println!("{report}");
    std::process::ExitCode::SUCCESS
}
