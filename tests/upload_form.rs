//! The upload page when a file is refused: the refusal is shown on the form (not as a notice on
//! another page), the form keeps what was entered (printer, plate, time limit, its idempotency
//! key) and pre-selects the printer the file was sliced for, and the words fit the printer that
//! was chosen (a Klipper printer is not asked for a "Klipper printer profile"). A resend with the
//! suggested printer is queued, once.

mod common;

use common::{Browser, TestGateway, redirect_notice, starts};
use printgate::config::Model;
use printgate::jobs::model::JobState;
use printgate::sim::fixtures::{Fixture3mf, build_3mf, plain_gcode};

const P1S: &str = "printer 1";
const X1C: &str = "printer 2";
const VORON: &str = "Voron";

/// A gateway with a simulated P1S and X1C and a Klipper printer whose Moonraker is not running.
async fn rig() -> TestGateway {
    let sims = vec![
        common::start_sim(Model::P1S, 1.0).await,
        common::start_sim(Model::X1C, 1.0).await,
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = common::config_for(dir.path(), &sims);
    cfg.printers.push(common::offline_klipper_printer(VORON));
    TestGateway::start_with(sims, dir, cfg).await
}

/// What the browser got back for an upload.
struct Answer {
    status: u16,
    location_notice: Option<String>,
    page: String,
}

async fn post_upload(
    b: &Browser,
    printer: &str,
    file_name: &str,
    bytes: Vec<u8>,
    key: &str,
) -> Answer {
    post_copies(b, printer, file_name, bytes, key, "1").await
}

async fn post_copies(
    b: &Browser,
    printer: &str,
    file_name: &str,
    bytes: Vec<u8>,
    key: &str,
    copies: &str,
) -> Answer {
    let form = b
        .multipart()
        .text("copies", copies.to_string())
        .text("idempotency_key", key.to_string())
        .text("printer", printer.to_string())
        .text("plate", "1")
        .text("start_within_minutes", "45")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_string()),
        );
    let resp = b
        .post("/jobs")
        .multipart(form)
        .send()
        .await
        .expect("the gateway answers");
    let status = resp.status().as_u16();
    let location_notice = (status == 303).then(|| redirect_notice(&resp));
    let page = resp.text().await.unwrap_or_default();
    Answer {
        status,
        location_notice,
        page,
    }
}

/// The text of the element with `id` (first match; tags inside are dropped).
fn element_text(page: &str, id: &str) -> Option<String> {
    let start = page.find(&format!("id=\"{id}\""))?;
    let open_end = start + page[start..].find('>')? + 1;
    let close = open_end + page[open_end..].find("</p>")?;
    let mut text = String::new();
    let mut in_tag = false;
    for c in page[open_end..close].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text)
}

/// The value of the `<option selected>` of the printer choice.
fn selected_printer(page: &str) -> Option<String> {
    let select = &page[page.find("name=\"printer\"")?..];
    let select = &select[..select.find("</select>")?];
    let at = select.find(" selected")?;
    let option = &select[select[..at].rfind("<option")?..at];
    let v = option.split("value=\"").nth(1)?;
    Some(v[..v.find('"')?].to_string())
}

