//! The safety room inside the real gateway with simulated printers and the simulated GPIO:
//! smoke edge → relays off, `stop` to every printer, queue paused, trip persisted, alerts
//! delivered to a local ntfy/webhook receiver; the latch across a restart; reset and power
//! rules; thermal runaway and over-limit trips; auto power-off after cool-down; the API refuses
//! anonymous requests.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use common::*;
use printgate::alerts::{AlertTarget, AlertsConfig};
use printgate::config::Model;
use printgate::jobs::dispatcher::{Event, PrinterRuntime};
use printgate::jobs::model::JobState;
use printgate::jobs::plate::PlateState;
use printgate::printer::{HmsEntry, PrinterCommand};
use printgate::safety::latch::{Heater, SafetyCause};
use printgate::safety::runtime::SafetyUpdate;
use printgate::sim::knobs::Heater as SimHeater;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One request received by the local alert receiver.
#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A loopback HTTP server standing in for ntfy and a webhook receiver.
async fn alert_receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), rx)
}

/// Collect received requests until one has arrived on each of `paths` (bounded by [`WAIT`]).
async fn receive_each(rx: &mut mpsc::UnboundedReceiver<Received>, paths: &[&str]) -> Vec<Received> {
    let mut got: Vec<Received> = Vec::new();
    let wait = async {
        while !paths.iter().all(|p| got.iter().any(|r| r.path == *p)) {
            match rx.recv().await {
                Some(r) => got.push(r),
                None => panic!("alert receiver stopped"),
            }
        }
    };
    if tokio::time::timeout(WAIT, wait).await.is_err() {
        panic!("alerts not received on every one of {paths:?}");
    }
    got
}

