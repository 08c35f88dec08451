//! Endpoints that run lowstates: `/` (POST with the session token), `/run`
//! (inline credentials), `/minions`, `/jobs`, `/keys`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use salt_client::clients::{Lowstate, CLIENTS};
use serde_json::{json, Value as Json};

use super::format::{self, Format};
use super::{session, CpState};
use crate::error::ApiError;
use crate::lowstate;

/// Read and parse the body of a request.
pub async fn parse(
    state: &CpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<format::Parsed, ApiError> {
    let bytes = crate::body::read_body(body, state.app.limits.max_body).await?;
    format::parse_body(headers, &bytes)
}

/// Run chunks with the session token and/or a forced client
/// (`exec_lowstate`).
pub async fn exec(
    state: &CpState,
    mut chunks: Vec<Lowstate>,
    token: Option<&str>,
    client: Option<&str>,
) -> Result<Vec<Json>, ApiError> {
    for chunk in &mut chunks {
        if let Some(t) = token {
            chunk.insert("token".into(), json!(t));
        }
        if let Some(c) = client {
            chunk.insert("client".into(), json!(c));
        }
    }
    lowstate::run_chunks(&state.app.netapi, chunks).await
}

fn low(v: Json) -> Lowstate {
    match v {
        Json::Object(m) => m,
        _ => Lowstate::new(),
    }
}

/// `GET /`: an index of the API.
pub async fn index(fmt: Format) -> Response {
    let clients: Vec<&str> = CLIENTS.iter().copied().filter(|c| *c != "ssh").collect();
    fmt.ok(&json!({"return": "Welcome", "clients": clients}))
}

/// `POST /`: lowstates run with the session token.
pub async fn index_post(
    State(state): State<CpState>,
    fmt: Format,
    headers: HeaderMap,
    body: Body,
) -> Response {
    fmt.result(
        async {
            let token = session::require_token(&headers)?;
            let parsed = parse(&state, &headers, body).await?;
            let chunks = format::lowstate(parsed.data)?;
            let ret = exec(&state, chunks, Some(&token), None).await?;
            Ok(json!({"return": ret}))
        }
        .await,
    )
}

/// `POST /run`: lowstates with their own credentials, bypassing sessions.
pub async fn run(
    State(state): State<CpState>,
    fmt: Format,
    headers: HeaderMap,
    body: Body,
) -> Response {
    fmt.result(
        async {
            let parsed = parse(&state, &headers, body).await?;
            let chunks = format::lowstate(parsed.data)?;
            let ret = exec(&state, chunks, None, None).await?;
            Ok(json!({"return": ret}))
        }
        .await,
    )
}

/// `GET /minions[/<id>]`: grains of the targeted minions.
pub async fn minions(
    State(state): State<CpState>,
    fmt: Format,
    mid: Option<Path<String>>,
    headers: HeaderMap,
) -> Response {
    fmt.result(
        async {
            let token = session::require_token(&headers)?;
            let tgt = mid.map(|Path(m)| m).unwrap_or_else(|| "*".into());
            let chunk = low(json!({"client": "local", "tgt": tgt, "fun": "grains.items"}));
            let ret = exec(&state, vec![chunk], Some(&token), None).await?;
            Ok(json!({"return": ret}))
        }
        .await,
    )
}

/// `POST /minions`: start jobs (`local_async`), 202 with links to `/jobs`.
pub async fn minions_post(
    State(state): State<CpState>,
    fmt: Format,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let token = session::require_token(&headers)?;
        let parsed = parse(&state, &headers, body).await?;
        let chunks = format::lowstate(parsed.data)?;
        let ret = exec(&state, chunks, Some(&token), Some("local_async")).await?;
        let links: Vec<Json> = ret
            .iter()
            .filter_map(|r| r.get("jid").and_then(Json::as_str))
            .map(|jid| json!({"href": format!("/jobs/{jid}")}))
            .collect();
        Ok(json!({"return": ret, "_links": {"jobs": links}}))
    };
    match r.await {
        Ok(v) => fmt.render(StatusCode::ACCEPTED, &v),
        Err(e) => fmt.error(e),
    }
}

