//! Uploads to the queue: the upload page and its form, the JSON API's upload, and the checks
//! every upload passes (the file's kind and size, the plate, the model it was sliced for against
//! the printer chosen) before a job is created (idempotent on its key, I7). A refused upload
//! stores nothing and says what was wrong.

use super::actor::Actor;
use super::auth::CurrentUser;
use super::form_answer::FormOutcome;
use super::queue::{JobView, back_to_dashboard, new_id, printer_model, unknown_printer};
use super::{ApiError, render};
use crate::app::Gateway;
use crate::jobs::dispatcher::Event;
use crate::jobs::files::StoredFile;
use crate::jobs::model::{Job, NewJob, Target};
use crate::jobs::threemf::{self, FileError, FileKind};
use crate::printer::Model;
use askama::Template;
use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
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
pub(crate) fn upload_body_limit(max_file: u64) -> DefaultBodyLimit {
    let bytes = max_file.saturating_add(FORM_OVERHEAD_BYTES);
    DefaultBodyLimit::max(usize::try_from(bytes).unwrap_or(usize::MAX))
}

/// The fields of an upload, whatever order the client sent them in.
pub(super) struct UploadForm {
    pub(super) stored: Option<StoredFile>,
    pub(super) printer: Option<String>,
    pub(super) plate: u32,
    pub(super) idempotency_key: Option<String>,
    /// The job must start within this many minutes, else it expires (never starts later).
    pub(super) start_within_minutes: Option<f64>,
    /// How many jobs of this file to queue (1 to [`MAX_COPIES`]); each needs its own Plate clear.
    pub(super) copies: u32,
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
        copies: 1,
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
            "copies" => {
                let t = text(&name, &mut field).await?;
                form.copies = t
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_COPIES).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "copies must be a whole number from 1 to {MAX_COPIES}, not {t:?}; nothing was stored"
                        ))
                    })?;
            }
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
    let new = match job_for_file(
        gw,
        &stored,
        &form.printer,
        form.plate,
        form.idempotency_key,
        user,
        deadline,
    ) {
        Ok(new) => new,
        Err(e) => {
            let _ = gw.files.release(&stored.sha256).await;
            return Err(e);
        }
    };
    let filaments = super::job_filaments::recorded(&stored, new.plate);
    let copies = form.copies.clamp(1, MAX_COPIES);
    let mut first: Option<Job> = None;
    let mut any_created = false;
    for copy in 1..=copies {
        // The upload brought one reference to the file, for the first copy; each further copy
        // takes its own, so that every job holds the file until it ends.
        let mut this = new.clone();
        if copy > 1 {
            this.idempotency_key = copy_key(&new.idempotency_key, copy);
            if let Err(e) = gw.files.acquire(&stored.sha256).await {
                return Err(partly_queued(file_error(e), copy - 1, copies));
            }
        }
        let saved =
            gw.store
                .create_job_with_filaments(&this, filaments.as_deref(), gw.dispatcher.now());
        let (job, created) = match saved {
            Ok(saved) => saved,
            Err(e) => {
                let _ = gw.files.release(&stored.sha256).await;
                let e = ApiError::internal(format!("the job could not be saved: {e}"));
                return Err(partly_queued(e, copy - 1, copies));
            }
        };
        if created {
            gw.dispatcher
                .submit(Event::JobQueued(Box::new(job.clone())))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
        } else {
            // The same request again (double submit, client retry): one job, one reference.
            let _ = gw.files.release(&stored.sha256).await;
        }
        any_created |= created;
        first.get_or_insert(job);
    }
    first
        .map(|job| (job, any_created))
        .ok_or_else(|| ApiError::internal("no copy was queued"))
}

/// Most copies one upload may queue.
pub(crate) const MAX_COPIES: u32 = 20;

/// The idempotency key of copy `copy` (2, 3, …) of an upload whose first job has `key`: the same
/// form sent again finds every copy it made, and a resend after a partial failure adds only the
/// missing ones.
fn copy_key(key: &str, copy: u32) -> String {
    format!("{key}#copy-{copy}")
}

