//! The queue and the plate-clear gate on the web: upload a file to the queue, tap "plate clear"
//! (behind a confirmation page), cancel, move, start again, pause/resume, and the history. Every
//! action goes to the dispatcher as an event; nothing here starts a print by itself. Forms work
//! without JavaScript (post, then redirect back with a notice); the same actions are available
//! as JSON under `/api/v1/`.

use super::actor::Actor;
use super::auth::CurrentUser;
use super::form_answer::{self, FormOutcome};
use super::{ApiError, render};
use crate::app::Gateway;
use crate::jobs::dispatcher::{Event, MoveDirection};
use crate::jobs::files::StoredFile;
use crate::jobs::model::{Job, JobId, JobState, NewJob, Target};
use crate::jobs::runner::Notice;
use crate::jobs::threemf::{self, FileError, FileKind};
use crate::printer::Model;
use askama::Template;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Room in an upload's body for the multipart framing and the small text fields around the
/// file, so that a file over the limit is refused by the file store (413 naming the limit)
/// rather than by the transport.
const FORM_OVERHEAD_BYTES: u64 = 1024 * 1024;
/// Longest text field of an upload form (printer name, plate, key, minutes).
const MAX_TEXT_FIELD_BYTES: usize = 4096;
/// After a part is refused unread (a second file, an oversized file or field), at most this
/// much more of it is read and dropped, so the client reads the answer instead of a reset.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;

/// The body limit of routes that take an upload of at most `max_file` bytes.
pub(super) fn upload_body_limit(max_file: u64) -> DefaultBodyLimit {
    let bytes = max_file.saturating_add(FORM_OVERHEAD_BYTES);
    DefaultBodyLimit::max(usize::try_from(bytes).unwrap_or(usize::MAX))
}

pub fn routes(max_upload: u64) -> Router<Arc<Gateway>> {
    let upload_limit = upload_body_limit(max_upload);
    Router::new()
        .route("/jobs", post(upload_form).layer(upload_limit))
        .route(
            "/api/v1/jobs",
            get(api_jobs).post(api_upload).layer(upload_limit),
        )
        .route(
            "/printers/{name}/plate-clear",
            get(plate_clear_page).post(plate_clear_form),
        )
        .route("/api/v1/printers/{name}/plate-clear", post(api_plate_clear))
        .route("/jobs/{id}/{action}", post(job_action_form))
        .route("/api/v1/jobs/{id}/{action}", post(api_job_action))
        .route("/queue/{action}", post(queue_action_form))
        .route("/api/v1/queue/{action}", post(api_queue_action))
        .route("/upload", get(upload_page))
}

/// A job as pages and the API show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub state: String,
    pub target: String,
    pub printer: Option<String>,
    pub plate: u32,
    pub message: Option<String>,
    pub created_by: String,
    pub can_move: bool,
    /// Whether ↑ would move it: a job before it is still waiting to start.
    pub can_move_up: bool,
    /// Whether ↓ would move it: a job after it is still waiting to start.
    pub can_move_down: bool,
    pub can_cancel: bool,
    pub can_start_again: bool,
    /// From the start being sent to the job's end (ended jobs only), e.g. `1 h 05 min`.
    pub duration: Option<String>,
    /// The filaments the job's plate needs, read from its 3MF at upload; `None` = not
    /// recorded (plain G-code, or queued before printgate read them).
    pub filaments: Option<Vec<super::job_filaments::FilamentNeedView>>,
}

impl JobView {
    pub fn from_job(j: &Job) -> Self {
        JobView {
            id: j.id,
            name: j.name.clone(),
            state: j.state.as_str().to_string(),
            target: match &j.target {
                Target::Printer(p) => p.clone(),
                Target::AnyCompatible => "any compatible printer".into(),
            },
            printer: j.assigned_printer.clone(),
            plate: j.plate,
            message: j.message.clone(),
            created_by: j.created_by.clone(),
            can_move: j.state.is_pre_start(),
            can_move_up: j.state.is_pre_start(),
            can_move_down: j.state.is_pre_start(),
            can_cancel: matches!(
                j.state,
                JobState::Queued | JobState::Staged | JobState::Unconfirmed
            ),
            can_start_again: matches!(
                j.state,
                JobState::Unconfirmed | JobState::Failed | JobState::Expired
            ),
            duration: match j.state {
                JobState::Finished | JobState::Failed | JobState::Cancelled => j
                    .start
                    .as_ref()
                    .and_then(|s| s.published_at.or(s.publish_attempted_at))
                    .map(|from| j.updated_at.saturating_sub(from) / 60_000)
                    .map(|m| super::card::fmt_minutes(u32::try_from(m).ok())),
                _ => None,
            },
            filaments: None,
        }
    }
}

