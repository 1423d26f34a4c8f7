//! Settings → Users: the accounts, adding one (name and password, argon2id like the setup page),
//! deleting one (never the last account, never one's own), and — through the existing
//! `/settings/password` form — changing one's own password. Deleting an account ends its
//! sessions and revokes its API tokens; a password change ends the account's other sessions.
//! There is one role today, so any signed-in person (or API token) may manage accounts.
//! JSON equivalents under `/api/v1/users`.

use super::auth::secrets::{
    MAX_PASSWORD_LEN, hash_password, password_problem, username_problem, verify_password,
};
use super::auth::{AuthState, ClientIp, CurrentUser, LimitKey};
use super::{ApiError, render};
use crate::app::Gateway;
use crate::store::StoreError;
use crate::store::users::{NewUser, UserDeletion, UserRow};
use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/settings/users", get(page).post(add_form))
        .route("/settings/users/{id}/delete", post(delete_form))
        .route("/api/v1/users", get(api_list).post(api_add))
        .route("/api/v1/users/{id}", delete(api_delete))
        .route("/api/v1/users/me/password", post(api_password))
}

type Auth = Extension<Arc<AuthState>>;

/// An account as the API shows it (never its password hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiUser {
    pub id: i64,
    pub username: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// The account of the caller.
    pub is_you: bool,
}

fn api_user(u: &UserRow, me: &CurrentUser) -> ApiUser {
    ApiUser {
        id: u.id,
        username: u.username.clone(),
        created_at_ms: u.created_at_ms,
        is_you: u.id == me.id,
    }
}

/// A new account.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    /// 1–32 letters, digits, `.`, `_` or `-`.
    pub username: String,
    /// At least 8 characters.
    pub password: String,
}

/// Change the caller's own password.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    pub current: String,
    /// At least 8 characters.
    pub password: String,
}

/// Why adding, deleting or a password change failed.
enum Failure {
    Invalid(String),
    Taken,
    NotFound,
    Yourself,
    LastAccount,
    WrongPassword,
    Locked(std::time::Duration),
    Internal(String),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::Invalid(_) => StatusCode::BAD_REQUEST,
            Failure::Taken | Failure::Yourself | Failure::LastAccount => StatusCode::CONFLICT,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::WrongPassword => StatusCode::FORBIDDEN,
            Failure::Locked(_) => StatusCode::TOO_MANY_REQUESTS,
            Failure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Failure::Invalid(_) => "bad_request",
            Failure::Taken => "name_taken",
            Failure::NotFound => "unknown_user",
            Failure::Yourself => "yourself",
            Failure::LastAccount => "last_account",
            Failure::WrongPassword => "wrong_password",
            Failure::Locked(_) => "rate_limited",
            Failure::Internal(_) => "internal",
        }
    }
    fn message(&self) -> String {
        match self {
            Failure::Invalid(m) => m.clone(),
            Failure::Taken => "A user of that name exists already; choose another name.".into(),
            Failure::NotFound => "No such user (maybe already deleted); reload the page.".into(),
            Failure::Yourself => "You cannot delete your own account while signed in with it; sign in as another user to do that.".into(),
            Failure::LastAccount => "This is the only account; add another one before deleting it.".into(),
            Failure::WrongPassword => "The current password is wrong; the password was not changed.".into(),
            Failure::Locked(wait) => format!(
                "Too many wrong passwords for this user name or from this device. Wait {} seconds, then try again.",
                wait.as_secs().max(1)
            ),
            Failure::Internal(e) => {
                tracing::error!("accounts: {e}");
                "The account database could not be used; see the gateway's log.".into()
            }
        }
    }
    fn api(self) -> ApiError {
        ApiError::new(self.status(), self.code(), self.message())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Internal(e.to_string())
    }
}

/// argon2id on the blocking pool, at most as many at once as the sign-in allows.
async fn hash_blocking(auth: &AuthState, password: String) -> Result<String, Failure> {
    let _slot = auth.hashing.acquire().await.ok();
    match tokio::task::spawn_blocking(move || hash_password(&password)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(Failure::Internal(e.to_string())),
        Err(e) => Err(Failure::Internal(format!(
            "the password could not be hashed: {e}"
        ))),
    }
}

