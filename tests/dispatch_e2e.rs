//! The plate-clear gate end to end: real gateway, real SQLite, simulated printers over real TLS
//! and FTPS. A queued job is uploaded ahead of time but never started before a tap; one tap
//! starts exactly one job; when it ends the plate is occupied again and the next job waits.

mod common;

use common::{TestGateway, starts};
use printgate::config::Model;
use printgate::jobs::model::JobState;
use printgate::printer::GcodeState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tap_starts_exactly_one_job_and_the_next_waits_for_the_next_tap() {
    let t = TestGateway::start(&[Model::P1S], 600.0).await;
    t.wait_online().await;
    let sim = &t.sims[0];

    let first = t.queue(Some("printer 1"), Model::P1S, "first").await;
    let second = t.queue(Some("printer 1"), Model::P1S, "second").await;
    // Uploaded while waiting for the tap, so the tap starts quickly.
    let staged = t.wait_job(first.id, JobState::Staged).await;
    assert!(
        sim.storage().get(&staged.remote_name()).is_some(),
        "file is on the printer"
    );
    assert!(starts(sim).is_empty(), "nothing starts before a tap");

    let notices = t.tap("printer 1", "tap-1").await;
    assert!(
        notices.iter().all(|n| !n.contains("not accepted")),
        "{notices:?}"
    );
    t.wait_job(first.id, JobState::Printing).await;
    t.wait_job(first.id, JobState::Finished).await;
    sim.wait_truth(common::WAIT, |s| s.gcode_state == GcodeState::Finish)
        .await
        .expect("simulated print finished");

    // The plate holds the first print: the second job must wait for a new tap.
    t.wait_job(second.id, JobState::Staged).await;
    let plate = t.gw().dispatcher.state().printers["printer 1"]
        .plate
        .as_str();
    assert_eq!(plate, "occupied");
    assert_eq!(starts(sim).len(), 1, "exactly one start so far");

    // The same tap re-submitted (double form post) does not start anything.
    let notices = t.tap("printer 1", "tap-1").await;
    assert_eq!(starts(sim).len(), 1, "{notices:?}");
    assert_eq!(
        t.gw().store.job(second.id).unwrap().unwrap().state,
        JobState::Staged
    );

    t.tap("printer 1", "tap-2").await;
    let done = t.wait_job(second.id, JobState::Finished).await;
    let view = printgate::web::queue::JobView::from_job(&done);
    assert!(
        view.duration.is_some(),
        "the history shows how long it printed"
    );
    let log = starts(sim);
    assert_eq!(log.len(), 2, "one start per tap");
    let ids: Vec<_> = log
        .iter()
        .filter_map(|c| {
            c.json
                .as_ref()?
                .pointer("/print/subtask_id")?
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(
        ids,
        vec![first.subtask_id.to_string(), second.subtask_id.to_string()]
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_start_becomes_unconfirmed_and_is_never_resent() {
    let t = TestGateway::start(&[Model::X1C], 600.0).await;
    t.wait_online().await;
    let sim = &t.sims[0];
    // The printer acknowledges but never starts (a half-broken session).
    sim.knobs().set(|k| k.ack_but_never_start = true);
    let job = t.queue(Some("printer 1"), Model::X1C, "lost").await;
    t.wait_job(job.id, JobState::Staged).await;
    t.tap("printer 1", "tap-1").await;
    let job = t.wait_job(job.id, JobState::Unconfirmed).await;
    assert!(
        job.message.unwrap_or_default().contains("check"),
        "tells the person what to do"
    );
    // Nothing was resent while the job waited out its confirmation windows.
    assert_eq!(starts(sim).len(), 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_started_on_the_printer_screen_occupies_the_plate() {
    let t = TestGateway::start(&[Model::A1Mini], 600.0).await;
    t.wait_online().await;
    let sim = &t.sims[0];
    t.tap("printer 1", "tap-1").await;
    assert_eq!(
        t.gw().dispatcher.state().printers["printer 1"]
            .plate
            .as_str(),
        "clear"
    );
    // Someone starts a print at the printer.
    let bytes = printgate::sim::fixtures::build_3mf(
        &printgate::sim::fixtures::Fixture3mf::for_model(Model::A1Mini),
    );
    sim.storage().put("local.gcode.3mf", bytes).unwrap();
    sim.start_from_screen("local.gcode.3mf", "local job");
    let mut rx = t.gw().dispatcher.subscribe();
    tokio::time::timeout(
        common::WAIT,
        rx.wait_for(|s| s.printers["printer 1"].plate.as_str() == "occupied"),
    )
    .await
    .expect("plate occupied in time")
    .unwrap();
    // A job queued now waits: the tap was used up by the screen print.
    let job = t
        .queue(Some("printer 1"), Model::A1Mini, "after-local")
        .await;
    t.wait_job(job.id, JobState::Staged).await;
    assert!(starts(sim).is_empty());
    t.shutdown().await;
}
