//! The web UI in a real headless Chromium, driven over WebDriver (fantoccini + chromedriver)
//! against the real gateway (`printgate::start`) and simulated printers on loopback.
//!
//! `the_whole_flow_in_a_browser`: first-run setup with the setup code → sign out → sign in →
//! upload a few-MB 3MF with the progress bar reaching its end → the job waits for the plate →
//! Plate clear behind its confirmation → the simulator receives exactly one start → the card
//! follows the print live over SSE (the test never reloads) and ends with "Remove the print,
//! then tap Plate clear" → a second tap starts the next job. Screenshots at a 390×844 phone
//! viewport and at 1280×900 go to `test-output/browser/` (ignored by git).
//!
//! `the_main_flow_works_without_javascript`: the same upload → tap flow with JavaScript off
//! (plain form posts and redirects; a refused action redirects back with its reason).
//!
//! The page never lies about an action (at a 390×844 phone viewport):
//! `a_ticked_stop_survives_live_updates_and_the_stop_takes_effect` (live events while "Stop the
//! print for good" is ticked leave it ticked and the page un-reloaded; Stop then stops the
//! simulated printer and the page says so), `plate_clear_is_offered_only_once_the_print_has_ended`
//! (no Plate clear button while printing; it appears live when the print ends) and
//! `a_refused_action_shows_its_reason_on_the_page` (pause on an idle printer, moving the only
//! job, cancel). They also take light and dark screenshots at 390×844 and 1366×900 and check that
//! nothing overflows sideways.
//!
//! `every_page_fits_a_phone_and_passes_axe`: every page (dashboard with a finished and a running
//! print and a waiting job, printer page, the Plate clear confirmation with its camera
//! picture, history, upload, safety, the four settings pages,
//! sign-in) at 390×844 and 1366×900 in light and dark mode: no horizontal overflow, and axe-core
//! (pinned, installed by `.ci/run` into `target/axe`) finds no serious or critical violation.
//! Screenshots of each go to `target/test-output/`.
//!
//! Chromium and chromedriver come from Debian (`/usr/bin/chromium`, `/usr/bin/chromedriver`;
//! override with `PRINTGATE_CHROMIUM` / `PRINTGATE_CHROMEDRIVER`). When they are missing the
//! tests fail with instructions: CI installs them, so a skip would hide a broken UI.

mod common;

use common::{TestGateway, starts};
use fantoccini::{Client, ClientBuilder, Locator};
use printgate::config::Model;
use printgate::jobs::model::{JobId, JobState};
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::web::auth;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const USER: &str = "admin";
const PASSWORD: &str = "correct horse battery";
/// How long any one thing in the browser may take.
const UI_WAIT: Duration = Duration::from_secs(30);
/// Simulated seconds per real second: the fixture's 20-minute print takes about 4 s.
const TIME_SCALE: f64 = 300.0;
const PRINT_SECS: u64 = 1200;

/// Two Chromiums at once are too much for a 2-core CI machine: the tests take turns.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tool(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} not found: the browser tests need Chromium and its WebDriver. Install them with \
         `apt-get install -y chromium chromium-driver` (Debian), or point {env} at the binary.",
        path.display()
    );
    path
}

/// `test-output/browser/` in the checkout (ignored by git).
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test-output")
        .join("browser");
    std::fs::create_dir_all(&dir).expect("create the test output folder");
    dir
}

/// chromedriver on an ephemeral loopback port, killed when dropped.
struct Driver {
    _child: Child,
    url: String,
}

