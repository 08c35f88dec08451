//! The Salt master configuration, resolved the way salt-api resolves it.
//!
//! halite talks to an unmodified master, so it has to find the same sockets, ports and
//! ACLs the running master uses. Getting one rule wrong means knocking on the wrong
//! door, e.g. a different `sock_dir`. This module therefore follows Salt's own loading
//! rules (`salt.config.api_config` → `client_config` → `master_config` in
//! `salt/config/__init__.py`) rather than inventing nicer ones. Every rule below was
//! checked against 3006.30, 3007.17 and 3008.4 (probe `p00`):
//!
//! 1. The main file (`--config`, else `$SALT_MASTER_CONFIG`, else
//!    `$SALT_CONFIG_DIR/master`, else `/etc/salt/master`) is read as YAML. An empty
//!    file counts as `{}`. A top level that is not a mapping is an error.
//! 2. `default_include` (default `master.d/*.conf`, relative to the main file's
//!    directory) is globbed and the matches are read in sorted order. The files are
//!    deep-merged with each other: maps recursively, lists concatenated.
//! 3. That merged result replaces the main file's keys **at the top level only**. A
//!    key set in any `master.d` file replaces the main file's value wholesale.
//! 4. `include:` (a string or a list of globs) is handled the same way afterwards, so
//!    it wins over both.
//! 5. Missing keys take Salt's defaults. After that come the derived paths: the
//!    `sock_dir` length guard, `token_dir`, and `root_dir` prefixing. Then
//!    `nodegroups` is normalised, `keep_acl_in_token` is forced when
//!    `external_auth` has `rest`, and finally the client view (`interface`,
//!    `master_uri`) is applied.
//!
//! Deliberate differences from Salt:
//!
//! * A per-user `~/.saltrc` (or `$XDG_CONFIG_HOME/salt/saltrc`) is **not** merged.
//!   Salt's `client_config` merges it because the `salt` CLI is run by a person.
//!   halite is a daemon, and letting the home directory of whoever started it change
//!   where it sends requests would surprise operators.
//! * Includes resolve relative to the file that was actually read. Salt resolves them
//!   relative to the *default* path even when `$SALT_MASTER_CONFIG` points somewhere
//!   else.
//! * A missing main file is an error ([`ConfigError::Io`]). Salt silently runs on
//!   defaults, but that is rarely what an operator meant.
//! * Typed keys are checked once, at load time ([`ConfigError::Invalid`]). The
//!   typed accessors can then never fail. A key given with no value (YAML null)
//!   counts as absent, so it takes the default.
//! * Salt parses YAML 1.1 (PyYAML) and the parser used here implements YAML 1.2.
//!   The one difference that shows up in real master configs is booleans written as
//!   `yes`/`no`/`on`/`off`. Those values are turned into booleans after parsing. The
//!   parser cannot tell a quoted `'yes'` from a plain one, so the quoted form also
//!   becomes `true`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use serde_norway::Value as YamlValue;

/// Where Salt looks for the master config when nothing else is given.
const DEFAULT_CONFIG_PATH: &str = "/etc/salt/master";
/// Salt's `default_include` for the master.
const DEFAULT_INCLUDE: &str = "master.d/*.conf";
/// Included files may include further files. Salt has no limit and would recurse
/// forever on a cycle; this bound turns a cycle into an error.
const MAX_INCLUDE_DEPTH: usize = 32;
/// Options that `apply_master_config` prefixes with `root_dir`.
const ROOT_PREFIXED_KEYS: &[&str] = &[
    "pki_dir",
    "cachedir",
    "pidfile",
    "sock_dir",
    "extension_modules",
    "autosign_file",
    "autoreject_file",
    "token_dir",
    "syndic_dir",
    "sqlite_queue_dir",
    "autosign_grains_dir",
];
/// Log destinations: these are prefixed too, unless they are URIs (such as
/// `udp://host:514` for syslog).
const ROOT_PREFIXED_LOG_KEYS: &[&str] = &["log_file", "key_logfile", "ssh_log_file"];

// ----------------------------------------------------------------------------------
// Public types
// ----------------------------------------------------------------------------------

/// Why the master config could not be loaded. Each variant names the file or the
/// key, so an operator can fix the problem without reading halite's code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The main file, or a file an include matched, could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error (not found, permission denied, not UTF-8, ...).
        #[source]
        source: std::io::Error,
    },
    /// The main file is not valid YAML, or its top level is not a mapping.
    #[error("error parsing configuration file {}: {message}", path.display())]
    Yaml {
        /// The file that failed to parse.
        path: PathBuf,
        /// The parser's complaint, with line and column where known.
        message: String,
    },
    /// A key that halite depends on has a value it cannot use.
    #[error("invalid value for config option '{key}': {message}")]
    Invalid {
        /// The top-level config key.
        key: String,
        /// What was wrong and what was expected.
        message: String,
    },
}

/// How the master's request server (`ret_port`) frames messages. The choice decides
/// which request-channel implementation halite has to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTransport {
    /// `transport: zeromq`, the default: ZeroMQ REQ/ROUTER.
    Zeromq,
    /// `transport: tcp`: Salt's length-prefixed msgpack over plain TCP.
    Tcp,
    /// `transport: ws`: websockets. Salt 3007 and later only.
    Ws,
}

/// How the master exposes its event bus: as unix sockets in `sock_dir`, or as
/// loopback TCP ports (`tcp_master_pub_port` / `tcp_master_pull_port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcMode {
    /// `ipc_mode: ipc`, the default on unix: `master_event_pub.ipc` / `master_event_pull.ipc`.
    Ipc,
    /// `ipc_mode: tcp`: loopback TCP. `::1` is used when `ipv6` is true.
    Tcp,
}

/// The master configuration as salt-api would see it: main file plus includes plus
/// defaults, with Salt's derived paths and the client view applied.
///
/// Two views are offered. [`get`](Self::get) and [`section`](Self::section) return
/// the merged values exactly as Salt's opts dict would hold them, for keys halite does
/// not model, like the `rest_cherrypy` section. The typed accessors return values
/// that were checked when the config was loaded.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    merged: Map<String, Value>,
    path: PathBuf,
    settings: Settings,
    warnings: Vec<String>,
}

