//! Frames, fan-out and bounds, without a master.

use super::*;
use serde_json::json;

/// A bus whose master is never there: events reach it through `dispatch`.
/// A bus whose events the test dispatches itself: taken as connected
/// (a waiter on a bus that is not connected ends at once).
fn offline_bus() -> EventBus {
    let bus = EventBus::start_at(
        Endpoint::Unix("/nonexistent/pub".into()),
        Endpoint::Unix("/nonexistent/pull".into()),
    );
    bus.shared.connected.send_replace(true);
    bus
}

#[tokio::test]
async fn a_lost_bus_ends_its_waiters_after_what_they_had_received() {
    let bus = offline_bus();
    let jid = "20260101000000000006";
    let mut w = bus.subscribe_jid(jid);
    let data = Bytes::from(value::encode(&value::from_json(&json!({"return": true}))));
    dispatch(
        &bus.shared,
        Event::new(format!("salt/job/{jid}/ret/m-0"), data),
    );
    assert!(!w.bus_lost());
    // What the socket task does when the subscription drops.
    bus.shared.connected.send_replace(false);
    mark_bus_lost(&bus.shared);
    assert!(w.bus_lost());
    assert!(matches!(w.recv().await, Some(ev) if ev.tag.ends_with("/m-0")));
    let end = tokio::time::timeout(Duration::from_secs(5), w.recv()).await;
    assert!(matches!(end, Ok(None)), "ends, does not wait");
    // Registered while the bus is not connected: lost at once.
    let mut late = bus.subscribe_jid("20260101000000000007");
    assert!(late.bus_lost());
    let end = tokio::time::timeout(Duration::from_secs(5), late.recv()).await;
    assert!(matches!(end, Ok(None)));
    // A waiter's queue gives its room back once emptied.
    assert_eq!(w.queue.events.lock().expect("lock").capacity(), 0);
}

fn frame_bytes(tag: &str, data: &Json, framing: Framing) -> Vec<u8> {
    encode_frame(&pack_body(tag, data), framing)
}

#[test]
fn frame_walker_matches_a_full_decode() {
    for data in [
        json!({"a": 1}),
        json!({"return": "x".repeat(70_000)}),
        json!(null),
    ] {
        let body = pack_body("salt/job/1/ret/m", &data);
        // body as bin (3006+) and as str (what 3008 accepts on the pull side)
        for msg in [
            value::map([
                ("head", Mp::Map(vec![])),
                ("body", Mp::Binary(body.clone())),
            ]),
            value::map([
                (
                    "body",
                    Mp::from(String::from_utf8_lossy(&body).into_owned()),
                ),
                ("head", Mp::Map(vec![])),
            ]),
        ] {
            let frame = Bytes::from(value::encode(&msg));
            let ev = event_from_frame(&frame)
                .expect("valid")
                .expect("has a body");
            assert_eq!(ev.tag, "salt/job/1/ret/m");
            if msg.as_map().is_some_and(|m| matches!(m[0].1, Mp::Map(_))) {
                assert_eq!(ev.data(), &data);
            }
        }
    }
    let no_body = Bytes::from(value::encode(&value::map([("head", Mp::Map(vec![]))])));
    assert!(event_from_frame(&no_body).expect("valid").is_none());
    let truncated = Bytes::from(vec![0x81, 0xa4, b'b', b'o', b'd', b'y', 0xc4, 0x10, 1, 2]);
    assert!(event_from_frame(&truncated).is_err());
}

#[tokio::test]
async fn recent_runner_events_are_replayed_and_evicted() {
    let bus = offline_bus();
    let data = Bytes::from(value::encode(&value::from_json(&json!({"return": 1}))));
    for i in 0..(RECENT_EVENTS + 10) {
        dispatch(
            &bus.shared,
            Event::new(format!("salt/run/{:020}/ret", i), data.clone()),
        );
    }
    // The oldest were evicted, the newest are replayed to a late waiter.
    let mut late = bus.subscribe_jid(&format!("{:020}", RECENT_EVENTS + 9));
    let ev = late.recv().await.expect("replayed");
    assert_eq!(ev.data(), &json!({"return": 1}));
    let mut early = bus.subscribe_jid(&format!("{:020}", 0));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), early.recv())
            .await
            .is_err()
    );
    let state = bus.shared.state.lock().expect("lock");
    assert_eq!(state.recent.len(), RECENT_EVENTS);
    assert_eq!(state.recent_by_jid.len(), RECENT_EVENTS);
}

