//! The guard in front of every route: finds out who is asking (session cookie or API token),
//! turns away anonymous requests outside [`PUBLIC_PATHS`], and checks every state-changing
//! request for cross-site origin and, for cookie sessions, the CSRF synchronizer token. Handlers
//! then read the result with the [`CurrentUser`] extractor.

use super::AuthState;
use super::secrets::{constant_time_eq, sha256_hex};
use crate::store::StoreError;
use crate::store::users::UserRow;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::StreamExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "printgate_session";
/// Form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// Header that may carry the CSRF token instead (for `fetch`/XHR from our own pages).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Header OctoPrint clients (slicers) send their API key in; `Authorization: Bearer` also works.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Absolute lifetime of a session.
pub const SESSION_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;
/// A session unused for this long ends.
pub const SESSION_IDLE_MS: i64 = 7 * 24 * 3600 * 1000;
/// `last_seen`/`last_used` are written at most this often (spares the Pi's SD card).
const TOUCH_EVERY_MS: i64 = 60 * 1000;
/// Largest url-encoded form body read to find the CSRF field.
const FORM_LIMIT: usize = 1024 * 1024;
/// How much of a multipart body is read to find the CSRF field (it must come before any file).
const MULTIPART_PEEK_LIMIT: usize = 64 * 1024;

/// A path reachable without signing in.
#[derive(Debug, Clone, Copy)]
pub enum PublicPath {
    Exact(&'static str),
    Prefix(&'static str),
}

/// Every route reachable without an account, in one place. Everything else needs a session or
/// an API token.
pub const PUBLIC_PATHS: &[PublicPath] = &[
    PublicPath::Exact("/login"),
    PublicPath::Exact("/setup"),
    PublicPath::Prefix("/static/"),
    PublicPath::Exact("/healthz"),
    PublicPath::Exact("/favicon.ico"),
];

/// Whether `path` is in [`PUBLIC_PATHS`].
pub fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.iter().any(|p| match p {
        PublicPath::Exact(e) => path == *e,
        PublicPath::Prefix(pre) => path.starts_with(pre),
    })
}

/// Paths where even a wrong API key is ignored (assets and liveness probes).
fn ignores_credentials(path: &str) -> bool {
    path.starts_with("/static/") || path == "/healthz" || path == "/favicon.ico"
}

/// How the request was authenticated.
#[derive(Clone)]
pub enum AuthVia {
    /// Browser session cookie; state-changing requests carry `csrf`.
    Session { id_hash: String, csrf: String },
    /// API token (`X-Api-Key` or `Authorization: Bearer`); not cookie-based, so no CSRF.
    ApiToken {
        token_id: i64,
        name: String,
        default_printer: Option<String>,
    },
}

impl std::fmt::Debug for AuthVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthVia::Session { .. } => f.write_str("Session"),
            AuthVia::ApiToken { token_id, name, .. } => {
                write!(f, "ApiToken({token_id}, {name:?})")
            }
        }
    }
}

/// The signed-in account of a request. Extract it in any handler behind the guard:
/// `async fn page(user: CurrentUser, …)`. Use `Option<CurrentUser>` on public pages.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    pub via: AuthVia,
}

impl CurrentUser {
    fn from_row(u: &UserRow, via: AuthVia) -> CurrentUser {
        CurrentUser {
            id: u.id,
            username: u.username.clone(),
            is_admin: u.is_admin,
            via,
        }
    }

    /// The CSRF token to put in every form of a page as `<input type="hidden" name="csrf">`
    /// (empty for API-token requests, which need none).
    pub fn csrf_token(&self) -> &str {
        match &self.via {
            AuthVia::Session { csrf, .. } => csrf,
            AuthVia::ApiToken { .. } => "",
        }
    }

    /// For API-token requests: the printer the token's owner chose for slicer uploads.
    pub fn token_default_printer(&self) -> Option<&str> {
        match &self.via {
            AuthVia::ApiToken {
                default_printer, ..
            } => default_printer.as_deref(),
            AuthVia::Session { .. } => None,
        }
    }

    pub fn via_api_token(&self) -> bool {
        matches!(self.via, AuthVia::ApiToken { .. })
    }
}

