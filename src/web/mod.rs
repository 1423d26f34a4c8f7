//! Web: the axum router serving the server-rendered pages (askama templates in `templates/`),
//! the static assets embedded in the binary, and the JSON API under `/api/v1/`.

pub mod actor;
pub mod assets;
pub mod auth;
pub mod camera;
pub mod card;
pub mod event_text;
pub mod fleet;
pub mod form_answer;
pub mod gpio_cli;
pub mod history;
pub mod job_filaments;
pub mod live;
pub mod octoprint;
pub mod openapi;
pub mod plate_pictures;
pub mod printer_login;
pub mod printer_page;
pub mod prints;
pub mod queue;
pub mod safety_api;
pub mod safety_page;
pub mod virtual_printers;

pub mod settings;
pub mod settings_notifications;
pub mod settings_users;
pub mod upload;

use crate::app::Gateway;
use crate::views::{self, PrinterView};
use askama::Template;
use auth::CurrentUser;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use card::CardText;
use std::sync::Arc;
use std::time::Instant;
use tower_http::compression::CompressionLayer;

/// Build the router for one gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/api/v1/printers", get(api_printers))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(|| async { "ok" }))
        .route("/live", get(live::live))
        .route("/thumbnails/{sha}/{plate}", get(thumbnail))
        .merge(queue::routes(gw.files.limits().max_file_bytes))
        .merge(octoprint::routes(gw.files.limits().max_file_bytes))
        .merge(printer_page::routes())
        .merge(history::routes())
        .merge(camera::routes())
        .merge(plate_pictures::routes())
        .merge(fleet::routes())
        .merge(printer_login::routes())
        .merge(settings::routes())
        .merge(settings_notifications::routes(&gw))
        .merge(settings_users::routes())
        .merge(safety_page::routes())
        .merge(crate::web::safety_api::routes())
        .merge(virtual_printers::routes())
        .merge(assets::routes());
    // ---- auth (src/web/auth.rs): add routes above this line. Every route added before
    // `auth::protect` needs a signed-in user or an API token, except auth::PUBLIC_PATHS;
    // handlers take `auth::CurrentUser`. ----
    // An explicit fallback, so unknown paths stay behind the sign-in guard after `/metrics`
    // is merged below (a merged router keeps only a custom fallback with its layers).
    let app = auth::protect(
        app.merge(auth::routes())
            .fallback(|| async { axum::http::StatusCode::NOT_FOUND }),
        &gw,
    );
    // `/metrics` checks its own scrape token (outside the sign-in guard); every answer, also
    // the guard's refusals, is counted by route template.
    let app =
        app.merge(crate::metrics::http::routes())
            .layer(axum::middleware::from_fn_with_state(
                gw.clone(),
                crate::metrics::http::track,
            ));
    // gzip for text answers; the default predicate leaves out images, tiny bodies and the SSE
    // stream (`text/event-stream` must reach the page unbuffered). Outermost: no answer, not
    // even the guard's redirects and refusals, may be shown inside another site's frame.
    app.layer(CompressionLayer::new().gzip(true))
        .layer(axum::middleware::map_response(never_framed))
        .with_state(gw)
}

/// The `frame-ancestors` directive every answer carries.
const FRAME_ANCESTORS: &str = "frame-ancestors 'none'";

/// Forbid framing of every answer (clickjacking: another site must not show the Stop or Plate
/// clear buttons under its own): `X-Frame-Options: DENY` for old browsers and the CSP
/// `frame-ancestors 'none'`, appended to a policy the handler set, if any.
async fn never_framed(mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    let csp = match headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) if existing.contains("frame-ancestors") => None,
        Some(existing) => {
            let existing = existing.trim().trim_end_matches(';');
            header::HeaderValue::from_str(&format!("{existing}; {FRAME_ANCESTORS}")).ok()
        }
        None => Some(header::HeaderValue::from_static(FRAME_ANCESTORS)),
    };
    if let Some(v) = csp {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    printers: Vec<PrinterView>,
    jobs: Vec<queue::JobView>,
    notice: Option<String>,
    refused: bool,
    queue_paused: bool,
    plate_ttl_minutes: u64,
    refresh_secs: u32,
    csrf: String,
    safety_banner: Option<String>,
    /// Printers whose camera printgate reads: their card offers a camera picture on demand
    /// (a link; nothing is fetched until it is tapped).
    cameras: std::collections::HashSet<String>,
}

impl CardText for StatusPage {}

/// The live part of one printer card alone (`card_body.html`), as the live stream sends it.
#[derive(Template)]
#[template(path = "card_body.html")]
struct CardBody<'a> {
    p: &'a PrinterView,
    csrf: &'a str,
}

impl CardText for CardBody<'_> {}

/// The dashboard's queue list alone (`queue_body.html`), as the live stream sends it.
#[derive(Template)]
#[template(path = "queue_body.html")]
struct QueueBody<'a> {
    jobs: &'a [queue::JobView],
    queue_paused: bool,
    plate_ttl_minutes: u64,
    csrf: &'a str,
}

