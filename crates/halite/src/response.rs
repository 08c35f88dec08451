//! JSON responses, written as Python's `json.dumps` writes them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper::body::{Frame, SizeHint};

use crate::lowstate::Answer;
use crate::pyjson;

/// A JSON response, written as Python's `json.dumps` writes it, with an
/// exact `Content-Length` (bytes, not characters).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = pyjson::to_vec(body)
        .unwrap_or_else(|_| b"{\"return\": \"unserialisable result\"}".to_vec());
    with_json_type(status, Body::from(bytes))
}

/// `{"return": [<answers>]}` in JSON, as [`json_response`] writes it. An
/// answer already written as text (a synchronous `local` call's) goes out
/// as it is: sent from the buffer it was gathered in, never copied into
/// another one or parsed back.
pub fn return_response(status: StatusCode, answers: Vec<Answer>) -> Response {
    let mut parts = VecDeque::with_capacity(2 * answers.len() + 1);
    let mut text = b"{\"return\": [".to_vec();
    for (i, answer) in answers.into_iter().enumerate() {
        if i > 0 {
            text.extend_from_slice(b", ");
        }
        match answer {
            Answer::Value(v) => pyjson::write(&mut text, &v),
            Answer::Text(t) => {
                parts.push_back(Bytes::from(std::mem::take(&mut text)));
                parts.extend(t.into_pieces());
            }
        }
    }
    text.extend_from_slice(b"]}");
    parts.push_back(Bytes::from(text));
    let remaining: u64 = parts.iter().map(|p| p.len() as u64).sum();
    if remaining <= ONE_BUFFER as u64 {
        // Small (most answers): one buffer, as `json_response` makes it; a
        // copy of a few KiB costs less than the parts' own allocations.
        let mut body = Vec::with_capacity(remaining as usize);
        for part in parts {
            body.extend_from_slice(&part);
        }
        return with_json_type(status, Body::from(body));
    }
    with_json_type(status, Body::new(Parts { parts, remaining }))
}

/// Up to this size an answer's parts are sent as one buffer.
const ONE_BUFFER: usize = 16 * 1024;

fn with_json_type(status: StatusCode, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A body made of buffers sent one after another, with its exact length
/// known up front (so it has a `Content-Length`).
struct Parts {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl HttpBody for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.parts.pop_front();
        if let Some(part) = &next {
            self.remaining -= part.len() as u64;
        }
        Poll::Ready(next.map(|part| Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    #[tokio::test]
    async fn text_answers_go_out_as_they_are_between_values() {
        // Small, and large enough to go out in parts.
        for n in [2, 5_000] {
            let mut text = b"{".to_vec();
            let mut map = serde_json::Map::new();
            for i in 0..n {
                if i > 0 {
                    text.extend_from_slice(b", ");
                }
                text.extend_from_slice(format!("\"m{i}\": true").as_bytes());
                map.insert(format!("m{i}"), json!(true));
            }
            text.push(b'}');
            let answers = vec![
                Answer::Value(json!({"a": "é"})),
                Answer::Text({
                    let mut t = salt_client::clients::Text::default();
                    t.push(&text);
                    t
                }),
                Answer::Value(json!([1])),
            ];
            let resp = return_response(StatusCode::OK, answers);
            let length = resp.body().size_hint().exact();
            let mut frames = 0;
            let mut body = Vec::new();
            let mut stream = resp.into_body();
            while let Some(frame) = stream.frame().await {
                body.extend_from_slice(frame.expect("frame").data_ref().expect("data"));
                frames += 1;
            }
            assert_eq!(length, Some(body.len() as u64), "exact Content-Length");
            assert_eq!(frames, if n == 2 { 1 } else { 3 });
            // The same as the whole value written at once.
            let whole = json!({"return": [{"a": "é"}, map, [1]]});
            assert_eq!(body, pyjson::to_vec(&whole).expect("serialises"));
            assert!(body.starts_with(br#"{"return": [{"a": "\u00e9"}, {"m0": true"#));
        }
    }
}
