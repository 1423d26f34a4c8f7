//! Issue 19: `[printers.virtual_printer] allow = [...]` (src/virtual_printer/allow.rs), with
//! bambulabs-api 2.6.6 (pinned in .ci/run, unmodified) through `tests/py/virtual_printer_allow.py`:
//! its `set_print_speed_lvl(3)` and a raw `xcam_control_set` on its own paho client.
//!
//! - `settings_are_refused_by_default`: both get a failed acknowledgement that says why, and
//!   neither reaches the simulated printer.
//! - `allowed_settings_reach_the_printer_on_printgate_s_session`: with both allowed, both are
//!   acknowledged as sent, the simulator logs them on printgate's one session (with printgate's
//!   own `sequence_id`), and the history records them with the client as actor.

mod common;

use common::{TestGateway, WAIT, config_for, start_sim};
use printgate::config::Model;
use printgate::virtual_printer::VirtualPrinterInfo;
use printgate::virtual_printer::allow::AllowedCommand;
use printgate::virtual_printer::config::VirtualPrinterConfig;
use serde_json::Value;
use std::time::Duration;
use tokio::time::timeout;

async fn gateway(allow: Vec<AllowedCommand>) -> (TestGateway, VirtualPrinterInfo) {
    let sim = start_sim(Model::P1S, 10.0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), std::slice::from_ref(&sim));
    let mut vp = VirtualPrinterConfig::on("127.0.0.1:0".parse().expect("address"));
    vp.allow = allow;
    config.printers[0].virtual_printer = vp;
    let tg = TestGateway::start_with(vec![sim], dir, config).await;
    tg.wait_online().await;
    let info = tg
        .gw()
        .virtual_printers
        .get()
        .and_then(|v| v.first().cloned())
        .expect("a virtual printer");
    (tg, info)
}

async fn run_client(vp: &VirtualPrinterInfo) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/virtual_printer_allow.py"
    );
    let out = timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(&vp.host)
            .arg(vp.mqtt_port.to_string())
            .arg(&vp.serial)
            .arg(&vp.access_code)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client script finished in time")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bambulabs-api failed against the virtual printer:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_are_refused_by_default() {
    let (tg, vp) = gateway(Vec::new()).await;
    let v = run_client(&vp).await;
    assert_eq!(v["print_speed"]["result"], "failed", "{v}");
    assert!(
        v["print_speed"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("speed") && r.contains("allow")),
        "{v}"
    );
    assert_eq!(v["xcam_control_set"]["result"], "failed", "{v}");
    assert!(
        v["xcam_control_set"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("nothing was done")),
        "{v}"
    );
    let log = tg.sims[0].command_log();
    assert!(
        !log.iter().any(|c| c.has("print", "print_speed")),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|c| c.has("xcam", "xcam_control_set")),
        "{log:?}"
    );
    tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_settings_reach_the_printer_on_printgate_s_session() {
    let (tg, vp) = gateway(vec![
        AllowedCommand::PrintSpeed,
        AllowedCommand::XcamControlSet,
    ])
    .await;
    let sim = &tg.sims[0];
    let mut arrivals = sim.subscribe_commands();
    let v = run_client(&vp).await;
    for c in ["print_speed", "xcam_control_set"] {
        assert_eq!(v[c]["result"], "success", "{v}");
        assert!(
            v[c]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("sent to")),
            "{v}"
        );
    }
    // Wait until both arrived at the simulated printer (its own log, as they arrive).
    let mut seen = (false, false);
    while seen != (true, true) {
        let c = timeout(WAIT, arrivals.recv())
            .await
            .expect("both settings reach the printer in time")
            .expect("the simulator's log");
        seen.0 |= c.has("print", "print_speed");
        seen.1 |= c.has("xcam", "xcam_control_set");
    }
    let log = sim.command_log();
    let speed = log
        .iter()
        .find(|c| c.has("print", "print_speed"))
        .expect("print_speed reached the printer");
    assert_eq!(speed.json.as_ref().expect("json")["print"]["param"], "3");
    let xcam = log
        .iter()
        .find(|c| c.has("xcam", "xcam_control_set"))
        .expect("xcam_control_set reached the printer");
    let body = &xcam.json.as_ref().expect("json")["xcam"];
    assert_eq!(body["module_name"], "spaghetti_detector");
    assert_ne!(
        body["sequence_id"], "901",
        "sent with printgate's own sequence_id"
    );
    let sessions: std::collections::BTreeSet<u64> = log.iter().map(|c| c.conn_id).collect();
    assert_eq!(sessions.len(), 1, "one session to the printer: {log:?}");
    let controls = tg
        .gw()
        .store
        .events_of_kind(printgate::controls::PRINTER_CONTROL, 20)
        .expect("history");
    let by_client: Vec<_> = controls
        .iter()
        .filter(|e| {
            e.detail["by"]
                .as_str()
                .is_some_and(|b| b.starts_with("virtual printer client"))
        })
        .map(|e| e.detail["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        by_client.contains(&"print_speed".to_string())
            && by_client.contains(&"xcam_control_set".to_string()),
        "{controls:?}"
    );
    tg.shutdown().await;
}
