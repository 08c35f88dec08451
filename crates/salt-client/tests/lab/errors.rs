//! Every error kind, as the real master (or the library's pre-checks)
//! produce it.

use std::time::{Duration, Instant};

use crate::common::{auto, err, lab, low, master_for, netapi, with};
use rmpv::Value as Mp;
use salt_client::clients::Netapi;
use salt_client::master::Master;
use salt_client::{value, ErrorKind, SaltError};
use serde_json::json;

#[tokio::test]
async fn pam_bad_password_is_authentication_error() {
    let (lab, n) = netapi().await;
    let e = err(
        &n,
        with(
            json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
            json!({"eauth": "pam", "username": lab.pam_user, "password": "wrong-password"}),
        ),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
    let e = err(
        &n,
        with(
            json!({"client": "runner", "fun": "test.arg"}),
            json!({"eauth": "pam", "username": lab.pam_user, "password": "wrong-password"}),
        ),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
}

#[tokio::test]
async fn auto_eauth_unknown_user_is_rejected() {
    let (_lab, n) = netapi().await;
    // The `auto` backend accepts any name, so for a publish the master finds
    // no ACL entry and answers AuthorizationError; runner and wheel calls
    // answer EauthAuthenticationError (the master's replies, docs/PROTOCOL.md §3.5).
    // (wheel_async answers {jid, tag} before the master is asked, as
    // NetapiClient's forked wheel_async does.)
    let creds = json!({"eauth": "auto", "username": "nobody-here", "password": "x"});
    for (l, kind) in [
        (
            json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
            ErrorKind::Authorization,
        ),
        (
            json!({"client": "local_async", "tgt": "*", "fun": "test.ping"}),
            ErrorKind::Authorization,
        ),
        (
            json!({"client": "runner", "fun": "test.arg"}),
            ErrorKind::Authentication,
        ),
        (
            json!({"client": "runner_async", "fun": "test.arg"}),
            ErrorKind::Authentication,
        ),
        (
            json!({"client": "wheel", "fun": "key.list_all"}),
            ErrorKind::Authentication,
        ),
    ] {
        let e = err(&n, with(l.clone(), creds.clone())).await;
        assert_eq!(e.kind(), kind, "{l}: {e:?}");
    }
    // Unknown eauth backend.
    let e = err(
        &n,
        with(
            json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
            json!({"eauth": "no-such-backend", "username": "saltdev", "password": "x"}),
        ),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
}

#[tokio::test]
async fn unknown_tokens() {
    let (_lab, n) = netapi().await;
    let bogus = "0123456789abcdef".repeat(4);
    // publish: the master answers AuthenticationError for a bad token.
    let e = err(
        &n,
        low(json!({"client": "local", "tgt": "*", "fun": "test.ping", "token": bogus})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
    // runner / wheel: TokenAuthenticationError.
    let e = err(
        &n,
        low(json!({"client": "runner", "fun": "test.arg", "token": bogus})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Token, "{e:?}");
    let e = err(
        &n,
        low(json!({"client": "wheel", "fun": "key.list_all", "token": "deadbeef"})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Token, "{e:?}");
    // Garbage that is not even hex: as the master replies (never a success).
    let e = err(
        &n,
        low(
            json!({"client": "local", "tgt": "*", "fun": "test.ping", "token": "../../etc/passwd"}),
        ),
    )
    .await;
    assert!(
        matches!(e.kind(), ErrorKind::Authentication | ErrorKind::Token),
        "{e:?}"
    );
}

#[tokio::test]
async fn limited_user_is_authorized_for_test_ping_only() {
    let (lab, n) = netapi().await;
    let limited = json!({"eauth": "auto", "username": "limited", "password": "x"});
    let r = crate::common::ok(
        &n,
        with(
            json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
            limited.clone(),
        ),
    )
    .await;
    assert_eq!(r, lab.all(json!(true)));
    let e = err(
        &n,
        with(
            json!({"client": "local", "tgt": "*", "fun": "test.arg"}),
            limited.clone(),
        ),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authorization, "{e:?}");
    let e = err(
        &n,
        with(
            json!({"client": "local_async", "tgt": "*", "fun": "test.arg"}),
            limited.clone(),
        ),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authorization, "{e:?}");
    // Not permitted to use runners: the master says EauthAuthenticationError.
    let e = err(
        &n,
        with(
            json!({"client": "runner", "fun": "test.arg"}),
            limited.clone(),
        ),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
    let e = err(
        &n,
        with(json!({"client": "wheel", "fun": "key.list_all"}), limited),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
}

#[tokio::test]
async fn netapi_prechecks() {
    let (lab, n) = netapi().await;
    let e = err(
        &n,
        auto(json!({"client": "nonsense", "tgt": "*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(
        e,
        SaltError::Invocation("Invalid client specified: 'nonsense'".into())
    );
    let e = err(&n, auto(json!({"tgt": "*", "fun": "test.ping"}))).await;
    assert_eq!(e.kind(), ErrorKind::Invocation, "{e:?}");
    let e = err(
        &n,
        low(json!({"client": "local", "tgt": "*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(
        e,
        SaltError::Authentication("No authentication credentials given".into())
    );
    let e = err(
        &n,
        auto(json!({"client": "local", "tgt": "*", "fun": "cmd.run", "raw_shell": true})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e:?}");
    // ssh has no wire equivalent.
    let e = err(
        &n,
        auto(json!({"client": "ssh", "tgt": "*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Invocation, "{e:?}");

    // A config that enables only `local`.
    let config = lab.master_config_with(json!({"netapi_enable_clients": ["local"]}));
    let limited = Netapi::new(master_for(config).await);
    let e = err(
        &limited,
        auto(json!({"client": "runner", "fun": "test.arg"})),
    )
    .await;
    assert_eq!(
        e,
        SaltError::Invocation(
            "Client disabled: 'runner'. Add to 'netapi_enable_clients' master config option to enable."
                .into()
        )
    );
    let r = crate::common::ok(
        &limited,
        auto(json!({"client": "local", "tgt": "ms-0", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, json!({"ms-0": true}));
    // No netapi_enable_clients at all: everything is disabled.
    let config = lab.master_config_with(json!({"netapi_enable_clients": null}));
    let none = Netapi::new(master_for(config).await);
    let e = err(
        &none,
        auto(json!({"client": "local", "tgt": "*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Invocation, "{e:?}");
}

#[tokio::test]
async fn unknown_nodegroup_is_invocation_error() {
    let (_lab, n) = netapi().await;
    let e = err(&n, auto(json!({"client": "local", "tgt": "no_such_group", "tgt_type": "nodegroup", "fun": "test.ping"}))).await;
    assert_eq!(e.kind(), ErrorKind::Invocation, "{e:?}");
    assert!(
        e.message().contains("Node group no_such_group unavailable"),
        "{e:?}"
    );
    let e = err(&n, auto(json!({"client": "local", "tgt": "N@nope or ms-0", "tgt_type": "compound", "fun": "test.ping"}))).await;
    assert_eq!(e.kind(), ErrorKind::Invocation, "{e:?}");
}

#[tokio::test]
async fn master_side_exception_is_master_error() {
    let (_lab, n) = netapi().await;
    // A publish without tgt/fun/arg/...: "Some exception handling minion payload".
    let load = value::map([
        ("cmd", Mp::from("publish")),
        (
            "kwargs",
            value::map([
                ("eauth", Mp::from("auto")),
                ("username", Mp::from("saltdev")),
                ("password", Mp::from("x")),
            ]),
        ),
    ]);
    let e = n
        .master()
        .request(load, Duration::from_secs(30))
        .await
        .expect_err("an incomplete publish fails");
    assert_eq!(e.kind(), ErrorKind::Master, "{e:?}");
    assert!(e.message().contains("exception"), "{e:?}");
    // An unknown command answers {} (not an error).
    let r = n
        .master()
        .request(
            value::map([("cmd", Mp::from("no_such_cmd"))]),
            Duration::from_secs(30),
        )
        .await
        .expect("unknown command answers");
    assert_eq!(value::to_json(&r), json!({}));
    // ping echoes its load.
    let r = n
        .master()
        .request(
            value::map([("cmd", Mp::from("ping")), ("x", Mp::from(7))]),
            Duration::from_secs(30),
        )
        .await
        .expect("ping");
    assert_eq!(value::to_json(&r), json!({"cmd": "ping", "x": 7}));
}

#[tokio::test]
async fn runner_that_outlives_its_timeout_is_timeout_error() {
    let (_lab, n) = netapi().await;
    let e = err(
        &n,
        auto(json!({"client": "runner", "fun": "test.sleep", "s_time": 5, "timeout": 1})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
}

#[tokio::test]
async fn peer_that_never_answers_is_timeout_error() {
    let lab = lab();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accept connections and hold them open without ever writing a byte.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let config = lab.master_config_with(json!({"ret_port": port}));
    let master = Master::new(config);
    let e = master
        .request(
            value::map([("cmd", Mp::from("ping"))]),
            Duration::from_secs(1),
        )
        .await
        .expect_err("a silent peer cannot answer");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    let e = master
        .ping(Duration::from_secs(1))
        .await
        .expect_err("silent");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    holder.abort();
}

#[tokio::test]
async fn closed_port_is_unreachable_at_once() {
    let lab = lab();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let config = lab.master_config_with(json!({"ret_port": port}));
    let n = Netapi::new(master_for(config).await);
    let started = Instant::now();
    let e = n
        .master()
        .ping(Duration::from_secs(30))
        .await
        .expect_err("nothing listens");
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e:?}");
    let e = err(
        &n,
        auto(json!({"client": "local", "tgt": "*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e:?}");
    let e = err(&n, auto(json!({"client": "runner", "fun": "test.arg"}))).await;
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e:?}");
    // Refused connections fail without waiting for the 30 s request timeout.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
}
