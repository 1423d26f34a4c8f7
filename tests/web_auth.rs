//! The security layer of the web UI, tested against the real gateway (`printgate::start` on
//! 127.0.0.1:0, a real SQLite file in a temporary data dir) over HTTP with reqwest: first-run
//! setup code, sign-in and sign-out, session fixation, CSRF and cross-site refusal on every
//! state-changing route (found by scanning the router sources, so new routes are covered
//! automatically), API tokens, sign-in rate limiting, password recovery, the demo account, and
//! that printer access codes never reach a page, an API response or a log line.

use printgate::config::Config;
use printgate::web::auth;
use printgate::{RunningGateway, start};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "correct horse battery";

struct App {
    running: RunningGateway,
    base: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "data_dir = '{}'\n{extra}\n[broker]\nmode = \"off\"\n\n[web]\nlisten = \"127.0.0.1:0\"\n",
        dir.display()
    )
}

async fn start_app_with(extra_toml: &str, web_extra: &str) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut text = config_text(dir.path(), extra_toml);
    text.push_str(web_extra);
    let config = Config::parse_toml(&text, "test").unwrap();
    let running = start(config, CancellationToken::new()).await.unwrap();
    let base = format!("http://{}", running.web_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    App {
        running,
        base,
        http,
        dir,
    }
}

async fn start_app() -> App {
    start_app_with("", "").await
}

impl App {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn store(&self) -> &printgate::store::Store {
        &self.running.gateway.store
    }

    /// Create the first account through /setup; returns its session id.
    async fn setup_admin(&self) -> String {
        let code = auth::issue_setup_code(self.store()).unwrap().unwrap();
        let resp = self
            .http
            .post(self.url("/setup"))
            .form(&[
                ("code", code.as_str()),
                ("username", "admin"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        session_of(resp.headers()).expect("setup signs the new admin in")
    }

    async fn login(&self, user: &str, password: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(self.url("/login")).form(&[
            ("username", user),
            ("password", password),
            ("next", "/"),
        ]);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("{}={c}", auth::SESSION_COOKIE));
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str, sid: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(s) = sid {
            req = req.header("cookie", format!("{}={s}", auth::SESSION_COOKIE));
        }
        req.send().await.unwrap()
    }

    /// The CSRF token of a session, read from the settings page like a browser would.
    async fn csrf(&self, sid: &str) -> String {
        let html = self
            .get("/settings/tokens", Some(sid))
            .await
            .text()
            .await
            .unwrap();
        csrf_in(&html).expect("the settings page has a csrf field")
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// The session id a response sets, if any.
fn session_of(headers: &HeaderMap) -> Option<String> {
    set_cookie_line(headers).and_then(|line| {
        let value = line
            .split(';')
            .next()?
            .strip_prefix(&format!("{}=", auth::SESSION_COOKIE))?;
        (!value.is_empty()).then(|| value.to_string())
    })
}

fn set_cookie_line(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(auth::SESSION_COOKIE))
        .map(String::from)
}

fn csrf_in(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let rest = html.get(at..)?;
    Some(rest.get(..rest.find('"')?)?.to_string())
}

fn error_paragraph(html: &str) -> String {
    html.split("class=\"error\"")
        .nth(1)
        .and_then(|s| s.split("</p>").next())
        .unwrap_or("")
        .to_string()
}

async fn json_error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = resp.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

// ---------------------------------------------------------------------------------------------
// The mutating routes, found in the router sources
// ---------------------------------------------------------------------------------------------

/// Every `.route("…", …)` in `src/web/` whose method router has a state-changing method, with
/// path parameters filled in. New routes are picked up without editing this test.
fn mutating_routes() -> Vec<(reqwest::Method, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("src/web")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
    }
    let mut routes = Vec::new();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let Some(path) = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|s| s.split('"').next())
            else {
                continue;
            };
            // The whole call: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            let call = &rest[..end];
            let concrete = fill_params(path);
            for (token, method) in [
                ("post(", reqwest::Method::POST),
                ("put(", reqwest::Method::PUT),
                ("patch(", reqwest::Method::PATCH),
                ("delete(", reqwest::Method::DELETE),
            ] {
                let found = call.match_indices(token).any(|(i, _)| {
                    call[..i]
                        .chars()
                        .last()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
                });
                if found {
                    routes.push((method, concrete.clone()));
                }
            }
        }
    }
    routes.sort_by(|a, b| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
    routes.dedup();
    routes
}

