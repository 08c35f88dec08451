//! The library against salt-testkit's in-process fake master: every client,
//! every error kind, timeouts, a bus that disconnects and frames captured
//! from real masters. No lab needed; each test takes milliseconds.

use std::path::Path;
use std::time::{Duration, Instant};

use salt_client::clients::{Lowstate, Netapi, Output};
use salt_client::config::MasterConfig;
use salt_client::master::Master;
use salt_client::{auth, ErrorKind, SaltError};
use salt_testkit::{FakeMaster, Reply};
use serde_json::{json, Value as Json};

async fn netapi(fake: &FakeMaster) -> Netapi {
    let config = MasterConfig::load(Some(fake.config_path())).expect("the fake's config loads");
    let master = Master::new(config);
    master
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("bus connects to the fake");
    Netapi::new(master)
}

fn low(v: Json) -> Lowstate {
    let mut m = v.as_object().cloned().expect("an object");
    for (k, v) in [
        ("eauth", "auto"),
        ("username", "saltdev"),
        ("password", "x"),
    ] {
        m.entry(k).or_insert_with(|| json!(v));
    }
    m
}

async fn one(n: &Netapi, l: Json) -> Json {
    match n.run(low(l.clone())).await {
        Ok(Output::One(v)) => v,
        other => panic!("{l}: {other:?}"),
    }
}

async fn err(n: &Netapi, l: Lowstate) -> SaltError {
    match n.run(l.clone()).await {
        Err(e) => e,
        Ok(v) => panic!("{l:?} succeeded: {v:?}"),
    }
}

#[tokio::test]
async fn every_client_against_the_fake() {
    let fake = FakeMaster::start().await;
    let n = netapi(&fake).await;

    let r = one(
        &n,
        json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
    )
    .await;
    assert_eq!(r, json!({"ms-0": true, "ms-1": true, "ms-2": true}));

    let r = one(
        &n,
        json!({"client": "local_async", "tgt": "ms-1", "fun": "test.ping"}),
    )
    .await;
    assert_eq!(r["minions"], json!(["ms-1"]));
    let jid = r["jid"].as_str().expect("a jid").to_owned();
    assert_eq!(jid.len(), 20, "{jid}");
    // The request reached the master with the credentials inside kwargs.
    let publish = fake
        .requests()
        .into_iter()
        .find(|l| l["cmd"] == "publish" && l["tgt"] == "ms-1")
        .expect("the publish load");
    assert_eq!(publish["kwargs"]["username"], "saltdev");
    assert!(
        publish.get("key").is_none(),
        "never the root key: {publish}"
    );

    let r = one(
        &n,
        json!({"client": "runner", "fun": "jobs.lookup_jid", "jid": jid}),
    )
    .await;
    assert_eq!(r, json!({"ms-1": true}));

    let r = one(
        &n,
        json!({"client": "runner", "fun": "test.arg", "arg": ["a"], "kwarg": {"b": 1}}),
    )
    .await;
    assert_eq!(r["args"], json!(["a"]), "{r}");

    let r = one(&n, json!({"client": "wheel", "fun": "key.list_all"})).await;
    assert_eq!(
        r["data"]["return"]["minions"],
        json!(["ms-0", "ms-1", "ms-2"])
    );

    let r = one(
        &n,
        json!({"client": "local_subset", "tgt": "*", "fun": "test.ping", "subset": 1}),
    )
    .await;
    assert_eq!(r.as_object().map(|o| o.len()), Some(1), "{r}");

    match n
        .run(low(
            json!({"client": "local_batch", "tgt": "*", "fun": "test.ping", "batch": "2"}),
        ))
        .await
    {
        Ok(Output::Many(parts)) => {
            let mut seen: Vec<String> = parts
                .iter()
                .flat_map(|p| p.as_object().into_iter().flat_map(|o| o.keys().cloned()))
                .collect();
            seen.sort();
            assert_eq!(seen, ["ms-0", "ms-1", "ms-2"]);
        }
        other => panic!("local_batch: {other:?}"),
    }
}

