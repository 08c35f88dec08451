//! Which surfaces to serve, from the master config sections and the flags.

use std::path::PathBuf;
use std::time::Duration;

use salt_client::config::MasterConfig;
use serde_json::{Map, Value as Json};

/// Default request body limit (rest_cherrypy's `max_request_body_size`).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Default time requests in flight get to finish on SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

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

/// Bounds on the connections of a surface, against clients that are slow
/// or hostile: every one is enforced by hyper, rustls or a tower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `header_read_timeout` (seconds, default 30): time to finish the TLS
    /// handshake, and for HTTP/1 to send a complete request head, on a new
    /// connection or between keep-alive requests; then the connection closes.
    pub header_read_timeout: Duration,
    /// `idle_timeout` (seconds, default 60): an HTTP/2 connection is pinged
    /// after this long without frames and closed when the ping goes
    /// unanswered for 20 s. (For HTTP/1 the header read timeout bounds the
    /// wait for the next request.)
    pub idle_timeout: Duration,
    /// `body_read_timeout` (seconds, default 30): the longest wait for the
    /// next piece of a request body; then 408.
    pub body_read_timeout: Duration,
    /// `max_connections` (default 1024): connections beyond it are closed
    /// as soon as they are accepted.
    pub max_connections: usize,
    /// `http2_max_concurrent_streams` (default 128): requests one HTTP/2
    /// connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// `http1_max_buf_size` (bytes, default 8192, the least hyper allows):
    /// the most an HTTP/1 connection buffers for reading, which also bounds
    /// a request's line and headers (a larger head is answered 431). hyper's
    /// own default (~400 KiB) lets every idle keep-alive connection grow its
    /// read buffer to 16 KiB while its request waits.
    pub http1_max_buf_size: usize,
}

/// The least `http1_max_buf_size` hyper accepts.
pub const HTTP1_MIN_BUF_SIZE: usize = 8192;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            http2_max_concurrent_streams: 128,
            http1_max_buf_size: HTTP1_MIN_BUF_SIZE,
        }
    }
}

/// The oldest TLS version a surface accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// TLS options beyond the certificate: `tls_min_version` (`"1.2"`, the
/// default, or `"1.3"`) and `tls_cipher_suites` (a list of rustls suite
/// names such as `TLS13_AES_256_GCM_SHA384`; default: rustls' own list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub min_version: TlsVersion,
    pub cipher_suites: Option<Vec<String>>,
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
    pub connections: ConnectionLimits,
    pub tls_options: TlsOptions,
    /// `graceful_shutdown_timeout` (seconds, default 30): on SIGTERM, how
    /// long requests in flight may take to finish; calls still waiting then
    /// answer 503 with their jid.
    pub grace: Duration,
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
            connections: ConnectionLimits::default(),
            tls_options: TlsOptions::default(),
            grace: DEFAULT_GRACE,
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
            connections: ConnectionLimits::default(),
            tls_options: TlsOptions::default(),
            grace: DEFAULT_GRACE,
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

/// A positive number of seconds (integer or decimal) under `key`.
fn seconds_of(
    section: &Map<String, Json>,
    key: &str,
    default: Duration,
) -> Result<Duration, String> {
    let bad = |v: &dyn std::fmt::Display| format!("{key} {v} is not a positive number of seconds");
    let secs = match section.get(key) {
        None | Some(Json::Null) => return Ok(default),
        Some(Json::Number(n)) => n.as_f64().ok_or_else(|| bad(n))?,
        Some(Json::String(t)) => t.trim().parse::<f64>().map_err(|_| bad(t))?,
        Some(other) => return Err(bad(other)),
    };
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(bad(&secs))
    }
}

/// A positive count under `key`, at most `max`.
fn count_of(section: &Map<String, Json>, key: &str, default: u64, max: u64) -> Result<u64, String> {
    let bad = |v: &dyn std::fmt::Display| format!("{key} {v} is not a count between 1 and {max}");
    let n = match section.get(key) {
        None | Some(Json::Null) => return Ok(default),
        Some(Json::Number(n)) => n.as_u64().ok_or_else(|| bad(n))?,
        Some(Json::String(t)) => t.trim().parse::<u64>().map_err(|_| bad(t))?,
        Some(other) => return Err(bad(other)),
    };
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(bad(&n))
    }
}

fn connection_limits(section: &Map<String, Json>) -> Result<ConnectionLimits, String> {
    let d = ConnectionLimits::default();
    Ok(ConnectionLimits {
        header_read_timeout: seconds_of(section, "header_read_timeout", d.header_read_timeout)?,
        idle_timeout: seconds_of(section, "idle_timeout", d.idle_timeout)?,
        body_read_timeout: seconds_of(section, "body_read_timeout", d.body_read_timeout)?,
        max_connections: count_of(
            section,
            "max_connections",
            d.max_connections as u64,
            1 << 20,
        )? as usize,
        http2_max_concurrent_streams: count_of(
            section,
            "http2_max_concurrent_streams",
            u64::from(d.http2_max_concurrent_streams),
            10_000,
        )? as u32,
        http1_max_buf_size: match count_of(
            section,
            "http1_max_buf_size",
            d.http1_max_buf_size as u64,
            16 << 20,
        )? as usize
        {
            n if n < HTTP1_MIN_BUF_SIZE => {
                return Err(format!(
                    "http1_max_buf_size {n} is below the least allowed ({HTTP1_MIN_BUF_SIZE})"
                ))
            }
            n => n,
        },
    })
}

