//! Remove secrets from anything halite logs or relays.
//!
//! The master itself fires the complete publish load — password, token and,
//! from Python salt-api, the master's root key — on `salt/job/error` events
//! (docs/PROTOCOL.md §7); wheel `key.gen_accept` puts a new minion's private
//! key on the bus. Every event halite forwards and every load it logs goes
//! through [`redact`].

use serde_json::Value as Json;

/// A key is secret when its lowercase name contains one of these: Salt and
/// its modules spell secrets `password`, `passwd`, `pass`, `secret`,
/// `token`, `salt_token`, `priv` (the private half of a minion key pair,
/// which `key.gen_accept` puts on the bus), `key`, `api_key`, ...
pub const SECRET_PARTS: [&str; 5] = ["pass", "secret", "token", "priv", "key"];

/// Credential headers, as a webhook event carries them.
pub const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Salt's ordinary event fields: never secret whatever a future
/// [`SECRET_PARTS`] entry would match.
const ORDINARY: [&str; 8] = [
    "fun", "jid", "minions", "tgt", "tgt_type", "id", "act", "return",
];

/// The replacement text.
pub const REDACTED: &str = "<redacted>";

/// Whether a mapping key names a secret (case-insensitive).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if ORDINARY.contains(&k.as_str()) {
        return false;
    }
    SECRET_HEADERS.contains(&k.as_str()) || SECRET_PARTS.iter().any(|p| k.contains(p))
}

/// `name=value` with a secret name (a keyword argument in an `arg` list,
/// e.g. `password=hunter2`): the same text with the value replaced.
fn redacted_kwarg(text: &str) -> Option<String> {
    let (name, value) = text.split_once('=')?;
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    (plain && !value.is_empty() && is_secret_key(name)).then(|| format!("{name}={REDACTED}"))
}

/// Replace every secret, at any depth, in place: the value of every secret
/// key (whole, whatever its shape) and the value of every secret
/// `name=value` string inside a list.
pub fn redact(value: &mut Json) {
    match value {
        Json::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) && !v.is_null() {
                    *v = Json::String(REDACTED.into());
                } else {
                    redact(v);
                }
            }
        }
        Json::Array(items) => {
            for item in items.iter_mut() {
                match item {
                    Json::String(s) => {
                        if let Some(r) = redacted_kwarg(s) {
                            *s = r;
                        }
                    }
                    other => redact(other),
                }
            }
        }
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

    #[test]
    fn what_salt_puts_on_the_bus() {
        // wheel key.gen_accept's return event, a webhook's headers, a
        // publish with keyword arguments in `arg`, and mixed-case names.
        let mut ev = json!({
            "fun": "wheel.key.gen_accept", "jid": "20261130151600000000",
            "minions": ["ms-0"], "tgt": "*",
            "return": {"pub": "-----BEGIN PUBLIC KEY-----", "priv": "-----BEGIN RSA PRIVATE KEY-----s3"},
            "headers": {"Authorization": "Basic czM=", "Cookie": "session_id=s4", "X-Auth-Token": "s5"},
            "arg": ["mysql.user_create", "name=bob", "password=s6", "Api_Key=s7", "a=b=c"],
            "fun_args": [{"DB_PASSWD": "s8"}, "connection_pass=s9"],
            "pillar": {"aws": {"SecretAccessKey": "s10", "region": "x"}},
            "eauth": "pam", "user": "bob",
        });
        redact(&mut ev);
        let text = ev.to_string();
        for secret in ["s3", "czM", "s4", "s5", "s6", "s7", "s8", "s9", "s10"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(ev["fun"], json!("wheel.key.gen_accept"));
        assert_eq!(ev["jid"], json!("20261130151600000000"));
        assert_eq!(ev["minions"], json!(["ms-0"]));
        assert_eq!(ev["return"]["pub"], json!("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(ev["arg"][1], json!("name=bob"));
        assert_eq!(ev["arg"][2], json!("password=<redacted>"));
        assert_eq!(ev["arg"][4], json!("a=b=c"));
        assert_eq!(ev["pillar"]["aws"]["region"], json!("x"));
        assert_eq!(ev["user"], json!("bob"));
    }
}
