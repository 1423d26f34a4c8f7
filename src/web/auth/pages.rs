//! The pages of the auth module: first-run setup, sign-in and sign-out, API tokens and the
//! password form. Password hashing runs on the blocking pool, at most two at a time.

use super::AuthState;
use super::guard::{
    AuthVia, ClientIp, CurrentUser, SESSION_IDLE_MS, SESSION_LIFETIME_MS, cookies_secure,
    session_clear_cookie, session_set_cookie,
};
use super::limiter::{LimitKey, describe_wait};
use super::secrets::{
    MAX_PASSWORD_LEN, dummy_password_hash, hash_password, new_api_token, new_csrf_token,
    new_session_id, normalize_setup_code, password_problem, sha256_hex, username_problem,
    verify_password,
};
use crate::store::StoreError;
use crate::store::users::{FirstUser, SessionRow};
use crate::web::render;
use askama::Template;
use axum::extract::{Extension, Form, Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Auth = Extension<Arc<AuthState>>;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// Run argon2 verification on the blocking pool.
async fn verify_blocking(auth: &AuthState, password: String, hash: String) -> bool {
    let _slot = auth.hashing.acquire().await.ok();
    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

/// Hash a new password on the blocking pool.
async fn hash_blocking(auth: &AuthState, password: String) -> Result<String, String> {
    let _slot = auth.hashing.acquire().await.ok();
    match tokio::task::spawn_blocking(move || hash_password(&password)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the password could not be hashed: {e}")),
    }
}

/// Start a new session for `user_id` (a fresh random id every time: no session fixation) and
/// return its `Set-Cookie` header.
fn start_session(
    auth: &AuthState,
    headers: &HeaderMap,
    user_id: i64,
) -> Result<HeaderValue, StoreError> {
    let sid = new_session_id();
    let now = crate::store::now_ms();
    auth.store.purge_sessions(now, now - SESSION_IDLE_MS)?;
    auth.store.insert_session(&SessionRow {
        id_hash: sha256_hex(&sid),
        user_id,
        csrf_token: new_csrf_token(),
        created_at_ms: now,
        last_seen_ms: now,
        expires_at_ms: now + SESSION_LIFETIME_MS,
    })?;
    Ok(session_set_cookie(&sid, cookies_secure(auth, headers)))
}

fn redirect_with_cookie(to: &str, cookie: HeaderValue) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.headers_mut().insert(header::SET_COOKIE, cookie);
    r
}

fn store_failed(e: impl std::fmt::Display) -> Response {
    tracing::error!("account database: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "The account database could not be used; see the gateway's log.",
    )
        .into_response()
}

/// A local path to go to after signing in; anything else (other hosts, `//x`) becomes `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/login")
                && !n.starts_with("/logout") =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

fn ip_key(ip: Option<IpAddr>) -> LimitKey {
    LimitKey::Ip(ip.unwrap_or(IpAddr::from([0, 0, 0, 0])))
}

/// "Wait 30 seconds, then try again (at 14:02:10)."
fn lockout_message(wait: Duration) -> String {
    let at = chrono::Local::now()
        + chrono::Duration::from_std(wait).unwrap_or_else(|_| chrono::Duration::zero());
    format!(
        "Too many failed attempts for this user name or from this device. Wait {}, then try again (at {}).",
        describe_wait(wait),
        at.format("%H:%M:%S")
    )
}

fn too_many(resp: Response, wait: Duration) -> Response {
    let mut resp = resp;
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn with_status(mut resp: Response, status: StatusCode) -> Response {
    *resp.status_mut() = status;
    resp
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

// ---------------------------------------------------------------------------------------------
// setup
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    error: Option<String>,
    username: String,
}

#[derive(Deserialize)]
pub(super) struct SetupForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

pub(super) async fn setup_page(Extension(auth): Auth) -> Response {
    match auth.store.user_count() {
        Ok(0) => render(&SetupPage {
            error: None,
            username: "admin".into(),
        }),
        Ok(_) => Redirect::to("/login").into_response(),
        Err(e) => store_failed(e),
    }
}

pub(super) async fn setup_submit(
    Extension(auth): Auth,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(f): Form<SetupForm>,
) -> Response {
    match auth.store.user_count() {
        Ok(0) => {}
        Ok(_) => return Redirect::to("/login").into_response(),
        Err(e) => return store_failed(e),
    }
    let keys = [ip_key(ip)];
    let page = |error: String, username: &str| {
        render(&SetupPage {
            error: Some(error),
            username: username.to_string(),
        })
    };
    if let Some(wait) = auth.limiter().locked_for(&keys, Instant::now()) {
        return too_many(page(lockout_message(wait), &f.username), wait);
    }
    let username = f.username.trim();
    if let Some(p) =
        username_problem(username).or_else(|| password_problem(&f.password, &f.confirm))
    {
        return with_status(page(p, username), StatusCode::BAD_REQUEST);
    }
    let hash = match hash_blocking(&auth, f.password).await {
        Ok(h) => h,
        Err(e) => return store_failed(e),
    };
    let code_hash = sha256_hex(&normalize_setup_code(&f.code));
    match auth
        .store
        .create_first_user(&code_hash, username, &hash, crate::store::now_ms())
    {
        Ok(FirstUser::Created(user)) => {
            tracing::info!(user = %user.username, "first account created");
            match start_session(&auth, &headers, user.id) {
                Ok(cookie) => redirect_with_cookie("/", cookie),
                Err(e) => store_failed(e),
            }
        }
        Ok(FirstUser::SetupDone) => Redirect::to("/login").into_response(),
        Ok(FirstUser::WrongCode) => {
            let locked = auth.limiter().record_failure(&keys, Instant::now());
            let msg = "The setup code is wrong or was already used. The current code is in the gateway's console and log (journalctl -u printgate); restarting printgate prints a new one.";
            match locked {
                Some(wait) => too_many(
                    page(format!("{msg} {}", lockout_message(wait)), username),
                    wait,
                ),
                None => with_status(page(msg.into(), username), StatusCode::FORBIDDEN),
            }
        }
        Err(e) => store_failed(e),
    }
}

// ---------------------------------------------------------------------------------------------
// login / logout
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
    username: String,
    next: String,
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub(super) async fn login_page(
    Extension(auth): Auth,
    user: Option<CurrentUser>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if user.is_some() {
        return Redirect::to(&next).into_response();
    }
    if matches!(auth.store.user_count(), Ok(0)) {
        return Redirect::to("/setup").into_response();
    }
    render(&LoginPage {
        error: None,
        username: String::new(),
        next,
    })
}

pub(super) async fn login_submit(
    Extension(auth): Auth,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    user: Option<CurrentUser>,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let username = f.username.trim().to_string();
    let keys = [LimitKey::user(&username), ip_key(ip)];
    let page = |error: String| {
        render(&LoginPage {
            error: Some(error),
            username: username.clone(),
            next: next.clone(),
        })
    };
    if let Some(wait) = auth.limiter().locked_for(&keys, Instant::now()) {
        return too_many(page(lockout_message(wait)), wait);
    }
    let account = match auth.store.user_by_name(&username) {
        Ok(a) => a,
        Err(e) => return store_failed(e),
    };
    // Unknown user: verify against a dummy hash, so both failures take the same time.
    let hash = account
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_password_hash().to_string());
    let password_ok =
        f.password.len() <= MAX_PASSWORD_LEN * 4 && verify_blocking(&auth, f.password, hash).await;
    let account = match account {
        Some(a) if password_ok => a,
        _ => {
            let locked = auth.limiter().record_failure(&keys, Instant::now());
            let wrong = "Wrong user name or password.";
            return match locked {
                Some(wait) => too_many(page(format!("{wrong} {}", lockout_message(wait))), wait),
                None => with_status(page(wrong.into()), StatusCode::UNAUTHORIZED),
            };
        }
    };
    auth.limiter().record_success(&LimitKey::user(&username));
    // The session the browser came with (if any) ends; the new one gets a new id.
    if let Some(AuthVia::Session { id_hash, .. }) = user.map(|u| u.via)
        && let Err(e) = auth.store.delete_session(&id_hash)
    {
        return store_failed(e);
    }
    tracing::info!(user = %account.username, "signed in");
    match start_session(&auth, &headers, account.id) {
        Ok(cookie) => redirect_with_cookie(&next, cookie),
        Err(e) => store_failed(e),
    }
}

pub(super) async fn logout(
    Extension(auth): Auth,
    headers: HeaderMap,
    user: CurrentUser,
) -> Response {
    if let AuthVia::Session { id_hash, .. } = &user.via
        && let Err(e) = auth.store.delete_session(id_hash)
    {
        return store_failed(e);
    }
    redirect_with_cookie(
        "/login",
        session_clear_cookie(cookies_secure(&auth, &headers)),
    )
}

// ---------------------------------------------------------------------------------------------
// settings: API tokens and password
// ---------------------------------------------------------------------------------------------

struct TokenView {
    id: i64,
    name: String,
    created: String,
    last_used: String,
    default_printer: String,
    revoked: bool,
}

#[derive(Template)]
#[template(path = "settings_tokens.html")]
struct TokensPage {
    username: String,
    csrf: String,
    tokens: Vec<TokenView>,
    printers: Vec<String>,
    /// A token just created: shown this once.
    new_token: Option<String>,
    notice: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct NoticeQuery {
    notice: Option<String>,
}

fn tokens_page_for(
    auth: &AuthState,
    user: &CurrentUser,
    new_token: Option<String>,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let rows = match auth.store.list_api_tokens(user.id) {
        Ok(r) => r,
        Err(e) => return store_failed(e),
    };
    let tokens = rows
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            name: t.name,
            created: fmt_ms(t.created_at_ms),
            last_used: t.last_used_ms.map(fmt_ms).unwrap_or_else(|| "never".into()),
            default_printer: t.default_printer.unwrap_or_default(),
            revoked: t.revoked_at_ms.is_some(),
        })
        .collect();
    let mut resp = render(&TokensPage {
        username: user.username.clone(),
        csrf: user.csrf_token().to_string(),
        tokens,
        printers: auth.printers.clone(),
        new_token,
        notice,
        error,
    });
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(super) async fn tokens_page(
    Extension(auth): Auth,
    user: CurrentUser,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let notice = match q.notice.as_deref() {
        Some("revoked") => Some("The token was revoked; programs using it are turned away now."),
        Some("password") => Some("Password changed. Every other device was signed out."),
        _ => None,
    };
    tokens_page_for(&auth, &user, None, notice.map(String::from), None)
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    default_printer: String,
}

pub(super) async fn token_create(
    Extension(auth): Auth,
    user: CurrentUser,
    Form(f): Form<TokenForm>,
) -> Response {
    let name = f.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        let resp = tokens_page_for(
            &auth,
            &user,
            None,
            None,
            Some(
                "Give the token a name of 1 to 64 characters (e.g. \"OrcaSlicer laptop\").".into(),
            ),
        );
        return with_status(resp, StatusCode::BAD_REQUEST);
    }
    let printer = f.default_printer.trim();
    let printer = if printer.is_empty() {
        None
    } else if auth.printers.iter().any(|p| p == printer) {
        Some(printer)
    } else {
        let resp = tokens_page_for(
            &auth,
            &user,
            None,
            None,
            Some("That printer is not configured; choose one from the list.".into()),
        );
        return with_status(resp, StatusCode::BAD_REQUEST);
    };
    let token = new_api_token();
    if let Err(e) = auth.store.insert_api_token(
        user.id,
        name,
        &sha256_hex(&token),
        printer,
        crate::store::now_ms(),
    ) {
        return store_failed(e);
    }
    tracing::info!(user = %user.username, token = %name, "API token created");
    tokens_page_for(&auth, &user, Some(token), None, None)
}

