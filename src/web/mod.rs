//! Web: the axum router serving the server-rendered pages (askama templates in `templates/`),
//! the static assets embedded in the binary, and the JSON API under `/api/v1/`.

pub mod auth;
pub mod views;

use crate::Gateway;
use askama::Template;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Instant;
use views::{PrinterView, fmt_minutes, fmt_temp};

/// Build the router for one gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/static/style.css", get(style_css))
        .route("/api/v1/printers", get(api_printers))
        .route("/healthz", get(|| async { "ok" }));
    // ---- auth (src/web/auth.rs): add routes above this line. Every route added before
    // `auth::protect` needs a signed-in user or an API token, except auth::PUBLIC_PATHS;
    // handlers take `auth::CurrentUser`. ----
    let app = auth::protect(app.merge(auth::routes()), &gw);
    app.with_state(gw)
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    printers: Vec<PrinterView>,
    refresh_secs: u32,
}

impl StatusPage {
    fn fmt_temp(&self, t: &Option<f64>) -> String {
        fmt_temp(*t)
    }
    fn fmt_minutes(&self, m: &Option<u32>) -> String {
        fmt_minutes(*m)
    }
}

fn printer_views(gw: &Gateway) -> Vec<PrinterView> {
    let now = Instant::now();
    gw.printers
        .iter()
        .map(|p| {
            let snap = p.link.subscribe().borrow().clone();
            views::printer_view(&p.name, p.model, &snap, now, gw.hms_text)
        })
        .collect()
}

async fn status_page(State(gw): State<Arc<Gateway>>) -> Response {
    render(&StatusPage {
        printers: printer_views(&gw),
        refresh_secs: 2,
    })
}

async fn api_printers(State(gw): State<Arc<Gateway>>) -> Json<Vec<PrinterView>> {
    Json(printer_views(&gw))
}

async fn style_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/style.css"),
    )
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
