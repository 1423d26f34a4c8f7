//! The Safety page as a person uses it (plain form posts, no JavaScript): emergency stop needs a
//! confirmation; a trip shows a banner on the dashboard; reset needs a confirmation and the
//! trip's id, keeps power off; power comes back only when switched on, with a confirmation.

mod common;

use common::{TestGateway, config_for, demo_api_token, safety_config, start_sim};
use printgate::config::Model;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_stop_banner_reset_and_power_through_the_page() {
    let sim = start_sim(Model::P1S, 1.0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), std::slice::from_ref(&sim));
    config.safety = safety_config(1);
    let t = TestGateway::start_with(vec![sim], dir, config).await;
    t.wait_online().await;
    let token = demo_api_token(&t.gw().store);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = |path: &str, fields: Vec<(&str, String)>| {
        client
            .post(t.url(path))
            .header("X-Api-Key", &token)
            .form(&fields)
            .send()
    };
    let get = |path: &str| client.get(t.url(path)).header("X-Api-Key", &token).send();
    let safety = t.safety();
    let relay_on = || safety.status().printers[0].power_on;
    assert_eq!(relay_on(), Some(true));

    // Not confirmed: nothing happens.
    let r = form("/safety/emergency-stop", vec![]).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(!safety.status().tripped);

    let r = form("/safety/emergency-stop", vec![("confirm", "yes".into())])
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(safety.status().tripped);
    assert_eq!(relay_on(), Some(false));
    let dashboard = get("/").await.unwrap().text().await.unwrap();
    assert!(dashboard.contains("Safety trip"), "banner on the dashboard");
    let page = get("/safety").await.unwrap().text().await.unwrap();
    assert!(page.contains("Reset the trip"));

    // The follow-up records the trip; its id is what the reset confirms.
    let mut updates = safety.subscribe();
    let trip_id = loop {
        if let Some(id) = safety.status().trip.and_then(|t| t.id) {
            break id;
        }
        tokio::time::timeout(common::WAIT, updates.recv())
            .await
            .expect("the trip is recorded")
            .expect("updates");
    };
    let r = form("/safety/reset", vec![("trip_id", trip_id.to_string())])
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        safety.status().tripped,
        "an unconfirmed reset changes nothing"
    );
    form(
        "/safety/reset",
        vec![("trip_id", trip_id.to_string()), ("confirm", "yes".into())],
    )
    .await
    .unwrap();
    assert!(!safety.status().tripped);
    assert_eq!(relay_on(), Some(false), "reset never switches power on");

    form(
        "/safety/power",
        vec![
            ("printer", "printer 1".into()),
            ("on", "on".into()),
            ("confirm", "yes".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(relay_on(), Some(true));
    let dashboard = get("/").await.unwrap().text().await.unwrap();
    assert!(!dashboard.contains("Safety trip"));
    t.shutdown().await;
}

/// Trip recovery on one confirmed screen: the reset form also switches the ticked printers back
/// on and resumes the queue, in that order and only after the reset succeeded; it starts
/// nothing (a waiting job still needs its Plate clear tap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_confirmed_form_resets_the_trip_powers_on_and_resumes_the_queue() {
    let sims = vec![
        start_sim(Model::P1S, 1.0).await,
        start_sim(Model::P1S, 1.0).await,
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), &sims);
    config.safety = safety_config(2);
    let t = TestGateway::start_with(sims, dir, config).await;
    t.wait_online().await;
    let token = demo_api_token(&t.gw().store);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |fields: Vec<(&str, String)>| {
        client
            .post(t.url("/safety/reset"))
            .header("X-Api-Key", &token)
            .form(&fields)
            .send()
    };
    let safety = t.safety();
    let power = |i: usize| safety.status().printers[i].power_on;
    let job = t.queue(Some("printer 1"), Model::P1S, "waiting").await;

    let mut updates = safety.subscribe();
    safety.emergency_stop("tester");
    let trip_id = loop {
        if let Some(id) = safety.status().trip.and_then(|t| t.id) {
            break id;
        }
        tokio::time::timeout(common::WAIT, updates.recv())
            .await
            .expect("the trip is recorded")
            .expect("updates");
    };
    let mut dispatch = t.gw().dispatcher.subscribe();
    tokio::time::timeout(common::WAIT, dispatch.wait_for(|s| s.queue_paused))
        .await
        .expect("a trip pauses the queue")
        .expect("dispatcher running");
    let page = client
        .get(t.url("/safety"))
        .header("X-Api-Key", &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("name=\"power_on\" value=\"printer 1\""),
        "{page}"
    );

    // Recovery steps without the confirmation: nothing at all happens.
    let steps = vec![
        ("trip_id", trip_id.to_string()),
        ("power_on", "printer 1".to_string()),
        ("resume_queue", "yes".to_string()),
    ];
    let r = post(steps.clone()).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(safety.status().tripped);
    assert_eq!((power(0), power(1)), (Some(false), Some(false)));
    // A wrong trip id (an older page): refused, and no step runs.
    let mut stale = steps.clone();
    stale[0].1 = (trip_id + 100).to_string();
    stale.push(("confirm", "yes".into()));
    let r = post(stale).await.unwrap();
    let said = r.headers()["location"].to_str().unwrap().to_string();
    assert!(said.contains("Nothing%20else%20was%20changed"), "{said}");
    assert!(safety.status().tripped);
    assert_eq!(power(0), Some(false));

    // Confirmed: reset, printer 1 back on, printer 2 stays off, queue resumed.
    let mut confirmed = steps;
    confirmed.push(("confirm", "yes".into()));
    let r = post(confirmed).await.unwrap();
    let said = r.headers()["location"].to_str().unwrap().to_string();
    assert!(!safety.status().tripped, "{said}");
    assert_eq!((power(0), power(1)), (Some(true), Some(false)), "{said}");
    assert!(!t.gw().dispatcher.state().queue_paused, "{said}");
    assert!(
        said.contains("switched%20on") && said.contains("queue%20resumed"),
        "{said}"
    );
    // Nothing started: the waiting job still needs a tap.
    let state = t.gw().dispatcher.state().jobs[&job.id].state;
    assert!(state.is_pre_start(), "{state:?}");
    assert!(common::starts(&t.sims[0]).is_empty());
    t.shutdown().await;
}
