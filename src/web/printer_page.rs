//! One printer's page: its card, controls (pause, resume, stop behind a confirmation, chamber
//! light) and its event history. Controls go straight to the printer's link — none of them can
//! start a print — and every one is recorded in the printer's history with who did it.

use super::actor::Actor;
use super::auth::CurrentUser;
use super::views::PrinterView;
use super::{ApiError, render};
use crate::Gateway;
use crate::printer::{LinkError, PrinterCommand};
use crate::store::EventKind;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// A person's control action on a printer, in the history.
pub const PRINTER_CONTROL: EventKind = EventKind::new("printer_control");

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/printers/{name}", get(page))
        .route("/printers/{name}/control/{action}", post(control_form))
        .route("/api/v1/printers/{name}/{action}", post(api_control))
}

struct EventLine {
    at: String,
    what: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "printer.html")]
struct PrinterPage {
    p: PrinterView,
    events: Vec<EventLine>,
    notice: Option<String>,
    csrf: String,
    safety_banner: Option<String>,
    /// Klipper printers: how Moonraker connects (instance name, issued login).
    klipper: Option<KlipperSetup>,
}

struct KlipperSetup {
    instance_name: String,
    /// `(user name, issued at)` of the current login.
    login: Option<(String, String)>,
}

impl PrinterPage {
    fn fmt_temp(&self, t: &Option<f64>) -> String {
        super::views::fmt_temp(*t)
    }
    fn fmt_minutes(&self, m: &Option<u32>) -> String {
        super::views::fmt_minutes(*m)
    }
}

#[derive(Deserialize, Default)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn page(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Path(name): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let Some(p) = super::printer_views(&gw)
        .into_iter()
        .find(|p| p.name == name)
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("there is no printer called {name:?}"),
        )
            .into_response();
    };
    let events = gw
        .store
        .recent_events(Some(&name), 100)
        .unwrap_or_default()
        .into_iter()
        .map(|e| EventLine {
            at: chrono::DateTime::from_timestamp_millis(e.at_ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default(),
            what: e.kind,
            detail: e.detail.to_string(),
        })
        .collect();
    let klipper = gw
        .config
        .printers
        .iter()
        .find(|c| c.name == name && c.kind == crate::config::PrinterKind::Moonraker)
        .map(|c| KlipperSetup {
            instance_name: c.instance_name.clone(),
            login: gw.store.printer_credential(&name).ok().flatten().map(|l| {
                (
                    l.username,
                    chrono::DateTime::from_timestamp_millis(l.created_at_ms)
                        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                        .unwrap_or_default(),
                )
            }),
        });
    render(&PrinterPage {
        p,
        klipper,
        events,
        notice: q.notice.filter(|n| !n.is_empty()),
        csrf: user.csrf_token().to_string(),
        safety_banner: super::safety_page::banner(&gw),
    })
}

/// Parse an action name into the command it sends.
fn command_for(action: &str) -> Result<PrinterCommand, ApiError> {
    Ok(match action {
        "pause" => PrinterCommand::Pause,
        "resume" => PrinterCommand::Resume,
        "stop" => PrinterCommand::Stop,
        "light-on" => PrinterCommand::Light(true),
        "light-off" => PrinterCommand::Light(false),
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_action",
                format!(
                    "unknown printer action {other:?}; use pause, resume, stop, light-on or light-off"
                ),
            ));
        }
    })
}

async fn control(
    gw: &Gateway,
    name: &str,
    action: &str,
    user: &str,
    confirmed: bool,
) -> Result<String, ApiError> {
    let cmd = command_for(action)?;
    let Some(p) = gw.printers.iter().find(|p| p.name == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_printer",
            format!("there is no printer called {name:?}"),
        ));
    };
    if cmd == PrinterCommand::Stop && !confirmed {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "confirmation_required",
            "stopping cancels the print for good; confirm it (form field confirm=yes)",
        ));
    }
    let result = p.link.send(cmd).await;
    let outcome = match &result {
        Ok(_) => "sent".to_string(),
        Err(e) => e.to_string(),
    };
    let at = chrono::Utc::now().timestamp_millis();
    let detail = json!({ "action": action, "by": user, "outcome": outcome });
    if let Err(e) = gw.store.record_event(name, PRINTER_CONTROL, &detail, at) {
        tracing::warn!("could not record a printer control: {e}");
    }
    match result {
        Ok(_) => Ok(format!(
            "{action} sent to {name}; watch the printer's state to see it take effect"
        )),
        Err(LinkError::Unsupported(why)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_action",
            format!("{name}: {why}; nothing was sent"),
        )),
        Err(LinkError::NotConnected) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "printer_offline",
            format!(
                "{name} is not connected; nothing was sent (commands are never queued for later)"
            ),
        )),
        Err(e) => Err(ApiError::unavailable(format!(
            "{action} may not have reached {name}: {e}"
        ))),
    }
}

#[derive(Deserialize, Default)]
struct ControlForm {
    confirm: Option<String>,
}

async fn control_form(
    State(gw): State<Arc<Gateway>>,
    Path((name, action)): Path<(String, String)>,
    actor: Actor,
    Form(form): Form<ControlForm>,
) -> Response {
    let confirmed = form.confirm.as_deref() == Some("yes");
    let message = match control(&gw, &name, &action, &actor.0, confirmed).await {
        Ok(m) => m,
        Err(e) => e.message,
    };
    let url = format!(
        "/printers/{}?notice={}",
        super::urlencode(&name),
        super::urlencode(&message)
    );
    Redirect::to(&url).into_response()
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct ApiControl {
    /// Must be true for `stop` (it cancels the print for good).
    #[serde(default)]
    confirm: bool,
}

/// The message of a control action.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ControlMessage {
    message: String,
}

/// Send a control to a printer: `pause`, `resume`, `stop` (with `confirm: true`), `light-on`,
/// `light-off`. None of them can start a print; each is recorded in the printer's history.
#[utoipa::path(
    post,
    path = "/api/v1/printers/{name}/{action}",
    tag = "printers",
    params(
        ("name" = String, Path, description = "Printer name"),
        ("action" = String, Path, description = "`pause`, `resume`, `stop`, `light-on` or `light-off`"),
    ),
    request_body(content = Option<ApiControl>, content_type = "application/json"),
    responses(
        (status = 200, description = "Sent", body = ControlMessage),
        (status = 400, description = "Stop without confirmation", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown printer or action", body = super::openapi::ErrorBody),
        (status = 409, description = "Printer offline; nothing sent", body = super::openapi::ErrorBody),
        (status = 503, description = "May not have reached the printer", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_control(
    State(gw): State<Arc<Gateway>>,
    Path((name, action)): Path<(String, String)>,
    actor: Actor,
    body: Option<Json<ApiControl>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if action == "plate-clear" {
        return Err(ApiError::bad_request(
            "use POST /api/v1/printers/{name}/plate-clear",
        ));
    }
    let confirmed = body.is_some_and(|b| b.0.confirm);
    let message = control(&gw, &name, &action, &actor.0, confirmed).await?;
    Ok(Json(json!({ "message": message })))
}
