//! Streamed answers for a synchronous `local` call: each minion's return is
//! sent the moment it arrives, instead of one JSON document after the last.
//!
//! A client opts in with `Accept: application/x-ndjson` (one JSON object per
//! line) or `Accept: text/event-stream` (the same objects as SSE `data:`).
//! Only a body of exactly one `local` chunk streams; anything else takes the
//! ordinary path unchanged. The lines, in order:
//!
//! ```text
//! {"jid": "2026...", "minions": ["ms-0", "ms-1", "ms-2"]}     start (SSE event: start)
//! {"id": "ms-1", "return": true}                              one per return (event: return)
//! {"done": true, "jid": "2026...", "returned": 2, "no_return": {"ms-2": "Minion did not return. ..."}}
//! ```
//!
//! `return` and the `no_return` values are exactly what the ordinary answer
//! holds for that minion (including `full_return`). halite keeps no returns
//! for a streamed answer: each is serialised to its line and forgotten. The
//! body is pulled by the connection, so a client that stops reading stops
//! the gathering (its returns wait in the job's bounded queue; the event bus
//! is never held up). Errors before the job is published (credentials,
//! bad lowstate, master down) are ordinary error answers with their status.
//! A master lost mid-call, or the end of a shutdown's grace period, ends the
//! stream with a `done` line holding `interrupted: true` and an `error`
//! naming the jid instead of `no_return`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use futures_util::stream;
use salt_client::clients::{Gatherer, Lowstate, WriteReturn};
use serde_json::{json, Map, Value as Json};
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::shutdown::cut_error;
use crate::{lowstate, pyjson, AppState};

/// The streamed media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/x-ndjson`: one JSON object per line.
    Ndjson,
    /// `text/event-stream`: one SSE event per object.
    EventStream,
}

const NDJSON: &str = "application/x-ndjson";
const EVENT_STREAM: &str = "text/event-stream";

impl Kind {
    /// The streamed type the client asked for in `Accept`, if any (an
    /// explicit media type with a non-zero quality; wildcards never opt in).
    pub fn requested(headers: &HeaderMap) -> Option<Kind> {
        let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
        accept.split(',').find_map(|part| {
            let mut pieces = part.split(';');
            let mime = pieces.next()?.trim();
            let refused = pieces
                .filter_map(|p| p.trim().strip_prefix("q="))
                .any(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0));
            if refused {
                None
            } else if mime.eq_ignore_ascii_case(NDJSON) {
                Some(Kind::Ndjson)
            } else if mime.eq_ignore_ascii_case(EVENT_STREAM) {
                Some(Kind::EventStream)
            } else {
                None
            }
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Kind::Ndjson => NDJSON,
            Kind::EventStream => EVENT_STREAM,
        }
    }

    /// One object as a line (`event` names it for SSE).
    fn frame(self, event: &str, value: &Json) -> Bytes {
        let mut out = Vec::new();
        self.write_frame(&mut out, event, |out| pyjson::write(out, value));
        Bytes::from(out)
    }

    /// How a minion's return is written: a line `{"id": <id>, "return":
    /// <value>}` in this framing.
    fn return_writer(self) -> WriteReturn {
        match self {
            Kind::Ndjson => |out, id, value| Kind::Ndjson.write_return(out, id, value),
            Kind::EventStream => |out, id, value| Kind::EventStream.write_return(out, id, value),
        }
    }

    fn write_return(self, out: &mut Vec<u8>, id: &str, value: &Json) {
        self.write_frame(out, "return", |out| {
            out.extend_from_slice(b"{\"id\": ");
            pyjson::write(out, &Json::String(id.to_owned()));
            out.extend_from_slice(b", \"return\": ");
            pyjson::write(out, value);
            out.push(b'}');
        });
    }

    /// The framing around the JSON text `write` appends to `out`.
    fn write_frame(self, out: &mut Vec<u8>, event: &str, write: impl FnOnce(&mut Vec<u8>)) {
        match self {
            Kind::Ndjson => {
                write(out);
                out.push(b'\n');
            }
            Kind::EventStream => {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(event.as_bytes());
                out.extend_from_slice(b"\ndata: ");
                write(out);
                out.extend_from_slice(b"\n\n");
            }
        }
    }
}

/// The chunk to stream, when the body is exactly one `local` chunk.
fn single_local(chunks: &mut Vec<Lowstate>) -> Option<Lowstate> {
    let is_local = chunks.len() == 1
        && chunks
            .first()
            .and_then(|c| c.get("client"))
            .and_then(Json::as_str)
            == Some("local");
    if is_local {
        chunks.pop()
    } else {
        None
    }
}