/// Rejection of [`CurrentUser`] when no one is signed in (only reachable on public routes; the
/// guard answers for all others).
#[derive(Debug)]
pub struct NotSignedIn;

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Sign in first, or send an API token in the X-Api-Key header.",
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = NotSignedIn;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or(NotSignedIn)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for CurrentUser {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<CurrentUser>().cloned())
    }
}

/// The client's address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// The JSON error body of every API error: `{"error":{"code":…,"message":…}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// An error as JSON, or as a small page for browsers.
fn deny(status: StatusCode, code: &str, message: &str, html: bool) -> Response {
    if !html {
        return json_error(status, code, message);
    }
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>printgate</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>\
         <body><main><p class=\"error\">{}</p><p><a href=\"/login\">Sign in</a> · \
         <a href=\"/\">Printers</a></p></main></body></html>",
        escape_html(message)
    );
    (status, Html(page)).into_response()
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Whether the client is a browser asking for a page (gets redirects and HTML errors).
fn wants_html(req: &Request) -> bool {
    !req.uri().path().starts_with("/api/")
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

fn is_safe_method(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The API token of a request: `X-Api-Key: …` or `Authorization: Bearer …`.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The session cookie value, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Who a request comes from.
enum Credentials {
    Anonymous,
    User(CurrentUser),
    /// An API key was sent but is unknown or revoked.
    BadApiKey,
}

fn resolve(auth: &AuthState, headers: &HeaderMap) -> Result<Credentials, StoreError> {
    let now = crate::store::now_ms();
    if let Some(key) = api_key(headers) {
        return Ok(match auth.store.api_token_with_user(&sha256_hex(key))? {
            Some((token, user)) => {
                if token
                    .last_used_ms
                    .is_none_or(|t| now.saturating_sub(t) >= TOUCH_EVERY_MS)
                {
                    auth.store.touch_api_token(token.id, now)?;
                }
                Credentials::User(CurrentUser::from_row(
                    &user,
                    AuthVia::ApiToken {
                        token_id: token.id,
                        name: token.name,
                        default_printer: token.default_printer,
                    },
                ))
            }
            None => Credentials::BadApiKey,
        });
    }
    let Some(sid) = session_cookie(headers) else {
        return Ok(Credentials::Anonymous);
    };
    let id_hash = sha256_hex(sid);
    let Some((session, user)) = auth.store.session_with_user(&id_hash)? else {
        return Ok(Credentials::Anonymous);
    };
    if session.expires_at_ms <= now || session.last_seen_ms <= now - SESSION_IDLE_MS {
        auth.store.delete_session(&id_hash)?;
        return Ok(Credentials::Anonymous);
    }
    if now.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY_MS {
        auth.store.touch_session(&id_hash, now)?;
    }
    Ok(Credentials::User(CurrentUser::from_row(
        &user,
        AuthVia::Session {
            id_hash,
            csrf: session.csrf_token,
        },
    )))
}

/// The middleware (installed by `auth::protect`).
pub(super) async fn guard(
    State(auth): State<Arc<AuthState>>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(auth.clone());
    let path = req.uri().path().to_owned();
    let html = wants_html(&req);
    let creds = match resolve(&auth, req.headers()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot check the sign-in: {e}");
            return deny(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "The account database could not be read; see the gateway's log.",
                html,
            );
        }
    };
    // OctoPrint's routes answer a missing or unknown API key with OctoPrint's 403 (slicers
    // show it as "wrong API key"), like OctoPrint itself.
    let octoprint = crate::web::octoprint::is_octoprint_path(&path);
    let user = match creds {
        Credentials::User(u) => Some(u),
        Credentials::Anonymous => None,
        Credentials::BadApiKey if ignores_credentials(&path) => None,
        Credentials::BadApiKey if octoprint => {
            return crate::web::octoprint::forbidden(
                "Invalid API key: create one in printgate's Settings → API tokens and enter it in the slicer",
            );
        }
        Credentials::BadApiKey => {
            return deny(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "The API key is not valid (unknown or revoked); create a new one under Settings → API tokens.",
                html,
            );
        }
    };
    if user.is_none() && !is_public(&path) {
        if octoprint {
            return crate::web::octoprint::forbidden(
                "No API key: enter the API key from printgate's Settings → API tokens in the slicer",
            );
        }
        if html && is_safe_method(req.method()) {
            let first_run = auth.store.user_count().map(|n| n == 0).unwrap_or(false);
            if first_run {
                return Redirect::to("/setup").into_response();
            }
            let target = req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            let next: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
            return Redirect::to(&format!("/login?next={next}")).into_response();
        }
        return deny(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Sign in first, or send an API token in the X-Api-Key header.",
            html,
        );
    }
    if !is_safe_method(req.method()) {
        let by_token = user.as_ref().is_some_and(CurrentUser::via_api_token);
        if !by_token {
            if let Err(why) = check_origin(req.headers()) {
                return deny(StatusCode::FORBIDDEN, "forbidden", why, html);
            }
            // The sign-in forms are public: they are covered by the origin check (a session
            // the browser may still have is replaced on success).
            let session_csrf = match user.as_ref().map(|u| &u.via) {
                Some(AuthVia::Session { csrf, .. }) if !is_public(&path) => Some(csrf),
                _ => None,
            };
            if let Some(csrf) = session_csrf {
                req = match check_csrf(req, csrf).await {
                    Ok(r) => r,
                    Err((status, why)) => return deny(status, "forbidden", why, html),
                };
            }
        }
    }
    if let Some(u) = user {
        req.extensions_mut().insert(u);
    }
    next.run(req).await
}

/// Refuse requests a browser marks as coming from another site.
fn check_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    const CROSS: &str =
        "This request came from another web site and was refused. Use printgate's own pages.";
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(CROSS);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| CROSS)?;
    let Some((_, authority)) = origin.split_once("://") else {
        return Err(CROSS); // "null" and other opaque origins
    };
    let hosts = [headers.get(header::HOST), headers.get("x-forwarded-host")];
    let same = hosts
        .into_iter()
        .flatten()
        .filter_map(|h| h.to_str().ok())
        .any(|h| {
            h.trim()
                .eq_ignore_ascii_case(authority.trim_end_matches('/'))
        });
    if same { Ok(()) } else { Err(CROSS) }
}

