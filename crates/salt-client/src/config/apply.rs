//! Salt's post-processing: defaults, derived paths (`sock_dir` guard, `token_dir`,
//! `root_dir` prefixing), nodegroup normalisation and the client view.

#[allow(unused_imports)]
use super::*;

/// The defaults for the keys a client needs. The values are those printed by
/// real masters, which are the same in 3006.30, 3007.17 and 3008.4, plus salt-api's
/// `rest_timeout`. `worker_pools_enabled` is left out on purpose: its default
/// depends on the master's version (true in 3008, absent before).
pub(super) fn master_defaults() -> Map<String, Value> {
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
pub(super) fn assemble(
    path: PathBuf,
    mut overrides: Map<String, Value>,
) -> Result<MasterConfig, ConfigError> {
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
pub(super) fn force_keep_acl_for_rest(opts: &mut Map<String, Value>, warnings: &mut Vec<String>) {
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
pub(super) fn derive_paths(opts: &mut Map<String, Value>) -> Result<(), ConfigError> {
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
pub(super) fn normalise_nodegroups(opts: &mut Map<String, Value>) -> Result<(), ConfigError> {
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
pub(super) fn client_interface(interface: &str) -> String {
    match interface {
        "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" => "::1".to_owned(),
        other => other.to_owned(),
    }
}

/// `salt.utils.network.ip_bracket`: IPv6 literals get brackets so they fit in a URI.
/// Salt rejects host names here. halite lets them through unchanged.
pub(super) fn ip_bracket(addr: &str) -> String {
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        // e.g. a scoped address `fe80::1%eth0`, which Rust does not parse.
        Err(_) if bare.contains(':') => format!("[{bare}]"),
        Err(_) => bare.to_owned(),
    }
}