async fn gateway_with_safety(
    models: &[Model],
    time_scale: f64,
    edit: impl FnOnce(&mut printgate::config::Config),
) -> TestGateway {
    let mut sims = Vec::new();
    for m in models {
        sims.push(start_sim(*m, time_scale).await);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), &sims);
    config.safety = safety_config(sims.len());
    edit(&mut config);
    let tg = TestGateway::start_with(sims, dir, config).await;
    tg.wait_online().await;
    tg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_edge_cuts_power_stops_every_printer_pauses_queue_persists_and_alerts() {
    let (receiver, mut received) = alert_receiver().await;
    let tg = gateway_with_safety(&[Model::P1S, Model::X1C], 1.0, |c| {
        c.alerts = AlertsConfig {
            targets: vec![
                AlertTarget::Ntfy {
                    url: format!("{receiver}/printgate-topic"),
                    token: Some("tk_test".into()),
                },
                AlertTarget::Webhook {
                    url: format!("{receiver}/hook"),
                },
            ],
            ..Default::default()
        };
    })
    .await;
    let gpio = tg.sim_gpio();
    assert_eq!(gpio.output_state(5), Some(true), "relays on at boot");
    assert_eq!(gpio.output_state(6), Some(true));
    let mut updates = tg.safety().subscribe();

    let edge = Instant::now();
    gpio.set_input_asserted(SMOKE_PIN, true)
        .expect("smoke input");
    let done = wait_update(&mut updates, "follow-up done", |u| {
        matches!(u, SafetyUpdate::FollowUpDone { .. })
    })
    .await;

    // Relays off, written after the edge.
    assert_eq!(gpio.output_state(5), Some(false));
    assert_eq!(gpio.output_state(6), Some(false));
    let off_writes: Vec<_> = gpio
        .output_history()
        .into_iter()
        .filter(|w| !w.on && w.at >= edge)
        .map(|w| w.pin)
        .collect();
    assert!(
        off_writes.contains(&5) && off_writes.contains(&6),
        "{off_writes:?}"
    );
    // Stop sent to every printer.
    let SafetyUpdate::FollowUpDone {
        trip_ids, stopped, ..
    } = done
    else {
        unreachable!()
    };
    assert_eq!(
        stopped,
        vec!["printer 1".to_string(), "printer 2".to_string()]
    );
    for sim in &tg.sims {
        wait_stops(sim, 1).await;
    }
    // Persisted and latched.
    let latched = tg
        .gw()
        .store
        .latched_trip()
        .expect("store")
        .expect("latched");
    assert_eq!(latched.cause, SafetyCause::Smoke);
    assert_eq!(Some(latched.id.expect("id")), trip_ids.first().copied());
    assert_eq!(latched.affected_printers.len(), 2);
    let status = tg.safety().status();
    assert!(status.tripped && status.all_latched);
    assert_eq!(status.trip.as_ref().and_then(|t| t.id), latched.id);
    assert_eq!(status.unpersisted, 0);
    // Queue paused (the dispatcher is told in the background right after the stops).
    wait_tripped_and_paused(&tg, "queue paused in time").await;
    // Alerts: ntfy with its headers, and the webhook's JSON.
    let mut got = receive_each(&mut received, &["/printgate-topic", "/hook"]).await;
    let ntfy = got.remove(
        got.iter()
            .position(|r| r.path == "/printgate-topic")
            .expect("ntfy"),
    );
    let hook = got.remove(got.iter().position(|r| r.path == "/hook").expect("hook"));
    assert_eq!(
        ntfy.headers.get("priority").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    assert!(
        ntfy.headers
            .get("tags")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("rotating_light"))
    );
    assert_eq!(
        ntfy.headers.get("authorization").map(|v| v.as_bytes()),
        Some(&b"Bearer tk_test"[..])
    );
    assert!(String::from_utf8_lossy(&ntfy.body).contains("smoke detector alarm"));
    let json: serde_json::Value = serde_json::from_slice(&hook.body).expect("webhook JSON");
    assert_eq!(json["kind"], "safety_trip");
    assert_eq!(json["severity"], "urgent");

    // Power cannot come back while tripped.
    let refused = tg.safety().set_power("printer 1", true, false, "alice");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(gpio.output_state(5), Some(false));
    tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latch_survives_restart_reset_keeps_power_off_and_queue_resumes_only_when_asked() {
    let mut tg = gateway_with_safety(&[Model::P1S], 1.0, |_| {}).await;
    let mut updates = tg.safety().subscribe();
    tg.sim_gpio()
        .set_input_asserted(SMOKE_PIN, true)
        .expect("smoke");
    wait_update(&mut updates, "trip persisted", |u| {
        matches!(u, SafetyUpdate::Persisted { .. })
    })
    .await;
    let mut config = config_for(tg.dir.path(), &tg.sims);
    config.safety = safety_config(1);

    // Restart: relays off from the first write, still latched, dispatcher paused.
    tg.restart_with(config).await;
    let gpio = tg.sim_gpio();
    assert_eq!(gpio.output_state(5), Some(false));
    assert!(
        gpio.output_history()
            .iter()
            .filter(|w| w.pin == 5)
            .all(|w| !w.on),
        "relay never on after the restart"
    );
    let status = tg.safety().status();
    assert!(status.tripped, "{status:?}");
    let trip_id = status.trip.as_ref().and_then(|t| t.id).expect("trip id");
    tg.wait_online().await;
    wait_tripped_and_paused(&tg, "queue paused after restart").await;

    // Nothing is dispatched while tripped, even with a job and a tap.
    let job = tg.queue(Some("printer 1"), Model::P1S, "after-trip").await;
    let msgs = tg.tap("printer 1", "tap-1").await;
    assert!(
        starts(&tg.sims[0]).is_empty(),
        "no start while tripped: {msgs:?}"
    );

    // Anonymous reset over HTTP is refused.
    let client = reqwest::Client::new();
    let r = client
        .post(tg.url("/api/v1/safety/reset"))
        .json(&serde_json::json!({"confirmed_trip_id": trip_id, "confirm": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(tg.safety().status().tripped);
    // A reset with an empty user is refused too; a stale trip id is refused.
    assert!(tg.safety().reset("", trip_id).await.is_err());
    assert!(tg.safety().reset("alice", trip_id + 1).await.is_err());

    // The restarted gateway sees a released input; smoke again: a second trip.
    let mut updates = tg.safety().subscribe();
    gpio.set_input_asserted(SMOKE_PIN, true).expect("smoke");
    let SafetyUpdate::Persisted { trip_ids } = wait_update(&mut updates, "second trip", |u| {
        matches!(u, SafetyUpdate::Persisted { .. })
    })
    .await
    else {
        unreachable!()
    };
    let second = trip_ids[0];
    assert!(second > trip_id);
    // Confirming the older trip no longer works; with smoke still asserted no reset either.
    assert!(tg.safety().reset("alice", trip_id).await.is_err());
    let refused = tg.safety().reset("alice", second).await;
    assert!(refused.is_err(), "input still asserted: {refused:?}");
    gpio.set_input_asserted(SMOKE_PIN, false).expect("clear");
    wait_update(&mut updates, "smoke released", |u| {
        matches!(
            u,
            SafetyUpdate::Input {
                asserted: false,
                ..
            }
        )
    })
    .await;
    assert_eq!(tg.safety().reset("alice", second).await.expect("reset"), 2);
    assert!(!tg.safety().status().tripped);
    assert_eq!(
        gpio.output_state(5),
        Some(false),
        "reset never switches power on"
    );
    let audit = tg.gw().store.safety_audit(10).expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "reset" && a.actor == "alice")
    );
    let state = tg.gw().dispatcher.state();
    assert!(
        !state.safety_tripped && state.queue_paused,
        "queue stays paused"
    );

    // Power on by a person; the queue resumes only when asked, then the job starts.
    tg.safety()
        .set_power("printer 1", true, false, "alice")
        .expect("power on");
    assert_eq!(gpio.output_state(5), Some(true));
    tg.tap("printer 1", "tap-2").await;
    assert!(
        starts(&tg.sims[0]).is_empty(),
        "paused queue starts nothing"
    );
    tg.gw()
        .dispatcher
        .submit(Event::ResumeQueue { printer: None })
        .await
        .expect("resume");
    tg.wait_job(job.id, JobState::Printing).await;
    assert_eq!(starts(&tg.sims[0]).len(), 1);
    tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thermal_runaway_trips_only_that_printer_within_the_window() {
    // Time scale 10: the simulated runaway heats the idle nozzle by 20 °C per real second.
    let tg = gateway_with_safety(&[Model::P1S, Model::X1C], 10.0, |_| {}).await;
    let window = tg.gw().config.safety.watchdog.nozzle.runaway_window_secs;
    let floor = tg.gw().config.safety.watchdog.nozzle.runaway_idle_floor_c;
    let mut updates = tg.safety().subscribe();
    let mut link = tg.gw().printers[0].link.subscribe();
    // A printer whose own protection failed: only printgate's watchdog sees the runaway (with
    // the firmware's over-temperature HMS, that report trips first, see
    // the_printers_own_heater_and_fire_faults_trip_safety).
    tg.sims[0].knobs().set(|k| {
        k.thermal_runaway = Some(SimHeater::Nozzle);
        k.firmware_reports_overheat = false;
    });
    tokio::time::timeout(
        WAIT,
        link.wait_for(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.nozzle_temp)
                .is_some_and(|t| t > floor)
        }),
    )
    .await
    .expect("nozzle above the idle floor")
    .expect("link");
    let above = Instant::now();
    let tripped = wait_update(&mut updates, "runaway trip", |u| {
        matches!(u, SafetyUpdate::Tripped { .. })
    })
    .await;
    assert!(
        above.elapsed() <= Duration::from_secs_f64(window),
        "tripped {:?} after crossing the floor",
        above.elapsed()
    );
    let SafetyUpdate::Tripped {
        cause,
        affected_printers,
        relays_off,
        ..
    } = tripped
    else {
        unreachable!()
    };
    assert!(
        matches!(&cause, SafetyCause::ThermalRunaway { printer, heater: Heater::Nozzle, .. } if printer == "printer 1"),
        "{cause:?}"
    );
    assert_eq!(affected_printers, vec!["printer 1".to_string()]);
    assert_eq!(relays_off, vec![5]);
    wait_update(&mut updates, "follow-up", |u| {
        matches!(u, SafetyUpdate::FollowUpDone { .. })
    })
    .await;
    let gpio = tg.sim_gpio();
    assert_eq!(gpio.output_state(5), Some(false));
    assert_eq!(
        gpio.output_state(6),
        Some(true),
        "the other printer keeps power"
    );
    wait_stops(&tg.sims[0], 1).await;
    assert!(stops(&tg.sims[1]).is_empty());
    let status = tg.safety().status();
    assert_eq!(status.latched_printers, vec!["printer 1".to_string()]);
    assert!(!status.all_latched);
    tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_report_trips_on_the_configured_sample() {
    let tg = gateway_with_safety(&[Model::A1Mini], 1.0, |c| {
        // Isolate the over-limit rule from the runaway rule.
        c.safety.watchdog.nozzle.runaway_rise_c = 1000.0;
        c.safety.watchdog.bed.runaway_rise_c = 1000.0;
    })
    .await;
    let (nozzle_limit, _) = tg.gw().config.safety.watchdog.limits_for(Model::A1Mini);
    let mut updates = tg.safety().subscribe();
    let mut link = tg.gw().printers[0].link.subscribe();
    tg.sims[0]
        .knobs()
        .set(|k| k.nozzle_temp_override = Some(nozzle_limit + 5.0));
    let first_report = tokio::time::timeout(
        WAIT,
        link.wait_for(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.nozzle_temp)
                .is_some_and(|t| t > nozzle_limit)
        }),
    )
    .await
    .expect("over-limit report")
    .expect("link")
    .last_report_at;
    // One over-limit report is not enough (over_limit_samples = 2) …
    assert!(!tg.safety().status().tripped);
    // … the next one (the heater keeps climbing; the printer reports changes) trips.
    tg.sims[0]
        .knobs()
        .set(|k| k.nozzle_temp_override = Some(nozzle_limit + 6.0));
    let tripped = wait_update(&mut updates, "over-limit trip", |u| {
        matches!(u, SafetyUpdate::Tripped { .. })
    })
    .await;
    let SafetyUpdate::Tripped { cause, .. } = tripped else {
        unreachable!()
    };
    assert!(
        matches!(&cause, SafetyCause::OverTemperature { heater: Heater::Nozzle, limit, temp, .. }
            if *limit == nozzle_limit && *temp == nozzle_limit + 6.0),
        "tripped on the second over-limit report: {cause:?}"
    );
    assert!(first_report.is_some());
    assert_eq!(tg.sim_gpio().output_state(5), Some(false));
    tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_power_off_while_printing_needs_force_and_auto_power_off_waits_for_cooldown() {
    let tg = gateway_with_safety(&[Model::P1S, Model::X1C], 60.0, |c| {
        c.safety.auto_power_off.enabled = true;
        c.safety.auto_power_off.nozzle_below_c = 60.0;
    })
    .await;
    let gpio = tg.sim_gpio();
    // Printer 1: a print from the screen; power off refused unless forced.
    start_screen_print(&tg.sims[0], "long", 3600);
    let mut link = tg.gw().printers[0].link.subscribe();
    tokio::time::timeout(
        WAIT,
        link.wait_for(|s| {
            s.state
                .as_ref()
                .is_some_and(|st| st.gcode_state.is_active())
        }),
    )
    .await
    .expect("printing")
    .expect("link");
    let refused = tg.safety().set_power("printer 1", false, false, "bob");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(gpio.output_state(5), Some(true));
    let forced = tg
        .safety()
        .set_power("printer 1", false, true, "bob")
        .expect("forced off");
    assert!(forced.forced && forced.changed);
    assert_eq!(gpio.output_state(5), Some(false));

    // Printer 2: a short print; the relay stays on until the nozzle is below 60 °C.
    let mut updates = tg.safety().subscribe();
    start_screen_print(&tg.sims[1], "short", 120);
    let mut link2 = tg.gw().printers[1].link.subscribe();
    let finished = tokio::time::timeout(
        WAIT,
        link2.wait_for(|s| {
            s.state
                .as_ref()
                .is_some_and(|st| st.gcode_state == printgate::printer::GcodeState::Finish)
        }),
    )
    .await
    .expect("finished")
    .expect("link")
    .clone();
    let nozzle_at_finish = finished
        .state
        .as_ref()
        .and_then(|s| s.nozzle_temp)
        .expect("nozzle temp");
    let power = wait_update(
        &mut updates,
        "auto power-off",
        |u| matches!(u, SafetyUpdate::Power { change, .. } if change.pin == 6),
    )
    .await;
    let SafetyUpdate::Power { change, actor } = power else {
        unreachable!()
    };
    assert!(!change.on && !change.forced);
    assert_eq!(actor, "printgate (auto power-off)");
    let nozzle_at_off = link2
        .borrow()
        .state
        .as_ref()
        .and_then(|s| s.nozzle_temp)
        .expect("nozzle temp");
    assert!(
        nozzle_at_finish >= 60.0,
        "the print ended hot ({nozzle_at_finish} °C), so power-off had to wait"
    );
    assert!(nozzle_at_off < 60.0, "powered off at {nozzle_at_off} °C");
    assert_eq!(gpio.output_state(6), Some(false));
    tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_anonymous_callers_and_serves_an_authenticated_one() {
    let tg = gateway_with_safety(&[Model::P1S], 1.0, |_| {}).await;
    let client = reqwest::Client::new();
    for (path, body) in [
        ("/api/v1/safety/emergency-stop", serde_json::json!({})),
        (
            "/api/v1/safety/power",
            serde_json::json!({"printer": "printer 1", "on": false, "confirm": true}),
        ),
        (
            "/api/v1/safety/sim-input",
            serde_json::json!({"input": "smoke", "asserted": true}),
        ),
    ] {
        let r = client
            .post(tg.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED, "{path}");
    }
    assert!(!tg.safety().status().tripped);
    assert_eq!(tg.sim_gpio().output_state(5), Some(true));

    // The same routes with an API token (the demo account's, created here for the test).
    printgate::web::auth::ensure_demo_account(&tg.gw().store).expect("demo account");
    let token = printgate::web::auth::DEMO_API_TOKEN;
    let base = tg.url("");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", token.parse().expect("header"));
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    // Power off without confirmation: refused.
    let r = client
        .post(format!("{base}/api/v1/safety/power"))
        .json(&serde_json::json!({"printer": "printer 1", "on": false}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    // Smoke through the API: the answer comes once the trip is recorded.
    let r = client
        .post(format!("{base}/api/v1/safety/sim-input"))
        .json(&serde_json::json!({"pin": SMOKE_PIN, "level": "low"}))
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success());
    let view: serde_json::Value = r.json().await.expect("json");
    assert_eq!(view["tripped"], true);
    assert_eq!(view["unpersisted"], 0);
    assert_eq!(view["trip"]["cause"]["kind"], "smoke");
    let trip_id = view["trip"]["id"].as_i64().expect("trip id");
    // Reset needs "confirm" and a released input.
    let r = client
        .post(format!("{base}/api/v1/safety/reset"))
        .json(&serde_json::json!({"confirmed_trip_id": trip_id}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let r = client
        .post(format!("{base}/api/v1/safety/sim-input"))
        .json(&serde_json::json!({"input": "smoke", "asserted": false}))
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success());
    let r = client
        .post(format!("{base}/api/v1/safety/reset"))
        .json(&serde_json::json!({"confirmed_trip_id": trip_id, "confirm": true}))
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let audit = tg.gw().store.safety_audit(5).expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "reset" && a.actor == printgate::web::auth::DEMO_USER)
    );
    assert_eq!(tg.sim_gpio().output_state(5), Some(false));
    // Emergency stop by API.
    let r = client
        .post(format!("{base}/api/v1/safety/emergency-stop"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("request");
    let answer: serde_json::Value = r.json().await.expect("json");
    assert_eq!(answer["persisted"], true);
    assert_eq!(answer["trip"]["cause"]["kind"], "emergency_stop");
    assert_eq!(
        answer["trip"]["cause"]["by_user"],
        printgate::web::auth::DEMO_USER
    );
    tg.shutdown().await;
}

/// Every heater, over-temperature and fire code of docs/bambu-protocol.md §6.2–§6.3 marked "safety trip",
/// written out here from the protocol reference (not taken from the code under test).
fn tripping_faults() -> Vec<(Vec<HmsEntry>, Option<u32>, String)> {
    let hms = |attr: u32, code: u32| HmsEntry { attr, code };
    let mut out = Vec::new();
    for k in 1..=7 {
        out.push(hms(0x0300_0100, 0x0001_0000 | k)); // heatbed temperature abnormal
    }
    for k in 1..=9 {
        out.push(hms(0x0300_0200, 0x0001_0000 | k)); // nozzle temperature abnormal
    }
    out.push(hms(0x0300_1E00, 0x0001_0003)); // H2 left nozzle temperature abnormal
    out.push(hms(0x0300_9000, 0x0001_0007)); // chamber temperature too high
    out.push(hms(0x0300_A100, 0x0001_0001)); // chamber temperature too high
    let mut faults: Vec<(Vec<HmsEntry>, Option<u32>, String)> = out
        .into_iter()
        .map(|e| (vec![e], None, e.display_code()))
        .collect();
    faults.push((Vec::new(), Some(0x0300_8044), "0300_8044".into())); // fire detected (H2)
    faults
}

/// The printer's own heater-fault, over-temperature and fire reports trip the latch like the
/// watchdog: relay off, stop, queue paused, the code and its text as the cause. Each code trips
/// once when it appears; a reset is not undone by the same latched code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printers_own_heater_and_fire_faults_trip_safety() {
    let tg = gateway_with_safety(&[Model::P1S, Model::X1C], 1.0, |_| {}).await;
    let gpio = tg.sim_gpio();
    let mut updates = tg.safety().subscribe();
    let mut first = true;
    for (hms, print_error, code) in tripping_faults() {
        tg.sims[0].knobs().set(|k| {
            k.injected_hms = hms.clone();
            k.injected_print_error = print_error;
        });
        let tripped = wait_update(&mut updates, &format!("trip on {code}"), |u| {
            matches!(u, SafetyUpdate::Tripped { cause: SafetyCause::PrinterFault { code: c, .. }, .. } if *c == code)
        })
        .await;
        let SafetyUpdate::Tripped {
            cause,
            affected_printers,
            ..
        } = tripped
        else {
            unreachable!()
        };
        assert_eq!(affected_printers, vec!["printer 1".to_string()], "{code}");
        assert!(
            matches!(&cause, SafetyCause::PrinterFault { printer, .. } if printer == "printer 1"),
            "{cause:?}"
        );
        let text = cause.describe();
        assert!(
            text.contains(&code) && (text.contains("temperature") || text.contains("FIRE")),
            "the cause names the code and what it means: {text}"
        );
        assert_eq!(gpio.output_state(5), Some(false), "{code}: relay off");
        assert_eq!(
            gpio.output_state(6),
            Some(true),
            "{code}: the other printer keeps its power"
        );
        if first {
            first = false;
            wait_update(&mut updates, "follow-up", |u| {
                matches!(u, SafetyUpdate::FollowUpDone { .. })
            })
            .await;
            wait_stops(&tg.sims[0], 1).await;
            wait_tripped_and_paused(&tg, "queue paused in time").await;
            let latched = tg
                .gw()
                .store
                .latched_trip()
                .expect("store")
                .expect("latched");
            assert!(
                matches!(latched.cause, SafetyCause::PrinterFault { .. }),
                "{latched:?}"
            );
        }
    }
    // The last fault stays latched on the printer: a reset holds, no second trip for it.
    wait_update(&mut updates, "persisted", |u| {
        matches!(u, SafetyUpdate::Persisted { .. })
    })
    .await;
    let status = tg.safety().status();
    let trip_id = status.trip.as_ref().and_then(|t| t.id).expect("trip id");
    tg.safety().reset("alice", trip_id).await.expect("reset");
    let mut link = tg.gw().printers[0].link.subscribe();
    let reports = link.borrow_and_update().last_report_at;
    tg.gw().printers[0]
        .link
        .send(PrinterCommand::PushAll)
        .await
        .expect("pushall");
    tokio::time::timeout(
        WAIT,
        link.wait_for(|s| s.last_report_at.is_some() && s.last_report_at != reports),
    )
    .await
    .expect("another report with the latched fault")
    .expect("link");
    assert!(
        !tg.safety().status().tripped,
        "no new trip for a fault already seen"
    );
    tg.shutdown().await;
}

/// The dispatcher knows of the trip and has paused the queue.
async fn wait_tripped_and_paused(tg: &TestGateway, what: &str) {
    let mut rx = tg.gw().dispatcher.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.safety_tripped && s.queue_paused))
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .expect("dispatcher running");
}

async fn wait_dispatcher(tg: &TestGateway, what: &str, pred: impl Fn(&PrinterRuntime) -> bool) {
    let mut rx = tg.gw().dispatcher.subscribe();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| s.printers.get("printer 1").is_some_and(&pred)),
    )
    .await
    .unwrap_or_else(|_| panic!("dispatcher: {what}"))
    .expect("dispatcher running");
}