/// Publish `chunk` and answer with its returns as a stream.
pub async fn answer(app: &AppState, mut chunk: Lowstate, kind: Kind) -> Result<Response, ApiError> {
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
    let shutdown = app.shutdown.clone();
    let jid = lowstate::assign_jid(&app.netapi, &mut chunk);
    let gatherer = shutdown
        .or_cut(
            Some(&jid),
            Box::pin(app.netapi.start_local(chunk, Some(kind.return_writer()))),
        )
        .await?;
    let master = app.netapi.master().clone();
    let start = match &gatherer {
        Some(g) => json!({"jid": g.jid(), "minions": g.expected_minions().collect::<Vec<_>>()}),
        None => json!({"jid": Json::Null, "minions": []}),
    };
    let first = kind.frame("start", &start);

    enum Phase {
        Start(Option<Gatherer>),
        Returns(Gatherer, u64),
        Over,
    }
    let body = stream::unfold(Phase::Start(gatherer), move |phase| {
        let master = master.clone();
        let first = first.clone();
        let shutdown = shutdown.clone();
        async move {
            match phase {
                Phase::Start(Some(g)) => {
                    Some((Ok::<_, std::io::Error>(first), Phase::Returns(g, 0)))
                }
                Phase::Start(None) => {
                    let done =
                        json!({"done": true, "jid": Json::Null, "returned": 0, "no_return": {}});
                    let mut bytes = first.to_vec();
                    bytes.extend_from_slice(&kind.frame("done", &done));
                    Some((Ok(Bytes::from(bytes)), Phase::Over))
                }
                Phase::Returns(mut g, returned) => match shutdown
                    .or_cut(None, async {
                        // Written by the bus as the return arrived: a burst
                        // of returns waits as lines, not as events.
                        Ok::<_, salt_client::SaltError>(g.next_text(kind.return_writer()).await)
                    })
                    .await
                {
                    Err(_) => {
                        // The grace period of a shutdown is over.
                        let error = cut_error(Some(g.jid())).to_string();
                        let done = json!({"done": true, "jid": g.jid(), "returned": returned,
                            "interrupted": true, "error": error});
                        Some((Ok(kind.frame("done", &done)), Phase::Over))
                    }
                    Ok(Some((_, line))) => Some((Ok(line), Phase::Returns(g, returned + 1))),
                    Ok(None) if g.interrupted() => {
                        // The master went away mid-call: no `no_return`
                        // (nobody knows who will still return), the jid to
                        // look the job up through another master.
                        let error = g.interrupted_error().to_string();
                        let done = json!({"done": true, "jid": g.jid(), "returned": returned,
                            "interrupted": true, "error": error});
                        Some((Ok(kind.frame("done", &done)), Phase::Over))
                    }
                    Ok(None) => {
                        let jid = g.jid().to_owned();
                        let job = g.job().clone();
                        let outcome = g.finish();
                        let mut no_return = Map::new();
                        for id in outcome.no_return {
                            let missing = outcome.missing.contains(&id);
                            no_return.insert(id, job.no_return_value(&master, &jid, missing));
                        }
                        let done = json!({"done": true, "jid": jid, "returned": returned,
                            "no_return": no_return});
                        Some((Ok(kind.frame("done", &done)), Phase::Over))
                    }
                },
                Phase::Over => None,
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Already final: compression layers must not buffer the lines.
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// What a streamable request carries: its one `local` chunk and kind, or
/// the request rebuilt for the ordinary path.
async fn take_chunk(
    req: Request,
    max_body: usize,
    parse: impl FnOnce(&HeaderMap, &[u8]) -> Result<Vec<Lowstate>, ApiError>,
) -> Result<Result<(Lowstate, Kind, HeaderMap), Request>, ApiError> {
    let Some(kind) = Kind::requested(req.headers()).filter(|_| req.method() == Method::POST) else {
        return Ok(Err(req));
    };
    let (parts, body) = req.into_parts();
    let bytes = crate::body::read_body(body, max_body).await?;
    match parse(&parts.headers, &bytes)
        .ok()
        .and_then(|mut c| single_local(&mut c))
    {
        Some(chunk) => Ok(Ok((chunk, kind, parts.headers))),
        None => Ok(Err(Request::from_parts(parts, Body::from(bytes)))),
    }
}

/// Streams the answer of a request that asks for it (see the module's
/// documentation); every other request goes to the inner service untouched.
///
/// A tower layer, not a `from_fn` middleware: an ordinary call's future is
/// the inner one, with nothing around it (`from_fn` boxes an async block
/// that holds the request and the inner future, ~1.4 KiB for every call
/// waiting for its job). Only a request that asks for a stream is handled in
/// a boxed future of its own.
#[derive(Clone)]
pub struct StreamAnswerLayer {
    surface: Surface,
}

#[derive(Clone)]
enum Surface {
    Wsgi(AppState),
    Cherrypy(crate::cherrypy::CpState),
}

impl StreamAnswerLayer {
    /// rest_wsgi `POST /`: a JSON list holding one `local` chunk streams.
    pub fn wsgi(state: AppState) -> Self {
        StreamAnswerLayer {
            surface: Surface::Wsgi(state),
        }
    }

    /// rest_cherrypy `POST /run` (inline credentials) and `POST /` (session
    /// token): one `local` chunk in any accepted body format streams.
    pub fn cherrypy(state: crate::cherrypy::CpState) -> Self {
        StreamAnswerLayer {
            surface: Surface::Cherrypy(state),
        }
    }
}

impl<S> Layer<S> for StreamAnswerLayer {
    type Service = StreamAnswer<S>;

    fn layer(&self, inner: S) -> StreamAnswer<S> {
        StreamAnswer {
            inner,
            surface: self.surface.clone(),
        }
    }
}

/// The service of [`StreamAnswerLayer`].
#[derive(Clone)]
pub struct StreamAnswer<S> {
    inner: S,
    surface: Surface,
}

impl<S> Service<Request> for StreamAnswer<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let asks = req.method() == Method::POST
            && Kind::requested(req.headers()).is_some()
            && match self.surface {
                // rest_wsgi's only body type; anything else gets its 406.
                Surface::Wsgi(_) => crate::wsgi::json_content_type(req.headers()).is_ok(),
                Surface::Cherrypy(_) => true,
            };
        if !asks {
            return Either::Left(self.inner.call(req));
        }
        // The service polled ready goes into the future; a clone takes its
        // place (tower's way for a service called from a future).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let surface = self.surface.clone();
        Either::Right(Box::pin(async move {
            Ok(match surface {
                Surface::Wsgi(state) => wsgi(state, req, inner).await,
                Surface::Cherrypy(state) => cherrypy(state, req, inner).await,
            })
        }))
    }
}

/// The inner service's answer to `req`.
async fn pass<S>(mut inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

async fn wsgi<S>(state: AppState, req: Request, inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let parse = |_: &HeaderMap, bytes: &[u8]| {
        let body: Json = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))?;
        lowstate::chunks_from_json(body, false)
    };
    match Box::pin(take_chunk(req, state.limits.max_body, parse)).await {
        Ok(Ok((chunk, kind, _))) => Box::pin(answer(&state, chunk, kind))
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Ok(Err(req)) => pass(inner, req).await,
        Err(e) => e.into_response(),
    }
}

async fn cherrypy<S>(state: crate::cherrypy::CpState, req: Request, inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    use crate::cherrypy::{format, session};
    let with_session = req.uri().path().trim_end_matches('/').is_empty();
    let parse = |headers: &HeaderMap, bytes: &[u8]| {
        format::lowstate(format::parse_body(headers, bytes)?.data)
    };
    match Box::pin(take_chunk(req, state.app.limits.max_body, parse)).await {
        Ok(Ok((mut chunk, kind, headers))) => {
            if with_session {
                match session::require_token(&headers) {
                    Ok(token) => {
                        chunk.insert("token".into(), json!(token));
                    }
                    Err(e) => return e.into_response(),
                }
            }
            match Box::pin(answer(&state.app, chunk, kind)).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        }
        Ok(Err(req)) => pass(inner, req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn only_an_explicit_stream_type_opts_in() {
        assert_eq!(
            Kind::requested(&accept("application/x-ndjson")),
            Some(Kind::Ndjson)
        );
        assert_eq!(
            Kind::requested(&accept("application/json, text/event-stream;q=0.5")),
            Some(Kind::EventStream)
        );
        assert_eq!(Kind::requested(&accept("*/*")), None);
        assert_eq!(Kind::requested(&accept("application/json")), None);
        assert_eq!(Kind::requested(&accept("application/x-ndjson;q=0")), None);
        assert_eq!(Kind::requested(&HeaderMap::new()), None);
    }

    #[test]
    fn lines_are_python_json() {
        let v = json!({"id": "é", "return": true});
        assert_eq!(
            Kind::Ndjson.frame("return", &v),
            Bytes::from_static(b"{\"id\": \"\\u00e9\", \"return\": true}\n")
        );
        assert_eq!(
            Kind::EventStream.frame("return", &v),
            Bytes::from_static(b"event: return\ndata: {\"id\": \"\\u00e9\", \"return\": true}\n\n")
        );
    }

    #[test]
    fn only_one_local_chunk_streams() {
        let chunk = |c: &str| match json!({"client": c}) {
            Json::Object(m) => m,
            _ => unreachable!(),
        };
        assert!(single_local(&mut vec![chunk("local")]).is_some());
        assert!(single_local(&mut vec![chunk("local_async")]).is_none());
        assert!(single_local(&mut vec![chunk("local"), chunk("local")]).is_none());
        assert!(single_local(&mut Vec::new()).is_none());
    }
}