async fn start_driver() -> Driver {
    let bin = tool("PRINTGATE_CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        l.local_addr().expect("port").port()
    };
    let mut child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("started successfully") {
                return true;
            }
        }
        false
    };
    let ok = tokio::time::timeout(UI_WAIT, ready).await;
    assert!(
        matches!(ok, Ok(true)),
        "chromedriver did not report that it started"
    );
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Driver {
        _child: child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// A fresh headless Chromium (own profile directory, no network beyond loopback).
async fn browser(driver: &Driver, profile: &Path, javascript: bool) -> Client {
    let chromium = tool("PRINTGATE_CHROMIUM", "/usr/bin/chromium");
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1280,900".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let mut prefs = json!({});
    if !javascript {
        args.push("--blink-settings=scriptEnabled=false".into());
        prefs = json!({ "profile.managed_default_content_settings.javascript": 2 });
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args, "prefs": prefs }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("chromedriver opens a Chromium session")
}

/// Poll the page (waiting on a browser cannot be event-driven from here) until `check` holds.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let polled = async {
        loop {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(UI_WAIT, polled).await.is_err() {
        panic!("timed out waiting for: {what}");
    }
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(UI_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css:?} appeared: {e}"))
}

async fn wait_path(c: &Client, path: &str) {
    wait_until(&format!("the browser at {path}"), || async {
        c.current_url().await.is_ok_and(|u| u.path() == path)
    })
    .await;
}

async fn fill(c: &Client, css: &str, text: &str) {
    let el = wait_for(c, css).await;
    el.clear().await.ok();
    el.send_keys(text).await.expect("type into a field");
}

async fn click(c: &Client, css: &str) {
    wait_for(c, css).await.click().await.expect("click");
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Resize the window so that the page's viewport is `w`×`h` CSS pixels.
async fn set_viewport(c: &Client, w: u32, h: u32) {
    c.set_window_size(w, h).await.expect("resize");
    let inner = c
        .execute("return [window.innerWidth, window.innerHeight]", vec![])
        .await
        .ok()
        .and_then(|v| serde_json::from_value::<(u32, u32)>(v).ok());
    if let Some((iw, ih)) = inner
        && (iw, ih) != (w, h)
    {
        let dw = w.saturating_sub(iw);
        let dh = h.saturating_sub(ih);
        c.set_window_size(w + dw, h + dh).await.expect("resize");
    }
}

/// Screenshots of the current page at a 390×844 phone viewport and at 1280×900.
async fn screenshots(c: &Client, dir: &Path, name: &str) {
    for (label, w, h) in [("phone", 390, 844), ("desktop", 1280, 900)] {
        set_viewport(c, w, h).await;
        let png = c.screenshot().await.expect("screenshot");
        let path = dir.join(format!("{name}-{label}.png"));
        std::fs::write(&path, png).expect("write a screenshot");
        println!("screenshot: {}", path.display());
    }
}

/// Write a sliced P1S file to `dir` (`padding` extra bytes of G-code make it big).
fn fixture_file(dir: &Path, name: &str, padding: u64) -> PathBuf {
    let bytes = build_3mf(&Fixture3mf {
        prediction_secs: PRINT_SECS,
        layers: 20,
        gcode_padding_bytes: padding,
        ..Fixture3mf::for_model(Model::P1S)
    });
    let path = dir.join(format!("{name}.gcode.3mf"));
    std::fs::write(&path, bytes).expect("write the fixture file");
    path
}

fn job_named(t: &TestGateway, name: &str) -> JobId {
    let state = t.gw().dispatcher.state();
    state
        .jobs
        .values()
        .find(|j| j.name == name)
        .map(|j| j.id)
        .unwrap_or_else(|| panic!("no queued job called {name:?}"))
}

/// First-run setup through the page, with the code the gateway issued.
async fn setup_account(c: &Client, t: &TestGateway) {
    let code = auth::issue_setup_code(&t.gw().store)
        .expect("setup code stored")
        .expect("no account exists yet");
    c.goto(&t.url("/")).await.expect("open the gateway");
    // Without an account the guard sends the browser to sign in; the sign-in page links setup.
    c.goto(&t.url("/setup")).await.expect("open setup");
    fill(c, "input[name=code]", &code).await;
    fill(c, "input[name=username]", USER).await;
    fill(c, "input[name=password]", PASSWORD).await;
    fill(c, "input[name=confirm]", PASSWORD).await;
    click(c, "form[action='/setup'] button").await;
    wait_path(c, "/").await;
    wait_for(c, "article.card").await;
}

async fn upload(c: &Client, t: &TestGateway, file: &Path) {
    c.goto(&t.url("/upload"))
        .await
        .expect("open the upload page");
    wait_for(c, "select[name=printer]")
        .await
        .select_by_value("printer 1")
        .await
        .expect("choose the printer");
    let input = wait_for(c, "input[type=file][name=file]").await;
    input
        .send_keys(&file.display().to_string())
        .await
        .expect("choose the file");
    click(c, "form.upload button").await;
}

async fn tap_plate_clear(c: &Client) {
    click(c, "article[data-printer='printer 1'] a.button").await;
    wait_path(c, "/printers/printer%201/plate-clear").await;
    click(c, "input[name=confirm]").await;
    click(c, "form.confirm button").await;
    wait_path(c, "/").await;
    let notice = text_of(c, "p.notice").await;
    assert!(
        !notice.contains("not confirmed") && !notice.contains("not accepted"),
        "tap refused: {notice}"
    );
}

/// Whether the page's scripts run: with scripting off, the parser turns the `<noscript>`
/// content (the dashboard's meta refresh) into elements; with it on, it stays text.
async fn scripting_enabled(c: &Client) -> bool {
    c.find(Locator::Css("noscript meta")).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_in_a_browser() {
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    println!("browser test output: {}", out.display());
    let t = TestGateway::start(&[Model::P1S], TIME_SCALE).await;
    t.wait_online().await;
    let sim = &t.sims[0];
    let driver = start_driver().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path(), true).await;

    // First run: the setup code creates the account (and signs in).
    setup_account(&c, &t).await;
    assert!(scripting_enabled(&c).await, "JavaScript is on in this run");
    screenshots(&c, &out, "01-dashboard-empty").await;

    // Sign out, then sign in through the sign-in page.
    click(&c, "form.logout button").await;
    wait_path(&c, "/login").await;
    screenshots(&c, &out, "02-login").await;
    fill(&c, "input[name=username]", USER).await;
    fill(&c, "input[name=password]", PASSWORD).await;
    click(&c, "form[action='/login'] button").await;
    wait_path(&c, "/").await;
    wait_for(&c, "article[data-printer='printer 1']").await;

    // Upload a 4 MB file and record every change of the progress bar (the page moves on to
    // the dashboard when the upload ends, so the record is kept in sessionStorage).
    let files = tempfile::tempdir().expect("upload dir");
    let big = fixture_file(files.path(), "big benchy", 4 * 1024 * 1024);
    let big_len = std::fs::metadata(&big).expect("fixture size").len();
    c.goto(&t.url("/upload")).await.expect("open upload");
    wait_for(&c, "#upload-progress").await;
    screenshots(&c, &out, "03-upload").await;
    c.execute(
        r#"var bar = document.getElementById("upload-progress");
           sessionStorage.setItem("pg-progress", "[]");
           new MutationObserver(function () {
             var seen = JSON.parse(sessionStorage.getItem("pg-progress"));
             seen.push([Number(bar.value), Number(bar.max), bar.hidden]);
             sessionStorage.setItem("pg-progress", JSON.stringify(seen));
           }).observe(bar, { attributes: true });
           return true;"#,
        vec![],
    )
    .await
    .expect("install the progress recorder");
    wait_for(&c, "select[name=printer]")
        .await
        .select_by_value("printer 1")
        .await
        .expect("choose the printer");
    wait_for(&c, "input[type=file][name=file]")
        .await
        .send_keys(&big.display().to_string())
        .await
        .expect("choose the file");
    click(&c, "form.upload button").await;
    wait_path(&c, "/").await;
    let notice = wait_for(&c, "p.notice")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(notice.contains("added to the queue"), "{notice}");
    let seen = c
        .execute(
            "return JSON.parse(sessionStorage.getItem('pg-progress') || '[]')",
            vec![],
        )
        .await
        .expect("read the progress record");
    let seen: Vec<(f64, f64, bool)> =
        serde_json::from_value(seen).expect("progress record is [value, max, hidden] triples");
    let (value, max, hidden) = *seen.last().expect("the progress bar changed");
    assert!(!hidden, "the progress bar was shown: {seen:?}");
    assert!(
        max > 0.0 && value == max,
        "progress reached its end: {seen:?}"
    );
    if max != 100.0 {
        // The browser reported byte counts: the whole file went up.
        assert!(max >= big_len as f64, "{max} < {big_len}: {seen:?}");
    }
    println!("upload progress samples (value, max, hidden): {seen:?}");

    // A second, small job for the same printer.
    let small = fixture_file(files.path(), "second part", 0);
    upload(&c, &t, &small).await;
    wait_path(&c, "/").await;
    wait_for(&c, "p.notice").await;

    // Both jobs wait for the plate; nothing has started on the printer.
    let first = job_named(&t, "big benchy");
    let second = job_named(&t, "second part");
    t.wait_job(first, JobState::Staged).await;
    c.goto(&t.url("/")).await.expect("dashboard");
    wait_for(&c, &format!("li[data-job='{first}']")).await;
    wait_for(&c, &format!("li[data-job='{second}']")).await;
    let plate = text_of(&c, "article[data-printer='printer 1'] .plate strong").await;
    assert!(plate.contains("tap Plate clear"), "{plate}");
    assert!(starts(sim).is_empty(), "nothing starts before a tap");
    screenshots(&c, &out, "04-waiting-for-plate").await;

    // Plate clear behind its confirmation page: exactly one start.
    tap_plate_clear(&c).await;
    t.wait_job(first, JobState::Printing).await;
    let log = starts(sim);
    assert_eq!(log.len(), 1, "one tap, one start: {log:?}");

    // From here on the test only watches, never navigates: with JavaScript on there is no
    // meta refresh, so every change the page shows arrived over the SSE stream (/live).
    wait_until("the card shows the print running", || async {
        text_of(
            &c,
            "article[data-printer='printer 1'] [data-field=gcode_state]",
        )
        .await
            == "RUNNING"
    })
    .await;
    screenshots(&c, &out, "05-printing").await;
    t.wait_job(first, JobState::Finished).await;
    wait_until("the card shows the print finished", || async {
        text_of(
            &c,
            "article[data-printer='printer 1'] [data-field=gcode_state]",
        )
        .await
            == "FINISH"
    })
    .await;
    let plate = wait_for(
        &c,
        "article[data-printer='printer 1'] .plate[data-plate=occupied] strong",
    )
    .await
    .text()
    .await
    .unwrap_or_default();
    assert_eq!(plate, "Remove the print, then tap Plate clear");
    assert_eq!(starts(sim).len(), 1, "the next job waits for a new tap");
    screenshots(&c, &out, "06-finished-remove-the-print").await;

    // The second tap starts the next job; the card shows it live.
    tap_plate_clear(&c).await;
    t.wait_job(second, JobState::Printing).await;
    assert_eq!(starts(sim).len(), 2, "one start per tap");
    let job_state = format!("li[data-job='{second}'] [data-field=job-state]");
    wait_until("the page shows the second job printing", || async {
        text_of(&c, "article[data-printer='printer 1'] [data-field=job]")
            .await
            .contains("second part")
            || text_of(&c, &job_state).await == "printing"
    })
    .await;
    screenshots(&c, &out, "07-next-job").await;

    c.close().await.expect("close the browser");
    drop(driver);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_flow_works_without_javascript() {
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    let t = TestGateway::start(&[Model::P1S], TIME_SCALE).await;
    t.wait_online().await;
    let sim = &t.sims[0];
    let driver = start_driver().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path(), false).await;

    setup_account(&c, &t).await;
    assert!(
        !scripting_enabled(&c).await,
        "JavaScript is off in this run"
    );

    // An idle printer's page offers no Pause (nothing to pause).
    c.goto(&t.url("/printers/printer%201"))
        .await
        .expect("printer page");
    wait_for(&c, "article.card .plate").await;
    assert!(
        c.find(Locator::Css("form[action$='/control/pause']"))
            .await
            .is_err(),
        "an idle printer offers Pause"
    );

    let files = tempfile::tempdir().expect("upload dir");
    let file = fixture_file(files.path(), "no script benchy", 256 * 1024);
    upload(&c, &t, &file).await;
    wait_path(&c, "/").await;
    let notice = wait_for(&c, "p.notice")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(notice.contains("added to the queue"), "{notice}");
    let job = job_named(&t, "no script benchy");
    // The only job cannot move: neither ↑ nor ↓ is offered.
    for action in ["up", "down"] {
        assert!(
            c.find(Locator::Css(&format!(
                "form[action='/jobs/{job}/{action}']"
            )))
            .await
            .is_err(),
            "the only job offers {action}"
        );
    }
    t.wait_job(job, JobState::Staged).await;
    assert!(starts(sim).is_empty());
    screenshots(&c, &out, "nojs-01-queued").await;

    tap_plate_clear(&c).await;
    t.wait_job(job, JobState::Printing).await;
    assert_eq!(starts(sim).len(), 1, "one tap, one start");
    // Without scripts the page refreshes itself (meta refresh in <noscript>).
    wait_until("the refreshed page shows the print", || async {
        let s = text_of(
            &c,
            "article[data-printer='printer 1'] [data-field=gcode_state]",
        )
        .await;
        s == "RUNNING" || s == "FINISH"
    })
    .await;
    screenshots(&c, &out, "nojs-02-printing").await;

    c.close().await.expect("close the browser");
    drop(driver);
    t.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The page never lies about an action: live updates change cards in place (no reload, so a
// form being filled survives), Plate clear is offered only when a tap can be accepted, and
// every action shows its result or the reason it was refused.

/// A Chrome DevTools command through chromedriver (`goog/cdp/execute`), e.g. to emulate
/// `prefers-color-scheme: dark` for screenshots.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: serde_json::Value,
}

type UrlError = <reqwest::Url as std::str::FromStr>::Err;

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, UrlError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }
    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (axum::http::Method::POST, Some(body.to_string()))
    }
}