impl MasterConfig {
    /// Load the master config the way `salt-api` does.
    ///
    /// `path` is an explicit `--config`. It always wins. With `None`, Salt's rule
    /// applies: `$SALT_MASTER_CONFIG` is used if it names an existing file, else
    /// `$SALT_CONFIG_DIR/master` if that file exists, else `/etc/salt/master`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = resolve_config_path(
            path,
            std::env::var_os("SALT_MASTER_CONFIG"),
            std::env::var_os("SALT_CONFIG_DIR"),
        );
        Self::from_file(&path)
    }

    /// Load one specific main file, with its includes. No environment lookup is done.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let main = read_conf_file(path)?;
        assemble(path.to_path_buf(), main)
    }

    /// Parse `yaml` as if it were the main file `<base_dir>/master`. Tests and
    /// `check-config` style tooling can use this without writing the main file to
    /// disk. Includes are still read from `base_dir`.
    pub fn from_yaml_str(yaml: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let path = base_dir.join("master");
        let main = parse_document(yaml, &path)?;
        assemble(path, main)
    }

    /// The main file this config was read from (for `from_yaml_str`, the notional
    /// `<base_dir>/master`). Useful in logs and error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The merged value of any key, with defaults and Salt's own rewrites applied,
    /// as `__opts__[key]` would hold it in salt-api. Use this for keys halite has
    /// no typed accessor for.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.merged.get(key)
    }

    /// A mapping-valued key, for example the `rest_cherrypy` or `rest_wsgi`
    /// section, or `None` if it is absent or not a mapping.
    pub fn section(&self, key: &str) -> Option<&Map<String, Value>> {
        self.merged.get(key).and_then(Value::as_object)
    }

    /// Problems Salt only logs and carries on after: an `include:` glob that matches
    /// nothing, an included file that is not valid YAML (Salt skips it), an
    /// `ipc_mode` Salt does not recognise. A `check-config` command can show these.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The host to reach the master's request server on. As in Salt's
    /// `client_config`, the wildcard bind addresses become loopback: `0.0.0.0` →
    /// `127.0.0.1` and `::` → `::1`.
    pub fn interface(&self) -> String {
        self.settings.interface.clone()
    }

    /// The request server (ReqServer) port, where clear `publish`/`runner`/`wheel`/
    /// `mk_token` requests go. Default 4506.
    pub fn ret_port(&self) -> u16 {
        self.settings.ret_port
    }

    /// Which framing the request server speaks.
    pub fn transport(&self) -> RequestTransport {
        self.settings.transport
    }

    /// Whether the event bus is reached over unix sockets or loopback TCP.
    pub fn ipc_mode(&self) -> IpcMode {
        self.settings.ipc_mode
    }

    /// Where the master's event-bus sockets and liveness files live. Includes the
    /// `root_dir` prefix, and is `<cachedir>/.salt-unix` when the configured path
    /// is too long for a unix socket (Salt's length guard).
    pub fn sock_dir(&self) -> PathBuf {
        self.settings.sock_dir.clone()
    }

    /// The master's cache (job cache, `.root_key`/`.<user>_key`), with `root_dir` applied.
    pub fn cachedir(&self) -> PathBuf {
        self.settings.cachedir.clone()
    }

    /// The master's PKI directory. `minions/` under it lists accepted minions,
    /// which LocalClient needs to know whom to wait for.
    pub fn pki_dir(&self) -> PathBuf {
        self.settings.pki_dir.clone()
    }

    /// Where eauth tokens are stored: always `<cachedir>/tokens`, whatever the config says.
    pub fn token_dir(&self) -> PathBuf {
        self.settings.token_dir.clone()
    }

    /// The `root_dir` every master path is placed under (default `/`), as configured.
    pub fn root_dir(&self) -> PathBuf {
        self.settings.root_dir.clone()
    }

    /// Event-bus subscribe port when `ipc_mode: tcp`. Default 4512.
    pub fn tcp_master_pub_port(&self) -> u16 {
        self.settings.tcp_master_pub_port
    }

    /// Event-bus fire (pull) port when `ipc_mode: tcp`. Default 4513.
    pub fn tcp_master_pull_port(&self) -> u16 {
        self.settings.tcp_master_pull_port
    }

    /// Whether loopback for `ipc_mode: tcp` is `::1` rather than `127.0.0.1`.
    /// Salt's default is null, which means false.
    pub fn ipv6(&self) -> bool {
        self.settings.ipv6
    }

    /// The NetapiClient clients the operator allowed (`local`, `runner`, ...).
    /// salt-api refuses any other client before contacting the master.
    pub fn netapi_enable_clients(&self) -> Vec<String> {
        self.settings.netapi_enable_clients.clone()
    }

    /// Whether the `ssh` client may run `raw_shell` commands.
    pub fn netapi_allow_raw_shell(&self) -> bool {
        self.settings.netapi_allow_raw_shell
    }

    /// The eauth ACLs. The master enforces them; salt-api also reads them to build
    /// the `perms` list that `/login` returns.
    pub fn external_auth(&self) -> Map<String, Value> {
        self.settings.external_auth.clone()
    }

    /// Nodegroup definitions, for client-side target expansion (minions never
    /// expand `N@`). Salt's normalisation is applied: a bare `nodegroups:` is `{}`,
    /// and a list of one-key mappings becomes one mapping.
    pub fn nodegroups(&self) -> Map<String, Value> {
        self.settings.nodegroups.clone()
    }

    /// How long LocalClient waits before asking silent minions whether they are
    /// still working (seconds, default 5).
    pub fn timeout(&self) -> f64 {
        self.settings.timeout
    }

    /// How long to wait for `saltutil.find_job` answers (seconds, default 10).
    pub fn gather_job_timeout(&self) -> f64 {
        self.settings.gather_job_timeout
    }

    /// Request timeout for `publish` when the caller gives none (seconds, default 30).
    pub fn publish_timeout(&self) -> f64 {
        self.settings.publish_timeout
    }

    /// How long a synchronous runner call may take (seconds). This is a salt-api
    /// option (`DEFAULT_API_OPTS`), default 300.
    pub fn rest_timeout(&self) -> f64 {
        self.settings.rest_timeout
    }

    /// Token lifetime in seconds (default 43200, 12 h).
    pub fn token_expire(&self) -> f64 {
        self.settings.token_expire
    }

    /// Whether the ACL is stored in the token. Forced true when `external_auth`
    /// has a `rest` backend, because that backend cannot re-fetch the ACL later.
    pub fn keep_acl_in_token(&self) -> bool {
        self.settings.keep_acl_in_token
    }

    /// Number of master MWorkers, which is the most clear requests the master
    /// serves at once. Salt raises it to 3 when `peer` is configured.
    pub fn worker_threads(&self) -> usize {
        self.settings.worker_threads
    }

    /// An extra returner that LocalClient appends to every job's `ret`, if any.
    pub fn ext_job_cache(&self) -> Option<String> {
        self.settings.ext_job_cache.clone()
    }

    /// The user the master runs as, which names the key file `<cachedir>/.<user>_key`.
    /// The default is `root`. That is what the master resolves to when it runs as root
    /// with no `user:` set, and it holds no matter which user halite runs as.
    pub fn user(&self) -> String {
        self.settings.user.clone()
    }

    /// The ZeroMQ-style URI of the request server, `tcp://<interface>:<ret_port>`,
    /// with IPv6 addresses in brackets. An explicit `master_uri` in the config
    /// wins, as in Salt's `client_config`.
    pub fn master_uri(&self) -> String {
        self.settings.master_uri.clone()
    }
}

// ----------------------------------------------------------------------------------
// Loading: finding the file, reading YAML, includes
// ----------------------------------------------------------------------------------

