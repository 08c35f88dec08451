//! The config loader against Salt's own merge, default and path rules.

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

/// Real-master scenario 1: main file + master.d/10-a + master.d/20-b + include extra/*.conf.
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
        Value::Object(cfg.external_auth().clone()),
        json!({"auto": {"carol": [".*"]}, "pam": {"bob": ["@runner"]}})
    );
    assert_eq!(cfg.netapi_enable_clients(), vec!["runner", "wheel"]);
    assert_eq!(
        Value::Object(cfg.nodegroups().clone()),
        json!({"ng1": "L@a,b"})
    );
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

/// Real-master scenario 1, paths: root_dir is prefixed to every path option.
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

/// Real-master scenario 2 (api_config): interface rewrite, long sock_dir, empty nodegroups.
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
    let cfg = MasterConfig::from_yaml_str("interface: 10.1.2.3\n", Path::new("/x")).expect("loads");
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

/// Real-master scenario 3: nodegroups as a list of one-key maps; default_include overridden.
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
        Value::Object(cfg.nodegroups().clone()),
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

/// The defaults real 3006.30/3007.17/3008.4 masters report.
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
        Value::Object(cfg.nodegroups().clone()),
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