async fn color_scheme(c: &Client, scheme: &str) {
    c.issue_cmd(Cdp {
        cmd: "Emulation.setEmulatedMedia",
        params: json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
    })
    .await
    .expect("emulate the color scheme");
    let applied = c
        .execute(
            &format!("return matchMedia('(prefers-color-scheme: {scheme})').matches"),
            vec![],
        )
        .await
        .expect("read the media query");
    assert_eq!(applied, json!(true), "prefers-color-scheme: {scheme}");
}

/// Screenshots of the current page at 390×844 and 1366×900, light and dark, scrolled so that
/// `show` (a CSS selector) is in view.
async fn screenshots_light_dark(c: &Client, dir: &Path, name: &str, show: &str) {
    for scheme in ["light", "dark"] {
        color_scheme(c, scheme).await;
        for (label, w, h) in [("phone", 390, 844), ("desktop", 1366, 900)] {
            set_viewport(c, w, h).await;
            c.execute(
                "var e = document.querySelector(arguments[0]); \
                 if (e) e.scrollIntoView({block: 'center'}); else window.scrollTo(0, 0); \
                 return true",
                vec![json!(show)],
            )
            .await
            .expect("scroll");
            // Nothing may stick out sideways at either width.
            let overflow = c
                .execute(
                    "return document.documentElement.scrollWidth - window.innerWidth",
                    vec![],
                )
                .await
                .expect("measure the page");
            let png = c.screenshot().await.expect("screenshot");
            let path = dir.join(format!("{name}-{label}-{scheme}.png"));
            std::fs::write(&path, png).expect("write a screenshot");
            println!("screenshot: {}", path.display());
            assert!(
                overflow.as_i64().is_some_and(|o| o <= 0),
                "{name} at {w}px overflows sideways by {overflow}px (see {})",
                path.display()
            );
        }
    }
    color_scheme(c, "light").await;
    set_viewport(c, 390, 844).await;
}

