//! The History page lists every print the gateway saw, whoever started it: a print started on
//! the printer's own screen and a printgate job (with who tapped Plate clear), each with its
//! duration and result, and the statistics count both. Real gateway, simulated printer.

mod common;

use common::{TestGateway, start_screen_print};
use printgate::config::Model;
use printgate::jobs::model::JobState;
use printgate::printer::GcodeState;
use std::time::{Duration, Instant};

/// The History page's HTML, signed in with the demo account's API token.
async fn history(t: &TestGateway) -> String {
    let token = common::demo_api_token(&t.gw().store);
    reqwest::Client::new()
        .get(t.url("/history"))
        .header(printgate::web::auth::API_KEY_HEADER, token)
        .send()
        .await
        .expect("GET /history")
        .text()
        .await
        .expect("page text")
}

/// Fetch the page until `ok` holds (the recorder writes events as the printer reports them),
/// at most 30 s.
async fn history_until(t: &TestGateway, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = history(t).await;
        if ok(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "history never showed {what}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_prints_started_at_the_printer_and_by_printgate() {
    let t = TestGateway::start(&[Model::P1S], 600.0).await;
    t.wait_online().await;
    let sim = &t.sims[0];

    // A print started on the printer's screen, which the gateway only watches.
    start_screen_print(sim, "screen cube", 600);
    sim.wait_truth(common::WAIT, |s| s.gcode_state == GcodeState::Finish)
        .await
        .expect("the screen print finished");
    let page = history_until(&t, "the screen print as finished", |p| {
        p.contains("screen cube") && p.contains("result-finished")
    })
    .await;
    assert!(page.contains("at the printer or by another app"), "{page}");
    assert!(!page.contains("No prints seen yet"), "{page}");

    // A printgate job: its row names the job and who tapped Plate clear.
    let job = t
        .queue(Some("printer 1"), Model::P1S, "gateway benchy")
        .await;
    t.wait_job(job.id, JobState::Staged).await;
    t.tap("printer 1", "tap-history").await;
    t.wait_job(job.id, JobState::Finished).await;
    let page = history_until(&t, "the printgate job as finished", |p| {
        p.matches("result-finished").count() >= 2
    })
    .await;
    let row = page
        .split("<tr>")
        .find(|r| r.contains("gateway benchy") && r.contains("result-finished"))
        .unwrap_or_else(|| panic!("no finished row for the job:\n{page}"));
    assert!(
        row.contains(&format!("printgate job {}", job.id)) && row.contains("tapped by tester"),
        "{row}"
    );
    assert!(row.contains("/thumbnails/"), "the job's thumbnail: {row}");
    // Statistics count both prints, and none failed.
    let stats = page
        .split("<h2>Statistics</h2>")
        .nth(1)
        .expect("a statistics section");
    let printer_row = stats
        .split("<tr>")
        .find(|r| r.contains("data-label=\"Printer\">printer 1"))
        .unwrap_or_else(|| panic!("no statistics row for printer 1:\n{stats}"));
    assert!(
        printer_row.contains("data-label=\"Prints\">2<")
            && printer_row.contains("data-label=\"Success rate\">100 %<"),
        "{printer_row}"
    );
    t.shutdown().await;
}
