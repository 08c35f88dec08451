//! `local` and `local_async`: publish a job to minions and (for `local`) wait
//! for their returns as `LocalClient.cmd` does, probing minions that are still
//! running with `saltutil.find_job` (docs/PROTOCOL.md §5.2, §5.3).

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use rmpv::Value as Mp;
use serde_json::{json, Map, Value as Json};
use tokio::time::Instant;

use super::expected::{Expected, Names};
use super::Low;
use crate::args::{condition_input, secs};
use crate::error::{Result, SaltError};
use crate::events::{self, Delivery, Event, JidSubscription, Shaped};
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
    pub minions: Names,
    pub missing: Names,
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
    /// Build a job from a lowstate, as `LocalClient.cmd`/`run_job` would;
    /// the keys in `consumed` (the client's own) are not forwarded.
    pub fn from_low(master: &Master, low: &Low, consumed: &[&str]) -> Result<Self> {
        let config = master.config();
        let tgt = match &low.tgt {
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
        let fun = match &low.fun {
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
        let tgt_type = match &low.tgt_type {
            None | Some(Json::Null) => "glob".to_owned(),
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err(SaltError::Invocation("'tgt_type' must be a string".into())),
        };
        let conf_file = config.path().display().to_string();
        let (tgt, tgt_type) = targeting::expand(&tgt, &tgt_type, config.nodegroups(), &conf_file)?;
        let arg = condition_input(low.arg.clone(), low.kwarg.clone()?);
        let mut ret = match &low.ret {
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
            .rest(&[&CMD_KEYS, consumed])
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let timeout = low.timeout.unwrap_or_else(|| config.timeout());
        let gather_job_timeout = low
            .gather_job_timeout
            .unwrap_or_else(|| config.gather_job_timeout());
        let pub_timeout = low.timeout.unwrap_or_else(|| config.publish_timeout());
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
            full_return: low.full_return,
        })
    }

    /// Publish the job under `jid` (`""` lets the master choose).
    pub async fn publish(&self, master: &Master, jid: &str) -> Result<PubReply> {
        publish_with(master, self.load(jid), self.pub_timeout).await
    }

    /// The load of its `publish`.
    fn load(&self, jid: &str) -> Mp {
        publish_load(
            &self.tgt,
            &self.tgt_type,
            &self.fun,
            &self.arg,
            &self.ret,
            jid,
            kwargs_value(&self.kwargs),
        )
    }

    /// What a [`Gatherer`] keeps of this job once it is published.
    pub fn published(&self) -> Published {
        Published {
            kwargs: value::encode(&kwargs_value(&self.kwargs)).into_boxed_slice(),
            timeout: self.timeout,
            gather_job_timeout: self.gather_job_timeout,
            pub_timeout: self.pub_timeout,
            full_return: self.full_return,
        }
    }

    /// Publish the job and start gathering its returns; `None` when no
    /// minion matched the target. The jid is the caller's or one halite
    /// makes, so the waiter is registered before the publish can create any
    /// event.
    ///
    /// With `write`, the returns are written as text by the bus as they
    /// arrive, from before the publish on, and are read with
    /// [`Gatherer::next_text`] or [`Gatherer::answer_with`]: the waiter then
    /// has that text queued, not the events (frame, tag, decoded data), so
    /// a job whose 10,000 returns arrive at once costs its answer's text
    /// while it waits, not its events.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn start(
        self,
        master: &Master,
        jid: Option<String>,
        write: Option<WriteReturn>,
    ) -> impl Future<Output = Result<Option<Gatherer>>> + Send + '_ {
        async move {
            master.wait_ready(Duration::from_secs(5)).await?;
            let jid = jid.unwrap_or_else(|| master.new_jid());
            let sub = master.bus().subscribe_jid(&jid);
            if let Some(write) = write {
                sub.shape_returns(text_shaper(self.full_return, write));
            }
            // The job is dropped before the master answers: what the
            // gatherer keeps of it is taken first, and the load is encoded
            // before the request waits for a connection. A burst of calls
            // waits there.
            let published = self.published();
            let (load, timeout) = (self.load(&jid), self.pub_timeout);
            drop(self);
            let reply = publish_with(master, load, timeout).await?;
            if reply.minions.is_empty() && reply.missing.is_empty() {
                return Ok(None);
            }
            Ok(Some(Gatherer::new(published, master.clone(), sub, reply)))
        }
    }

    /// Publish and wait for every return: `LocalClient.cmd`.
    pub async fn cmd(self, master: &Master, jid: Option<String>) -> Result<Json> {
        match self.start(master, jid, None).await? {
            Some(gather) => gather.answer().await,
            None => Ok(Json::Object(Map::new())),
        }
    }

    /// A minion's return as `cmd` reports it.
    pub fn shape(&self, data: &Json, jid: &str) -> Json {
        shape(self.full_return, data, jid)
    }

    /// What `cmd` reports for a minion that did not return.
    pub fn no_return_value(&self, master: &Master, jid: &str, missing: bool) -> Json {
        no_return_value(self.full_return, master, jid, missing)
    }

    /// Wait for returns of `reply.jid` on `sub`, calling `on_return(id, data)`
    /// once per minion, probing pending minions with `saltutil.find_job`
    /// after `timeout` as `LocalClient.get_iter_returns` does.
    pub async fn collect(
        &self,
        master: &Master,
        sub: JidSubscription,
        reply: &PubReply,
        mut on_return: impl FnMut(&str, &Json),
    ) -> Collected {
        let mut gather = Gatherer::new(self.published(), master.clone(), sub, reply.clone());
        while let Some((id, ev)) = gather.next().await {
            on_return(&id, ev.data());
        }
        gather.finish()
    }
}

