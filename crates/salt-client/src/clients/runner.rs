//! `runner` and `runner_async`: `RunnerClient.cmd_sync` / `cmd_async`
//! (docs/PROTOCOL.md §3.5.2, §5.6).
//!
//! The lowstate is reshaped as `RunnerClient._reformat_low` does:
//! credentials to the top level, `k=v` strings of `arg` and every leftover
//! key into keyword arguments, sent in the nested form
//! `kwarg: {"arg": [...], "kwarg": {...}}` that runner ACLs check. Python's
//! salt-api also drops keyword arguments the runner does not accept, by
//! importing the runner locally; halite cannot, so the master reports them.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value as Json};
use tokio::time::Instant;

use super::Low;
use crate::args::{parse_input, secs};
use crate::error::{Result, SaltError};
use crate::master::Master;
use crate::value;

/// Keys moved to the top level of the load (never `key`: see docs/PROTOCOL.md §7).
const TOP_LEVEL: [&str; 6] = ["username", "password", "eauth", "token", "client", "user"];
/// Keys NetapiClient.runner consumes before `_reformat_low`.
const CONSUMED: [&str; 5] = ["fun", "arg", "kwarg", "timeout", "full_return"];
/// How long a runner job may take to announce itself (`salt/run/<jid>/new`)
/// before halite reports it as not started, when the master's list of
/// runner functions could not be learnt. Salt 3008 fires no event at all
/// for an unknown runner function, so without this a caller would wait for
/// the whole timeout. A function the list names is never cut by it: a busy
/// master may take longer than this to start a real job.
const START_GUARD: Duration = Duration::from_secs(20);

/// Build the runner load from a lowstate.
pub fn runner_load(low: &Low) -> Result<Json> {
    let fun = low.fun_str()?;
    if !fun.contains('.') {
        return Err(SaltError::Invocation(format!(
            "'{fun}' is not a valid runner function (expected module.function)"
        )));
    }
    let mut load = Map::new();
    load.insert("cmd".into(), json!("runner"));
    load.insert("fun".into(), json!(fun));
    for key in TOP_LEVEL {
        if let Some(v) = low.fields.get(key) {
            load.insert(key.into(), v.clone());
        }
    }
    let (args, mut kwargs) = parse_input(low.arg.clone());
    kwargs.extend(low.kwarg.clone()?);
    for (k, v) in low.rest(&[&TOP_LEVEL, &CONSUMED, &["key"]]) {
        kwargs.insert(k.clone(), v.clone());
    }
    load.insert("kwarg".into(), json!({"arg": args, "kwarg": kwargs}));
    Ok(Json::Object(load))
}

/// `runner_async`: start the runner and return `{jid, tag}`. A function
/// the master does not have is `'<fun>' is not available.` (500), as with
/// Python salt-api, which checks the name before it starts the job; halite
/// checks it once the master has accepted the credentials (the job the
/// master started for it ends at once without doing anything).
pub async fn runner_async(master: &Master, low: Low) -> Result<Json> {
    let load = runner_load(&low)?;
    let reply = master.request(value::from_json(&load), secs(60.0)).await?;
    let fun = load["fun"].as_str().unwrap_or_default();
    if RunnerFunctions::is_known(master, &load, fun).await == Some(false) {
        return Err(not_available(fun));
    }
    Ok(value::to_json(&reply))
}

/// `runner`: start the runner and wait for `salt/run/<jid>/ret`.
///
/// A function the master does not have fails as Python salt-api fails it,
/// with `'<fun>' is not available.` (500), and at once: the master's reply
/// to an unknown function differs by release (3006/3007 return a traceback
/// as the job's return, 3008 fires no event at all), so halite recognises
/// the traceback and also checks the name against the master's function
/// list ([`RunnerFunctions`]) while it waits.
pub async fn runner(master: &Master, low: Low) -> Result<Json> {
    let load = runner_load(&low)?;
    let limit = low
        .timeout
        .unwrap_or_else(|| master.config().rest_timeout());
    run_sync(master, load, limit, low.full_return).await
}

