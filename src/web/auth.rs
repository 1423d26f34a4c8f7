//! Who may use the gateway: accounts, sessions, CSRF protection and API tokens. The gateway holds
//! printer access codes and switches mains power, so every route except [`PUBLIC_PATHS`] needs a
//! signed-in person (session cookie) or an API token (slicers, scripts, Home Assistant).
//!
//! - [`protect`] wraps the whole router in the guard (see `guard.rs`): identifies the caller,
//!   turns away anonymous requests (401 JSON, or a redirect to `/login` for browser page loads),
//!   and checks every state-changing request for a cross-site origin and, for cookie sessions,
//!   the per-session CSRF token (form field `csrf` or header `X-CSRF-Token`).
//! - [`routes`] serves `/setup`, `/login`, `/logout` and `/settings/…` (tokens, password).
//! - Handlers take a [`CurrentUser`]; pages put [`CurrentUser::csrf_token`] into their forms.
//! - At the first start (no account yet) a one-time setup code is printed to the console and the
//!   log; creating the first account needs it, so nobody else on the LAN can claim the gateway.

mod cli;
mod guard;
mod limiter;
mod pages;
pub mod secrets;

pub use cli::{
    DEMO_API_TOKEN, DEMO_PASSWORD, DEMO_USER, ensure_demo_account, issue_setup_code,
    set_password_cli, set_password_from,
};
pub use guard::{
    API_KEY_HEADER, AuthVia, CSRF_FIELD, CSRF_HEADER, ClientIp, CurrentUser, NotSignedIn,
    PUBLIC_PATHS, PublicPath, SESSION_COOKIE, api_key, is_public, json_error,
};
pub use limiter::{LimitKey, LimitPolicy, LoginLimiter};

use crate::app::Gateway;
use crate::store::Store;
use axum::Router;
use axum::routing::{get, post};
use std::sync::{Arc, Mutex};

/// Concurrent argon2 computations (each takes 19 MiB and most of a core on a Pi).
const HASHING_SLOTS: usize = 2;

/// What the guard and the auth pages share (one per router).
pub struct AuthState {
    pub(crate) store: Arc<Store>,
    /// `web.secure_cookies`: mark cookies `Secure` (the page is served over TLS).
    pub(crate) secure_cookies: bool,
    pub(crate) limiter: Mutex<LoginLimiter>,
    pub(crate) hashing: tokio::sync::Semaphore,
    /// Configured printer names (choices for a token's default printer).
    pub(crate) printers: Vec<String>,
}

impl AuthState {
    fn new(gw: &Gateway) -> AuthState {
        AuthState {
            store: gw.store.clone(),
            secure_cookies: gw.config.web.secure_cookies,
            limiter: Mutex::new(LoginLimiter::default()),
            hashing: tokio::sync::Semaphore::new(HASHING_SLOTS),
            printers: gw.printers.iter().map(|p| p.name.clone()).collect(),
        }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, LoginLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The routes of this module: setup, sign-in, sign-out and the account settings.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/setup", get(pages::setup_page).post(pages::setup_submit))
        .route("/login", get(pages::login_page).post(pages::login_submit))
        .route("/logout", post(pages::logout))
        .route(
            "/settings/tokens",
            get(pages::tokens_page).post(pages::token_create),
        )
        .route("/settings/tokens/{id}/revoke", post(pages::token_revoke))
        .route("/settings/password", post(pages::password_change))
}

/// Put every route of `app` (added before this call) behind the guard. Also prints a fresh
/// setup code when no account exists yet.
pub fn protect(app: Router<Arc<Gateway>>, gw: &Arc<Gateway>) -> Router<Arc<Gateway>> {
    cli::announce_setup_code(&gw.store);
    let state = Arc::new(AuthState::new(gw));
    app.layer(axum::middleware::from_fn_with_state(state, guard::guard))
}