async fn verify_blocking(auth: &AuthState, password: String, hash: String) -> bool {
    let _slot = auth.hashing.acquire().await.ok();
    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

async fn add(
    gw: &Gateway,
    auth: &AuthState,
    me: &CurrentUser,
    username: &str,
    password: String,
    confirm: &str,
) -> Result<UserRow, Failure> {
    let username = username.trim();
    if let Some(p) = username_problem(username).or_else(|| password_problem(&password, confirm)) {
        return Err(Failure::Invalid(p));
    }
    if gw.store.user_by_name(username)?.is_some() {
        return Err(Failure::Taken);
    }
    let hash = hash_blocking(auth, password).await?;
    match gw
        .store
        .create_user(username, &hash, crate::store::now_ms())?
    {
        NewUser::Created(u) => {
            tracing::info!(user = %me.username, new_user = %u.username, "account added");
            Ok(u)
        }
        NewUser::NameTaken => Err(Failure::Taken),
    }
}

fn remove(gw: &Gateway, me: &CurrentUser, id: i64) -> Result<(), Failure> {
    match gw.store.delete_user(id, me.id)? {
        UserDeletion::Deleted => {
            tracing::info!(user = %me.username, deleted_user_id = id, "account deleted; its sessions and tokens ended");
            Ok(())
        }
        UserDeletion::NotFound => Err(Failure::NotFound),
        UserDeletion::Yourself => Err(Failure::Yourself),
        UserDeletion::LastAccount => Err(Failure::LastAccount),
    }
}

fn ip_key(ip: Option<IpAddr>) -> LimitKey {
    LimitKey::Ip(ip.unwrap_or(IpAddr::from([0, 0, 0, 0])))
}

// ---------------------------------------------------------------------------------------------
// page
// ---------------------------------------------------------------------------------------------

struct UserView {
    id: i64,
    username: String,
    created: String,
    is_you: bool,
}

#[derive(Template)]
#[template(path = "settings_users.html")]
struct UsersPage {
    username: String,
    csrf: String,
    users: Vec<UserView>,
    notice: Option<String>,
    error: Option<String>,
    form_username: String,
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

fn page_with(
    gw: &Gateway,
    me: &CurrentUser,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
    form_username: &str,
) -> Response {
    let users = match gw.store.list_users() {
        Ok(rows) => rows
            .iter()
            .map(|u| UserView {
                id: u.id,
                username: u.username.clone(),
                created: fmt_ms(u.created_at_ms),
                is_you: u.id == me.id,
            })
            .collect(),
        Err(e) => {
            let f = Failure::from(e);
            return (f.status(), f.message()).into_response();
        }
    };
    let mut resp = render(&UsersPage {
        username: me.username.clone(),
        csrf: me.csrf_token().to_string(),
        users,
        notice,
        error,
        form_username: form_username.to_string(),
    });
    if resp.status() == StatusCode::OK {
        *resp.status_mut() = status;
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Deserialize, Default)]
struct PageQuery {
    notice: Option<String>,
}

async fn page(
    State(gw): State<Arc<Gateway>>,
    me: CurrentUser,
    Query(q): Query<PageQuery>,
) -> Response {
    let notice = match q.notice.as_deref() {
        Some("added") => Some("User added. They can sign in now."),
        Some("deleted") => Some("User deleted; their sessions and API tokens no longer work."),
        _ => None,
    };
    page_with(&gw, &me, StatusCode::OK, notice.map(String::from), None, "")
}

#[derive(Deserialize)]
struct AddForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

async fn add_form(
    State(gw): State<Arc<Gateway>>,
    Extension(auth): Auth,
    me: CurrentUser,
    Form(f): Form<AddForm>,
) -> Response {
    match add(&gw, &auth, &me, &f.username, f.password, &f.confirm).await {
        Ok(_) => Redirect::to("/settings/users?notice=added").into_response(),
        Err(e) => page_with(&gw, &me, e.status(), None, Some(e.message()), &f.username),
    }
}

async fn delete_form(
    State(gw): State<Arc<Gateway>>,
    me: CurrentUser,
    Path(id): Path<i64>,
) -> Response {
    match remove(&gw, &me, id) {
        Ok(()) => Redirect::to("/settings/users?notice=deleted").into_response(),
        Err(e) => page_with(&gw, &me, e.status(), None, Some(e.message()), ""),
    }
}

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

/// Every account. (One role: any signed-in person or API token may manage accounts.)
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    responses((status = 200, description = "The accounts, oldest first", body = [ApiUser]))
)]
pub(crate) async fn api_list(
    State(gw): State<Arc<Gateway>>,
    me: CurrentUser,
) -> Result<Json<Vec<ApiUser>>, ApiError> {
    let rows = gw.store.list_users().map_err(|e| Failure::from(e).api())?;
    Ok(Json(rows.iter().map(|u| api_user(u, &me)).collect()))
}