/// A person may clear the plate of a printer printgate itself switched off (the tap is valid when
/// power returns and starts the next job); offline for any other reason, the tap is refused with
/// the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plate_clear_is_accepted_while_printgate_holds_the_power_off() {
    let tg = gateway_with_safety(&[Model::P1S], 1.0, |_| {}).await;
    let sim = &tg.sims[0];

    // Unplugged (printgate's relay is on): the state is unknown, the tap is refused.
    sim.power_cut();
    wait_dispatcher(&tg, "offline", |p| !p.link_online).await;
    let msgs = tg.tap("printer 1", "tap-unplugged").await;
    assert!(
        msgs.iter()
            .any(|m| m.contains("not accepted") && m.contains("offline")),
        "{msgs:?}"
    );
    assert!(!matches!(
        tg.gw().dispatcher.state().printers["printer 1"].plate,
        PlateState::Clear(_)
    ));
    sim.power_restore(false);
    tg.wait_online().await;

    // printgate switches the power off (the relay cuts the printer): the tap is accepted.
    tg.safety()
        .set_power("printer 1", false, false, "alice")
        .expect("power off");
    sim.power_cut();
    wait_dispatcher(&tg, "power held off", |p| {
        p.power_held_off && !p.link_online
    })
    .await;
    let msgs = tg.tap("printer 1", "tap-unpowered").await;
    assert!(
        msgs.iter().any(|m| m.contains("holds the power")),
        "{msgs:?}"
    );
    assert!(matches!(
        tg.gw().dispatcher.state().printers["printer 1"].plate,
        PlateState::Clear(_)
    ));
    let job = tg
        .queue(Some("printer 1"), Model::P1S, "after-power-on")
        .await;
    assert!(starts(sim).is_empty());

    // Power back on: the printer boots idle and the tap starts the job, once.
    tg.safety()
        .set_power("printer 1", true, false, "alice")
        .expect("power on");
    sim.power_restore(false);
    tg.wait_job(job.id, JobState::Printing).await;
    assert_eq!(starts(sim).len(), 1);
    tg.shutdown().await;
}
