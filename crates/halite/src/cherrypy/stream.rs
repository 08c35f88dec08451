//! The event bus over HTTP: `/events` (server-sent events) and `/ws`
//! (websocket). Both read the process's one bus subscription, redact
//! passwords and tokens from every event, and stop when the token expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt};
use salt_client::acl::{Acl, EventFilter};
use salt_client::auth;
use salt_client::events::Event;
use salt_client::redact;
use serde_json::{json, Map, Value as Json};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};

use super::{session, CpState};
use crate::error::ApiError;
use crate::settings::EventVisibility;

/// The event filter of a stream opened with `token`, by the configured
/// policy: `None` shows every event.
fn filter_for(state: &CpState, token: &auth::Token) -> Option<EventFilter> {
    if state.opts.event_visibility == EventVisibility::All {
        return None;
    }
    let master = state.app.netapi.master();
    let user = token.get("name").and_then(Json::as_str).unwrap_or("");
    let perms = auth::permissions(master.config().external_auth(), token);
    Some(EventFilter::new(user, Acl::new(perms)))
}

/// Whether the stream's holder may see `ev`.
fn shown(filter: &mut Option<EventFilter>, ev: &Event) -> bool {
    filter
        .as_mut()
        .is_none_or(|f| f.visible(&ev.tag, ev.data()))
}

/// How often a stream re-checks that its token is still valid, whether or
/// not events flow.
const RECHECK: Duration = Duration::from_secs(60);
/// Bytes of rendered events one `/events` client may have waiting to be
/// sent. The bus queue is shared by every stream, so a client that stops
/// reading would otherwise pin up to the whole queue (thousands of events of
/// any size); past this budget it is dropped instead.
pub const CLIENT_BUDGET: usize = 1 << 20;
/// How long a stream client may leave its budget full (`/events`) or a
/// message unsent (`/ws`) before it is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest websocket message and frame a client may send: the protocol
/// only has clients say "websocket client ready".
pub const WS_MAX_INBOUND: usize = 4 << 10;
/// Jobs and minions the `format_events` view remembers (oldest forgotten).
const MAX_JOBS: usize = 256;
const MAX_MINIONS: usize = 10_000;

/// The token of a streaming request: header, cookie, then `?token=` or
/// `?salt_token=` (what a browser `EventSource` can send).
fn stream_token(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    path: Option<String>,
) -> Option<String> {
    path.filter(|p| !p.is_empty())
        .or_else(|| session::request_token(headers))
        .or_else(|| query.get("token").cloned())
        .or_else(|| query.get("salt_token").cloned())
}

/// One event as salt-api streams it: `{"tag": ..., "data": ...}`, redacted.
/// A webhook event also carries its raw `body`; when the parsed `post`
/// needed redaction, the raw text is withheld too.
pub fn event_json(ev: &Event) -> Json {
    let original = ev.data();
    let mut data = redact::redacted(original);
    if data.get("post") != original.get("post") {
        if let Some(body) = data.get_mut("body") {
            *body = json!(redact::REDACTED);
        }
    }
    json!({"tag": ev.tag, "data": data})
}

/// An SSE field value: CR and LF end a field (and a blank line an event),
/// so a tag carrying them could forge events; they are written escaped.
fn sse_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\r', '\n']) {
        value.replace('\r', "\\r").replace('\n', "\\n").into()
    } else {
        value.into()
    }
}

fn sse_frame(ev: &Event) -> String {
    // The data is JSON, which escapes every control character.
    let data = crate::pyjson::to_vec(&event_json(ev)).unwrap_or_default();
    format!(
        "tag: {}\ndata: {}\n\n",
        sse_field(&ev.tag),
        String::from_utf8_lossy(&data)
    )
}

