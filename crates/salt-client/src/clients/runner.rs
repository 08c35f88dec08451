//! `runner` and `runner_async`: `RunnerClient.cmd_sync` / `cmd_async`
//! (salt-protocol §3.5.2, §5.6).
//!
//! The lowstate is reshaped as `RunnerClient._reformat_low` does:
//! credentials to the top level, `k=v` strings of `arg` and every leftover
//! key into keyword arguments, sent in the nested form
//! `kwarg: {"arg": [...], "kwarg": {...}}` that runner ACLs check. Python's
//! salt-api also drops keyword arguments the runner does not accept, by
//! importing the runner locally; halite cannot, so the master reports them.

use std::time::Duration;

use regex::Regex;
use serde_json::{json, Map, Value as Json};
use tokio::time::Instant;

use super::{arg_list, kwarg_map, required_str, seconds, secs, truthy, Lowstate};
use crate::error::{Result, SaltError};
use crate::master::Master;
use crate::value;

/// Keys moved to the top level of the load (never `key`: see salt-protocol §7).
const TOP_LEVEL: [&str; 6] = ["username", "password", "eauth", "token", "client", "user"];
/// Keys NetapiClient.runner consumes before `_reformat_low`.
const CONSUMED: [&str; 5] = ["fun", "arg", "kwarg", "timeout", "full_return"];
/// How long a runner job may take to announce itself (`salt/run/<jid>/new`)
/// before halite reports it as not started. Salt 3008 fires no event at all
/// for an unknown runner function, so without this a caller would wait for
/// the whole timeout.
const START_GUARD: Duration = Duration::from_secs(20);

/// Build the runner load from a lowstate.
pub fn runner_load(low: &Lowstate) -> Result<Json> {
    let fun = required_str(low, "fun")?;
    if !fun.contains('.') {
        return Err(SaltError::Invocation(format!(
            "'{fun}' is not a valid runner function (expected module.function)"
        )));
    }
    let mut load = Map::new();
    load.insert("cmd".into(), json!("runner"));
    load.insert("fun".into(), json!(fun));
    for key in TOP_LEVEL {
        if let Some(v) = low.get(key) {
            load.insert(key.into(), v.clone());
        }
    }
    let (args, mut kwargs) = parse_input(arg_list(low));
    kwargs.extend(kwarg_map(low)?);
    for (k, v) in low {
        if !TOP_LEVEL.contains(&k.as_str()) && !CONSUMED.contains(&k.as_str()) && k != "key" {
            kwargs.insert(k.clone(), v.clone());
        }
    }
    load.insert("kwarg".into(), json!({"arg": args, "kwarg": kwargs}));
    Ok(Json::Object(load))
}

/// `name=value` (Salt's `kwarg_regex`). Compiled once: building a Unicode
/// regex costs about a millisecond, more than the rest of a runner call.
static KWARG_RE: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new(r"(?s)^([^\W\d]\w*)=(.*)$").expect("static regex"));

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
    match serde_norway::from_str::<Json>(text) {
        Ok(Json::String(_)) | Err(_) => Json::String(text.to_owned()),
        Ok(v) => v,
    }
}

/// `runner_async`: start the runner and return `{jid, tag}`.
pub async fn runner_async(master: &Master, low: Lowstate) -> Result<Json> {
    let load = runner_load(&low)?;
    let reply = master.request(value::from_json(&load), secs(60.0)).await?;
    Ok(value::to_json(&reply))
}

