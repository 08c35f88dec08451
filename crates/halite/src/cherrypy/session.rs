//! Sessions: halite's sessions are the master's own eauth tokens.
//!
//! A token arrives as the `X-Auth-Token` header (which wins) or the
//! `session_id` cookie — and, for the event streams only, as `?token=` or
//! `?salt_token=` because a browser's `EventSource` cannot send headers.
//! Nothing is stored in halite: lowstate calls hand the token to the master,
//! which validates it; endpoints that do not call the master with it check
//! it with `get_token`.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use salt_client::auth;
use salt_client::master::Master;

use crate::error::ApiError;
use crate::throttle::{self, Throttle};

/// The token of a request, from header or cookie.
pub fn request_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        let t = t.trim();
        if !t.is_empty() {
            return Some(t.to_owned());
        }
    }
    cookie(headers, "session_id")
}

/// The `Set-Cookie` value of a session: `HttpOnly` (scripts cannot read the
/// token), `SameSite=Strict` (other sites' pages do not send it), `Secure`
/// under TLS. An empty token with an expiry in the past clears it.
pub fn session_cookie(token: &str, expires: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "session_id={token}; expires={expires}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// A cookie value by name.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// The session token or 401 (rest_cherrypy's `salt_auth` tool). The token
/// must look like one; the master judges it when it is used.
pub fn require_token(headers: &HeaderMap) -> Result<String, ApiError> {
    let token = request_token(headers)
        .ok_or_else(|| ApiError::unauthorized("No authentication token given"))?;
    auth::validate_token_text(&token).map_err(|_| ApiError::unauthorized("Invalid token"))?;
    Ok(token)
}

/// Check a token with the master: known and not expired; not throttled
/// (for a stream re-checking the token it was opened with).
pub async fn check(master: &Master, token: &str) -> Result<auth::Token, ApiError> {
    auth::validate_token_text(token).map_err(|_| ApiError::unauthorized("Invalid token"))?;
    auth::get_token(master, token)
        .await?
        .ok_or_else(|| ApiError::unauthorized("Invalid or expired token"))
}

/// Check a token with the master: known and not expired. Unknown tokens
/// count as failed attempts of the client's address (see `throttle`).
pub async fn validate(master: &Master, token: &str) -> Result<auth::Token, ApiError> {
    auth::validate_token_text(token).map_err(|_| ApiError::unauthorized("Invalid token"))?;
    let attempt = Throttle::global()
        .begin("", token, throttle::peer())
        .map_err(|t| ApiError::new(StatusCode::TOO_MANY_REQUESTS, throttle::message(t)))?;
    match auth::get_token(master, token).await? {
        Some(t) => {
            attempt.succeeded();
            Ok(t)
        }
        None => {
            attempt.failed();
            Err(ApiError::unauthorized("Invalid or expired token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_over_cookie() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=b; session_id=cafe"));
        assert_eq!(request_token(&h).as_deref(), Some("cafe"));
        h.insert("x-auth-token", HeaderValue::from_static("beef"));
        assert_eq!(request_token(&h).as_deref(), Some("beef"));
    }

    #[test]
    fn session_cookie_flags() {
        let plain = session_cookie("cafe", "Thu, 01 Jan 2099 00:00:00 GMT", false).expect("cookie");
        let plain = plain.to_str().expect("text");
        assert!(plain.starts_with("session_id=cafe;"));
        assert!(plain.contains("; HttpOnly") && plain.contains("; SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = session_cookie("cafe", "x", true).expect("cookie");
        assert!(tls.to_str().expect("text").ends_with("; Secure"));
        // A token cannot inject attributes.
        assert!(session_cookie("a\r\nSet-Cookie: x=y", "x", false).is_none());
    }
}
