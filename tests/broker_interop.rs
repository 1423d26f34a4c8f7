//! MQTT interoperability (issue 15): the cases of the Eclipse Paho interoperability suite
//! (`client_test.py` for MQTT 3.1.1, `client_test5.py` for MQTT 5), written anew in
//! `tests/py/interop.py` and driven by the real paho-mqtt client, plus printgate's own
//! (keep-alive 0, empty client ids). Each suite runs on a real Mosquitto started by the test as
//! the reference, then on the real gateway's embedded broker, both logging in with a user and
//! password; every case that Mosquitto passes must pass on printgate. One Python process runs
//! all cases of a suite at once (one JSON line each), so a suite takes about as long as its
//! slowest case.
//!
//! Mosquitto 2.0 fails some cases itself; they are listed in [`REFERENCE_FAILS`] with the
//! reason, so that a broken reference setup (which would fail everything and so demand
//! nothing of printgate) fails the test instead.

mod common;

use common::TestGateway;
use common::mosquitto::start_mosquitto_login;
use printgate::broker::config::Access;
use std::collections::BTreeMap;
use std::time::Duration;

const USER: &str = "U";
const PASSWORD: &str = "P";
/// Every case's topics are under this root (and a level of its own), far from `printgate/…`.
const ROOT: &str = "interop";

/// Cases Mosquitto 2.0 (the reference) does not pass, and why.
const REFERENCE_FAILS: &[(&str, &str)] = &[
    // Mosquitto's file ACL cannot refuse a SUBSCRIBE (it grants it and filters deliveries),
    // and printgate lets every non-printer login subscribe anywhere: both grant.
    (
        "v311:subscribe-failure",
        "no broker here refuses a subscription",
    ),
    (
        "v5:subscribe-failure",
        "no broker here refuses a subscription",
    ),
    // Mosquitto 2.0 sends one message at the QoS of the last matching subscription (1), not
    // the highest (2) or one per subscription.
    (
        "v311:overlapping-subscriptions",
        "Mosquitto 2.0 picks the lower QoS",
    ),
    // Mosquitto 2.0 does not disconnect a client that exceeds its receive maximum.
    (
        "v5:flow-control2",
        "Mosquitto 2.0 does not enforce receive maximum",
    ),
    // Mosquitto 2.0 sends the will at session expiry, ignoring a shorter will delay.
    ("v5:will-delay", "Mosquitto 2.0 ignores the will delay"),
];

/// Run every case of `suite` against the broker on `port`: case name → its JSON result.
async fn run_suite(broker: &str, port: u16, suite: &str) -> BTreeMap<String, serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/interop.py");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("python3")
            .args([script, "127.0.0.1", &port.to_string(), USER, PASSWORD, ROOT])
            .arg(suite)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{broker}: the paho suite {suite} ends within 90 s"))
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: BTreeMap<String, serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| (format!("{suite}:{}", r["case"].as_str().unwrap_or("?")), r))
        .collect();
    assert!(
        !results.is_empty(),
        "{broker}: the suite {suite} reported no case (exit {:?}): {stdout} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    results
}

fn passed(r: &serde_json::Value) -> bool {
    r["ok"].as_bool() == Some(true)
}

/// Run `suite` on Mosquitto and on printgate; fail naming every case that Mosquitto passes and
/// printgate does not.
async fn compare(suite: &str) {
    common::require_paho();
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = format!(
        "topic deny {ROOT}/+/subscribe-failure/nosubscribe\ntopic readwrite #\ntopic readwrite $dollar/#"
    );
    let (mosquitto, port) = start_mosquitto_login(dir.path(), USER, PASSWORD, Some(&acl))
        .await
        .expect("mosquitto starts");
    let reference = run_suite("Mosquitto", port, suite).await;
    drop(mosquitto);
    let (tg, mqtt) = TestGateway::start_broker(USER, PASSWORD, Access::Control).await;
    let ours = run_suite("printgate", mqtt.port(), suite).await;
    tg.shutdown().await;

    let mut table = String::new();
    let mut regressions = Vec::new();
    let mut reference_broken = Vec::new();
    for (case, r) in &reference {
        let o = ours.get(case);
        let o_ok = o.is_some_and(passed);
        table += &format!(
            "{case:40} mosquitto {:4} printgate {:4} {}\n",
            if passed(r) { "pass" } else { "FAIL" },
            if o_ok { "pass" } else { "FAIL" },
            [(!passed(r)).then_some(r), o.filter(|_| !o_ok)]
                .into_iter()
                .flatten()
                .map(|x| x["error"].to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        );
        if passed(r) && !o_ok {
            regressions.push(format!(
                "{case}: {}",
                o.map(|o| o["error"].to_string())
                    .unwrap_or_else(|| "no result".into())
            ));
        }
        if !passed(r) && !REFERENCE_FAILS.iter().any(|(c, _)| c == case) {
            reference_broken.push(format!("{case}: {}", r["error"]));
        }
    }
    eprintln!("{table}");
    assert!(
        reference_broken.is_empty(),
        "Mosquitto (the reference) failed cases it passes when set up right:\n{}",
        reference_broken.join("\n")
    );
    assert!(
        regressions.is_empty(),
        "cases Mosquitto passes and printgate fails:\n{}",
        regressions.join("\n")
    );
    assert_eq!(
        reference.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>(),
        "both brokers ran every case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_interop_mqtt_311() {
    compare("v311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_interop_mqtt_5() {
    compare("v5").await;
}