/// Jobs still in the queue or needing a person, in queue order.
pub fn queue_views(gw: &Gateway) -> Vec<JobView> {
    let state = gw.dispatcher.state();
    let mut jobs: Vec<&Job> = state.jobs.values().collect();
    jobs.sort_by_key(|j| (j.position, j.id));
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let mut needs = super::job_filaments::needs_of(gw, &ids);
    let mut views: Vec<JobView> = jobs
        .into_iter()
        .map(|j| JobView {
            filaments: needs.remove(&j.id),
            ..JobView::from_job(j)
        })
        .collect();
    offer_only_moves_that_move(&mut views);
    views
}

/// ↑ on the first waiting job and ↓ on the last would do nothing (the dispatcher reorders only
/// jobs waiting to start, `views` in queue order): offer neither.
fn offer_only_moves_that_move(views: &mut [JobView]) {
    let movable: Vec<usize> = (0..views.len()).filter(|&i| views[i].can_move).collect();
    if let (Some(&first), Some(&last)) = (movable.first(), movable.last()) {
        views[first].can_move_up = false;
        views[last].can_move_down = false;
    }
}

fn notices_text(notices: &[Notice]) -> String {
    notices
        .iter()
        .map(|n| n.message.as_str())
        .collect::<Vec<_>>()
        .join(" · ")
}

fn back_to_dashboard(outcome: FormOutcome) -> Response {
    form_answer::redirect("/", &outcome)
}

fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

fn printer_model(gw: &Gateway, name: &str) -> Option<Model> {
    gw.printers.iter().find(|p| p.name == name).map(|p| p.model)
}

// ---------------------------------------------------------------- upload

/// The fields of an upload, whatever order the client sent them in.
pub(super) struct UploadForm {
    pub(super) stored: Option<StoredFile>,
    pub(super) printer: Option<String>,
    pub(super) plate: u32,
    pub(super) idempotency_key: Option<String>,
    /// The job must start within this many minutes, else it expires (never starts later).
    pub(super) start_within_minutes: Option<f64>,
    /// The file name the client sent with the file part (unsanitised; never used as a path).
    pub(super) file_name: Option<String>,
    /// Other short text fields, by name (e.g. the OctoPrint API's `path`, `select`, `print`).
    pub(super) extra: Vec<(String, String)>,
}

/// At most this many other text fields of an upload are kept ([`UploadForm::extra`]).
const MAX_EXTRA_FIELDS: usize = 16;

/// Read every field of an upload. On any refusal the file it brought is released again (the
/// store is shared by content, so a file a job uses stays), and the answer says what was wrong.
pub(super) async fn read_upload(gw: &Gateway, mut mp: Multipart) -> Result<UploadForm, ApiError> {
    let mut form = UploadForm {
        stored: None,
        printer: None,
        plate: 1,
        idempotency_key: None,
        start_within_minutes: None,
        file_name: None,
        extra: Vec::new(),
    };
    match read_fields(gw, &mut mp, &mut form).await {
        Ok(()) => Ok(form),
        Err(e) => {
            if let Some(s) = form.stored.take() {
                let _ = gw.files.release(&s.sha256).await;
            }
            Err(e)
        }
    }
}