const CSRF_MISSING: &str =
    "The form's security token is missing or out of date; reload the page and try again.";

/// Check the CSRF token of a cookie-authenticated state-changing request: from the
/// `X-CSRF-Token` header, the `csrf` field of a url-encoded form, or the `csrf` field of a
/// multipart form (which must come before any file). The body is handed on intact.
async fn check_csrf(req: Request, expected: &str) -> Result<Request, (StatusCode, &'static str)> {
    let forbidden = (StatusCode::FORBIDDEN, CSRF_MISSING);
    let matches = |given: &str| constant_time_eq(given.as_bytes(), expected.as_bytes());
    if let Some(h) = req.headers().get(CSRF_HEADER) {
        return match h.to_str() {
            Ok(given) if matches(given) => Ok(req),
            _ => Err(forbidden),
        };
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (parts, body) = req.into_parts();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large (more than 1 MiB).",
            )
        })?;
        let given = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.into_owned());
        return match given {
            Some(g) if matches(&g) => Ok(Request::from_parts(parts, Body::from(bytes))),
            _ => Err(forbidden),
        };
    }
    if content_type.starts_with("multipart/form-data") {
        let Some(boundary) = multipart_boundary(&content_type_raw(&parts.headers)) else {
            return Err(forbidden);
        };
        let mut stream = body.into_data_stream();
        let mut buf: Vec<u8> = Vec::new();
        let given = loop {
            match multipart_field(&buf, &boundary, CSRF_FIELD) {
                Peek::Found(v) => break Some(v),
                Peek::Absent => break None,
                Peek::NeedMore if buf.len() >= MULTIPART_PEEK_LIMIT => break None,
                Peek::NeedMore => match stream.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(_)) | None => break None,
                },
            }
        };
        return match given {
            Some(g) if matches(&g) => {
                let head = futures::stream::iter([Ok::<_, axum::Error>(bytes::Bytes::from(buf))]);
                Ok(Request::from_parts(
                    parts,
                    Body::from_stream(head.chain(stream)),
                ))
            }
            _ => Err(forbidden),
        };
    }
    Err(forbidden)
}

