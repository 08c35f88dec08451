//! Which surfaces to serve, from the master config sections and the flags.

use std::path::PathBuf;

use salt_client::config::MasterConfig;
use serde_json::{Map, Value as Json};

/// Default request body limit (rest_cherrypy's `max_request_body_size`).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// The HTTP surfaces halite knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurfaceKind {
    /// The seed: `rest_wsgi`.
    Wsgi,
    /// salt-api's full URL map: `rest_cherrypy`.
    Cherrypy,
}

impl SurfaceKind {
    pub fn section(self) -> &'static str {
        match self {
            SurfaceKind::Wsgi => "rest_wsgi",
            SurfaceKind::Cherrypy => "rest_cherrypy",
        }
    }
}

/// The rest_cherrypy options halite honours. Options that make no sense for
/// halite (`thread_pool`, `socket_queue_size`, `expire_responses`, `debug`
/// reloading, `collect_stats`, `log_access_file`, `log_error_file`) are
/// accepted and ignored. The default is what an empty `rest_cherrypy`
/// section means.
#[derive(Debug, Clone)]
pub struct CherrypyOptions {
    pub root_prefix: String,
    pub webhook_url: String,
    pub webhook_disable_auth: bool,
    pub stats_disable_auth: bool,
    pub enable_sessions: bool,
    pub static_dir: Option<PathBuf>,
    pub static_path: String,
    pub app: Option<PathBuf>,
    pub app_path: String,
    /// Origins allowed to make credentialed cross-origin requests
    /// (`cors_origins`; none by default, `*` for any).
    pub cors_origins: Vec<String>,
    /// Served over TLS: the session cookie gets `Secure`.
    pub tls: bool,
    /// Which events a token's holder sees on `/events` and `/ws`
    /// (`event_visibility`).
    pub event_visibility: EventVisibility,
}

/// Who sees which events on the event streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EventVisibility {
    /// Every event, to every valid token (salt-api's behaviour).
    All,
    /// Only what the token's eauth ACL covers (the default).
    #[default]
    Acl,
}

fn event_visibility(section: &Map<String, Json>) -> Result<EventVisibility, String> {
    match str_of(section, "event_visibility").as_deref() {
        None | Some("acl") => Ok(EventVisibility::Acl),
        Some("all") => Ok(EventVisibility::All),
        Some(other) => Err(format!(
            "event_visibility '{other}' is not one of 'acl', 'all'"
        )),
    }
}

fn list_of(section: &Map<String, Json>, key: &str) -> Vec<String> {
    match section.get(key) {
        Some(Json::String(s)) => s
            .split([',', ' '])
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(Json::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl Default for CherrypyOptions {
    fn default() -> Self {
        CherrypyOptions {
            root_prefix: String::new(),
            webhook_url: "/hook".into(),
            webhook_disable_auth: false,
            stats_disable_auth: false,
            enable_sessions: true,
            static_dir: None,
            static_path: "/static".into(),
            app: None,
            app_path: "/app".into(),
            cors_origins: Vec::new(),
            tls: false,
            event_visibility: EventVisibility::default(),
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
    /// Intermediate certificates appended to the served chain (`ssl_chain`).
    pub tls_chain: Option<PathBuf>,
    pub max_body: usize,
    /// Only for the rest_cherrypy surface.
    pub cherrypy: CherrypyOptions,
}

impl Surface {
    /// A plain-HTTP rest_wsgi surface on `localhost:8001` with default limits.
    pub fn wsgi() -> Surface {
        Surface {
            kind: SurfaceKind::Wsgi,
            host: "localhost".into(),
            port: 8001,
            tls: None,
            tls_chain: None,
            max_body: DEFAULT_MAX_BODY,
            cherrypy: CherrypyOptions::default(),
        }
    }

    /// A plain-HTTP rest_cherrypy surface on `0.0.0.0:8000` with `opts`.
    pub fn cherrypy(opts: CherrypyOptions) -> Surface {
        Surface {
            kind: SurfaceKind::Cherrypy,
            host: "0.0.0.0".into(),
            port: 8000,
            tls: None,
            tls_chain: None,
            max_body: DEFAULT_MAX_BODY,
            cherrypy: opts,
        }
    }
}

fn bool_of(section: &Map<String, Json>, key: &str, default: bool) -> bool {
    match section.get(key) {
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
        }
        Some(Json::Number(n)) => n.as_f64().is_some_and(|v| v != 0.0),
        _ => default,
    }
}

fn url_path(section: &Map<String, Json>, key: &str, default: &str) -> String {
    let raw = str_of(section, key).unwrap_or_else(|| default.to_owned());
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
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

/// Values that take precedence over the `rest_wsgi` section (the command
/// line's `--host`, `--port`, `--ssl-crt`, `--ssl-key`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub ssl_crt: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
}

/// The surfaces configured in `config`, with `overrides` applied.
pub fn surfaces(config: &MasterConfig, cli: &Overrides) -> Result<Vec<Surface>, String> {
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
            tls_chain: None,
            max_body: body_limit(section).map_err(|e| format!("rest_wsgi: {e}"))?,
            cherrypy: CherrypyOptions::default(),
        });
    } else if wsgi.is_some() {
        return Err("rest_wsgi: the section needs a port".into());
    }
    if let Some(section) = config.section("rest_cherrypy") {
        let port = port_of(section)
            .map_err(|e| format!("rest_cherrypy: {e}"))?
            .unwrap_or(8000);
        let host = str_of(section, "host").unwrap_or_else(|| "0.0.0.0".into());
        let disable_ssl = bool_of(section, "disable_ssl", false);
        let tls = match (str_of(section, "ssl_crt"), str_of(section, "ssl_key")) {
            (Some(c), Some(k)) if !disable_ssl => Some((PathBuf::from(c), PathBuf::from(k))),
            _ if disable_ssl => None,
            _ => {
                return Err("rest_cherrypy: options 'ssl_crt' and 'ssl_key' are required unless 'disable_ssl: True' \
                     (as salt-api requires)"
                    .into())
            }
        };
        out.push(Surface {
            kind: SurfaceKind::Cherrypy,
            host,
            port,
            tls: tls.clone(),
            tls_chain: str_of(section, "ssl_chain").map(PathBuf::from),
            max_body: body_limit(section).map_err(|e| format!("rest_cherrypy: {e}"))?,
            cherrypy: CherrypyOptions {
                root_prefix: url_path(section, "root_prefix", "/"),
                webhook_url: url_path(section, "webhook_url", "/hook"),
                webhook_disable_auth: bool_of(section, "webhook_disable_auth", false),
                stats_disable_auth: bool_of(section, "stats_disable_auth", false),
                enable_sessions: bool_of(section, "enable_sessions", true),
                static_dir: str_of(section, "static").map(PathBuf::from),
                static_path: url_path(section, "static_path", "/static"),
                app: str_of(section, "app").map(PathBuf::from),
                app_path: url_path(section, "app_path", "/app"),
                cors_origins: list_of(section, "cors_origins"),
                tls: tls.is_some(),
                event_visibility: event_visibility(section)
                    .map_err(|e| format!("rest_cherrypy: {e}"))?,
            },
        });
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
        problems.push("no surface configured (rest_wsgi or rest_cherrypy)".into());
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
