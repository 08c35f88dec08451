//! The msgpack → JSON conversion compared with Salt's own salt-api: the same
//! lowstate through `Netapi::run` and through rest_cherrypy's `/run`
//! (`$SALT_API_URL`) must give the same JSON.

use crate::common::{auto, netapi, ok, Lab};
use salt_client::clients::Netapi;
use serde_json::{json, Value as Json};

/// The same lowstate through Salt's own rest_cherrypy `/run`.
async fn salt_api(lab: &Lab, l: &Json) -> Json {
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/run", lab.api_url))
        .header("Accept", "application/json")
        .json(&json!([l]))
        .send()
        .await
        .unwrap_or_else(|e| panic!("salt-api at {} is not reachable: {e}", lab.api_url));
    let status = resp.status();
    let body: Json = resp.json().await.expect("salt-api answers JSON");
    assert!(status.is_success(), "salt-api: {status} {body}");
    body["return"][0].clone()
}

async fn both(lab: &Lab, n: &Netapi, l: Json) -> (Json, Json) {
    let ours_low = auto(l);
    let ours = ok(n, ours_low.clone()).await;
    let mut with_creds = Json::Object(ours_low);
    with_creds["eauth"] = json!("auto");
    with_creds["username"] = json!("saltdev");
    with_creds["password"] = json!("x");
    let theirs = salt_api(lab, &with_creds).await;
    (ours, theirs)
}

#[tokio::test]
async fn local_big_integers_and_integer_keys_match_salt_api() {
    let (lab, n) = netapi().await;
    // "m={1: a, 2: [b]}" is parsed by the minion (YAML) into a dict with
    // integer keys; JSON has to write them as strings, as json.dumps does.
    let l = json!({"client": "local", "tgt": "ms-0", "fun": "test.arg",
        "arg": [u64::MAX, i64::MIN, 9007199254740993u64, -1, 1.25, "m={1: a, 2: [b]}", "t=2026-11-26 20:37:24"],
        "kwarg": {"nested": {"deep": [u64::MAX, {"x": null}]}, "unicode": "ünï©ødé ✓"}});
    let (mut ours, mut theirs) = both(&lab, &n, l).await;
    // test.arg echoes the job's `__pub_*` keywords; only the jid differs.
    for v in [&mut ours, &mut theirs] {
        let kwargs = v["ms-0"]["kwargs"].as_object_mut().expect("kwargs");
        assert!(kwargs.remove("__pub_jid").is_some(), "__pub_jid echoed");
    }
    assert_eq!(ours, theirs);
    // Integers whose text is 20 characters become strings (condition_input).
    assert_eq!(
        ours["ms-0"]["args"][0],
        json!("18446744073709551615"),
        "{ours}"
    );
    assert_eq!(
        ours["ms-0"]["args"][1],
        json!("-9223372036854775808"),
        "{ours}"
    );
    assert_eq!(
        ours["ms-0"]["kwargs"]["nested"]["deep"][0],
        json!(u64::MAX),
        "{ours}"
    );
    assert_eq!(
        ours["ms-0"]["kwargs"]["m"],
        json!({"1": "a", "2": ["b"]}),
        "{ours}"
    );
}

#[tokio::test]
async fn local_full_return_matches_salt_api_apart_from_jid() {
    let (lab, n) = netapi().await;
    let l = json!({"client": "local", "tgt": "*", "fun": "test.echo", "arg": ["same"], "full_return": true});
    let (mut ours, mut theirs) = both(&lab, &n, l).await;
    assert_eq!(
        ours.as_object().map(|m| m.len()),
        Some(lab.minions.len()),
        "{ours}"
    );
    for id in &lab.minions {
        assert_eq!(ours[id]["ret"], json!("same"), "{ours}");
    }
    for v in [&mut ours, &mut theirs] {
        for (_, m) in v.as_object_mut().expect("map").iter_mut() {
            m.as_object_mut()
                .expect("map")
                .remove("jid")
                .expect("jid present");
        }
    }
    assert_eq!(ours, theirs);
}

#[tokio::test]
async fn runner_results_match_salt_api() {
    let (lab, n) = netapi().await;
    let l = json!({"client": "runner", "fun": "test.arg",
        "arg": [u64::MAX, "k={3: c}"], "kwarg": {"big": i64::MIN, "list": [1, 2.5, "x"]}});
    let (ours, theirs) = both(&lab, &n, l).await;
    assert_eq!(ours, theirs);
    assert_eq!(ours["kwargs"]["big"], json!(i64::MIN), "{ours}");
}

#[tokio::test]
async fn wheel_results_match_salt_api() {
    let (lab, n) = netapi().await;
    let l = json!({"client": "wheel", "fun": "key.list_all"});
    let (ours, theirs) = both(&lab, &n, l).await;
    assert_eq!(ours["data"]["return"], theirs["data"]["return"]);
    assert_eq!(ours["data"]["success"], theirs["data"]["success"]);
    assert_eq!(ours["data"]["fun"], theirs["data"]["fun"]);
}

#[tokio::test]
async fn no_match_matches_salt_api() {
    let (lab, n) = netapi().await;
    let (ours, theirs) = both(
        &lab,
        &n,
        json!({"client": "local", "tgt": "nobody-*", "fun": "test.ping"}),
    )
    .await;
    assert_eq!(ours, theirs);
    assert_eq!(ours, json!({}));
}
