//! Every NetapiClient client through `Netapi::run`, against the real lab.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{auto, netapi, ok, wait_event};
use salt_client::clients::Output;
use serde_json::{json, Value as Json};

#[tokio::test]
async fn local_glob_list_and_pcre_targets() {
    let (lab, n) = netapi().await;
    let all = lab.all(json!(true));
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, all);
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "ms-*", "fun": "test.ping", "tgt_type": "glob"})),
    )
    .await;
    assert_eq!(r, all);
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": ["ms-0", "ms-2"], "tgt_type": "list", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, lab.only(&["ms-0", "ms-2"], json!(true)));
    // A comma separated list is a list target too.
    let r = ok(
        &n,
        auto(
            json!({"client": "local", "tgt": "ms-1,ms-2", "tgt_type": "list", "fun": "test.ping"}),
        ),
    )
    .await;
    assert_eq!(r, lab.only(&["ms-1", "ms-2"], json!(true)));
    let r = ok(
        &n,
        auto(
            json!({"client": "local", "tgt": "^ms-[01]$", "tgt_type": "pcre", "fun": "test.ping"}),
        ),
    )
    .await;
    assert_eq!(r, lab.only(&["ms-0", "ms-1"], json!(true)));
}

#[tokio::test]
async fn local_grain_compound_nodegroup_ipcidr_pillar_targets() {
    let (lab, n) = netapi().await;
    let one = |id: &str| lab.only(&[id], json!(true));
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "id:ms-1", "tgt_type": "grain", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, one("ms-1"));
    let r = ok(&n, auto(json!({"client": "local", "tgt": "G@id:ms-1", "tgt_type": "compound", "fun": "test.ping"}))).await;
    assert_eq!(r, one("ms-1"));
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "ms-0 or L@ms-2", "tgt_type": "compound", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, lab.only(&["ms-0", "ms-2"], json!(true)));
    let r = ok(&n, auto(json!({"client": "local", "tgt": "first_two", "tgt_type": "nodegroup", "fun": "test.ping"}))).await;
    assert_eq!(r, lab.only(&["ms-0", "ms-1"], json!(true)));
    let r = ok(&n, auto(json!({"client": "local", "tgt": "group_all", "tgt_type": "nodegroup", "fun": "test.ping"}))).await;
    assert_eq!(r, lab.all(json!(true)));
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "N@first_two and not ms-0", "tgt_type": "compound", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, one("ms-1"));
    let r = ok(&n, auto(json!({"client": "local", "tgt": "127.0.0.0/8", "tgt_type": "ipcidr", "fun": "test.ping"}))).await;
    assert_eq!(r, lab.all(json!(true)));
    // The lab pillar (srv/pillar/lab.sls) has lab:minion: <id>.
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "lab:minion:ms-2", "tgt_type": "pillar", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, one("ms-2"));
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "I@lab:minion:ms-0", "tgt_type": "compound", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, one("ms-0"));
}

#[tokio::test]
async fn local_arg_and_kwarg_shapes() {
    let (lab, n) = netapi().await;
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "ms-0", "fun": "test.arg",
            "arg": ["pos1", 2, "k1=v1"], "kwarg": {"k2": "v2", "k3": [1, {"x": null}]}})),
    )
    .await;
    let ret = &r["ms-0"];
    assert_eq!(ret["args"], json!(["pos1", 2]), "{r}");
    assert_eq!(ret["kwargs"]["k1"], json!("v1"), "{r}");
    assert_eq!(ret["kwargs"]["k2"], json!("v2"), "{r}");
    assert_eq!(ret["kwargs"]["k3"], json!([1, {"x": null}]), "{r}");
    // A scalar arg is one positional argument (rest_cherrypy wraps it).
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "ms-1", "fun": "test.echo", "arg": "hello"})),
    )
    .await;
    assert_eq!(r, lab.only(&["ms-1"], json!("hello")));
    // test.arg without arguments.
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "ms-2", "fun": "test.arg"})),
    )
    .await;
    assert_eq!(r["ms-2"]["args"], json!([]));
}

