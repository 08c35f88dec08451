//! The Salt master configuration, resolved the way salt-api resolves it.
//!
//! halite talks to an unmodified master, so it has to find the same sockets, ports and
//! ACLs the running master uses. Getting one rule wrong means knocking on the wrong
//! door, e.g. a different `sock_dir`. This module therefore follows Salt's own loading
//! rules (`salt.config.api_config` → `client_config` → `master_config` in
//! `salt/config/__init__.py`) rather than inventing nicer ones. Every rule below was
//! checked against 3006.30, 3007.17 and 3008.4 (docs/PROTOCOL.md §1):
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

mod apply;
mod load;
mod merge;
mod py;
mod settings;
#[cfg(test)]
mod tests;

use apply::*;
use load::*;
use merge::*;
use py::*;
use settings::*;

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
    pub fn external_auth(&self) -> &Map<String, Value> {
        &self.settings.external_auth
    }

    /// Nodegroup definitions, for client-side target expansion (minions never
    /// expand `N@`). Salt's normalisation is applied: a bare `nodegroups:` is `{}`,
    /// and a list of one-key mappings becomes one mapping.
    pub fn nodegroups(&self) -> &Map<String, Value> {
        &self.settings.nodegroups
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