pub(super) async fn token_revoke(
    Extension(auth): Auth,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Response {
    match auth
        .store
        .revoke_api_token(user.id, id, crate::store::now_ms())
    {
        Ok(true) => {
            tracing::info!(user = %user.username, token_id = id, "API token revoked");
            Redirect::to("/settings/tokens?notice=revoked").into_response()
        }
        Ok(false) => with_status(
            tokens_page_for(
                &auth,
                &user,
                None,
                None,
                Some("No such token of yours, or it was already revoked.".into()),
            ),
            StatusCode::NOT_FOUND,
        ),
        Err(e) => store_failed(e),
    }
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

pub(super) async fn password_change(
    Extension(auth): Auth,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    user: CurrentUser,
    Form(f): Form<PasswordForm>,
) -> Response {
    let keys = [LimitKey::user(&user.username), ip_key(ip)];
    let fail = |status: StatusCode, msg: String| {
        with_status(tokens_page_for(&auth, &user, None, None, Some(msg)), status)
    };
    if let Some(wait) = auth.limiter().locked_for(&keys, Instant::now()) {
        return too_many(
            tokens_page_for(&auth, &user, None, None, Some(lockout_message(wait))),
            wait,
        );
    }
    let account = match auth.store.user_by_id(user.id) {
        Ok(Some(a)) => a,
        Ok(None) => {
            return fail(
                StatusCode::NOT_FOUND,
                "Your account no longer exists.".into(),
            );
        }
        Err(e) => return store_failed(e),
    };
    if !verify_blocking(&auth, f.current, account.password_hash).await {
        auth.limiter().record_failure(&keys, Instant::now());
        return fail(
            StatusCode::FORBIDDEN,
            "The current password is wrong; the password was not changed.".into(),
        );
    }
    if let Some(p) = password_problem(&f.password, &f.confirm) {
        return fail(StatusCode::BAD_REQUEST, p);
    }
    let hash = match hash_blocking(&auth, f.password).await {
        Ok(h) => h,
        Err(e) => return store_failed(e),
    };
    if let Err(e) = auth.store.set_password(user.id, &hash) {
        return store_failed(e);
    }
    tracing::info!(user = %user.username, "password changed; all sessions ended");
    match start_session(&auth, &headers, user.id) {
        Ok(cookie) => redirect_with_cookie("/settings/tokens?notice=password", cookie),
        Err(e) => store_failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/printers/a?x=1")), "/printers/a?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/logout")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