fn content_type_raw(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The boundary parameter of a `multipart/form-data` content type.
fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// Result of looking for a field at the start of a multipart body.
#[derive(Debug, PartialEq, Eq)]
enum Peek {
    Found(String),
    /// The body ended (or is malformed) without the field.
    Absent,
    /// Not decidable from the bytes so far.
    NeedMore,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Look for the text field `name` among the complete parts at the start of `buf`.
fn multipart_field(buf: &[u8], boundary: &str, name: &str) -> Peek {
    let delim = format!("--{boundary}");
    let next_delim = format!("\r\n--{boundary}");
    let Some(first) = find(buf, delim.as_bytes()) else {
        return Peek::NeedMore;
    };
    let wanted = format!("name=\"{name}\"");
    let mut pos = first + delim.len();
    for _ in 0..64 {
        let Some(rest) = buf.get(pos..) else {
            return Peek::NeedMore;
        };
        if rest.len() < 2 {
            return Peek::NeedMore;
        }
        if rest.starts_with(b"--") {
            return Peek::Absent;
        }
        if !rest.starts_with(b"\r\n") {
            return Peek::Absent;
        }
        let Some(headers_len) = find(&rest[2..], b"\r\n\r\n") else {
            return Peek::NeedMore;
        };
        let headers = String::from_utf8_lossy(&rest[2..2 + headers_len]).to_ascii_lowercase();
        let value_start = 2 + headers_len + 4;
        let Some(value_len) = find(&rest[value_start..], next_delim.as_bytes()) else {
            return Peek::NeedMore;
        };
        let is_wanted = headers.lines().any(|line| {
            line.starts_with("content-disposition:") && line.split(';').any(|p| p.trim() == wanted)
        });
        if is_wanted {
            let value = &rest[value_start..value_start + value_len];
            return Peek::Found(String::from_utf8_lossy(value).into_owned());
        }
        pos += value_start + value_len + next_delim.len();
    }
    Peek::Absent
}

/// `Set-Cookie` for a new session.
pub(super) fn session_set_cookie(value: &str, secure: bool) -> HeaderValue {
    let max_age = SESSION_LIFETIME_MS / 1000;
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("printgate_session=; Path=/; Max-Age=0"))
}

/// `Set-Cookie` that removes the session cookie.
pub(super) fn session_clear_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "printgate_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static("printgate_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// Whether cookies get the `Secure` flag: configured, or the request came through a TLS proxy.
pub(super) fn cookies_secure(auth: &AuthState, headers: &HeaderMap) -> bool {
    auth.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, &str, Option<&str>)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, value, file) in parts {
            b.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            b.extend_from_slice(value.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn multipart_csrf_is_found_before_the_file() {
        let b = body(&[("csrf", "tok", None), ("file", "DATA", Some("a.3mf"))]);
        assert_eq!(
            multipart_field(&b, "XyZ", "csrf"),
            Peek::Found("tok".into())
        );
        // Truncated before the value ends: undecided.
        assert_eq!(multipart_field(&b[..50], "XyZ", "csrf"), Peek::NeedMore);
        let b = body(&[("other", "1", None), ("csrf", "tok2", None)]);
        assert_eq!(
            multipart_field(&b, "XyZ", "csrf"),
            Peek::Found("tok2".into())
        );
        let b = body(&[("file", "DATA", Some("csrf"))]);
        assert_eq!(multipart_field(&b, "XyZ", "csrf"), Peek::Absent);
    }

    #[test]
    fn boundary_and_cookies_parse() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(multipart_boundary("multipart/form-data"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; printgate_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer pg_x"),
        );
        assert_eq!(api_key(&h), Some("pg_x"));
    }

    #[test]
    fn origin_checks() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("pi.local:8080"));
        assert!(check_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://pi.local:8080"),
        );
        assert!(check_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(check_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_origin(&h).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_origin(&h).is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_origin(&h).is_ok());
        assert!(is_public("/static/style.css") && is_public("/login") && !is_public("/"));
    }
}
