//! `local` and `local_async`: publish a job to minions and (for `local`) wait
//! for their returns as `LocalClient.cmd` does, probing minions that are still
//! running with `saltutil.find_job` (docs/PROTOCOL.md §5.2, §5.3).

use std::collections::HashSet;
use std::time::Duration;

use rmpv::Value as Mp;
use serde_json::{json, Map, Value as Json};
use tokio::time::Instant;

use super::{arg_list, kwarg_map, seconds, secs, truthy, Lowstate};
use crate::error::{Result, SaltError};
use crate::events::JidSubscription;
use crate::master::Master;
use crate::{targeting, value};

/// Keys `LocalClient.cmd` consumes; every other lowstate key is forwarded in
/// the publish `kwargs` (that is how credentials reach the master).
const CMD_KEYS: [&str; 9] = [
    "tgt",
    "fun",
    "arg",
    "timeout",
    "tgt_type",
    "ret",
    "jid",
    "full_return",
    "kwarg",
];

/// What the master answered to a publish.
#[derive(Debug, Clone, PartialEq)]
pub struct PubReply {
    pub jid: String,
    pub minions: Vec<String>,
    pub missing: Vec<String>,
}

/// One `local`-style job: target, function, arguments and the publish kwargs.
#[derive(Debug, Clone)]
pub struct LocalJob {
    pub tgt: Json,
    pub tgt_type: String,
    pub fun: Json,
    pub arg: Vec<Json>,
    pub ret: String,
    pub kwargs: Map<String, Json>,
    /// Seconds to wait before probing pending minions (`timeout`).
    pub timeout: f64,
    /// Seconds to wait for `saltutil.find_job` answers.
    pub gather_job_timeout: f64,
    /// Request timeout of the publish itself.
    pub pub_timeout: f64,
    pub full_return: bool,
}

