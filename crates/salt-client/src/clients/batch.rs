//! `local_batch`: `LocalClient.cmd_batch` / `salt.cli.batch.Batch`.
//!
//! Ping the target, then run the job on at most `batch` minions at a time
//! (a count or a percentage of the responders), refilling a slot when a
//! minion returns (after `batch_wait` seconds). Each sub-batch is its own
//! publish with a fresh jid, as 3006/3007 do (3008's client publishes every
//! sub-batch under one batch jid; the returns are the same). The result is
//! one `{minion: return}` map per return, in completion order, which HTTP
//! surfaces splice into their `return` list.
//!
//! With a Salt 3008 master the batch is also announced on the event bus as
//! 3008's `salt.cli.batch.Batch` announces it: `salt/batch/<jid>/new`, a
//! `salt/batch/<jid>/progress` at every change, and `salt/batch/<jid>/complete`
//! (or `/halted` after a `failhard` stop), each carrying the whole batch
//! state ([`BatchState`]); the master's batch manager keeps it for the
//! `batch.status` and `batch.list_active` runners, and UIs watch it.

use serde_json::{json, Map, Value as Json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::local::LocalJob;
use super::Low;
use crate::args::secs;
use crate::error::{Result, SaltError};
use crate::master::Master;

/// Lowstate keys the batch driver consumes.
const BATCH_KEYS: [&str; 5] = ["batch", "batch_wait", "client", "failhard", "raw"];

enum Msg {
    /// A minion's value for the result, whether it trips `failhard`, and
    /// how the batch state records it.
    Return(String, Json, bool, Record),
    SlotFree,
}

/// How a finished minion is recorded in the batch state.
enum Record {
    /// It returned: `{ret, retcode, jid[, out]}`.
    Done(Json),
    /// It did not (`"timeout"`) or was not targeted (`"failed"`).
    Failed(&'static str),
}

/// Run a batch job.
pub async fn local_batch(master: &Master, low: Low) -> Result<Vec<Json>> {
    let mut job = LocalJob::from_low(master, &low, &BATCH_KEYS)?;
    job.kwargs
        .insert("gather_job_timeout".into(), json!(job.gather_job_timeout));
    job.kwargs.insert("yield_pub_data".into(), json!(true));
    let batch = low.batch.clone().unwrap_or(json!("10%"));
    let batch_wait = low.batch_wait.unwrap_or(0.0);
    let failhard = low.failhard;

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
    // The ping told which release the master is (its event stamps).
    let mut state = (master.bus().stamps_have_offset() == Some(true))
        .then(|| BatchState::new(master, &job, &responders, size, batch_wait, failhard));
    if let Some(st) = &state {
        st.fire(master, "new").await;
    }

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
                if let Some(st) = &mut state {
                    st.dispatch(&chunk);
                    st.fire(master, "progress").await;
                }
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
            Some(Msg::Return(id, value, failed, record)) => {
                if let Some(st) = &mut state {
                    st.finish(&id, record, failed && failhard);
                    st.fire(master, "progress").await;
                }
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
            Some(Msg::SlotFree) => {
                if let Some(st) = &mut state {
                    st.slot_free();
                }
                active -= 1
            }
            None => break,
        }
    }
    if let Some(st) = &state {
        let end = if st.halted() { "halted" } else { "complete" };
        st.fire(master, end).await;
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
                let _ = tx
                    .send(Msg::Return(
                        id,
                        json!(e.to_string()),
                        true,
                        Record::Failed("failed"),
                    ))
                    .await;
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
            let mut done = Map::new();
            done.insert(
                "ret".into(),
                data.get("return").cloned().unwrap_or(Json::Null),
            );
            done.insert(
                "retcode".into(),
                data.get("retcode").cloned().unwrap_or(json!(0)),
            );
            done.insert("jid".into(), json!(reply.jid));
            if let Some(o) = data.get("out") {
                done.insert("out".into(), o.clone());
            }
            let _ = tx.try_send(Msg::Return(
                id.to_owned(),
                job.shape(data, &reply.jid),
                failed,
                Record::Done(Json::Object(done)),
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
                Record::Failed("timeout"),
            ))
            .await;
    }
    // Targets the master did not accept at all free their slots too.
    let seen: std::collections::HashSet<&str> =
        reply.minions.iter().chain(reply.missing.iter()).collect();
    for id in targets.iter().filter(|t| !seen.contains(t.as_str())) {
        let _ = tx
            .send(Msg::Return(
                id.clone(),
                Json::Bool(false),
                true,
                Record::Failed("failed"),
            ))
            .await;
    }
}

/// Unix time in seconds, as Python's `time.time()`.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A number as Python would have it: whole numbers as integers.
fn num(x: f64) -> Json {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The batch state Salt 3008 ships in its `salt/batch/<jid>/*` events
/// (`salt.utils.batch_state.create_batch_state`, driver `cli`): `pending`
/// minions, `active` ones with their dispatch time, `done` ones with their
/// return, `failed` ones with the reason, `wait` (the end times of
/// `batch_wait` pauses), and the job's parameters.
pub struct BatchState {
    jid: String,
    all_minions: Vec<String>,
    pending: Vec<String>,
    active: Map<String, Json>,
    done: Map<String, Json>,
    failed: Map<String, Json>,
    wait: Vec<f64>,
    batch_size: usize,
    fun: Json,
    arg: Vec<Json>,
    tgt: Json,
    tgt_type: String,
    failhard: bool,
    batch_wait: f64,
    timeout: f64,
    gather_job_timeout: f64,
    created: f64,
    last_progress: f64,
    halted: bool,
    ret: String,
    user: String,
}

impl BatchState {
    fn new(
        master: &Master,
        job: &LocalJob,
        minions: &[String],
        size: usize,
        batch_wait: f64,
        failhard: bool,
    ) -> BatchState {
        let t = now();
        // `condition_input(arg, kwarg)`, as the job publishes it: the
        // caller's `kwarg` rides along as a trailing `{"__kwarg__": true}`
        // map. (The publish's other keyword arguments carry the
        // credentials; they never go into an event.)
        let arg = job.arg.clone();
        let user = master.config().user();
        BatchState {
            jid: master.new_jid(),
            all_minions: minions.to_vec(),
            pending: minions.to_vec(),
            active: Map::new(),
            done: Map::new(),
            failed: Map::new(),
            wait: Vec::new(),
            batch_size: size,
            fun: job.fun.clone(),
            arg,
            tgt: job.tgt.clone(),
            tgt_type: job.tgt_type.clone(),
            failhard,
            batch_wait: batch_wait.trunc(),
            timeout: job.timeout,
            gather_job_timeout: job.gather_job_timeout,
            created: t,
            last_progress: t,
            halted: false,
            ret: job.ret.clone(),
            user: if user.is_empty() { "root".into() } else { user },
        }
    }

    /// Minions moved from `pending` to `active`.
    fn dispatch(&mut self, minions: &[String]) {
        let t = now();
        self.pending.retain(|m| !minions.contains(m));
        for m in minions {
            self.active.insert(m.clone(), json!(t));
        }
        self.last_progress = t;
    }

    /// A minion finished; `halt` when it trips `failhard`.
    fn finish(&mut self, id: &str, record: Record, halt: bool) {
        let t = now();
        self.active.remove(id);
        match record {
            Record::Done(v) => self.done.insert(id.to_owned(), v),
            Record::Failed(why) => self.failed.insert(id.to_owned(), json!(why)),
        };
        if self.batch_wait > 0.0 {
            self.wait.push(t + self.batch_wait);
        }
        self.halted |= halt;
        self.last_progress = t;
    }

    /// A `batch_wait` pause ended.
    fn slot_free(&mut self) {
        if !self.wait.is_empty() {
            self.wait.remove(0);
        }
    }

    fn halted(&self) -> bool {
        self.halted
    }

    /// The event data: `batch_output.state_payload`.
    pub fn payload(&self) -> Json {
        let user = json!(self.user);
        json!({
            "jid": self.jid,
            "fun": self.fun,
            "tgt": self.tgt,
            "tgt_type": self.tgt_type,
            "user": user,
            "driver": "cli",
            "state": {
                "jid": self.jid,
                "all_minions": self.all_minions,
                "pending": self.pending,
                "active": self.active,
                "done": self.done,
                "failed": self.failed,
                "wait": self.wait,
                "batch_size": self.batch_size,
                "fun": self.fun,
                "arg": self.arg,
                "kwargs": {},
                "tgt": self.tgt,
                "tgt_type": self.tgt_type,
                "failhard": self.failhard,
                "batch_wait": num(self.batch_wait),
                "timeout": num(self.timeout),
                "gather_job_timeout": num(self.gather_job_timeout),
                "last_progress": self.last_progress,
                "created": self.created,
                "halted": self.halted,
                "halted_reason": if self.halted { json!("failhard") } else { Json::Null },
                "driver": "cli",
                "ret": self.ret,
                "user": user,
            },
        })
    }

    /// Fire `salt/batch/<jid>/<what>`; best effort, as in Salt.
    async fn fire(&self, master: &Master, what: &str) {
        let tag = format!("salt/batch/{}/{what}", self.jid);
        if let Err(e) = master.bus().fire(&tag, &self.payload()).await {
            tracing::debug!(error = %e, tag, "cannot fire a batch event");
        }
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