async fn read_fields(
    gw: &Gateway,
    mp: &mut Multipart,
    form: &mut UploadForm,
) -> Result<(), ApiError> {
    let limit = gw.files.limits().max_file_bytes;
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(file_error(FileError::TooLarge { limit }));
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "the upload was interrupted or malformed ({e}); nothing was stored — send it again"
                )));
            }
        };
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" => {
                if form.stored.is_some() {
                    drain(&mut field).await;
                    return Err(ApiError::bad_request(
                        "the upload has a second \"file\" field; send one file per upload — nothing was stored",
                    ));
                }
                let original = field.file_name().unwrap_or("upload").to_string();
                form.file_name = Some(original.clone());
                let chunks = (&mut field).map(|chunk| chunk.map_err(|e| stream_error(e, limit)));
                match gw.files.ingest_stream(&original, chunks).await {
                    Ok(stored) => form.stored = Some(stored),
                    Err(e) => {
                        if matches!(e, FileError::TooLarge { .. }) {
                            drain(&mut field).await;
                        }
                        return Err(file_error(e));
                    }
                }
            }
            "printer" => form.printer = Some(text(&name, &mut field).await?),
            "plate" => {
                let t = text(&name, &mut field).await?;
                form.plate = t.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "plate must be a number such as 1, not {t:?}; nothing was stored"
                    ))
                })?;
            }
            "idempotency_key" => form.idempotency_key = Some(text(&name, &mut field).await?),
            "start_within_minutes" => {
                let t = text(&name, &mut field).await?;
                let t = t.trim();
                if !t.is_empty() {
                    let minutes: f64 = t
                        .parse()
                        .ok()
                        .filter(|m: &f64| m.is_finite() && *m > 0.0)
                        .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "start_within_minutes must be a positive number of minutes, not {t:?}; nothing was stored"
                        ))
                    })?;
                    form.start_within_minutes = Some(minutes);
                }
            }
            _ if field.file_name().is_none() && form.extra.len() < MAX_EXTRA_FIELDS => {
                let value = text(&name, &mut field).await?;
                form.extra.push((name, value));
            }
            _ => {}
        }
    }
}

/// Why a file part's stream ended: the body limit (the file is too large) or the client.
fn stream_error(e: axum::extract::multipart::MultipartError, limit: u64) -> FileError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        FileError::TooLarge { limit }
    } else {
        FileError::UploadInterrupted {
            detail: e.body_text(),
        }
    }
}

/// Read and drop up to [`DRAIN_BYTES`] more of a refused part.
async fn drain(field: &mut axum::extract::multipart::Field<'_>) {
    let mut left = DRAIN_BYTES;
    while let Ok(Some(chunk)) = field.chunk().await {
        left = left.saturating_sub(chunk.len());
        if left == 0 {
            break;
        }
    }
}

/// A text field of at most [`MAX_TEXT_FIELD_BYTES`].
async fn text(
    name: &str,
    field: &mut axum::extract::multipart::Field<'_>,
) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    loop {
        match field.chunk().await {
            Ok(None) => break,
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_TEXT_FIELD_BYTES {
                    drain(field).await;
                    return Err(ApiError::bad_request(format!(
                        "the form field {name:?} is longer than {MAX_TEXT_FIELD_BYTES} bytes; nothing was stored"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "the form field {name:?} could not be read ({e}); nothing was stored — send it again"
                )));
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| {
        ApiError::bad_request(format!(
            "the form field {name:?} is not UTF-8 text; nothing was stored"
        ))
    })
}

fn file_error(e: FileError) -> ApiError {
    let status = match e {
        FileError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        FileError::DiskFull { .. } | FileError::Io { .. } | FileError::Database { .. } => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        FileError::UnsupportedExtension { .. } | FileError::BinaryGcode => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, "invalid_file", e.to_string())
}

/// Check the file against the target and create the job (idempotent on the key, I7).
pub(super) async fn queue_upload(
    gw: &Gateway,
    form: UploadForm,
    user: &str,
) -> Result<(Job, bool), ApiError> {
    let Some(stored) = form.stored else {
        return Err(ApiError::bad_request(
            "no file in the upload; send the sliced .gcode.3mf in the form field \"file\"",
        ));
    };
    let deadline = form
        .start_within_minutes
        .map(|m| gw.dispatcher.now().saturating_add((m * 60_000.0) as u64));
    let result = job_for_file(
        gw,
        &stored,
        &form.printer,
        form.plate,
        form.idempotency_key,
        user,
        deadline,
    );
    let outcome = match result {
        Ok(new) => gw
            .store
            .create_job_with_filaments(
                &new,
                super::job_filaments::recorded(&stored, new.plate).as_deref(),
                gw.dispatcher.now(),
            )
            .map_err(|e| ApiError::internal(format!("the job could not be saved: {e}"))),
        Err(e) => Err(e),
    };
    match outcome {
        Ok((job, created)) => {
            if created {
                gw.dispatcher
                    .submit(Event::JobQueued(Box::new(job.clone())))
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))?;
            } else {
                // The same request again (double submit, client retry): one job, one reference.
                let _ = gw.files.release(&stored.sha256).await;
            }
            Ok((job, created))
        }
        Err(e) => {
            let _ = gw.files.release(&stored.sha256).await;
            Err(e)
        }
    }
}