async fn run_sync(master: &Master, load: Json, limit: f64, full_return: bool) -> Result<Json> {
    let fun = load["fun"].as_str().unwrap_or_default().to_owned();
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
    // The credentials were accepted (the master answered with a jid), so
    // they may be used to learn the function list if the name is new.
    // `None` while learning; then whether the master has `fun`, `None`
    // inside when that could not be learnt.
    let mut known: Option<Option<bool>> = None;
    let check = RunnerFunctions::is_known(master, &load, &fun);
    tokio::pin!(check);
    // The master going away (its bus is lost) ends the wait at once: the
    // return would not reach this bus.
    let lost = master.bus().lost();
    tokio::pin!(lost);
    loop {
        // Only a job that has not announced itself, of a function whose
        // existence could not be learnt, is cut at the guard.
        let guarded = !announced && known == Some(None);
        let wake = if guarded {
            deadline.min(guard)
        } else {
            deadline
        };
        tokio::select! {
            ev = sub.recv() => match ev {
                Some(ev) if ev.tag == ret_tag => {
                    // One copy of what the caller keeps (a `jobs.lookup_jid`
                    // of 10,000 minions is one large return).
                    if let Some(e) = unavailable_function(&fun, ev.data()) {
                        return Err(e);
                    }
                    return Ok(if full_return {
                        json!({"tag": ret_tag, "data": ev.data().clone()})
                    } else {
                        ev.data().get("return").cloned().unwrap_or(Json::Null)
                    });
                }
                Some(ev) => announced |= ev.tag == new_tag,
                None if sub.bus_lost() => return Err(went_away(&jid)),
                None => return Err(SaltError::Unreachable("the Salt event bus closed".into())),
            },
            has = &mut check, if known.is_none() => {
                if has == Some(false) && !announced {
                    return Err(not_available(&fun));
                }
                known = Some(has);
            }
            () = &mut lost => return Err(went_away(&jid)),
            _ = tokio::time::sleep_until(wake) => {
                if guarded && wake == guard && guard < deadline {
                    return Err(SaltError::Master(format!(
                        "runner job {jid} for '{fun}' never started; '{fun}' may not be an available runner function"
                    )));
                }
                // Worth an operator's eye: the master took the job and the
                // bus stayed up, yet its return never came (a job that
                // never announced itself most likely never ran).
                tracing::warn!(
                    jid = %jid.chars().take(24).collect::<String>(),
                    announced,
                    waited_s = started.elapsed().as_secs(),
                    "runner job timed out: its return never reached the event bus"
                );
                return Err(SaltError::Timeout(format!("RunnerClient job '{jid}' timed out")));
            }
        }
    }
}

/// Python salt-api's error for a function the loader does not have
/// (`LazyLoader.missing_fun_string`, raised as `CommandExecutionError`).
fn not_available(fun: &str) -> SaltError {
    SaltError::Master(format!("'{fun}' is not available."))
}

/// The master's return for a function its loader does not have, recognised:
/// the job ends with `success: false` and a traceback as its return
/// (`Exception occurred in runner <fun>: Traceback ...`) that ends in the
/// loader's `verify_fun` raising `CommandExecutionError: '<fun>' is not
/// available.` (or its reason, such as `__virtual__ returned False`), or
/// in the loader's `KeyError: '<fun>'`. The error carries the loader's
/// message without the traceback (which shows the master's file paths). A
/// runner that raised for any other reason keeps its traceback as its
/// return, as with Python salt-api.
pub fn unavailable_function(fun: &str, data: &Json) -> Option<SaltError> {
    if data.get("success") != Some(&Json::Bool(false)) {
        return None;
    }
    let text = data.get("return")?.as_str()?;
    let rest = text.strip_prefix(&format!("Exception occurred in runner {fun}: "))?;
    let last = rest.trim_end().lines().last()?.trim();
    if last == format!("KeyError: '{fun}'") {
        return Some(not_available(fun));
    }
    let message = last.strip_prefix("salt.exceptions.CommandExecutionError: ")?;
    (rest.contains("in verify_fun") && message.starts_with(&format!("'{fun}' ")))
        .then(|| SaltError::Master(message.to_owned()))
}