/// A `saltutil.find_job` probe in flight.
struct Probe {
    sub: JidSubscription,
    asked: usize,
    answered: HashSet<String>,
    running: Vec<String>,
    deadline: Instant,
}

/// Text written in pieces of about [`Text::PIECE`] bytes: an answer of
/// 60 MB (10,000 minions' `grains.items`) is never one buffer that doubles,
/// which for a moment holds the old buffer and the new one, and with most
/// allocators copies the one into the other.
#[derive(Debug, Default)]
pub struct Text {
    last: Vec<u8>,
    /// The pieces before `last` and their bytes; boxed, as most answers
    /// are one piece and every waiting call holds a `Text`.
    before: Option<Box<(Vec<Bytes>, usize)>>,
}

impl Text {
    /// The size of a piece, give or take the write that fills it.
    pub const PIECE: usize = 64 * 1024;

    /// Append `bytes`.
    pub fn push(&mut self, bytes: &[u8]) {
        self.write(|buf| buf.extend_from_slice(bytes));
    }

    /// Append what `f` writes, kept in one piece.
    pub fn write(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.last.capacity() == 0 && self.before.is_some() {
            // Large, then: the next piece at its full size. A small text
            // (most answers, and every call still waiting with its `{`)
            // grows as a `Vec` does.
            self.last.reserve_exact(Self::PIECE);
        }
        f(&mut self.last);
        if self.last.len() >= Self::PIECE {
            self.finish_piece();
        }
    }

    /// The bytes written.
    pub fn len(&self) -> usize {
        self.before.as_ref().map_or(0, |b| b.1) + self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces, in order.
    pub fn into_pieces(mut self) -> Vec<Bytes> {
        self.finish_piece();
        self.before.map(|b| b.0).unwrap_or_default()
    }

    /// All of it in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len());
        for piece in self.before.iter().flat_map(|b| &b.0) {
            all.extend_from_slice(piece);
        }
        all.extend_from_slice(&self.last);
        all
    }

    fn finish_piece(&mut self) {
        if self.last.is_empty() {
            return;
        }
        if self.last.capacity() - self.last.len() > self.last.len() / 8 {
            // A write overflowed the piece and doubled it: a piece keeps
            // its allocation for as long as the answer is sent.
            self.last.shrink_to_fit();
        }
        let before = self.before.get_or_insert_with(Box::default);
        before.1 += self.last.len();
        before.0.push(Bytes::from(std::mem::take(&mut self.last)));
    }
}

/// The returns of one published `local` job, one at a time, as they arrive
/// (`LocalClient.get_iter_returns`). Nothing is kept but the sets of minion
/// ids: the caller decides whether a return is gathered into an answer or
/// streamed out and forgotten.
///
/// After `timeout` without every return, the pending minions are probed with
/// `saltutil.find_job`. As in Salt, the main job's returns are awaited for
/// the whole `gather_job_timeout` even when every probed minion has already
/// answered "not running": on a busy minion the job may simply not have
/// started when `saltutil.find_job` looked, and its return then arrives a
/// moment later. Only when a probed minion reports the job running does the
/// probe end early (and the wait is extended by `timeout`).
pub struct Gatherer {
    job: Published,
    master: Master,
    /// Its jid is the job's.
    sub: JidSubscription,
    expected: Expected,
    deadline: Instant,
    /// Boxed: rare, and inline it would be room in every waiting call.
    probe: Option<Box<Probe>>,
    done: bool,
    interrupted: bool,
}

