//! One printer's page: its card, controls (pause, resume, stop behind a confirmation, chamber
//! light) and its event history. Controls take the one path of `controls.rs` — none of them can
//! start a print — and every one is recorded in the printer's history with who did it.

use super::actor::Actor;
use super::auth::CurrentUser;
use super::card::CardText;
use super::event_text::{LocalTime, event_sentence, local_time};
use super::form_answer::{FormOutcome, NoticeQuery, answer};
use super::{ApiError, render};
use crate::app::Gateway;
use crate::controls::ControlError;
use crate::printer::{GcodeState, PrinterCommand, PrinterSnapshot};
use crate::store::EventKind;
use crate::views::PrinterView;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A person's control action on a printer, in the history (recorded by `controls`).
pub const PRINTER_CONTROL: EventKind = crate::controls::PRINTER_CONTROL;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/printers/{name}", get(page))
        .route("/printers/{name}/control/{action}", post(control_form))
        .route("/api/v1/printers/{name}/{action}", post(api_control))
}

struct EventLine {
    at: LocalTime,
    /// What happened, as a sentence (web::event_text).
    what: String,
}

#[derive(Template)]
#[template(path = "printer.html")]
struct PrinterPage {
    p: PrinterView,
    events: Vec<EventLine>,
    notice: Option<String>,
    refused: bool,
    csrf: String,
    safety_banner: Option<String>,
    /// Klipper printers: how Moonraker connects (instance name, issued login).
    klipper: Option<KlipperSetup>,
}

struct KlipperSetup {
    instance_name: String,
    /// `(user name, issued at)` of the current login.
    login: Option<(String, LocalTime)>,
}

impl CardText for PrinterPage {}

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
            at: local_time(e.at_ms, &chrono::Local),
            what: event_sentence(&e.kind, &e.detail, gw.hms_text),
        })
        .collect();
    let klipper = gw
        .config
        .printers
        .iter()
        .find(|c| c.name == name && c.kind == crate::config::PrinterKind::Moonraker)
        .map(|c| KlipperSetup {
            instance_name: c.instance_name.clone(),
            login: gw
                .store
                .printer_credential(&name)
                .ok()
                .flatten()
                .map(|l| (l.username, local_time(l.created_at_ms, &chrono::Local))),
        });
    render(&PrinterPage {
        p,
        klipper,
        events,
        notice: q.notice(),
        refused: q.refused(),
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

pub(super) async fn control(
    gw: &Gateway,
    name: &str,
    action: &str,
    user: &str,
    confirmed: bool,
) -> Result<String, ApiError> {
    let cmd = command_for(action)?;
    let sent = crate::controls::send(gw, name, cmd.clone(), action, user, confirmed)
        .await
        .map_err(|e| {
            let (status, code) = match &e {
                ControlError::UnknownPrinter(_) => (StatusCode::NOT_FOUND, "unknown_printer"),
                ControlError::ConfirmationRequired => {
                    (StatusCode::BAD_REQUEST, "confirmation_required")
                }
                ControlError::NotApplicable(_) => (StatusCode::CONFLICT, "not_applicable"),
                ControlError::Unsupported(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_action")
                }
                ControlError::Offline(_) => (StatusCode::CONFLICT, "printer_offline"),
                ControlError::MaybeNotSent(m) => return ApiError::unavailable(m.clone()),
            };
            ApiError::new(status, code, e.to_string())
        })?;
    let mut reports = sent.reports;
    Ok(effect(&mut reports, sent.before, &cmd, action, name).await)
}

/// How long a page waits for the printer to report that a pause, resume or stop took effect.
const EFFECT_WAIT: Duration = Duration::from_secs(8);

/// What a sent command did, as the printer's next reports tell: pause, resume and stop wait (at
/// most [`EFFECT_WAIT`]) for the state they lead to, so the page says "stopped" only when the
/// printer says so.
async fn effect(
    reports: &mut watch::Receiver<PrinterSnapshot>,
    before: Option<GcodeState>,
    cmd: &PrinterCommand,
    action: &str,
    name: &str,
) -> String {
    if let (PrinterCommand::Stop, Some(s)) = (cmd, before)
        && !s.is_active()
    {
        return format!(
            "stop sent to {name}; it was not printing (it reports {})",
            s.as_str()
        );
    }
    let (wanted, done): (fn(GcodeState) -> bool, &str) = match cmd {
        PrinterCommand::Stop => (|s| !s.is_active() && s != GcodeState::Unknown, "stopped"),
        PrinterCommand::Pause => (|s| s == GcodeState::Pause, "paused"),
        PrinterCommand::Resume => (
            |s| matches!(s, GcodeState::Running | GcodeState::Prepare),
            "printing again",
        ),
        _ => return format!("{action} sent to {name}"),
    };
    let reached = |s: &PrinterSnapshot| s.state.as_ref().is_some_and(|st| wanted(st.gcode_state));
    let seen = tokio::time::timeout(EFFECT_WAIT, reports.wait_for(reached))
        .await
        .is_ok_and(|r| r.is_ok());
    let now = reports
        .borrow()
        .state
        .as_ref()
        .map(|s| s.gcode_state.as_str())
        .unwrap_or("nothing");
    match seen {
        true => format!("{name} {done} (it reports {now})"),
        false => format!(
            "{action} sent to {name}, but after {} s it still reports {now}; look at the printer",
            EFFECT_WAIT.as_secs()
        ),
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
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
) -> Response {
    let confirmed = form.confirm.as_deref() == Some("yes");
    let outcome = match control(&gw, &name, &action, &actor.0, confirmed).await {
        Ok(m) => FormOutcome::done(m),
        Err(e) => e.into(),
    };
    answer(
        &headers,
        &format!("/printers/{}", super::urlencode(&name)),
        outcome,
    )
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
/// `light-off`. None of them can start a print; each sent one is recorded in the printer's
/// history. Pause, resume and stop answer once the printer reports their effect (at most 8 s;
/// the message says when it did not); pause is refused unless the printer prints, resume unless
/// it is paused.
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
        (status = 409, description = "Printer offline, or not printing (pause) / not paused (resume); nothing sent", body = super::openapi::ErrorBody),
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