fn job_for_file(
    gw: &Gateway,
    stored: &StoredFile,
    printer: &Option<String>,
    plate: u32,
    key: Option<String>,
    user: &str,
    deadline: Option<crate::jobs::model::Millis>,
) -> Result<NewJob, ApiError> {
    if stored.kind == FileKind::Gcode {
        return gcode_job(gw, stored, printer, key, user, deadline);
    }
    let crate::jobs::threemf::FileInfo::ThreeMf(info) = &stored.info else {
        return Err(ApiError::bad_request("the file is not a sliced 3MF"));
    };
    let plate_info = info.plate(plate).ok_or_else(|| {
        let available: Vec<String> = info.plates.iter().map(|p| p.index.to_string()).collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_file",
            format!(
                "the file has no plate {plate}; sliced plates: {}",
                available.join(", ")
            ),
        )
    })?;
    let printer = printer
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "any");
    let (target, model_code) = match printer {
        Some(name) => {
            let model = printer_model(gw, name).ok_or_else(|| unknown_printer(name))?;
            threemf::check_model(info, plate, model).map_err(file_error)?;
            (
                Target::Printer(name.to_string()),
                model.model_code().to_string(),
            )
        }
        None => {
            let code = plate_info.model_code.clone().ok_or_else(|| {
                ApiError::bad_request(
                    "the file does not say which printer model it was sliced for; choose the printer",
                )
            })?;
            if !gw.printers.iter().any(|p| p.model.model_code() == code) {
                let sliced = Model::from_model_code(&code)
                    .map(|m| m.display_name().to_string())
                    .unwrap_or(code.clone());
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_file",
                    format!(
                        "the file was sliced for a {sliced}, and no configured printer is one; slice it for one of your printers"
                    ),
                ));
            }
            (Target::AnyCompatible, code)
        }
    };
    let name = crate::jobs::files::job_name_of(&stored.display_name).to_string();
    Ok(NewJob {
        idempotency_key: key.filter(|k| !k.trim().is_empty()).unwrap_or_else(new_id),
        target,
        model_code,
        file_sha256: stored.sha256.clone(),
        plate,
        name,
        deadline,
        created_by: user.to_string(),
    })
}

/// A plain G-code job: for Klipper printers only. G-code does not say reliably which machine it
/// was sliced for, so "any printer" is accepted only when exactly one Klipper printer exists.
fn gcode_job(
    gw: &Gateway,
    stored: &StoredFile,
    printer: &Option<String>,
    key: Option<String>,
    user: &str,
    deadline: Option<crate::jobs::model::Millis>,
) -> Result<NewJob, ApiError> {
    let klipper: Vec<&str> = gw
        .printers
        .iter()
        .filter(|p| p.model == Model::Klipper)
        .map(|p| p.name.as_str())
        .collect();
    let printer = printer
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "any");
    let target = match printer {
        Some(name) => match printer_model(gw, name) {
            None => return Err(unknown_printer(name)),
            Some(Model::Klipper) => Target::Printer(name.to_string()),
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_file",
                    format!(
                        "{name} is a Bambu printer: it prints sliced .gcode.3mf files, not plain .gcode — export the plate as .gcode.3mf from the slicer"
                    ),
                ));
            }
        },
        None => match klipper.as_slice() {
            [only] => Target::Printer((*only).to_string()),
            [] => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_file",
                    "plain .gcode is printed by Klipper printers and none is configured; Bambu printers need the sliced .gcode.3mf",
                ));
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "choose_printer",
                    format!(
                        "plain G-code does not say which printer it was sliced for; choose one of {}",
                        klipper.join(", ")
                    ),
                ));
            }
        },
    };
    Ok(NewJob {
        idempotency_key: key.filter(|k| !k.trim().is_empty()).unwrap_or_else(new_id),
        target,
        model_code: Model::Klipper.model_code().to_string(),
        file_sha256: stored.sha256.clone(),
        plate: 1,
        name: crate::jobs::files::job_name_of(&stored.display_name).to_string(),
        deadline,
        created_by: user.to_string(),
    })
}

#[derive(Template)]
#[template(path = "upload.html")]
struct UploadPage {
    printers: Vec<String>,
    idempotency_key: String,
    csrf: String,
}

async fn upload_page(State(gw): State<Arc<Gateway>>, user: CurrentUser) -> Response {
    render(&UploadPage {
        printers: gw.printers.iter().map(|p| p.name.clone()).collect(),
        idempotency_key: new_id(),
        csrf: user.csrf_token().to_string(),
    })
}