/// `runner`: start the runner and wait for `salt/run/<jid>/ret`.
pub async fn runner(master: &Master, low: Lowstate) -> Result<Json> {
    let load = runner_load(&low)?;
    let limit = seconds(low.get("timeout")).unwrap_or_else(|| master.config().rest_timeout());
    let full_return = truthy(low.get("full_return"));
    master.wait_ready(Duration::from_secs(5)).await?;
    let started = Instant::now();
    // The start request itself is answered at once by a healthy master; it
    // never waits longer than the caller's deadline.
    let reply = value::to_json(
        &master
            .request(value::from_json(&load), secs(limit.min(60.0)))
            .await?,
    );
    let jid = reply
        .get("jid")
        .and_then(Json::as_str)
        .ok_or_else(|| {
            SaltError::Master(format!(
                "the Salt master answered the runner call without a jid: {reply}"
            ))
        })?
        .to_owned();
    let ret_tag = format!("salt/run/{jid}/ret");
    let new_tag = format!("salt/run/{jid}/new");
    let mut sub = master.bus().subscribe_jid(&jid);
    let deadline = started + secs(limit);
    let guard = started + START_GUARD;
    let mut announced = false;
    loop {
        let wake = if announced {
            deadline
        } else {
            deadline.min(guard)
        };
        tokio::select! {
            ev = sub.recv() => match ev {
                Some(ev) if ev.tag == ret_tag => {
                    // One copy of what the caller keeps (a `jobs.lookup_jid`
                    // of 10,000 minions is one large return).
                    return Ok(if full_return {
                        json!({"tag": ret_tag, "data": ev.data().clone()})
                    } else {
                        ev.data().get("return").cloned().unwrap_or(Json::Null)
                    });
                }
                Some(ev) => announced |= ev.tag == new_tag,
                None => return Err(SaltError::Unreachable("the Salt event bus closed".into())),
            },
            _ = tokio::time::sleep_until(wake) => {
                if !announced && wake == guard && guard < deadline {
                    return Err(SaltError::Master(format!(
                        "runner job {jid} for '{}' never started; '{}' may not be an available runner function",
                        load["fun"].as_str().unwrap_or_default(),
                        load["fun"].as_str().unwrap_or_default()
                    )));
                }
                return Err(SaltError::Timeout(format!("RunnerClient job '{jid}' timed out")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low(j: Json) -> Lowstate {
        j.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn load_matches_netapiclient_wire() {
        // p04 (results/p04_3008.txt): arg ["a", "b=c"], kwarg {"d": "e"}, extra="x"
        let l = low(
            json!({"client": "runner", "fun": "test.arg", "eauth": "auto", "username": "u",
            "password": "p", "arg": ["a", "b=c"], "kwarg": {"d": "e"}, "extra": "x", "timeout": 5}),
        );
        let load = runner_load(&l).expect("valid");
        assert_eq!(
            load,
            json!({"cmd": "runner", "fun": "test.arg", "username": "u", "password": "p",
            "eauth": "auto", "client": "runner",
            "kwarg": {"arg": ["a"], "kwarg": {"b": "c", "d": "e", "extra": "x"}}})
        );
    }

    #[test]
    fn seed_lookup_jid_example_passes_jid_as_kwarg() {
        let l = low(
            json!({"client": "runner", "fun": "jobs.lookup_jid", "jid": "20130412192112593739", "token": "t"}),
        );
        let load = runner_load(&l).expect("valid");
        assert_eq!(
            load["kwarg"],
            json!({"arg": [], "kwarg": {"jid": "20130412192112593739"}})
        );
        assert_eq!(load["token"], json!("t"));
    }

    #[test]
    fn yamlify_and_equals_rules() {
        let (a, k) = parse_input(vec![
            json!("n=5"),
            json!("b=true"),
            json!("x==y"),
            json!("1a=b"),
            json!("s=hello world"),
        ]);
        assert_eq!(a, vec![json!("x==y"), json!("1a=b")]);
        assert_eq!(
            k,
            json!({"n": 5, "b": true, "s": "hello world"})
                .as_object()
                .cloned()
                .unwrap_or_default()
        );
    }

    #[test]
    fn bad_fun_is_invocation_error() {
        assert!(matches!(
            runner_load(&low(json!({"fun": "nodot"}))),
            Err(SaltError::Invocation(_))
        ));
        assert!(matches!(
            runner_load(&low(json!({}))),
            Err(SaltError::Invocation(_))
        ));
    }
}
