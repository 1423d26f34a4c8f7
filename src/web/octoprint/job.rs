//! `GET /api/printer`, `GET /api/job` and `POST /api/job` for the printer a request is about
//! ([`super::Scope`]), with OctoPrint's field set and types (`null` where OctoPrint sends
//! `null`), the state mapped by [`super::state`].
//!
//! The job `/api/job` shows: the print printgate started on the printer (`Starting`/`Printing`),
//! else a print started elsewhere (from the printer's own screen, `origin: "sdcard"`), else the
//! next job queued for the printer (OctoPrint's "selected file"), else the last job printed on
//! it, else all `null`.

use super::files::{analysis, tree_file_of};
use super::state::{OctoKind, octo_state};
use super::{Scope, octo_error};
use crate::app::Gateway;
use crate::app::PrinterEntry;
use crate::jobs::dispatcher::Event;
use crate::jobs::model::{Job, JobState, Target};
use crate::printer::{GcodeState, PrinterSnapshot};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// `{"actual", "target", "offset"}` of one heater.
fn heater(actual: Option<f64>, target: Option<f64>) -> Value {
    json!({ "actual": actual, "target": target, "offset": 0 })
}

#[derive(Deserialize, Default)]
pub(super) struct PrinterQuery {
    exclude: Option<String>,
}

/// `GET /api/printer`: temperatures and state; `409 Printer is not operational` while the
/// printer is offline, connecting or in error (as OctoPrint).
pub(super) async fn printer_state(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    Query(q): Query<PrinterQuery>,
) -> Response {
    let p = match scope.printer(&gw) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let snap = p.link.subscribe().borrow().clone();
    let st = octo_state(&snap.link, snap.state.as_ref());
    if !st.kind.flags().operational {
        return octo_error(StatusCode::CONFLICT, "Printer is not operational");
    }
    let excluded: Vec<&str> = q
        .exclude
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let mut out = serde_json::Map::new();
    if !excluded.contains(&"temperature") {
        let s = snap.state.clone().unwrap_or_default();
        let mut t = serde_json::Map::new();
        t.insert("tool0".into(), heater(s.nozzle_temp, s.nozzle_target));
        t.insert("bed".into(), heater(s.bed_temp, s.bed_target));
        if s.chamber_temp.is_some() {
            t.insert("chamber".into(), heater(s.chamber_temp, None));
        }
        out.insert("temperature".into(), Value::Object(t));
    }
    if !excluded.contains(&"state") {
        out.insert(
            "state".into(),
            json!({ "text": st.kind.text(), "flags": st.kind.flags(), "error": st.error }),
        );
    }
    Json(Value::Object(out)).into_response()
}

/// What `/api/job` describes on a printer.
enum Shown {
    /// A printgate job (started on it, queued for it, or the last one it printed).
    Job(Box<Job>),
    /// A print printgate did not send (started on the printer itself).
    Foreign(String),
    Nothing,
}

fn targets(job: &Job, p: &PrinterEntry) -> bool {
    match (&job.assigned_printer, &job.target) {
        (Some(a), _) => *a == p.name,
        (None, Target::Printer(t)) => *t == p.name,
        (None, Target::AnyCompatible) => job.model_code == p.model.model_code(),
    }
}

