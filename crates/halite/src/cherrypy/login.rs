//! `/login`, `/logout` and `/token`.
//!
//! `/login` mints a token with the master's `mk_token` and returns the
//! master's token itself (Python salt-api returns a CherryPy session id that
//! no other server understands; see docs/COMPATIBILITY.md). The same fields as
//! salt-api: `token`, `start`, `expire`, `user`, `eauth`, `perms`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use salt_client::auth;
use serde_json::{json, Map, Value as Json};

use super::format::Format;
use super::lowdata::{exec, Data, Lowdata};
use super::session::{self, Session};
use super::CpState;
use crate::error::ApiError;
use crate::throttle::Throttle;

/// `GET /login`: how to log in. `status` is `null` as in salt-api (it
/// reports CherryPy's not-yet-set response status).
pub async fn login_get(fmt: Format) -> Response {
    let mut resp = fmt.ok(&json!({"status": null, "return": "Please log in"}));
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Session"),
    );
    resp
}

fn creds_of(data: Option<Json>) -> Result<Map<String, Json>, ApiError> {
    match data {
        None => Err(ApiError::bad_request(
            "A body with 'eauth', 'username' and 'password' is required",
        )),
        Some(Json::Array(mut items)) if !items.is_empty() => match items.swap_remove(0) {
            Json::Object(m) => Ok(m),
            _ => Err(ApiError::bad_request("The credentials must be an object")),
        },
        Some(Json::Object(m)) => Ok(m),
        Some(_) => Err(ApiError::bad_request("The credentials must be an object")),
    }
}

/// `POST /login`.
pub async fn login_post(
    State(state): State<CpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    fmt: Format,
    Data(parsed): Data,
) -> Result<Response, ApiError> {
    let master = state.app.netapi.master().clone();
    let r = async {
        let creds = creds_of(parsed.data)?;
        let field = |k: &str| creds.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
        let (eauth, username, password) = (field("eauth"), field("username"), field("password"));
        // salt-api hands the credentials to the master, whose eauth call
        // fails without a username or a password: 401, never a token for
        // a user nobody named (the `auto` backend would accept "").
        let given = |k: &str| matches!(creds.get(k), Some(Json::String(_)));
        if !given("username") || !given("password") {
            return Err(ApiError::unauthorized(
                "Could not authenticate using provided credentials",
            ));
        }
        let attempt = Throttle::global()
            .begin(&username, &password, Some(peer.ip()))
            .map_err(ApiError::throttled)?;
        let mut extra = Map::new();
        if let Some(v) = creds.get("token_expire") {
            extra.insert("token_expire".into(), v.clone());
        }
        let token = match auth::mk_token(&master, &eauth, &username, &password, &extra).await? {
            Some(t) => t,
            None => {
                attempt.failed();
                tracing::info!(user = %crate::logsafe::bounded(&username), eauth = %crate::logsafe::bounded(&eauth), peer = %peer.ip(), "login failed");
                return Err(ApiError::unauthorized(
                    "Could not authenticate using provided credentials",
                ));
            }
        };
        attempt.succeeded();
        let perms = auth::permissions(master.config().external_auth(), &token);
        let value = |k: &str| token.get(k).cloned().unwrap_or(Json::Null);
        let t = value("token").as_str().unwrap_or_default().to_owned();
        let expire = value("expire");
        let body = json!({"return": [{
            "token": t,
            "expire": expire,
            "start": value("start"),
            "user": value("name"),
            "eauth": value("eauth"),
            "perms": if perms.is_empty() { json!({}) } else { Json::Array(perms) },
        }]});
        Ok((t, expire.as_f64().unwrap_or(0.0), body))
    };
    let (token, expire, body) = r.await?;
    let mut resp = fmt.ok(&body);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&token) {
        h.insert("x-auth-token", v);
    }
    if let Some(v) = session::session_cookie(&token, expire, state.opts.tls) {
        h.insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `POST /logout`: revoke the token on the master and expire the cookie.
pub async fn logout(
    State(state): State<CpState>,
    fmt: Format,
    Session(token): Session,
) -> Result<Response, ApiError> {
    let master = state.app.netapi.master().clone();
    session::validate(&master, &token).await?;
    let v = if revoke(&state, &token).await {
        json!({"return": "Your token has been cleared"})
    } else {
        json!({"return": "Your session has been cleared, but the token could not be revoked on the master; it stays valid until it expires"})
    };
    let mut resp = fmt.ok(&v);
    if let Some(v) = session::session_cookie("", 0.0, state.opts.tls) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Remove a token from the master's token store. There is no clear command
/// for it (docs/PROTOCOL.md §3.5.4). In order, until the master's
/// `get_token` no longer knows the token:
///
/// 1. the token file in `token_dir` (`<token>` on 3006, `<token>.p`, the
///    `tokens` bank of the localfs cache, on 3007+), as salt-api does
///    in-process: halite runs on the master host as the master user. In a
///    master cluster `cachedir` is shared, so this revokes everywhere;
/// 2. through the master, under the token's own rights: the `cache.flush`
///    runner on the `tokens` bank (3007+ keep eauth tokens in the master's
///    cache, whatever its driver: localfs elsewhere, redis, consul, ...),
///    then `auth.del_token` (3006's file store).
async fn revoke(state: &CpState, token: &str) -> bool {
    let master = state.app.netapi.master();
    if auth::validate_token_text(token).is_err() {
        return false;
    }
    let dir = master.config().token_dir();
    for path in [dir.join(token), dir.join(format!("{token}.p"))] {
        match tokio::fs::remove_file(&path).await {
            Ok(()) => tracing::debug!("token file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove a token file"),
        }
    }
    if matches!(auth::get_token(master, token).await, Ok(None)) {
        return true;
    }
    let through_master = [
        json!({"client": "runner", "fun": "cache.flush", "token": token,
               "kwarg": {"bank": "tokens", "key": token}}),
        json!({"client": "runner", "fun": "auth.del_token", "token": token, "kwarg": {"token": token}}),
    ];
    for chunk in through_master {
        if let Json::Object(m) = chunk {
            if exec(state, vec![m], None, None).await.is_err() {
                tracing::debug!("a token revocation runner failed");
            }
        }
        if matches!(auth::get_token(master, token).await, Ok(None)) {
            return true;
        }
    }
    false
}

/// `POST /token`: tokens through the `auth.mk_token` runner; a bare list.
pub async fn token(
    State(state): State<CpState>,
    fmt: Format,
    Lowdata(mut chunks): Lowdata,
) -> Result<Response, ApiError> {
    let r = async {
        for creds in &mut chunks {
            let mut kwarg = Map::new();
            for k in ["username", "password", "eauth"] {
                match creds.get(k) {
                    Some(v) => kwarg.insert(k.into(), v.clone()),
                    None => {
                        return Err(ApiError::bad_request(
                            "Require \"username\", \"password\", and \"eauth\" params",
                        ))
                    }
                };
            }
            creds.insert("client".into(), json!("runner"));
            creds.insert("fun".into(), json!("auth.mk_token"));
            creds.insert("kwarg".into(), Json::Object(kwarg));
        }
        Ok(Json::Array(exec(&state, chunks, None, None).await?))
    };
    fmt.try_ok(r).await
}
