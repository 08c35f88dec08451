//! Which surfaces to serve, from the master config sections and the flags.

use std::path::PathBuf;

use salt_client::config::MasterConfig;
use serde_json::{Map, Value as Json};

use crate::Cli;

/// Default request body limit (rest_cherrypy's `max_request_body_size`).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// The HTTP surfaces halite knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurfaceKind {
    /// The seed: `rest_wsgi`.
    Wsgi,
}

impl SurfaceKind {
    pub fn section(self) -> &'static str {
        match self {
            SurfaceKind::Wsgi => "rest_wsgi",
        }
    }
}

/// One surface to serve.
#[derive(Debug, Clone)]
pub struct Surface {
    pub kind: SurfaceKind,
    pub host: String,
    pub port: u16,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_body: usize,
}

fn port_of(section: &Map<String, Json>) -> Result<Option<u16>, String> {
    match section.get("port") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .map(Some)
            .ok_or_else(|| format!("port {n} is not a valid TCP port")),
        Some(Json::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("port '{s}' is not a valid TCP port")),
        Some(other) => Err(format!("port {other} is not a valid TCP port")),
    }
}

fn str_of(section: &Map<String, Json>, key: &str) -> Option<String> {
    section.get(key).and_then(Json::as_str).map(str::to_owned)
}

fn body_limit(section: &Map<String, Json>) -> Result<usize, String> {
    match section.get("max_request_body_size") {
        None | Some(Json::Null) => Ok(DEFAULT_MAX_BODY),
        Some(Json::Number(n)) => n
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| format!("max_request_body_size {n} is not a byte count")),
        Some(other) => Err(format!("max_request_body_size {other} is not a byte count")),
    }
}

/// The surfaces configured in `config`, with command-line overrides.
pub fn surfaces(config: &MasterConfig, cli: &Cli) -> Result<Vec<Surface>, String> {
    let mut out = Vec::new();
    let empty = Map::new();
    let wsgi = config.section("rest_wsgi");
    let section = wsgi.unwrap_or(&empty);
    let port = match cli.port {
        Some(p) => Some(p),
        None => port_of(section).map_err(|e| format!("rest_wsgi: {e}"))?,
    };
    if let Some(port) = port {
        let host = cli
            .host
            .clone()
            .or_else(|| str_of(section, "host"))
            .unwrap_or_else(|| "localhost".into());
        let crt = cli
            .ssl_crt
            .clone()
            .or_else(|| str_of(section, "ssl_crt").map(PathBuf::from));
        let key = cli
            .ssl_key
            .clone()
            .or_else(|| str_of(section, "ssl_key").map(PathBuf::from));
        let tls = match (crt, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("rest_wsgi: ssl_crt and ssl_key must be given together".into()),
        };
        out.push(Surface {
            kind: SurfaceKind::Wsgi,
            host,
            port,
            tls,
            max_body: body_limit(section).map_err(|e| format!("rest_wsgi: {e}"))?,
        });
    } else if wsgi.is_some() {
        return Err("rest_wsgi: the section needs a port".into());
    }
    Ok(out)
}

/// `halite check-config`: print what would be served and any problems.
pub fn check_config(config: &MasterConfig, surfaces: &[Surface]) -> std::process::ExitCode {
    let mut problems = Vec::new();
    println!("master config: {}", config.path().display());
    println!(
        "request channel: {:?} at {}",
        config.transport(),
        config.master_uri()
    );
    println!(
        "event bus: {:?} (sock_dir {})",
        config.ipc_mode(),
        config.sock_dir().display()
    );
    println!(
        "enabled clients: {}",
        config.netapi_enable_clients().join(", ")
    );
    if config.netapi_enable_clients().is_empty() {
        problems.push("netapi_enable_clients is empty: every lowstate will be refused".to_owned());
    }
    for s in surfaces {
        let scheme = if s.tls.is_some() { "https" } else { "http" };
        println!(
            "serve {}: {scheme}://{}:{} (body limit {} bytes)",
            s.kind.section(),
            s.host,
            s.port,
            s.max_body
        );
        if let Some((crt, key)) = &s.tls {
            for p in [crt, key] {
                if !p.exists() {
                    problems.push(format!(
                        "{}: {} does not exist",
                        s.kind.section(),
                        p.display()
                    ));
                }
            }
        }
    }
    if surfaces.is_empty() {
        problems.push("no surface configured (rest_wsgi)".into());
    }
    if matches!(
        config.transport(),
        salt_client::config::RequestTransport::Ws
    ) {
        problems.push("transport: ws is not supported by halite (use zeromq or tcp)".into());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if problems.is_empty() {
        println!("ok");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
