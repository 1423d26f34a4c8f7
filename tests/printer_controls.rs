//! The printer page's controls over the JSON API: each command reaches the simulated printer
//! once and is recorded in its history with who sent it; stop needs a confirmation; a command
//! for a printer that is offline is refused and never sent later.

mod common;

use common::{TestGateway, demo_api_token};
use printgate::config::Model;

/// How many `command` requests the simulated printer has logged once it has logged at least
/// `at_least` (or `common::WAIT` passed): the API answers when the command is sent, and the
/// printer logs it when it arrives.
async fn logged(sim: &printgate::sim::SimPrinter, command: &str, at_least: usize) -> usize {
    let count = |sim: &printgate::sim::SimPrinter| {
        sim.command_log()
            .iter()
            .filter(|c| c.command.as_deref() == Some(command))
            .count()
    };
    let mut arrivals = sim.subscribe_commands();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let n = count(sim);
        if n >= at_least {
            return n;
        }
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => return count(sim),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_reach_the_printer_once_and_are_recorded() {
    let t = TestGateway::start(&[Model::X1C], 300.0).await;
    t.wait_online().await;
    let token = demo_api_token(&t.gw().store);
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(t.url(path))
            .header("X-Api-Key", &token)
            .json(&body)
            .send()
    };
    let sim = &t.sims[0];
    let lights = |log: &[printgate::sim::LoggedCommand]| {
        log.iter()
            .filter(|c| c.command.as_deref() == Some("ledctrl"))
            .count()
    };

    let r = post(
        "/api/v1/printers/printer%201/light-off",
        serde_json::json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(logged(sim, "ledctrl", 1).await, 1);

    // Stop is refused without a confirmation, and nothing is sent.
    let r = post("/api/v1/printers/printer%201/stop", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        sim.command_log()
            .iter()
            .all(|c| c.command.as_deref() != Some("stop"))
    );
    let r = post(
        "/api/v1/printers/printer%201/stop",
        serde_json::json!({"confirm": true}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(logged(sim, "stop", 1).await, 1);

    // Unknown action and unknown printer give clear errors.
    let r = post(
        "/api/v1/printers/printer%201/explode",
        serde_json::json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let r = post("/api/v1/printers/nobody/pause", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The history names who did what.
    let events = t.gw().store.recent_events(Some("printer 1"), 50).unwrap();
    assert!(events.iter().any(|e| e.kind == "printer_control"
        && e.detail["by"] == "demo"
        && e.detail["action"] == "stop"));

    // Offline: refused now, never delivered after the printer comes back.
    sim.disconnect_for(std::time::Duration::from_secs(2));
    let mut rx = t.gw().printers[0].link.subscribe();
    tokio::time::timeout(common::WAIT, rx.wait_for(|s| !s.link.is_online()))
        .await
        .unwrap()
        .unwrap();
    let before = lights(&sim.command_log());
    let r = post(
        "/api/v1/printers/printer%201/light-on",
        serde_json::json!({}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
    t.wait_online().await;
    assert_eq!(
        lights(&sim.command_log()),
        before,
        "nothing queued for later"
    );
    t.shutdown().await;
}