async fn upload_form(State(gw): State<Arc<Gateway>>, actor: Actor, mp: Multipart) -> Response {
    let result = match read_upload(&gw, mp).await {
        Ok(form) => queue_upload(&gw, form, &actor.0).await,
        Err(e) => Err(e),
    };
    back_to_dashboard(match result {
        Ok((job, true)) => FormOutcome::done(format!(
            "{} was added to the queue; it starts only after Plate clear is tapped",
            job.name
        )),
        Ok((job, false)) => FormOutcome::done(format!("{} was already queued", job.name)),
        Err(e) => e.into(),
    })
}

/// The multipart form of an upload (documentation only; the handler reads the fields in any
/// order).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadRequest {
    /// The sliced `.gcode.3mf` file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Printer name, or `any` (default) for any printer of the model the file was sliced for.
    printer: Option<String>,
    /// Plate number in the file (default 1).
    plate: Option<u32>,
    /// Repeating a request with the same key queues one job (also the `Idempotency-Key` header).
    idempotency_key: Option<String>,
    /// The job must start within this many minutes, else it expires and never starts.
    start_within_minutes: Option<f64>,
}

/// Upload a sliced file and queue it. It starts only after Plate clear is tapped.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body(content = UploadRequest, content_type = "multipart/form-data"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key, same job (retries are safe)")),
    responses(
        (status = 201, description = "Queued", body = JobView),
        (status = 200, description = "Already queued with this idempotency key", body = JobView),
        (status = 400, description = "Malformed upload", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown printer", body = super::openapi::ErrorBody),
        (status = 413, description = "File larger than the upload limit (`web.max_upload_mb`, named in the message)", body = super::openapi::ErrorBody),
        (status = 415, description = "Not a sliced .gcode.3mf", body = super::openapi::ErrorBody),
        (status = 422, description = "File does not fit the printer or plate", body = super::openapi::ErrorBody),
        (status = 507, description = "Disk full", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_upload(
    State(gw): State<Arc<Gateway>>,
    actor: Actor,
    headers: HeaderMap,
    mp: Multipart,
) -> Result<Response, ApiError> {
    let mut form = read_upload(&gw, mp).await?;
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        form.idempotency_key = Some(key.to_string());
    }
    let (job, created) = queue_upload(&gw, form, &actor.0).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let view = JobView {
        filaments: super::job_filaments::needs_of(&gw, &[job.id]).remove(&job.id),
        ..JobView::from_job(&job)
    };
    Ok((status, Json(view)).into_response())
}

/// Jobs still in the queue or needing a person, in queue order.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    responses((status = 200, description = "The queue", body = [JobView]))
)]
pub(crate) async fn api_jobs(State(gw): State<Arc<Gateway>>) -> Json<Vec<JobView>> {
    Json(queue_views(&gw))
}

// ---------------------------------------------------------------- plate clear

#[derive(Template)]
#[template(path = "plate_clear.html")]
struct PlateClearPage {
    printer: String,
    tap_id: String,
    csrf: String,
    /// The camera's picture when the page opened, or why there is none.
    picture: Result<super::camera::PlatePicture, String>,
}

async fn plate_clear_page(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Path(name): Path<String>,
) -> Response {
    if printer_model(&gw, &name).is_none() {
        return (
            StatusCode::NOT_FOUND,
            format!("there is no printer called {name:?}"),
        )
            .into_response();
    }
    // Bounded (web::camera::CONFIRMATION_WAIT); without a picture the page says why and the
    // confirmation works the same: the camera never blocks or replaces the person's tap.
    let picture = super::camera::confirmation_picture(&gw, &name).await;
    render(&PlateClearPage {
        printer: name,
        tap_id: new_id(),
        csrf: user.csrf_token().to_string(),
        picture,
    })
}

#[derive(Deserialize)]
struct TapForm {
    tap_id: Option<String>,
    confirm: Option<String>,
}

