//! The event bus over HTTP: `/events` (server-sent events) and `/ws`
//! (websocket). Both read the process's one bus subscription, redact
//! passwords and tokens from every event, and stop when the token expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use salt_client::events::Event;
use salt_client::redact;
use serde_json::{json, Map, Value as Json};
use tokio::sync::broadcast;

use super::format::Format;
use super::{session, CpState};
use crate::error::ApiError;

/// How often a stream re-checks that its token is still valid.
const RECHECK: Duration = Duration::from_secs(60);

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

fn sse_frame(ev: &Event) -> String {
    let data = crate::pyjson::to_vec(&event_json(ev)).unwrap_or_default();
    format!(
        "tag: {}\ndata: {}\n\n",
        ev.tag,
        String::from_utf8_lossy(&data)
    )
}

struct SseState {
    rx: broadcast::Receiver<Arc<Event>>,
    state: CpState,
    token: String,
    checked: Instant,
    started: bool,
    closing: bool,
}

/// The final `/events` frame when halite stops.
const SHUTDOWN_EVENT: &str =
    "event: shutdown\ndata: {\"tag\": \"halite/shutdown\", \"data\": {}}\n\n";

/// `GET /events`.
pub async fn events(
    State(state): State<CpState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let master = state.app.netapi.master().clone();
    let Some(token) = stream_token(&headers, &query, None) else {
        return Format::Json.error(ApiError::unauthorized("No authentication token given"));
    };
    if let Err(e) = session::validate(&master, &token).await {
        return Format::Json.error(e);
    }
    let st = SseState {
        rx: master.bus().subscribe_all(),
        state,
        token,
        checked: Instant::now(),
        started: false,
        closing: false,
    };
    let body = stream::unfold(st, |mut st| async move {
        if !st.started {
            st.started = true;
            return Some((
                Ok::<_, std::convert::Infallible>("retry: 400\n".to_owned()),
                st,
            ));
        }
        if st.closing {
            return None;
        }
        loop {
            if st.checked.elapsed() >= RECHECK {
                let master = st.state.app.netapi.master().clone();
                if session::validate(&master, &st.token).await.is_err() {
                    return None;
                }
                st.checked = Instant::now();
            }
            let next = tokio::select! {
                next = tokio::time::timeout(RECHECK, st.rx.recv()) => next,
                () = st.state.app.shutdown.wait() => {
                    // The last event of the stream: EventSource clients see
                    // why it ends (and reconnect after `retry`).
                    st.closing = true;
                    return Some((Ok(SHUTDOWN_EVENT.to_owned()), st));
                }
            };
            match next {
                Ok(Ok(ev)) => return Some((Ok(sse_frame(&ev)), st)),
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    tracing::warn!(skipped = n, "an /events client fell behind; events skipped");
                    // An SSE comment: EventSource ignores it, a reader of the raw stream sees the gap.
                    return Some((
                        Ok(format!(
                            ": halite skipped {n} events: this client reads too slowly\n\n"
                        )),
                        st,
                    ));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Err(_) => continue,
            }
        }
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /ws` and `GET /ws/<token>`.
pub async fn ws(
    State(state): State<CpState>,
    token: Option<Path<String>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let master = state.app.netapi.master().clone();
    let Some(token) = stream_token(&headers, &query, token.map(|Path(t)| t)) else {
        return Format::Json.error(ApiError::unauthorized("No authentication token given"));
    };
    if let Err(e) = session::validate(&master, &token).await {
        return Format::Json.error(e);
    }
    let format_events = query.contains_key("format_events");
    upgrade.on_upgrade(move |socket| ws_session(socket, state, token, format_events))
}

async fn ws_session(mut socket: WebSocket, state: CpState, token: String, format_events: bool) {
    let master = state.app.netapi.master().clone();
    let mut rx = master.bus().subscribe_all();
    let mut ready = false;
    let mut info = SaltInfo::default();
    let mut checked = Instant::now();
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
                    if socket.send(Message::Text("server received message".into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            ev = rx.recv() => match ev {
                Ok(ev) if ready => {
                    if checked.elapsed() >= RECHECK {
                        if session::validate(&master, &token).await.is_err() {
                            let _ = socket.send(Message::Close(None)).await;
                            return;
                        }
                        checked = Instant::now();
                    }
                    let out = if format_events {
                        info.process(&event_json(&ev))
                    } else {
                        let data = crate::pyjson::to_vec(&event_json(&ev)).unwrap_or_default();
                        vec![format!("data: {}\n\n", String::from_utf8_lossy(&data))]
                    };
                    for text in out {
                        if socket.send(Message::Text(text.into())).await.is_err() {
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
                let job = self.jobs.entry(jid.to_owned()).or_insert_with(|| json!({}));
                if let Json::Object(job) = job {
                    let minions = job.entry("minions").or_insert_with(|| json!({}));
                    if let Json::Object(minions) = minions {
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
                        self.minions.entry(id).or_insert_with(|| json!({}));
                    }
                    _ => {}
                }
                out.push(self.publish_minions());
            }
            (Some("presence"), _) => {
                if let Some(present) = data["present"].as_array() {
                    let present: Vec<&str> = present.iter().filter_map(Json::as_str).collect();
                    let before = self.minions.len();
                    self.minions.retain(|m, _| present.contains(&m.as_str()));
                    for m in &present {
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
}
