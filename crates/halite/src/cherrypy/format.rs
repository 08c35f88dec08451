//! Content negotiation of the rest_cherrypy surface: request bodies as JSON,
//! YAML, urlencoded forms or text; responses as JSON or YAML by `Accept`;
//! errors in the same negotiated format (`{"status": N, "return": "..."}`).

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use salt_client::clients::Lowstate;
use serde_json::{json, Map, Value as Json};

use crate::error::ApiError;

/// The response format the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

const JSON: &str = "application/json";
const YAML: &str = "application/x-yaml";

impl Format {
    /// Pick the best of JSON and YAML for an `Accept` header (JSON first, as
    /// rest_cherrypy prefers it); `None` when the client accepts neither.
    pub fn from_accept(accept: Option<&str>) -> Option<Format> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Some(Format::Json);
        };
        let mut best: Option<(f32, Format)> = None;
        for part in accept.split(',') {
            let mut pieces = part.split(';');
            let mime = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = pieces
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            if q <= 0.0 {
                continue;
            }
            let fmt = match mime.as_str() {
                "application/json" | "application/*" | "*/*" => Format::Json,
                "application/x-yaml" | "text/yaml" | "application/yaml" => Format::Yaml,
                _ => continue,
            };
            if best.is_none_or(|(bq, bf)| {
                q > bq || (q == bq && fmt == Format::Json && bf != Format::Json && mime != "*/*")
            }) {
                best = Some((q, fmt));
            }
        }
        best.map(|(_, f)| f)
    }

    /// The format errors are shaped in: the negotiated one, JSON when the
    /// client accepts neither (its 406 must still say something).
    pub fn lenient(headers: &HeaderMap) -> Format {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        Format::from_accept(accept).unwrap_or(Format::Json)
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::Yaml => YAML,
        }
    }

    /// Render `value` with `status`.
    pub fn render(self, status: StatusCode, value: &Json) -> Response {
        let body = match self {
            Format::Json => crate::pyjson::to_vec(value).unwrap_or_default(),
            Format::Yaml => serde_norway::to_string(value)
                .unwrap_or_default()
                .into_bytes(),
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type()),
        );
        resp
    }

    /// `200` with `value`.
    pub fn ok(self, value: &Json) -> Response {
        self.render(StatusCode::OK, value)
    }

    /// An error as rest_cherrypy's handler shapes it, in this format.
    pub fn error(self, e: ApiError) -> Response {
        let mut resp = self.render(
            e.status,
            &json!({"status": e.status.as_u16(), "return": e.message}),
        );
        if e.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Session"),
            );
        }
        resp
    }

    /// `200` with the value of a handler's body, or its error.
    pub async fn try_ok(
        self,
        value: impl std::future::Future<Output = Result<Json, ApiError>>,
    ) -> Result<Response, ApiError> {
        Ok(self.ok(&value.await?))
    }
}

/// Extractor: the negotiated format, or 406 in JSON when none fits.
impl<S: Send + Sync> FromRequestParts<S> for Format {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        Format::from_accept(accept).ok_or_else(|| {
            ApiError::not_acceptable(format!("Acceptable response types are {JSON} and {YAML}"))
        })
    }
}

/// The request's media type (`Content-Type` without parameters), lowercase;
/// empty when there is none.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A parsed request body (`unserialized_data` and `raw_body` in rest_cherrypy).
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub data: Option<Json>,
    pub raw: String,
}

/// Parse a body by its `Content-Type` as rest_cherrypy's `hypermedia_in` does.
pub fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ApiError> {
    if body.is_empty() {
        return Ok(Parsed::default());
    }
    let ct = media_type(headers);
    let raw = String::from_utf8_lossy(body).into_owned();
    let data = match ct.as_str() {
        "application/json" => serde_json::from_slice::<Json>(body)
            .map_err(|_| ApiError::bad_request("Invalid JSON document"))?,
        "application/x-yaml" | "text/yaml" => {
            salt_client::yaml::from_str(&raw).map_err(|e| match e {
                salt_client::yaml::YamlError::TooLarge => {
                    ApiError::bad_request("YAML document expands beyond its size limit")
                }
                salt_client::yaml::YamlError::Invalid => {
                    ApiError::bad_request("Invalid YAML document")
                }
            })?
        }
        "text/plain" => {
            serde_json::from_str::<Json>(&raw).unwrap_or_else(|_| Json::String(raw.clone()))
        }
        "application/x-www-form-urlencoded" => urlencoded(body),
        _ => {
            return Err(ApiError::not_acceptable("Content type not supported"));
        }
    };
    Ok(Parsed {
        data: Some(data),
        raw,
    })
}