/// How long a learnt function list is trusted for names it lists.
const FUNCTIONS_TTL: Duration = Duration::from_secs(300);
/// A name missing from a list younger than this is unknown without asking
/// again (a loop of typos costs one `doc.runner` per this interval).
const FUNCTIONS_RECHECK: Duration = Duration::from_secs(10);
/// The most masters whose lists are remembered (one per process in practice).
const FUNCTIONS_MASTERS: usize = 16;

/// The runner functions of each master, learnt with the `doc.runner`
/// runner (the names of `RunnerClient.functions`, which is what Python
/// salt-api checks a name against) under the credentials of a caller the
/// master just accepted, and refreshed when a name is not in the list.
/// A caller whose ACL does not allow `doc.runner` learns nothing; the
/// runner call then fails by the master's own means (or the start guard).
struct RunnerFunctions {
    names: HashSet<String>,
    learnt: Instant,
}

type FunctionLists = HashMap<String, RunnerFunctions>;

static LISTS: LazyLock<Mutex<FunctionLists>> = LazyLock::new(|| Mutex::new(HashMap::new()));
/// One refresh at a time per process; the others wait for its result.
static REFRESH: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

impl RunnerFunctions {
    /// What the list learnt from `master` says of `fun`, if it is recent
    /// enough to tell.
    fn lookup(master: &Master, fun: &str) -> Option<bool> {
        let lists = LISTS.lock().unwrap_or_else(|p| p.into_inner());
        lists.get(master.addr()).and_then(|l| {
            if l.names.contains(fun) {
                Some(true)
            } else {
                (l.learnt.elapsed() < FUNCTIONS_RECHECK).then_some(false)
            }
        })
    }

    /// Whether the master has `fun`: `None` when it cannot be learnt.
    async fn is_known(master: &Master, load: &Json, fun: &str) -> Option<bool> {
        if let Some(known) = Self::lookup(master, fun) {
            return Some(known);
        }
        // Learnt in a task of its own: a caller that stops waiting (its
        // job's return came first) does not cancel the learning, so the
        // next caller finds the list.
        let (m, l, f) = (master.clone(), load.clone(), fun.to_owned());
        tokio::spawn(async move { Self::refresh(&m, &l, &f).await })
            .await
            .ok()
            .flatten()
    }

    async fn refresh(master: &Master, load: &Json, fun: &str) -> Option<bool> {
        let _one = REFRESH.lock().await;
        if let Some(known) = Self::lookup(master, fun) {
            return Some(known);
        }
        let mut doc = Map::new();
        doc.insert("cmd".into(), json!("runner"));
        doc.insert("fun".into(), json!("doc.runner"));
        for key in CREDENTIALS {
            if let Some(v) = load.get(key) {
                doc.insert(key.into(), v.clone());
            }
        }
        doc.insert("kwarg".into(), json!({"arg": [], "kwarg": {}}));
        let listed = run_plain(master, Json::Object(doc), LEARN_TIMEOUT).await;
        let names: HashSet<String> = match listed {
            Ok(Json::Object(m)) => m.keys().cloned().collect(),
            Ok(_) | Err(_) => {
                tracing::debug!("cannot learn the master's runner functions");
                return None;
            }
        };
        if names.is_empty() {
            return None;
        }
        let known = names.contains(fun);
        let mut lists = LISTS.lock().unwrap_or_else(|p| p.into_inner());
        if lists.len() >= FUNCTIONS_MASTERS {
            lists.retain(|_, l| l.learnt.elapsed() < FUNCTIONS_TTL);
        }
        if lists.len() < FUNCTIONS_MASTERS || lists.contains_key(master.addr()) {
            lists.insert(
                master.addr().to_owned(),
                RunnerFunctions {
                    names,
                    learnt: Instant::now(),
                },
            );
        }
        Some(known)
    }
}

