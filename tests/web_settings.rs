//! Settings → Notifications and Settings → Users against the real gateway (`printgate::start` on
//! 127.0.0.1:0, a real SQLite file) over HTTP: notification targets added, tested against a
//! webhook receiver started by the test, used by the notifier together with `[alerts]`,
//! persisted across a restart and deleted, with their secrets never in a page or API answer;
//! accounts added and deleted (never the last one, never oneself), password changes, and the
//! sessions that end with them; every new state-changing route refused without a session or
//! CSRF token; and all of it as plain form posts (no JavaScript).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use printgate::alerts::{Alert, AlertKind};
use printgate::config::Config;
use printgate::web::auth;
use printgate::{RunningGateway, start};
use reqwest::StatusCode;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(30);

struct App {
    running: RunningGateway,
    base: String,
    http: reqwest::Client,
}

fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "data_dir = '{}'\n{extra}\n[broker]\nmode = \"off\"\n\n[web]\nlisten = \"127.0.0.1:0\"\n",
        dir.display()
    );
    Config::parse_toml(&text, "test").unwrap()
}

async fn start_app(dir: &Path, extra: &str) -> App {
    let running = start(config(dir, extra), CancellationToken::new())
        .await
        .unwrap();
    let base = format!("http://{}", running.web_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    App {
        running,
        base,
        http,
    }
}

/// A signed-in browser: its session id and CSRF token.
#[derive(Clone)]
struct Session {
    sid: String,
    csrf: String,
}

impl Session {
    fn cookie(&self) -> String {
        format!("{}={}", auth::SESSION_COOKIE, self.sid)
    }
}

impl App {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn store(&self) -> &printgate::store::Store {
        &self.running.gateway.store
    }

    fn notifier(&self) -> &std::sync::Arc<printgate::alerts::Notifier> {
        self.running
            .gateway
            .safety
            .as_ref()
            .expect("safety runs")
            .notifier()
    }

    /// Create the first account through /setup and return its session.
    async fn setup_admin(&self) -> Session {
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
        let sid = session_of(resp.headers()).expect("setup signs in");
        self.session(sid).await
    }

    async fn session(&self, sid: String) -> Session {
        let html = self
            .http
            .get(self.url("/settings/notifications"))
            .header("cookie", format!("{}={sid}", auth::SESSION_COOKIE))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = csrf_in(&html).expect("the page has a csrf field");
        Session { sid, csrf }
    }

    /// Sign in with the login form; `None` when refused.
    async fn login(&self, user: &str, password: &str) -> Option<Session> {
        let resp = self
            .http
            .post(self.url("/login"))
            .form(&[("username", user), ("password", password), ("next", "/")])
            .send()
            .await
            .unwrap();
        if resp.status() != StatusCode::SEE_OTHER {
            return None;
        }
        let sid = session_of(resp.headers())?;
        Some(self.session(sid).await)
    }

    async fn get(&self, path: &str, s: &Session) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("cookie", s.cookie())
            .send()
            .await
            .unwrap()
    }

    /// A plain form post as a browser without JavaScript sends it (csrf field included).
    async fn post_form(&self, path: &str, s: &Session, form: &[(&str, &str)]) -> reqwest::Response {
        let mut fields: Vec<(&str, &str)> = vec![("csrf", s.csrf.as_str())];
        fields.extend_from_slice(form);
        self.http
            .post(self.url(path))
            .header("cookie", s.cookie())
            .header("accept", "text/html")
            .form(&fields)
            .send()
            .await
            .unwrap()
    }

    /// Whether a session still lets its browser in.
    async fn session_works(&self, s: &Session) -> bool {
        self.get("/api/v1/alert-targets", s).await.status() == StatusCode::OK
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }
}

fn session_of(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(auth::SESSION_COOKIE))
        .and_then(|line| {
            let value = line
                .split(';')
                .next()?
                .strip_prefix(&format!("{}=", auth::SESSION_COOKIE))?;
            (!value.is_empty()).then(|| value.to_string())
        })
}