async fn tap(
    gw: &Gateway,
    printer: &str,
    user: &str,
    tap_id: Option<String>,
) -> Result<Vec<Notice>, ApiError> {
    if printer_model(gw, printer).is_none() {
        return Err(unknown_printer(printer));
    }
    let tap_id = tap_id
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(new_id);
    gw.dispatcher
        .submit(Event::Tap {
            printer: printer.to_string(),
            user: user.to_string(),
            tap_id,
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

async fn plate_clear_form(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    actor: Actor,
    headers: HeaderMap,
    axum::Form(form): axum::Form<TapForm>,
) -> Response {
    let outcome = if form.confirm.as_deref() != Some("yes") {
        FormOutcome::refused(
            StatusCode::BAD_REQUEST,
            "Plate clear was not confirmed; nothing changed",
        )
    } else {
        match tap(&gw, &name, &actor.0, form.tap_id).await {
            Ok(notices) if notices.is_empty() => {
                FormOutcome::done(format!("Plate of {name} marked clear by {}", actor.0))
            }
            // A refused tap's notice says "… not accepted: <why>".
            Ok(notices) if notices.iter().any(|n| n.message.contains("not accepted")) => {
                FormOutcome::refused(StatusCode::CONFLICT, notices_text(&notices))
            }
            Ok(notices) => FormOutcome::done(notices_text(&notices)),
            Err(e) => e.into(),
        }
    };
    form_answer::answer(&headers, "/", outcome)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct ApiTap {
    /// Sending the same tap id again (a retry) counts as one tap.
    tap_id: Option<String>,
}

/// What an action did: the dispatcher's notices and, for a tap, the plate's new state.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ApiOutcome {
    notices: Vec<String>,
    /// `clear`, `occupied` or `unknown` (plate-clear only).
    plate: Option<String>,
}

/// Tap "plate clear": the person confirms the printer's plate is empty; the next queued job for
/// it may start.
#[utoipa::path(
    post,
    path = "/api/v1/printers/{name}/plate-clear",
    tag = "printers",
    params(("name" = String, Path, description = "Printer name")),
    request_body(content = Option<ApiTap>, content_type = "application/json"),
    responses(
        (status = 200, description = "Tap recorded", body = ApiOutcome),
        (status = 404, description = "Unknown printer", body = super::openapi::ErrorBody),
        (status = 503, description = "Dispatcher not running", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_plate_clear(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    actor: Actor,
    body: Option<Json<ApiTap>>,
) -> Result<Json<ApiOutcome>, ApiError> {
    let tap_id = body.and_then(|b| b.0.tap_id);
    let notices = tap(&gw, &name, &actor.0, tap_id).await?;
    let plate = gw
        .dispatcher
        .state()
        .printers
        .get(&name)
        .map(|p| p.plate.as_str().to_string());
    Ok(Json(ApiOutcome {
        notices: notices.into_iter().map(|n| n.message).collect(),
        plate,
    }))
}

// ---------------------------------------------------------------- job and queue actions

/// The job with this id, or a 404 that names the id.
fn existing_job(gw: &Gateway, id: JobId) -> Result<Job, ApiError> {
    gw.store
        .job(id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_job",
                format!("there is no job {id}; it may have been removed — reload the page"),
            )
        })
}

/// A 404 that names the printer.
fn unknown_printer(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_printer",
        format!("there is no printer called {name:?}"),
    )
}

async fn job_action(
    gw: &Gateway,
    id: JobId,
    action: &str,
    user: &str,
) -> Result<Vec<Notice>, ApiError> {
    let event = match action {
        "cancel" => {
            existing_job(gw, id)?;
            Event::Cancel {
                job: id,
                user: user.to_string(),
            }
        }
        "up" | "down" => {
            existing_job(gw, id)?;
            Event::Move {
                job: id,
                direction: if action == "up" {
                    MoveDirection::Up
                } else {
                    MoveDirection::Down
                },
            }
        }
        "start-again" => {
            let job = existing_job(gw, id)?;
            let new_subtask_id = gw
                .store
                .allocate_subtask_id(gw.dispatcher.now())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Event::StartAgain {
                job: Box::new(job),
                user: user.to_string(),
                new_subtask_id,
            }
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_action",
                format!("unknown job action {other:?}; use cancel, up, down or start-again"),
            ));
        }
    };
    gw.dispatcher
        .submit(event)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// A job as the dispatcher holds it, to tell what an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JobNow {
    name: String,
    state: JobState,
    position: i64,
}

fn job_now(gw: &Gateway, id: JobId) -> Option<JobNow> {
    gw.dispatcher.state().jobs.get(&id).map(|j| JobNow {
        name: j.name.clone(),
        state: j.state,
        position: j.position,
    })
}

