//! Issue 21, the mapping end to end: the gateway, started as a user starts it, with a simulated
//! P1S. A file sliced for black PETG while only PLA is loaded is never started (the tap's
//! answer and the queue say what to load where, the simulator receives no `project_file`);
//! after PETG is put into the AMS and Plate clear is tapped again, the printer receives one
//! start whose `use_ams` / `ams_mapping` / `ams_mapping2` name that tray, as the job's events
//! recorded it at the decision.

mod common;

use common::{TestGateway, WAIT, starts};
use printgate::config::Model;
use printgate::jobs::ams_mapping::TrayRef;
use printgate::jobs::dispatcher::DispatchState;
use printgate::jobs::model::JobState;
use printgate::sim::SimSpool;
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use serde_json::json;

/// The dispatcher's last report of `printer 1` shows AMS slot `slot` (0-based) holding
/// `material` (`None` = empty).
fn slot_holds(s: &DispatchState, slot: u32, material: Option<&str>) -> bool {
    s.printers
        .get("printer 1")
        .and_then(|p| p.report.as_ref())
        .and_then(|r| r.trays.as_ref())
        .and_then(|t| {
            t.slots
                .iter()
                .find(|x| x.tray == TrayRef::Ams { unit: 0, slot })
        })
        .is_some_and(|x| x.material.as_deref() == material && x.loaded == material.is_some())
}

async fn wait_slot(tg: &TestGateway, slot: u32, material: Option<&str>) {
    let mut rx = tg.gw().dispatcher.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| slot_holds(s, slot, material)))
        .await
        .unwrap_or_else(|_| panic!("slot {slot} holding {material:?} not reported in time"))
        .expect("dispatcher running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn petg_with_only_pla_loaded_is_never_started_then_starts_on_the_petg_tray() {
    let tg = TestGateway::start(&[Model::P1S], 60.0).await;
    let sim = &tg.sims[0];
    // The simulator's AMS holds white, black and red PLA and blue PETG: take the PETG out.
    assert!(sim.load_tray(3, None));
    tg.wait_online().await;
    wait_slot(&tg, 3, None).await;

    let api = tg.api();
    let file = build_3mf(&Fixture3mf {
        prediction_secs: 600,
        layers: 10,
        filament_type: "PETG".into(),
        filament_color: "#000000".into(),
        ..Fixture3mf::for_model(Model::P1S)
    });
    let up = api
        .upload("bracket.gcode.3mf", file, Some("printer 1"), Some("petg-1"))
        .await
        .expect("upload");
    assert!((200..300).contains(&up.status), "{:?}", up.body);
    let id = up.job_id().expect("job id");
    tg.wait_job_in(id, &[JobState::Staged]).await;

    let want = "load PETG (black) in any AMS slot";
    let browser = tg.browser().await;
    let get = |path: &str| {
        let req = browser
            .http
            .get(tg.url(path))
            .header("cookie", &browser.cookie);
        async move {
            req.send()
                .await
                .expect("page")
                .text()
                .await
                .expect("page text")
        }
    };
    // The Plate clear confirmation says it before anyone confirms.
    let confirm = get("/printers/printer%201/plate-clear").await;
    assert!(
        confirm.contains(&format!("Cannot start on printer 1 yet:</strong> {want}")),
        "{confirm}"
    );
    let tap = api.tap("printer 1", "tap-1").await.expect("tap");
    assert!(tap.notices().contains(want), "{:?}", tap.body);
    let job = tg.gw().store.job(id).expect("store").expect("job");
    assert_eq!(job.state, JobState::Staged);
    let message = job.message.unwrap_or_default();
    assert!(message.contains(want), "{message}");
    // The queue says why (JSON API and the dashboard's queue row).
    let jobs = api.jobs().await.expect("jobs");
    assert!(jobs.body.to_string().contains(want), "{:?}", jobs.body);
    let page = get("/").await;
    assert!(page.contains(want), "the queue row says why");

    // Never started: several more reports, a re-submitted tap, and nothing arrives.
    for _ in 0..3 {
        let mut rx = tg.gw().printers[0].link.subscribe();
        rx.borrow_and_update();
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("a report")
            .expect("link alive");
    }
    api.tap("printer 1", "tap-1")
        .await
        .expect("re-submitted tap");
    assert!(
        starts(sim).is_empty(),
        "a PETG job was started with PLA loaded"
    );

    // PETG goes into slot 4; nothing starts by itself.
    assert!(sim.load_tray(
        3,
        Some(SimSpool::new(
            "GFG99",
            "PETG",
            "PETG Basic",
            "000000FF",
            100
        ))
    ));
    wait_slot(&tg, 3, Some("PETG")).await;
    assert!(starts(sim).is_empty(), "loading filament starts nothing");
    let mapped = "filament 1 PETG (black) → AMS 1 slot 4: PETG (black)";
    let confirm = get("/printers/printer%201/plate-clear").await;
    assert!(
        confirm.contains(&format!("Would use on printer 1: {mapped}")),
        "the confirmation shows the trays the start will use: {confirm}"
    );
    let tap = api.tap("printer 1", "tap-2").await.expect("tap");
    assert!(tap.tap_accepted(), "{:?}", tap.body);
    tg.wait_job_in(id, &[JobState::Printing, JobState::Finished])
        .await;

    let sent = starts(sim);
    assert_eq!(sent.len(), 1, "exactly one start");
    let p = &sent[0].json.as_ref().expect("json")["print"];
    assert_eq!(p["use_ams"], json!(true));
    assert_eq!(p["ams_mapping"], json!([3]));
    assert_eq!(p["ams_mapping2"], json!([{"ams_id": 0, "slot_id": 3}]));
    // What was decided is what the job's events recorded at the decision.
    let events = tg.gw().store.job_events(id).expect("events");
    let decided = events
        .iter()
        .find(|e| e.what == "starting")
        .and_then(|e| e.outcome.clone())
        .unwrap_or_default();
    assert!(decided.contains(mapped), "{decided}");
    let jobs = api.jobs().await.expect("jobs");
    let row = jobs
        .body
        .as_array()
        .and_then(|a| a.iter().find(|j| j["id"] == json!(id)))
        .cloned()
        .expect("the printing job is listed (a 10 s print)");
    // The row shows the committed mapping.
    assert_eq!(row["trays"]["committed"], json!(true), "{row}");
    assert_eq!(row["trays"]["lines"], json!([mapped]), "{row}");
    // The simulator fed the nozzle from that tray.
    let mut rx = tg.gw().printers[0].link.subscribe();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.filament.as_ref())
                .is_some_and(|f| f.active().any(|t| t.mapping_id == Some(3)))
        }),
    )
    .await
    .expect("tray 4 feeds the nozzle")
    .expect("link alive");
    tg.shutdown().await;
}
