//! `local_batch`: `LocalClient.cmd_batch` / `salt.cli.batch.Batch`.
//!
//! Ping the target, then run the job on at most `batch` minions at a time
//! (a count or a percentage of the responders), refilling a slot when a
//! minion returns (after `batch_wait` seconds). Each sub-batch is its own
//! publish with a fresh jid, as 3006/3007 do (3008 reuses one batch jid and
//! fires `salt/batch/*` progress events; the returns are the same). The
//! result is one `{minion: return}` map per return, in completion order,
//! which HTTP surfaces splice into their `return` list.

use serde_json::{json, Map, Value as Json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::local::LocalJob;
use super::{seconds, secs, truthy, Lowstate};
use crate::error::{Result, SaltError};
use crate::master::Master;

/// Lowstate keys the batch driver consumes.
const BATCH_KEYS: [&str; 5] = ["batch", "batch_wait", "client", "failhard", "raw"];

enum Msg {
    Return(String, Json, bool),
    SlotFree,
}

/// Run a batch job.
pub async fn local_batch(master: &Master, low: Lowstate) -> Result<Vec<Json>> {
    let mut job = LocalJob::from_low(master, &low, &BATCH_KEYS)?;
    job.kwargs
        .insert("gather_job_timeout".into(), json!(job.gather_job_timeout));
    job.kwargs.insert("yield_pub_data".into(), json!(true));
    let batch = low.get("batch").cloned().unwrap_or(json!("10%"));
    let batch_wait = seconds(low.get("batch_wait")).unwrap_or(0.0);
    let failhard = truthy(low.get("failhard"));

    // 1. Who answers a ping on the original target.
    let mut ping = job.clone();
    ping.fun = json!("test.ping");
    ping.arg = Vec::new();
    ping.full_return = false;
    let pinged = ping.cmd(master, None).await?;
    let responders: Vec<String> = match &pinged {
        Json::Object(m) => m
            .iter()
            .filter(|(_, v)| **v == Json::Bool(true))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    };
    if responders.is_empty() {
        return Ok(Vec::new());
    }
    let size = batch_size(&batch, responders.len())?;

    // 2. Slots.
    job.kwargs.insert("raw".into(), json!(false));
    let (tx, mut rx) = mpsc::channel::<Msg>(2 * responders.len() + 8);
    let mut tasks = JoinSet::new();
    let mut queue = responders.into_iter();
    let mut active = 0usize;
    let mut stop = false;
    let mut out = Vec::new();
    loop {
        if !stop && active < size {
            let chunk: Vec<String> = queue.by_ref().take(size - active).collect();
            if !chunk.is_empty() {
                active += chunk.len();
                let mut sub_job = job.clone();
                sub_job.tgt = Json::Array(chunk.into_iter().map(Json::String).collect());
                sub_job.tgt_type = "list".into();
                tasks.spawn(run_sub_batch(master.clone(), sub_job, tx.clone()));
            }
        }
        if active == 0 {
            break;
        }
        match rx.recv().await {
            Some(Msg::Return(id, value, failed)) => {
                let mut m = Map::new();
                m.insert(id, value);
                out.push(Json::Object(m));
                if failed && failhard {
                    stop = true;
                }
                if batch_wait > 0.0 {
                    let tx = tx.clone();
                    tasks.spawn(async move {
                        tokio::time::sleep(secs(batch_wait)).await;
                        let _ = tx.send(Msg::SlotFree).await;
                    });
                } else {
                    active -= 1;
                }
            }
            Some(Msg::SlotFree) => active -= 1,
            None => break,
        }
    }
    Ok(out)
}

async fn run_sub_batch(master: Master, job: LocalJob, tx: mpsc::Sender<Msg>) {
    let jid = master.new_jid();
    let sub = master.bus().subscribe_jid(&jid);
    let targets: Vec<String> = job
        .tgt
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let reply = match job.publish(&master, &jid).await {
        Ok(r) => r,
        Err(e) => {
            for id in targets {
                let _ = tx.send(Msg::Return(id, json!(e.to_string()), true)).await;
            }
            return;
        }
    };
    // The channel has room for every message of every minion, so
    // `try_send` from the synchronous callback never drops one.
    let outcome = job
        .collect(&master, sub, &reply, |id, data| {
            let failed = data.get("retcode").and_then(Json::as_i64).unwrap_or(0) != 0
                || data.get("success") == Some(&Json::Bool(false));
            let _ = tx.try_send(Msg::Return(
                id.to_owned(),
                job.shape(data, &reply.jid),
                failed,
            ));
        })
        .await;
    for id in outcome.no_return {
        let missing = outcome.missing.contains(&id);
        let _ = tx
            .send(Msg::Return(
                id,
                job.no_return_value(&master, &reply.jid, missing),
                true,
            ))
            .await;
    }
    // Targets the master did not accept at all free their slots too.
    let seen: std::collections::HashSet<&String> =
        reply.minions.iter().chain(reply.missing.iter()).collect();
    for id in targets.iter().filter(|t| !seen.contains(t)) {
        let _ = tx
            .send(Msg::Return(id.clone(), Json::Bool(false), true))
            .await;
    }
}

/// `Batch.get_bnum`: a count, or a percentage of the responders (at least 1).
pub fn batch_size(batch: &Json, responders: usize) -> Result<usize> {
    let text = match batch {
        Json::String(s) => s.trim().to_owned(),
        Json::Number(n) => n.to_string(),
        _ => {
            return Err(SaltError::Invocation(
                "'batch' must be a number or a percentage".into(),
            ))
        }
    };
    let invalid = || SaltError::Invocation(format!("Invalid batch data sent: {text}"));
    if let Some(pct) = text.strip_suffix('%') {
        let pct: f64 = pct.trim().parse().map_err(|_| invalid())?;
        let n = (responders as f64 * pct / 100.0) as usize;
        Ok(n.max(1))
    } else {
        let n: f64 = text.parse().map_err(|_| invalid())?;
        if n < 1.0 {
            return Err(invalid());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_follow_get_bnum() {
        assert_eq!(batch_size(&json!("10%"), 3), Ok(1));
        assert_eq!(batch_size(&json!("50%"), 10), Ok(5));
        assert_eq!(batch_size(&json!("2"), 3), Ok(2));
        assert_eq!(batch_size(&json!(1), 3), Ok(1));
        assert!(batch_size(&json!("x"), 3).is_err());
        assert!(batch_size(&json!("0"), 3).is_err());
    }
}
