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
