//! Lowstate requests: parse a body into chunks and run them in order.
//!
//! Shared by every surface; surfaces differ only in where credentials come
//! from and how bodies and responses are encoded.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use futures_util::TryFutureExt;

use salt_client::clients::{Client, Lowstate, Output as ClientOutput, Text, WriteReturn};
use salt_client::{redact, ErrorKind};
use serde_json::Value as Json;

use crate::error::ApiError;
use crate::metrics::CallLabels;
use crate::pyjson;
use crate::state::AppState;
use crate::throttle::{self, Throttle};

/// A body must be a JSON array of objects (rest_wsgi), or one object that
/// rest_cherrypy wraps into a list.
pub fn chunks_from_json(body: Json, allow_single_object: bool) -> Result<Vec<Lowstate>, ApiError> {
    match body {
        Json::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Json::Object(m) => Ok(m),
                _ => Err(ApiError::bad_request(format!(
                    "Lowstate chunk {i} is not an object; the body must be a list of lowstate objects"
                ))),
            })
            .collect(),
        Json::Object(m) if allow_single_object => Ok(vec![m]),
        _ => Err(ApiError::bad_request("The body must be a JSON list of lowstate objects")),
    }
}

/// One chunk's answer in the `return` list.
#[derive(Debug)]
pub enum Answer {
    Value(Json),
    /// A synchronous `local` chunk's answer, already written as Python's
    /// `json.dumps` writes it (see [`run_answers`]).
    Text(Text),
}

/// Run chunks in order and collect the `return` list, splicing sequence
/// results (`local_batch`) as rest_cherrypy does. The first failing chunk
/// fails the request.
pub async fn run_chunks(state: &AppState, chunks: Vec<Lowstate>) -> Result<Vec<Json>, ApiError> {
    let answers = run_answers(state, chunks, false).await?;
    Ok(answers
        .into_iter()
        .map(|a| match a {
            Answer::Value(v) => v,
            // Only asked for with `text`.
            Answer::Text(t) => serde_json::from_slice(&t.to_vec()).unwrap_or(Json::Null),
        })
        .collect())
}

/// [`run_chunks`], for a `return` list written in JSON: with `text`, a
/// synchronous `local` chunk's answer is written as JSON text as its
/// returns arrive (`Gatherer::answer_with`), never built as a map of them
/// first; [`crate::response::return_response`] sends it as it is.
pub async fn run_answers(
    state: &AppState,
    chunks: Vec<Lowstate>,
    text: bool,
) -> Result<Vec<Answer>, ApiError> {
    // Nothing of the list is held while a chunk waits for its job: the
    // answers are gathered after it, and the list's buffer goes with its
    // last chunk (most calls have one).
    let mut out = Vec::new();
    let mut chunks = VecDeque::from(chunks);
    while let Some(chunk) = chunks.pop_front() {
        if chunks.is_empty() {
            chunks = VecDeque::new();
        }
        if let Some(token) = chunk.get("token") {
            match token.as_str() {
                Some(t) if salt_client::auth::validate_token_text(t).is_ok() => {}
                _ => {
                    return Err(ApiError::unauthorized(
                        "Authentication failed: invalid token",
                    ))
                }
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let shown = redact::redacted(&Json::Object(chunk.clone())).to_string();
            tracing::debug!(lowstate = %crate::logsafe::bounded(&shown), "running lowstate");
        }
        let present = |k: &str| chunk.contains_key(k);
        let attempt = if chunk.contains_key("token") || !present("username") || !present("password")
        {
            // A token, or credentials so incomplete that they are refused
            // before they reach the master: nothing to throttle.
            None
        } else {
            // Inline eauth credentials: the master checks them (PAM holds
            // one of its workers for seconds), so they go through the throttle.
            let field = |k: &str| chunk.get(k).and_then(Json::as_str).unwrap_or("");
            Some(
                Throttle::global()
                    .begin(field("username"), field("password"), throttle::peer())
                    .map_err(ApiError::throttled)?,
            )
        };
        let client = client_label(&chunk);
        let started = std::time::Instant::now();
        // Both boxed: this future, which every waiting call holds, keeps a
        // pointer instead of room for the larger of the two.
        let result = if chunk.get("client").and_then(Json::as_str) == Some("local") {
            Box::pin(run_local(state, chunk, text))
                .await
                .map(Output::Answer)
        } else {
            let call = Box::pin(state.netapi.run(chunk));
            Box::pin(state.shutdown.or_cut(None, call))
                .await
                .map(Output::Client)
        };
        if let Some(attempt) = attempt {
            match &result {
                Err(e) if e.kind() == salt_client::ErrorKind::Authentication => attempt.failed(),
                Ok(_) => attempt.succeeded(),
                Err(_) => drop(attempt),
            }
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => outcome_label(e.kind()),
        };
        state
            .metrics
            .observe_call(CallLabels { client, outcome }, started.elapsed());
        match result? {
            Output::Answer(a) => out.push(a),
            Output::Client(ClientOutput::One(v)) => out.push(Answer::Value(v)),
            Output::Client(ClientOutput::Many(vs)) => out.extend(vs.into_iter().map(Answer::Value)),
        }
    }
    Ok(out)
}

/// The chunk's client as a metrics label: one of Salt's client names, or
/// `other` (a name chosen by the request must not become a series).
fn client_label(chunk: &Lowstate) -> &'static str {
    let named = chunk.get("client").and_then(Json::as_str).unwrap_or("");
    named.parse::<Client>().map_or("other", Client::as_str)
}

