//! Many concurrent calls on one `Master`: no empty or partial returns.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{auto, netapi, run_one};
use serde_json::{json, Value as Json};
use tokio::sync::broadcast::error::RecvError;

/// Generous per-call budget: 150 jobs at once keep three minions (one
/// process per job) busy for a while on a small machine. This is how long
/// a call may wait before probing minions, not an expectation of speed.
const BUDGET_S: u64 = 600;

/// 100 synchronous `local` and 50 `local_async` calls at once, each for one
/// minion in turn (one job per call: the test is about the one `Master`'s
/// waiters, not about how fast three minions run 450 Python processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_local_and_fifty_local_async_calls() {
    // 150 jobs at once: the lab is this test's alone (salt_testkit::lab_gate).
    let _alone = salt_testkit::lab_gate::alone();
    let (lab, n) = netapi().await;
    let minion = |i: usize| lab.minions[i % lab.minions.len()].clone();

    // Forward every job return seen on the bus: (jid, minion, return).
    let mut rx = n.master().bus().subscribe_all();
    let (tx, mut returns) = tokio::sync::mpsc::unbounded_channel::<(String, String, Json)>();
    let collector = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.tag.starts_with("salt/job/") && ev.tag.contains("/ret/") => {
                    let jid = ev.jid().unwrap_or_default().to_owned();
                    let id = ev.tag.rsplit('/').next().unwrap_or_default().to_owned();
                    let ret = ev.data().get("return").cloned().unwrap_or(Json::Null);
                    if tx.send((jid, id, ret)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(k)) => panic!("the test fell {k} events behind"),
                Err(RecvError::Closed) => return,
            }
        }
    });

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..150 {
        let n = n.clone();
        let (client, tgt) = (if i < 100 { "local" } else { "local_async" }, minion(i));
        tasks.spawn(async move {
            let l = auto(
                json!({"client": client, "tgt": tgt, "fun": "test.ping", "timeout": BUDGET_S}),
            );
            (i, client, tgt, run_one(&n, l).await)
        });
    }
    // local_async jid -> its minion.
    let mut async_jids = BTreeMap::new();
    let mut locals = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, client, tgt, r) = joined.expect("task did not panic");
        let r = r.unwrap_or_else(|e| panic!("{client} call {i} failed: {e:?}"));
        if client == "local" {
            locals += 1;
            assert_eq!(r, json!({ &tgt: true }), "local call {i}");
        } else {
            let jid = r["jid"]
                .as_str()
                .unwrap_or_else(|| panic!("call {i}: {r}"))
                .to_owned();
            assert_eq!(r["minions"], json!([&tgt]), "local_async call {i}: {r}");
            assert!(async_jids.insert(jid, tgt).is_none(), "jid reused: {r}");
        }
    }
    assert_eq!((locals, async_jids.len()), (100, 50));
    assert_eq!(
        n.master().bus().waiting_jids(),
        0,
        "every waiter unregistered"
    );

    // Every async job's return arrives too, `true` (this also leaves the
    // minions idle for the tests that run next).
    let mut seen: BTreeMap<String, BTreeMap<String, Json>> = BTreeMap::new();
    let done = tokio::time::timeout(Duration::from_secs(BUDGET_S), async {
        while !async_jids.keys().all(|j| seen.contains_key(j)) {
            let Some((jid, id, ret)) = returns.recv().await else {
                panic!("the return collector stopped")
            };
            if async_jids.contains_key(&jid) {
                seen.entry(jid).or_default().insert(id, ret);
            }
        }
    })
    .await;
    assert!(done.is_ok(), "not every local_async job returned: {seen:?}");
    for (jid, rets) in &seen {
        assert_eq!(
            rets,
            &BTreeMap::from([(async_jids[jid].clone(), json!(true))]),
            "job {jid}"
        );
    }
    drop(n);
    collector.abort();
}
