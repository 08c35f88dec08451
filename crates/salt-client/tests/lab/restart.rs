//! Master restart, against the one-minion RESTART lab only (`scripts/test`
//! exports its settings with a `RESTART_` prefix): requests work before,
//! fail cleanly while the master is down, and work again afterwards over a
//! reconnected event bus.

use std::time::{Duration, Instant};

use crate::common::{auto, master_for, ok, restart_lab};
use salt_client::clients::Netapi;
use salt_client::ErrorKind;
use serde_json::json;

#[tokio::test]
async fn master_restart_is_survived() {
    let lab = restart_lab();
    let n = Netapi::new(master_for(lab.master_config()).await);
    let all = lab.all(json!(true));
    let bus = n.master().bus().clone();

    // Before.
    n.master()
        .ping(Duration::from_secs(30))
        .await
        .expect("ping before");
    assert_eq!(
        ok(
            &n,
            auto(json!({"client": "local", "tgt": "*", "fun": "test.ping"}))
        )
        .await,
        all
    );
    let generation = bus.generation();
    assert!(bus.is_connected());

    // Stopped: every call fails at once with Unreachable, no hang.
    lab.script(&["stop-master"]);
    {
        // Whatever happens below, bring the master back for the other tests.
        let _restart = StartMasterOnDrop(&lab);
        let fails_fast = |what: &str, started: Instant, e: salt_client::SaltError| {
            assert_eq!(e.kind(), ErrorKind::Unreachable, "{what}: {e:?}");
            // Well under the 30 s request timeout: refused, not timed out.
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(10),
                "{what}: failing took {took:?}"
            );
        };
        let t = Instant::now();
        let e = n
            .master()
            .ping(Duration::from_secs(30))
            .await
            .expect_err("master is down");
        fails_fast("ping", t, e);
        let t = Instant::now();
        let e = n
            .run(auto(json!({"client": "runner", "fun": "test.arg"})))
            .await
            .expect_err("master is down");
        fails_fast("runner", t, e);
        let t = Instant::now();
        let e = n
            .run(auto(
                json!({"client": "local", "tgt": "*", "fun": "test.ping"}),
            ))
            .await
            .expect_err("master is down");
        fails_fast("local", t, e);
        let t = Instant::now();
        let e = n
            .run(auto(json!({"client": "wheel", "fun": "key.list_all"})))
            .await
            .expect_err("master is down");
        fails_fast("wheel", t, e);
        let t = Instant::now();
        let e =
            salt_client::auth::mk_token(n.master(), "auto", "saltdev", "x", &Default::default())
                .await
                .expect_err("master is down");
        fails_fast("mk_token", t, e);
        assert!(!bus.is_connected(), "the bus noticed the master is gone");
    }

    // After: the next request connects anew; the bus reconnected.
    n.master()
        .ping(Duration::from_secs(30))
        .await
        .expect("ping after restart");
    bus.wait_connected(Duration::from_secs(30))
        .await
        .expect("bus reconnects");
    assert!(
        bus.generation() > generation,
        "bus generation {} -> {}",
        generation,
        bus.generation()
    );
    assert_eq!(
        ok(
            &n,
            auto(json!({"client": "local", "tgt": "*", "fun": "test.ping"}))
        )
        .await,
        all
    );
    let r = ok(
        &n,
        auto(json!({"client": "runner", "fun": "test.arg", "arg": ["back"]})),
    )
    .await;
    assert_eq!(r["args"], json!(["back"]));
    // Firing works again (the pull-side framing is probed anew).
    let mut rx = bus.subscribe_all();
    let tag = format!("halite/test/restart/{}", std::process::id());
    bus.fire(&tag, &json!({"after": "restart"}))
        .await
        .expect("fire after restart");
    let ev =
        crate::common::wait_event(&mut rx, Duration::from_secs(20), &tag, |e| e.tag == tag).await;
    assert_eq!(ev.data()["after"], json!("restart"));
}

/// Starts the restart lab's master again when dropped (also on panic).
struct StartMasterOnDrop<'a>(&'a crate::common::Lab);

impl Drop for StartMasterOnDrop<'_> {
    fn drop(&mut self) {
        self.0.script(&["start-master"]);
    }
}
