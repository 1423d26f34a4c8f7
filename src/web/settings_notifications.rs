//! Settings → Notifications: where alerts go. Lists the targets of `[alerts]` in printgate.toml
//! and the ones added on this page (stored in SQLite, handed to the notifier, which uses both),
//! adds and deletes stored ntfy/webhook targets, and sends a test notification to one target,
//! showing the exact error when it fails. Secrets (topic paths, webhook ids, ntfy tokens) are
//! never shown back: only scheme, host and port. JSON equivalents under `/api/v1/alert-targets`.

use super::auth::CurrentUser;
use super::{ApiError, render};
use crate::alerts::{
    AlertTarget, Delivery, Notifier, StoredTarget, TargetRef, TargetSummary, url_problem,
};
use crate::app::Gateway;
use crate::store::StoreError;
use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest name of a target.
const MAX_NAME_CHARS: usize = 64;
/// Longest ntfy access token accepted.
const MAX_TOKEN_LEN: usize = 256;

/// The routes of this page and its API. Also hands the stored targets to the notifier, so
/// alerts reach them from the start.
pub fn routes(gw: &Arc<Gateway>) -> Router<Arc<Gateway>> {
    if let Err(e) = reload(gw) {
        tracing::error!("alert targets added in Settings are not used: {e}");
    }
    Router::new()
        .route("/settings/notifications", get(page).post(add_form))
        .route("/settings/notifications/{id}/delete", post(delete_form))
        .route("/settings/notifications/{id}/test", post(test_form))
        .route("/api/v1/alert-targets", get(api_list).post(api_add))
        .route("/api/v1/alert-targets/{id}", delete(api_delete))
        .route("/api/v1/alert-targets/{id}/test", post(api_test))
}

fn notifier(gw: &Gateway) -> Option<&Arc<Notifier>> {
    gw.safety.as_ref().map(|h| h.notifier())
}

/// Give the notifier the stored targets (after start, an add and a delete).
fn reload(gw: &Gateway) -> Result<(), StoreError> {
    let rows = gw.store.list_alert_targets()?;
    if let Some(n) = notifier(gw) {
        n.set_stored_targets(rows.into_iter().map(StoredTarget::from).collect());
    }
    Ok(())
}

/// Every target as shown: configured ones from the notifier, stored ones from the database (so
/// they are listed even when alerts are not running).
fn summaries(gw: &Gateway) -> Result<Vec<TargetSummary>, StoreError> {
    let mut out: Vec<TargetSummary> = match notifier(gw) {
        Some(n) => n
            .targets()
            .into_iter()
            .filter(|t| matches!(t.target_ref, TargetRef::Config(_)))
            .collect(),
        None => Vec::new(),
    };
    out.extend(
        gw.store
            .list_alert_targets()?
            .into_iter()
            .map(|r| TargetSummary {
                target_ref: TargetRef::Stored(r.id),
                name: Some(r.name),
                kind: r.target.kind_name(),
                label: r.target.label(),
                has_token: matches!(r.target, AlertTarget::Ntfy { token: Some(_), .. }),
            }),
    );
    Ok(out)
}

/// A notification target as the API shows it (never its URL path, query or token).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiAlertTarget {
    /// `config-<n>` for targets of printgate.toml, a number for targets added in Settings.
    pub id: String,
    pub name: String,
    /// `ntfy`, `webhook` or `buzzer`.
    pub kind: String,
    /// Scheme, host and port only, e.g. `ntfy https://ntfy.sh/…`.
    pub label: String,
    /// An ntfy access token is set (it is never shown).
    pub has_token: bool,
    /// From `[alerts]` in printgate.toml (cannot be deleted here).
    pub from_config: bool,
}

impl From<TargetSummary> for ApiAlertTarget {
    fn from(t: TargetSummary) -> ApiAlertTarget {
        let from_config = matches!(t.target_ref, TargetRef::Config(_));
        ApiAlertTarget {
            id: t.target_ref.to_string(),
            name: t.name.unwrap_or_else(|| match t.target_ref {
                TargetRef::Config(i) => format!("printgate.toml target {}", i + 1),
                TargetRef::Stored(id) => format!("target {id}"),
            }),
            kind: t.kind.to_string(),
            label: t.label,
            has_token: t.has_token,
            from_config,
        }
    }
}