impl LocalJob {
    /// Build a job from a lowstate, as `LocalClient.cmd`/`run_job` would.
    pub fn from_low(master: &Master, low: &Lowstate, consumed: &[&str]) -> Result<Self> {
        let config = master.config();
        let tgt = match low.get("tgt") {
            Some(t @ (Json::String(_) | Json::Array(_))) => t.clone(),
            Some(_) => {
                return Err(SaltError::Invocation(
                    "'tgt' must be a string or a list".into(),
                ))
            }
            None => {
                return Err(SaltError::Invocation(
                    "Missing required argument 'tgt'".into(),
                ))
            }
        };
        let fun = match low.get("fun") {
            Some(f @ (Json::String(_) | Json::Array(_))) => f.clone(),
            Some(_) => {
                return Err(SaltError::Invocation(
                    "'fun' must be a string or a list".into(),
                ))
            }
            None => {
                return Err(SaltError::Invocation(
                    "Missing required argument 'fun'".into(),
                ))
            }
        };
        let tgt_type = match low.get("tgt_type").or_else(|| low.get("expr_form")) {
            None | Some(Json::Null) => "glob".to_owned(),
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err(SaltError::Invocation("'tgt_type' must be a string".into())),
        };
        let conf_file = config.path().display().to_string();
        let (tgt, tgt_type) = targeting::expand(&tgt, &tgt_type, config.nodegroups(), &conf_file)?;
        let mut arg = condition_args(arg_list(low));
        let kwarg = kwarg_map(low)?;
        if !kwarg.is_empty() {
            let mut k = Map::new();
            k.insert("__kwarg__".into(), Json::Bool(true));
            k.extend(kwarg);
            arg.push(Json::Object(k));
        }
        let mut ret = match low.get("ret") {
            Some(Json::String(s)) => s.clone(),
            _ => String::new(),
        };
        if let Some(ext) = config.ext_job_cache() {
            ret = if ret.is_empty() {
                ext
            } else {
                format!("{ret},{ext}")
            };
        }
        let kwargs: Map<String, Json> = low
            .iter()
            .filter(|(k, _)| !CMD_KEYS.contains(&k.as_str()) && !consumed.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let timeout = seconds(low.get("timeout")).unwrap_or_else(|| config.timeout());
        let gather_job_timeout =
            seconds(low.get("gather_job_timeout")).unwrap_or_else(|| config.gather_job_timeout());
        let pub_timeout = seconds(low.get("timeout")).unwrap_or_else(|| config.publish_timeout());
        Ok(LocalJob {
            tgt,
            tgt_type,
            fun,
            arg,
            ret,
            kwargs,
            timeout,
            gather_job_timeout,
            pub_timeout,
            full_return: truthy(low.get("full_return")),
        })
    }

    /// Publish the job under `jid` (`""` lets the master choose).
    pub async fn publish(&self, master: &Master, jid: &str) -> Result<PubReply> {
        publish(
            master,
            &self.tgt,
            &self.tgt_type,
            &self.fun,
            &self.arg,
            &self.ret,
            jid,
            &self.kwargs,
            self.pub_timeout,
        )
        .await
    }

    /// Publish and wait for every return: `LocalClient.cmd`. The jid is the
    /// caller's or one halite makes, so the waiter is registered before the
    /// publish can create any event.
    pub async fn cmd(&self, master: &Master, jid: Option<String>) -> Result<Json> {
        master.wait_ready(Duration::from_secs(5)).await?;
        let jid = jid.unwrap_or_else(|| master.new_jid());
        let sub = master.bus().subscribe_jid(&jid);
        let reply = self.publish(master, &jid).await?;
        if reply.minions.is_empty() && reply.missing.is_empty() {
            return Ok(Json::Object(Map::new()));
        }
        let mut out = Map::new();
        let outcome = self
            .collect(master, sub, &reply, |id, data| {
                out.insert(id.to_owned(), self.shape(data, &reply.jid));
            })
            .await;
        for id in outcome.no_return {
            let missing = outcome.missing.contains(&id);
            out.insert(id, self.no_return_value(master, &reply.jid, missing));
        }
        Ok(Json::Object(out))
    }

    /// A minion's return as `cmd` reports it.
    pub fn shape(&self, data: &Json, jid: &str) -> Json {
        let ret = data.get("return").cloned().unwrap_or(Json::Null);
        if !self.full_return {
            return ret;
        }
        let mut m = Map::new();
        m.insert("ret".into(), ret);
        m.insert(
            "retcode".into(),
            data.get("retcode").cloned().unwrap_or(json!(0)),
        );
        m.insert("jid".into(), Json::String(jid.into()));
        if let Some(out) = data.get("out") {
            m.insert("out".into(), out.clone());
        }
        Json::Object(m)
    }

    /// The value for a minion that never returned (version dependent).
    pub fn no_return_value(&self, master: &Master, jid: &str, missing: bool) -> Json {
        let modern = missing || master.bus().stamps_have_offset() == Some(true);
        if !modern {
            return Json::Bool(false);
        }
        let msg = format!(
            "Minion did not return. [No response]\nThe minions may not have all finished running and any \
             remaining minions will return upon completion. To look up the return data for this job later, \
             run the following command:\n\nsalt-run jobs.lookup_jid {jid}"
        );
        if self.full_return {
            json!({"out": "no_return", "ret": msg, "retcode": 1})
        } else {
            Json::String(msg)
        }
    }

    /// Wait for returns of `reply.jid` on `sub`, calling `on_return(id, data)`
    /// once per minion, probing pending minions with `saltutil.find_job`
    /// after `timeout` as `LocalClient.get_iter_returns` does.
    pub async fn collect(
        &self,
        master: &Master,
        mut sub: JidSubscription,
        reply: &PubReply,
        mut on_return: impl FnMut(&str, &Json),
    ) -> Collected {
        let mut expected: Vec<String> = Vec::new();
        let mut expected_set: HashSet<String> = HashSet::new();
        let mut missing: HashSet<String> = reply.missing.iter().cloned().collect();
        for m in reply.minions.iter().chain(reply.missing.iter()) {
            if expected_set.insert(m.clone()) {
                expected.push(m.clone());
            }
        }
        let mut returned: HashSet<String> = HashSet::new();
        let mut deadline = Instant::now() + secs(self.timeout);
        let mut handle = |ev: &crate::events::Event,
                          expected: &mut Vec<String>,
                          expected_set: &mut HashSet<String>,
                          missing: &mut HashSet<String>,
                          returned: &mut HashSet<String>| {
            let data = ev.data();
            if let Some(stamp) = data.get("_stamp").and_then(Json::as_str) {
                master.bus().note_stamp(stamp);
            }
            if ev.tag.ends_with("/new") {
                for (key, set) in [("minions", None), ("missing", Some(&mut *missing))] {
                    if let Some(list) = data.get(key).and_then(Json::as_array) {
                        let mut set = set;
                        for m in list.iter().filter_map(Json::as_str) {
                            if expected_set.insert(m.to_owned()) {
                                expected.push(m.to_owned());
                            }
                            if let Some(s) = set.as_deref_mut() {
                                s.insert(m.to_owned());
                            }
                        }
                    }
                }
            } else if ev.tag.contains("/ret/") && data.get("return").is_some() {
                let id = data
                    .get("id")
                    .and_then(Json::as_str)
                    .map(str::to_owned)
                    .or_else(|| ev.tag.rsplit('/').next().map(str::to_owned))
                    .unwrap_or_default();
                if returned.insert(id.clone()) {
                    if expected_set.insert(id.clone()) {
                        expected.push(id.clone());
                    }
                    on_return(&id, data);
                }
            }
        };
        loop {
            let pending: Vec<String> = expected
                .iter()
                .filter(|m| !returned.contains(*m) && !missing.contains(*m))
                .cloned()
                .collect();
            if pending.is_empty() && !expected.is_empty() {
                break;
            }
            tokio::select! {
                ev = sub.recv() => match ev {
                    Some(ev) => handle(&ev, &mut expected, &mut expected_set, &mut missing, &mut returned),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if pending.is_empty() {
                        break;
                    }
                    let running = self
                        .find_job(master, &reply.jid, &pending, &mut sub, |ev| {
                            handle(ev, &mut expected, &mut expected_set, &mut missing, &mut returned);
                            pending.iter().all(|m| returned.contains(m))
                        })
                        .await;
                    if running.iter().all(|m| returned.contains(m)) {
                        break;
                    }
                    deadline = Instant::now() + secs(self.timeout);
                }
            }
        }
        let no_return = expected
            .into_iter()
            .filter(|m| !returned.contains(m))
            .collect();
        Collected { no_return, missing }
    }

    /// Ask `pending` minions whether they still run `jid`; returns those that
    /// do. Events of the main job that arrive meanwhile go to `on_main`,
    /// which answers whether every pending minion has now returned.
    ///
    /// As in `LocalClient.get_iter_returns`, the main job's returns are
    /// awaited for the whole `gather_job_timeout` even when every probed
    /// minion has already answered "not running": on a busy minion the job
    /// may simply not have started when `saltutil.find_job` looked, and its
    /// return then arrives a moment later. Only when a probed minion reports
    /// the job running does the wait end early (the caller then extends it).
    async fn find_job(
        &self,
        master: &Master,
        jid: &str,
        pending: &[String],
        main: &mut JidSubscription,
        mut on_main: impl FnMut(&crate::events::Event) -> bool,
    ) -> Vec<String> {
        let probe_jid = master.new_jid();
        let mut probe = master.bus().subscribe_jid(&probe_jid);
        let tgt = Json::Array(pending.iter().cloned().map(Json::String).collect());
        let reply = match publish(
            master,
            &tgt,
            "list",
            &json!("saltutil.find_job"),
            &[json!(jid)],
            "",
            &probe_jid,
            &self.kwargs,
            self.pub_timeout,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(jid, error = %e, "saltutil.find_job could not be published");
                return Vec::new();
            }
        };
        let mut answered: HashSet<String> = HashSet::new();
        let mut running = Vec::new();
        let deadline = Instant::now() + secs(self.gather_job_timeout);
        loop {
            tokio::select! {
                ev = probe.recv() => match ev {
                    Some(ev) if ev.tag.contains("/ret/") => {
                        let data = ev.data();
                        if let Some(id) = data.get("id").and_then(Json::as_str) {
                            if answered.insert(id.to_owned()) {
                                let busy = matches!(data.get("return"), Some(Json::Object(m)) if !m.is_empty());
                                if busy {
                                    running.push(id.to_owned());
                                }
                            }
                        }
                        if answered.len() >= reply.minions.len() && !running.is_empty() {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                ev = main.recv() => match ev {
                    Some(ev) => {
                        if on_main(&ev) {
                            break;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        running
    }
}

/// What [`LocalJob::collect`] ends with.
#[derive(Debug, Default)]
pub struct Collected {
    /// Minions that were expected but never returned.
    pub no_return: Vec<String>,
    /// Names targeted that have no accepted key.
    pub missing: HashSet<String>,
}

/// Send one `publish` with credentials inside `kwargs` (never the root `key`).
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    master: &Master,
    tgt: &Json,
    tgt_type: &str,
    fun: &Json,
    arg: &[Json],
    ret: &str,
    jid: &str,
    kwargs: &Map<String, Json>,
    timeout: f64,
) -> Result<PubReply> {
    let load = value::map([
        ("cmd", Mp::from("publish")),
        ("tgt", value::from_json(tgt)),
        ("fun", value::from_json(fun)),
        ("arg", Mp::Array(arg.iter().map(value::from_json).collect())),
        ("tgt_type", Mp::from(tgt_type)),
        ("ret", Mp::from(ret)),
        ("jid", Mp::from(jid)),
        ("user", Mp::from(super::os_user())),
        ("kwargs", value::from_json(&Json::Object(kwargs.clone()))),
    ]);
    let reply = master.request(load, secs(timeout.max(1.0))).await?;
    let reply = value::to_json(&reply);
    let strings = |key: &str| -> Vec<String> {
        reply
            .get(key)
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let minions = strings("minions");
    let missing = strings("missing");
    let jid = reply
        .get("jid")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    if jid.is_empty() && minions.is_empty() {
        // "Master could not resolve minions for target ..." — nothing matched.
        return Ok(PubReply {
            jid,
            minions,
            missing,
        });
    }
    if jid.is_empty() {
        return Err(SaltError::Master(format!(
            "the Salt master answered the publish without a jid: {reply}"
        )));
    }
    Ok(PubReply {
        jid,
        minions,
        missing,
    })
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

/// `local`: `LocalClient.cmd`.
pub async fn local(master: &Master, low: Lowstate) -> Result<Json> {
    let job = LocalJob::from_low(master, &low, &[])?;
    let jid = match low.get("jid") {
        Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    job.cmd(master, jid).await
}

/// `local_async`: `LocalClient.run_job` — publish and return `{jid, minions}`.
pub async fn local_async(master: &Master, low: Lowstate) -> Result<Json> {
    let job = LocalJob::from_low(master, &low, &[])?;
    let jid = match low.get("jid") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let reply = job.publish(master, &jid).await?;
    if reply.minions.is_empty() {
        return Ok(Json::Object(Map::new()));
    }
    Ok(json!({"jid": reply.jid, "minions": reply.minions}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jid_like_integers_become_strings() {
        let out = condition_args(vec![
            json!(10000000000000000000u64),
            json!(5),
            json!("x"),
            json!(i64::MIN),
            json!(-100000000000000000i64),
            json!(1.5),
        ]);
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
}