enum Step {
    Main(Option<Delivery>),
    Probe(Option<std::sync::Arc<Event>>),
    Timeout,
}

impl Gatherer {
    /// Gather the returns of `reply` (the master's answer to the publish
    /// whose events `sub` receives).
    pub fn new(job: Published, master: Master, sub: JidSubscription, reply: PubReply) -> Self {
        let mut expected = Expected::with_capacity(reply.minions.len(), reply.minions.text_len());
        for m in reply.minions.iter() {
            expected.expect(m);
        }
        for m in reply.missing.iter() {
            expected.mark_missing(m);
        }
        let deadline = Instant::now() + secs(job.timeout);
        Gatherer {
            interrupted: false,
            job,
            master,
            sub,
            expected,
            deadline,
            probe: None,
            done: false,
        }
    }

    /// Whether the gathering ended because the event bus was lost (the
    /// master went away) rather than because the job finished or timed out.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// The error a caller reports for an interrupted job: the master is
    /// unavailable, and the job can be looked up later by its jid.
    pub fn interrupted_error(&self) -> SaltError {
        SaltError::Unreachable(format!(
            "the Salt master went away while job {jid} was running; its returns may still reach \
             another master: look it up with the runner jobs.lookup_jid (jid {jid})",
            jid = self.sub.jid()
        ))
    }

    /// The jid being gathered.
    pub fn jid(&self) -> &str {
        self.sub.jid()
    }

    /// What is kept of the job: how its returns are shaped.
    pub fn job(&self) -> &Published {
        &self.job
    }

    /// The minions known to be targeted so far, in the master's order.
    pub fn expected_minions(&self) -> impl ExactSizeIterator<Item = &str> {
        self.expected.iter().map(|(id, _)| id)
    }

    /// The next minion's return (its id and the return event), or `None`
    /// when every expected minion returned or the waiting is over.
    pub async fn next(&mut self) -> Option<(String, std::sync::Arc<Event>)> {
        loop {
            match self.next_delivery().await? {
                (id, Delivery::Event(ev)) => return Some((id, ev)),
                // Written by the bus: only for a job started with a
                // `WriteReturn`, whose caller reads `next_text`.
                (_, Delivery::Shaped(_)) => continue,
            }
        }
    }