/// `e`, saying how many of the copies were queued before it when some were.
fn partly_queued(mut e: ApiError, queued: u32, copies: u32) -> ApiError {
    if queued > 0 {
        e.message.push_str(&format!(
            "; {queued} of the {copies} copies were queued — send the same form again to queue the rest (the queued ones are not repeated)"
        ));
    }
    e
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
            let fits = fits_text(&fitting_printers(gw, stored, plate));
            if model == Model::Klipper {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_file",
                    format!(
                        "{name} is a Klipper printer: it prints plain .gcode, not a sliced .gcode.3mf — export plain G-code for it from the slicer{fits}"
                    ),
                ));
            }
            threemf::check_model(info, plate, model).map_err(|e| {
                let mut e = file_error(e);
                e.message.push_str(&fits);
                e
            })?;
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
                let fits = fits_text(&fitting_printers(gw, stored, 1));
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_file",
                    format!(
                        "{name} is a Bambu printer: it prints sliced .gcode.3mf files, not plain .gcode — export the plate as .gcode.3mf from the slicer{fits}"
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

/// The printers a stored file fits, in configuration order: for a sliced 3MF those of the model
/// its `plate` was sliced for, for plain G-code the Klipper printers.
fn fitting_printers(gw: &Gateway, stored: &StoredFile, plate: u32) -> Vec<String> {
    let fits = |model: Model| match &stored.info {
        _ if stored.kind == FileKind::Gcode => model == Model::Klipper,
        crate::jobs::threemf::FileInfo::ThreeMf(info) => info
            .plate(plate)
            .and_then(|p| p.model_code.as_deref())
            .is_some_and(|code| model != Model::Klipper && model.model_code() == code),
        _ => false,
    };
    gw.printers
        .iter()
        .filter(|p| fits(p.model))
        .map(|p| p.name.clone())
        .collect()
}

/// The end of a refusal naming the printers the file fits, if any.
fn fits_text(fitting: &[String]) -> String {
    match fitting {
        [] => String::new(),
        [only] => format!(" — or choose {only}, which this file fits"),
        many => format!(
            " — or choose one of {}, which this file fits",
            many.join(", ")
        ),
    }
}

/// The upload form, empty or as it was sent when the upload was refused.
#[derive(Template)]
#[template(path = "upload.html")]
struct UploadPage {
    printers: Vec<String>,
    /// The printer choice to show selected: a printer's name or `any`.
    selected: String,
    plate: u32,
    /// The "must start within" minutes as entered (empty: no limit).
    start_within: String,
    copies: u32,
    max_copies: u32,
    idempotency_key: String,
    csrf: String,
    /// Why the upload was refused, shown on the form.
    error: Option<String>,
}

impl UploadPage {
    fn empty(gw: &Gateway, user: &CurrentUser) -> Self {
        UploadPage {
            printers: gw.printers.iter().map(|p| p.name.clone()).collect(),
            selected: "any".into(),
            plate: 1,
            start_within: String::new(),
            copies: 1,
            max_copies: MAX_COPIES,
            idempotency_key: new_id(),
            csrf: user.csrf_token().to_string(),
            error: None,
        }
    }
}

pub(super) async fn upload_page(State(gw): State<Arc<Gateway>>, user: CurrentUser) -> Response {
    render(&UploadPage::empty(&gw, &user))
}

/// The upload form's post: queued → back to the dashboard with the notice; refused → the form
/// again with the refusal on it, what was entered kept and the printer the file fits selected
/// (the page's script shows the same refusal without leaving the page, so the chosen file stays).
pub(super) async fn upload_form(
    State(gw): State<Arc<Gateway>>,
    actor: Actor,
    user: CurrentUser,
    mp: Multipart,
) -> Response {
    let form = match read_upload(&gw, mp).await {
        Ok(form) => form,
        Err(e) => return refused_form(UploadPage::empty(&gw, &user), e),
    };
    let mut page = UploadPage::empty(&gw, &user);
    let chosen = form
        .printer
        .as_deref()
        .map(str::trim)
        .filter(|p| gw.printers.iter().any(|c| c.name == *p));
    page.selected = chosen.unwrap_or("any").to_string();
    page.plate = form.plate;
    page.start_within = form
        .start_within_minutes
        .map(|m| m.to_string())
        .unwrap_or_default();
    if let Some(key) = form
        .idempotency_key
        .as_deref()
        .filter(|k| !k.trim().is_empty())
    {
        page.idempotency_key = key.to_string();
    }
    let fitting = form
        .stored
        .as_ref()
        .map(|s| fitting_printers(&gw, s, form.plate))
        .unwrap_or_default();
    page.copies = form.copies;
    let copies = form.copies;
    match queue_upload(&gw, form, &actor.0).await {
        Ok((job, true)) if copies > 1 => back_to_dashboard(FormOutcome::done(format!(
            "{copies} copies of {} were added to the queue; each starts only after its own Plate clear tap",
            job.name
        ))),
        Ok((job, true)) => back_to_dashboard(FormOutcome::done(format!(
            "{} was added to the queue; it starts only after Plate clear is tapped",
            job.name
        ))),
        Ok((job, false)) => back_to_dashboard(FormOutcome::done(format!(
            "{} was already queued",
            job.name
        ))),
        Err(e) => {
            if !fitting.contains(&page.selected) {
                page.selected = match fitting.as_slice() {
                    [only] => only.clone(),
                    _ => "any".into(),
                };
            }
            refused_form(page, e)
        }
    }
}

/// The upload page carrying the refusal `e`, with the refusal's status.
fn refused_form(mut page: UploadPage, e: ApiError) -> Response {
    let status = e.status;
    page.error = Some(e.message);
    let mut response = render(&page);
    if response.status().is_success() {
        *response.status_mut() = status;
    }
    response
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
    /// Queue this many jobs of the file (1 to 20, default 1), each waiting for its own Plate
    /// clear tap. The answer is the first job; all of them are in `GET /api/v1/jobs`. A resend
    /// with the same idempotency key adds none.
    copies: Option<u32>,
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