/// Salt's `load_config` path choice. The environment is passed in so that it can be tested.
fn resolve_config_path(
    explicit: Option<&Path>,
    master_config_env: Option<OsString>,
    config_dir_env: Option<OsString>,
) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let from_env = match master_config_env.filter(|v| !v.is_empty()) {
        Some(file) => Some(PathBuf::from(file)),
        None => config_dir_env
            .filter(|v| !v.is_empty())
            .map(|dir| PathBuf::from(dir).join("master")),
    };
    match from_env {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Read one config file into a mapping (Salt's `_read_conf_file`).
fn read_conf_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_document(&text, path)
}

/// Parse one YAML document as a config mapping. As in Salt's `safe_load(...) or {}`,
/// an empty document (or any other "falsy" top level) counts as `{}`. Any other
/// non-mapping is an error.
fn parse_document(text: &str, path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let yaml_error = |message: String| ConfigError::Yaml {
        path: path.to_path_buf(),
        message,
    };
    let mut doc: YamlValue = serde_norway::from_str(text).map_err(|e| yaml_error(e.to_string()))?;
    doc.apply_merge().map_err(|e| yaml_error(e.to_string()))?;
    match yaml_to_json(doc).map_err(yaml_error)? {
        Value::Object(map) => Ok(map),
        top if !py_truthy(&top) => Ok(Map::new()),
        top => Err(yaml_error(format!(
            "conf should be a document (a mapping), not {}",
            json_kind(&top)
        ))),
    }
}

/// Convert parsed YAML into JSON. Map keys become strings (`1` → `"1"`, `true` →
/// `"true"`, null → `"null"`, as Python's `json.dumps` writes them). The YAML 1.1
/// boolean words become booleans. Floats JSON cannot hold (`.inf`, `.nan`) are
/// kept as strings.
fn yaml_to_json(value: YamlValue) -> Result<Value, String> {
    Ok(match value {
        YamlValue::Null => Value::Null,
        YamlValue::Bool(b) => Value::Bool(b),
        YamlValue::Number(n) => yaml_number(&n),
        YamlValue::String(s) => match yaml11_bool(&s) {
            Some(b) => Value::Bool(b),
            None => Value::String(s),
        },
        YamlValue::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        YamlValue::Mapping(mapping) => {
            let mut out = Map::new();
            for (key, value) in mapping {
                out.insert(yaml_key(key)?, yaml_to_json(value)?);
            }
            Value::Object(out)
        }
        YamlValue::Tagged(tagged) => {
            return Err(format!(
                "could not determine a constructor for the tag '{}'",
                tagged.tag
            ))
        }
    })
}

fn yaml_number(n: &serde_norway::Number) -> Value {
    if let Some(u) = n.as_u64() {
        Value::from(u)
    } else if let Some(i) = n.as_i64() {
        Value::from(i)
    } else {
        n.as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(n.to_string()), Value::Number)
    }
}

fn yaml_key(key: YamlValue) -> Result<String, String> {
    match key {
        YamlValue::String(s) => Ok(s),
        YamlValue::Number(n) => Ok(n.to_string()),
        YamlValue::Bool(b) => Ok(b.to_string()),
        YamlValue::Null => Ok("null".to_owned()),
        YamlValue::Sequence(_) | YamlValue::Mapping(_) | YamlValue::Tagged(_) => {
            Err("found unacceptable key (a sequence or mapping cannot be a key)".to_owned())
        }
    }
}

/// The words PyYAML's YAML 1.1 resolver reads as booleans but YAML 1.2 does not
/// (plus the ones both agree on).
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Read the include value of `key` (`default_include` or `include`) as a list of
/// patterns: a string or a list of strings. Empty values mean "nothing".
fn include_patterns(value: &Value, key: &str, file: &Path) -> Result<Vec<String>, ConfigError> {
    let invalid = || ConfigError::Invalid {
        key: key.to_owned(),
        message: format!(
            "in {}: expected a glob or a list of globs, got {value}",
            file.display()
        ),
    };
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

/// Salt's `include_config`. Each pattern is taken relative to the directory of
/// `relative_to` and globbed, and the matches are read in sorted order and
/// deep-merged with each other. An include inside an included file is resolved
/// relative to that file.
///
/// As in Salt (`exit_on_config_errors=False`), an included file that is not a valid
/// YAML mapping is skipped with a warning, and a glob that matches nothing is only
/// worth a warning for `include:` (`warn_unmatched`). A file that cannot be read at
/// all is an error. Salt crashes on it too.
fn include_config(
    value: &Value,
    key: &str,
    relative_to: &Path,
    warn_unmatched: bool,
    depth: usize,
    warnings: &mut Vec<String>,
) -> Result<Map<String, Value>, ConfigError> {
    let mut configuration = Map::new();
    let patterns = include_patterns(value, key, relative_to)?;
    if patterns.is_empty() {
        return Ok(configuration);
    }
    if depth > MAX_INCLUDE_DEPTH {
        return Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: format!(
                "includes nested more than {MAX_INCLUDE_DEPTH} deep at {}; is there an include cycle?",
                relative_to.display()
            ),
        });
    }
    for pattern in patterns {
        let full = include_glob(&pattern, relative_to);
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let entries = glob::glob_with(&full, options).map_err(|e| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("bad glob '{full}': {e}"),
        })?;
        let mut matches = Vec::new();
        for entry in entries {
            match entry {
                Ok(path) => matches.push(path),
                // Python's glob silently skips directories it cannot list.
                Err(e) => warn(warnings, format!("while globbing '{full}': {e}")),
            }
        }
        if matches.is_empty() && warn_unmatched {
            warn(
                warnings,
                format!("\"{key}\" path/glob '{full}' matches no files"),
            );
        }
        matches.sort_by_cached_key(|p| p.to_string_lossy().into_owned());
        for file in matches {
            let mut opts = match read_conf_file(&file) {
                Ok(opts) => opts,
                Err(err @ ConfigError::Yaml { .. }) => {
                    warn(warnings, format!("{err}; skipping this file, as Salt does"));
                    Map::new()
                }
                Err(err) => return Err(err),
            };
            if let Some(nested) = opts.get("include").cloned() {
                let nested = include_config(
                    &nested,
                    "include",
                    &file,
                    warn_unmatched,
                    depth + 1,
                    warnings,
                )?;
                top_level_update(&mut opts, nested);
            }
            deep_merge(&mut configuration, opts);
        }
    }
    Ok(configuration)
}

/// Turn an include pattern into an absolute (or cwd-relative) glob: `~` is
/// expanded and the directory of `relative_to` is prepended. That directory is
/// escaped so a `[` in it is not read as glob syntax.
fn include_glob(pattern: &str, relative_to: &Path) -> String {
    let pattern = expand_user(pattern);
    if pattern.starts_with('/') {
        return pattern;
    }
    let dir = relative_to.parent().unwrap_or_else(|| Path::new(""));
    py_join(&glob::Pattern::escape(&dir.to_string_lossy()), &pattern)
}

/// `os.path.expanduser` for the forms that matter: `~` and `~/...`.
fn expand_user(pattern: &str) -> String {
    let home = std::env::var("HOME").ok().filter(|h| !h.is_empty());
    match (pattern.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", home.trim_end_matches('/'))
        }
        _ => pattern.to_owned(),
    }
}

// ----------------------------------------------------------------------------------
// Merging
// ----------------------------------------------------------------------------------

/// `dict.update`: keys in `upd` replace keys in `dest` wholesale.
fn top_level_update(dest: &mut Map<String, Value>, upd: Map<String, Value>) {
    for (key, value) in upd {
        dest.insert(key, value);
    }
}

/// `salt.utils.dictupdate.update(dest, upd, recursive_update=True, merge_lists=True)`.
/// Mappings merge recursively. Lists are concatenated, leaving out items of `upd`
/// already present in `dest`. Anything else is replaced.
fn deep_merge(dest: &mut Map<String, Value>, upd: Map<String, Value>) {
    for (key, value) in upd {
        let replacement = match (dest.get_mut(&key), value) {
            (Some(Value::Object(d)), Value::Object(u)) => {
                deep_merge(d, u);
                None
            }
            (Some(Value::Array(d)), Value::Array(u)) => {
                let fresh: Vec<Value> = u.into_iter().filter(|item| !d.contains(item)).collect();
                d.extend(fresh);
                None
            }
            (_, value) => Some(value),
        };
        if let Some(value) = replacement {
            dest.insert(key, value);
        }
    }
}

// ----------------------------------------------------------------------------------
// Salt's post-processing (master_config / apply_master_config / client_config)
// ----------------------------------------------------------------------------------

