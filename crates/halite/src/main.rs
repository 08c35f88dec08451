//! halite: a REST API for Salt masters, replacing Python's salt-api.
//!
//! Reads the master config, connects to the master (request channel and one
//! event-bus subscription shared by every request), and serves each surface
//! configured there: `rest_wsgi` (see `wsgi.rs`) and `rest_cherrypy` (see
//! `cherrypy/`), all sharing one connection to the master.

mod cherrypy;
mod error;
mod lowstate;
mod metrics;
mod pyjson;
mod serve;
mod settings;
mod stream_answer;
mod wsgi;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use clap::{Parser, Subcommand};
use http_body_util::BodyExt;
use salt_client::clients::Netapi;
use salt_client::config::MasterConfig;
use salt_client::master::Master;

use crate::error::ApiError;

/// Command line. Flags override the master config.
#[derive(Debug, Parser)]
#[command(
    name = "halite",
    version,
    about = "A REST API for Salt masters (a drop-in salt-api replacement)"
)]
pub struct Cli {
    /// Master config file (default: $SALT_MASTER_CONFIG, then /etc/salt/master).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Address to bind the rest_wsgi surface to (overrides rest_wsgi.host).
    #[arg(long)]
    host: Option<String>,
    /// Port of the rest_wsgi surface (overrides rest_wsgi.port).
    #[arg(long)]
    port: Option<u16>,
    /// TLS certificate (PEM) for the rest_wsgi surface (overrides rest_wsgi.ssl_crt).
    #[arg(long)]
    ssl_crt: Option<PathBuf>,
    /// TLS private key (PEM) for the rest_wsgi surface (overrides rest_wsgi.ssl_key).
    #[arg(long)]
    ssl_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "HALITE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Explain what halite would serve with this config, and what is wrong with it.
    CheckConfig,
}

/// Limits applied to requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
}

/// Shared state of every surface.
#[derive(Clone)]
pub struct AppState {
    pub netapi: Netapi,
    pub limits: Limits,
    pub metrics: Arc<metrics::Metrics>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _log_flush = init_tracing(cli.log_format);
    let config = match MasterConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("halite: cannot load the master config: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let surfaces = match settings::surfaces(&config, &cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("halite: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        return settings::check_config(&config, &surfaces);
    }
    if surfaces.is_empty() {
        eprintln!(
            "halite: nothing to serve: {} has no rest_wsgi or rest_cherrypy section (add `rest_wsgi: {{port: 8001}}` or pass --port)",
            config.path().display()
        );
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("halite: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(config, surfaces)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("halite: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr through a background writer (one write per line from
/// the request path cost a syscall per request); it blocks rather than drops
/// when the writer falls behind. The guard flushes at exit.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(4096)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Build the shared state for a master.
pub fn app_state(master: Master, limits: Limits) -> AppState {
    AppState {
        netapi: Netapi::new(master),
        limits,
        metrics: Arc::new(metrics::Metrics::default()),
    }
}

/// A JSON response, written as Python's `json.dumps` writes it, with an
/// exact `Content-Length` (bytes, not characters).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = pyjson::to_vec(body)
        .unwrap_or_else(|_| b"{\"return\": \"unserialisable result\"}".to_vec());
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Read a request body up to `limit` bytes; beyond it, 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ApiError::payload_too_large(limit))
            } else {
                Err(ApiError::bad_request(format!(
                    "Could not read the request body: {e}"
                )))
            }
        }
    }
}