/// Everything queued for `w` right now.
async fn drain(w: &mut JidSubscription) -> Vec<Arc<Event>> {
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(20), w.recv()).await {
        out.push(ev);
    }
    out
}

#[tokio::test]
async fn a_full_waiter_loses_other_events_but_never_a_return() {
    let bus = offline_bus();
    let jid = "20260101000000000001";
    let mut w = bus.subscribe_jid(jid);
    let data = Bytes::from(value::encode(&value::from_json(&json!({"return": true}))));
    // The waiter does not read: first its queue fills with progress
    // events, then 10,000 minions return at once, among unrelated events.
    for i in 0..(JID_QUEUE + 100) {
        dispatch(
            &bus.shared,
            Event::new(format!("salt/job/{jid}/prog/m-{i}/0"), data.clone()),
        );
    }
    for i in 0..10_000 {
        dispatch(
            &bus.shared,
            Event::new(format!("salt/job/{jid}/ret/m-{i}"), data.clone()),
        );
        dispatch(
            &bus.shared,
            Event::new(format!("minion_start/other-{i}"), data.clone()),
        );
    }
    assert!(
        w.lost_events(),
        "the progress events beyond the queue were dropped"
    );
    assert!(!w.lost_returns());
    let got = drain(&mut w).await;
    let returns = got.iter().filter(|e| is_return_tag(&e.tag)).count();
    assert_eq!(returns, 10_000, "no return was lost");
    assert_eq!(got.len() - returns, JID_QUEUE);
    // Receiving gave the room back: the queue takes events again.
    dispatch(
        &bus.shared,
        Event::new(format!("salt/job/{jid}/prog/late/0"), data.clone()),
    );
    assert_eq!(drain(&mut w).await.len(), 1);
}

#[tokio::test]
async fn a_waiting_receiver_is_woken_and_a_cancelled_one_loses_nothing() {
    let bus = offline_bus();
    let jid = "20260101000000000002";
    let data = Bytes::from(value::encode(&value::from_json(&json!({"return": true}))));
    let mut w = bus.subscribe_jid(jid);
    // A receive cancelled while it waits (as `select!` cancels it) ...
    assert!(tokio::time::timeout(Duration::from_millis(20), w.recv())
        .await
        .is_err());
    // ... then an event, and a receiver already waiting when it comes.
    let waiting = tokio::spawn(async move {
        let first = w.recv().await.map(|e| e.tag.clone());
        let second = w.recv().await.map(|e| e.tag.clone());
        (first, second)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    for m in ["m-0", "m-1"] {
        dispatch(
            &bus.shared,
            Event::new(format!("salt/job/{jid}/ret/{m}"), data.clone()),
        );
    }
    let (first, second) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting receiver was woken")
        .expect("no panic");
    assert_eq!(first.as_deref(), Some(&*format!("salt/job/{jid}/ret/m-0")));
    assert_eq!(second.as_deref(), Some(&*format!("salt/job/{jid}/ret/m-1")));
}

#[tokio::test]
async fn returns_are_bounded_by_bytes() {
    let bus = offline_bus();
    let jid = "20260101000000000002";
    let mut w = bus.subscribe_jid(jid);
    // One shared 1 MiB buffer, charged per event as if each were its own.
    let big = Bytes::from(vec![0xc3; 1 << 20]);
    let n = JID_RETURN_BYTES / (1 << 20) + 20;
    for i in 0..n {
        dispatch(
            &bus.shared,
            Event::new(format!("salt/job/{jid}/ret/m-{i}"), big.clone()),
        );
    }
    assert!(w.lost_events() && w.lost_returns());
    let got = drain(&mut w).await.len();
    let each = (1 << 20) + format!("salt/job/{jid}/ret/m-100").len() + RETURN_OVERHEAD;
    let fits = JID_RETURN_BYTES / each;
    assert!(got < n, "{got} of {n} queued");
    assert!(got.abs_diff(fits) <= 1, "{got} queued, {fits} fit");
}

#[test]
fn return_tags() {
    assert!(is_return_tag("salt/job/20261126203708483354/ret/ms-0"));
    assert!(is_return_tag("salt/run/20261126203708483354/ret"));
    assert!(is_return_tag("salt/wheel/20261126203708483354/ret"));
    assert!(!is_return_tag("salt/job/20261126203708483354/new"));
    assert!(!is_return_tag("salt/job/20261126203708483354/prog/ms-0/0"));
    assert!(!is_return_tag("salt/auth"));
    assert!(!is_return_tag("ret"));
}

#[test]
fn jid_extraction() {
    assert_eq!(
        jid_of_tag("salt/job/20261126203708483354/ret/ms-0"),
        Some("20261126203708483354")
    );
    assert_eq!(
        jid_of_tag("salt/run/20261126203708483354/ret"),
        Some("20261126203708483354")
    );
    assert_eq!(
        jid_of_tag("20261126203708483354"),
        Some("20261126203708483354")
    );
    assert_eq!(jid_of_tag("salt/auth"), None);
    assert_eq!(jid_of_tag("minion_start"), None);
    assert_eq!(jid_of_tag("salt/job//ret"), None);
}

#[test]
fn detects_both_framings_and_decodes_stream_split_anywhere() {
    for framing in [Framing::Bare, Framing::Prefixed] {
        let mut stream = frame_bytes("a/b", &json!({"x": 1}), framing);
        stream.extend(frame_bytes(
            "salt/job/1/ret/m",
            &json!({"return": [1, 2]}),
            framing,
        ));
        for split in 0..stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            d.extend(&stream[..split]);
            while let Some(e) = d.next_event().expect("valid") {
                got.push(e);
            }
            d.extend(&stream[split..]);
            while let Some(e) = d.next_event().expect("valid") {
                got.push(e);
            }
            assert_eq!(d.framing(), Some(framing));
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].tag, "a/b");
            assert_eq!(got[1].data(), &json!({"return": [1, 2]}));
        }
    }
}