fn tls_options(section: &Map<String, Json>) -> Result<TlsOptions, String> {
    let min_version = match section.get("tls_min_version") {
        None | Some(Json::Null) => TlsVersion::Tls12,
        Some(v) => match v
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
            .trim()
        {
            "1.2" | "TLSv1.2" => TlsVersion::Tls12,
            "1.3" | "TLSv1.3" => TlsVersion::Tls13,
            other => {
                return Err(format!(
                    "tls_min_version {other} is not supported (use \"1.2\" or \"1.3\")"
                ))
            }
        },
    };
    let cipher_suites = match section.get("tls_cipher_suites") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(
            s.split([',', ':', ' '])
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Some(Json::Array(items)) => Some(
            items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("tls_cipher_suites: {i} is not a name"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(format!("tls_cipher_suites {other} is not a list of names")),
    };
    Ok(TlsOptions {
        min_version,
        cipher_suites,
    })
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
            connections: connection_limits(section).map_err(|e| format!("rest_wsgi: {e}"))?,
            tls_options: tls_options(section).map_err(|e| format!("rest_wsgi: {e}"))?,
            grace: seconds_of(section, "graceful_shutdown_timeout", DEFAULT_GRACE)
                .map_err(|e| format!("rest_wsgi: {e}"))?,
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
            connections: connection_limits(section).map_err(|e| format!("rest_cherrypy: {e}"))?,
            tls_options: tls_options(section).map_err(|e| format!("rest_cherrypy: {e}"))?,
            grace: seconds_of(section, "graceful_shutdown_timeout", DEFAULT_GRACE)
                .map_err(|e| format!("rest_cherrypy: {e}"))?,
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
        let c = &s.connections;
        println!(
            "  limits: header_read_timeout {:?}, body_read_timeout {:?}, idle_timeout {:?}, \
             max_connections {}, http2_max_concurrent_streams {}, http1_max_buf_size {}, \
             graceful_shutdown_timeout {:?}",
            c.header_read_timeout,
            c.body_read_timeout,
            c.idle_timeout,
            c.max_connections,
            c.http2_max_concurrent_streams,
            c.http1_max_buf_size,
            s.grace
        );
        if s.tls.is_some() {
            println!(
                "  tls: minimum {}, cipher suites {}",
                match s.tls_options.min_version {
                    TlsVersion::Tls12 => "1.2",
                    TlsVersion::Tls13 => "1.3",
                },
                s.tls_options
                    .cipher_suites
                    .as_ref()
                    .map(|c| c.join(", "))
                    .unwrap_or_else(|| "rustls' defaults".into())
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> Map<String, Json> {
        match serde_norway::from_str::<Json>(yaml).expect("YAML") {
            Json::Object(m) => m,
            other => panic!("not a mapping: {other}"),
        }
    }

    #[test]
    fn connection_limits_default_and_parse() {
        assert_eq!(
            connection_limits(&Map::new()).unwrap(),
            ConnectionLimits::default()
        );
        let l = connection_limits(&section(
            "{header_read_timeout: 2.5, body_read_timeout: '7', idle_timeout: 90, \
             max_connections: 10, http2_max_concurrent_streams: 4, http1_max_buf_size: 65536}",
        ))
        .unwrap();
        assert_eq!(l.http1_max_buf_size, 65536);
        assert_eq!(l.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(l.body_read_timeout, Duration::from_secs(7));
        assert_eq!(l.idle_timeout, Duration::from_secs(90));
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.http2_max_concurrent_streams, 4);
    }

    #[test]
    fn bad_limits_are_config_errors() {
        for bad in [
            "{header_read_timeout: 0}",
            "{header_read_timeout: -1}",
            "{body_read_timeout: soon}",
            "{idle_timeout: [1]}",
            "{max_connections: 0}",
            "{http2_max_concurrent_streams: 100000}",
            "{http1_max_buf_size: 4096}",
        ] {
            assert!(connection_limits(&section(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tls_options_parse() {
        assert_eq!(tls_options(&Map::new()).unwrap(), TlsOptions::default());
        let t = tls_options(&section(
            "{tls_min_version: '1.3', tls_cipher_suites: 'TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256'}",
        ))
        .unwrap();
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(
            t.cipher_suites.unwrap(),
            ["TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA256"]
        );
        // YAML reads an unquoted 1.3 as a number; that means the same.
        assert_eq!(
            tls_options(&section("{tls_min_version: 1.3}"))
                .unwrap()
                .min_version,
            TlsVersion::Tls13
        );
        assert!(tls_options(&section("{tls_min_version: '1.1'}")).is_err());
        assert!(tls_options(&section("{tls_cipher_suites: 5}")).is_err());
    }
}