fn shown_on(gw: &Gateway, p: &PrinterEntry, snap: &PrinterSnapshot) -> Shown {
    let state = gw.dispatcher.state();
    let on_printer = |s: &[JobState]| {
        state
            .jobs
            .values()
            .filter(|j| s.contains(&j.state) && j.assigned_printer.as_deref() == Some(&p.name))
            .min_by_key(|j| (j.position, j.id))
            .cloned()
    };
    if let Some(j) = on_printer(&[JobState::Starting, JobState::Printing]) {
        return Shown::Job(Box::new(j));
    }
    let report = snap.state.as_ref();
    if report.is_some_and(|s| s.gcode_state.is_active()) {
        let name = report
            .and_then(|s| s.subtask_name.clone().or_else(|| s.gcode_file.clone()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "print started on the printer".into());
        return Shown::Foreign(name);
    }
    if let Some(j) = state
        .jobs
        .values()
        .filter(|j| j.state.is_pre_start() && targets(j, p))
        .min_by_key(|j| (j.position, j.id))
    {
        return Shown::Job(Box::new(j.clone()));
    }
    match gw.store.last_started_job_on(&p.name) {
        Ok(Some(j)) => Shown::Job(Box::new(j)),
        _ => Shown::Nothing,
    }
}

/// `GET /api/job`.
pub(super) async fn job(State(gw): State<Arc<Gateway>>, scope: Scope) -> Response {
    let p = match scope.printer(&gw) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let snap = p.link.subscribe().borrow().clone();
    let st = octo_state(&snap.link, snap.state.as_ref());
    let report = snap.state.clone().unwrap_or_default();
    let shown = shown_on(&gw, p, &snap);
    let null_file = json!({
        "name": null, "path": null, "display": null, "origin": null, "size": null, "date": null,
    });
    let (file, estimate, filament, user, started_at) = match &shown {
        Shown::Job(j) => {
            let f = tree_file_of(&gw, j);
            let (estimate, filament) = analysis(&gw, &j.file_sha256, j.plate);
            let started = j
                .start
                .as_ref()
                .and_then(|s| s.published_at.or(s.publish_attempted_at))
                .filter(|_| matches!(j.state, JobState::Starting | JobState::Printing));
            (
                json!({
                    "name": f.name, "path": f.path(), "display": f.name, "origin": "local",
                    "size": f.size, "date": f.date,
                }),
                estimate,
                filament,
                Value::from(j.created_by.clone()),
                started,
            )
        }
        Shown::Foreign(name) => (
            json!({
                "name": name, "path": name, "display": name, "origin": "sdcard",
                "size": null, "date": null,
            }),
            None,
            Value::Null,
            Value::Null,
            None,
        ),
        Shown::Nothing => (null_file, None, Value::Null, Value::Null, None),
    };
    // Progress only while a print runs (OctoPrint sends nulls otherwise).
    let active = st.kind.has_active_job();
    let left = report
        .remaining_minutes
        .filter(|_| active)
        .map(|m| u64::from(m) * 60);
    let completion = report.percent.filter(|_| active).map(f64::from);
    let print_time = started_at
        .map(|t| gw.dispatcher.now().saturating_sub(t) / 1000)
        .or_else(|| match (report.percent, left) {
            // A print printgate did not start: elapsed from the printer's progress and estimate.
            (Some(pc), Some(l)) if pc > 0 && pc < 100 => {
                Some(l.saturating_mul(u64::from(pc)) / u64::from(100 - pc))
            }
            _ => None,
        })
        .filter(|_| active);
    let mut body = json!({
        "job": {
            "file": file,
            "estimatedPrintTime": estimate,
            "averagePrintTime": null,
            "lastPrintTime": null,
            "filament": filament,
            "user": user,
        },
        "progress": {
            "completion": completion,
            "filepos": null,
            "printTime": print_time,
            "printTimeLeft": left,
            "printTimeLeftOrigin": left.map(|_| "printer"),
        },
        "state": st.kind.text(),
    });
    if let Some(e) = &st.error {
        body["error"] = json!(e);
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
pub(super) struct JobCommand {
    command: String,
    action: Option<String>,
}

/// `POST /api/job`: `start` and `restart` are refused (`409`: a print starts only after Plate
/// clear); `pause` (`action` `pause`, `resume` or `toggle`) pauses or resumes the print;
/// `cancel` follows printgate's cancel rules: the job `/api/job` shows is cancelled if it has
/// not started, a running print is not stopped from here (`409`, stop it on the printer page).
pub(super) async fn job_command(
    State(gw): State<Arc<Gateway>>,
    scope: Scope,
    body: Result<Json<JobCommand>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(cmd)) = body else {
        return octo_error(
            StatusCode::BAD_REQUEST,
            "Malformed JSON body or wrong content type in request: send {\"command\": \"cancel\"}",
        );
    };
    let p = match scope.printer(&gw) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let snap = p.link.subscribe().borrow().clone();
    let st = octo_state(&snap.link, snap.state.as_ref());
    if !matches!(
        cmd.command.as_str(),
        "start" | "restart" | "pause" | "cancel"
    ) {
        return octo_error(
            StatusCode::BAD_REQUEST,
            format!(
                "command {:?} is invalid; use start, restart, pause or cancel",
                cmd.command
            ),
        );
    }
    if !st.kind.flags().operational {
        return octo_error(StatusCode::CONFLICT, "Printer is not operational");
    }
    let page = format!(
        "{}/printers/{}",
        scope.origin,
        crate::web::urlencode(&p.name)
    );
    match cmd.command.as_str() {
        "start" | "restart" => octo_error(
            StatusCode::CONFLICT,
            format!(
                "printgate does not start prints on request: the next queued job for {} starts only after Plate clear is tapped for it on printgate ({page})",
                p.name
            ),
        ),
        "pause" => {
            pause(
                &gw,
                p,
                &scope,
                st.kind,
                cmd.action.as_deref().unwrap_or("toggle"),
            )
            .await
        }
        _ => cancel(&gw, p, &scope, &snap, &page).await,
    }
}

async fn pause(
    gw: &Gateway,
    p: &PrinterEntry,
    scope: &Scope,
    kind: OctoKind,
    action: &str,
) -> Response {
    if !kind.has_active_job() {
        return octo_error(
            StatusCode::CONFLICT,
            "Printer is neither printing nor paused, 'pause' command cannot be performed",
        );
    }
    let what = match (action, kind) {
        ("pause", _) => "pause",
        ("resume", _) => "resume",
        ("toggle", OctoKind::Paused) => "resume",
        ("toggle", _) => "pause",
        _ => {
            return octo_error(
                StatusCode::BAD_REQUEST,
                "Unknown action: use pause, resume or toggle",
            );
        }
    };
    match crate::web::printer_page::control(gw, &p.name, what, &scope.actor.0, false).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => octo_error(e.status, e.message),
    }
}

async fn cancel(
    gw: &Gateway,
    p: &PrinterEntry,
    scope: &Scope,
    snap: &PrinterSnapshot,
    page: &str,
) -> Response {
    let job = match shown_on(gw, p, snap) {
        Shown::Job(j)
            if matches!(
                j.state,
                JobState::Queued
                    | JobState::Staged
                    | JobState::Unconfirmed
                    | JobState::Starting
                    | JobState::Printing
            ) =>
        {
            j
        }
        Shown::Foreign(name) => {
            return octo_error(
                StatusCode::CONFLICT,
                format!(
                    "{name:?} was started on the printer itself; stop it there or on printgate's printer page ({page}), confirmed"
                ),
            );
        }
        _ if snap
            .state
            .as_ref()
            .is_some_and(|s| s.gcode_state != GcodeState::Unknown && s.gcode_state.is_active()) =>
        {
            return octo_error(
                StatusCode::CONFLICT,
                format!("stop the print on printgate's printer page ({page}), confirmed"),
            );
        }
        _ => {
            return octo_error(
                StatusCode::CONFLICT,
                "Printer is neither printing nor paused, 'cancel' command cannot be performed",
            );
        }
    };
    let notices = match gw
        .dispatcher
        .submit(Event::Cancel {
            job: job.id,
            user: scope.actor.0.clone(),
        })
        .await
    {
        Ok(n) => n,
        Err(e) => return octo_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let now = gw.dispatcher.state().jobs.get(&job.id).map(|j| j.state);
    if now.is_none() || now == Some(JobState::Cancelled) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let why: Vec<String> = notices.into_iter().map(|n| n.message).collect();
    octo_error(
        StatusCode::CONFLICT,
        format!(
            "{}; a running print is stopped on printgate's printer page ({page}), confirmed",
            if why.is_empty() {
                format!("job {:?} was not cancelled", job.name)
            } else {
                why.join(" · ")
            }
        ),
    )
}