/// What a job action came to, from the job before and after it and the dispatcher's notices
/// (which say why when it refused): never an empty answer.
fn job_outcome(
    id: JobId,
    action: &str,
    before: Option<&JobNow>,
    after: Option<&JobNow>,
    notices: String,
) -> FormOutcome {
    let Some(before) = before else {
        return FormOutcome::refused(
            StatusCode::NOT_FOUND,
            format!("job {id} is not in the queue any more (it ended or was removed)"),
        );
    };
    let name = &before.name;
    let or = |fallback: String| {
        if notices.is_empty() {
            fallback
        } else {
            notices.clone()
        }
    };
    let refused = |why: String| FormOutcome::refused(StatusCode::CONFLICT, or(why));
    let now = after.map(|a| a.state).unwrap_or(JobState::Cancelled);
    match action {
        "cancel" if now == JobState::Cancelled => {
            FormOutcome::done(or(format!("{name:?} was cancelled")))
        }
        "cancel" => refused(format!(
            "{name:?} was not cancelled: it is {}",
            now.as_str()
        )),
        "up" | "down" => {
            let moved = after.is_some_and(|a| a.position != before.position);
            let (dir, end) = if action == "up" {
                ("up", "first")
            } else {
                ("down", "last")
            };
            if moved {
                FormOutcome::done(or(format!("{name:?} moved {dir}")))
            } else if !before.state.is_pre_start() || !now.is_pre_start() {
                refused(format!(
                    "{name:?} is {}: only jobs that wait can be moved",
                    now.as_str()
                ))
            } else {
                refused(format!(
                    "{name:?} is already {end} in the queue; nothing moved"
                ))
            }
        }
        "start-again" if now.is_pre_start() && !before.state.is_pre_start() => {
            FormOutcome::done(or(format!(
                "{name:?} is queued again; it starts after a new Plate clear tap"
            )))
        }
        "start-again" => refused(format!(
            "{name:?} was not started again: it is {}",
            now.as_str()
        )),
        _ => FormOutcome::done(or(format!("{action} done for {name:?}"))),
    }
}

async fn job_action_form(
    State(gw): State<Arc<Gateway>>,
    Path((id, action)): Path<(JobId, String)>,
    actor: Actor,
    headers: HeaderMap,
) -> Response {
    let before = job_now(&gw, id);
    let outcome = match job_action(&gw, id, &action, &actor.0).await {
        Ok(n) => job_outcome(
            id,
            &action,
            before.as_ref(),
            job_now(&gw, id).as_ref(),
            notices_text(&n),
        ),
        Err(e) => e.into(),
    };
    form_answer::answer(&headers, "/", outcome)
}

/// Act on a job: `cancel`, `up`, `down` (queue order) or `start-again` (needs a new tap).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/{action}",
    tag = "jobs",
    params(
        ("id" = i64, Path, description = "Job id"),
        ("action" = String, Path, description = "`cancel`, `up`, `down` or `start-again`"),
    ),
    responses(
        (status = 200, description = "Done", body = ApiOutcome),
        (status = 404, description = "No job with that id, or unknown action", body = super::openapi::ErrorBody),
        (status = 503, description = "Dispatcher not running", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_job_action(
    State(gw): State<Arc<Gateway>>,
    Path((id, action)): Path<(JobId, String)>,
    actor: Actor,
) -> Result<Json<ApiOutcome>, ApiError> {
    let notices = job_action(&gw, id, &action, &actor.0).await?;
    let plate = None;
    Ok(Json(ApiOutcome {
        notices: notices.into_iter().map(|n| n.message).collect(),
        plate,
    }))
}

#[derive(Deserialize, Default)]
pub(crate) struct QueueQuery {
    printer: Option<String>,
}

async fn queue_action(
    gw: &Gateway,
    action: &str,
    printer: Option<String>,
) -> Result<Vec<Notice>, ApiError> {
    let printer = printer.filter(|p| !p.is_empty());
    if let Some(name) = &printer
        && printer_model(gw, name).is_none()
    {
        return Err(unknown_printer(name));
    }
    let event = match action {
        "pause" => Event::PauseQueue { printer },
        "resume" => Event::ResumeQueue { printer },
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_action",
                format!("unknown queue action {other:?}; use pause or resume"),
            ));
        }
    };
    gw.dispatcher
        .submit(event)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

