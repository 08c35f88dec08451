//! `mk_token` / `get_token` against the real master, and tokens used as the
//! credentials of local, runner and wheel lowstates.

use crate::common::{low, netapi, ok};
use salt_client::auth::{get_token, mk_token, permissions};
use salt_client::clients::Netapi;
use serde_json::{json, Map, Value as Json};

async fn token_works_everywhere(n: &Netapi, token: &str, minions: &Json) {
    let r = ok(n, low(json!({"client": "local", "tgt": "*", "fun": "test.ping", "token": token, "timeout": crate::common::LOCAL_TIMEOUT}))).await;
    assert_eq!(&r, minions);
    let r = ok(
        n,
        low(json!({"client": "local_async", "tgt": "ms-0", "fun": "test.ping", "token": token})),
    )
    .await;
    assert_eq!(r["minions"], json!(["ms-0"]), "{r}");
    let r = ok(
        n,
        low(json!({"client": "runner", "fun": "test.arg", "arg": ["t"], "token": token})),
    )
    .await;
    assert_eq!(r["args"], json!(["t"]), "{r}");
    let r = ok(
        n,
        low(json!({"client": "wheel", "fun": "key.list_all", "token": token})),
    )
    .await;
    assert_eq!(r["data"]["success"], json!(true), "{r}");
}

#[tokio::test]
async fn auto_token_round_trip() {
    let (lab, n) = netapi().await;
    let m = n.master();
    let token = mk_token(m, "auto", "saltdev", "whatever", &Map::new())
        .await
        .expect("request succeeds")
        .expect("auto accepts saltdev");
    let text = token["token"].as_str().expect("token text").to_owned();
    assert!(
        text.len() >= 32 && text.bytes().all(|b| b.is_ascii_hexdigit()),
        "{text}"
    );
    assert_eq!(token["name"], json!("saltdev"));
    assert_eq!(token["eauth"], json!("auto"));
    let start = token["start"].as_f64().expect("start is a number");
    let expire = token["expire"].as_f64().expect("expire is a number");
    assert!(expire > start, "{token:?}");

    let record = get_token(m, &text)
        .await
        .expect("request")
        .expect("known token");
    assert_eq!(record["token"], json!(text));
    assert_eq!(record["name"], json!("saltdev"));
    assert_eq!(record["expire"], token["expire"]);

    let perms = permissions(m.config().external_auth(), &record);
    assert!(perms.contains(&json!("@runner")), "{perms:?}");

    token_works_everywhere(&n, &text, &lab.all(json!(true))).await;
}

#[tokio::test]
async fn pam_token_round_trip() {
    let (lab, n) = netapi().await;
    let m = n.master();
    let token = mk_token(m, "pam", &lab.pam_user, &lab.pam_password, &Map::new())
        .await
        .expect("request succeeds")
        .expect("PAM accepts the lab user");
    let text = token["token"].as_str().expect("token").to_owned();
    assert_eq!(token["eauth"], json!("pam"));
    assert_eq!(token["name"], json!(lab.pam_user));
    let record = get_token(m, &text).await.expect("request").expect("known");
    assert_eq!(record["eauth"], json!("pam"));
    token_works_everywhere(&n, &text, &lab.all(json!(true))).await;
}

#[tokio::test]
async fn rejected_credentials_and_unknown_tokens() {
    let (lab, n) = netapi().await;
    let m = n.master();
    // The master answers "" for rejected credentials (after its PAM delay).
    let none = mk_token(m, "pam", &lab.pam_user, "not-the-password", &Map::new())
        .await
        .expect("request succeeds");
    assert!(none.is_none(), "{none:?}");
    let none = mk_token(m, "no-such-backend", "x", "y", &Map::new())
        .await
        .expect("request");
    assert!(none.is_none(), "{none:?}");
    let unknown = get_token(m, &"ab".repeat(32)).await.expect("request");
    assert!(unknown.is_none(), "{unknown:?}");
}
