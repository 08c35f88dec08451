//! Sessions: halite's sessions are the master's own eauth tokens.
//!
//! A token arrives as the `X-Auth-Token` header (which wins) or the
//! `session_id` cookie — and, for the event streams only, as `?token=` or
//! `?salt_token=` because a browser's `EventSource` cannot send headers.
//! Nothing is stored in halite: lowstate calls hand the token to the master,
//! which validates it; endpoints that do not call the master with it check
//! it with `get_token`.

use axum::http::{HeaderMap, HeaderValue};
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

/// The `Set-Cookie` value of the `session_id` cookie for `token`, valid
/// until `expire` (Unix time, the token's own expiry): `expires`, `Max-Age`
/// (the remaining lifetime) and `Path=/`, as CherryPy's session tool sends
/// it; and, unlike salt-api, `HttpOnly` (scripts cannot read the token),
/// `SameSite=Strict` (other sites' pages do not send it) and `Secure` under
/// TLS. An empty `token` (logout) gives a cookie that is already expired.
/// Every `session_id` cookie halite sends is built here.
pub fn session_cookie(token: &str, expire: f64, secure: bool) -> Option<HeaderValue> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (expire, max_age) = if token.is_empty() || !expire.is_finite() {
        (0, 0)
    } else {
        (expire as i64, (expire - now).max(0.0) as i64)
    };
    let expires = chrono::DateTime::from_timestamp(expire, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT");
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "session_id={token}; expires={expires}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// Extractor: the request's session token (header or cookie), well formed;
/// 401 otherwise. The master judges the token when it is used.
pub struct Session(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        require_token(&parts.headers).map(Session)
    }
}

/// The 401 of a request that carries no token at all.
pub fn no_token() -> ApiError {
    ApiError::unauthorized("No authentication token given")
}

/// The session token or 401 (rest_cherrypy's `salt_auth` tool). The token
/// must look like one; the master judges it when it is used.
pub fn require_token(headers: &HeaderMap) -> Result<String, ApiError> {
    let token = request_token(headers).ok_or_else(no_token)?;
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
        .map_err(ApiError::throttled)?;
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
    fn cookie_carries_the_remaining_lifetime() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let v = session_cookie("cafe", now + 3600.0, false).expect("a header value");
        let v = v.to_str().expect("ascii");
        assert!(v.starts_with("session_id=cafe; expires="), "{v}");
        assert!(v.ends_with("; Path=/; HttpOnly; SameSite=Strict"), "{v}");
        let tls = session_cookie("cafe", now + 3600.0, true).expect("a header value");
        assert!(
            tls.to_str().expect("ascii").ends_with("; Secure"),
            "{tls:?}"
        );
        let max_age: i64 = v
            .split("Max-Age=")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|n| n.parse().ok())
            .expect("Max-Age");
        assert!((3590..=3600).contains(&max_age), "{v}");
        let gone = session_cookie("", 0.0, false).expect("a header value");
        assert_eq!(
            gone,
            "session_id=; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
        );
        // A token with a byte a header cannot carry gives no cookie.
        assert!(session_cookie("a\nb", now + 1.0, false).is_none());
    }

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
        let plain = session_cookie("cafe", 4_102_444_800.0, false).expect("cookie");
        let plain = plain.to_str().expect("text");
        assert!(plain.starts_with("session_id=cafe;"));
        assert!(plain.contains("; HttpOnly") && plain.contains("; SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = session_cookie("cafe", 4_102_444_800.0, true).expect("cookie");
        assert!(tls.to_str().expect("text").ends_with("; Secure"));
        // A token cannot inject attributes.
        assert!(session_cookie("a\r\nSet-Cookie: x=y", 0.0, false).is_none());
    }
}
