//! OctoPrint-compatible endpoints, so PrusaSlicer, OrcaSlicer and Cura can "send to OctoPrint"
//! and land the file in printgate's queue. Shapes and status codes follow OctoPrint's REST API
//! (`/api/version`, `/api/server`, `/api/settings`, `/api/printer`, `/api/job`,
//! `/api/files/local`). `print=true` only queues the job: it still waits for Plate clear.
//! Authentication (the `X-Api-Key` header) is handled by the auth layer like every other route.

use super::actor::Actor;
use super::queue::{UploadForm, queue_upload};
use crate::app::Gateway;
use crate::jobs::files::StoredFile;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// The OctoPrint version printgate answers as (new enough for every slicer's checks).
pub const OCTOPRINT_VERSION: &str = "1.10.3";
pub const OCTOPRINT_API_VERSION: &str = "0.1";

pub fn routes(max_upload: u64) -> Router<Arc<Gateway>> {
    let limit = DefaultBodyLimit::max(usize::try_from(max_upload).unwrap_or(usize::MAX));
    Router::new()
        .route("/api/version", get(version))
        .route("/api/server", get(server))
        .route("/api/settings", get(settings))
        .route("/api/printer", get(printer_state))
        .route("/api/job", get(job))
        .route("/api/printerprofiles", get(printer_profiles))
        .route("/api/files", get(files))
        .route("/api/files/local", get(files).post(upload).layer(limit))
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "api": OCTOPRINT_API_VERSION,
        "server": OCTOPRINT_VERSION,
        "text": format!("OctoPrint {OCTOPRINT_VERSION} (printgate {})", env!("CARGO_PKG_VERSION")),
    }))
}

async fn server() -> Json<serde_json::Value> {
    Json(json!({ "version": OCTOPRINT_VERSION, "safemode": null }))
}

async fn settings() -> Json<serde_json::Value> {
    Json(json!({
        "api": { "allowCrossOrigin": false },
        "feature": { "sdSupport": false },
        "webcam": { "webcamEnabled": false, "streamUrl": "" },
    }))
}

async fn printer_profiles(State(gw): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let mut profiles = serde_json::Map::new();
    for (i, p) in gw.printers.iter().enumerate() {
        profiles.insert(
            format!("printer{}", i + 1),
            json!({
                "id": format!("printer{}", i + 1),
                "name": p.name,
                "model": p.model.display_name(),
                "current": i == 0,
                "default": i == 0,
                "heatedBed": true,
                "heatedChamber": false,
                "extruder": { "count": 1, "nozzleDiameter": 0.4 },
            }),
        );
    }
    Json(json!({ "profiles": profiles }))
}

/// OctoPrint's printer state for the first configured printer (slicers only check the shape).
async fn printer_state(State(gw): State<Arc<Gateway>>) -> Response {
    let Some(p) = gw.printers.first() else {
        return (StatusCode::CONFLICT, "Printer is not operational").into_response();
    };
    let snap = p.link.subscribe().borrow().clone();
    let st = snap.state.unwrap_or_default();
    let active = st.gcode_state.is_active();
    Json(json!({
        "temperature": {
            "tool0": { "actual": st.nozzle_temp, "target": st.nozzle_target, "offset": 0 },
            "bed": { "actual": st.bed_temp, "target": st.bed_target, "offset": 0 },
        },
        "state": {
            "text": if snap.link.is_online() { st.gcode_state.as_str() } else { "Offline" },
            "flags": {
                "operational": snap.link.is_online(),
                "printing": active,
                "paused": st.gcode_state == crate::printer::GcodeState::Pause,
                "ready": snap.link.is_online() && !active,
                "error": st.print_error != 0,
                "closedOrError": !snap.link.is_online(),
                "cancelling": false, "pausing": false, "resuming": false, "finishing": false,
                "sdReady": false,
            },
        },
    }))
    .into_response()
}

async fn job(State(gw): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let st = gw
        .printers
        .first()
        .and_then(|p| p.link.subscribe().borrow().state.clone())
        .unwrap_or_default();
    Json(json!({
        "job": { "file": { "name": st.subtask_name, "origin": "local" } },
        "progress": {
            "completion": st.percent,
            "printTimeLeft": st.remaining_minutes.map(|m| m * 60),
        },
        "state": st.gcode_state.as_str(),
    }))
}

async fn files() -> Json<serde_json::Value> {
    Json(json!({ "files": [], "free": null, "total": null }))
}

/// OctoPrint's error body: `{"error": "..."}`.
fn octo_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn file_entry(stored: &StoredFile, job_id: i64) -> serde_json::Value {
    json!({
        "name": stored.display_name,
        "display": stored.display_name,
        "origin": "local",
        "path": stored.display_name,
        "refs": {
            "resource": format!("/api/v1/jobs/{job_id}"),
            "download": format!("/api/v1/jobs/{job_id}"),
        },
    })
}

/// `POST /api/files/local`: multipart `file` (required), `select`, `print`, `path`. The file is
/// queued for the token's default printer or any compatible printer.
async fn upload(State(gw): State<Arc<Gateway>>, actor: Actor, mp: Multipart) -> Response {
    let mut form: UploadForm = match super::queue::read_upload(&gw, mp).await {
        Ok(f) => f,
        Err(e) => return octo_error(e.status, e.message),
    };
    // Slicers send no printer: the token's default printer, else any compatible one.
    if form.printer.is_none() {
        form.printer = actor.1.clone();
    }
    if form.stored.is_none() {
        return octo_error(
            StatusCode::BAD_REQUEST,
            "No file included: send the sliced .gcode.3mf in the multipart field \"file\"",
        );
    }
    let stored = form.stored.clone();
    match queue_upload(&gw, form, &actor.0).await {
        Ok((job, _)) => {
            let entry = stored
                .as_ref()
                .map(|s| file_entry(s, job.id))
                .unwrap_or_default();
            let body = json!({ "done": true, "files": { "local": entry } });
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(e) => {
            let status = match e.status {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                StatusCode::NOT_FOUND => StatusCode::NOT_FOUND,
                s if s.is_server_error() => s,
                _ => StatusCode::BAD_REQUEST,
            };
            octo_error(status, e.message)
        }
    }
}