#[test]
fn frames_read_after_a_large_one_do_not_keep_its_buffer() {
    for framing in [Framing::Bare, Framing::Prefixed] {
        let large = frame_bytes(
            "salt/job/1/new",
            &json!({"m": "x".repeat(300_000)}),
            framing,
        );
        let mut d = FrameDecoder::new();
        // Room reserved ahead, as the bus's read loop does: what is read
        // next would go into the same allocation.
        d.buffer().reserve(large.len() + 64 * 1024);
        d.extend(&large);
        let big = d.next_event().expect("valid").expect("the large event");
        assert_eq!(big.tag, "salt/job/1/new");
        assert!(d.next_event().expect("valid").is_none(), "more is needed");
        for i in 0..3 {
            d.extend(&frame_bytes(
                &format!("salt/job/1/ret/m{i}"),
                &json!({"return": true}),
                framing,
            ));
        }
        // `big` keeps its allocation alive, so no other allocation lies in
        // this range; without the move, the frames read after it would.
        let start = big.raw.as_ptr() as usize;
        let range = start..start + large.len() + 64 * 1024;
        for i in 0..3 {
            let small = d.next_event().expect("valid").expect("a small event");
            assert_eq!(small.tag, format!("salt/job/1/ret/m{i}"));
            assert!(
                !range.contains(&(small.raw.as_ptr() as usize)),
                "{framing:?}: a frame read later lies in the large frame's buffer"
            );
        }
        assert!(d.next_event().expect("valid").is_none());
    }
}

#[test]
fn msgpack_len_matches_encoder() {
    let samples = [
        json!(null),
        json!([1, 2, {"a": "b"}]),
        json!({"k": "x".repeat(300), "n": -5, "f": 1.5, "big": u64::MAX}),
        json!("y".repeat(70000)),
    ];
    for s in samples {
        let bytes = value::encode(&value::from_json(&s));
        assert_eq!(msgpack_len(&bytes), Ok(Some(bytes.len())));
        assert_eq!(msgpack_len(&bytes[..bytes.len() - 1]), Ok(None));
    }
    assert!(msgpack_len(&[0xc1]).is_err());
}

#[test]
fn garbage_prefixed_length_is_an_error_not_an_allocation() {
    let mut d = FrameDecoder::new();
    d.extend(&[0x7f, 0xff, 0xff, 0xff, 0x00]);
    assert!(d.next_event().is_err());
}