/// A target to add.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAlertTarget {
    /// What to call it ("My phone", "Home Assistant"), 1–64 characters.
    pub name: String,
    /// `ntfy` or `webhook`.
    pub kind: String,
    /// The ntfy topic URL (`https://ntfy.sh/<topic>`) or the webhook URL.
    pub url: String,
    /// ntfy only: access token of a protected topic.
    #[serde(default)]
    pub token: Option<String>,
}

/// The outcome of a test notification.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiTestResult {
    pub id: String,
    pub label: String,
    pub delivered: bool,
    /// What went wrong, when not delivered.
    pub error: Option<String>,
}

impl From<Delivery> for ApiTestResult {
    fn from(d: Delivery) -> ApiTestResult {
        ApiTestResult {
            id: d.target_id,
            label: d.label,
            delivered: d.error.is_none(),
            error: d.error,
        }
    }
}

/// Check a new target; the error says what to fix (and never repeats the URL or token).
fn parse_new(t: &NewAlertTarget) -> Result<(String, AlertTarget), String> {
    let name = t.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "Give the target a name of 1 to {MAX_NAME_CHARS} characters (e.g. \"My phone\")."
        ));
    }
    let url = t.url.trim();
    if let Some(p) = url_problem(url) {
        return Err(format!("The URL cannot be used: {p}."));
    }
    let token = t.token.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(tok) = token
        && (tok.len() > MAX_TOKEN_LEN || !tok.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err(format!(
            "The access token must be up to {MAX_TOKEN_LEN} printable ASCII characters without spaces (ntfy tokens look like tk_…)."
        ));
    }
    let target = match t.kind.trim() {
        "ntfy" => AlertTarget::Ntfy {
            url: url.to_string(),
            token: token.map(str::to_string),
        },
        "webhook" if token.is_some() => {
            return Err(
                "An access token is only used for ntfy; leave it empty for a webhook.".into(),
            );
        }
        "webhook" => AlertTarget::Webhook {
            url: url.to_string(),
        },
        _ => {
            return Err(
                "Choose the kind \"ntfy\" or \"webhook\" (a buzzer is set up in printgate.toml)."
                    .into(),
            );
        }
    };
    if url.starts_with("https")
        && let Err(e) = crate::alerts::check_http_ready()
    {
        return Err(e.to_string());
    }
    Ok((name.to_string(), target))
}

/// Why an add, delete or test failed.
enum Failure {
    Invalid(String),
    NotFound,
    NotRunning,
    Store(StoreError),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::Invalid(_) => StatusCode::BAD_REQUEST,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::NotRunning => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn message(&self) -> String {
        match self {
            Failure::Invalid(m) => m.clone(),
            Failure::NotFound => "No such notification target added in Settings (targets of printgate.toml are changed there).".into(),
            Failure::NotRunning => "Alerts are not running in this gateway (the safety room is off); nothing was sent.".into(),
            Failure::Store(e) => {
                tracing::error!("alert targets: {e}");
                "The gateway's database could not be used; see the gateway's log.".into()
            }
        }
    }
    fn api(self) -> ApiError {
        let (status, code) = match &self {
            Failure::Invalid(_) => (self.status(), "bad_request"),
            Failure::NotFound => (self.status(), "unknown_target"),
            Failure::NotRunning => (self.status(), "unavailable"),
            Failure::Store(_) => (self.status(), "internal"),
        };
        ApiError::new(status, code, self.message())
    }
}

fn add(gw: &Gateway, user: &CurrentUser, new: &NewAlertTarget) -> Result<i64, Failure> {
    let (name, target) = parse_new(new).map_err(Failure::Invalid)?;
    let id = gw
        .store
        .insert_alert_target(&name, &target, &user.username, crate::store::now_ms())
        .map_err(Failure::Store)?;
    reload(gw).map_err(Failure::Store)?;
    tracing::info!(user = %user.username, target = %target.label(), "alert target added");
    Ok(id)
}