async fn queue_action_form(
    State(gw): State<Arc<Gateway>>,
    Path(action): Path<String>,
    Query(q): Query<QueueQuery>,
    headers: HeaderMap,
) -> Response {
    let printer = q.printer.clone().filter(|p| !p.is_empty());
    let outcome = match printer.as_deref() {
        Some(p) if printer_model(&gw, p).is_none() => FormOutcome::refused(
            StatusCode::NOT_FOUND,
            format!("there is no printer called {p:?}"),
        ),
        _ => match queue_action(&gw, &action, q.printer).await {
            Ok(n) if n.is_empty() => {
                let whose = match &printer {
                    Some(p) => format!("the queue of {p}"),
                    None => "the whole queue".to_string(),
                };
                FormOutcome::done(match action.as_str() {
                    "pause" => format!(
                        "{whose} is paused: nothing new starts there until it is resumed (a print in progress goes on)"
                    ),
                    _ => format!("{whose} is resumed"),
                })
            }
            Ok(n) => FormOutcome::done(notices_text(&n)),
            Err(e) => e.into(),
        },
    };
    form_answer::answer(&headers, "/", outcome)
}

/// Pause or resume the whole queue, or one printer's queue (`?printer=`).
#[utoipa::path(
    post,
    path = "/api/v1/queue/{action}",
    tag = "jobs",
    params(
        ("action" = String, Path, description = "`pause` or `resume`"),
        ("printer" = Option<String>, Query, description = "Only this printer's queue"),
    ),
    responses(
        (status = 200, description = "Done", body = ApiOutcome),
        (status = 404, description = "Unknown action, or no printer of that name (`?printer=`)", body = super::openapi::ErrorBody),
        (status = 503, description = "Dispatcher not running", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_queue_action(
    State(gw): State<Arc<Gateway>>,
    Path(action): Path<String>,
    Query(q): Query<QueueQuery>,
) -> Result<Json<ApiOutcome>, ApiError> {
    let notices = queue_action(&gw, &action, q.printer).await?;
    Ok(Json(ApiOutcome {
        notices: notices.into_iter().map(|n| n.message).collect(),
        plate: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, position: i64) -> JobNow {
        JobNow {
            name: "benchy".into(),
            state,
            position,
        }
    }

    #[test]
    fn the_first_waiting_job_has_no_up_and_the_last_no_down() {
        let view = |id, movable| JobView {
            id,
            name: format!("job {id}"),
            state: String::new(),
            target: String::new(),
            printer: None,
            plate: 1,
            message: None,
            created_by: String::new(),
            can_move: movable,
            can_move_up: movable,
            can_move_down: movable,
            can_cancel: false,
            can_start_again: false,
            duration: None,
            filaments: None,
        };
        // A printing job first (not movable), then three waiting ones.
        let mut v = vec![view(1, false), view(2, true), view(3, true), view(4, true)];
        offer_only_moves_that_move(&mut v);
        let moves: Vec<(bool, bool)> = v.iter().map(|j| (j.can_move_up, j.can_move_down)).collect();
        assert_eq!(
            moves,
            [(false, false), (false, true), (true, true), (true, false)]
        );
        let mut one = vec![view(5, true)];
        offer_only_moves_that_move(&mut one);
        assert!(!one[0].can_move_up && !one[0].can_move_down);
        offer_only_moves_that_move(&mut []);
    }

    #[test]
    fn every_job_action_says_what_it_did_or_why_not() {
        let queued = job(JobState::Queued, 1);
        let moved = job(JobState::Queued, 2);
        let o = job_outcome(7, "down", Some(&queued), Some(&moved), String::new());
        assert_eq!(o, FormOutcome::done("\"benchy\" moved down"));
        let o = job_outcome(7, "up", Some(&queued), Some(&queued), String::new());
        assert!(!o.done && o.message.contains("already first"), "{o:?}");
        let printing = job(JobState::Printing, 1);
        let o = job_outcome(7, "up", Some(&printing), Some(&printing), String::new());
        assert!(!o.done && o.message.contains("is printing"), "{o:?}");
        // Cancel: gone from the queue means done; the dispatcher's refusal is the reason.
        assert!(job_outcome(7, "cancel", Some(&queued), None, String::new()).done);
        let why = "job \"benchy\" was not cancelled: it is printing".to_string();
        let o = job_outcome(7, "cancel", Some(&printing), Some(&printing), why.clone());
        assert_eq!(o, FormOutcome::refused(StatusCode::CONFLICT, why));
        let o = job_outcome(7, "cancel", None, None, String::new());
        assert_eq!(o.status, StatusCode::NOT_FOUND);
        assert!(!o.message.is_empty());
        let failed = job(JobState::Failed, 1);
        assert!(
            job_outcome(
                7,
                "start-again",
                Some(&failed),
                Some(&queued),
                String::new()
            )
            .done
        );
        assert!(
            !job_outcome(
                7,
                "start-again",
                Some(&failed),
                Some(&failed),
                String::new()
            )
            .done
        );
    }
}