/// A signed-in phone-size browser (JavaScript on) against a fresh gateway with simulated
/// printers; `close` ends both.
struct PhoneSession {
    t: TestGateway,
    c: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl PhoneSession {
    async fn open(models: &[Model], time_scale: f64) -> PhoneSession {
        let t = TestGateway::start(models, time_scale).await;
        t.wait_online().await;
        let driver = start_driver().await;
        let profile = tempfile::tempdir().expect("profile dir");
        let c = browser(&driver, profile.path(), true).await;
        set_viewport(&c, 390, 844).await;
        setup_account(&c, &t).await;
        PhoneSession {
            t,
            c,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn close(self) {
        self.c.close().await.expect("close the browser");
        drop(self._driver);
        self.t.shutdown().await;
    }
}

/// Mark the window: the mark survives only as long as the page is not reloaded.
async fn mark_window(c: &Client) {
    c.execute("window.__pgNoReload = 'kept'; return true", vec![])
        .await
        .expect("set the marker");
}

async fn page_was_not_reloaded(c: &Client) -> bool {
    c.execute("return window.__pgNoReload === 'kept'", vec![])
        .await
        .is_ok_and(|v| v == json!(true))
}

/// How many live messages of `kind` the page has applied (0 before the script counts any).
async fn live_count(c: &Client, kind: &str) -> i64 {
    c.execute(
        &format!("return (window.printgateLive && window.printgateLive[{kind:?}]) || 0"),
        vec![],
    )
    .await
    .ok()
    .and_then(|v| v.as_i64())
    .unwrap_or(0)
}

/// Wait until the page applied the live stream's first message. (A script without the
/// counters, from before in-place updates, is not waited for.)
async fn wait_live(c: &Client) {
    wait_until("the page's live stream is up", || async {
        let counted = c
            .execute("return typeof window.printgateLive === 'object'", vec![])
            .await
            .is_ok_and(|v| v == json!(true));
        !counted || live_count(c, "state").await > 0
    })
    .await;
}

/// The printers as the JSON API shows them (a client of the API, not the page).
async fn api_printer(t: &TestGateway, name: &str) -> serde_json::Value {
    let token = common::demo_api_token(&t.gw().store);
    let all: Vec<serde_json::Value> = reqwest::Client::new()
        .get(t.url("/api/v1/printers"))
        .header(auth::API_KEY_HEADER, token)
        .send()
        .await
        .expect("GET /api/v1/printers")
        .json()
        .await
        .expect("printers JSON");
    all.into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no printer {name:?} in the API"))
}

/// Start a print on `printer` (queue a job, tap) and wait until the printer reports it.
async fn start_print(t: &TestGateway, printer: &str, key: &str) -> JobId {
    let job = t.queue(Some(printer), Model::P1S, key).await;
    let notices = t.tap(printer, &format!("tap-{key}")).await;
    assert!(
        notices.iter().all(|n| !n.contains("not accepted")),
        "{notices:?}"
    );
    t.wait_job(job.id, JobState::Printing).await;
    job.id
}

async fn wait_gcode_state(t: &TestGateway, index: usize, ok: impl Fn(&str) -> bool) {
    let mut rx = t.gw().printers[index].link.subscribe();
    tokio::time::timeout(
        UI_WAIT,
        rx.wait_for(|s| {
            s.state
                .as_ref()
                .is_some_and(|st| ok(st.gcode_state.as_str()))
        }),
    )
    .await
    .expect("the printer reached the state in time")
    .expect("link alive");
}

async fn flash_text(c: &Client, scope: &str) -> String {
    text_of(c, &format!("{scope} [data-flash]")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticked_stop_survives_live_updates_and_the_stop_takes_effect() {
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    // A 600 s print at 10× takes a minute: long enough to tick, update and stop.
    let session = PhoneSession::open(&[Model::P1S, Model::P1S], 10.0).await;
    let (t, c) = (&session.t, &session.c);

    let job = start_print(t, "printer 1", "long print").await;
    wait_gcode_state(t, 0, |s| s == "RUNNING").await;
    c.goto(&t.url("/printers/printer%201"))
        .await
        .expect("printer page");
    wait_for(c, "form[action$='/control/stop'] input[name=confirm]").await;
    wait_live(c).await;
    // Printing: Pause and Stop are offered, Resume is not.
    wait_for(c, "form[action$='/control/pause'] button").await;
    assert!(
        c.find(Locator::Css("form[action$='/control/resume']"))
            .await
            .is_err(),
        "a printing printer offers Resume"
    );
    // The time left is an estimate or words, never "0 min left"; the finish is a clock time.
    wait_until("the card shows an estimate and a finish time", || async {
        c.find(Locator::Css("[data-field=finish]")).await.is_ok()
    })
    .await;
    let remaining = text_of(c, "[data-field=remaining]").await;
    assert!(
        remaining.ends_with("left") && !remaining.starts_with("0 min"),
        "{remaining}"
    );
    let finish = text_of(c, "[data-field=finish]").await;
    assert!(
        finish.len() >= 5 && finish.contains(':'),
        "the finish is a clock time: {finish:?}"
    );
    mark_window(c).await;
    click(c, "form[action$='/control/stop'] input[name=confirm]").await;

    // Live events while the box is ticked: another printer's plate tap and a queue change.
    let queue_before = live_count(c, "queue").await;
    let printer_before = live_count(c, "printer").await;
    t.tap("printer 2", "other tap").await;
    t.queue(Some("printer 2"), Model::P1S, "queued meanwhile")
        .await;
    wait_until(
        "the page applied the queue change (or reloaded)",
        || async {
            !page_was_not_reloaded(c).await
                || (live_count(c, "queue").await > queue_before
                    && live_count(c, "printer").await > printer_before)
        },
    )
    .await;
    assert!(
        page_was_not_reloaded(c).await,
        "a live update reloaded the page"
    );
    let ticked = wait_for(c, "form[action$='/control/stop'] input[name=confirm]")
        .await
        .is_selected()
        .await
        .expect("read the checkbox");
    assert!(ticked, "the ticked 'Stop the print for good' was reset");

    click(c, "form[action$='/control/stop'] button").await;
    wait_until("the page shows the stop's result", || async {
        flash_text(c, "article.card").await.contains("stopped")
    })
    .await;
    let flash = flash_text(c, "article.card").await;
    assert!(page_was_not_reloaded(c).await);
    let state = api_printer(t, "printer 1").await;
    let gcode_state = state["gcode_state"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !["PREPARE", "RUNNING", "PAUSE"].contains(&gcode_state.as_str()),
        "the printer still prints after the page said {flash:?}: {state}"
    );
    let mut rx = t.gw().dispatcher.subscribe();
    let ended = tokio::time::timeout(
        UI_WAIT,
        rx.wait_for(|s| {
            s.jobs
                .get(&job)
                .is_none_or(|j| j.state != JobState::Printing)
        }),
    )
    .await
    .is_ok();
    assert!(ended, "the job still prints after the stop");
    assert_ne!(
        t.gw().store.job(job).expect("job row").map(|j| j.state),
        Some(JobState::Finished),
        "the print ran to its end"
    );
    println!("stop result on the page: {flash}");
    wait_until(
        "the stopped printer's card no longer offers Pause",
        || async {
            c.find(Locator::Css("form[action$='/control/pause']"))
                .await
                .is_err()
        },
    )
    .await;
    screenshots_light_dark(c, &out, "page-printer-stopped", "article.card .controls").await;
    c.goto(&t.url("/")).await.expect("dashboard");
    wait_for(c, "article[data-printer='printer 2']").await;
    screenshots_light_dark(c, &out, "page-dashboard", "header").await;

    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plate_clear_is_offered_only_once_the_print_has_ended() {
    let _turn = ONE_BROWSER.lock().await;
    // A 600 s print at 60× takes about 10 s.
    let session = PhoneSession::open(&[Model::P1S], 60.0).await;
    let (t, c) = (&session.t, &session.c);

    let card = "article[data-printer='printer 1']";
    let button = format!("{card} a[href$='/plate-clear']");
    let job = start_print(t, "printer 1", "short print").await;
    c.goto(&t.url("/")).await.expect("dashboard");
    wait_for(c, card).await;
    wait_live(c).await;
    mark_window(c).await;
    let state = text_of(c, &format!("{card} [data-field=gcode_state]")).await;
    assert!(
        ["PREPARE", "RUNNING"].contains(&state.as_str()),
        "printing: {state}"
    );
    assert!(
        c.find(Locator::Css(&button)).await.is_err(),
        "a printing printer's card offers Plate clear"
    );
    let plate = text_of(c, &format!("{card} .plate strong")).await;
    assert!(plate.contains("after the print"), "{plate}");
    // The same on the printer page.
    c.goto(&t.url("/printers/printer%201"))
        .await
        .expect("printer page");
    wait_for(c, "article.card .plate").await;
    if t.gw().store.job(job).ok().flatten().map(|j| j.state) == Some(JobState::Printing) {
        assert!(
            c.find(Locator::Css("article.card a[href$='/plate-clear']"))
                .await
                .is_err(),
            "the printer page offers Plate clear while printing"
        );
    }
    c.goto(&t.url("/")).await.expect("dashboard");
    wait_for(c, card).await;
    wait_live(c).await;
    mark_window(c).await;

    t.wait_job(job, JobState::Finished).await;
    wait_until("Plate clear appears once the print has ended", || async {
        c.find(Locator::Css(&button)).await.is_ok()
    })
    .await;
    assert!(
        page_was_not_reloaded(c).await,
        "the button appeared by a reload"
    );
    let plate = text_of(c, &format!("{card} .plate strong")).await;
    assert_eq!(plate, "Remove the print, then tap Plate clear");

    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_action_shows_its_reason_on_the_page() {
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    let session = PhoneSession::open(&[Model::P1S], TIME_SCALE).await;
    let (t, c) = (&session.t, &session.c);

    // An idle printer offers no print controls: there is nothing to pause, resume or stop.
    c.goto(&t.url("/printers/printer%201"))
        .await
        .expect("printer page");
    wait_for(c, "article.card .plate").await;
    for action in ["pause", "resume", "stop"] {
        assert!(
            c.find(Locator::Css(&format!("form[action$='/control/{action}']")))
                .await
                .is_err(),
            "an idle printer's page offers {action}"
        );
    }

    // Two waiting jobs: ↑ only where it moves something, ↓ likewise.
    let job = t.queue(Some("printer 1"), Model::P1S, "first job").await;
    let second = t.queue(Some("printer 1"), Model::P1S, "second job").await;
    c.goto(&t.url("/")).await.expect("dashboard");
    let button = |id: i64, action: &str| format!("form[action='/jobs/{id}/{action}'] button");
    wait_for(c, &button(job.id, "down")).await;
    wait_for(c, &button(second.id, "up")).await;
    for (id, action) in [(job.id, "up"), (second.id, "down")] {
        assert!(
            c.find(Locator::Css(&button(id, action))).await.is_err(),
            "job {id} offers {action}, which would do nothing"
        );
    }
    // A page that is out of date may still post a move that does nothing (here: the first
    // job's ↓ form turned into the ↑ an older page showed): refused in place, with the reason.
    wait_live(c).await;
    mark_window(c).await;
    c.execute(
        "var f = document.querySelector(arguments[0]).closest('form'); \
         f.action = f.action.replace(/\\/down$/, '/up'); return f.action",
        vec![json!(button(job.id, "down"))],
    )
    .await
    .expect("make the form out of date");
    click(c, &format!("form[action$='/jobs/{}/up'] button", job.id)).await;
    wait_until("the page shows why the job did not move", || async {
        flash_text(c, "section.queue").await.contains("already")
    })
    .await;
    assert!(page_was_not_reloaded(c).await, "answered in place");
    let flash = wait_for(c, "section.queue [data-flash]").await;
    assert_eq!(
        flash.attr("role").await.expect("role").as_deref(),
        Some("status"),
        "the message is announced (ARIA live region)"
    );
    let cancel_second = format!(
        "li[data-job='{}'] details.confirm-cancel summary",
        second.id
    );
    click(c, &cancel_second).await;
    click(
        c,
        &format!("form[action='/jobs/{}/cancel'] button", second.id),
    )
    .await;
    wait_until("the second job leaves the queue", || async {
        c.find(Locator::Css(&format!("li[data-job='{}']", second.id)))
            .await
            .is_err()
    })
    .await;

    // Cancelling it: the result is shown, and the queue updates in place.
    // Cancel asks first (Cancel… opens the confirmation), then says what it did.
    let cancel = format!("form[action='/jobs/{}/cancel'] button", job.id);
    assert!(
        !wait_for(c, &cancel)
            .await
            .is_displayed()
            .await
            .expect("visible?"),
        "Cancel acts without a confirmation"
    );
    click(
        c,
        &format!("li[data-job='{}'] details.confirm-cancel summary", job.id),
    )
    .await;
    click(c, &cancel).await;
    wait_until("the page shows the cancel", || async {
        flash_text(c, "section.queue").await.contains("cancelled")
    })
    .await;
    wait_until("the cancelled job leaves the queue", || async {
        c.find(Locator::Css(&format!("li[data-job='{}']", job.id)))
            .await
            .is_err()
    })
    .await;
    assert!(page_was_not_reloaded(c).await);
    screenshots_light_dark(c, &out, "page-dashboard-cancelled", "section.queue").await;

    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_gateway_is_unreachable_the_cards_are_grey_and_their_actions_off() {
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    let session = PhoneSession::open(&[Model::P1S], 10.0).await;
    start_print(&session.t, "printer 1", "long print").await;
    wait_gcode_state(&session.t, 0, |s| s == "RUNNING").await;
    let PhoneSession {
        t,
        c,
        _driver,
        _profile,
    } = session;
    c.goto(&t.url("/")).await.expect("dashboard");
    wait_for(&c, "form[action$='/control/stop'] button").await;
    wait_live(&c).await;
    let grey = "document.body.classList.contains('gateway-lost')";
    let greyed = |c: &Client| {
        let c = c.clone();
        async move {
            c.execute(&format!("return {grey}"), vec![])
                .await
                .expect("read the page")
                .as_bool()
                .unwrap_or(false)
        }
    };
    assert!(!greyed(&c).await, "greyed while the gateway is up");
    mark_window(&c).await;

    t.shutdown().await;
    wait_until("the page notices the gateway is gone", || async {
        greyed(&c).await
    })
    .await;
    let banner = wait_for(&c, "#offline").await;
    assert!(banner.is_displayed().await.expect("banner"), "banner shown");
    let text = banner.text().await.expect("banner text");
    assert!(text.contains("unreachable since"), "{text}");
    let enabled: i64 = c
        .execute(
            "return [...document.querySelectorAll('[data-flash-scope] button')].filter(b => !b.disabled).length",
            vec![],
        )
        .await
        .expect("count buttons")
        .as_i64()
        .unwrap_or(-1);
    assert_eq!(
        enabled, 0,
        "a button can still be pressed while the gateway is unreachable"
    );
    let plate_link_off = c
        .execute(
            "return [...document.querySelectorAll('a.button')].every(a => a.getAttribute('aria-disabled') === 'true')",
            vec![],
        )
        .await
        .expect("links")
        .as_bool();
    assert_eq!(
        plate_link_off,
        Some(true),
        "a Plate clear link stays active"
    );
    assert!(page_was_not_reloaded(&c).await, "the page was not reloaded");
    screenshots_light_dark(&c, &out, "page-dashboard-unreachable", "header").await;
    c.close().await.expect("close the browser");
}

/// axe-core's `axe.min.js`, installed (pinned) by `.ci/run` into `target/axe`; override with
/// `PRINTGATE_AXE_JS`.
fn axe_source() -> String {
    let path = std::env::var_os("PRINTGATE_AXE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/axe/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} not readable ({e}): the accessibility check needs axe-core. Run .ci/run, or \
             `npm install --prefix target/axe axe-core@4.10.3`, or point PRINTGATE_AXE_JS at \
             axe.min.js.",
            path.display()
        )
    })
}

/// Buttons and form fields on the page less than 44 CSS pixels tall (a finger's target).
async fn small_targets(c: &Client) -> Vec<String> {
    let found = c
        .execute(
            "return Array.from(document.querySelectorAll( \
               'button, .button, select, textarea, input:not([type=hidden]):not([type=checkbox]):not([type=radio])' \
             )).filter(function (e) { \
               var r = e.getBoundingClientRect(); return r.width > 0 && r.height < 43.5; \
             }).map(function (e) { \
               return e.outerHTML.slice(0, 80) + ' ' + Math.round(e.getBoundingClientRect().height) + ' px'; \
             })",
            vec![],
        )
        .await
        .expect("measure the targets");
    serde_json::from_value(found).expect("a list")
}

/// axe-core's serious and critical violations on the current page, as "rule: nodes" lines.
async fn axe_violations(c: &Client, axe: &str) -> Vec<(String, String)> {
    let loaded = c
        .execute("return typeof window.axe === 'object'", vec![])
        .await
        .is_ok_and(|v| v == json!(true));
    if !loaded {
        c.execute(&format!("{axe}\n;return true"), vec![])
            .await
            .expect("inject axe-core");
    }
    let found = c
        .execute_async(
            "var done = arguments[arguments.length - 1]; \
             axe.run(document).then(function (r) { \
               if (!r.passes.length) { done([['axe-error', 'no rule ran']]); return; } \
               done(r.violations.filter(function (v) { \
                 return v.impact === 'serious' || v.impact === 'critical' \
                   || v.id === 'page-has-heading-one' || v.id === 'empty-table-header' \
                   || v.id === 'heading-order'; \
               }).map(function (v) { \
                 return [v.id, v.nodes.slice(0, 4).map(function (n) { \
                   return n.target.join(' ') + ' (' + (n.failureSummary || '').split('\\n').slice(1, 2).join('').trim() + ')'; \
                 }).join('; ')]; \
               })); \
             }, function (e) { done([['axe-error', String(e)]]); });",
            vec![],
        )
        .await
        .expect("run axe-core");
    serde_json::from_value(found).expect("axe answer")
}

/// Every page, signed in and out, at 390×844 and 1366×900 in light and dark mode: nothing
/// sticks out sideways, and axe-core finds no serious or critical violation. Screenshots of
/// each go to `target/test-output/` as `<page>-<phone|desktop>-<light|dark>.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_fits_a_phone_and_passes_axe() {
    let _turn = ONE_BROWSER.lock().await;
    let axe = axe_source();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output");
    std::fs::create_dir_all(&out).expect("create target/test-output");
    let session = PhoneSession::open(&[Model::P1S, Model::P1S], TIME_SCALE).await;
    let (t, c) = (&session.t, &session.c);
    c.update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
        Some(UI_WAIT),
        Some(UI_WAIT),
        None,
    ))
    .await
    .expect("script timeout");

    // Something on every page: a finished print (history, printer page readings), a print
    // running, a waiting job, an API token.
    let done = start_print(t, "printer 1", "finished print").await;
    t.wait_job(done, JobState::Finished).await;
    start_print(t, "printer 2", "running print").await;
    t.queue(Some("printer 1"), Model::P1S, "waiting job").await;
    c.goto(&t.url("/settings/tokens"))
        .await
        .expect("tokens page");
    fill(
        c,
        "input[name=name]",
        "OrcaSlicer on the laptop in the workshop",
    )
    .await;
    click(c, "form[action='/settings/tokens'] button").await;
    wait_for(c, "form[action$='/revoke']").await;

    let pages = [
        ("dashboard", "/"),
        ("printer", "/printers/printer%201"),
        // The finished print is still on printer 1's plate: the camera's picture shows it.
        ("plate-clear", "/printers/printer%201/plate-clear"),
        ("history", "/history"),
        ("upload", "/upload"),
        ("safety", "/safety"),
        ("settings-printers", "/settings/printers"),
        ("settings-users", "/settings/users"),
        ("settings-notifications", "/settings/notifications"),
        ("settings-tokens", "/settings/tokens"),
        ("login", "/login"),
    ];
    let mut findings: Vec<String> = Vec::new();
    for (name, path) in pages {
        if name == "login" {
            c.goto(&t.url("/")).await.expect("dashboard");
            click(c, "form.logout button").await;
            wait_path(c, "/login").await;
        }
        c.goto(&t.url(path)).await.expect("open the page");
        wait_for(c, "main, body").await;
        for scheme in ["light", "dark"] {
            color_scheme(c, scheme).await;
            for (label, w, h) in [("phone", 390, 844), ("desktop", 1366, 900)] {
                set_viewport(c, w, h).await;
                let overflow = c
                    .execute(
                        // clientWidth: the viewport without a desktop scrollbar (a phone's
                        // scrollbars overlay the page).
                        "return document.documentElement.scrollWidth \
                         - document.documentElement.clientWidth",
                        vec![],
                    )
                    .await
                    .expect("measure the page")
                    .as_i64()
                    .unwrap_or(i64::MAX);
                let png = c.screenshot().await.expect("screenshot");
                std::fs::write(out.join(format!("{name}-{label}-{scheme}.png")), png)
                    .expect("write a screenshot");
                if overflow > 0 {
                    findings.push(format!(
                        "{name} {label}: {overflow} px wider than the screen"
                    ));
                }
                for small in small_targets(c).await {
                    findings.push(format!("{name} {label}: smaller than 44 px: {small}"));
                }
                for (rule, nodes) in axe_violations(c, &axe).await {
                    findings.push(format!("{name} {label} {scheme}: axe {rule}: {nodes}"));
                }
            }
        }
    }
    findings.dedup();
    println!("screenshots in {}", out.display());
    assert!(
        findings.is_empty(),
        "{} problems:\n{}",
        findings.len(),
        findings.join("\n")
    );
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_shows_why_on_the_form_and_keeps_the_chosen_file() {
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    let t = TestGateway::start(&[Model::P1S, Model::X1C], TIME_SCALE).await;
    t.wait_online().await;
    let driver = start_driver().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path(), true).await;
    setup_account(&c, &t).await;

    // A P1S file sent to the X1 Carbon ("printer 2").
    let files = tempfile::tempdir().expect("upload dir");
    let file = fixture_file(files.path(), "wrong printer cube", 0);
    c.goto(&t.url("/upload"))
        .await
        .expect("open the upload page");
    wait_for(&c, "select[name=printer]")
        .await
        .select_by_value("printer 2")
        .await
        .expect("choose the printer");
    wait_for(&c, "input[type=file][name=file]")
        .await
        .send_keys(&file.display().to_string())
        .await
        .expect("choose the file");
    click(&c, "form.upload button").await;
    let error = wait_for(&c, "form.upload #upload-error")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(
        error.contains("P1S") && error.contains("printer 1"),
        "the refusal on the form says what the file fits: {error}"
    );
    assert_eq!(
        c.current_url().await.expect("url").path(),
        "/upload",
        "the browser stays on the form"
    );
    let kept = c
        .execute(
            r#"return [document.querySelector("input[type=file][name=file]").files.length,
                       document.querySelector("select[name=printer]").value]"#,
            vec![],
        )
        .await
        .expect("read the form");
    assert_eq!(
        kept,
        json!([1, "printer 1"]),
        "the chosen file stays chosen and the printer it fits is selected"
    );
    screenshots_light_dark(&c, &out, "upload-refused", "#upload-refusal").await;
    assert!(
        t.gw().dispatcher.state().jobs.is_empty(),
        "nothing was queued"
    );

    // Sent again as it now stands: queued, once.
    click(&c, "form.upload button").await;
    wait_path(&c, "/").await;
    let notice = wait_for(&c, "p.notice")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(notice.contains("added to the queue"), "{notice}");
    job_named(&t, "wrong printer cube");
    assert_eq!(t.gw().dispatcher.state().jobs.len(), 1);

    c.close().await.expect("close the browser");
    drop(driver);
    t.shutdown().await;
}

/// The bytes behind `url` as the signed-in browser fetches them (its own cookie, its own cache).
async fn fetch_in_browser(c: &Client, url: &str) -> Vec<u8> {
    use base64::Engine;
    let answer = c
        .execute_async(
            "const [url, done] = arguments; \
             fetch(url, {credentials: 'same-origin'}) \
               .then(r => r.ok ? r.arrayBuffer() : Promise.reject(r.status + ' ' + r.statusText)) \
               .then(b => { let s = ''; new Uint8Array(b).forEach(x => s += String.fromCharCode(x)); \
                            done('ok:' + btoa(s)); }) \
               .catch(e => done('error:' + e));",
            vec![json!(url)],
        )
        .await
        .expect("run the fetch");
    let text = answer.as_str().unwrap_or_default();
    let b64 = text
        .strip_prefix("ok:")
        .unwrap_or_else(|| panic!("the browser could not fetch {url}: {text}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 from the page")
}

/// Whether the image `css` is loaded and shown (a broken or missing image has no natural width).
async fn image_shown(c: &Client, css: &str) -> bool {
    c.execute(
        "const i = document.querySelector(arguments[0]); \
         return !!(i && i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0)",
        vec![json!(css)],
    )
    .await
    .is_ok_and(|v| v == json!(true))
}

/// Issue 18, done when: at phone size, open the Plate clear confirmation, see the camera's
/// picture, confirm, and the History entry of the start that tap allowed shows the same image
/// (the bytes the browser fetches from history are the bytes the confirmation showed). The
/// print then finishes with an object on the simulated plate, so a fresh camera frame differs
/// from the confirmed one: history shows what was confirmed, not what the camera sees now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_of_a_start_shows_the_camera_picture_confirmed_for_it() {
    use base64::Engine;
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    let session = PhoneSession::open(&[Model::P1S], TIME_SCALE).await;
    let (t, c) = (&session.t, &session.c);
    let job = t.queue(Some("printer 1"), Model::P1S, "boat").await;

    // The dashboard's Plate clear leads to the confirmation, which shows the camera's picture.
    c.goto(&t.url("/")).await.expect("dashboard");
    click(
        c,
        "article[data-printer='printer 1'] a[href$='/plate-clear']",
    )
    .await;
    wait_path(c, "/printers/printer%201/plate-clear").await;
    let picture = "figure.plate-picture img";
    wait_until("the confirmation shows the camera picture", || {
        image_shown(c, picture)
    })
    .await;
    let src = wait_for(c, picture)
        .await
        .attr("src")
        .await
        .expect("src")
        .expect("the picture has a src");
    let seen = base64::engine::general_purpose::STANDARD
        .decode(
            src.strip_prefix("data:image/jpeg;base64,")
                .expect("the page carries the picture itself"),
        )
        .expect("base64 picture");
    let caption = text_of(c, "figure.plate-picture figcaption").await;
    assert!(caption.contains("when this page opened"), "{caption}");
    screenshots_light_dark(c, &out, "camera-confirmation", picture).await;

    // Confirm: the tap starts the job, which prints and finishes.
    click(c, "input[name=confirm]").await;
    click(c, "form.confirm button").await;
    wait_path(c, "/").await;
    let notice = text_of(c, "p.notice").await;
    assert!(notice.contains("marked clear"), "{notice}");
    t.wait_job(job.id, JobState::Finished).await;

    // History: the row of that start shows the picture that was confirmed.
    c.goto(&t.url("/history")).await.expect("history");
    let shot = format!(
        "//tr[td[contains(., 'printgate job {}')]]//figure[@class='plate-shot']//img",
        job.id
    );
    let img = c
        .wait()
        .at_most(UI_WAIT)
        .for_element(Locator::XPath(&shot))
        .await
        .unwrap_or_else(|e| panic!("no confirmed picture in the history row of the start: {e}"));
    let url = img.attr("src").await.expect("src").expect("a src");
    let css = format!("img[src='{url}']");
    c.execute(
        "document.querySelector(arguments[0]).scrollIntoView({block: 'center'}); return true",
        vec![json!(css)],
    )
    .await
    .expect("scroll");
    wait_until("the history shows the confirmed picture", || {
        image_shown(c, &css)
    })
    .await;
    let shown = fetch_in_browser(c, &url).await;
    assert_eq!(
        shown, seen,
        "history shows exactly the picture the confirmation showed"
    );
    assert!(
        jpeg_decoder::Decoder::new(&shown[..]).decode().is_ok(),
        "a JPEG another decoder reads"
    );
    let now = fetch_in_browser(c, "/printers/printer%201/snapshot.jpg").await;
    assert_ne!(
        now, seen,
        "the finished object is on the plate now; history kept the plate as confirmed"
    );
    screenshots_light_dark(c, &out, "camera-history", &css).await;
    session.close().await;
}

/// Issue 18: a dashboard card offers a small camera picture on demand. Loading the dashboard
/// opens no camera connection at the printer (nothing auto-loads); tapping "Camera picture"
/// shows the picture on the card (loaded, inside the card) and a printer without a camera
/// printgate reads (X1C) has no such link. Phone size, light and dark screenshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_shows_a_camera_picture_only_when_asked() {
    let _turn = ONE_BROWSER.lock().await;
    let out = output_dir();
    let session = PhoneSession::open(&[Model::P1S, Model::X1C], TIME_SCALE).await;
    let (t, c) = (&session.t, &session.c);
    c.goto(&t.url("/")).await.expect("dashboard");
    wait_for(c, "article[data-printer='printer 1']").await;
    wait_live(c).await;
    let cam = t.sims[0].camera().expect("a P1S has a camera");
    assert_eq!(
        cam.connections(),
        0,
        "the dashboard opens no camera before it is asked"
    );
    assert!(
        c.find(Locator::Css(
            "article[data-printer='printer 2'] a[data-snapshot]"
        ))
        .await
        .is_err(),
        "no camera link for a camera printgate cannot read"
    );
    let img = "article[data-printer='printer 1'] figure.card-snapshot img";
    assert!(c.find(Locator::Css(img)).await.is_err());

    click(c, "article[data-printer='printer 1'] a[data-snapshot]").await;
    wait_until("the card shows the camera picture", || image_shown(c, img)).await;
    assert_eq!(
        c.current_url().await.expect("url").path(),
        "/",
        "the picture opens on the card"
    );
    let caption = text_of(
        c,
        "article[data-printer='printer 1'] figure.card-snapshot figcaption",
    )
    .await;
    assert!(caption.contains("Taken at"), "{caption}");
    assert_eq!(cam.connections(), 1, "one camera connection, after the tap");
    screenshots_light_dark(c, &out, "camera-card", img).await;
    session.close().await;
}