fn remove(gw: &Gateway, user: &CurrentUser, id: &str) -> Result<(), Failure> {
    let Some(TargetRef::Stored(id)) = TargetRef::parse(id) else {
        return Err(Failure::NotFound);
    };
    if !gw.store.delete_alert_target(id).map_err(Failure::Store)? {
        return Err(Failure::NotFound);
    }
    reload(gw).map_err(Failure::Store)?;
    tracing::info!(user = %user.username, target_id = id, "alert target deleted");
    Ok(())
}

async fn test(gw: &Gateway, user: &CurrentUser, id: &str) -> Result<Delivery, Failure> {
    let r = TargetRef::parse(id).ok_or(Failure::NotFound)?;
    let n = notifier(gw).ok_or(Failure::NotRunning)?;
    n.test_one(r, &user.username).await.ok_or(Failure::NotFound)
}

// ---------------------------------------------------------------------------------------------
// page
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "settings_notifications.html")]
struct NotificationsPage {
    targets: Vec<ApiAlertTarget>,
    notice: Option<String>,
    error: Option<String>,
    running: bool,
    csrf: String,
    form_name: String,
    form_kind: String,
}

#[derive(Deserialize, Default)]
struct PageQuery {
    notice: Option<String>,
}

fn page_with(
    gw: &Gateway,
    user: &CurrentUser,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
    form: Option<&NewAlertTarget>,
) -> Response {
    let targets = match summaries(gw) {
        Ok(t) => t.into_iter().map(ApiAlertTarget::from).collect(),
        Err(e) => {
            let f = Failure::Store(e);
            return (f.status(), f.message()).into_response();
        }
    };
    let mut resp = render(&NotificationsPage {
        targets,
        notice,
        error,
        running: notifier(gw).is_some(),
        csrf: user.csrf_token().to_string(),
        form_name: form.map(|f| f.name.clone()).unwrap_or_default(),
        form_kind: form
            .map(|f| f.kind.clone())
            .unwrap_or_else(|| "ntfy".into()),
    });
    if resp.status() == StatusCode::OK {
        *resp.status_mut() = status;
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn page(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Query(q): Query<PageQuery>,
) -> Response {
    let notice = match q.notice.as_deref() {
        Some("added") => Some("Target added. Use \"Send test notification\" to check it."),
        Some("deleted") => Some("Target deleted; alerts no longer go there."),
        _ => None,
    };
    page_with(
        &gw,
        &user,
        StatusCode::OK,
        notice.map(String::from),
        None,
        None,
    )
}

#[derive(Deserialize)]
struct AddForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    token: String,
}

async fn add_form(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Form(f): Form<AddForm>,
) -> Response {
    let new = NewAlertTarget {
        name: f.name,
        kind: f.kind,
        url: f.url,
        token: Some(f.token),
    };
    match add(&gw, &user, &new) {
        Ok(_) => Redirect::to("/settings/notifications?notice=added").into_response(),
        Err(e) => page_with(&gw, &user, e.status(), None, Some(e.message()), Some(&new)),
    }
}

async fn delete_form(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Response {
    match remove(&gw, &user, &id) {
        Ok(()) => Redirect::to("/settings/notifications?notice=deleted").into_response(),
        Err(e) => page_with(&gw, &user, e.status(), None, Some(e.message()), None),
    }
}

async fn test_form(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Response {
    match test(&gw, &user, &id).await {
        Ok(d) => match d.error {
            None => page_with(
                &gw,
                &user,
                StatusCode::OK,
                Some(format!("Test notification delivered to {}.", d.label)),
                None,
                None,
            ),
            Some(e) => page_with(
                &gw,
                &user,
                StatusCode::BAD_GATEWAY,
                None,
                Some(format!("Test notification to {} failed: {e}", d.label)),
                None,
            ),
        },
        Err(e) => page_with(&gw, &user, e.status(), None, Some(e.message()), None),
    }
}

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

/// Every notification target: those of printgate.toml, then those added in Settings.
#[utoipa::path(
    get,
    path = "/api/v1/alert-targets",
    tag = "notifications",
    responses(
        (status = 200, description = "The targets; URLs show only scheme, host and port, tokens never", body = [ApiAlertTarget]),
        (status = 500, description = "Database error", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_list(
    State(gw): State<Arc<Gateway>>,
) -> Result<Json<Vec<ApiAlertTarget>>, ApiError> {
    summaries(&gw)
        .map(|t| Json(t.into_iter().map(ApiAlertTarget::from).collect()))
        .map_err(|e| Failure::Store(e).api())
}

/// Add an ntfy or webhook target; alerts go there from now on.
#[utoipa::path(
    post,
    path = "/api/v1/alert-targets",
    tag = "notifications",
    request_body(content = NewAlertTarget, content_type = "application/json"),
    responses(
        (status = 201, description = "Added", body = ApiAlertTarget),
        (status = 400, description = "Bad name, kind, URL or token", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_add(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Json(new): Json<NewAlertTarget>,
) -> Result<(StatusCode, Json<ApiAlertTarget>), ApiError> {
    let id = add(&gw, &user, &new).map_err(Failure::api)?;
    let wanted = TargetRef::Stored(id).to_string();
    let all = summaries(&gw).map_err(|e| Failure::Store(e).api())?;
    all.into_iter()
        .map(ApiAlertTarget::from)
        .find(|t| t.id == wanted)
        .map(|t| (StatusCode::CREATED, Json(t)))
        .ok_or_else(|| ApiError::internal("the new target vanished; list the targets again"))
}

/// Delete a target added in Settings (targets of printgate.toml are changed there).
#[utoipa::path(
    delete,
    path = "/api/v1/alert-targets/{id}",
    tag = "notifications",
    params(("id" = String, Path, description = "Target id (a number)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such stored target", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_delete(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove(&gw, &user, &id).map_err(Failure::api)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test notification to one target now and report the outcome (the exact error when it
/// was not delivered).
#[utoipa::path(
    post,
    path = "/api/v1/alert-targets/{id}/test",
    tag = "notifications",
    params(("id" = String, Path, description = "Target id: `config-<n>` or a number")),
    responses(
        (status = 200, description = "Sent (see `delivered` and `error`)", body = ApiTestResult),
        (status = 404, description = "No such target", body = super::openapi::ErrorBody),
        (status = 503, description = "Alerts are not running", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_test(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<ApiTestResult>, ApiError> {
    test(&gw, &user, &id)
        .await
        .map(|d| Json(ApiTestResult::from(d)))
        .map_err(Failure::api)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(kind: &str, url: &str, token: Option<&str>) -> NewAlertTarget {
        NewAlertTarget {
            name: "Phone".into(),
            kind: kind.into(),
            url: url.into(),
            token: token.map(String::from),
        }
    }

    #[test]
    fn new_targets_are_checked_without_echoing_secrets() {
        let ok = parse_new(&new("ntfy", " http://127.0.0.1:1/topic ", Some(" tk_a "))).unwrap();
        assert_eq!(
            ok.1,
            AlertTarget::Ntfy {
                url: "http://127.0.0.1:1/topic".into(),
                token: Some("tk_a".into())
            }
        );
        assert!(matches!(
            parse_new(&new("webhook", "http://h/x", Some("")))
                .unwrap()
                .1,
            AlertTarget::Webhook { .. }
        ));
        for (kind, url, token) in [
            ("webhook", "http://h/secret-hook", Some("tk")),
            ("buzzer", "http://h/x", None),
            ("ntfy", "ftp://h/secret-topic", None),
            ("ntfy", "http://user:secret-pw@h/x", None),
            ("ntfy", "http://h/x", Some("has space")),
        ] {
            let e = parse_new(&new(kind, url, token)).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
        let mut long = new("ntfy", "http://h/x", None);
        long.name = "x".repeat(65);
        assert!(parse_new(&long).is_err());
    }
}
