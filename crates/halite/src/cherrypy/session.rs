//! Sessions: halite's sessions are the master's own eauth tokens.
//!
//! A token arrives as the `X-Auth-Token` header (which wins) or the
//! `session_id` cookie — and, for the event streams only, as `?token=` or
//! `?salt_token=` because a browser's `EventSource` cannot send headers.
//! Nothing is stored in halite: lowstate calls hand the token to the master,
//! which validates it; endpoints that do not call the master with it check
//! it with `get_token`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use salt_client::auth;
use salt_client::master::Master;

use crate::error::ApiError;

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
/// it. An empty `token` (logout) gives a cookie that is already expired.
/// Every `session_id` cookie halite sends is built here.
pub fn session_cookie(token: &str, expire: f64) -> Option<HeaderValue> {
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
    HeaderValue::from_str(&format!(
        "session_id={token}; expires={expires}; Max-Age={max_age}; Path=/"
    ))
    .ok()
}

/// The session token or 401 (rest_cherrypy's `salt_auth` tool). The token
/// must look like one; the master judges it when it is used.
pub fn require_token(headers: &HeaderMap) -> Result<String, ApiError> {
    let token = request_token(headers)
        .ok_or_else(|| ApiError::unauthorized("No authentication token given"))?;
    auth::validate_token_text(&token).map_err(|_| ApiError::unauthorized("Invalid token"))?;
    Ok(token)
}

/// Check a token with the master: known and not expired.
pub async fn validate(master: &Master, token: &str) -> Result<auth::Token, ApiError> {
    auth::validate_token_text(token).map_err(|_| ApiError::unauthorized("Invalid token"))?;
    match auth::get_token(master, token).await? {
        Some(t) => Ok(t),
        None => Err(ApiError::unauthorized("Invalid or expired token")),
    }
}

/// Throttles failed logins per user name and per client address: each
/// failed PAM login holds one of the master's few workers for seconds, so a
/// guessing loop through the API would starve the master.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Failures allowed within [`WINDOW`] before logins are refused.
pub const MAX_FAILURES: u32 = 5;
/// The window of the throttle.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most (bounded memory under a spray of names).
const MAX_KEYS: usize = 10_000;

impl LoginThrottle {
    fn keys(user: &str, ip: Option<IpAddr>) -> [String; 2] {
        [
            format!("user:{user}"),
            format!("ip:{}", ip.map(|i| i.to_string()).unwrap_or_default()),
        ]
    }

    /// Seconds to wait when this user or address is throttled.
    pub fn retry_after(&self, user: &str, ip: Option<IpAddr>) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::keys(user, ip)
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < WINDOW)
            .map(|(_, since)| WINDOW.saturating_sub(since.elapsed()).as_secs().max(1))
            .max()
    }

    /// Record a failed login.
    pub fn failed(&self, user: &str, ip: Option<IpAddr>) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        if map.len() >= MAX_KEYS {
            return;
        }
        for k in Self::keys(user, ip) {
            let entry = map.entry(k).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }

    /// Forget failures of a user after a successful login.
    pub fn succeeded(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("user:{user}"));
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
        let v = session_cookie("cafe", now + 3600.0).expect("a header value");
        let v = v.to_str().expect("ascii");
        assert!(v.starts_with("session_id=cafe; expires="), "{v}");
        assert!(v.ends_with("; Path=/"), "{v}");
        let max_age: i64 = v
            .split("Max-Age=")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|n| n.parse().ok())
            .expect("Max-Age");
        assert!((3590..=3600).contains(&max_age), "{v}");
        let gone = session_cookie("", 0.0).expect("a header value");
        assert_eq!(
            gone,
            "session_id=; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/"
        );
        // A token with a byte a header cannot carry gives no cookie.
        assert!(session_cookie("a\nb", now + 1.0).is_none());
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
    fn throttle_after_max_failures() {
        let t = LoginThrottle::default();
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..MAX_FAILURES {
            assert!(t.retry_after("u", ip).is_none());
            t.failed("u", ip);
        }
        assert!(t.retry_after("u", ip).is_some());
        assert!(t
            .retry_after("other", Some(IpAddr::from([127, 0, 0, 2])))
            .is_none());
        t.succeeded("u");
        // The address is still throttled.
        assert!(t.retry_after("u", ip).is_some());
    }
}
