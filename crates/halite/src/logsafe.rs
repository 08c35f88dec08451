//! What may reach the log from a request: nothing secret, nothing unbounded.
//!
//! `GET /ws/<token>` carries a session token in its path and the event
//! streams take `?token=` in the query; a client also controls the length of
//! every name it sends. The access log and every line that quotes the
//! client go through these helpers.

use std::borrow::Cow;

use axum::http::Uri;

/// Longest client text quoted in a log line, in characters.
pub const MAX_LOGGED: usize = 128;

/// The replacement of a masked value.
pub const MASKED: &str = "<masked>";

/// `text`, cut to [`MAX_LOGGED`] characters (marked with `…`).
pub fn bounded(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_LOGGED) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// Whether a path segment could be a session token (the master's tokens
/// are hex strings).
fn token_like(segment: &str) -> bool {
    segment.len() >= 16 && segment.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A request target for the log: token-like path segments and the values
/// of every query parameter masked, the whole bounded.
pub fn uri(uri: &Uri) -> String {
    let mut out = String::new();
    for (i, segment) in uri.path().split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if token_like(segment) { MASKED } else { segment });
    }
    if let Some(query) = uri.query() {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(MASKED);
                }
                None => out.push_str(pair),
            }
        }
    }
    bounded(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_reach_the_log() {
        let token = "0123456789abcdef0123456789abcdef01234567";
        let u: Uri = format!("/ws/{token}?format_events=1&token={token}")
            .parse()
            .expect("uri");
        let logged = uri(&u);
        assert!(!logged.contains(token), "{logged}");
        assert_eq!(logged, "/ws/<masked>?format_events=<masked>&token=<masked>");
        let plain: Uri = "/minions/ms-0".parse().expect("uri");
        assert_eq!(uri(&plain), "/minions/ms-0");
    }

    #[test]
    fn lines_are_bounded() {
        let long = "é".repeat(10_000);
        let b = bounded(&long);
        assert_eq!(b.chars().count(), MAX_LOGGED + 1);
        let u: Uri = format!("/{}", "a".repeat(60_000)).parse().expect("uri");
        assert!(uri(&u).chars().count() <= MAX_LOGGED + 1);
        assert_eq!(bounded("short"), "short");
    }
}