/// A fragment for the live stream; empty (the page keeps what it shows) if it cannot be
/// rendered.
fn fragment<T: Template>(t: &T) -> String {
    t.render().unwrap_or_else(|e| {
        tracing::warn!("a live page fragment could not be rendered: {e}");
        String::new()
    })
}

/// The HTML of one printer card's live part, from the same template the pages include.
pub(crate) fn card_html(p: &PrinterView, csrf: &str) -> String {
    fragment(&CardBody { p, csrf })
}

/// The HTML of the dashboard's queue list, from the same template the dashboard includes.
pub(crate) fn queue_html(
    gw: &Gateway,
    jobs: &[queue::JobView],
    paused: bool,
    csrf: &str,
) -> String {
    fragment(&QueueBody {
        jobs,
        queue_paused: paused,
        plate_ttl_minutes: plate_ttl_minutes(gw),
        csrf,
    })
}

fn plate_ttl_minutes(gw: &Gateway) -> u64 {
    gw.config.dispatch.plate_clear_ttl_secs / 60
}

pub(crate) fn printer_views(gw: &Gateway) -> Vec<PrinterView> {
    let now = Instant::now();
    let dispatch = gw.dispatcher.state();
    let clock_now = gw.dispatcher.now();
    gw.printers
        .iter()
        .map(|p| {
            let snap = p.link.subscribe().borrow().clone();
            let runtime = dispatch.printers.get(&p.name);
            let plate = views::plate_view(
                runtime.map(|r| &r.plate),
                clock_now,
                dispatch.timings.plate_clear_ttl_ms,
            );
            // While a print is on the printer a tap is refused: no Plate clear button then. While
            // printgate's own relay holds the power off, nothing prints whatever the last report
            // said (the dispatcher accepts the tap then).
            let unpowered = runtime.is_some_and(|r| !r.link_online && r.power_held_off);
            let in_progress = views::print_in_progress(
                snap.state
                    .as_ref()
                    .map(|s| s.gcode_state)
                    .filter(|_| !unpowered),
                dispatch.slot_job(&p.name).map(|j| j.state),
            );
            let plate = views::plate_during_print(plate, in_progress);
            let paused = runtime.is_some_and(|r| r.paused);
            let mut view =
                views::printer_view(&p.name, p.model, &snap, now, gw.hms_text, plate, paused);
            // A file printgate named (`pg-<id>.gcode`, Klipper printers show the file name):
            // show the job's own name instead.
            if let Some(shown) = view.job_name.clone()
                && crate::printer::model::subtask_id_in_remote_name(&shown).is_some()
                && let Ok(Some(job)) = gw.store.last_started_job_on(&p.name)
                && shown.ends_with(&job.remote_name())
            {
                view.job_name = Some(job.name);
            }
            if view.plate.state != "clear" {
                view.thumbnail_url = gw
                    .store
                    .last_started_job_on(&p.name)
                    .ok()
                    .flatten()
                    .map(|j| format!("/thumbnails/{}/{}", j.file_sha256, j.plate));
            }
            view
        })
        .collect()
}

async fn status_page(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Query(q): Query<form_answer::NoticeQuery>,
) -> Response {
    render(&StatusPage {
        printers: printer_views(&gw),
        jobs: queue::queue_views(&gw),
        notice: q.notice(),
        refused: q.refused(),
        queue_paused: gw.dispatcher.state().queue_paused,
        plate_ttl_minutes: plate_ttl_minutes(&gw),
        refresh_secs: 5,
        csrf: user.csrf_token().to_string(),
        safety_banner: safety_page::banner(&gw),
        cameras: gw
            .printers
            .iter()
            .filter(|p| p.camera.available().is_ok())
            .map(|p| p.name.clone())
            .collect(),
    })
}

/// Every configured printer: link, state, temperatures, progress and its plate gate.
#[utoipa::path(
    get,
    path = "/api/v1/printers",
    tag = "printers",
    responses((status = 200, description = "The printers, in configuration order", body = [PrinterView]))
)]
pub(crate) async fn api_printers(State(gw): State<Arc<Gateway>>) -> Json<Vec<PrinterView>> {
    Json(printer_views(&gw))
}

/// A plate thumbnail from a stored 3MF.
async fn thumbnail(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path((sha, plate)): axum::extract::Path<(String, u32)>,
) -> Response {
    match gw.files.thumbnail(&sha, plate).await {
        Some(png) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "private, max-age=86400"),
            ],
            png,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no thumbnail for this plate").into_response(),
    }
}

/// An error answer of the JSON API: `{"error":{"code":…,"message":…}}` with a status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "log in, or send an API token in the X-Api-Key header",
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// Percent-encode a path segment or query value.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Render a template, or a plain 500 that says what failed.
pub(crate) fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("page could not be rendered: {e}"),
        )
            .into_response(),
    }
}