fn assert_form_kept(page: &str, key: &str) {
    assert!(
        page.contains("<form method=\"post\" action=\"/jobs\""),
        "the upload form is on the page again"
    );
    assert!(
        page.contains(&format!("name=\"idempotency_key\" value=\"{key}\"")),
        "the form keeps its idempotency key"
    );
    assert!(
        page.contains("name=\"start_within_minutes\" min=\"1\" step=\"1\" placeholder=\"no limit\" value=\"45\""),
        "the time limit entered is kept"
    );
    assert!(
        page.contains("name=\"plate\" value=\"1\""),
        "the plate is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_for_another_model_is_refused_on_the_form_with_the_right_printer_preselected() {
    let t = rig().await;
    let b = t.browser().await;
    let p1s_file = build_3mf(&Fixture3mf::for_model(Model::P1S));

    let a = post_upload(&b, X1C, "cube.gcode.3mf", p1s_file.clone(), "key-1").await;
    assert_eq!(
        a.status, 422,
        "a refused upload answers with the form, not a redirect"
    );
    let error = element_text(&a.page, "upload-error").expect("the refusal is on the form");
    assert!(
        error.contains("sliced for the P1S") && error.contains(P1S),
        "the refusal says what the file was sliced for and which printer fits it: {error}"
    );
    assert_eq!(
        selected_printer(&a.page).as_deref(),
        Some(P1S),
        "the printer the file was sliced for is pre-selected"
    );
    assert_form_kept(&a.page, "key-1");
    assert!(
        a.page.contains("choose the file again"),
        "without the page's script the browser drops the chosen file; the page says so"
    );
    assert!(
        t.gw()
            .store
            .jobs_in_states(&printgate::jobs::model::JobState::ALL)
            .expect("jobs")
            .is_empty()
    );

    // The same form sent again with the suggested printer is queued, once.
    let a = post_upload(&b, P1S, "cube.gcode.3mf", p1s_file.clone(), "key-1").await;
    assert_eq!(a.status, 303, "{}", a.page);
    assert!(
        a.location_notice
            .as_deref()
            .is_some_and(|n| n.contains("was added to the queue")),
        "{:?}",
        a.location_notice
    );
    let again = post_upload(&b, P1S, "cube.gcode.3mf", p1s_file, "key-1").await;
    assert_eq!(again.status, 303);
    assert_eq!(
        t.gw()
            .store
            .jobs_in_states(&printgate::jobs::model::JobState::ALL)
            .expect("jobs")
            .len(),
        1,
        "one job"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sliced_3mf_for_a_klipper_printer_says_klipper_prints_gcode_and_names_the_bambu_one() {
    let t = rig().await;
    let b = t.browser().await;
    let p1s_file = build_3mf(&Fixture3mf::for_model(Model::P1S));

    let a = post_upload(&b, VORON, "cube.gcode.3mf", p1s_file, "key-2").await;
    assert_eq!(a.status, 415, "{}", a.page);
    let error = element_text(&a.page, "upload-error").expect("the refusal is on the form");
    assert!(
        !error.contains("printer profile"),
        "a Klipper printer is not asked for a Klipper printer profile: {error}"
    );
    assert!(
        error.contains(VORON) && error.contains(".gcode") && error.contains(P1S),
        "the refusal says the Klipper printer prints plain G-code and that the file fits {P1S}: {error}"
    );
    assert_eq!(selected_printer(&a.page).as_deref(), Some(P1S));
    assert_form_kept(&a.page, "key-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_gcode_for_a_bambu_printer_preselects_the_klipper_printer() {
    let t = rig().await;
    let b = t.browser().await;

    let a = post_upload(&b, X1C, "part.gcode", plain_gcode(3), "key-3").await;
    assert_eq!(a.status, 415, "{}", a.page);
    let error = element_text(&a.page, "upload-error").expect("the refusal is on the form");
    assert!(error.contains(".gcode.3mf"), "{error}");
    assert_eq!(selected_printer(&a.page).as_deref(), Some(VORON));
    assert_form_kept(&a.page, "key-3");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_while_the_file_is_read_still_shows_the_form() {
    let t = rig().await;
    let b = t.browser().await;
    let a = post_upload(
        &b,
        "no such printer",
        "cube.gcode.3mf",
        b"not a zip".to_vec(),
        "k",
    )
    .await;
    assert!((400..500).contains(&a.status), "{} {}", a.status, a.page);
    let error = element_text(&a.page, "upload-error").expect("the refusal is on the form");
    assert!(!error.is_empty());
    assert!(a.page.contains("<form method=\"post\" action=\"/jobs\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn three_copies_are_three_jobs_each_waiting_for_its_own_plate_clear() {
    let t = rig().await;
    let p1s = t.gw().printers.iter().find(|p| p.name == P1S).expect("P1S");
    let mut state = p1s.link.subscribe();
    tokio::time::timeout(
        common::WAIT,
        state.wait_for(|s| s.link.is_online() && s.have_full_report),
    )
    .await
    .expect("the P1S is online in time")
    .expect("link state");
    let b = t.browser().await;
    let file = build_3mf(&Fixture3mf::for_model(Model::P1S));

    for copies in ["0", "21", "two"] {
        let a = post_copies(
            &b,
            P1S,
            "cube.gcode.3mf",
            file.clone(),
            "copies-bad",
            copies,
        )
        .await;
        assert_eq!(a.status, 400, "copies={copies}: {}", a.page);
        let error = element_text(&a.page, "upload-error").expect("the refusal is on the form");
        assert!(
            error.contains("copies") && error.contains("1 to 20"),
            "{error}"
        );
    }
    let queued = || t.gw().store.jobs_in_states(&JobState::ALL).expect("jobs");
    assert!(queued().is_empty(), "a refused count queues nothing");

    let a = post_copies(&b, P1S, "cube.gcode.3mf", file.clone(), "copies-3", "3").await;
    assert_eq!(a.status, 303, "{}", a.page);
    let notice = a.location_notice.unwrap_or_default();
    assert!(notice.contains("3 copies of cube"), "{notice}");
    // The same form sent again (a double tap, a retry) adds none.
    let again = post_copies(&b, P1S, "cube.gcode.3mf", file.clone(), "copies-3", "3").await;
    assert_eq!(again.status, 303);
    let jobs = queued();
    assert_eq!(jobs.len(), 3, "three jobs: {jobs:?}");
    let waiting = |state: JobState| matches!(state, JobState::Queued | JobState::Staged);
    assert!(jobs.iter().all(|j| waiting(j.state)), "{jobs:?}");
    let sha = &jobs[0].file_sha256;
    assert!(jobs.iter().all(|j| &j.file_sha256 == sha), "one file");
    let stored = t.gw().files.info(sha).expect("file info").expect("stored");
    assert_eq!(stored.refcount, 3, "each copy holds the file");

    // One tap starts one copy; the others wait for taps of their own.
    t.tap(P1S, "tap-copies").await;
    let mut first = None;
    for j in &jobs {
        if !waiting(t.gw().store.job(j.id).expect("job").expect("exists").state) {
            first = Some(j.id);
        }
    }
    let first = first.expect("the tap started one copy");
    t.wait_job(first, JobState::Printing).await;
    assert_eq!(starts(&t.sims[0]).len(), 1, "one start for one tap");
    let still_queued = queued().into_iter().filter(|j| waiting(j.state)).count();
    assert_eq!(
        still_queued, 2,
        "the other copies wait for their own Plate clear"
    );
}
