//! The web side of the metrics room: `GET /metrics` (its own check of the scrape token or an
//! API token; off → 404) and the middleware that counts every web answer by route template.

use crate::app::Gateway;
use crate::web::auth::{api_key, secrets};
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;

/// The route of the endpoint.
pub const PATH: &str = "/metrics";

/// `GET /metrics`. Registered outside the sign-in guard: Prometheus sends only an
/// `Authorization` header, which this handler checks itself.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new().route(PATH, get(metrics))
}

/// Route label of a request no route serves (keeps scanners' random paths out of the labels).
pub const UNMATCHED: &str = "unmatched";

/// Count each answer: route template, method, status, and the time to the response headers.
pub async fn track(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED.to_string());
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS => req.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let began = Instant::now();
    let resp = next.run(req).await;
    gw.metrics
        .observe_request(&route, &method, resp.status().as_u16(), began.elapsed());
    resp
}

/// Whether the request carries the dedicated metrics token or a valid API token.
fn allowed(gw: &Gateway, headers: &HeaderMap) -> Result<bool, crate::store::StoreError> {
    let Some(given) = api_key(headers) else {
        return Ok(false);
    };
    if let Some(t) = &gw.config.metrics.token
        && secrets::constant_time_eq(t.as_bytes(), given.as_bytes())
    {
        return Ok(true);
    }
    Ok(gw
        .store
        .api_token_with_user(&secrets::sha256_hex(given))?
        .is_some())
}

async fn metrics(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if !gw.config.metrics.enabled {
        return (
            StatusCode::NOT_FOUND,
            "metrics are off; set enabled = true in the [metrics] section of printgate.toml",
        )
            .into_response();
    }
    let work = {
        let gw = gw.clone();
        tokio::task::spawn_blocking(move || {
            if !allowed(&gw, &headers)? {
                return Ok(None);
            }
            gw.store.metric_counts().map(Some)
        })
    };
    let counts = match work.await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"printgate metrics\"",
                )],
                "send the [metrics] token or an API token as Authorization: Bearer <token>",
            )
                .into_response();
        }
        Ok(Err(e)) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("metrics could not be read from the database: {e}"),
            )
                .into_response();
        }
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("metrics could not be gathered: {e}"),
            )
                .into_response();
        }
    };
    match super::render(&gw, &counts) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics could not be encoded: {e}"),
        )
            .into_response(),
    }
}
