//! Bytes captured from real masters (`tests/data/capture.py`, see
//! `tests/data/README.md`) decoded with the library's own parsers: the
//! event-bus `FrameDecoder`, the ZMTP frame parser and `value::to_json`.
//! These tests need no running lab.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use salt_client::events::{FrameDecoder, Framing};
use salt_client::transport::{interpret_reply, zmtp};
use salt_client::{value, ErrorKind};
use serde_json::{json, Value as Json};

fn captures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/captures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("meta.json").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no captures under {}", dir.display());
    dirs
}

fn meta(dir: &Path) -> Json {
    let text = std::fs::read_to_string(dir.join("meta.json")).expect("meta.json");
    serde_json::from_str(&text).expect("meta.json is JSON")
}

fn read(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok()
}

/// The publish-side framing of a release (docs/PROTOCOL.md §4.2).
fn expected_pub_framing(version: &str) -> Framing {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    match (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) {
        (3006, patch) if patch >= 26 => Framing::Prefixed,
        _ => Framing::Bare,
    }
}

#[test]
fn captured_event_streams_decode_completely() {
    for dir in captures() {
        let meta = meta(&dir);
        let version = meta["version"].as_str().expect("version");
        let bytes = read(&dir, "pub_stream.bin").expect("pub_stream.bin");
        // Feed the stream in uneven pieces, as sockets deliver it.
        let mut decoder = FrameDecoder::new();
        let mut events = Vec::new();
        for chunk in bytes.chunks(977) {
            decoder.extend(chunk);
            while let Some(ev) = decoder.next_event().expect("valid stream") {
                events.push(ev);
            }
        }
        assert_eq!(
            decoder.framing(),
            Some(expected_pub_framing(version)),
            "{version}: framing"
        );
        assert_eq!(
            decoder.buffer().len(),
            0,
            "{version}: stream ends on a frame boundary"
        );
        let tags: Vec<&str> = events.iter().map(|e| e.tag.as_str()).collect();
        let want: Vec<&str> = meta["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(Json::as_str)
            .collect();
        assert_eq!(
            tags, want,
            "{version}: the same events as the capture script saw"
        );

        // The fired event, with bytes, an integer key and 64-bit integers.
        let fired = meta["fired_tag"].as_str().expect("tag");
        let ev = events
            .iter()
            .find(|e| e.tag == fired)
            .expect("fired event in stream");
        assert_eq!(ev.data(), &meta["fired_data_json"], "{version}");

        // The test.ping job: every minion's return.
        let jid = meta["jid"].as_str().expect("jid");
        for m in meta["minions"].as_array().expect("minions") {
            let m = m.as_str().expect("id");
            let tag = format!("salt/job/{jid}/ret/{m}");
            let ev = events
                .iter()
                .find(|e| e.tag == tag)
                .unwrap_or_else(|| panic!("{tag}"));
            assert_eq!(ev.jid(), Some(jid));
            let d = ev.data();
            assert_eq!(d["return"], json!(true), "{version} {tag}: {d}");
            assert_eq!(d["id"], json!(m));
            assert_eq!(d["fun"], json!("test.ping"));
            assert!(d["_stamp"].is_string(), "{d}");
            if version.starts_with("3008") {
                assert!(
                    d["_stamp"].as_str().is_some_and(|s| s.ends_with("+00:00")),
                    "{d}"
                );
            }
        }
        let new = events
            .iter()
            .find(|e| e.tag == format!("salt/job/{jid}/new"))
            .expect("new event");
        assert_eq!(new.data()["fun"], json!("test.ping"));
        assert_eq!(
            new.data()["minions"].as_array().map(Vec::len),
            meta["minions"].as_array().map(Vec::len)
        );
    }
}

#[test]
fn captured_zmtp_greeting_and_ready() {
    let mut seen = 0;
    for dir in captures() {
        if meta(&dir)["transport"] != "zeromq" {
            continue;
        }
        let hello =
            read(&dir, "zmtp_server_hello.bin").expect("zmtp_server_hello.bin in a zeromq capture");
        seen += 1;
        zmtp::check_greeting(&hello[..64]).expect("server greeting is ZMTP 3 NULL");
        assert_eq!(&hello[10..12], &[3, 1], "ZMTP 3.1");
        let mut buf = BytesMut::from(&hello[64..]);
        let frame = zmtp::parse_frame(&mut buf)
            .expect("parses")
            .expect("complete");
        assert!(frame.command && !frame.more);
        assert_eq!(zmtp::command_name(&frame.body), Some(&b"READY"[..]));
        let props = &frame.body[6..];
        // Socket-Type=ROUTER is the first property.
        assert_eq!(props[0] as usize, b"Socket-Type".len());
        assert_eq!(&props[1..12], b"Socket-Type");
        assert_eq!(&props[12..16], &6u32.to_be_bytes());
        assert_eq!(&props[16..22], b"ROUTER");
        assert!(buf.is_empty(), "nothing after READY");
        // Partial input asks for more.
        let mut part = BytesMut::from(&hello[64..hello.len() - 1]);
        assert!(zmtp::parse_frame(&mut part).expect("no error").is_none());
    }
    assert!(seen > 0, "no zeromq capture");
}

#[test]
fn captured_replies_become_values_and_errors() {
    let mut seen = 0;
    for dir in captures() {
        let meta = meta(&dir);
        if meta["transport"] != "zeromq" {
            continue;
        }
        let ping = read(&dir, "reply_ping.bin").expect("reply_ping.bin in a zeromq capture");
        seen += 1;
        let version = meta["version"].as_str().expect("version");
        let decode = |name: &str| value::decode(&read(&dir, name).expect(name)).expect("msgpack");
        let r = interpret_reply(value::decode(&ping).expect("msgpack")).expect("ping ok");
        assert_eq!(
            value::to_json(&r),
            json!({"cmd": "ping", "capture": 1}),
            "{version}"
        );

        let r = interpret_reply(decode("reply_publish.bin")).expect("publish ok");
        let r = value::to_json(&r);
        assert_eq!(r["jid"], meta["jid"], "{version}: {r}");
        let mut minions: Vec<Json> = r["minions"].as_array().cloned().unwrap_or_default();
        minions.sort_by_key(|m| m.to_string());
        assert_eq!(Json::Array(minions), meta["minions"], "{version}: {r}");

        let e = interpret_reply(decode("reply_auth_error.bin")).expect_err("auth error");
        assert_eq!(e.kind(), ErrorKind::Authentication, "{version}: {e:?}");
        let e = interpret_reply(decode("reply_exception.bin")).expect_err("exception");
        assert_eq!(e.kind(), ErrorKind::Master, "{version}: {e:?}");
    }
    assert!(seen > 0, "no zeromq capture");
}

#[test]
fn captured_tcp_transport_reply_frames() {
    let mut seen = 0;
    for dir in captures() {
        if meta(&dir)["transport"] != "tcp" {
            continue;
        }
        let raw = read(&dir, "tcp_reply_ping.bin").expect("tcp_reply_ping.bin in a tcp capture");
        seen += 1;
        let (frame, used) = value::decode_prefix(&raw)
            .expect("msgpack")
            .expect("complete");
        assert_eq!(used, raw.len());
        let body = value::get(&frame, "body").expect("body").clone();
        assert!(value::get(&frame, "head")
            .and_then(|h| value::get(h, "mid"))
            .is_some());
        let r = interpret_reply(body).expect("ping ok");
        assert_eq!(value::to_json(&r), json!({"cmd": "ping", "capture": 1}));
    }
    assert!(seen > 0, "no tcp transport capture");
}