#[tokio::test]
async fn tokens_round_trip_and_rejections() {
    let fake = FakeMaster::start().await;
    let n = netapi(&fake).await;
    let m = n.master();
    let none = serde_json::Map::new();
    let token = auth::mk_token(m, "pam", "saltdev", "saltdev", &none)
        .await
        .expect("mk_token answers")
        .expect("accepted");
    let t = token["token"].as_str().expect("token text").to_owned();
    let back = auth::get_token(m, &t).await.expect("get_token answers");
    assert_eq!(back.expect("known")["name"], "saltdev");
    assert!(auth::mk_token(m, "pam", "saltdev", "wrong", &none)
        .await
        .expect("answers")
        .is_none());
    assert!(auth::get_token(m, &"0".repeat(64))
        .await
        .expect("answers")
        .is_none());
    // The token works for a call; a bogus one is a Token error for runners.
    let mut l = low(json!({"client": "runner", "fun": "test.arg"}));
    for k in ["eauth", "username", "password"] {
        l.remove(k);
    }
    l.insert("token".into(), json!(t));
    assert!(n.run(l.clone()).await.is_ok());
    l.insert("token".into(), json!("f".repeat(64)));
    assert_eq!(err(&n, l).await.kind(), ErrorKind::Token);
}

#[tokio::test]
async fn every_error_kind_from_the_master() {
    let fake = FakeMaster::start().await;
    let n = netapi(&fake).await;
    let ping = || low(json!({"client": "local", "tgt": "*", "fun": "test.ping"}));

    let mut bad = ping();
    bad.insert("password".into(), json!("x"));
    bad.insert("eauth".into(), json!("pam"));
    assert_eq!(err(&n, bad).await.kind(), ErrorKind::Authentication);

    let mut limited = ping();
    limited.insert("username".into(), json!("limited"));
    limited.insert("fun".into(), json!("cmd.run"));
    assert_eq!(err(&n, limited).await.kind(), ErrorKind::Authorization);

    let mut runner = low(json!({"client": "runner", "fun": "test.arg"}));
    runner.insert("username".into(), json!("limited"));
    assert_eq!(err(&n, runner).await.kind(), ErrorKind::Authentication);

    fake.script_once(
        "publish",
        Reply::Value(json!("Some exception handling minion payload")),
    );
    assert_eq!(err(&n, ping()).await.kind(), ErrorKind::Master);

    fake.script_once("publish", Reply::error("SaltInvocationError", "bad"));
    assert_eq!(err(&n, ping()).await.kind(), ErrorKind::Invocation);

    let mut nomatch = ping();
    nomatch.insert("tgt".into(), json!("nomatch*"));
    match n.run(nomatch).await {
        Ok(Output::One(v)) => assert_eq!(v, json!({}), "no minion matched"),
        Err(e) => assert_ne!(e.kind(), ErrorKind::Master, "{e:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_master_that_never_answers_is_a_timeout_and_a_closed_one_unreachable() {
    let fake = FakeMaster::start().await;
    let n = netapi(&fake).await;
    let runner = low(json!({"client": "runner", "fun": "test.arg", "timeout": 1}));
    fake.script_once("runner", Reply::Never);
    let start = Instant::now();
    let e = err(&n, runner.clone()).await;
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );

    fake.script_once("runner", Reply::Close);
    let e = err(&n, runner).await;
    assert!(
        matches!(e.kind(), ErrorKind::Unreachable | ErrorKind::Timeout),
        "{e:?}"
    );

    // A delay within the timeout is only a delay.
    let l = low(json!({"client": "wheel", "fun": "key.list_all"}));
    fake.script_once(
        "wheel",
        Reply::Delay(
            Duration::from_millis(200),
            Box::new(Reply::Value(
                json!({"tag": "salt/wheel/1", "data": {"return": true, "success": true}}),
            )),
        ),
    );
    assert!(n.run(l).await.is_ok());
}

#[tokio::test]
async fn the_bus_reconnects_after_the_master_drops_it() {
    let fake = FakeMaster::start().await;
    let n = netapi(&fake).await;
    let before = n.master().bus().generation();
    fake.disconnect_bus();
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.master().bus().generation() == before || !n.master().bus().is_connected() {
        assert!(Instant::now() < deadline, "the bus did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = one(
        &n,
        json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
    )
    .await;
    assert_eq!(r.as_object().map(|o| o.len()), Some(3), "{r}");
}

#[tokio::test]
async fn captured_event_streams_reach_subscribers() {
    let captures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/captures/3008.5");
    let stream = std::fs::read(captures.join("pub_stream.bin")).expect("a 3008.5 capture");
    let fake = FakeMaster::start().await;
    let n = netapi(&fake).await;
    let mut all = n.master().bus().subscribe_all();
    fake.fire_raw(&stream);
    let mut tags = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, all.recv()).await {
        tags.push(ev.tag.clone());
        if tags.iter().any(|t| t.contains("/ret/")) && tags.len() >= 3 {
            break;
        }
    }
    assert!(
        tags.iter().any(|t| t.starts_with("salt/job/")),
        "captured job events decoded: {tags:?}"
    );
}