/// The defaults for the keys a client needs. The values are those printed by
/// probe p00, which are the same in 3006.30, 3007.17 and 3008.4, plus salt-api's
/// `rest_timeout`. `worker_pools_enabled` is left out on purpose: its default
/// depends on the master's version (true in 3008, absent before).
fn master_defaults() -> Map<String, Value> {
    let defaults = serde_json::json!({
        "interface": "0.0.0.0",
        "ret_port": 4506,
        "publish_port": 4505,
        "sock_dir": "/var/run/salt/master",
        "transport": "zeromq",
        "ipc_mode": "ipc",
        "tcp_master_pub_port": 4512,
        "tcp_master_pull_port": 4513,
        "tcp_master_publish_pull": 4514,
        "tcp_master_workers": 4515,
        "netapi_enable_clients": [],
        "netapi_allow_raw_shell": false,
        "external_auth": {},
        "nodegroups": {},
        "timeout": 5,
        "gather_job_timeout": 10,
        "keep_acl_in_token": false,
        "token_expire": 43200,
        "token_expire_user_override": false,
        "cachedir": "/var/cache/salt/master",
        "root_dir": "/",
        "pki_dir": "/etc/salt/pki/master",
        "default_include": DEFAULT_INCLUDE,
        "publish_timeout": 30,
        "worker_threads": 5,
        "minimum_auth_version": 3,
        "master_job_cache": "local_cache",
        "ext_job_cache": "",
        "order_masters": false,
        "syndic_wait": 5,
        "minion_data_cache": true,
        "user": "root",
        "eauth_tokens": "localfs",
        "publisher_acl": {},
        "publisher_acl_blacklist": {},
        "peer": {},
        "ipv6": null,
        "range_server": "range:80",
        "enable_ssh_minions": false,
        "cli_summary": false,
        // salt-api's own default (DEFAULT_API_OPTS), not a master option.
        "rest_timeout": 300,
    });
    match defaults {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Run Salt's pipeline on the main file's mapping and build the config.
fn assemble(path: PathBuf, mut overrides: Map<String, Value>) -> Result<MasterConfig, ConfigError> {
    let mut warnings = Vec::new();

    // master_config: conf_file, then default_include, then include, each a top-level update.
    overrides.insert(
        "conf_file".to_owned(),
        Value::String(path.to_string_lossy().into_owned()),
    );
    let default_include = overrides
        .get("default_include")
        .cloned()
        .unwrap_or_else(|| Value::String(DEFAULT_INCLUDE.to_owned()));
    let include = overrides.get("include").cloned().unwrap_or(Value::Null);
    let from_default_include = include_config(
        &default_include,
        "default_include",
        &path,
        false,
        0,
        &mut warnings,
    )?;
    top_level_update(&mut overrides, from_default_include);
    let from_include = include_config(&include, "include", &path, true, 0, &mut warnings)?;
    top_level_update(&mut overrides, from_include);

    // apply_master_config: defaults first, the files on top.
    let mut opts = master_defaults();
    top_level_update(&mut opts, overrides);
    force_keep_acl_for_rest(&mut opts, &mut warnings);
    derive_paths(&mut opts)?;
    normalise_nodegroups(&mut opts)?;

    // Typed view, then client_config's rewrites, which need the typed ret_port.
    let settings = Settings::from_opts(&mut opts, &mut warnings)?;
    Ok(MasterConfig {
        merged: opts,
        path,
        settings,
        warnings,
    })
}

/// The `rest` eauth backend cannot re-fetch an ACL later, so Salt forces
/// `keep_acl_in_token` on when that backend is configured.
fn force_keep_acl_for_rest(opts: &mut Map<String, Value>, warnings: &mut Vec<String>) {
    let has_rest = opts
        .get("external_auth")
        .and_then(Value::as_object)
        .is_some_and(|eauth| eauth.contains_key("rest"));
    if has_rest {
        if opts.get("keep_acl_in_token") == Some(&Value::Bool(false)) {
            warn(
                warnings,
                "the 'rest' external_auth backend requires 'keep_acl_in_token' to be True; \
                 setting it to True, as Salt does"
                    .to_owned(),
            );
        }
        opts.insert("keep_acl_in_token".to_owned(), Value::Bool(true));
    }
}

/// `apply_master_config`'s path rules, in Salt's order:
/// 1. if `len(sock_dir) > len(cachedir) + 10`, then `sock_dir = <cachedir>/.salt-unix`;
/// 2. `token_dir = <cachedir>/tokens` and `syndic_dir = <cachedir>/syndics`,
///    whatever the file said;
/// 3. `root_dir` is prefixed to every path option (`prepend_root_dir`).
///
/// Steps 1 and 2 use the paths before step 3, as Salt does.
fn derive_paths(opts: &mut Map<String, Value>) -> Result<(), ConfigError> {
    let defaults = master_defaults();
    for key in ["root_dir", "cachedir", "sock_dir", "pki_dir"] {
        let value = match opts.get(key) {
            None | Some(Value::Null) => defaults.get(key).cloned().unwrap_or(Value::Null),
            Some(Value::String(s)) if !s.is_empty() => Value::String(s.clone()),
            Some(other) => return Err(invalid(key, format!("expected a path, got {other}"))),
        };
        opts.insert(key.to_owned(), value);
    }
    let text = |opts: &Map<String, Value>, key: &str| {
        opts.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let cachedir = text(opts, "cachedir");
    let sock_dir = text(opts, "sock_dir");
    if sock_dir.chars().count() > cachedir.chars().count() + 10 {
        opts.insert(
            "sock_dir".to_owned(),
            Value::String(py_join(&cachedir, ".salt-unix")),
        );
    }
    opts.insert(
        "token_dir".to_owned(),
        Value::String(py_join(&cachedir, "tokens")),
    );
    opts.insert(
        "syndic_dir".to_owned(),
        Value::String(py_join(&cachedir, "syndics")),
    );

    let root_dir = py_abspath(&text(opts, "root_dir"))?;
    let log_keys = ROOT_PREFIXED_LOG_KEYS.iter().filter(|key| {
        opts.get(**key)
            .and_then(Value::as_str)
            .is_some_and(|v| !has_uri_scheme(v))
    });
    let keys: Vec<&str> = ROOT_PREFIXED_KEYS.iter().chain(log_keys).copied().collect();
    for key in keys {
        if let Some(Value::String(path)) = opts.get(key) {
            let prefixed = prepend_root_dir(&root_dir, path);
            opts.insert(key.to_owned(), Value::String(prefixed));
        }
    }
    Ok(())
}

/// Salt's nodegroups fix-ups in `master_config`: a bare `nodegroups:` (null) is
/// `{}`, and a list of one-key mappings is repacked into one mapping. Later
/// entries win.
fn normalise_nodegroups(opts: &mut Map<String, Value>) -> Result<(), ConfigError> {
    let normalised = match opts.get("nodegroups") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(Value::Array(items)) => {
            let mut map = Map::new();
            for item in items {
                match item.as_object() {
                    Some(one) if one.len() == 1 => {
                        map.extend(one.iter().map(|(k, v)| (k.clone(), v.clone())))
                    }
                    _ => {
                        return Err(invalid(
                            "nodegroups",
                            format!("a list of nodegroups must hold one-key mappings, got {item}"),
                        ))
                    }
                }
            }
            map
        }
        Some(other) => {
            return Err(invalid(
                "nodegroups",
                format!("expected a mapping of nodegroup names to targets, got {other}"),
            ))
        }
    };
    opts.insert("nodegroups".to_owned(), Value::Object(normalised));
    Ok(())
}

/// `client_config`'s view of the bind address: reach a wildcard bind via loopback.
fn client_interface(interface: &str) -> String {
    match interface {
        "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" => "::1".to_owned(),
        other => other.to_owned(),
    }
}

/// `salt.utils.network.ip_bracket`: IPv6 literals get brackets so they fit in a URI.
/// Salt rejects host names here. halite lets them through unchanged.
fn ip_bracket(addr: &str) -> String {
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        // e.g. a scoped address `fe80::1%eth0`, which Rust does not parse.
        Err(_) if bare.contains(':') => format!("[{bare}]"),
        Err(_) => bare.to_owned(),
    }
}

// ----------------------------------------------------------------------------------
// Typed settings, checked once at load
// ----------------------------------------------------------------------------------

/// The typed values behind the accessors. They are built once, so a bad value
/// is reported at startup with its key name, not on first use.
#[derive(Debug, Clone)]
struct Settings {
    interface: String,
    ret_port: u16,
    transport: RequestTransport,
    ipc_mode: IpcMode,
    sock_dir: PathBuf,
    cachedir: PathBuf,
    pki_dir: PathBuf,
    token_dir: PathBuf,
    root_dir: PathBuf,
    tcp_master_pub_port: u16,
    tcp_master_pull_port: u16,
    ipv6: bool,
    netapi_enable_clients: Vec<String>,
    netapi_allow_raw_shell: bool,
    external_auth: Map<String, Value>,
    nodegroups: Map<String, Value>,
    timeout: f64,
    gather_job_timeout: f64,
    publish_timeout: f64,
    rest_timeout: f64,
    token_expire: f64,
    keep_acl_in_token: bool,
    worker_threads: usize,
    ext_job_cache: Option<String>,
    user: String,
    master_uri: String,
}

impl Settings {
    /// Check and type every key halite relies on. Salt's `client_config`
    /// rewrites (`interface`, `master_uri`) and the `worker_threads` floor are
    /// written back into `opts`, so `get()` agrees with the accessors.
    fn from_opts(
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
fn present<'a>(opts: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    opts.get(key).filter(|v| !v.is_null())
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message,
    }
}

/// A string option. Numbers are accepted and written out as text, as Python's `str()` would.
fn text(opts: &Map<String, Value>, key: &str, default: &str) -> Result<String, ConfigError> {
    match present(opts, key) {
        None => Ok(default.to_owned()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(invalid(key, format!("expected a string, got {other}"))),
    }
}

/// A string option where empty means "not set" (e.g. `ext_job_cache: ''`).
fn optional_text(opts: &Map<String, Value>, key: &str) -> Result<Option<String>, ConfigError> {
    Ok(Some(text(opts, key, "")?).filter(|s| !s.is_empty()))
}

/// A TCP port: an integer in 1..=65535, possibly written as a string.
fn port(opts: &Map<String, Value>, key: &str, default: u16) -> Result<u16, ConfigError> {
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
fn count(opts: &Map<String, Value>, key: &str, default: usize) -> Result<usize, ConfigError> {
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
fn seconds(opts: &Map<String, Value>, key: &str, default: f64) -> Result<f64, ConfigError> {
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
fn flag(opts: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ConfigError> {
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
fn string_list(opts: &Map<String, Value>, key: &str) -> Result<Vec<String>, ConfigError> {
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
fn mapping(opts: &Map<String, Value>, key: &str) -> Result<Map<String, Value>, ConfigError> {
    match present(opts, key) {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(other) => Err(invalid(key, format!("expected a mapping, got {other}"))),
    }
}

// ----------------------------------------------------------------------------------
// Small helpers with Python's semantics
// ----------------------------------------------------------------------------------

/// Log a problem that Salt would only log, and keep it for `warnings()`.
fn warn(warnings: &mut Vec<String>, message: String) {
    tracing::warn!("master config: {message}");
    warnings.push(message);
}

/// Python truthiness: null, false, 0, "" and empty containers are false.
fn py_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Whether `path` looks like a URI (`urllib.parse.urlparse(path).scheme != ""`).
/// Such log targets are not prefixed with `root_dir`.
fn has_uri_scheme(path: &str) -> bool {
    path.split_once(':').is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `posixpath.join(a, b)` for two parts.
fn py_join(a: &str, b: &str) -> String {
    if b.starts_with('/') || a.is_empty() {
        b.to_owned()
    } else if a.ends_with('/') {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

/// `posixpath.normpath`: drop `.` and empty components, resolve `..` lexically.
/// Exactly two leading slashes are kept, as POSIX allows.
fn py_normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let leading = if path.starts_with("//") && !path.starts_with("///") {
        "//"
    } else if path.starts_with('/') {
        "/"
    } else {
        ""
    };
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." if leading.is_empty() && (parts.is_empty() || parts.last() == Some(&"..")) => {
                parts.push(comp)
            }
            ".." => {
                parts.pop();
            }
            _ => parts.push(comp),
        }
    }
    let joined = format!("{leading}{}", parts.join("/"));
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// `os.path.abspath`: relative paths are taken from the current directory.
fn py_abspath(path: &str) -> Result<String, ConfigError> {
    if path.starts_with('/') {
        return Ok(py_normpath(path));
    }
    let cwd = std::env::current_dir().map_err(|e| {
        invalid(
            "root_dir",
            format!("'{path}' is relative and the current directory is unknown: {e}"),
        )
    })?;
    Ok(py_normpath(&py_join(&cwd.to_string_lossy(), path)))
}

/// `salt.utils.path.join(root, path)`: normalise both, strip the second's
/// leading slashes, join, and normalise again.
fn salt_path_join(root: &str, path: &str) -> String {
    let root = py_normpath(root);
    let rest = py_normpath(path);
    py_normpath(&py_join(&root, rest.trim_start_matches('/')))
}

/// Salt's `prepend_root_dir` for one path on a POSIX system (where the built-in
/// default root is `/`). A path already under `root_dir` keeps its place. Any
/// other path, absolute or relative, is placed under `root_dir`. `root_dir` must
/// already be absolute and normalised.
///
/// One quirk is kept on purpose, so that halite computes the same path as the
/// master: a path *equal* to `root_dir` comes out as `root_dir/root_dir`.
fn prepend_root_dir(root_dir: &str, path: &str) -> String {
    let under_root = path
        .strip_prefix(root_dir)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .filter(|_| !root_dir.is_empty() && root_dir != "/");
    let relative = match under_root {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    };
    salt_path_join(root_dir, relative)
}

// ----------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    /// Write `files` (relative path → contents) under a fresh temp dir.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, body) in files {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, body).expect("write");
        }
        dir
    }

    fn load(dir: &tempfile::TempDir) -> MasterConfig {
        MasterConfig::from_file(&dir.path().join("master")).expect("config loads")
    }

    /// p00 scenario 1: main file + master.d/10-a + master.d/20-b + include extra/*.conf.
    #[test]
    fn merge_order_matches_salt() {
        let dir = tree(&[
            (
                "master",
                "ret_port: 1111\ntimeout: 7\nexternal_auth:\n  pam:\n    alice: ['test.*']\n\
                 netapi_enable_clients: [local]\nnodegroups:\n  ng1: 'L@a,b'\ninclude: extra/*.conf\n",
            ),
            (
                "master.d/10-a.conf",
                "ret_port: 2222\nexternal_auth:\n  pam:\n    bob: ['@runner']\nnetapi_enable_clients: [runner]\n",
            ),
            (
                "master.d/20-b.conf",
                "external_auth:\n  auto:\n    carol: ['.*']\nnetapi_enable_clients: [wheel]\n",
            ),
            ("extra/x.conf", "timeout: 9\n"),
        ]);
        let cfg = load(&dir);
        assert_eq!(cfg.ret_port(), 2222);
        assert_eq!(cfg.timeout(), 9.0);
        assert_eq!(
            Value::Object(cfg.external_auth()),
            json!({"auto": {"carol": [".*"]}, "pam": {"bob": ["@runner"]}})
        );
        assert_eq!(cfg.netapi_enable_clients(), vec!["runner", "wheel"]);
        assert_eq!(Value::Object(cfg.nodegroups()), json!({"ng1": "L@a,b"}));
        assert_eq!(cfg.master_uri(), "tcp://127.0.0.1:2222");
        assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    }

    /// `include:` is applied after `default_include`, so it wins.
    #[test]
    fn include_wins_over_master_d() {
        let dir = tree(&[
            ("master", "include: [extra/*.conf, more.conf]\n"),
            ("master.d/a.conf", "timeout: 3\nuser: salt\n"),
            ("extra/x.conf", "timeout: 4\n"),
            ("more.conf", "gather_job_timeout: 12\n"),
        ]);
        let cfg = load(&dir);
        assert_eq!(cfg.timeout(), 4.0);
        assert_eq!(cfg.user(), "salt");
        assert_eq!(cfg.gather_job_timeout(), 12.0);
    }

    /// p00 scenario 1, paths: root_dir is prefixed to every path option.
    #[test]
    fn root_dir_prefixes_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let yaml = format!("root_dir: {}\n", root.display());
        let cfg = MasterConfig::from_yaml_str(&yaml, dir.path()).expect("loads");
        let r = root.display().to_string();
        assert_eq!(cfg.root_dir(), root);
        assert_eq!(
            cfg.sock_dir(),
            PathBuf::from(format!("{r}/var/run/salt/master"))
        );
        assert_eq!(
            cfg.cachedir(),
            PathBuf::from(format!("{r}/var/cache/salt/master"))
        );
        assert_eq!(
            cfg.pki_dir(),
            PathBuf::from(format!("{r}/etc/salt/pki/master"))
        );
        assert_eq!(
            cfg.token_dir(),
            PathBuf::from(format!("{r}/var/cache/salt/master/tokens"))
        );
        assert_eq!(
            cfg.get("token_dir"),
            Some(&json!(format!("{r}/var/cache/salt/master/tokens")))
        );
    }

    /// A path already under root_dir is not prefixed twice. A relative one is
    /// placed under root_dir.
    #[test]
    fn root_dir_leaves_paths_already_under_it() {
        let yaml = "root_dir: /srv/r\ncachedir: /srv/r/cache\npki_dir: pki\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/nonexistent")).expect("loads");
        assert_eq!(cfg.cachedir(), PathBuf::from("/srv/r/cache"));
        assert_eq!(cfg.token_dir(), PathBuf::from("/srv/r/cache/tokens"));
        assert_eq!(cfg.pki_dir(), PathBuf::from("/srv/r/pki"));
        assert_eq!(cfg.sock_dir(), PathBuf::from("/srv/r/var/run/salt/master"));
    }

    #[test]
    fn prepend_root_dir_matches_salt() {
        assert_eq!(prepend_root_dir("/", "/var/cache/salt/"), "/var/cache/salt");
        assert_eq!(prepend_root_dir("/r", "/var/x"), "/r/var/x");
        assert_eq!(prepend_root_dir("/r", "/r/var/x"), "/r/var/x");
        assert_eq!(prepend_root_dir("/r", "/rx/var"), "/r/rx/var");
        assert_eq!(prepend_root_dir("/r", "rel/x"), "/r/rel/x");
        // Salt's quirk, kept so halite and the master agree.
        assert_eq!(prepend_root_dir("/r", "/r"), "/r/r");
    }

    /// p00 scenario 2 (api_config): interface rewrite, long sock_dir, empty nodegroups.
    #[test]
    fn sock_dir_guard_interface_and_null_nodegroups() {
        let yaml = "interface: 0.0.0.0\n\
                    sock_dir: /var/run/salt/master/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\
                    nodegroups:\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/nonexistent")).expect("loads");
        assert_eq!(cfg.interface(), "127.0.0.1");
        assert_eq!(cfg.get("interface"), Some(&json!("127.0.0.1")));
        assert_eq!(cfg.master_uri(), "tcp://127.0.0.1:4506");
        assert_eq!(
            cfg.sock_dir(),
            PathBuf::from("/var/cache/salt/master/.salt-unix")
        );
        assert_eq!(cfg.cachedir(), PathBuf::from("/var/cache/salt/master"));
        assert!(cfg.nodegroups().is_empty());
        assert_eq!(cfg.get("nodegroups"), Some(&json!({})));
        assert_eq!(cfg.rest_timeout(), 300.0);
    }

    /// The guard compares against cachedir + 10 characters, not an absolute limit.
    #[test]
    fn sock_dir_guard_boundary() {
        // len("/c") + 10 == 12: 12 characters are kept, 13 are replaced.
        let keep = "cachedir: /c\nsock_dir: /abcdefghijk\n";
        let cfg = MasterConfig::from_yaml_str(keep, Path::new("/x")).expect("loads");
        assert_eq!(cfg.sock_dir(), PathBuf::from("/abcdefghijk"));
        let swap = "cachedir: /c\nsock_dir: /abcdefghijkl\n";
        let cfg = MasterConfig::from_yaml_str(swap, Path::new("/x")).expect("loads");
        assert_eq!(cfg.sock_dir(), PathBuf::from("/c/.salt-unix"));
    }

    #[test]
    fn ipv6_interface_is_bracketed() {
        let cfg = MasterConfig::from_yaml_str("interface: '::'\nret_port: 5000\n", Path::new("/x"))
            .expect("loads");
        assert_eq!(cfg.interface(), "::1");
        assert_eq!(cfg.master_uri(), "tcp://[::1]:5000");
        let cfg =
            MasterConfig::from_yaml_str("interface: 10.1.2.3\n", Path::new("/x")).expect("loads");
        assert_eq!(cfg.master_uri(), "tcp://10.1.2.3:4506");
        assert_eq!(ip_bracket("fe80::1%eth0"), "[fe80::1%eth0]");
        assert_eq!(ip_bracket("[2001:db8::1]"), "[2001:db8::1]");
        assert_eq!(ip_bracket("salt.example"), "salt.example");
    }

    #[test]
    fn explicit_master_uri_wins() {
        let cfg = MasterConfig::from_yaml_str("master_uri: tcp://10.0.0.9:4506\n", Path::new("/x"))
            .expect("loads");
        assert_eq!(cfg.master_uri(), "tcp://10.0.0.9:4506");
    }

    /// p00 scenario 3: nodegroups as a list of one-key maps; default_include overridden.
    #[test]
    fn nodegroup_list_and_default_include_override() {
        let dir = tree(&[
            (
                "master",
                "nodegroups:\n  - ng1: 'L@a'\n  - ng2: 'G@os:Linux'\ndefault_include: conf.d/*.yml\n",
            ),
            ("conf.d/a.yml", "timeout: 11\n"),
            ("master.d/ignored.conf", "timeout: 99\n"),
        ]);
        let cfg = load(&dir);
        assert_eq!(
            Value::Object(cfg.nodegroups()),
            json!({"ng1": "L@a", "ng2": "G@os:Linux"})
        );
        assert_eq!(cfg.timeout(), 11.0);
    }

    #[test]
    fn bad_nodegroups_are_invalid() {
        let err = MasterConfig::from_yaml_str("nodegroups: [a, b]\n", Path::new("/x"))
            .expect_err("must fail");
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "nodegroups"));
    }

    /// The defaults probe p00 printed for 3006.30/3007.17/3008.4.
    #[test]
    fn defaults_match_salt() {
        let cfg = MasterConfig::from_yaml_str("", Path::new("/nonexistent")).expect("loads");
        assert_eq!(cfg.interface(), "127.0.0.1");
        assert_eq!(cfg.ret_port(), 4506);
        assert_eq!(cfg.transport(), RequestTransport::Zeromq);
        assert_eq!(cfg.ipc_mode(), IpcMode::Ipc);
        assert_eq!(cfg.sock_dir(), PathBuf::from("/var/run/salt/master"));
        assert_eq!(cfg.cachedir(), PathBuf::from("/var/cache/salt/master"));
        assert_eq!(cfg.pki_dir(), PathBuf::from("/etc/salt/pki/master"));
        assert_eq!(
            cfg.token_dir(),
            PathBuf::from("/var/cache/salt/master/tokens")
        );
        assert_eq!(cfg.root_dir(), PathBuf::from("/"));
        assert_eq!(cfg.tcp_master_pub_port(), 4512);
        assert_eq!(cfg.tcp_master_pull_port(), 4513);
        assert!(!cfg.ipv6());
        assert!(cfg.netapi_enable_clients().is_empty());
        assert!(!cfg.netapi_allow_raw_shell());
        assert!(cfg.external_auth().is_empty());
        assert!(cfg.nodegroups().is_empty());
        assert_eq!(cfg.timeout(), 5.0);
        assert_eq!(cfg.gather_job_timeout(), 10.0);
        assert_eq!(cfg.publish_timeout(), 30.0);
        assert_eq!(cfg.rest_timeout(), 300.0);
        assert_eq!(cfg.token_expire(), 43200.0);
        assert!(!cfg.keep_acl_in_token());
        assert_eq!(cfg.worker_threads(), 5);
        assert_eq!(cfg.ext_job_cache(), None);
        assert_eq!(cfg.user(), "root");
        assert_eq!(cfg.master_uri(), "tcp://127.0.0.1:4506");
        for (key, value) in [
            ("publish_port", json!(4505)),
            ("tcp_master_publish_pull", json!(4514)),
            ("tcp_master_workers", json!(4515)),
            ("token_expire_user_override", json!(false)),
            ("default_include", json!("master.d/*.conf")),
            ("minimum_auth_version", json!(3)),
            ("master_job_cache", json!("local_cache")),
            ("order_masters", json!(false)),
            ("syndic_wait", json!(5)),
            ("minion_data_cache", json!(true)),
            ("eauth_tokens", json!("localfs")),
            ("publisher_acl", json!({})),
            ("publisher_acl_blacklist", json!({})),
            ("ipv6", json!(null)),
            ("range_server", json!("range:80")),
            ("enable_ssh_minions", json!(false)),
            ("cli_summary", json!(false)),
            ("conf_file", json!("/nonexistent/master")),
            ("syndic_dir", json!("/var/cache/salt/master/syndics")),
        ] {
            assert_eq!(cfg.get(key), Some(&value), "{key}");
        }
        assert_eq!(cfg.get("worker_pools_enabled"), None);
    }

    #[test]
    fn malformed_yaml_names_the_file() {
        let dir = tree(&[("master", "external_auth:\n  pam: [unclosed\n")]);
        let path = dir.path().join("master");
        let err = MasterConfig::from_file(&path).expect_err("must fail");
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn non_mapping_top_level_is_an_error() {
        let err = MasterConfig::from_yaml_str("- a\n- b\n", Path::new("/x")).expect_err("fails");
        assert!(matches!(err, ConfigError::Yaml { ref message, .. } if message.contains("a list")));
        let err = MasterConfig::from_yaml_str("just words\n", Path::new("/x")).expect_err("fails");
        assert!(matches!(err, ConfigError::Yaml { .. }));
        // Salt's `safe_load(...) or {}`: comments only, or falsy values, are empty configs.
        for empty in ["# nothing\n", "~\n", "[]\n", "''\n"] {
            let cfg = MasterConfig::from_yaml_str(empty, Path::new("/x")).expect("empty is ok");
            assert_eq!(cfg.ret_port(), 4506);
        }
    }

    #[test]
    fn missing_file_is_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master");
        let err = MasterConfig::from_file(&path).expect_err("must fail");
        match err {
            ConfigError::Io { path: p, source } => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }

    /// Salt logs a broken include file and carries on without it. The master does
    /// the same, so halite must not treat it as fatal either.
    #[test]
    fn broken_include_is_skipped_with_a_warning() {
        let dir = tree(&[
            ("master", "timeout: 6\n"),
            ("master.d/a.conf", "timeout: [oops\n"),
            ("master.d/b.conf", "user: salt\n"),
        ]);
        let cfg = load(&dir);
        assert_eq!(cfg.timeout(), 6.0);
        assert_eq!(cfg.user(), "salt");
        assert_eq!(cfg.warnings().len(), 1);
        assert!(cfg.warnings()[0].contains("a.conf"), "{:?}", cfg.warnings());
    }

    #[test]
    fn unmatched_include_warns_but_default_include_does_not() {
        let dir = tree(&[("master", "include: nowhere/*.conf\n")]);
        let cfg = load(&dir);
        assert_eq!(cfg.warnings().len(), 1);
        assert!(cfg.warnings()[0].contains("matches no files"));
    }

    /// An include inside an included file is resolved relative to that file.
    #[test]
    fn nested_includes_resolve_relative_to_the_including_file() {
        let dir = tree(&[
            ("master", ""),
            ("master.d/a.conf", "include: sub/*.conf\nuser: salt\n"),
            ("master.d/sub/b.conf", "ret_port: 4600\n"),
        ]);
        let cfg = load(&dir);
        assert_eq!(cfg.ret_port(), 4600);
        assert_eq!(cfg.user(), "salt");
    }

    #[test]
    fn include_cycle_is_an_error_not_a_hang() {
        let dir = tree(&[
            ("master", "include: loop.conf\n"),
            ("loop.conf", "include: loop.conf\n"),
        ]);
        let err = MasterConfig::from_file(&dir.path().join("master")).expect_err("must fail");
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "include"));
    }

    /// Lists from different include files are concatenated; items already present
    /// are not repeated, and anything but map+map or list+list is replaced.
    #[test]
    fn deep_merge_follows_dictupdate() {
        let mut dest = json!({"l": [1, 2], "m": {"a": 1, "n": {"x": 1}}, "s": "old", "t": [1]});
        let upd = json!({"l": [2, 3, 3], "m": {"b": 2, "n": {"y": 2}}, "s": "new", "t": {"k": 1}});
        if let (Value::Object(d), Value::Object(u)) = (&mut dest, upd) {
            deep_merge(d, u);
        }
        assert_eq!(
            dest,
            json!({"l": [1, 2, 3, 3], "m": {"a": 1, "b": 2, "n": {"x": 1, "y": 2}}, "s": "new", "t": {"k": 1}})
        );
    }

    #[test]
    fn external_auth_rest_forces_keep_acl_in_token() {
        let yaml = "external_auth:\n  rest:\n    '^url': https://auth\nkeep_acl_in_token: False\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect("loads");
        assert!(cfg.keep_acl_in_token());
        assert_eq!(cfg.get("keep_acl_in_token"), Some(&json!(true)));
        assert_eq!(cfg.warnings().len(), 1);
    }

    #[test]
    fn numbers_written_as_strings_are_tolerated() {
        let yaml = "timeout: '5'\nret_port: \"4510\"\nworker_threads: '8'\ntoken_expire: 1.5\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect("loads");
        assert_eq!(cfg.timeout(), 5.0);
        assert_eq!(cfg.ret_port(), 4510);
        assert_eq!(cfg.worker_threads(), 8);
        assert_eq!(cfg.token_expire(), 1.5);
        // The raw value stays as written.
        assert_eq!(cfg.get("timeout"), Some(&json!("5")));
    }

    #[test]
    fn unusable_values_are_invalid_with_the_key() {
        for (yaml, bad_key) in [
            ("timeout: soon\n", "timeout"),
            ("timeout: -1\n", "timeout"),
            ("timeout: .inf\n", "timeout"),
            ("ret_port: 70000\n", "ret_port"),
            ("transport: raet\n", "transport"),
            ("netapi_enable_clients: local\n", "netapi_enable_clients"),
            ("external_auth: [pam]\n", "external_auth"),
            ("netapi_allow_raw_shell: maybe\n", "netapi_allow_raw_shell"),
            ("cachedir: [a]\n", "cachedir"),
            ("include: {a: 1}\n", "include"),
        ] {
            match MasterConfig::from_yaml_str(yaml, Path::new("/x")) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, bad_key, "{yaml}"),
                other => panic!("{yaml}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn null_values_take_the_default() {
        let yaml = "timeout:\nexternal_auth:\nnetapi_enable_clients:\ninterface:\nsock_dir:\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect("loads");
        assert_eq!(cfg.timeout(), 5.0);
        assert!(cfg.external_auth().is_empty());
        assert!(cfg.netapi_enable_clients().is_empty());
        assert_eq!(cfg.interface(), "127.0.0.1");
        assert_eq!(cfg.sock_dir(), PathBuf::from("/var/run/salt/master"));
    }

    #[test]
    fn transports_and_ipc_modes() {
        let cfg = MasterConfig::from_yaml_str(
            "transport: tcp\nipc_mode: tcp\nipv6: true\n",
            Path::new("/x"),
        )
        .expect("loads");
        assert_eq!(cfg.transport(), RequestTransport::Tcp);
        assert_eq!(cfg.ipc_mode(), IpcMode::Tcp);
        assert!(cfg.ipv6());
        let cfg = MasterConfig::from_yaml_str("transport: ws\nipc_mode: IPC\n", Path::new("/x"))
            .expect("loads");
        assert_eq!(cfg.transport(), RequestTransport::Ws);
        assert_eq!(cfg.ipc_mode(), IpcMode::Ipc);
        assert_eq!(cfg.warnings().len(), 1);
    }

    /// PyYAML (YAML 1.1) reads yes/no/on/off as booleans; so must we.
    #[test]
    fn yaml11_booleans() {
        let yaml = "netapi_allow_raw_shell: yes\nipv6: off\nrest_cherrypy:\n  disable_ssl: On\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect("loads");
        assert!(cfg.netapi_allow_raw_shell());
        assert!(!cfg.ipv6());
        let section = cfg.section("rest_cherrypy").expect("section");
        assert_eq!(section.get("disable_ssl"), Some(&json!(true)));
    }

    #[test]
    fn non_string_keys_become_strings_and_merge_keys_apply() {
        let yaml = "nodegroups:\n  1: L@a\n  true: L@b\n\
                    base: &b {port: 8000, debug: false}\nrest_wsgi:\n  <<: *b\n  port: 8001\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect("loads");
        assert_eq!(
            Value::Object(cfg.nodegroups()),
            json!({"1": "L@a", "true": "L@b"})
        );
        let wsgi = cfg.section("rest_wsgi").expect("section");
        assert_eq!(
            Value::Object(wsgi.clone()),
            json!({"port": 8001, "debug": false})
        );
        assert!(cfg.section("timeout").is_none());
    }

    #[test]
    fn unknown_tags_and_duplicate_keys_are_yaml_errors() {
        for yaml in ["a: !vault secret\n", "a: 1\na: 2\n", "a: 1\n---\nb: 2\n"] {
            let err = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect_err(yaml);
            assert!(matches!(err, ConfigError::Yaml { .. }), "{yaml}: {err:?}");
        }
    }

    #[test]
    fn peer_raises_worker_threads_to_three() {
        let yaml = "worker_threads: 1\npeer:\n  .*:\n    - test.ping\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect("loads");
        assert_eq!(cfg.worker_threads(), 3);
        assert_eq!(cfg.get("worker_threads"), Some(&json!(3)));
        let cfg = MasterConfig::from_yaml_str("worker_threads: 1\n", Path::new("/x")).expect("ok");
        assert_eq!(cfg.worker_threads(), 1);
    }

    #[test]
    fn ext_job_cache_and_log_file_prefixing() {
        let yaml = "root_dir: /r\next_job_cache: redis\nlog_file: /var/log/salt/master\n\
                    key_logfile: udp://loghost:514\n";
        let cfg = MasterConfig::from_yaml_str(yaml, Path::new("/x")).expect("loads");
        assert_eq!(cfg.ext_job_cache().as_deref(), Some("redis"));
        assert_eq!(cfg.get("log_file"), Some(&json!("/r/var/log/salt/master")));
        assert_eq!(cfg.get("key_logfile"), Some(&json!("udp://loghost:514")));
    }

    #[test]
    fn config_path_resolution_follows_load_config() {
        let dir = tree(&[("other", ""), ("cfgdir/master", "")]);
        let other = dir.path().join("other");
        let explicit = Path::new("/explicit/master");
        let env = |p: &Path| Some(p.as_os_str().to_owned());

        assert_eq!(
            resolve_config_path(Some(explicit), env(&other), None),
            explicit
        );
        assert_eq!(resolve_config_path(None, env(&other), None), other);
        // An env var naming a missing file falls back to the default path.
        assert_eq!(
            resolve_config_path(None, env(&dir.path().join("nope")), None),
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
        assert_eq!(
            resolve_config_path(None, None, env(&dir.path().join("cfgdir"))),
            dir.path().join("cfgdir/master")
        );
        assert_eq!(
            resolve_config_path(None, None, None),
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
    }

    #[test]
    fn include_dir_with_glob_characters_is_escaped() {
        let dir = tree(&[
            ("we[ir]d/master", ""),
            ("we[ir]d/master.d/a.conf", "ret_port: 4700\n"),
        ]);
        let cfg = MasterConfig::from_file(&dir.path().join("we[ir]d/master")).expect("loads");
        assert_eq!(cfg.ret_port(), 4700);
        assert_eq!(cfg.path(), dir.path().join("we[ir]d/master"));
    }

    #[test]
    fn python_path_helpers() {
        assert_eq!(py_normpath("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(py_normpath("//a"), "//a");
        assert_eq!(py_normpath("///a"), "/a");
        assert_eq!(py_normpath("../a/.."), "..");
        assert_eq!(py_normpath(""), ".");
        assert_eq!(py_join("/a/", "b"), "/a/b");
        assert_eq!(py_join("/a", "/b"), "/b");
        assert_eq!(salt_path_join("/r", "/var//x/"), "/r/var/x");
        assert!(has_uri_scheme("udp://h:514"));
        assert!(!has_uri_scheme("/var/log/x"));
    }
}
