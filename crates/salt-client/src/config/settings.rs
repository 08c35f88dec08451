//! Typed settings, checked once at load so that accessors never fail.

#[allow(unused_imports)]
use super::*;

/// The typed values behind the accessors. They are built once, so a bad value
/// is reported at startup with its key name, not on first use.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) interface: String,
    pub(super) ret_port: u16,
    pub(super) transport: RequestTransport,
    pub(super) ipc_mode: IpcMode,
    pub(super) sock_dir: PathBuf,
    pub(super) cachedir: PathBuf,
    pub(super) pki_dir: PathBuf,
    pub(super) token_dir: PathBuf,
    pub(super) root_dir: PathBuf,
    pub(super) tcp_master_pub_port: u16,
    pub(super) tcp_master_pull_port: u16,
    pub(super) ipv6: bool,
    pub(super) netapi_enable_clients: Vec<String>,
    pub(super) netapi_allow_raw_shell: bool,
    pub(super) external_auth: Map<String, Value>,
    pub(super) nodegroups: Map<String, Value>,
    pub(super) timeout: f64,
    pub(super) gather_job_timeout: f64,
    pub(super) publish_timeout: f64,
    pub(super) rest_timeout: f64,
    pub(super) token_expire: f64,
    pub(super) keep_acl_in_token: bool,
    pub(super) worker_threads: usize,
    pub(super) ext_job_cache: Option<String>,
    pub(super) user: String,
    pub(super) master_uri: String,
}

impl Settings {
    /// Check and type every key halite relies on. Salt's `client_config`
    /// rewrites (`interface`, `master_uri`) and the `worker_threads` floor are
    /// written back into `opts`, so `get()` agrees with the accessors.
    pub(super) fn from_opts(
        opts: &mut Map<String, Value>,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        let o: &Map<String, Value> = opts;
        let interface = client_interface(&text(o, "interface", "0.0.0.0")?);
        let ret_port = port(o, "ret_port", 4506)?;
        let transport = match text(o, "transport", "zeromq")?.as_str() {
            "zeromq" => RequestTransport::Zeromq,
            "tcp" => RequestTransport::Tcp,
            "ws" => RequestTransport::Ws,
            other => {
                return Err(invalid(
                    "transport",
                    format!("unknown transport '{other}'; a Salt master speaks zeromq, tcp or ws"),
                ))
            }
        };
        // Salt's event code tests `ipc_mode == "tcp"`, so anything else means ipc.
        let ipc_mode = match text(o, "ipc_mode", "ipc")?.as_str() {
            "tcp" => IpcMode::Tcp,
            "ipc" => IpcMode::Ipc,
            other => {
                warn(
                    warnings,
                    format!("ipc_mode '{other}' is not 'ipc' or 'tcp'; using ipc, as Salt does"),
                );
                IpcMode::Ipc
            }
        };
        let mut worker_threads = count(o, "worker_threads", 5)?;
        let raise_workers = worker_threads < 3 && o.get("peer").is_some_and(py_truthy);
        if raise_workers {
            worker_threads = 3;
        }
        let mut settings = Settings {
            interface,
            ret_port,
            transport,
            ipc_mode,
            sock_dir: PathBuf::from(text(o, "sock_dir", "/var/run/salt/master")?),
            cachedir: PathBuf::from(text(o, "cachedir", "/var/cache/salt/master")?),
            pki_dir: PathBuf::from(text(o, "pki_dir", "/etc/salt/pki/master")?),
            token_dir: PathBuf::from(text(o, "token_dir", "/var/cache/salt/master/tokens")?),
            root_dir: PathBuf::from(text(o, "root_dir", "/")?),
            tcp_master_pub_port: port(o, "tcp_master_pub_port", 4512)?,
            tcp_master_pull_port: port(o, "tcp_master_pull_port", 4513)?,
            ipv6: flag(o, "ipv6", false)?,
            netapi_enable_clients: string_list(o, "netapi_enable_clients")?,
            netapi_allow_raw_shell: flag(o, "netapi_allow_raw_shell", false)?,
            external_auth: mapping(o, "external_auth")?,
            nodegroups: mapping(o, "nodegroups")?,
            timeout: seconds(o, "timeout", 5.0)?,
            gather_job_timeout: seconds(o, "gather_job_timeout", 10.0)?,
            publish_timeout: seconds(o, "publish_timeout", 30.0)?,
            rest_timeout: seconds(o, "rest_timeout", 300.0)?,
            token_expire: seconds(o, "token_expire", 43200.0)?,
            keep_acl_in_token: flag(o, "keep_acl_in_token", false)?,
            worker_threads,
            ext_job_cache: optional_text(o, "ext_job_cache")?,
            user: text(o, "user", "root")?,
            master_uri: String::new(),
        };
        settings.master_uri = match o.get("master_uri") {
            Some(Value::String(uri)) if !uri.is_empty() => uri.clone(),
            _ => format!(
                "tcp://{}:{}",
                ip_bracket(&settings.interface),
                settings.ret_port
            ),
        };

        opts.insert(
            "interface".to_owned(),
            Value::String(settings.interface.clone()),
        );
        opts.insert(
            "master_uri".to_owned(),
            Value::String(settings.master_uri.clone()),
        );
        if raise_workers {
            opts.insert("worker_threads".to_owned(), Value::from(worker_threads));
        }
        Ok(settings)
    }
}

