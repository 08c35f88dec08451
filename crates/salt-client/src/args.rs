//! Salt's `salt.utils.args` for lowstates, in one place: Python truthiness,
//! seconds, `parse_input` (`name=value` strings), `yamlify_arg` and the
//! `__kwarg__` conditioning `LocalClient` applies. Every client and the
//! config loader use these, so a rule is written once; a chunk's fields are
//! read with them once, by `clients::Low::parse` (which also normalises
//! `arg` and `kwarg`).

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value as Json};

/// Python truthiness of a JSON value.
pub fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// A number of seconds from a lowstate value (number or numeric string).
pub fn seconds(v: Option<&Json>) -> Option<f64> {
    match v? {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
}

/// Duration from seconds, saturating.
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(86_400 * 365))
}

/// `name=value` (Salt's `kwarg_regex`). Compiled once: building a Unicode
/// regex costs about a millisecond, more than the rest of a runner call.
static KWARG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)^([^\W\d]\w*)=(.*)$").expect("static regex"));

/// `salt.utils.args.parse_input(args, condition=False)`: `name=value`
/// strings and `{"__kwarg__": true, ...}` maps become keyword arguments.
pub fn parse_input(args: Vec<Json>) -> (Vec<Json>, Map<String, Json>) {
    let mut out_args = Vec::new();
    let mut kwargs = Map::new();
    for arg in args {
        match arg {
            Json::String(s) => match KWARG_RE.captures(&s) {
                Some(c) if !c[2].starts_with('=') => {
                    kwargs.insert(c[1].to_owned(), yamlify_arg(&c[2]));
                }
                _ => out_args.push(Json::String(s)),
            },
            Json::Object(mut m) if m.get("__kwarg__") == Some(&Json::Bool(true)) => {
                m.remove("__kwarg__");
                kwargs.extend(m);
            }
            other => out_args.push(other),
        }
    }
    (out_args, kwargs)
}

/// `salt.utils.args.yamlify_arg`, simplified: a value that YAML reads as a
/// number, boolean, null, list or map becomes that; anything else stays text.
pub fn yamlify_arg(text: &str) -> Json {
    if text.is_empty() || text.trim() != text || text.contains('#') {
        return Json::String(text.to_owned());
    }
    match crate::yaml::from_str(text) {
        Ok(Json::String(_)) | Err(_) => Json::String(text.to_owned()),
        Ok(v) => v,
    }
}

/// `salt.utils.args.condition_input`: integers that look like a jid are
/// sent as strings. Salt's test is `salt.utils.jid.is_jid(str(arg))`: the
/// text is 20 characters and `int()` parses it, so a negative 19-digit
/// integer such as `-9223372036854775808` counts too.
fn condition_args(args: Vec<Json>) -> Vec<Json> {
    args.into_iter()
        .map(|a| match &a {
            Json::Number(n) if (n.is_u64() || n.is_i64()) && n.to_string().len() == 20 => {
                Json::String(n.to_string())
            }
            _ => a,
        })
        .collect()
}

/// `salt.utils.args.condition_input(args, kwargs)`: the publish `arg` list,
/// with integers that look like a jid as strings and the caller's `kwarg`
/// appended as one `{"__kwarg__": true, ...}` map.
pub fn condition_input(args: Vec<Json>, kwarg: Map<String, Json>) -> Vec<Json> {
    let mut arg = condition_args(args);
    if !kwarg.is_empty() {
        let mut k = Map::with_capacity(kwarg.len() + 1);
        k.insert("__kwarg__".into(), Json::Bool(true));
        k.extend(kwarg);
        arg.push(Json::Object(k));
    }
    arg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jid_like_integers_become_strings() {
        let out = condition_input(
            vec![
                json!(10000000000000000000u64),
                json!(5),
                json!("x"),
                json!(i64::MIN),
                json!(-100000000000000000i64),
                json!(1.5),
            ],
            Map::new(),
        );
        assert_eq!(
            out,
            vec![
                json!("10000000000000000000"),
                json!(5),
                json!("x"),
                json!("-9223372036854775808"),
                json!(-100000000000000000i64),
                json!(1.5)
            ]
        );
    }

    #[test]
    fn kwarg_rides_as_a_trailing_map() {
        let mut k = Map::new();
        k.insert("b".into(), json!(1));
        assert_eq!(
            condition_input(vec![json!("a")], k),
            vec![json!("a"), json!({"__kwarg__": true, "b": 1})]
        );
        assert_eq!(condition_input(vec![], Map::new()), Vec::<Json>::new());
    }

    #[test]
    fn python_truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(Some(&v)), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!("0"),
            json!([0]),
            json!({"a": 0}),
        ] {
            assert!(truthy(Some(&v)), "{v}");
        }
        assert!(!truthy(None));
    }
}
