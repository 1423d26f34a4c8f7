//! MQTT interoperability cases (issue 15), run with the real paho-mqtt client
//! (`tests/py/interop.py`) against a real Mosquitto started by the test as the reference, then
//! against the real gateway's embedded broker, logging in with a user and password. Every case
//! must pass on both.
//!
//! - keep-alive 0 (keep-alive off, which MQTT allows) was dropped without a CONNACK by the
//!   vendored rumqttd; a client with keep-alive N must still be dropped after 1.5 × N of silence.
//! - an empty client id: refused with return code 2 under MQTT 3.1.1 with clean session 0,
//!   given an id by the broker otherwise (MQTT 5: returned as Assigned Client Identifier).

mod common;

use common::TestGateway;
use common::mosquitto::start_mosquitto;
use printgate::broker::config::Access;
use std::time::Duration;

const USER: &str = "U";
const PASSWORD: &str = "P";

/// Run one case of the script against the broker on `port`; its JSON line, or a failure that
/// names the broker and shows what the script saw.
async fn run_case(broker: &str, port: u16, case: &str) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/interop.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args([script, "127.0.0.1", &port.to_string(), USER, PASSWORD])
            .args(["interop", case])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{broker}: the paho script ({case}) ends within 60 s"))
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{broker}: case {case} failed (exit {:?}): {stdout} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// The case passes on Mosquitto (the reference) and on printgate's embedded broker.
async fn on_both(case: &str) -> serde_json::Value {
    common::require_paho();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mosquitto, port) = start_mosquitto(dir.path()).await.expect("mosquitto starts");
    run_case("Mosquitto", port, case).await;
    drop(mosquitto);
    let (tg, mqtt) = TestGateway::start_broker(USER, PASSWORD, Access::Control).await;
    let port = mqtt.port();
    let got = run_case("printgate", port, case).await;
    tg.shutdown().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_v311_round_trip() {
    on_both("keepalive0-v311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_v5_round_trip() {
    on_both("keepalive0-v5").await;
}

/// Keep-alive 0 must not switch the keep-alive off for clients that asked for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_still_enforced() {
    on_both("keepalive-enforced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_v311_persistent_is_rejected() {
    on_both("empty-id-v311-persistent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_v311_clean_is_assigned() {
    on_both("empty-id-v311-clean").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_v5_gets_assigned_identifier() {
    let got = on_both("empty-id-v5").await;
    // The id printgate gives back is the client's own (what it would send to resume), not the
    // broker-internal one with the user's prefix.
    let assigned = got["assigned"].as_str().unwrap_or_default();
    assert!(
        !assigned.is_empty() && !assigned.starts_with("c-"),
        "assigned id {assigned:?}"
    );
}
