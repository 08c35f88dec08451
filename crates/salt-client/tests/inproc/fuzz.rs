//! Property-based fuzzing of what salt-client reads from the network: the
//! event bus frame decoder, msgpack decoding and msgpack→JSON conversion,
//! and the bounded YAML reader. Inputs are random bytes and mutations of a
//! kept seed corpus (real frames and documents); `cargo test` runs a fixed
//! budget of cases, and proptest keeps every failing input in a
//! `proptest-regressions/fuzz.txt` file under `tests/`, replayed first on every run.
//!
//! The properties: nothing panics or overflows the stack, the frame walker
//! agrees with a full decode, and parsed values stay within their budgets.

use bytes::Bytes;
use proptest::prelude::*;
use salt_client::events::{
    encode_frame, event_from_frame, map_string, map_strings, msgpack_len, pack_body, FrameDecoder,
    Framing,
};
use salt_client::value;
use serde_json::json;

/// Cases per property: enough to find shallow bugs in a few seconds of a
/// debug build; raise with PROPTEST_CASES for a longer run.
const CASES: u32 = 2048;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(CASES),
        ..ProptestConfig::default()
    }
}

/// Seed bus bodies: the shapes Salt puts on the bus.
fn seed_bodies() -> Vec<Vec<u8>> {
    vec![
        pack_body(
            "salt/job/20261130151600000000/ret/ms-0",
            &json!({"fun": "test.ping", "return": true, "retcode": 0, "success": true,
                    "jid": "20261130151600000000", "id": "ms-0", "_stamp": "2026-11-30T15:16:00.000000"}),
        ),
        pack_body(
            "salt/job/20261130151600000000/new",
            &json!({"minions": ["ms-0", "ms-1"], "arg": [["a", 1], {"k": [null, 1.5]}], "tgt": "*"}),
        ),
        pack_body(
            "salt/auth",
            &json!({"act": "accept", "id": "ms-2", "pub": "-----BEGIN PUBLIC KEY-----"}),
        ),
        value::encode(&value::from_json(&json!({"head": {}, "body": "x"}))),
    ]
}

/// Seed event data: what a job's `new` event carries, msgpack-encoded.
fn seed_event_data() -> Vec<Vec<u8>> {
    [
        json!({"jid": "20261130151600000000", "tgt": "*", "tgt_type": "glob",
               "minions": ["ms-0", "ms-1", "ms-2"], "missing": [], "user": "saltdev",
               "fun": "test.ping", "arg": [], "_stamp": "2026-11-30T15:16:00.000000"}),
        json!({"arg": [["a", 1], {"k": [null, 1.5]}], "minions": ["é", 7, {"x": 1}, "m"]}),
    ]
    .iter()
    .map(|d| value::encode(&value::from_json(d)))
    .collect()
}

/// Seed msgpack: whole bus frames and Salt-shaped values.
fn seed_msgpack() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = seed_bodies()
        .iter()
        .map(|b| encode_frame(b, Framing::Bare))
        .collect();
    seeds.push(value::encode(&value::from_json(
        &json!({"enc": "clear", "load": {"ret": {"ms-0": {"a": [1, -2, 3.5, "é", null, true]}}}}),
    )));
    seeds
}

/// A seed with a few random edits: byte flips, insertions, a cut.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(i, edits, cut)| {
            let mut b = seeds[i].clone();
            for (at, byte, kind) in edits {
                if b.is_empty() {
                    b.push(byte);
                    continue;
                }
                let at = at.index(b.len());
                match kind {
                    0 => b[at] = byte,
                    1 => b.insert(at, byte),
                    _ => {
                        b.remove(at);
                    }
                }
            }
            if !b.is_empty() && cut.index(4) == 0 {
                b.truncate(cut.index(b.len()));
            }
            b
        })
}

fn bytes_input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated(seeds)]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn msgpack_to_json_never_panics(bytes in bytes_input(seed_msgpack())) {
        if let Ok(v) = value::decode(&bytes) {
            let j = value::to_json(&v);
            // And back: JSON from the master becomes a load again.
            let _ = value::encode(&value::from_json(&j));
        }
        let _ = value::decode_prefix(&bytes);
    }

    #[test]
    fn reading_one_list_of_event_data_never_panics(bytes in bytes_input(seed_event_data())) {
        let mut names = 0usize;
        let _ = map_strings(&bytes, "minions", |_| names += 1);
        let _ = map_string(&bytes, "_stamp");
        // Every name is at least its one marker byte.
        prop_assert!(names <= bytes.len());
    }

    #[test]
    fn frame_walker_agrees_with_a_full_decode(bytes in bytes_input(seed_msgpack())) {
        if let (Ok(Some(len)), Ok(Some((_, used)))) = (msgpack_len(&bytes), value::decode_prefix(&bytes)) {
            prop_assert_eq!(len, used);
        }
    }

    #[test]
    fn bus_frames_never_panic(
        bytes in bytes_input(seed_bodies()),
        prefixed in any::<bool>(),
        split in any::<prop::sample::Index>(),
    ) {
        let framing = if prefixed { Framing::Prefixed } else { Framing::Bare };
        let stream = encode_frame(&bytes, framing);
        let _ = event_from_frame(&Bytes::from(bytes.clone()));
        // Fed in two pieces, as a socket delivers it.
        let mut d = FrameDecoder::new();
        let at = split.index(stream.len() + 1);
        d.extend(&stream[..at]);
        let _ = d.next_event();
        d.extend(&stream[at..]);
        for _ in 0..4 {
            match d.next_event() {
                Ok(Some(ev)) => {
                    let _ = ev.data();
                }
                _ => break,
            }
        }
        // Raw garbage as the whole stream.
        let mut raw = FrameDecoder::new();
        raw.extend(&bytes);
        for _ in 0..4 {
            match raw.next_event() {
                Ok(Some(ev)) => {
                    let _ = ev.data();
                }
                _ => break,
            }
        }
    }

    #[test]
    fn yaml_stays_within_its_budget(text in prop_oneof![
        ".{0,200}",
        "[\\[\\]{}&*a-c0-9:, \\n-]{0,200}",
        Just("[&a [0,0,0,0], *a, *a, *a]".to_owned()),
        Just("a: &x {b: 1}\nc: *x\n".to_owned()),
    ]) {
        if let Ok(v) = salt_client::yaml::from_str(&text) {
            let size = v.to_string().len();
            prop_assert!(size <= 8 * (text.len() * salt_client::yaml::UNITS_PER_BYTE + salt_client::yaml::BASE_UNITS));
        }
        let _ = salt_client::clients::yamlify_arg(&text);
    }
}
