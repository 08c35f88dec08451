//! Remove secrets from anything halite logs or relays.
//!
//! The master itself fires the complete publish load — password, token and,
//! from Python salt-api, the master's root key — on `salt/job/error` events
//! (docs/PROTOCOL.md §7). Every event halite forwards and every load it logs goes
//! through [`redact`].

use serde_json::Value as Json;

/// Keys whose values are secrets, at any depth.
pub const SECRET_KEYS: [&str; 4] = ["password", "token", "key", "salt_token"];

/// The replacement text.
pub const REDACTED: &str = "<redacted>";

/// Replace the value of every secret key, at any depth, in place.
pub fn redact(value: &mut Json) {
    match value {
        Json::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()) && !v.is_null() {
                    *v = Json::String(REDACTED.into());
                } else {
                    redact(v);
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A redacted copy.
pub fn redacted(value: &Json) -> Json {
    let mut v = value.clone();
    redact(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_at_any_depth() {
        // Shape of a salt/job/error event (p09): the publish load with kwargs.
        let mut ev = json!({"fun": "test.ping", "key": "rootkey", "kwargs": {"password": "hunter2",
            "token": "abc", "username": "u"}, "list": [{"Password": "x"}], "error": {"name": "AuthenticationError"}});
        redact(&mut ev);
        let text = ev.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("rootkey") && !text.contains("\"abc\"")
        );
        assert!(!text.contains("\"x\""));
        assert_eq!(ev["kwargs"]["username"], json!("u"));
    }
}
