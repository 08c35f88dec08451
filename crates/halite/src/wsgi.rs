//! The rest_wsgi surface (the seed): `POST /` with a JSON list of lowstates,
//! each carrying its own credentials. Like rest_wsgi, the path is not
//! looked at: every path behaves as `/`. Every reply, errors included, is
//! `{"return": ...}`.

use std::convert::Infallible;
use std::future::Future;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::{BoxError, Router};
use futures_util::future::Either;
use futures_util::FutureExt;
use serde_json::json;
use tower::{Layer, Service};

use crate::body::read_body;
use crate::error::ApiError;
use crate::lowstate;
use crate::response::{json_response, return_response};
use crate::state::AppState;

/// The rest_wsgi surface as one tower service: the health routes by path
/// (see [`crate::health::PATHS`]), every other path to the lowstate
/// handler, with the streamed-answer layer around it.
///
/// Not an axum `Router` with the handler as its fallback: each `Router`
/// level, and each `Router::layer`, boxes the route's future again, and
/// every call waiting for its job holds those boxes. As a plain service
/// under the shared layer stack, a call holds the outer route's box only.
pub fn service(state: AppState) -> WsgiSurface<impl HttpService> {
    let streamed = crate::stream_answer::StreamAnswerLayer::wsgi(state.clone());
    WsgiSurface {
        health: crate::health::routes().with_state(state.clone()),
        // A plain service, not an axum handler: a handler's future is boxed
        // and keeps room for the request it was made from while the call
        // waits (~0.3 KiB per call).
        // (`map`, not an async block: a block would keep room for the
        // handler's future twice, as its capture and as the awaited value).
        lowstate: streamed.layer(tower::service_fn(move |req| {
            handle(state.clone(), req).map(|answer| Ok::<_, Infallible>(answer.into_response()))
        })),
    }
}

/// A tower service that answers every request with a response: the
/// lowstate handler [`WsgiSurface`] wraps, and each surface as `serve` runs
/// it (with hyper's request body).
pub trait HttpService<B = Body>:
    Service<Request<B>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: Service<Request<B>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// See [`service`].
#[derive(Clone)]
pub struct WsgiSurface<L> {
    health: Router,
    lowstate: L,
}

impl<L, B> Service<Request<B>> for WsgiSurface<L>
where
    L: HttpService,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<RouteFuture<Infallible>, L::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        ready!(Service::<Request>::poll_ready(&mut self.health, cx))?;
        self.lowstate.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let req = req.map(Body::new);
        if crate::health::PATHS.contains(&req.uri().path()) {
            Either::Left(self.health.call(req))
        } else {
            Either::Right(self.lowstate.call(req))
        }
    }
}

/// `POST /` runs the lowstates; `GET` and `HEAD` greet.
///
/// Not an `async fn`: the method and the content type are checked here,
/// and the future that waits for the call holds the state and the body
/// only, not the request (an `async fn` would keep the request twice, as
/// its argument and as the local it moves into, while the call waits).
fn handle(state: AppState, req: Request) -> impl Future<Output = Result<Response, ApiError>> {
    let checked = match *req.method() {
        Method::GET | Method::HEAD => Err(Ok(json_response(
            StatusCode::OK,
            &json!({"return": "Welcome to halite, a REST API for Salt (rest_wsgi surface). POST a JSON list of lowstate objects to /."}),
        ))),
        Method::POST => json_content_type(req.headers()).map_err(Err),
        _ => Err(Err(ApiError::method_not_allowed())),
    };
    // The request's headers (slices of the connection's read buffer) are
    // gone before the call waits.
    let body = req.into_body();
    async move {
        if let Err(answer) = checked {
            return answer;
        }
        let bytes: Bytes = read_body(body, state.limits.max_body).await?;
        let parsed: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))?;
        drop(bytes);
        let chunks = lowstate::chunks_from_json(parsed, false)?;
        let ret = lowstate::run_answers(&state, chunks, true).await?;
        Ok(return_response(StatusCode::OK, ret))
    }
}

/// rest_wsgi reads JSON bodies only: anything else is 406.
pub(crate) fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(format!(
            "Content-Type must be application/json, not '{}'",
            if mime.is_empty() { "(none)" } else { mime }
        )))
    }
}