/// The value of `key`, treating YAML null (`key:` with nothing after it) as absent.
pub(super) fn present<'a>(opts: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    opts.get(key).filter(|v| !v.is_null())
}

pub(super) fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message,
    }
}

/// A string option. Numbers are accepted and written out as text, as Python's `str()` would.
pub(super) fn text(
    opts: &Map<String, Value>,
    key: &str,
    default: &str,
) -> Result<String, ConfigError> {
    match present(opts, key) {
        None => Ok(default.to_owned()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(invalid(key, format!("expected a string, got {other}"))),
    }
}

/// A string option where empty means "not set" (e.g. `ext_job_cache: ''`).
pub(super) fn optional_text(
    opts: &Map<String, Value>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    Ok(Some(text(opts, key, "")?).filter(|s| !s.is_empty()))
}

/// A TCP port: an integer in 1..=65535, possibly written as a string.
pub(super) fn port(opts: &Map<String, Value>, key: &str, default: u16) -> Result<u16, ConfigError> {
    let Some(value) = present(opts, key) else {
        return Ok(default);
    };
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match parsed.and_then(|p| u16::try_from(p).ok()) {
        Some(p) if p > 0 => Ok(p),
        _ => Err(invalid(
            key,
            format!("expected a port number between 1 and 65535, got {value}"),
        )),
    }
}

/// A positive whole count, possibly written as a string.
pub(super) fn count(
    opts: &Map<String, Value>,
    key: &str,
    default: usize,
) -> Result<usize, ConfigError> {
    let Some(value) = present(opts, key) else {
        return Ok(default);
    };
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match parsed.and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(invalid(
            key,
            format!("expected a whole number of at least 1, got {value}"),
        )),
    }
}

/// A duration in seconds: a finite, non-negative number, possibly written as a
/// string (`timeout: "5"`). Non-finite and negative values are refused here so
/// that no caller can turn them into a `Duration` and panic.
pub(super) fn seconds(
    opts: &Map<String, Value>,
    key: &str,
    default: f64,
) -> Result<f64, ConfigError> {
    let Some(value) = present(opts, key) else {
        return Ok(default);
    };
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match parsed {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(invalid(
            key,
            format!("expected a number of seconds, got {value}"),
        )),
    }
}

/// A boolean. Also accepts the YAML 1.1 words (in case a string reached us,
/// e.g. from an include written as `'yes'`) and the numbers 0 and 1.
pub(super) fn flag(
    opts: &Map<String, Value>,
    key: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(value) = present(opts, key) else {
        return Ok(default);
    };
    let parsed = match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => yaml11_bool(s.trim()),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| invalid(key, format!("expected true or false, got {value}")))
}

/// A list of strings. Salt would test membership in a plain string by substring,
/// which is not what anyone means, so a string is refused.
pub(super) fn string_list(
    opts: &Map<String, Value>,
    key: &str,
) -> Result<Vec<String>, ConfigError> {
    let Some(value) = present(opts, key) else {
        return Ok(Vec::new());
    };
    let refuse = || invalid(key, format!("expected a list of strings, got {value}"));
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(refuse))
            .collect(),
        _ => Err(refuse()),
    }
}

/// A mapping option; null is `{}`.
pub(super) fn mapping(
    opts: &Map<String, Value>,
    key: &str,
) -> Result<Map<String, Value>, ConfigError> {
    match present(opts, key) {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(other) => Err(invalid(key, format!("expected a mapping, got {other}"))),
    }
}
