//! Eauth tokens through the master: `mk_token` and `get_token`
//! (docs/PROTOCOL.md §3.5.4, §5.10). halite keeps no session state: a token is
//! the master's own, valid on any API server in front of the same master.

use std::time::Duration;

use rmpv::Value as Mp;
use serde_json::{Map, Value as Json};

use crate::error::{Result, SaltError};
use crate::master::Master;
use crate::value;

/// The request timeout for token calls. A failed PAM login is delayed by the
/// master for ~4–5 s on purpose.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A token record as the master stores it.
pub type Token = Map<String, Json>;

/// Ask the master for a token. `Ok(None)` means the credentials were rejected
/// (the master answers `""`).
pub async fn mk_token(
    master: &Master,
    eauth: &str,
    username: &str,
    password: &str,
    extra: &Map<String, Json>,
) -> Result<Option<Token>> {
    let mut load = vec![
        ("cmd".to_owned(), Mp::from("mk_token")),
        ("eauth".to_owned(), Mp::from(eauth)),
        ("username".to_owned(), Mp::from(username)),
        ("password".to_owned(), Mp::from(password)),
    ];
    for (k, v) in extra {
        if !["cmd", "eauth", "username", "password"].contains(&k.as_str()) {
            load.push((k.clone(), value::from_json(v)));
        }
    }
    let reply = value::to_json(&master.request(value::map(load), TOKEN_TIMEOUT).await?);
    match reply {
        Json::Object(m) if m.get("token").and_then(Json::as_str).is_some() => Ok(Some(m)),
        _ => Ok(None),
    }
}

/// Look a token up. `Ok(None)` when unknown or expired.
pub async fn get_token(master: &Master, token: &str) -> Result<Option<Token>> {
    let load = value::map([("cmd", Mp::from("get_token")), ("token", Mp::from(token))]);
    let reply = value::to_json(&master.request(load, TOKEN_TIMEOUT).await?);
    match reply {
        Json::Object(m) if m.get("token").is_some() => {
            let expired = m
                .get("expire")
                .and_then(Json::as_f64)
                .is_some_and(|e| e < chrono::Utc::now().timestamp() as f64);
            Ok(if expired { None } else { Some(m) })
        }
        _ => Ok(None),
    }
}

/// A token must look like one (hex) before it is sent anywhere.
pub fn validate_token_text(token: &str) -> Result<()> {
    if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SaltError::Token("Invalid token".into()));
    }
    Ok(())
}

/// The permissions salt-api reports at `/login`: the eauth ACL entries for
/// the user, for `*` and for each of the token's groups (`<group>%`),
/// de-duplicated and sorted with strings first (`sum_permissions`,
/// `sorted_permissions` in `salt/netapi/__init__.py`). Backends that keep the
/// ACL in the token (`auth_list`) use it.
pub fn permissions(external_auth: &Map<String, Json>, token: &Token) -> Vec<Json> {
    if let Some(Json::Array(list)) = token.get("auth_list") {
        return sorted(list.clone());
    }
    let eauth = token
        .get("eauth")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let name = token.get("name").and_then(Json::as_str).unwrap_or_default();
    let Some(Json::Object(backend)) = external_auth.get(eauth) else {
        return Vec::new();
    };
    let mut keys = vec![name.to_owned(), "*".to_owned()];
    if let Some(Json::Array(groups)) = token.get("groups") {
        keys.extend(
            groups
                .iter()
                .filter_map(Json::as_str)
                .map(|g| format!("{g}%")),
        );
    }
    let mut perms: Vec<Json> = Vec::new();
    for key in keys {
        if let Some(Json::Array(entries)) = backend.get(&key) {
            for e in entries {
                if !perms.contains(e) {
                    perms.push(e.clone());
                }
            }
        }
    }
    sorted(perms)
}

fn sorted(mut perms: Vec<Json>) -> Vec<Json> {
    perms.sort_by(|a, b| match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.to_string().cmp(&b.to_string()),
    });
    perms
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn perms_sum_user_star_and_groups() {
        let ea = json!({"pam": {"saltdev": [".*", "@runner"], "*": ["@wheel"], "adm%": [{"ms-*": ["test.*"]}, ".*"]}});
        let token = json!({"eauth": "pam", "name": "saltdev", "groups": ["adm"]});
        let p = permissions(
            ea.as_object().expect("map"),
            token.as_object().expect("map"),
        );
        assert_eq!(
            p,
            vec![
                json!(".*"),
                json!("@runner"),
                json!("@wheel"),
                json!({"ms-*": ["test.*"]})
            ]
        );
    }

    #[test]
    fn tokens_must_be_hex() {
        assert!(validate_token_text("deadBEEF01").is_ok());
        assert!(validate_token_text("").is_err());
        assert!(validate_token_text("../etc/passwd").is_err());
    }
}