    /// The next minion's return, as an event or shaped by the bus (see
    /// [`JidSubscription::shape_returns`]).
    async fn next_delivery(&mut self) -> Option<(String, Delivery)> {
        loop {
            if self.done {
                return None;
            }
            if self.probe.is_none() && self.expected.done() {
                self.done = true;
                return None;
            }
            let step = if self.probe.is_none() {
                tokio::select! {
                    ev = self.sub.recv_delivery() => Step::Main(ev),
                    _ = tokio::time::sleep_until(self.deadline) => Step::Timeout,
                }
            } else {
                // Boxed: probing is rare, and inline its wait (two
                // subscriptions' futures and a timer) would be room in every
                // waiting call's future.
                Box::pin(self.probe_step()).await
            };
            match step {
                Step::Main(None) => {
                    // With the bus lost (the master went away), the returns
                    // still to come will not reach this bus. The job itself
                    // goes on (in a cluster the other masters still receive
                    // and store its returns).
                    self.interrupted = self.sub.bus_lost();
                    self.done = true;
                    return None;
                }
                Step::Main(Some(delivery)) => {
                    let id = match &delivery {
                        Delivery::Event(ev) => self.handle(ev),
                        Delivery::Shaped(s) => self
                            .expected
                            .mark_returned(s.id())
                            .then(|| s.id().to_owned()),
                    };
                    if self.probe.is_some() && self.expected.pending() == 0 {
                        self.end_probe();
                    }
                    if let Some(id) = id {
                        return Some((id, delivery));
                    }
                }
                Step::Probe(None) => self.end_probe(),
                Step::Probe(Some(ev)) => {
                    let Some(probe) = self.probe.as_mut() else {
                        continue;
                    };
                    if !ev.tag.contains("/ret/") {
                        continue;
                    }
                    let data = ev.data();
                    if let Some(id) = data.get("id").and_then(Json::as_str) {
                        if probe.answered.insert(id.to_owned()) {
                            let busy = matches!(data.get("return"), Some(Json::Object(m)) if !m.is_empty());
                            if busy {
                                probe.running.push(id.to_owned());
                            }
                        }
                    }
                    if probe.answered.len() >= probe.asked && !probe.running.is_empty() {
                        self.end_probe();
                    }
                }
                Step::Timeout if self.probe.is_some() => self.end_probe(),
                Step::Timeout => {
                    let pending = self.expected.pending_list();
                    if pending.is_empty() {
                        self.done = true;
                        return None;
                    }
                    // Boxed: probing is rare, and inline its future would
                    // be most of every waiting call's `next` future.
                    match Box::pin(self.start_probe(&pending)).await {
                        Some(probe) => self.probe = Some(Box::new(probe)),
                        None => {
                            self.done = true;
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// What comes first while a `saltutil.find_job` probe runs.
    async fn probe_step(&mut self) -> Step {
        let Some(probe) = self.probe.as_mut() else {
            return Step::Timeout;
        };
        tokio::select! {
            ev = self.sub.recv_delivery() => Step::Main(ev),
            ev = probe.sub.recv() => Step::Probe(ev),
            _ = tokio::time::sleep_until(probe.deadline) => Step::Timeout,
        }
    }

    /// Gather every return into the synchronous `local` answer: the
    /// returns in arrival order, then the minions that did not return. A
    /// master that went away mid-call is an `Unreachable` error naming the
    /// jid, never a partial answer.
    ///
    /// Not an `async fn`: its future would hold the gatherer twice (the
    /// argument, and the local it moves into), the async block holds it once.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn answer(mut self) -> impl Future<Output = Result<Json>> + Send {
        async move {
            let mut out = Map::new();
            while let Some((id, ev)) = self.next().await {
                out.insert(id, self.job.shape(ev.data(), self.sub.jid()));
            }
            out.extend(self.no_returns()?);
            Ok(Json::Object(out))
        }
    }

    /// The next minion's return as the text `write` makes of it: written by
    /// the bus (when the job was started with the same `write`), or here
    /// for a return that was queued as an event.
    pub async fn next_text(&mut self, write: WriteReturn) -> Option<(String, Bytes)> {
        let (id, delivery) = self.next_delivery().await?;
        let text = match delivery {
            Delivery::Shaped(s) => s.into_text(),
            Delivery::Event(ev) => {
                let mut text = Vec::new();
                write(&mut text, &id, &self.job.shape(ev.data(), self.sub.jid()));
                Bytes::from(text)
            }
        };
        Some((id, text))
    }

    /// The synchronous `local` answer as JSON text, written once: what
    /// [`Gatherer::answer`] gathers, in the same order, each entry
    /// (`"<id>": <value>`) written by `write`, and no map of the returns
    /// built first. Start the job with the same `write`
    /// ([`LocalJob::start`]) to have the bus write the returns as they
    /// arrive; otherwise it does from here on.
    ///
    /// The text is bounded like the queue it comes from: past
    /// [`JID_RETURN_BYTES`](crate::events::JID_RETURN_BYTES) (returns from
    /// minions that were never targeted, fired to grow it) the rest is left
    /// out, with a warning.
    #[allow(clippy::manual_async_fn)] // on purpose: see `answer`
    pub fn answer_with(mut self, write: WriteReturn) -> impl Future<Output = Result<Text>> + Send {
        async move {
            // A no-op when the job was started with it.
            self.sub
                .shape_returns(text_shaper(self.job.full_return, write));
            let mut out = Text::default();
            out.push(b"{");
            let mut cut = false;
            while let Some((_, text)) = self.next_text(write).await {
                if out.len() > crate::events::JID_RETURN_BYTES {
                    cut = true;
                    continue;
                }
                if out.len() > 1 {
                    out.push(b", ");
                }
                out.push(&text);
            }
            if cut {
                tracing::warn!(jid = %self.sub.jid(), "the answer was cut at its size bound");
            }
            for (id, value) in self.no_returns()? {
                if out.len() > 1 {
                    out.push(b", ");
                }
                out.write(|buf| write(buf, &id, &value));
            }
            out.push(b"}");
            Ok(out)
        }
    }

    /// How an answer ends: an error naming the jid if the master went away
    /// mid-call, otherwise the minions that did not return, each with what
    /// `cmd` reports for it.
    fn no_returns(self) -> Result<Vec<(String, Json)>> {
        if self.interrupted {
            return Err(self.interrupted_error());
        }
        let job = self.job.clone();
        let master = self.master.clone();
        let jid = self.sub.jid().to_owned();
        let outcome = self.finish();
        Ok(outcome
            .no_return
            .into_iter()
            .map(|id| {
                let missing = outcome.missing.contains(&id);
                let value = job.no_return_value(&master, &jid, missing);
                (id, value)
            })
            .collect())
    }

    /// What the gathering ended with: who never returned, who is missing.
    pub fn finish(self) -> Collected {
        if self.sub.lost_returns() {
            tracing::warn!(
                jid = %self.sub.jid(),
                "returns of this job were dropped because its waiter fell too far behind"
            );
        }
        let mut outcome = Collected::default();
        for (id, status) in self.expected.iter() {
            if status.returned {
                continue;
            }
            if status.missing {
                outcome.missing.insert(id.to_owned());
            }
            outcome.no_return.push(id.to_owned());
        }
        outcome
    }

    /// Take one event of the main job into account; the minion id when it
    /// is a minion's first return.
    fn handle(&mut self, ev: &Event) -> Option<String> {
        if ev.tag.ends_with("/new") {
            // Only its lists of names are needed: not decoded as JSON (for
            // 10,000 minions, ~0.7 MiB while the returns arrive).
            let expected = &mut self.expected;
            ev.strings_at("minions", |m| expected.expect(m));
            ev.strings_at("missing", |m| expected.mark_missing(m));
            return None;
        }
        let data = ev.data();
        if let Some(stamp) = data.get("_stamp").and_then(Json::as_str) {
            self.master.bus().note_stamp(stamp);
        }
        let id = return_id(&ev.tag, data)?;
        self.expected.mark_returned(id).then(|| id.to_owned())
    }

    /// Ask `pending` minions whether they still run the job.
    async fn start_probe(&mut self, pending: &[String]) -> Option<Probe> {
        let probe_jid = self.master.new_jid();
        let sub = self.master.bus().subscribe_jid(&probe_jid);
        let tgt = Json::Array(pending.iter().cloned().map(Json::String).collect());
        let load = publish_load(
            &tgt,
            "list",
            &json!("saltutil.find_job"),
            &[json!(self.sub.jid())],
            "",
            &probe_jid,
            self.job.kwargs(),
        );
        match publish_with(&self.master, load, self.job.pub_timeout).await {
            Ok(reply) => Some(Probe {
                sub,
                asked: reply.minions.len(),
                answered: HashSet::new(),
                running: Vec::new(),
                deadline: Instant::now() + secs(self.job.gather_job_timeout),
            }),
            Err(e) => {
                tracing::debug!(jid = %self.sub.jid(), error = %e, "saltutil.find_job could not be published");
                None
            }
        }
    }

    /// The probe is over: stop if every minion it found running has
    /// returned, otherwise wait another `timeout`.
    fn end_probe(&mut self) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.running.iter().all(|m| self.expected.returned(m)) {
            self.done = true;
        } else {
            self.deadline = Instant::now() + secs(self.job.timeout);
        }
    }
}

/// How a caller has a return written as text: `write(out, id, value)`
/// appends what minion `id`'s return (`value`, shaped as `cmd` reports it)
/// is in its answer — an entry of the answer's object, a line of a stream.
/// A plain function: the bus calls it for every return, and holding one
/// costs a waiting call nothing.
pub type WriteReturn = fn(&mut Vec<u8>, &str, &Json);

/// What the bus runs for a waiter's returns when they are written as text
/// (see [`LocalJob::start`]).
fn text_shaper(full_return: bool, write: WriteReturn) -> crate::events::Shaper {
    Box::new(move |ev| {
        // Not `ev.data()`: the event may also sit in a whole-stream queue,
        // which would then keep its decoded data too.
        let data = ev.data_once();
        let id = return_id(&ev.tag, &data)?;
        let value = shape(full_return, &data, ev.jid()?);
        Shaped::new(id, |out| write(out, id, &value))
    })
}

/// The minion a `local` job's return event (`tag`, `data`) is from, if it
/// is one: its `id`, or the last part of its tag.
fn return_id<'a>(tag: &'a str, data: &'a Json) -> Option<&'a str> {
    if !tag.contains("/ret/") || data.get("return").is_none() {
        return None;
    }
    Some(match data.get("id").and_then(Json::as_str) {
        Some(id) => id,
        None => tag.rsplit('/').next().unwrap_or_default(),
    })
}

/// What a [`Gatherer`] keeps of its [`LocalJob`] once the job is published:
/// how returns are shaped and how pending minions are probed. Not the
/// target, function or arguments; and the publish kwargs (the credentials)
/// encoded, in one allocation of a few dozen bytes instead of a map of
/// strings: at 10,000 calls waiting, ~0.7 KiB less per call.
#[derive(Clone)]
pub struct Published {
    kwargs: Box<[u8]>,
    timeout: f64,
    gather_job_timeout: f64,
    pub_timeout: f64,
    full_return: bool,
}

/// The kwargs hold the caller's credentials: never shown.
impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("kwargs", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("gather_job_timeout", &self.gather_job_timeout)
            .field("pub_timeout", &self.pub_timeout)
            .field("full_return", &self.full_return)
            .finish()
    }
}

impl Published {
    /// A minion's return as `cmd` reports it.
    pub fn shape(&self, data: &Json, jid: &str) -> Json {
        shape(self.full_return, data, jid)
    }

    /// What `cmd` reports for a minion that did not return.
    pub fn no_return_value(&self, master: &Master, jid: &str, missing: bool) -> Json {
        no_return_value(self.full_return, master, jid, missing)
    }

    /// The publish kwargs, for a `saltutil.find_job` probe.
    fn kwargs(&self) -> Mp {
        // Encoded from a value a moment ago: decoding cannot fail.
        value::decode(&self.kwargs).unwrap_or_else(|_| Mp::Map(Vec::new()))
    }
}

/// The publish kwargs as the master reads them.
fn kwargs_value(kwargs: &Map<String, Json>) -> Mp {
    Mp::Map(
        kwargs
            .iter()
            .map(|(k, v)| (Mp::from(k.as_str()), value::from_json(v)))
            .collect(),
    )
}

/// A minion's return as `cmd` reports it.
fn shape(full_return: bool, data: &Json, jid: &str) -> Json {
    let ret = data.get("return").cloned().unwrap_or(Json::Null);
    if !full_return {
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
fn no_return_value(full_return: bool, master: &Master, jid: &str, missing: bool) -> Json {
    let modern = missing || master.bus().stamps_have_offset() == Some(true);
    if !modern {
        return Json::Bool(false);
    }
    let msg = format!(
        "Minion did not return. [No response]\nThe minions may not have all finished running and any \
         remaining minions will return upon completion. To look up the return data for this job later, \
         run the following command:\n\nsalt-run jobs.lookup_jid {jid}"
    );
    if full_return {
        json!({"out": "no_return", "ret": msg, "retcode": 1})
    } else {
        Json::String(msg)
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

/// The load of a `publish`, credentials inside `kwargs` (never the root
/// `key`).
fn publish_load(
    tgt: &Json,
    tgt_type: &str,
    fun: &Json,
    arg: &[Json],
    ret: &str,
    jid: &str,
    kwargs: Mp,
) -> Mp {
    value::map([
        ("cmd", Mp::from("publish")),
        ("tgt", value::from_json(tgt)),
        ("fun", value::from_json(fun)),
        ("arg", Mp::Array(arg.iter().map(value::from_json).collect())),
        ("tgt_type", Mp::from(tgt_type)),
        ("ret", Mp::from(ret)),
        ("jid", Mp::from(jid)),
        ("user", Mp::from(super::os_user())),
        ("kwargs", kwargs),
    ])
}

/// Send a `publish` load and read the master's answer.
async fn publish_with(master: &Master, load: Mp, timeout: f64) -> Result<PubReply> {
    let timeout = secs(timeout.max(1.0));
    match master
        .request_read(load, timeout, read_publish_reply)
        .await?
    {
        Ok(reply) => Ok(reply),
        Err(reply) => publish_reply(reply),
    }
}

/// A publish's success read straight from the reply's msgpack bytes,
/// `{"enc": "clear", "load": {"jid": <jid>, "minions": [...], "missing":
/// [...]}}`: the names go into `Names` without a decoded tree of the reply
/// (~0.7 MiB for 10,000 minions, at the moment their returns arrive).
/// `None` for any other reply (an error, a cluster member deferring, no
/// jid, another shape), which [`publish_reply`] reads decoded.
fn read_publish_reply(bytes: &[u8]) -> Option<PubReply> {
    let (mut clear, mut load, mut other) = (false, None, false);
    events::map_entries(bytes, |key, item| match key {
        b"enc" => clear = events::as_string(item) == Some("clear"),
        b"load" => load = Some(item),
        b"error" => other = true,
        _ => {}
    })
    .ok()?;
    let load = load.filter(|_| clear && !other)?;
    let mut jid = None;
    events::map_entries(load, |key, item| match key {
        b"jid" => jid = events::as_string(item),
        b"error" | b"cluster_retry" => other = true,
        _ => {}
    })
    .ok()?;
    let jid = jid.filter(|j| !j.is_empty() && !other)?;
    // Counted first, so each list is allocated once at its size.
    let names = |key: &str| -> Option<Names> {
        let (mut ids, mut bytes) = (0, 0);
        events::map_strings(load, key, |id| {
            ids += 1;
            bytes += id.len();
        })
        .ok()?;
        let mut names = Names::with_capacity(ids, bytes);
        events::map_strings(load, key, |id| {
            names.push(id);
        })
        .ok()?;
        Some(names)
    };
    Some(PubReply {
        jid: jid.to_owned(),
        minions: names("minions")?,
        missing: names("missing")?,
    })
}

/// What the master answered to a `publish`.
fn publish_reply(reply: Mp) -> Result<PubReply> {
    let jid = value::get(&reply, "jid")
        .and_then(Mp::as_str)
        .unwrap_or_default()
        .to_owned();
    let targeted = matches!(value::get(&reply, "minions"), Some(Mp::Array(a)) if !a.is_empty());
    if jid.is_empty() && targeted {
        return Err(SaltError::Master(format!(
            "the Salt master answered the publish without a jid: {}",
            value::to_json(&reply)
        )));
    }
    // An empty jid and no minions: "Master could not resolve minions for
    // target ...", nothing matched. Otherwise the names are read into one
    // string each list: for 10,000 minions a `String` each would be
    // another ~0.5 MiB at the moment the returns arrive.
    let names = |key: &str| -> Names {
        match value::get(&reply, key) {
            Some(Mp::Array(a)) => {
                let ids = || a.iter().filter_map(Mp::as_str);
                let mut names = Names::with_capacity(a.len(), ids().map(str::len).sum());
                for id in ids() {
                    names.push(id);
                }
                names
            }
            _ => Names::default(),
        }
    };
    let (minions, missing) = (names("minions"), names("missing"));
    Ok(PubReply {
        jid,
        minions,
        missing,
    })
}

/// The job of a `local` lowstate and the caller's jid, if any.
fn local_job(master: &Master, low: &Low) -> Result<(LocalJob, Option<String>)> {
    let job = LocalJob::from_low(master, low, &[])?;
    let jid = match &low.jid {
        Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    Ok((job, jid))
}

/// `local`: `LocalClient.cmd`.
pub async fn local(master: &Master, low: Low) -> Result<Json> {
    let (job, jid) = local_job(master, &low)?;
    drop(low);
    job.cmd(master, jid).await
}

/// `local`, started: the job is published and its returns can be gathered
/// one at a time.
///
/// Not an `async fn`: the lowstate (over 1 KiB) is read into the job here,
/// and the future that publishes holds the job only; an `async fn` would
/// hold the lowstate twice while the master answers, for every call.
pub fn start_local(
    master: &Master,
    low: Low,
    write: Option<WriteReturn>,
) -> impl Future<Output = Result<Option<Gatherer>>> + Send + '_ {
    match local_job(master, &low) {
        Ok((job, jid)) => Either::Left(job.start(master, jid, write)),
        Err(e) => Either::Right(std::future::ready(Err(e))),
    }
}

/// `local_async`: `LocalClient.run_job` — publish and return `{jid, minions}`.
pub async fn local_async(master: &Master, low: Low) -> Result<Json> {
    let job = LocalJob::from_low(master, &low, &[])?;
    let jid = match &low.jid {
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

    fn reply_bytes(reply: &Json) -> Vec<u8> {
        value::encode(&value::from_json(reply))
    }

    /// What the decoded path makes of a reply.
    fn decoded(bytes: &[u8]) -> Result<PubReply> {
        let reply = value::decode(bytes).map_err(|e| SaltError::Master(e.to_string()))?;
        publish_reply(crate::transport::interpret_reply(reply)?)
    }

    #[test]
    fn a_publish_reply_read_from_its_bytes_is_the_decoded_one() {
        let minions: Vec<String> = (0..10_000).map(|i| format!("sim-{i}")).collect();
        let bytes = reply_bytes(&json!({
            "enc": "clear",
            "load": {"jid": "20260101000000000001", "minions": minions, "missing": ["gone"]},
        }));
        let read = read_publish_reply(&bytes).expect("read from the bytes");
        let d = decoded(&bytes).expect("decoded");
        assert_eq!(read.jid, d.jid);
        assert_eq!(read.minions, d.minions);
        assert_eq!(read.missing, d.missing);
        assert_eq!(read.minions.len(), 10_000);
    }

    #[test]
    fn other_publish_replies_are_left_to_the_decoded_path() {
        for reply in [
            // Nothing matched the target.
            json!({"enc": "clear", "load": {"jid": "", "minions": []}}),
            json!({"enc": "clear", "load": {"minions": ["a"]}}),
            json!({"enc": "clear", "load": {"ret": false, "cluster_retry": true, "jid": "1"}}),
            json!({"enc": "clear", "load": {"error": {"name": "AuthorizationError"}, "jid": "1"}}),
            json!({"error": {"name": "SaltReqTimeoutError"}, "enc": "clear", "load": {"jid": "1"}}),
            json!({"enc": "aes", "load": {"jid": "1", "minions": ["a"]}}),
            json!({"jid": "1", "minions": ["a"]}),
            json!({"enc": "clear", "load": {"jid": 1, "minions": ["a"]}}),
            json!({"enc": "clear", "load": "bad load"}),
            json!("bad load"),
        ] {
            assert!(
                read_publish_reply(&reply_bytes(&reply)).is_none(),
                "{reply}"
            );
        }
        // Cut anywhere: never a reply.
        let bytes = reply_bytes(&json!({
            "enc": "clear",
            "load": {"jid": "1", "minions": ["a", "b"], "missing": []},
        }));
        assert!(read_publish_reply(&bytes).is_some());
        for n in 0..bytes.len() {
            assert!(read_publish_reply(&bytes[..n]).is_none(), "{n}");
        }
    }

    proptest::proptest! {
        #[test]
        fn reading_a_mutated_publish_reply_never_panics(
            flips in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 0..6)
        ) {
            let mut bytes = reply_bytes(&json!({
                "enc": "clear",
                "load": {"jid": "20260101", "minions": ["a", "bb", "ccc"], "missing": ["d"]},
                "version": 3,
            }));
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            if let Some(read) = read_publish_reply(&bytes) {
                proptest::prop_assert!(read.minions.text_len() + read.missing.text_len() <= bytes.len());
            }
        }
    }

    #[test]
    fn text_in_pieces_is_the_text_written() {
        let mut text = Text::default();
        let mut all = Vec::new();
        for i in 0..20_000 {
            let entry = format!("\"m-{i}\": true, ");
            text.push(entry.as_bytes());
            all.extend_from_slice(entry.as_bytes());
        }
        // One write larger than a piece stays whole.
        let big = vec![b'x'; 3 * Text::PIECE];
        text.write(|buf| buf.extend_from_slice(&big));
        all.extend_from_slice(&big);
        text.push(b"}");
        all.push(b'}');
        assert_eq!(text.len(), all.len());
        assert_eq!(text.to_vec(), all);
        let pieces = text.into_pieces();
        assert_eq!(pieces.concat(), all);
        assert!(pieces.iter().any(|p| p.len() >= big.len()));
        for p in &pieces[..pieces.len() - 1] {
            assert!(p.len() >= Text::PIECE, "{}", p.len());
            assert!(p.len() < Text::PIECE + big.len() + 20, "{}", p.len());
        }
    }

    #[test]
    fn a_text_is_a_few_words() {
        // Every waiting call holds one.
        assert!(std::mem::size_of::<Text>() <= 32);
    }

    #[test]
    fn a_small_text_is_one_small_piece() {
        let mut text = Text::default();
        text.push(b"{");
        text.push(b"\"a\": true}");
        assert!(text.last.capacity() < 64, "{}", text.last.capacity());
        assert_eq!(text.into_pieces(), [Bytes::from_static(b"{\"a\": true}")]);
    }

    #[test]
    fn published_keeps_the_kwargs_and_never_shows_them() {
        let mut kwargs = Map::new();
        kwargs.insert("username".into(), json!("saltdev"));
        kwargs.insert("password".into(), json!("hunter2"));
        let job = LocalJob {
            tgt: json!("*"),
            tgt_type: "glob".into(),
            fun: json!("test.ping"),
            arg: Vec::new(),
            ret: String::new(),
            kwargs,
            timeout: 5.0,
            gather_job_timeout: 10.0,
            pub_timeout: 5.0,
            full_return: false,
        };
        let published = job.published();
        assert_eq!(published.kwargs(), kwargs_value(&job.kwargs));
        let shown = format!("{published:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let packed = format!("{:?}", value::encode(&kwargs_value(&job.kwargs)));
        assert!(!shown.contains(packed.trim_matches(['[', ']'])), "{shown}");
    }
}
