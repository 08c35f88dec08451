//! Endpoints that run lowstates: `/` (POST with the session token), `/run`
//! (inline credentials), `/minions`, `/jobs`, `/keys`.

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use salt_client::clients::{Client, Lowstate};
use serde_json::{json, Value as Json};

use super::format::{self, Format};
use super::session::Session;
use super::CpState;
use crate::error::ApiError;
use crate::lowstate;

/// Extractor: the request body, read within the surface's size limit and
/// parsed by its `Content-Type` (`hypermedia_in`).
pub struct Data(pub format::Parsed);

impl FromRequest<CpState> for Data {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &CpState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = crate::body::read_body(body, state.app.limits.max_body).await?;
        format::parse_body(&parts.headers, &bytes).map(Data)
    }
}

/// Extractor: the body as lowstate chunks (`lowdata_fmt`); 400 when it is
/// not a lowstate or a list of them.
pub struct Lowdata(pub Vec<Lowstate>);

impl FromRequest<CpState> for Lowdata {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &CpState) -> Result<Self, ApiError> {
        let Data(parsed) = Data::from_request(req, state).await?;
        format::lowstate(parsed.data).map(Lowdata)
    }
}

/// Run chunks with the session token and/or a forced client
/// (`exec_lowstate`).
pub async fn exec(
    state: &CpState,
    chunks: Vec<Lowstate>,
    token: Option<&str>,
    client: Option<&str>,
) -> Result<Vec<Json>, ApiError> {
    lowstate::run_chunks(&state.app, with_session(chunks, token, client)).await
}

/// [`exec`], answered in `fmt`: in JSON, a synchronous `local` chunk's
/// answer is written once, as its returns arrive (`lowstate::run_answers`).
async fn exec_answer(
    state: &CpState,
    fmt: Format,
    chunks: Vec<Lowstate>,
    token: Option<&str>,
) -> Result<Response, ApiError> {
    let chunks = with_session(chunks, token, None);
    if fmt == Format::Json {
        let ret = lowstate::run_answers(&state.app, chunks, true).await?;
        Ok(crate::response::return_response(StatusCode::OK, ret))
    } else {
        let ret = lowstate::run_chunks(&state.app, chunks).await?;
        Ok(fmt.ok(&json!({"return": ret})))
    }
}

/// The chunks with the session token and/or a forced client.
fn with_session(
    mut chunks: Vec<Lowstate>,
    token: Option<&str>,
    client: Option<&str>,
) -> Vec<Lowstate> {
    for chunk in &mut chunks {
        if let Some(t) = token {
            chunk.insert("token".into(), json!(t));
        }
        if let Some(c) = client {
            chunk.insert("client".into(), json!(c));
        }
    }
    chunks
}

fn low(v: Json) -> Lowstate {
    match v {
        Json::Object(m) => m,
        _ => Lowstate::new(),
    }
}

/// `GET /`: an index of the API.
pub async fn index(fmt: Format) -> Response {
    let clients: Vec<&str> = Client::ALL
        .into_iter()
        .filter(|c| *c != Client::Ssh)
        .map(Client::as_str)
        .collect();
    fmt.ok(&json!({"return": "Welcome", "clients": clients}))
}

/// `POST /`: lowstates run with the session token.
pub async fn index_post(
    State(state): State<CpState>,
    fmt: Format,
    Session(token): Session,
    Lowdata(chunks): Lowdata,
) -> Result<Response, ApiError> {
    exec_answer(&state, fmt, chunks, Some(&token)).await
}

/// `POST /run`: lowstates with their own credentials, bypassing sessions.
pub async fn run(
    State(state): State<CpState>,
    fmt: Format,
    Lowdata(chunks): Lowdata,
) -> Result<Response, ApiError> {
    exec_answer(&state, fmt, chunks, None).await
}

/// `GET /minions[/<id>]`: grains of the targeted minions.
pub async fn minions(
    State(state): State<CpState>,
    fmt: Format,
    Session(token): Session,
    mid: Option<Path<String>>,
) -> Result<Response, ApiError> {
    let tgt = mid.map(|Path(m)| m).unwrap_or_else(|| "*".into());
    let chunk = low(json!({"client": "local", "tgt": tgt, "fun": "grains.items"}));
    exec_answer(&state, fmt, vec![chunk], Some(&token)).await
}

/// `POST /minions`: start jobs (`local_async`), 202 with links to `/jobs`.
pub async fn minions_post(
    State(state): State<CpState>,
    fmt: Format,
    Session(token): Session,
    Lowdata(chunks): Lowdata,
) -> Result<Response, ApiError> {
    let ret = exec(&state, chunks, Some(&token), Some("local_async")).await?;
    let links: Vec<Json> = ret
        .iter()
        .filter_map(|r| r.get("jid").and_then(Json::as_str))
        .map(|jid| json!({"href": format!("/jobs/{jid}")}))
        .collect();
    Ok(fmt.render(
        StatusCode::ACCEPTED,
        &json!({"return": ret, "_links": {"jobs": links}}),
    ))
}

/// `GET /jobs[/<jid>]`: the job cache through the `jobs` runner.
pub async fn jobs(
    State(state): State<CpState>,
    fmt: Format,
    Session(token): Session,
    jid: Option<Path<String>>,
) -> Result<Response, ApiError> {
    fmt.try_ok(async {
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
    })
    .await
}

/// `GET /keys[/<id>]`: minion keys through the `key` wheel.
pub async fn keys(
    State(state): State<CpState>,
    fmt: Format,
    Session(token): Session,
    mid: Option<Path<String>>,
) -> Result<Response, ApiError> {
    fmt.try_ok(async {
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
    })
    .await
}

/// `POST /keys`: generate and accept a key pair (`key.gen_accept`) and
/// return it as a tarball (`minion.pub`, `minion.pem`). Credentials inline.
pub async fn keys_post(
    State(state): State<CpState>,
    Lowdata(mut chunks): Lowdata,
) -> Result<Response, ApiError> {
    let r = async {
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
            .map_err(|e| ApiError::internal(format!("cannot build the key tarball: {e}")))?;
        Ok((id, tarball))
    };
    let (id, tarball) = r.await?;
    let mut resp = Response::new(Body::from(tarball));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"saltkeys-{id}.tar\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
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