/// The urlencoded conventions of rest_cherrypy: repeated keys become lists,
/// `arg` values (always a list) and `kwarg` are read as YAML scalars.
pub fn urlencoded(body: &[u8]) -> Json {
    let mut map: Map<String, Json> = Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        let v = Json::String(v.into_owned());
        match map.get_mut(k.as_ref()) {
            Some(Json::Array(list)) => list.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Json::Array(vec![first, v]);
            }
            None => {
                map.insert(k.into_owned(), v);
            }
        }
    }
    if let Some(kwarg) = map.get_mut("kwarg") {
        if let Json::String(s) = kwarg {
            *kwarg = salt_client::clients::yamlify_arg(s);
        }
    }
    if let Some(arg) = map.get_mut("arg") {
        let items = match arg.take() {
            Json::Array(a) => a,
            other => vec![other],
        };
        *arg = Json::Array(
            items
                .into_iter()
                .map(|a| match a {
                    Json::String(s) => salt_client::clients::yamlify_arg(&s),
                    other => other,
                })
                .collect(),
        );
    }
    Json::Object(map)
}

/// `lowdata_fmt` + `exec_lowstate`'s check: a mapping becomes a one-chunk
/// list (scalar `arg` wrapped); anything but a list of objects is a 400.
pub fn lowstate(data: Option<Json>) -> Result<Vec<Lowstate>, ApiError> {
    match data {
        Some(Json::Object(mut m)) => {
            if let Some(arg) = m.get_mut("arg") {
                if !arg.is_array() {
                    let one = arg.take();
                    *arg = Json::Array(vec![one]);
                }
            }
            Ok(vec![m])
        }
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Json::Object(m) => Ok(m),
                _ => Err(ApiError::bad_request("Lowstates must be a list of objects")),
            })
            .collect(),
        None => Err(ApiError::bad_request("A lowstate body is required")),
        Some(_) => Err(ApiError::bad_request("Lowstates must be a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert_eq!(Format::from_accept(None), Some(Format::Json));
        assert_eq!(
            Format::from_accept(Some("application/x-yaml")),
            Some(Format::Yaml)
        );
        assert_eq!(
            Format::from_accept(Some("text/html,*/*;q=0.8")),
            Some(Format::Json)
        );
        assert_eq!(Format::from_accept(Some("text/html")), None);
        assert_eq!(
            Format::from_accept(Some("application/x-yaml, application/json;q=0.5")),
            Some(Format::Yaml)
        );
    }

    #[test]
    fn urlencoded_follows_rest_cherrypy() {
        // curl -d client=local -d tgt='*' -d fun='test.kwarg' -d arg='one=1' -d arg='two=2'
        let v = urlencoded(b"client=local&tgt=%2A&fun=test.kwarg&arg=one%3D1&arg=two%3D2");
        assert_eq!(
            v,
            json!({"client": "local", "tgt": "*", "fun": "test.kwarg", "arg": ["one=1", "two=2"]})
        );
        let v = urlencoded(b"fun=test.arg&arg=1&kwarg=%7Ba%3A+1%7D");
        assert_eq!(v, json!({"fun": "test.arg", "arg": [1], "kwarg": {"a": 1}}));
    }

    #[test]
    fn lowstate_shapes() {
        assert_eq!(
            lowstate(Some(json!({"fun": "x", "arg": "a"}))).map(|l| l.len()),
            Ok(1)
        );
        assert!(lowstate(Some(json!("x"))).is_err());
        assert!(lowstate(None).is_err());
    }

    mod fuzz {
        //! Property-based fuzzing of request bodies as every content type:
        //! random text and mutations of real lowstates never panic, and
        //! what parses stays within its size budget. Failing inputs are
        //! kept in `proptest-regressions/` and replayed first.
        use super::super::*;
        use proptest::prelude::*;

        const SEEDS: [&str; 5] = [
            r#"[{"client": "local", "tgt": "*", "fun": "test.arg", "arg": ["a", 1], "kwarg": {"k": "v"}}]"#,
            "client=local&tgt=%2A&fun=test.kwarg&arg=one%3D1&arg=%5B1%2C+2%5D&kwarg=%7Ba%3A+1%7D",
            "- client: runner\n  fun: jobs.lookup_jid\n  jid: '20261130151600000000'\n",
            "[&a [0, 0, 0], *a, *a, *a]",
            "{eauth: pam, username: u, password: p}",
        ];

        fn body() -> impl Strategy<Value = Vec<u8>> {
            let mutated = (
                0..SEEDS.len(),
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            )
                .prop_map(|(i, edits)| {
                    let mut b = SEEDS[i].as_bytes().to_vec();
                    for (at, byte) in edits {
                        let at = at.index(b.len());
                        b[at] = byte;
                    }
                    b
                });
            prop_oneof![prop::collection::vec(any::<u8>(), 0..300), mutated]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            #[test]
            fn bodies_never_panic(body in body(), ct in prop::sample::select(vec![
                "application/json", "application/x-yaml", "text/yaml", "text/plain",
                "application/x-www-form-urlencoded", "application/xml", "",
            ])) {
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(ct) {
                    h.insert(header::CONTENT_TYPE, v);
                }
                if let Ok(parsed) = parse_body(&h, &body) {
                    if let Some(data) = &parsed.data {
                        let size = data.to_string().len();
                        prop_assert!(size <= 64 * (body.len() + 4096), "{size} bytes from {}", body.len());
                    }
                    let _ = lowstate(parsed.data);
                }
            }
        }
    }
}