/// Feed one `/events` client: bus events rendered as SSE frames into `out`,
/// never more than [`CLIENT_BUDGET`] bytes waiting. Ends when the client is
/// gone, stalls past [`SEND_TIMEOUT`], or its token stops being valid.
async fn feed_sse(
    state: CpState,
    token: String,
    mut filter: Option<EventFilter>,
    mut rx: broadcast::Receiver<Arc<Event>>,
    out: mpsc::UnboundedSender<(String, OwnedSemaphorePermit)>,
) {
    let budget = Arc::new(Semaphore::new(CLIENT_BUDGET));
    let master = state.app.netapi.master().clone();
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    loop {
        let frame = tokio::select! {
            () = out.closed() => return,
            () = state.app.shutdown.wait() => {
                // The last event of the stream: EventSource clients see why
                // it ends (and reconnect after `retry`).
                if let Ok(permit) = budget.clone().try_acquire_owned() {
                    let _ = out.send((SHUTDOWN_EVENT.to_owned(), permit));
                }
                return;
            }
            _ = recheck.tick() => {
                if session::check(&master, &token).await.is_err() {
                    return;
                }
                continue;
            }
            ev = rx.recv() => match ev {
                Ok(ev) if shown(&mut filter, &ev) => sse_frame(&ev),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "an /events client fell behind; events skipped");
                    // An SSE comment: EventSource ignores it, a reader of the raw stream sees the gap.
                    format!(": halite skipped {n} events: this client reads too slowly\n\n")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let cost = u32::try_from(frame.len().clamp(1, CLIENT_BUDGET)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            () = out.closed() => return,
            p = tokio::time::timeout(SEND_TIMEOUT, budget.clone().acquire_many_owned(cost)) => p,
        };
        match permit {
            Ok(Ok(permit)) => {
                if out.send((frame, permit)).is_err() {
                    return;
                }
            }
            _ => {
                tracing::warn!(
                    budget = CLIENT_BUDGET,
                    "an /events client stopped reading; it is dropped"
                );
                return;
            }
        }
    }
}

/// The final `/events` frame when halite stops.
const SHUTDOWN_EVENT: &str =
    "event: shutdown\ndata: {\"tag\": \"halite/shutdown\", \"data\": {}}\n\n";

/// `GET /events`.
pub async fn events(
    State(state): State<CpState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let master = state.app.netapi.master().clone();
    let token = stream_token(&headers, &query, None).ok_or_else(session::no_token)?;
    let filter = filter_for(&state, &session::validate(&master, &token).await?);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(feed_sse(
        state,
        token,
        filter,
        master.bus().subscribe_all(),
        tx,
    ));
    let first =
        stream::once(async { Ok::<_, std::convert::Infallible>("retry: 400\n".to_owned()) });
    // The permit goes back to the client's budget as the frame is handed to
    // the connection.
    let frames = stream::unfold(rx, |mut rx| async move {
        let (frame, _permit) = rx.recv().await?;
        Some((Ok(frame), rx))
    });
    let body = first.chain(frames);
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// `GET /ws` and `GET /ws/<token>`.
pub async fn ws(
    State(state): State<CpState>,
    token: Option<Path<String>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let master = state.app.netapi.master().clone();
    let token =
        stream_token(&headers, &query, token.map(|Path(t)| t)).ok_or_else(session::no_token)?;
    let filter = filter_for(&state, &session::validate(&master, &token).await?);
    let format_events = query.contains_key("format_events");
    Ok(upgrade
        .max_message_size(WS_MAX_INBOUND)
        .max_frame_size(WS_MAX_INBOUND)
        .on_upgrade(move |socket| ws_session(socket, state, token, filter, format_events)))
}

/// Send one message, or give up after [`SEND_TIMEOUT`] (the client is
/// dropped: a stalled reader must not hold its place in the bus queue).
async fn ws_send(socket: &mut WebSocket, msg: Message) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!("a /ws client stopped reading; it is dropped");
            false
        }
    }
}