fn csrf_in(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let rest = html.get(at..)?;
    Some(rest.get(..rest.find('"')?)?.to_string())
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// An API token of `user` (as if created under Settings → API tokens).
fn api_token(store: &printgate::store::Store, user: &str) -> String {
    let account = store.user_by_name(user).unwrap().unwrap();
    let token = auth::secrets::new_api_token();
    store
        .insert_api_token(
            account.id,
            "test",
            &auth::secrets::sha256_hex(&token),
            None,
            0,
        )
        .unwrap();
    token
}

// ---------------------------------------------------------------------------------------------
// A webhook / ntfy receiver on loopback
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .fallback(
            |State(tx): State<mpsc::UnboundedSender<Received>>,
             uri: axum::http::Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                let _ = tx.send(Received {
                    path: uri.path().to_string(),
                    headers,
                    body,
                });
                "ok"
            },
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), rx)
}

/// The next request that arrives on `path` (others are dropped), within [`WAIT`].
async fn next_on(rx: &mut mpsc::UnboundedReceiver<Received>, path: &str) -> Received {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(r) if r.path == path => return r,
                Some(_) => continue,
                None => panic!("receiver stopped"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on {path}"))
}

/// A loopback port nobody listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn assert_no_secret(text: &str, secrets: &[&str], what: &str) {
    for s in secrets {
        assert!(!text.contains(s), "{what} shows the secret {s:?}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------------------

const CONFIG_TOPIC: &str = "config-secret-topic";
const CONFIG_TOKEN: &str = "tk_config_secret";
const HOOK_PATH: &str = "hook-secret-id";
const API_HOOK_PATH: &str = "api-hook-secret";
const NTFY_TOKEN: &str = "tk_settings_secret";

fn alerts_toml(recv: &str) -> String {
    format!(
        "[[alerts.targets]]\nkind = \"ntfy\"\nurl = \"{recv}/{CONFIG_TOPIC}\"\ntoken = \"{CONFIG_TOKEN}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_targets_are_added_tested_used_kept_and_deleted_without_showing_secrets() {
    let (recv, mut got) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(dir.path(), &alerts_toml(&recv)).await;
    let s = app.setup_admin().await;
    let secrets = [
        CONFIG_TOPIC,
        CONFIG_TOKEN,
        HOOK_PATH,
        API_HOOK_PATH,
        NTFY_TOKEN,
    ];

    // The configured target is listed, masked.
    let html = app
        .get("/settings/notifications", &s)
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("printgate.toml"), "{html}");
    assert!(html.contains("(access token set)"), "{html}");
    assert_no_secret(&html, &secrets, "the notifications page");
    for link in [
        "/settings/users",
        "/settings/notifications",
        "/settings/tokens",
    ] {
        assert!(
            html.contains(&format!("href=\"{link}\"")),
            "nav lacks {link}"
        );
    }

    // Add a webhook with a plain form post (no JavaScript).
    let hook_url = format!("{recv}/{HOOK_PATH}");
    let resp = app
        .post_form(
            "/settings/notifications",
            &s,
            &[
                ("name", "Home Assistant"),
                ("kind", "webhook"),
                ("url", &hook_url),
                ("token", ""),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/settings/notifications?notice=added");
    let html = app
        .get("/settings/notifications?notice=added", &s)
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("Home Assistant") && html.contains("Target added"));
    assert_no_secret(&html, &secrets, "the notifications page");

    // A bad URL is refused with a message, nothing stored.
    let resp = app
        .post_form(
            "/settings/notifications",
            &s,
            &[("name", "x"), ("kind", "ntfy"), ("url", "ftp://nowhere/x")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("not an http(s) URL"));

    // The API lists both, without secrets; the webhook has a numeric id.
    let resp = app.get("/api/v1/alert-targets", &s).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert_no_secret(&text, &secrets, "GET /api/v1/alert-targets");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["id"], "config-0");
    assert_eq!(list[0]["from_config"], true);
    assert_eq!(list[0]["has_token"], true);
    assert_eq!(list[1]["name"], "Home Assistant");
    assert_eq!(list[1]["kind"], "webhook");
    let hook_id = list[1]["id"].as_str().unwrap().to_string();
    assert!(hook_id.parse::<i64>().is_ok());

    // "Send test notification" (form): the receiver gets the webhook JSON, the page says so.
    let resp = app
        .post_form(&format!("/settings/notifications/{hook_id}/test"), &s, &[])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Test notification delivered"), "{html}");
    assert_no_secret(&html, &secrets, "the test result page");
    let r = next_on(&mut got, &format!("/{HOOK_PATH}")).await;
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["kind"], "test");
    assert_eq!(json["title"], "printgate test alert");
    assert!(json["message"].as_str().unwrap().contains("admin"));

    // The configured ntfy target, tested through the API with the CSRF header.
    let resp = app
        .http
        .post(app.url("/api/v1/alert-targets/config-0/test"))
        .header("cookie", s.cookie())
        .header(auth::CSRF_HEADER, &s.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["delivered"], true, "{v}");
    let r = next_on(&mut got, &format!("/{CONFIG_TOPIC}")).await;
    assert_eq!(r.headers["authorization"], format!("Bearer {CONFIG_TOKEN}"));

    // A target that cannot be reached: the exact error is shown.
    let port = closed_port().await;
    let dead_url = format!("http://127.0.0.1:{port}/dead");
    let resp = app
        .post_form(
            "/settings/notifications",
            &s,
            &[("name", "Dead"), ("kind", "webhook"), ("url", &dead_url)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let api = api_token(app.store(), "admin");
    let list: serde_json::Value = app
        .http
        .get(app.url("/api/v1/alert-targets"))
        .header(auth::API_KEY_HEADER, &api)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dead_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Dead")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = app
        .post_form(&format!("/settings/notifications/{dead_id}/test"), &s, &[])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains(&format!("failed: cannot connect to 127.0.0.1:{port}")),
        "{html}"
    );
    let v: serde_json::Value = app
        .http
        .post(app.url(&format!("/api/v1/alert-targets/{dead_id}/test")))
        .header(auth::API_KEY_HEADER, &api)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["delivered"], false);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{v}"
    );
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/alert-targets/{dead_id}")))
        .header(auth::API_KEY_HEADER, &api)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // The API adds an ntfy target with a token; the answer does not show the URL path or token.
    let resp = app
        .http
        .post(app.url("/api/v1/alert-targets"))
        .header(auth::API_KEY_HEADER, &api)
        .json(&serde_json::json!({
            "name": "Phone",
            "kind": "ntfy",
            "url": format!("{recv}/{API_HOOK_PATH}"),
            "token": NTFY_TOKEN,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let text = resp.text().await.unwrap();
    assert_no_secret(&text, &secrets, "POST /api/v1/alert-targets");
    let created: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["has_token"], true);
    let resp = app
        .http
        .post(app.url("/api/v1/alert-targets"))
        .header(auth::API_KEY_HEADER, &api)
        .json(&serde_json::json!({"name": "x", "kind": "buzzer", "url": "http://h/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_request");

    // Real alerts go to the configured target and to both stored ones.
    assert_eq!(app.notifier().target_count(), 3);
    app.notifier().notify(Alert::new(
        AlertKind::PrintFinished,
        Some("p1"),
        "p1: print finished",
        "benchy finished".into(),
    ));
    let mut paths = Vec::new();
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, got.recv())
            .await
            .expect("an alert arrives")
            .expect("receiver runs");
        if r.path == format!("/{API_HOOK_PATH}") {
            assert_eq!(r.headers["authorization"], format!("Bearer {NTFY_TOKEN}"));
        }
        paths.push(r.path);
    }
    paths.sort();
    let mut want = vec![
        format!("/{API_HOOK_PATH}"),
        format!("/{CONFIG_TOPIC}"),
        format!("/{HOOK_PATH}"),
    ];
    want.sort();
    assert_eq!(paths, want);

    // Stored targets survive a restart and are used from the start.
    app.stop().await;
    let app = start_app(dir.path(), &alerts_toml(&recv)).await;
    assert_eq!(app.notifier().target_count(), 3);
    let s = app.login("admin", PASSWORD).await.expect("signs in");
    let list: serde_json::Value = app
        .get("/api/v1/alert-targets", &s)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);

    // Delete with the form; the notifier drops it at once. Configured targets cannot be deleted.
    let resp = app
        .post_form(
            &format!("/settings/notifications/{hook_id}/delete"),
            &s,
            &[],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/settings/notifications?notice=deleted");
    assert_eq!(app.notifier().target_count(), 2);
    assert!(
        app.notifier()
            .targets()
            .iter()
            .all(|t| t.target_ref.to_string() != hook_id)
    );
    let resp = app
        .post_form("/settings/notifications/config-0/delete", &s, &[])
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app
        .post_form(&format!("/settings/notifications/{hook_id}/test"), &s, &[])
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

const NEW_PASSWORD: &str = "a new password 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_added_and_deleted_and_their_sessions_end() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(dir.path(), "").await;
    let admin = app.setup_admin().await;

    let html = app
        .get("/settings/users", &admin)
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("admin (you)"), "{html}");
    assert!(
        html.contains("one role"),
        "the page says every account may do everything"
    );

    // Add with a plain form post.
    let resp = app
        .post_form(
            "/settings/users",
            &admin,
            &[
                ("username", "bob"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/settings/users?notice=added");
    for (name, pw, confirm, status, says) in [
        (
            "BOB",
            PASSWORD,
            PASSWORD,
            StatusCode::CONFLICT,
            "exists already",
        ),
        (
            "carl",
            "short",
            "short",
            StatusCode::BAD_REQUEST,
            "too short",
        ),
        (
            "carl",
            PASSWORD,
            "other one",
            StatusCode::BAD_REQUEST,
            "differ",
        ),
        (
            "no spaces",
            PASSWORD,
            PASSWORD,
            StatusCode::BAD_REQUEST,
            "user name",
        ),
    ] {
        let resp = app
            .post_form(
                "/settings/users",
                &admin,
                &[("username", name), ("password", pw), ("confirm", confirm)],
            )
            .await;
        assert_eq!(resp.status(), status, "{name}");
        assert!(resp.text().await.unwrap().contains(says), "{name}: {says}");
    }

    // Bob signs in on two devices and has an API token.
    let bob1 = app.login("bob", PASSWORD).await.expect("bob signs in");
    let bob2 = app
        .login("bob", PASSWORD)
        .await
        .expect("bob signs in again");
    let bob_token = api_token(app.store(), "bob");
    let html = app
        .get("/settings/users", &bob1)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("bob (you)") && !html.contains("$argon2"),
        "{html}"
    );

    // Nobody deletes their own account.
    let admin_id = app.store().user_by_name("admin").unwrap().unwrap().id;
    let bob_id = app.store().user_by_name("bob").unwrap().unwrap().id;
    let resp = app
        .post_form(&format!("/settings/users/{admin_id}/delete"), &admin, &[])
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(resp.text().await.unwrap().contains("your own account"));

    // Deleting bob ends both his sessions and his token; he cannot sign in any more.
    let resp = app
        .post_form(&format!("/settings/users/{bob_id}/delete"), &admin, &[])
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/settings/users?notice=deleted");
    assert!(!app.session_works(&bob1).await);
    assert!(!app.session_works(&bob2).await);
    let resp = app
        .http
        .get(app.url("/api/v1/users"))
        .header(auth::API_KEY_HEADER, &bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(app.login("bob", PASSWORD).await.is_none());
    assert!(app.session_works(&admin).await);
    let resp = app
        .post_form(&format!("/settings/users/{bob_id}/delete"), &admin, &[])
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Password change (form on the users page): needs the current password; the other
    // sessions end, the browser that changed it gets a new one.
    let other_device = app.login("admin", PASSWORD).await.expect("signs in");
    let resp = app
        .post_form(
            "/settings/password",
            &admin,
            &[
                ("current", "not it at all"),
                ("password", NEW_PASSWORD),
                ("confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(app.session_works(&other_device).await);
    let resp = app
        .post_form(
            "/settings/password",
            &admin,
            &[
                ("current", PASSWORD),
                ("password", NEW_PASSWORD),
                ("confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let fresh = session_of(resp.headers()).expect("a new session for this browser");
    assert!(!app.session_works(&other_device).await);
    assert!(!app.session_works(&admin).await);
    let admin = app.session(fresh).await;
    assert!(app.session_works(&admin).await);
    assert!(app.login("admin", PASSWORD).await.is_none());
    assert!(app.login("admin", NEW_PASSWORD).await.is_some());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_api_adds_lists_deletes_and_changes_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(dir.path(), "").await;
    let _admin = app.setup_admin().await;
    let token = api_token(app.store(), "admin");
    let api = |method: reqwest::Method, path: &str| {
        app.http
            .request(method, app.url(path))
            .header(auth::API_KEY_HEADER, &token)
    };

    let resp = api(reqwest::Method::POST, "/api/v1/users")
        .json(&serde_json::json!({"username": "carol", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let carol: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(carol["username"], "carol");
    assert_eq!(carol["is_you"], false);
    let carol_id = carol["id"].as_i64().unwrap();
    let resp = api(reqwest::Method::POST, "/api/v1/users")
        .json(&serde_json::json!({"username": "carol", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "name_taken");

    let text = api(reqwest::Method::GET, "/api/v1/users")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "carol"]);
    assert_eq!(list[0]["is_you"], true);

    // Carol changes her password from her browser session (CSRF header): a wrong current
    // password is refused; the right one ends all her sessions.
    let c1 = app.login("carol", PASSWORD).await.expect("carol signs in");
    let c2 = app
        .login("carol", PASSWORD)
        .await
        .expect("carol signs in again");
    let change = |s: &Session, current: &str| {
        app.http
            .post(app.url("/api/v1/users/me/password"))
            .header("cookie", s.cookie())
            .header(auth::CSRF_HEADER, &s.csrf)
            .json(&serde_json::json!({"current": current, "password": NEW_PASSWORD}))
            .send()
    };
    let resp = change(&c1, "wrong guess").await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "wrong_password");
    assert!(app.session_works(&c2).await);
    let resp = change(&c1, PASSWORD).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(!app.session_works(&c1).await);
    assert!(!app.session_works(&c2).await);
    assert!(app.login("carol", PASSWORD).await.is_none());
    assert!(app.login("carol", NEW_PASSWORD).await.is_some());

    // Not oneself; then carol goes.
    let admin_id = list[0]["id"].as_i64().unwrap();
    let resp = api(
        reqwest::Method::DELETE,
        &format!("/api/v1/users/{admin_id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "yourself");
    let resp = api(
        reqwest::Method::DELETE,
        &format!("/api/v1/users/{carol_id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(app.login("carol", NEW_PASSWORD).await.is_none());
    let resp = api(
        reqwest::Method::DELETE,
        &format!("/api/v1/users/{carol_id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Session and CSRF on every new state-changing route
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_mutating_route_needs_a_session_and_the_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(dir.path(), "").await;
    let s = app.setup_admin().await;
    let routes = [
        (reqwest::Method::POST, "/settings/notifications"),
        (reqwest::Method::POST, "/settings/notifications/1/delete"),
        (
            reqwest::Method::POST,
            "/settings/notifications/config-0/test",
        ),
        (reqwest::Method::POST, "/api/v1/alert-targets"),
        (reqwest::Method::DELETE, "/api/v1/alert-targets/1"),
        (reqwest::Method::POST, "/api/v1/alert-targets/1/test"),
        (reqwest::Method::POST, "/settings/users"),
        (reqwest::Method::POST, "/settings/users/1/delete"),
        (reqwest::Method::POST, "/api/v1/users"),
        (reqwest::Method::DELETE, "/api/v1/users/1"),
        (reqwest::Method::POST, "/api/v1/users/me/password"),
    ];
    for (method, path) in routes {
        let req = || app.http.request(method.clone(), app.url(path));
        let resp = req()
            .form(&[("csrf", s.csrf.as_str()), ("username", "x")])
            .send()
            .await
            .unwrap();
        assert!(
            matches!(
                resp.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ),
            "{method} {path} without a session: {}",
            resp.status()
        );
        let resp = req()
            .header("cookie", s.cookie())
            .form(&[("username", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} without csrf"
        );
        let resp = req()
            .header("cookie", s.cookie())
            .header(auth::CSRF_HEADER, "0000")
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} wrong csrf"
        );
    }
    // Nothing happened.
    assert_eq!(app.store().list_users().unwrap().len(), 1);
    assert!(app.store().list_alert_targets().unwrap().is_empty());
    app.stop().await;
}
