//! Many concurrent calls on one `Master`: no empty or partial returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::{auto, netapi, run_one};
use serde_json::{json, Value as Json};
use tokio::sync::broadcast::error::RecvError;

/// Generous per-call budget: 150 jobs at once keep three minions (one
/// process per job) busy for a while on a small machine. This is how long
/// a call may wait before probing minions, not an expectation of speed.
const BUDGET_S: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_local_and_fifty_local_async_calls() {
    let (lab, n) = netapi().await;
    let all = lab.all(json!(true));
    let expected: BTreeSet<String> = lab.minions.iter().cloned().collect();

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
    for i in 0..100 {
        let n = n.clone();
        tasks.spawn(async move {
            let l = auto(
                json!({"client": "local", "tgt": "*", "fun": "test.ping", "timeout": BUDGET_S}),
            );
            (i, "local", run_one(&n, l).await)
        });
    }
    for i in 0..50 {
        let n = n.clone();
        tasks.spawn(async move {
            let l = auto(json!({"client": "local_async", "tgt": "*", "fun": "test.ping"}));
            (i, "local_async", run_one(&n, l).await)
        });
    }
    let mut async_jids = BTreeSet::new();
    let (mut locals, mut asyncs) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (i, client, r) = joined.expect("task did not panic");
        let r = r.unwrap_or_else(|e| panic!("{client} call {i} failed: {e:?}"));
        if client == "local" {
            locals += 1;
            assert_eq!(r, all, "local call {i} returned a partial result");
        } else {
            asyncs += 1;
            let jid = r["jid"]
                .as_str()
                .unwrap_or_else(|| panic!("call {i}: {r}"))
                .to_owned();
            let minions: BTreeSet<String> =
                serde_json::from_value(r["minions"].clone()).expect("list");
            assert_eq!(minions, expected, "local_async call {i}: {r}");
            assert!(async_jids.insert(jid), "jid reused: {r}");
        }
    }
    assert_eq!((locals, asyncs), (100, 50));
    assert_eq!(
        n.master().bus().waiting_jids(),
        0,
        "every waiter unregistered"
    );

    // Every async job's returns arrive too, all `true` (this also leaves the
    // minions idle for the tests that run next).
    let mut seen: BTreeMap<String, BTreeMap<String, Json>> = BTreeMap::new();
    let complete = |seen: &BTreeMap<String, BTreeMap<String, Json>>| {
        async_jids
            .iter()
            .all(|j| seen.get(j).is_some_and(|m| m.len() == expected.len()))
    };
    let done = tokio::time::timeout(Duration::from_secs(BUDGET_S), async {
        while !complete(&seen) {
            let Some((jid, id, ret)) = returns.recv().await else {
                panic!("the return collector stopped")
            };
            if async_jids.contains(&jid) {
                seen.entry(jid).or_default().insert(id, ret);
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "not every local_async job returned from every minion: {seen:?}"
    );
    for (jid, rets) in &seen {
        let ids: BTreeSet<String> = rets.keys().cloned().collect();
        assert_eq!(ids, expected, "job {jid}");
        assert!(
            rets.values().all(|v| v == &json!(true)),
            "job {jid}: {rets:?}"
        );
    }
    drop(n);
    collector.abort();
}