#[tokio::test]
async fn a_shaping_waiter_gets_its_returns_shaped_and_the_rest_as_events() {
    let bus = offline_bus();
    let jid = "20260101000000000003";
    let mut w = bus.subscribe_jid(jid);
    let data = Bytes::from(value::encode(&value::from_json(&json!({"return": true}))));
    let ret = |m: &str| Event::new(format!("salt/job/{jid}/ret/{m}"), data.clone());
    // Before the shaper: an event.
    dispatch(&bus.shared, ret("early"));
    assert!(w.shape_returns(Box::new(|ev: &Event| {
        let id = ev.tag.rsplit('/').next()?;
        // A return the shaper will not take stays an event.
        if id == "odd" {
            return None;
        }
        Shaped::new(id, |out| {
            out.extend_from_slice(format!("={}", ev.data()["return"]).as_bytes())
        })
    })));
    assert!(!w.shape_returns(Box::new(|_: &Event| None)), "set once");
    dispatch(&bus.shared, ret("m-0"));
    dispatch(
        &bus.shared,
        Event::new(format!("salt/job/{jid}/new"), data.clone()),
    );
    dispatch(&bus.shared, ret("odd"));
    dispatch(&bus.shared, ret("m-1"));
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(20), w.recv_delivery()).await
    {
        got.push(match d {
            Delivery::Event(ev) => format!("event {}", ev.tag),
            Delivery::Shaped(s) => {
                let id = s.id().to_owned();
                format!(
                    "shaped {id} {id}{}",
                    String::from_utf8_lossy(&s.into_text())
                )
            }
        });
    }
    assert_eq!(
        got,
        [
            format!("event salt/job/{jid}/ret/early"),
            "shaped m-0 m-0=true".to_owned(),
            format!("event salt/job/{jid}/new"),
            format!("event salt/job/{jid}/ret/odd"),
            "shaped m-1 m-1=true".to_owned(),
        ],
        "in arrival order"
    );
    // Every delivery gave its room back.
    assert_eq!(w.queue.return_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(w.queue.others.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn shaped_returns_are_bounded_by_bytes() {
    let bus = offline_bus();
    let jid = "20260101000000000004";
    let w = bus.subscribe_jid(jid);
    // A shaper that makes 1 MiB of text of each return.
    w.shape_returns(Box::new(|ev: &Event| {
        Shaped::new(ev.tag.rsplit('/').next()?, |out| {
            out.extend_from_slice(&vec![b'x'; 1 << 20])
        })
    }));
    let data = Bytes::from(value::encode(&value::from_json(&json!({"return": true}))));
    let n = JID_RETURN_BYTES / (1 << 20) + 20;
    for i in 0..n {
        dispatch(
            &bus.shared,
            Event::new(format!("salt/job/{jid}/ret/m-{i}"), data.clone()),
        );
    }
    assert!(w.lost_returns());
    let queued: usize = w
        .queue
        .events
        .lock()
        .expect("lock")
        .iter()
        .map(|q| match q {
            Queued::Returns(run) => run.len(),
            Queued::Event(_) => 0,
        })
        .sum();
    let each = (1 << 20) + "m-100".len() + SHAPED_OVERHEAD;
    assert!(queued <= JID_RETURN_BYTES && queued + each > JID_RETURN_BYTES);
    assert_eq!(
        queued,
        w.queue.return_bytes.load(Ordering::Relaxed) as usize
    );
}

#[tokio::test]
async fn returns_that_arrive_together_share_runs_of_text() {
    let bus = offline_bus();
    let jid = "20260101000000000005";
    let mut w = bus.subscribe_jid(jid);
    w.shape_returns(Box::new(|ev: &Event| {
        Shaped::new(ev.tag.rsplit('/').next()?, |out| {
            out.extend_from_slice(b"true")
        })
    }));
    let data = Bytes::from(value::encode(&value::from_json(&json!({"return": true}))));
    let ret = |m: &str| Event::new(format!("salt/job/{jid}/ret/{m}"), data.clone());
    // 10,000 returns before the waiter reads any: a few runs, each within
    // its room (a slot and an allocation each would be ~60 bytes a return).
    for i in 0..10_000 {
        dispatch(&bus.shared, ret(&format!("m-{i}")));
    }
    dispatch(
        &bus.shared,
        Event::new(format!("salt/job/{jid}/new"), data.clone()),
    );
    dispatch(&bus.shared, ret("last"));
    {
        let queue = w.queue.events.lock().expect("lock");
        let room: usize = queue
            .iter()
            .map(|q| match q {
                Queued::Returns(run) => run.capacity(),
                Queued::Event(_) => 0,
            })
            .sum();
        let text: usize = (0..10_000)
            .map(|i| format!("m-{i}true").len() + SHAPED_OVERHEAD)
            .sum();
        assert!(queue.len() < 30, "{} entries", queue.len());
        // Each run is full to within one return but the last: at most one
        // run's room beyond the text, and a return's for each run.
        let slack = RUN_BYTES + queue.len() * "m-9999true".len();
        assert!(room <= text + slack, "{room} bytes of room for {text}");
    }
    for i in 0..10_000 {
        match w.recv_delivery().await {
            Some(Delivery::Shaped(s)) => {
                assert_eq!(s.id(), format!("m-{i}"));
                assert_eq!(&s.into_text()[..], b"true");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        matches!(w.recv_delivery().await, Some(Delivery::Event(ev)) if ev.tag.ends_with("/new"))
    );
    assert!(matches!(w.recv_delivery().await, Some(Delivery::Shaped(s)) if s.id() == "last"));
    assert_eq!(w.queue.return_bytes.load(Ordering::Relaxed), 0);
    assert!(w.queue.events.lock().expect("lock").is_empty());
}

#[test]
fn a_queued_event_is_a_few_words() {
    // Every waiter queue slot is this size.
    assert!(
        std::mem::size_of::<Queued>() <= 32,
        "{}",
        std::mem::size_of::<Queued>()
    );
}

#[tokio::test]
async fn next_event_is_one_event_and_no_subscription() {
    let bus = offline_bus();
    let data = Bytes::from(value::encode(&value::from_json(&json!({"a": 1}))));
    // Callers that gave up are forgotten by the next caller.
    for _ in 0..100 {
        drop(bus.next_event());
    }
    let next = bus.next_event();
    assert_eq!(bus.shared.next_event.lock().expect("lock").len(), 1);
    assert_eq!(
        bus.shared.stream.receiver_count(),
        0,
        "not a stream subscriber"
    );
    dispatch(&bus.shared, Event::new("first".into(), data.clone()));
    dispatch(&bus.shared, Event::new("second".into(), data.clone()));
    let got = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("resolved")
        .expect("an event");
    assert_eq!(got.tag, "first");
    assert!(bus.shared.next_event.lock().expect("lock").is_empty());
}

#[test]
fn one_list_of_event_data_is_read_without_the_rest() {
    let names = |data: &Json, key: &str| {
        let bytes = value::encode(&value::from_json(data));
        let mut out = Vec::new();
        let read = map_strings(&bytes, key, |s| out.push(s.to_owned()));
        (read.map(|()| out), bytes)
    };
    // Other keys (nested containers among them) before and after it; items
    // that are not strings skipped.
    let data = json!({"arg": [["a", 1], {"k": [null, 1.5, "x"]}], "tgt": "*",
        "minions": ["ms-0", 7, {"x": ["ms-9"]}, "é", [], "ms-1"], "missing": ["gone"],
        "_stamp": "2026-11-30T15:16:00.000000"});
    assert_eq!(
        names(&data, "minions").0,
        Ok(vec!["ms-0".into(), "é".into(), "ms-1".into()])
    );
    assert_eq!(names(&data, "missing").0, Ok(vec!["gone".into()]));
    assert_eq!(names(&data, "absent").0, Ok(vec![]));
    // Not a list under the key: nothing.
    assert_eq!(names(&json!({"minions": "ms-0"}), "minions").0, Ok(vec![]));
    // 10,000 names (a 16-bit array length).
    let many: Vec<String> = (0..10_000).map(|i| format!("sim-{i}")).collect();
    assert_eq!(names(&json!({"minions": many}), "minions").0, Ok(many));
    // One string: the stamp, among containers.
    let bytes = value::encode(&value::from_json(&data));
    assert_eq!(
        map_string(&bytes, "_stamp"),
        Ok(Some("2026-11-30T15:16:00.000000"))
    );
    assert_eq!(map_string(&bytes, "tgt"), Ok(Some("*")));
    assert_eq!(map_string(&bytes, "arg"), Ok(None), "not a string");
    assert_eq!(map_string(&bytes, "absent"), Ok(None));
    // Not a map, or cut anywhere: an error, never a panic or a wrong name.
    assert!(names(&json!(["minions"]), "minions").0.is_err());
    let (_, bytes) = names(&data, "minions");
    for cut in 0..bytes.len() {
        let mut seen = Vec::new();
        if map_strings(&bytes[..cut], "minions", |s| seen.push(s)).is_ok() {
            panic!("a cut at {cut} read as whole");
        }
        assert!(seen.iter().all(|s| ["ms-0", "é", "ms-1"].contains(s)));
        match map_string(&bytes[..cut], "_stamp") {
            Ok(Some(stamp)) => assert_eq!(stamp, "2026-11-30T15:16:00.000000"),
            Ok(None) => panic!("a cut at {cut} read as whole"),
            Err(_) => {}
        }
    }
}