/// How long learning the function list may take.
const LEARN_TIMEOUT: Duration = Duration::from_secs(60);

/// Run a runner load and return its `return`, without the checks of
/// [`runner`] (for `doc.runner`, which exists on every release).
async fn run_plain(master: &Master, load: Json, limit: Duration) -> Result<Json> {
    let deadline = Instant::now() + limit;
    let reply = value::to_json(&master.request(value::from_json(&load), limit).await?);
    let Some(jid) = reply.get("jid").and_then(Json::as_str) else {
        return Err(SaltError::Master(format!(
            "the Salt master answered the runner call without a jid: {reply}"
        )));
    };
    let ret_tag = format!("salt/run/{jid}/ret");
    let mut sub = master.bus().subscribe_jid(jid);
    loop {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(ev)) if ev.tag == ret_tag => {
                return Ok(ev.data().get("return").cloned().unwrap_or(Json::Null))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(SaltError::Unreachable("the Salt event bus closed".into())),
            Err(_) => {
                return Err(SaltError::Timeout(format!(
                    "RunnerClient job '{jid}' timed out"
                )))
            }
        }
    }
}

/// The credential keys of a runner load.
const CREDENTIALS: [&str; 4] = ["username", "password", "eauth", "token"];

/// The error of a runner job whose master went away while it ran.
fn went_away(jid: &str) -> SaltError {
    SaltError::Unreachable(format!(
        "the Salt master went away while runner job {jid} was running; look it up later with \
         the runner jobs.lookup_jid (jid {jid})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low(j: Json) -> Low {
        Low::parse(j.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn load_matches_netapiclient_wire() {
        // What a real 3008 NetapiClient sent for arg ["a", "b=c"], kwarg {"d": "e"}, extra="x"
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
    fn missing_function_tracebacks_are_recognised() {
        // Salt 3006.30's return for an unknown runner function (paths shortened).
        let ret = |text: &str| json!({"fun": "runner.no_such.fn", "return": text, "success": false, "retcode": 1});
        let verify = "Exception occurred in runner no_such.fn: Traceback (most recent call last):\n  \
            File \"/v/salt/client/mixins.py\", line 341, in low\n    salt.utils.lazy.verify_fun(self_functions, fun)\n  \
            File \"/v/salt/utils/lazy.py\", line 23, in verify_fun\n    raise salt.exceptions.CommandExecutionError(lazy_obj.missing_fun_string(fun))\n\
            salt.exceptions.CommandExecutionError: 'no_such.fn' is not available.\n";
        assert_eq!(
            unavailable_function("no_such.fn", &ret(verify)),
            Some(SaltError::Master("'no_such.fn' is not available.".into()))
        );
        let key_error = "Exception occurred in runner no_such.fn: Traceback (most recent call last):\n  \
            File \"/v/salt/utils/lazy.py\", line 99, in __getitem__\n    raise KeyError(key)\nKeyError: 'no_such.fn'\n";
        assert_eq!(
            unavailable_function("no_such.fn", &ret(key_error)),
            Some(SaltError::Master("'no_such.fn' is not available.".into()))
        );
        // A runner that raised by itself keeps its return.
        let own = "Exception occurred in runner test.raise: Traceback (most recent call last):\n  \
            File \"/v/salt/runners/test.py\", line 9, in raise\nsalt.exceptions.CommandExecutionError: 'x' is bad\n";
        assert_eq!(unavailable_function("test.raise", &ret(own)), None);
        let mut ok = ret(verify);
        ok["success"] = json!(true);
        assert_eq!(unavailable_function("no_such.fn", &ok), None);
        assert_eq!(unavailable_function("other.fn", &ret(verify)), None);
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