fn fill_params(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "1".to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn setup_needs_the_code_and_the_code_works_once() {
    let app = start_app().await;
    // First run: pages send the browser to /setup, the API answers 401.
    let resp = app
        .http
        .get(app.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/setup");
    let resp = app.get("/api/v1/printers", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_error_code(resp).await, "unauthorized");
    assert_eq!(app.get("/setup", None).await.status(), StatusCode::OK);

    let code = auth::issue_setup_code(app.store()).unwrap().unwrap();
    let form = |code: &str, user: &str| {
        vec![
            ("code".to_string(), code.to_string()),
            ("username".to_string(), user.to_string()),
            ("password".to_string(), PASSWORD.to_string()),
            ("confirm".to_string(), PASSWORD.to_string()),
        ]
    };
    // Without the code, or with a wrong one: no account.
    for wrong in ["", "AAAA-AAAA-AAAA"] {
        let resp = app
            .http
            .post(app.url("/setup"))
            .form(&form(wrong, "mallory"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(session_of(resp.headers()).is_none());
        assert!(resp.text().await.unwrap().contains("setup code is wrong"));
    }
    assert_eq!(app.store().user_count().unwrap(), 0);

    // The code as typed on a phone (lower case, spaces) works.
    let typed = code.to_lowercase().replace('-', " ");
    let resp = app
        .http
        .post(app.url("/setup"))
        .form(&form(&typed, "admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let sid = session_of(resp.headers()).unwrap();
    assert_eq!(app.get("/", Some(&sid)).await.status(), StatusCode::OK);

    // Single use: the same code again creates nothing, and setup is closed.
    let resp = app
        .http
        .post(app.url("/setup"))
        .form(&form(&code, "mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/login");
    assert!(session_of(resp.headers()).is_none());
    assert_eq!(app.store().user_count().unwrap(), 1);
    assert!(app.store().user_by_name("mallory").unwrap().is_none());
    assert_eq!(auth::issue_setup_code(app.store()).unwrap(), None);
    let resp = app.get("/setup", None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test]
async fn login_gives_a_new_session_id_and_logout_ends_it() {
    let app = start_app().await;
    let first = app.setup_admin().await;

    // Signing in from a browser that already has a session replaces it (fixation).
    let resp = app.login("admin", PASSWORD, Some(&first)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookie_line(resp.headers()).unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP by default: {cookie}"
    );
    let second = session_of(resp.headers()).unwrap();
    assert_ne!(first, second);
    assert_eq!(
        app.get("/api/v1/printers", Some(&first)).await.status(),
        StatusCode::UNAUTHORIZED,
        "the old session ended"
    );
    assert_eq!(
        app.get("/api/v1/printers", Some(&second)).await.status(),
        StatusCode::OK
    );

    // A session id planted by someone else is never adopted.
    let planted = "a".repeat(64);
    let resp = app.login("admin", PASSWORD, Some(&planted)).await;
    let third = session_of(resp.headers()).unwrap();
    assert_ne!(third, planted);
    assert_eq!(
        app.get("/api/v1/printers", Some(&planted)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Only SHA-256 of session ids is stored: the database file does not contain them.
    let db = std::fs::read(app.dir.path().join(printgate::DATABASE_FILE)).unwrap();
    let wal = std::fs::read(
        app.dir
            .path()
            .join(format!("{}-wal", printgate::DATABASE_FILE)),
    )
    .unwrap_or_default();
    for sid in [&second, &third] {
        let needle = sid.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle));
        assert!(!wal.windows(needle.len()).any(|w| w == needle));
    }

    // Behind a TLS proxy the cookie is Secure.
    let resp = app
        .http
        .post(app.url("/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert!(
        set_cookie_line(resp.headers())
            .unwrap()
            .contains("; Secure")
    );

    // Wrong password and unknown user: same status, same message.
    let wrong = app.login("admin", "not the password", None).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(session_of(wrong.headers()).is_none());
    let wrong = error_paragraph(&wrong.text().await.unwrap());
    let unknown = app.login("nobody", "not the password", None).await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let unknown = error_paragraph(&unknown.text().await.unwrap());
    assert_eq!(wrong, unknown);
    assert!(wrong.contains("Wrong user name or password"));

    // Logout needs the CSRF token, then ends the session.
    let resp = app
        .http
        .post(app.url("/logout"))
        .header("cookie", format!("printgate_session={third}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let csrf = app.csrf(&third).await;
    let resp = app
        .http
        .post(app.url("/logout"))
        .header("cookie", format!("printgate_session={third}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(
        set_cookie_line(resp.headers())
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        app.get("/api/v1/printers", Some(&third)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // A browser without a session is sent to the login page, keeping where it wanted to go.
    let resp = app
        .http
        .get(app.url("/settings/tokens"))
        .header("accept", "text/html")
        .header("cookie", format!("printgate_session={third}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        resp.headers()["location"],
        "/login?next=%2Fsettings%2Ftokens"
    );
    app.stop().await;
}

#[tokio::test]
async fn secure_cookies_flag_marks_the_cookie_secure() {
    let app = start_app_with("", "secure_cookies = true\n").await;
    let resp = {
        let code = auth::issue_setup_code(app.store()).unwrap().unwrap();
        app.http
            .post(app.url("/setup"))
            .form(&[
                ("code", code.as_str()),
                ("username", "admin"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ])
            .send()
            .await
            .unwrap()
    };
    let cookie = set_cookie_line(resp.headers()).unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_mutating_route_needs_a_session_and_the_csrf_token() {
    let routes = mutating_routes();
    let paths: Vec<&str> = routes.iter().map(|(_, p)| p.as_str()).collect();
    for expected in [
        "/login",
        "/logout",
        "/setup",
        "/settings/tokens",
        "/settings/tokens/1/revoke",
        "/settings/password",
        "/settings/notifications",
        "/settings/notifications/1/delete",
        "/settings/notifications/1/test",
        "/api/v1/alert-targets",
        "/api/v1/alert-targets/1",
        "/api/v1/alert-targets/1/test",
        "/api/v1/safety/emergency-stop",
        "/settings/users",
        "/settings/users/1/delete",
        "/api/v1/users",
        "/api/v1/users/1",
        "/api/v1/users/me/password",
    ] {
        assert!(
            paths.contains(&expected),
            "scan missed {expected}: {paths:?}"
        );
    }
    let app = start_app().await;
    let sid = app.setup_admin().await;
    let csrf = app.csrf(&sid).await;
    let cookie = format!("printgate_session={sid}");

    // Routes nobody registered are behind the guard too.
    let mut protected: Vec<(reqwest::Method, String)> = routes
        .iter()
        .filter(|(_, p)| !auth::is_public(p))
        .cloned()
        .collect();
    protected.push((reqwest::Method::POST, "/no-such-route".into()));
    protected.push((reqwest::Method::DELETE, "/".into()));

    for (method, path) in &protected {
        let send = |extra: &[(&str, &str)], form: &[(&str, &str)]| {
            let mut req = app.http.request(method.clone(), app.url(path));
            for (k, v) in extra {
                req = req.header(*k, *v);
            }
            req.form(form).send()
        };
        // No session, no token.
        let resp = send(&[], &[("csrf", &csrf)]).await.unwrap();
        assert!(
            matches!(
                resp.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ),
            "{method} {path} without a session: {}",
            resp.status()
        );
        // Session but no CSRF token, or a wrong one.
        let resp = send(&[("cookie", &cookie)], &[]).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} without csrf"
        );
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "forbidden");
        let resp = send(&[("cookie", &cookie)], &[("csrf", "0000")])
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} wrong csrf"
        );
        // Session and token, but sent from another site.
        let resp = send(
            &[("cookie", &cookie), ("origin", "http://evil.example")],
            &[("csrf", &csrf)],
        )
        .await
        .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} cross-site"
        );
        let resp = send(
            &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
            &[("csrf", &csrf)],
        )
        .await
        .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} cross-site"
        );
    }
    // The public forms refuse other sites as well (login CSRF).
    for (method, path) in routes.iter().filter(|(_, p)| auth::is_public(p)) {
        let resp = app
            .http
            .request(method.clone(), app.url(path))
            .header("origin", "null")
            .form(&[("username", "admin"), ("password", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} cross-site"
        );
    }

    // The token is accepted in the header and as the first field of a multipart form (the
    // body reaches the handler intact: the form handler then rejects multipart as the wrong
    // type, which proves the guard let it through).
    let resp = app
        .http
        .post(app.url("/settings/tokens"))
        .header("cookie", &cookie)
        .header(auth::CSRF_HEADER, &csrf)
        .form(&[("name", "by header")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let multipart = |token: Option<&str>| {
        let mut form = reqwest::multipart::Form::new();
        if let Some(t) = token {
            form = form.text("csrf", t.to_string());
        }
        form.part(
            "file",
            reqwest::multipart::Part::bytes(vec![7u8; 200_000]).file_name("big.gcode.3mf"),
        )
    };
    let resp = app
        .http
        .post(app.url("/settings/tokens"))
        .header("cookie", &cookie)
        .multipart(multipart(None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = app
        .http
        .post(app.url("/settings/tokens"))
        .header("cookie", &cookie)
        .multipart(multipart(Some(&csrf)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.stop().await;
}

#[tokio::test]
async fn api_tokens_are_shown_once_work_and_can_be_revoked() {
    let app = start_app().await;
    let sid = app.setup_admin().await;
    let csrf = app.csrf(&sid).await;
    let cookie = format!("printgate_session={sid}");
    let resp = app
        .http
        .post(app.url("/settings/tokens"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("name", "OrcaSlicer laptop")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    let at = html.find("<code>pg_").expect("new token shown") + "<code>".len();
    let token = html[at..at + 51].to_string();
    assert!(token.starts_with("pg_"));
    // Shown once.
    let again = app
        .get("/settings/tokens", Some(&sid))
        .await
        .text()
        .await
        .unwrap();
    assert!(again.contains("OrcaSlicer laptop") && !again.contains(&token));
    // Stored hashed.
    let db = std::fs::read(app.dir.path().join(printgate::DATABASE_FILE)).unwrap();
    let wal = std::fs::read(
        app.dir
            .path()
            .join(format!("{}-wal", printgate::DATABASE_FILE)),
    )
    .unwrap_or_default();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
    assert!(!wal.windows(token.len()).any(|w| w == token.as_bytes()));

    // Both header forms work; API-token requests need no CSRF token.
    let ok = app
        .http
        .get(app.url("/api/v1/printers"))
        .header("x-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = app
        .http
        .get(app.url("/api/v1/printers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let resp = app
        .http
        .post(app.url("/settings/tokens"))
        .header("x-api-key", &token)
        .form(&[("name", "made by a script")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A wrong key is a 401 with the JSON error body, also on public pages; never on assets.
    for path in ["/api/v1/printers", "/", "/login"] {
        let resp = app
            .http
            .get(app.url(path))
            .header("x-api-key", "pg_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(json_error_code(resp).await, "unauthorized");
    }
    let resp = app
        .http
        .post(app.url("/settings/tokens"))
        .header("x-api-key", "pg_wrong")
        .form(&[("name", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("x-api-key", "pg_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Revoke: the token stops working at once.
    let id = app.store().list_api_tokens(1).unwrap();
    let id = id
        .iter()
        .find(|t| t.name == "OrcaSlicer laptop")
        .unwrap()
        .id;
    let resp = app
        .http
        .post(app.url(&format!("/settings/tokens/{id}/revoke")))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = app
        .http
        .get(app.url("/api/v1/printers"))
        .header("x-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn repeated_sign_in_failures_lock_with_a_clear_message() {
    let app = start_app().await;
    app.setup_admin().await;
    for attempt in 1..=4 {
        let resp = app.login("admin", "wrong password", None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let fifth = app.login("admin", "wrong password", None).await;
    assert_eq!(fifth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fifth.headers()["retry-after"], "30");
    let text = fifth.text().await.unwrap();
    assert!(text.contains("Wait 30 seconds, then try again"), "{text}");
    // Locked: even the right password is refused until the time is up.
    let sixth = app.login("admin", PASSWORD, None).await;
    assert_eq!(sixth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(session_of(sixth.headers()).is_none());
    assert!(sixth.text().await.unwrap().contains("try again (at "));
    // Unknown user names are limited the same way (no hint which accounts exist).
    for _ in 0..4 {
        app.login("ghost", "x", None).await;
    }
    assert_eq!(
        app.login("ghost", "x", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

#[tokio::test]
async fn password_change_needs_the_current_password_and_signs_out_elsewhere() {
    let app = start_app().await;
    let sid = app.setup_admin().await;
    let other = session_of(app.login("admin", PASSWORD, None).await.headers()).unwrap();
    let csrf = app.csrf(&sid).await;
    let change = |current: &str, new: &str| {
        app.http
            .post(app.url("/settings/password"))
            .header("cookie", format!("printgate_session={sid}"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("current", current),
                ("password", new),
                ("confirm", new),
            ])
            .send()
    };
    assert_eq!(
        change("wrong", "a new long password")
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        change(PASSWORD, "short").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let resp = change(PASSWORD, "a new long password").await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let fresh = session_of(resp.headers()).unwrap();
    for old in [&sid, &other] {
        assert_eq!(
            app.get("/api/v1/printers", Some(old)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.get("/api/v1/printers", Some(&fresh)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login("admin", "a new long password", None)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    app.stop().await;
}

#[tokio::test]
async fn set_password_recovers_or_creates_an_account() {
    let app = start_app().await;
    let sid = app.setup_admin().await;
    let config = app.dir.path().join("printgate.toml");
    std::fs::write(&config, config_text(app.dir.path(), "")).unwrap();
    let run = |input: &str, user: &str| {
        let mut out = Vec::new();
        let code = auth::set_password_from(
            &config,
            user,
            &mut std::io::Cursor::new(input.as_bytes().to_vec()),
            &mut out,
        );
        (code, String::from_utf8(out).unwrap())
    };
    let (code, out) = run("recovered pw 1\nrecovered pw 2\n", "admin");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("differ"));
    let (code, out) = run("recovered pw 1\n", "admin");
    assert_eq!(code, 2, "{out}");
    let (code, out) = run("recovered pw 1\nrecovered pw 1\n", "admin");
    assert_eq!(code, 0, "{out}");
    // Every session of the account ended; the new password works, the old one not.
    assert_eq!(
        app.get("/api/v1/printers", Some(&sid)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("admin", PASSWORD, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("admin", "recovered pw 1", None).await.status(),
        StatusCode::SEE_OTHER
    );
    // A missing account is created.
    let (code, out) = run("second admin pw\nsecond admin pw\n", "alice");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Created"));
    assert_eq!(
        app.login("alice", "second admin pw", None).await.status(),
        StatusCode::SEE_OTHER
    );
    app.stop().await;
}

#[tokio::test]
async fn demo_account_and_demo_token() {
    let app = start_app().await;
    auth::ensure_demo_account(app.store()).unwrap();
    auth::ensure_demo_account(app.store()).unwrap(); // idempotent
    assert_eq!(app.store().user_count().unwrap(), 1);
    assert_eq!(auth::issue_setup_code(app.store()).unwrap(), None);
    let resp = app.login(auth::DEMO_USER, auth::DEMO_PASSWORD, None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = app
        .http
        .get(app.url("/api/v1/printers"))
        .header("x-api-key", auth::DEMO_API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.store().list_api_tokens(1).unwrap().len(), 1);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Access codes never leak
// ---------------------------------------------------------------------------------------------

/// Everything logged in this test process (a global subscriber, installed once).
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer_buf = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || LogWriter(writer_buf.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Same-site links and GET forms of a page.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "action=\""] {
        for piece in html.split(attr).skip(1) {
            if let Some(link) = piece.split('"').next()
                && link.starts_with('/')
                && !link.starts_with("//")
            {
                out.push(link.replace("&amp;", "&"));
            }
        }
    }
    out
}

#[tokio::test]
async fn access_codes_never_appear_in_pages_api_responses_or_logs() {
    let log = captured_log();
    let sim = printgate::sim::SimPrinter::start(printgate::sim::SimConfig::new(
        printgate::config::Model::P1S,
    ))
    .await
    .unwrap();
    let access_code = sim.access_code();
    let printer = format!(
        "[[printers]]\nname = \"Leak check\"\nmodel = \"P1S\"\nserial = \"{}\"\nhost = \"{}\"\naccess_code = \"{}\"\nmqtt_port = {}\nftps_port = {}\n",
        sim.serial(),
        sim.host(),
        access_code,
        sim.mqtt_port(),
        sim.ftps_port()
    );
    let app = start_app_with(&printer, "").await;
    // Wait (bounded) until the gateway is connected, so pages show a live printer.
    let mut rx = app.running.gateway.printers[0].link.subscribe();
    tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.link.is_online() && s.state.is_some()),
    )
    .await
    .expect("printer online within 30 s")
    .unwrap();

    let sid = app.setup_admin().await;
    let csrf = app.csrf(&sid).await;
    let html = app
        .http
        .post(app.url("/settings/tokens"))
        .header("cookie", format!("printgate_session={sid}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "crawler"),
            ("default_printer", "Leak check"),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains(&access_code));
    let at = html.find("<code>pg_").unwrap() + "<code>".len();
    let token = html[at..at + 51].to_string();

    // Crawl every page reachable from the start page, as a browser and as an API client.
    // Seeds: the start page, the API, and the pages no link may lead to yet.
    let mut queue: Vec<String> = [
        "/",
        "/api/v1/printers",
        "/healthz",
        "/settings/tokens",
        "/login",
        "/setup",
    ]
    .map(String::from)
    .to_vec();
    let mut seen = std::collections::HashSet::new();
    let mut pages = 0;
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) || seen.len() > 200 {
            continue;
        }
        for auth_header in [
            ("cookie", format!("printgate_session={sid}")),
            ("x-api-key", token.clone()),
        ] {
            let resp = app
                .http
                .get(app.url(&path))
                .header(auth_header.0, &auth_header.1)
                .header("accept", "text/html,application/json")
                .send()
                .await
                .unwrap();
            let headers = format!("{:?}", resp.headers());
            let body = resp.text().await.unwrap();
            assert!(!headers.contains(&access_code), "{path} headers");
            assert!(!body.contains(&access_code), "access code in {path}");
            queue.extend(links(&body));
            pages += 1;
        }
    }
    assert!(pages >= 6, "crawled only {pages} responses: {seen:?}");
    assert!(seen.contains("/settings/tokens"));
    app.stop().await;
    let logged = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    assert!(logged.contains("signed in") || logged.contains("first account"));
    assert!(!logged.contains(&access_code), "access code in the log");
}

// ---------------------------------------------------------------------------------------------
// The real binary prints a working setup code
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn serve_prints_a_setup_code_that_creates_the_first_account() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("printgate.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    f.write_all(config_text(dir.path(), "").as_bytes()).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_printgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for stream in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    let (mut code, mut addr, mut code_in_log) = (None, None, false);
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = rx.recv().await {
            eprintln!("child: {line}");
            if let Some(c) = line.split("printgate setup code: ").nth(1) {
                code = Some(c.trim().to_string());
            }
            if line.contains("enter the setup code") {
                code_in_log = true;
            }
            if let Some(a) = line.split("web interface on http://").nth(1) {
                addr = Some(a.trim().to_string());
            }
            if code.is_some() && addr.is_some() && code_in_log {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no setup code / address printed");
    let (code, addr) = (code.unwrap(), addr.unwrap());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .post(format!("http://{addr}/setup"))
        .form(&[
            ("code", code.as_str()),
            ("username", "admin"),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(session_of(resp.headers()).is_some());
    child.kill().await.unwrap();
}