fn outcome_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Authentication => "authentication",
        ErrorKind::Token => "token",
        ErrorKind::Authorization => "authorization",
        ErrorKind::Invocation => "invocation",
        ErrorKind::Master => "master",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Unreachable => "unreachable",
    }
}

/// What a chunk ran to: a `local` answer, or another client's output.
enum Output {
    Answer(Answer),
    Client(ClientOutput),
}

/// A synchronous `local` chunk, answered as `Netapi::run` answers it
/// (`Gatherer::answer`; with `text`, its JSON text, `Gatherer::answer_with`,
/// the returns written by the bus as they arrive),
/// or cut short with its jid when the grace period of a shutdown is over.
/// Its own future is about half of `Netapi::run`'s, which holds room for the
/// largest of every client's: at 10,000 calls in flight, ~2 KiB less per
/// call.
async fn run_local(
    state: &AppState,
    mut chunk: Lowstate,
    text: bool,
) -> Result<Answer, salt_client::SaltError> {
    let cut = &state.shutdown;
    let jid = assign_jid(&state.netapi, &mut chunk);
    // The gatherer moves into its boxed answer inside this block: kept in a
    // `match` on the publish, it (and the `?` temporary) would stay in this
    // future, unused, while the call waits (~1.5 KiB per call).
    let answer: Pin<Box<dyn Future<Output = Result<Answer, salt_client::SaltError>> + Send>> = {
        let write = text.then_some(answer_entry as WriteReturn);
        let started = cut.or_cut(Some(&jid), Box::pin(state.netapi.start_local(chunk, write)));
        let Some(gather) = started.await? else {
            return Ok(Answer::Value(Json::Object(serde_json::Map::new())));
        };
        match write {
            Some(write) => Box::pin(gather.answer_with(write).map_ok(Answer::Text)),
            None => Box::pin(gather.answer().map_ok(Answer::Value)),
        }
    };
    cut.or_cut(Some(&jid), answer).await
}

/// One entry of a `local` answer's JSON text: `"<id>": <value>`, as
/// Python's `json.dumps` writes it.
fn answer_entry(out: &mut Vec<u8>, id: &str, value: &Json) {
    pyjson::write(out, &Json::String(id.to_owned()));
    out.extend_from_slice(b": ");
    pyjson::write(out, value);
}

/// The jid of a `local` chunk: the caller's, or a new one halite puts in
/// the chunk (as Salt's `LocalClient` would make it), so that a call cut
/// short while its job is being published can still name it.
pub fn assign_jid(netapi: &salt_client::clients::Netapi, chunk: &mut Lowstate) -> String {
    match chunk.get("jid") {
        Some(Json::String(jid)) if !jid.is_empty() => jid.clone(),
        _ => {
            let jid = netapi.master().new_jid();
            chunk.insert("jid".into(), Json::String(jid.clone()));
            jid
        }
    }
}
