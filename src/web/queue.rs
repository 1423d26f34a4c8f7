//! The queue and the plate-clear gate on the web (uploads: [`super::upload`]): tap "plate clear"
//! (behind a confirmation page), cancel, move, start again, pause/resume. Every
//! action goes to the dispatcher as an event; nothing here starts a print by itself. Forms work
//! without JavaScript (post, then redirect back with a notice); the same actions are available
//! as JSON under `/api/v1/`.

use super::actor::Actor;
use super::auth::CurrentUser;
use super::form_answer::{self, FormOutcome};
use super::upload::{api_upload, upload_body_limit, upload_form, upload_page};
use super::{ApiError, render};
use crate::app::Gateway;
use crate::jobs::dispatcher::{Event, MoveDirection};
use crate::jobs::model::{Job, JobId, JobState, Target};
use crate::jobs::runner::Notice;
use crate::printer::Model;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    /// Which trays its start uses: committed with the start, or what the printer's loaded
    /// trays would give now (or what to load where); `None` = no filament list known.
    pub trays: Option<super::job_filaments::TrayPlanView>,
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
            trays: None,
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
            trays: super::job_filaments::tray_plan(&state, j),
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

pub(super) fn back_to_dashboard(outcome: FormOutcome) -> Response {
    form_answer::redirect("/", &outcome)
}

pub(super) fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

pub(super) fn printer_model(gw: &Gateway, name: &str) -> Option<Model> {
    gw.printers.iter().find(|p| p.name == name).map(|p| p.model)
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
    /// The job that would start next here and the trays it would use (or what to load).
    next: Option<(String, Option<super::job_filaments::TrayPlanView>)>,
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
    let tap_id = new_id();
    let picture = super::camera::confirmation_picture(&gw, &name, &tap_id).await;
    let next = super::job_filaments::next_on(&gw.dispatcher.state(), &name);
    render(&PlateClearPage {
        printer: name,
        tap_id,
        csrf: user.csrf_token().to_string(),
        picture,
        next,
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
        // The picture this confirmation showed goes into history with the tap (if any).
        if let Some(t) = form.tap_id.as_deref().filter(|t| !t.trim().is_empty()) {
            super::plate_pictures::keep_confirmed_picture(&gw, &name, t).await;
        }
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
pub(super) fn unknown_printer(name: &str) -> ApiError {
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
            trays: None,
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