/// `GET /jobs[/<jid>]`: the job cache through the `jobs` runner.
pub async fn jobs(
    State(state): State<CpState>,
    fmt: Format,
    jid: Option<Path<String>>,
    headers: HeaderMap,
) -> Response {
    fmt.result(
        async {
            let token = session::require_token(&headers)?;
            let chunk = match &jid {
                Some(Path(j)) => low(json!({"client": "runner", "fun": "jobs.list_job", "jid": j})),
                None => low(json!({"client": "runner", "fun": "jobs.list_jobs"})),
            };
            let mut ret = exec(&state, vec![chunk], Some(&token), None).await?;
            let first = if ret.is_empty() {
                Json::Null
            } else {
                ret.swap_remove(0)
            };
            if jid.is_none() {
                return Ok(json!({"return": [first]}));
            }
            let mut minion_ret = serde_json::Map::new();
            if let Some(Json::Object(result)) = first.get("Result") {
                for (minion, r) in result {
                    minion_ret.insert(
                        minion.clone(),
                        r.get("return").cloned().unwrap_or(Json::Null),
                    );
                }
            }
            Ok(json!({"info": [first], "return": [minion_ret]}))
        }
        .await,
    )
}

/// `GET /keys[/<id>]`: minion keys through the `key` wheel.
pub async fn keys(
    State(state): State<CpState>,
    fmt: Format,
    mid: Option<Path<String>>,
    headers: HeaderMap,
) -> Response {
    fmt.result(
        async {
            let token = session::require_token(&headers)?;
            let chunk = match mid {
                Some(Path(m)) => low(json!({"client": "wheel", "fun": "key.finger", "match": m})),
                None => low(json!({"client": "wheel", "fun": "key.list_all"})),
            };
            let ret = exec(&state, vec![chunk], Some(&token), None).await?;
            let keys = ret
                .first()
                .and_then(|r| r.get("data"))
                .and_then(|d| d.get("return"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            Ok(json!({"return": keys}))
        }
        .await,
    )
}

/// `POST /keys`: generate and accept a key pair (`key.gen_accept`) and
/// return it as a tarball (`minion.pub`, `minion.pem`). Credentials inline.
pub async fn keys_post(State(state): State<CpState>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let parsed = parse(&state, &headers, body).await?;
        let mut chunks = format::lowstate(parsed.data)?;
        let Some(first) = chunks.first_mut() else {
            return Err(ApiError::bad_request("A lowstate body is required"));
        };
        first.insert("client".into(), json!("wheel"));
        first.insert("fun".into(), json!("key.gen_accept"));
        if let Some(mid) = first.remove("mid") {
            first.insert("id_".into(), mid);
        }
        let id = first
            .get("id_")
            .and_then(Json::as_str)
            .ok_or_else(|| ApiError::bad_request("'mid' is required"))?
            .to_owned();
        if id.is_empty() || id.contains(['/', '\\', '"']) || id.chars().any(char::is_control) {
            return Err(ApiError::bad_request("'mid' is not a valid minion id"));
        }
        chunks.truncate(1);
        let ret = exec(&state, chunks, None, None).await?;
        let keys = ret
            .first()
            .and_then(|r| r.get("data"))
            .and_then(|d| d.get("return"));
        let text = |k: &str| {
            keys.and_then(|r| r.get(k))
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let tarball = tar_of(&[("minion.pub", text("pub")), ("minion.pem", text("priv"))])
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot build the key tarball: {e}"),
                )
            })?;
        Ok((id, tarball))
    };
    match r.await {
        Ok((id, tarball)) => {
            let mut resp = Response::new(Body::from(tarball));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-tar"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            if let Ok(v) =
                HeaderValue::from_str(&format!("attachment; filename=\"saltkeys-{id}.tar\""))
            {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) => Format::Json.error(e),
    }
}

fn tar_of(files: &[(&str, String)]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        builder.append_data(&mut h, name, content.as_bytes())?;
    }
    builder.into_inner()
}