async fn ws_session(
    mut socket: WebSocket,
    state: CpState,
    token: String,
    mut filter: Option<EventFilter>,
    format_events: bool,
) {
    let master = state.app.netapi.master().clone();
    let mut rx = master.bus().subscribe_all();
    let mut ready = false;
    let mut info = SaltInfo::default();
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    loop {
        tokio::select! {
            () = state.app.shutdown.wait() => {
                // 1001 "going away": the server is stopping.
                let close = axum::extract::ws::CloseFrame {
                    code: axum::extract::ws::close_code::AWAY,
                    reason: "halite is shutting down".into(),
                };
                let _ = socket.send(Message::Close(Some(close))).await;
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "websocket client ready" {
                        ready = true;
                    }
                    if !ws_send(&mut socket, Message::Text("server received message".into())).await {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = recheck.tick() => {
                if session::check(&master, &token).await.is_err() {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
                    return;
                }
            }
            ev = rx.recv() => match ev {
                Ok(ev) if ready && shown(&mut filter, &ev) => {
                    let out = if format_events {
                        info.process(&event_json(&ev))
                    } else {
                        let data = crate::pyjson::to_vec(&event_json(&ev)).unwrap_or_default();
                        vec![format!("data: {}\n\n", String::from_utf8_lossy(&data))]
                    };
                    for text in out {
                        if !ws_send(&mut socket, Message::Text(text.into())).await {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "a /ws client fell behind; events skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Forget the oldest entries until one more fits under `max`.
fn make_room(map: &mut Map<String, Json>, max: usize) {
    while map.len() >= max {
        let Some(oldest) = map.keys().next().cloned() else {
            return;
        };
        map.shift_remove(&oldest);
    }
}

/// The `format_events` view of rest_cherrypy's `event_processor.SaltInfo`:
/// a running picture of jobs and minions, sent whole on each change.
#[derive(Debug, Default)]
pub struct SaltInfo {
    jobs: Map<String, Json>,
    minions: Map<String, Json>,
}

impl SaltInfo {
    fn publish(&self, key: &str, value: Json) -> String {
        String::from_utf8_lossy(&crate::pyjson::to_vec(&json!({key: value})).unwrap_or_default())
            .into_owned()
    }

    fn publish_minions(&self) -> String {
        let list: Vec<Json> = self
            .minions
            .iter()
            .map(|(id, info)| {
                let mut m = info.as_object().cloned().unwrap_or_default();
                m.insert("id".into(), json!(id));
                Json::Object(m)
            })
            .collect();
        self.publish("minions", Json::Array(list))
    }

    /// Process one `{tag, data}` event; returns the messages to send.
    pub fn process(&mut self, event: &Json) -> Vec<String> {
        let tag = event["tag"].as_str().unwrap_or("");
        let data = &event["data"];
        let parts: Vec<&str> = tag.split('/').collect();
        let mut out = Vec::new();
        if parts.len() < 2 {
            return out;
        }
        match (parts.get(1).copied(), parts.get(3).copied()) {
            (Some("job"), Some("new")) => {
                let Some(jid) = data["jid"].as_str() else {
                    return out;
                };
                let minions: Map<String, Json> = data["minions"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter_map(Json::as_str)
                            .map(|m| (m.to_owned(), json!({"success": false})))
                            .collect()
                    })
                    .unwrap_or_default();
                make_room(&mut self.jobs, MAX_JOBS);
                self.jobs.insert(
                    jid.to_owned(),
                    json!({"jid": jid, "start_time": data["_stamp"], "minions": minions, "fun": data["fun"],
                           "tgt": data["tgt"], "tgt_type": data["tgt_type"], "state": "running"}),
                );
                if data["fun"] == "grains.items" {
                    self.minions.clear();
                }
                out.push(self.publish("jobs", Json::Object(self.jobs.clone())));
            }
            (Some("job"), Some("ret")) if parts.len() >= 5 => {
                let (jid, mid) = (parts[2], parts[4]);
                if !self.jobs.contains_key(jid) {
                    make_room(&mut self.jobs, MAX_JOBS);
                }
                let job = self.jobs.entry(jid.to_owned()).or_insert_with(|| json!({}));
                if let Json::Object(job) = job {
                    let minions = job.entry("minions").or_insert_with(|| json!({}));
                    if let Json::Object(minions) = minions {
                        if !minions.contains_key(mid) {
                            make_room(minions, MAX_MINIONS);
                        }
                        minions.insert(
                            mid.to_owned(),
                            json!({"return": data["return"], "retcode": data["retcode"], "success": data["success"]}),
                        );
                        let complete = minions.values().all(|m| m["success"] == json!(true));
                        if complete {
                            job.insert("state".into(), json!("complete"));
                        }
                    }
                }
                out.push(self.publish("jobs", Json::Object(self.jobs.clone())));
                if data["fun"] == "grains.items" {
                    if !self.minions.contains_key(mid) {
                        make_room(&mut self.minions, MAX_MINIONS);
                    }
                    self.minions
                        .insert(mid.to_owned(), json!({"grains": data["return"]}));
                    out.push(self.publish_minions());
                }
            }
            (Some("key"), _) => {
                let id = data["id"].as_str().unwrap_or("").to_owned();
                match data["act"].as_str() {
                    Some("delete") => {
                        self.minions.remove(&id);
                    }
                    Some("accept") => {
                        if !self.minions.contains_key(&id) {
                            make_room(&mut self.minions, MAX_MINIONS);
                        }
                        self.minions.entry(id).or_insert_with(|| json!({}));
                    }
                    _ => {}
                }
                out.push(self.publish_minions());
            }
            (Some("presence"), _) => {
                if let Some(present) = data["present"].as_array() {
                    let present: Vec<&str> = present.iter().filter_map(Json::as_str).collect();
                    let known: std::collections::HashSet<&str> = present.iter().copied().collect();
                    let before = self.minions.len();
                    self.minions.retain(|m, _| known.contains(m.as_str()));
                    for m in present.iter().take(MAX_MINIONS) {
                        if !self.minions.contains_key(*m) {
                            make_room(&mut self.minions, MAX_MINIONS);
                        }
                        self.minions
                            .entry((*m).to_owned())
                            .or_insert_with(|| json!({}));
                    }
                    if self.minions.len() != before {
                        out.push(self.publish_minions());
                    }
                }
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_info_tracks_jobs() {
        let mut info = SaltInfo::default();
        let new = json!({"tag": "salt/job/1/new", "data": {"jid": "1", "minions": ["a"], "fun": "test.ping",
            "tgt": "*", "tgt_type": "glob", "_stamp": "t"}});
        let out = info.process(&new);
        assert_eq!(out.len(), 1);
        assert!(out[0].contains("\"running\""));
        let ret = json!({"tag": "salt/job/1/ret/a", "data": {"return": true, "retcode": 0, "success": true, "fun": "test.ping"}});
        let out = info.process(&ret);
        assert!(out[0].contains("\"complete\""));
    }

    #[test]
    fn salt_info_history_is_bounded() {
        let mut info = SaltInfo::default();
        for i in 0..(MAX_JOBS + 10) {
            let jid = format!("2026{i:016}");
            info.process(&json!({"tag": format!("salt/job/{jid}/new"),
                "data": {"jid": jid, "minions": ["a"], "fun": "test.ping"}}));
            info.process(&json!({"tag": format!("salt/job/{jid}/ret/m{i}"),
                "data": {"return": true, "success": true, "fun": "grains.items"}}));
        }
        assert_eq!(info.jobs.len(), MAX_JOBS);
        assert!(info.minions.len() <= MAX_MINIONS);
        let many: Vec<String> = (0..MAX_MINIONS * 2).map(|i| format!("m{i}")).collect();
        info.process(&json!({"tag": "salt/presence/present", "data": {"present": many}}));
        assert_eq!(info.minions.len(), MAX_MINIONS);
    }

    #[test]
    fn sse_fields_cannot_carry_line_breaks() {
        let ev = Event::new(
            "salt/netapi/hook/x\r\rdata: {\"forged\":true}\r\r".into(),
            bytes::Bytes::from_static(&[0x80]),
        );
        let frame = sse_frame(&ev);
        // One event: its two fields and the blank line that ends it.
        assert_eq!(frame.matches(['\r', '\n']).count(), 3, "{frame:?}");
        assert!(frame.starts_with("tag: salt/netapi/hook/x\\r\\rdata: "));
        assert!(!frame.lines().any(|l| l.starts_with("data: {\"forged\"")));
    }
}
