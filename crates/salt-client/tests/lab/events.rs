//! The event bus: job events of a local_async job, `fire()` round trips,
//! unusual msgpack (non-UTF-8 bytes, integer keys, 64-bit integers) pushed
//! straight into the master's pull socket.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{auto, netapi, ok, wait_event};
use rmpv::Value as Mp;
use salt_client::events::{encode_frame, endpoints, Endpoint, Framing};
use salt_client::value;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn local_async_job_events_are_seen() {
    let (lab, n) = netapi().await;
    let mut rx = n.master().bus().subscribe_all();
    let r = ok(
        &n,
        auto(json!({"client": "local_async", "tgt": "*", "fun": "test.arg", "arg": ["ev"]})),
    )
    .await;
    let jid = r["jid"].as_str().expect("jid").to_owned();
    let new_tag = format!("salt/job/{jid}/new");
    let ret_prefix = format!("salt/job/{jid}/ret/");
    let mut saw_new = false;
    let mut returned = BTreeSet::new();
    while !(saw_new && returned.len() == lab.minions.len()) {
        let ev = wait_event(
            &mut rx,
            Duration::from_secs(180),
            &format!("events of {jid}"),
            |e| e.tag == new_tag || e.tag.starts_with(&ret_prefix),
        )
        .await;
        let data = ev.data();
        assert_eq!(ev.jid(), Some(jid.as_str()));
        assert!(data["_stamp"].is_string(), "{}: {data}", ev.tag);
        if ev.tag == new_tag {
            saw_new = true;
            assert_eq!(data["fun"], json!("test.arg"), "{data}");
            assert_eq!(data["arg"], json!(["ev"]), "{data}");
            let minions: BTreeSet<String> =
                serde_json::from_value(data["minions"].clone()).expect("list");
            assert_eq!(minions, lab.minions.iter().cloned().collect());
        } else {
            let id = ev.tag.trim_start_matches(&ret_prefix).to_owned();
            assert_eq!(data["id"], json!(id), "{data}");
            assert_eq!(data["return"]["args"], json!(["ev"]), "{data}");
            assert_eq!(data["success"], json!(true), "{data}");
            returned.insert(id);
        }
    }
    assert!(n.master().bus().events_seen() > 0);
}

#[tokio::test]
async fn fired_event_comes_back_with_same_data_and_a_stamp() {
    let (_lab, n) = netapi().await;
    let bus = n.master().bus();
    let mut rx = bus.subscribe_all();
    let tag = format!("halite/test/fire/{}", uuid_like());
    let data = json!({
        "text": "héllo",
        "n": 42,
        "neg": -7,
        "big": u64::MAX,
        "f": 1.5,
        "list": [1, "two", null, true],
        "nested": {"a": {"b": [{"c": "d"}]}, "empty": {}},
    });
    bus.fire(&tag, &data).await.expect("fire");
    let ev = wait_event(&mut rx, Duration::from_secs(20), &tag, |e| e.tag == tag).await;
    let got = ev.data().as_object().expect("object").clone();
    let stamp = got
        .get("_stamp")
        .and_then(|s| s.as_str())
        .expect("_stamp added");
    assert!(stamp.len() >= 19 && stamp.as_bytes()[4] == b'-', "{stamp}");
    let mut without = got.clone();
    without.remove("_stamp");
    assert_eq!(serde_json::Value::Object(without), data);
    // A second fire uses the framing found by the first probe.
    let tag2 = format!("{tag}/again");
    bus.fire(&tag2, &json!({"x": 1})).await.expect("fire again");
    let ev = wait_event(&mut rx, Duration::from_secs(20), &tag2, |e| e.tag == tag2).await;
    assert_eq!(ev.data()["x"], json!(1));
}

/// Push one raw event into the master's pull socket in `framing`.
async fn push_raw(pull: &Endpoint, body: &[u8], framing: Framing) {
    let bytes = encode_frame(body, framing);
    match pull {
        Endpoint::Unix(p) => {
            let mut s = tokio::net::UnixStream::connect(p)
                .await
                .expect("pull socket");
            s.write_all(&bytes).await.expect("write");
            s.shutdown().await.expect("shutdown");
        }
        Endpoint::Tcp(a) => {
            let mut s = tokio::net::TcpStream::connect(a.as_str())
                .await
                .expect("pull port");
            s.write_all(&bytes).await.expect("write");
            s.shutdown().await.expect("shutdown");
        }
    }
}

#[tokio::test]
async fn raw_event_with_bytes_integer_keys_and_big_ints_converts_like_salt() {
    let (_lab, n) = netapi().await;
    let bus = n.master().bus();
    let (_, pull) = endpoints(&n.master().config());
    let mut rx = bus.subscribe_all();
    let tag = format!("halite/test/raw/{}", uuid_like());
    // What Python's msgpack would make of
    // {b"\x00\xff": b"\xff\xfe", "bin": b"ok", 1: "int key", -2: "neg key",
    //  True: "bool key", None: "nil key", "u64": 2**64-1, "i64": -2**63,
    //  "dt": ExtType(78, "20261126T20:37:24.123608")}
    let data = Mp::Map(vec![
        (Mp::Binary(vec![0x00, 0xff]), Mp::Binary(vec![0xff, 0xfe])),
        (Mp::from("bin"), Mp::Binary(b"ok".to_vec())),
        (Mp::from(1), Mp::from("int key")),
        (Mp::from(-2), Mp::from("neg key")),
        (Mp::Boolean(true), Mp::from("bool key")),
        (Mp::Nil, Mp::from("nil key")),
        (Mp::from("u64"), Mp::from(u64::MAX)),
        (Mp::from("i64"), Mp::from(i64::MIN)),
        (
            Mp::from("dt"),
            Mp::Ext(78, b"20261126T20:37:24.123608".to_vec()),
        ),
    ]);
    let mut body = tag.as_bytes().to_vec();
    body.extend_from_slice(b"\n\n");
    body.extend_from_slice(&value::encode(&data));
    // The master drops frames in the wrong framing, so send both; exactly
    // the right one comes back.
    push_raw(&pull, &body, Framing::Prefixed).await;
    push_raw(&pull, &body, Framing::Bare).await;
    let ev = wait_event(&mut rx, Duration::from_secs(20), &tag, |e| e.tag == tag).await;
    assert_eq!(
        ev.data(),
        &json!({
            "\u{0}\u{fffd}": "\u{fffd}\u{fffd}",
            "bin": "ok",
            "1": "int key",
            "-2": "neg key",
            "true": "bool key",
            "null": "nil key",
            "u64": u64::MAX,
            "i64": i64::MIN,
            "dt": "2026-11-26T20:37:24.123608",
        })
    );
    // Exactly one of the two frames was delivered.
    let dup = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match rx.recv().await {
                Ok(e) if e.tag == tag => return true,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    panic!("the receiver lagged by {k} events: cannot tell")
                }
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(!dup, "the master delivered both framings of one event");
}

fn uuid_like() -> String {
    format!(
        "{:x}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}