#[tokio::test]
async fn local_full_return_and_no_match() {
    let (lab, n) = netapi().await;
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "*", "fun": "test.ping", "full_return": true})),
    )
    .await;
    let map = r.as_object().expect("object");
    assert_eq!(map.len(), lab.minions.len(), "{r}");
    let jids: BTreeSet<&str> = map
        .values()
        .map(|v| v["jid"].as_str().expect("jid"))
        .collect();
    assert_eq!(jids.len(), 1, "one jid for all minions: {r}");
    for id in &lab.minions {
        assert_eq!(r[id]["ret"], json!(true), "{r}");
        assert_eq!(r[id]["retcode"], json!(0), "{r}");
        assert_eq!(r[id]["jid"].as_str().map(str::len), Some(20), "{r}");
    }
    let r = ok(
        &n,
        auto(json!({"client": "local", "tgt": "nomatch-*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, json!({}));
    let r = ok(
        &n,
        auto(json!({"client": "local_async", "tgt": "nomatch-*", "fun": "test.ping"})),
    )
    .await;
    assert_eq!(r, json!({}));
}

#[tokio::test]
async fn local_async_returns_jid_and_minions_and_lookup_jid_finds_results() {
    let (lab, n) = netapi().await;
    let mut rx = n.master().bus().subscribe_all();
    let r = ok(
        &n,
        auto(json!({"client": "local_async", "tgt": "*", "fun": "test.arg", "arg": ["lookup"]})),
    )
    .await;
    let jid = r["jid"].as_str().expect("jid").to_owned();
    assert_eq!(jid.len(), 20, "{r}");
    let minions: BTreeSet<String> = serde_json::from_value(r["minions"].clone()).expect("list");
    assert_eq!(
        minions,
        lab.minions.iter().cloned().collect::<BTreeSet<_>>()
    );
    // Wait until every minion has returned, then ask the job cache.
    let mut pending = minions.clone();
    while !pending.is_empty() {
        let prefix = format!("salt/job/{jid}/ret/");
        let ev = wait_event(
            &mut rx,
            Duration::from_secs(180),
            &format!("{prefix}*"),
            |e| e.tag.starts_with(&prefix),
        )
        .await;
        pending.remove(ev.tag.trim_start_matches(&prefix));
    }
    let r = ok(
        &n,
        auto(json!({"client": "runner", "fun": "jobs.lookup_jid", "jid": jid})),
    )
    .await;
    for id in &lab.minions {
        assert_eq!(r[id]["args"], json!(["lookup"]), "{r}");
    }
}

#[tokio::test]
async fn local_batch_count_and_percentage() {
    let (lab, n) = netapi().await;
    for batch in [json!("1"), json!("50%"), json!(2)] {
        let out = n
            .run(auto(
                json!({"client": "local_batch", "tgt": "*", "fun": "test.ping", "batch": batch}),
            ))
            .await
            .unwrap_or_else(|e| panic!("batch {batch}: {e:?}"));
        let Output::Many(items) = out else {
            panic!("local_batch returns a sequence, got {out:?}")
        };
        assert_eq!(items.len(), lab.minions.len(), "batch {batch}: {items:?}");
        let mut seen = BTreeSet::new();
        for item in &items {
            let m = item.as_object().expect("map");
            assert_eq!(m.len(), 1, "single-entry maps: {items:?}");
            let (id, v) = m.iter().next().expect("entry");
            assert_eq!(v, &json!(true), "{items:?}");
            assert!(seen.insert(id.clone()), "{id} twice: {items:?}");
        }
        assert_eq!(seen, lab.minions.iter().cloned().collect());
    }
}

#[tokio::test]
async fn local_subset_runs_on_exactly_n_minions() {
    let (lab, n) = netapi().await;
    let r = ok(
        &n,
        auto(json!({"client": "local_subset", "tgt": "*", "fun": "test.ping", "subset": 2})),
    )
    .await;
    let m = r.as_object().expect("map");
    assert_eq!(m.len(), 2, "{r}");
    for (id, v) in m {
        assert!(lab.minions.contains(id), "{r}");
        assert_eq!(v, &json!(true), "{r}");
    }
}

#[tokio::test]
async fn runner_args_kwargs_and_full_return() {
    let (_lab, n) = netapi().await;
    let r = ok(
        &n,
        auto(json!({"client": "runner", "fun": "test.arg", "arg": ["a", "b=c"], "kwarg": {"d": "e"}})),
    )
    .await;
    assert_eq!(r["args"], json!(["a"]), "{r}");
    assert_eq!(r["kwargs"]["b"], json!("c"), "{r}");
    assert_eq!(r["kwargs"]["d"], json!("e"), "{r}");
    let r = ok(
        &n,
        auto(json!({"client": "runner", "fun": "test.arg", "arg": ["x"], "full_return": true})),
    )
    .await;
    let tag = r["tag"].as_str().expect("tag");
    let jid = r["data"]["jid"].as_str().expect("jid");
    assert_eq!(tag, format!("salt/run/{jid}/ret"), "{r}");
    assert_eq!(r["data"]["return"]["args"], json!(["x"]), "{r}");
    assert_eq!(r["data"]["success"], json!(true), "{r}");
    assert_eq!(r["data"]["fun"], json!("runner.test.arg"), "{r}");
}

#[tokio::test]
async fn runner_async_returns_jid_and_tag_and_the_ret_event_arrives() {
    let (_lab, n) = netapi().await;
    let mut rx = n.master().bus().subscribe_all();
    let r = ok(
        &n,
        auto(json!({"client": "runner_async", "fun": "test.arg", "arg": ["async"]})),
    )
    .await;
    let jid = r["jid"].as_str().expect("jid").to_owned();
    assert_eq!(r["tag"], json!(format!("salt/run/{jid}")), "{r}");
    let tag = format!("salt/run/{jid}/ret");
    let ev = wait_event(&mut rx, Duration::from_secs(180), &tag, |e| e.tag == tag).await;
    assert_eq!(ev.data()["return"]["args"], json!(["async"]));
    assert_eq!(ev.data()["jid"], json!(jid));
}

#[tokio::test]
async fn wheel_key_list_all_and_wheel_async() {
    let (lab, n) = netapi().await;
    let r = ok(&n, auto(json!({"client": "wheel", "fun": "key.list_all"}))).await;
    let tag = r["tag"].as_str().expect("tag");
    assert!(tag.starts_with("salt/wheel/"), "{r}");
    assert_eq!(r["data"]["success"], json!(true), "{r}");
    assert_eq!(r["data"]["fun"], json!("wheel.key.list_all"), "{r}");
    let accepted: BTreeSet<String> =
        serde_json::from_value(r["data"]["return"]["minions"].clone()).expect("minions list");
    for id in &lab.minions {
        assert!(accepted.contains(id), "{id} not accepted: {r}");
    }
    // Function arguments are top-level keys.
    let r = ok(
        &n,
        auto(json!({"client": "wheel", "fun": "key.finger", "match": "ms-0"})),
    )
    .await;
    assert!(r["data"]["return"]["minions"]["ms-0"].is_string(), "{r}");

    let r = ok(
        &n,
        auto(json!({"client": "wheel_async", "fun": "key.list_all"})),
    )
    .await;
    let jid = r["jid"].as_str().expect("jid");
    assert_eq!(jid.len(), 20, "{r}");
    assert_eq!(r["tag"], json!(format!("salt/wheel/{jid}")), "{r}");
    assert_eq!(r.as_object().map(|m| m.len()), Some(2), "{r}");
}

#[tokio::test]
async fn caller_chosen_jid_is_honoured() {
    let (lab, n) = netapi().await;
    let jid = n.master().new_jid();
    let r = ok(&n, auto(json!({"client": "local", "tgt": "*", "fun": "test.ping", "jid": jid, "full_return": true}))).await;
    for id in &lab.minions {
        assert_eq!(r[id]["jid"], Json::String(jid.clone()), "{r}");
    }
}
