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
                parts.push_back(Bytes::from(t));
            }
        }
    }
    text.extend_from_slice(b"]}");
    parts.push_back(Bytes::from(text));
    let remaining = parts.iter().map(|p| p.len() as u64).sum();
    with_json_type(status, Body::new(Parts { parts, remaining }))
}

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
        let answers = vec![
            Answer::Value(json!({"a": "é"})),
            Answer::Text(br#"{"m1": true, "m2": "x"}"#.to_vec()),
            Answer::Value(json!([1])),
        ];
        let resp = return_response(StatusCode::OK, answers);
        assert_eq!(resp.body().size_hint().exact(), Some(59));
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            &body[..],
            br#"{"return": [{"a": "\u00e9"}, {"m1": true, "m2": "x"}, [1]]}"#
        );
        // The same as the whole value written at once.
        let whole = json!({"return": [{"a": "é"}, {"m1": true, "m2": "x"}, [1]]});
        assert_eq!(body.to_vec(), pyjson::to_vec(&whole).expect("serialises"));
    }
}
