//! `/hook` and `/hook/<path>`: fire `salt/netapi/hook/<path>` with the body,
//! the parsed body and the request headers, as rest_cherrypy does — minus
//! the credentials (`X-Auth-Token`, `Cookie`, `Authorization`), which
//! salt-api copies into the event for every bus reader to see.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Map, Value as Json};

use super::format::Format;
use super::lowdata::Data;
use super::{session, CpState};
use crate::error::ApiError;

/// How long firing one event into the bus may take.
const FIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Headers never forwarded into the event.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "x-auth-token",
    "cookie",
    "authorization",
    "proxy-authorization",
];

/// `Content-Type` → `Content-Type`, as CherryPy presents header names.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The headers put into the event, plus `Remote-Addr`: the caller's
/// address, which CherryPy adds to every request's headers and reactors
/// read to tell who called. A `Remote-Addr` header sent by the caller is
/// replaced by the address the connection came from.
pub fn event_headers(headers: &HeaderMap, peer: IpAddr) -> Map<String, Json> {
    let mut out = Map::new();
    for (name, value) in headers {
        if CREDENTIAL_HEADERS.contains(&name.as_str()) {
            continue;
        }
        out.insert(
            title_case(name.as_str()),
            json!(String::from_utf8_lossy(value.as_bytes())),
        );
    }
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    out.insert("Remote-Addr".into(), json!(peer.to_string()));
    out
}

/// `POST /hook[/<path>]`.
pub async fn hook(
    State(state): State<CpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    fmt: Format,
    path: Option<Path<String>>,
    headers: HeaderMap,
    Data(parsed): Data,
) -> Result<Response, ApiError> {
    let r = async {
        let master = state.app.netapi.master().clone();
        if !state.opts.webhook_disable_auth {
            let token = session::require_token(&headers)?;
            session::validate(&master, &token).await?;
        }
        let mut tag = String::from("salt/netapi/hook");
        if let Some(Path(p)) = path {
            let p = p.trim_matches('/');
            if !p.is_empty() {
                tag.push('/');
                tag.push_str(p);
            }
        }
        let post = match parsed.data {
            Some(Json::Null) | None => json!({}),
            Some(v) => v,
        };
        let data = json!({"body": parsed.raw, "post": post, "headers": event_headers(&headers, peer.ip())});
        // The bus's pull socket is local, but a stuck master must not hold
        // the request (and its body) forever.
        tokio::time::timeout(FIRE_TIMEOUT, master.bus().fire(&tag, &data))
            .await
            .map_err(|_| {
                ApiError::gateway_timeout("The Salt event bus did not take the event in time")
            })?
            .map_err(ApiError::from)?;
        Ok(json!({"success": true}))
    };
    fmt.try_ok(r).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credentials_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("x-auth-token", HeaderValue::from_static("secret"));
        h.insert("cookie", HeaderValue::from_static("session_id=secret"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-my-header", HeaderValue::from_static("v"));
        h.insert("remote-addr", HeaderValue::from_static("10.9.9.9"));
        let out = event_headers(&h, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(out.get("Content-Type"), Some(&json!("application/json")));
        assert_eq!(out.get("Remote-Addr"), Some(&json!("192.0.2.7")));
        assert_eq!(out.get("X-My-Header"), Some(&json!("v")));
        assert!(!Json::Object(out).to_string().contains("secret"));
    }
}