/// Add an account (it can do everything: there is one role).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body(content = NewUserBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Added", body = ApiUser),
        (status = 400, description = "Bad user name or password", body = super::openapi::ErrorBody),
        (status = 409, description = "The name is taken", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_add(
    State(gw): State<Arc<Gateway>>,
    Extension(auth): Auth,
    me: CurrentUser,
    Json(body): Json<NewUserBody>,
) -> Result<(StatusCode, Json<ApiUser>), ApiError> {
    let confirm = body.password.clone();
    let u = add(&gw, &auth, &me, &body.username, body.password, &confirm)
        .await
        .map_err(Failure::api)?;
    Ok((StatusCode::CREATED, Json(api_user(&u, &me))))
}

/// Delete an account: its sessions end and its API tokens stop working. Never the caller's own
/// account, never the last one.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such user", body = super::openapi::ErrorBody),
        (status = 409, description = "Your own account, or the last one", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_delete(
    State(gw): State<Arc<Gateway>>,
    me: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    remove(&gw, &me, id).map_err(Failure::api)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change the caller's own password (needs the current one). Every session of the account ends,
/// including a browser session making this call (sign in again); API tokens keep working.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/password",
    tag = "users",
    request_body(content = PasswordBody, content_type = "application/json"),
    responses(
        (status = 204, description = "Changed; every session of the account ended"),
        (status = 400, description = "The new password is not acceptable", body = super::openapi::ErrorBody),
        (status = 403, description = "The current password is wrong", body = super::openapi::ErrorBody),
        (status = 429, description = "Too many wrong passwords; wait", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_password(
    State(gw): State<Arc<Gateway>>,
    Extension(auth): Auth,
    ClientIp(ip): ClientIp,
    me: CurrentUser,
    Json(body): Json<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    change_password(&gw, &auth, ip, &me, body)
        .await
        .map_err(Failure::api)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change_password(
    gw: &Gateway,
    auth: &AuthState,
    ip: Option<IpAddr>,
    me: &CurrentUser,
    body: PasswordBody,
) -> Result<(), Failure> {
    let keys = [LimitKey::user(&me.username), ip_key(ip)];
    let limiter = || auth.limiter.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(wait) = limiter().locked_for(&keys, Instant::now()) {
        return Err(Failure::Locked(wait));
    }
    let account = gw.store.user_by_id(me.id)?.ok_or(Failure::NotFound)?;
    let ok = body.current.len() <= MAX_PASSWORD_LEN * 4
        && verify_blocking(auth, body.current, account.password_hash).await;
    if !ok {
        return Err(match limiter().record_failure(&keys, Instant::now()) {
            Some(wait) => Failure::Locked(wait),
            None => Failure::WrongPassword,
        });
    }
    if let Some(p) = password_problem(&body.password, &body.password) {
        return Err(Failure::Invalid(p));
    }
    let hash = hash_blocking(auth, body.password).await?;
    gw.store.set_password(me.id, &hash)?;
    tracing::info!(user = %me.username, "password changed through the API; all sessions ended");
    Ok(())
}
