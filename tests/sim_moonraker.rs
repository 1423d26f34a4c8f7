//! The Moonraker simulator behaves like Moonraker's `[mqtt]` component and HTTP file API:
//! checked against printgate's real embedded broker with a plain rumqttc client playing the
//! gateway, and with reqwest for the HTTP side. No sleeps: every wait is a bounded await on a
//! message, a log entry or a `truth` transition.

use printgate::broker::config::BrokerLimits;
use printgate::broker::embedded::{self, InternalBroker};
use printgate::sim::moonraker::{
    KlippyState, MoonrakerSimConfig, PrintState, RpcOutcome, SimMoonraker, UploadFailure,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const INST: &str = "voron";

/// A rumqttc client standing in for the gateway.
struct Gateway {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    next_id: u64,
}

impl Gateway {
    async fn connect(
        broker: &InternalBroker,
        name: &str,
        topics: &[&str],
        max_packet: usize,
    ) -> Self {
        let mut o = MqttOptions::new(name, broker.v4.ip().to_string(), broker.v4.port());
        o.set_credentials(broker.username.clone(), broker.password.clone())
            .set_clean_session(true)
            .set_max_packet_size(max_packet, max_packet)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        for t in topics {
            client.subscribe(*t, QoS::AtLeastOnce).await.unwrap();
            timeout(WAIT, sub_rx.recv())
                .await
                .expect("suback")
                .expect("suback");
        }
        Gateway {
            client,
            rx,
            next_id: 100,
        }
    }

    /// The next publish on `topic` whose payload satisfies `pred`.
    async fn next_on(&mut self, topic: &str, pred: impl Fn(&[u8]) -> bool) -> Publish {
        timeout(WAIT, async {
            loop {
                let p = self.rx.recv().await.expect("gateway client stopped");
                if p.topic == topic && pred(&p.payload) {
                    return p;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing matching on {topic} within {WAIT:?}"))
    }

    async fn next_json(&mut self, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let p = self
            .next_on(topic, |b| {
                serde_json::from_slice::<Value>(b).is_ok_and(|v| pred(&v))
            })
            .await;
        serde_json::from_slice(&p.payload).unwrap()
    }

    async fn publish_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(
                format!("{INST}/moonraker/api/request"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    /// Send a request, return its response (matched by id).
    async fn rpc(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.publish_raw(req.to_string().into_bytes()).await;
        self.next_json(&format!("{INST}/moonraker/api/response"), |v| v["id"] == id)
            .await
    }
}

async fn broker() -> InternalBroker {
    embedded::start(&BrokerLimits::default()).await.unwrap()
}

fn sim_config(b: &InternalBroker) -> MoonrakerSimConfig {
    let mut cfg = MoonrakerSimConfig::new(INST, b.v4);
    cfg.username = Some(b.username.clone());
    cfg.password = Some(b.password.clone());
    cfg.client_id = Some(format!("moonraker-{INST}"));
    cfg
}

async fn connected(sim: &SimMoonraker) {
    let mut t = sim.truth();
    timeout(WAIT, t.wait_for(|t| t.mqtt_connected))
        .await
        .expect("simulated Moonraker did not connect")
        .unwrap();
}

async fn wait_print(sim: &SimMoonraker, state: PrintState) {
    let mut t = sim.truth();
    timeout(WAIT, t.wait_for(|t| t.print_state == state))
        .await
        .unwrap_or_else(|_| panic!("print never reached {state:?}"))
        .unwrap();
}

const STATUS: &str = "voron/klipper/status";
const RESP: &str = "voron/moonraker/api/response";
const AVAIL: &str = "voron/moonraker/status";

fn gcode(secs: u32, layers: u32) -> Vec<u8> {
    let mut g = format!(
        "; generated by PrusaSlicer\nM140 S60\nM104 S205\nM190 S60\nM109 S205\n; estimated printing time (normal mode) = {}m {}s\n",
        secs / 60,
        secs % 60
    );
    for i in 0..layers {
        g.push_str(&format!(";LAYER_CHANGE\n;Z:{}\nG1 X10 Y10 E1\n", i));
    }
    g.into_bytes()
}

#[tokio::test]
async fn online_will_reconnect_and_clean_shutdown() {
    let b = broker().await;
    let sim = SimMoonraker::start(sim_config(&b)).await.unwrap();
    connected(&sim).await;
    let mut gw = Gateway::connect(&b, "gw-avail", &[AVAIL, RESP], 64 * 1024).await;
    // Retained "online" after CONNACK.
    let online = gw.next_on(AVAIL, |_| true).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&online.payload).unwrap(),
        json!({"server": "online"})
    );
    assert!(online.retain, "a late subscriber gets it as retained");

    // Dropped TCP without DISCONNECT: the broker publishes the will.
    sim.go_offline().await;
    assert!(!sim.truth().borrow().mqtt_connected);
    let will = gw.next_json(AVAIL, |_| true).await;
    assert_eq!(will, json!({"server": "offline"}));

    // A request sent while it is away is never delivered later (clean session each time).
    gw.rpc_nowait_gcode("M104 S123").await;
    sim.come_back().await;
    assert_eq!(sim.truth().borrow().mqtt_connections, 2);
    gw.next_json(AVAIL, |v| v == &json!({"server": "online"}))
        .await;
    let r = gw.rpc("server.info", json!({})).await;
    assert_eq!(r["result"]["klippy_state"], "ready");
    let log = sim.rpc_log().entries();
    assert!(
        log.iter().all(|e| e.method != "printer.gcode.script"),
        "stale request delivered: {log:?}"
    );
    assert_eq!(log.last().unwrap().conn, 2);

    // Clean shutdown: offline retained, then DISCONNECT (no will needed).
    sim.shutdown().await;
    gw.next_json(AVAIL, |v| v == &json!({"server": "offline"}))
        .await;
    let mut late = Gateway::connect(&b, "gw-late", &[AVAIL], 64 * 1024).await;
    let retained = late.next_on(AVAIL, |_| true).await;
    assert!(retained.retain);
    assert_eq!(
        serde_json::from_slice::<Value>(&retained.payload).unwrap(),
        json!({"server": "offline"})
    );
}

impl Gateway {
    async fn rpc_nowait_gcode(&mut self, script: &str) {
        let req = json!({"jsonrpc": "2.0", "method": "printer.gcode.script", "params": {"script": script}, "id": 1});
        self.publish_raw(req.to_string().into_bytes()).await;
    }
}

#[tokio::test]
async fn status_is_full_once_then_deltas() {
    let b = broker().await;
    let mut gw = Gateway::connect(&b, "gw-status", &[STATUS, RESP], 64 * 1024).await;
    let sim = SimMoonraker::start(sim_config(&b)).await.unwrap();
    let full = gw.next_json(STATUS, |_| true).await;
    assert!(full["eventtime"].as_f64().is_some());
    let status = full["status"].as_object().unwrap();
    for obj in [
        "webhooks",
        "print_stats",
        "virtual_sdcard",
        "display_status",
        "extruder",
        "heater_bed",
    ] {
        assert!(status.contains_key(obj), "{obj} missing from {full}");
    }
    assert!(
        !status.contains_key("toolhead"),
        "only status_objects are published"
    );
    assert_eq!(status["webhooks"]["state"], "ready");
    assert_eq!(status["print_stats"]["state"], "standby");
    assert_eq!(
        status["print_stats"]["info"],
        json!({"total_layer": null, "current_layer": null})
    );
    assert_eq!(status["virtual_sdcard"]["file_path"], Value::Null);

    let r = gw
        .rpc(
            "printer.gcode.script",
            json!({"script": "M104 S200\nM140 S60"}),
        )
        .await;
    assert_eq!(r["result"], "ok");
    let delta = gw
        .next_json(STATUS, |v| v["status"]["extruder"].get("target").is_some())
        .await;
    assert_eq!(delta["status"]["extruder"]["target"], 200.0);
    assert_eq!(delta["status"]["heater_bed"]["target"], 60.0);
    assert!(
        delta["status"].get("print_stats").is_none(),
        "unchanged objects are left out: {delta}"
    );
    assert!(delta["status"]["extruder"].get("power").is_some());
    assert!(delta["status"]["webhooks"].is_null());
    assert!(sim.truth().borrow().status_publishes >= 2);
    let conf = sim.moonraker_conf();
    assert!(conf.starts_with("[mqtt]\naddress: 127.0.0.1\n"), "{conf}");
    assert!(
        conf.contains("instance_name: voron\nstatus_objects:\n  webhooks\n"),
        "{conf}"
    );
}

#[tokio::test]
async fn json_rpc_methods_errors_and_duplicates() {
    let b = broker().await;
    let sim = SimMoonraker::start(sim_config(&b)).await.unwrap();
    connected(&sim).await;
    let mut gw = Gateway::connect(&b, "gw-rpc", &[RESP], 64 * 1024).await;
    sim.put_file("cube.gcode", gcode(600, 10));

    let info = gw.rpc("server.info", json!({})).await;
    assert_eq!(info["jsonrpc"], "2.0");
    assert_eq!(info["result"]["klippy_connected"], true);
    assert!(
        info["result"]["components"]
            .as_array()
            .unwrap()
            .contains(&json!("mqtt"))
    );
    assert!(info["result"]["moonraker_version"].is_string());
    assert!(info["result"]["api_version"].is_array());
    let pi = gw.rpc("printer.info", json!({})).await;
    assert_eq!(pi["result"]["state"], "ready");
    assert_eq!(pi["result"]["state_message"], "Printer is ready");
    assert!(pi["result"]["software_version"].is_string());
    assert_eq!(pi["result"]["hostname"], INST);
    let list = gw.rpc("printer.objects.list", json!({})).await;
    assert!(
        list["result"]["objects"]
            .as_array()
            .unwrap()
            .contains(&json!("print_stats"))
    );
    let q = gw
        .rpc(
            "printer.objects.query",
            json!({"objects": {"print_stats": null, "extruder": ["temperature", "target"]}}),
        )
        .await;
    assert!(q["result"]["eventtime"].as_f64().is_some());
    assert_eq!(q["result"]["status"]["print_stats"]["state"], "standby");
    let ex = q["result"]["status"]["extruder"].as_object().unwrap();
    assert_eq!(ex.len(), 2, "only the requested fields: {ex:?}");
    let files = gw.rpc("server.files.list", json!({})).await;
    assert_eq!(files["result"][0]["path"], "cube.gcode");
    assert_eq!(files["result"][0]["permissions"], "rw");

    // Starting: unknown file, then ok, then busy.
    let missing = gw
        .rpc("printer.print.start", json!({"filename": "nope.gcode"}))
        .await;
    assert_eq!(
        missing["error"],
        json!({"code": 400, "message": "Unable to open file"})
    );
    let ok = gw
        .rpc("printer.print.start", json!({"filename": "cube.gcode"}))
        .await;
    assert_eq!(ok["result"], "ok");
    assert_eq!(sim.truth().borrow().print_state, PrintState::Printing);
    let busy = gw
        .rpc("printer.print.start", json!({"filename": "cube.gcode"}))
        .await;
    assert_eq!(busy["error"]["message"], "SD busy");
    assert_eq!(
        gw.rpc("printer.print.pause", json!({})).await["result"],
        "ok"
    );
    assert_eq!(sim.truth().borrow().print_state, PrintState::Paused);
    assert_eq!(
        gw.rpc("printer.print.resume", json!({})).await["result"],
        "ok"
    );
    assert_eq!(sim.truth().borrow().print_state, PrintState::Printing);
    assert_eq!(
        gw.rpc("printer.print.cancel", json!({})).await["result"],
        "ok"
    );
    assert_eq!(sim.truth().borrow().print_state, PrintState::Cancelled);

    // Errors shaped like Moonraker's.
    let unknown = gw.rpc("printer.teleport", json!({})).await;
    assert_eq!(
        unknown["error"],
        json!({"code": -32601, "message": "Method not found"})
    );
    gw.publish_raw(b"{not json".to_vec()).await;
    let parse = gw.next_json(RESP, |v| v["error"]["code"] == -32700).await;
    assert_eq!(
        parse,
        json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null})
    );
    let bad_params = gw.rpc("server.info", json!([1, 2])).await;
    assert_eq!(bad_params["error"]["code"], -32602);
    gw.publish_raw(br#"{"jsonrpc":"1.0","method":"server.info","id":"old"}"#.to_vec())
        .await;
    let invalid = gw.next_json(RESP, |v| v["id"] == "old").await;
    assert_eq!(
        invalid["error"],
        json!({"code": -32600, "message": "Invalid Request"})
    );
    // A notification (no id) runs but gets no response; a batch gets an array back.
    gw.publish_raw(
        br#"{"jsonrpc":"2.0","method":"printer.gcode.script","params":{"script":"M117 hi"}}"#
            .to_vec(),
    )
    .await;
    let batch = json!([
        {"jsonrpc": "2.0", "method": "server.info", "id": "b1"},
        {"jsonrpc": "2.0", "method": "nope", "id": "b2"}
    ]);
    gw.publish_raw(batch.to_string().into_bytes()).await;
    let arr = gw.next_json(RESP, |v| v.is_array()).await;
    assert_eq!(arr[0]["id"], "b1");
    assert_eq!(arr[1]["error"]["code"], -32601);
    let note = sim
        .rpc_log()
        .wait_for(|e| e.params["script"] == "M117 hi", WAIT)
        .await
        .unwrap();
    assert!(note.executed() && note.response.is_none());

    // mqtt_timestamp: the repeat is refused and not executed.
    let ts = 1_700_000_000_000_000u64;
    let first = gw
        .rpc(
            "printer.gcode.script",
            json!({"script": "M140 S70", "mqtt_timestamp": ts}),
        )
        .await;
    assert_eq!(first["result"], "ok");
    let dup = gw
        .rpc(
            "printer.gcode.script",
            json!({"script": "M140 S80", "mqtt_timestamp": ts}),
        )
        .await;
    assert_eq!(
        dup["error"],
        json!({"code": -10000, "message": "Duplicate MQTT Request"})
    );
    assert_eq!(sim.truth().borrow().bed_target, 70.0);
    let entries: Vec<_> = sim
        .rpc_log()
        .calls("printer.gcode.script")
        .into_iter()
        .filter(|e| e.mqtt_timestamp.is_some())
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].outcome, RpcOutcome::Executed);
    assert_eq!(entries[1].outcome, RpcOutcome::Duplicate);
    assert_eq!(entries[1].mqtt_timestamp, Some(json!(ts)));

    // Emergency stop: Klippy shuts down, gcode methods fail with its message.
    assert_eq!(
        gw.rpc("printer.emergency_stop", json!({})).await["result"],
        "ok"
    );
    let refused = gw
        .rpc("printer.print.start", json!({"filename": "cube.gcode"}))
        .await;
    assert_eq!(refused["error"]["code"], 400);
    assert_eq!(
        refused["error"]["message"],
        "Shutdown due to webhooks request"
    );
    let info = gw.rpc("server.info", json!({})).await;
    assert_eq!(info["result"]["klippy_state"], "shutdown");
    // FIRMWARE_RESTART brings it back.
    gw.rpc("printer.firmware_restart", json!({})).await;
    let mut t = sim.truth();
    timeout(WAIT, t.wait_for(|t| t.klippy_state == KlippyState::Ready))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_print_runs_to_complete_and_screen_starts_are_seen() {
    let b = broker().await;
    let mut cfg = sim_config(&b);
    cfg.time_scale = 3000.0;
    let mut gw = Gateway::connect(&b, "gw-print", &[STATUS, RESP], 64 * 1024).await;
    let sim = SimMoonraker::start(cfg).await.unwrap();
    gw.next_json(STATUS, |_| true).await;
    sim.put_file("benchy.gcode", gcode(1200, 40));
    let r = gw
        .rpc("printer.print.start", json!({"filename": "/benchy.gcode"}))
        .await;
    assert_eq!(r["result"], "ok");
    let printing = gw
        .next_json(STATUS, |v| {
            v["status"]["print_stats"]["state"] == "printing"
        })
        .await;
    assert_eq!(
        printing["status"]["print_stats"]["filename"],
        "benchy.gcode"
    );
    assert_eq!(printing["status"]["print_stats"]["info"]["total_layer"], 40);
    assert_eq!(printing["status"]["virtual_sdcard"]["is_active"], true);
    assert_eq!(printing["status"]["extruder"]["target"], 205.0);
    let done = gw
        .next_json(STATUS, |v| {
            v["status"]["print_stats"]["state"] == "complete"
        })
        .await;
    assert_eq!(done["status"]["virtual_sdcard"]["progress"], 1.0);
    let t = sim.truth().borrow().clone();
    assert_eq!(t.print_state, PrintState::Complete);
    assert_eq!(t.current_layer, Some(40));
    assert_eq!(t.jobs_started, 1);

    // A print started on the printer's screen, then finished at once.
    sim.start_from_screen("BENCHY.gcode").unwrap();
    gw.next_json(STATUS, |v| {
        v["status"]["print_stats"]["state"] == "printing"
    })
    .await;
    sim.finish_now();
    wait_print(&sim, PrintState::Complete).await;
    assert!(sim.start_from_screen("missing.gcode").is_err());
}

async fn upload(
    http: &reqwest::Client,
    sim: &SimMoonraker,
    key: Option<&str>,
    name: &str,
    bytes: Vec<u8>,
    extra: &[(&str, &str)],
) -> reqwest::Result<reqwest::Response> {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    let mut req = http
        .post(format!("{}/server/files/upload", sim.http_url()))
        .multipart(form);
    if let Some(k) = key {
        req = req.header("X-Api-Key", k);
    }
    req.send().await
}

#[tokio::test]
async fn http_upload_checksum_api_key_and_disk_full() {
    let b = broker().await;
    let mut cfg = sim_config(&b);
    cfg.api_key = Some("k3y".into());
    let sim = SimMoonraker::start(cfg).await.unwrap();
    let http = reqwest::Client::new();
    let data = gcode(60, 3);
    let sha = hex::encode(Sha256::digest(&data));

    let r = upload(&http, &sim, None, "a.gcode", data.clone(), &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 401);
    assert_eq!(body["error"]["message"], "Unauthorized");

    let r = upload(
        &http,
        &sim,
        Some("k3y"),
        "a.gcode",
        data.clone(),
        &[("checksum", &sha)],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("/server/files/gcodes/a.gcode")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["item"]["path"], "a.gcode");
    assert_eq!(body["item"]["root"], "gcodes");
    assert_eq!(body["item"]["size"], data.len());
    assert_eq!(body["item"]["permissions"], "rw");
    assert!(body["item"]["modified"].as_f64().is_some());
    assert_eq!(body["print_started"], false);
    assert_eq!(body["print_queued"], false);
    assert_eq!(body["action"], "create_file");
    assert_eq!(sim.files(), vec![("a.gcode".to_string(), data.clone())]);

    let r = upload(
        &http,
        &sim,
        Some("k3y"),
        "b.gcode",
        data.clone(),
        &[("checksum", &"0".repeat(64))],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("File checksum mismatch")
    );

    // Sub-folder via `path`, listed over HTTP and JSON-RPC.
    let r = upload(
        &http,
        &sim,
        Some("k3y"),
        "c.gcode",
        data.clone(),
        &[("path", "sub")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let list: Value = http
        .get(format!("{}/server/files/list", sim.http_url()))
        .header("X-Api-Key", "k3y")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = list["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["a.gcode", "sub/c.gcode"]);

    // Disk full: Moonraker answers 500 "Unable to save file" and keeps nothing.
    sim.knobs()
        .set(|k| k.storage_capacity = Some(data.len() as u64 * 2 + 10));
    let r = upload(&http, &sim, Some("k3y"), "big.gcode", vec![b';'; 100], &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("Unable to save file")
    );
    assert_eq!(sim.files().len(), 2);
    sim.knobs().set(|k| k.storage_capacity = None);

    // Fault knobs.
    sim.knobs()
        .set(|k| k.upload_failure = UploadFailure::Http500);
    let r = upload(&http, &sim, Some("k3y"), "d.gcode", data.clone(), &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    sim.knobs()
        .set(|k| k.upload_failure = UploadFailure::DiskFull);
    let r = upload(&http, &sim, Some("k3y"), "d.gcode", data.clone(), &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    sim.knobs()
        .set(|k| k.upload_failure = UploadFailure::DropMidBody);
    let r = upload(
        &http,
        &sim,
        Some("k3y"),
        "d.gcode",
        vec![b';'; 256 * 1024],
        &[],
    )
    .await;
    assert!(r.is_err(), "the connection should drop mid-body: {r:?}");
    sim.knobs().set(|k| k.upload_failure = UploadFailure::None);
    assert_eq!(sim.files().len(), 2);

    // `print=true` is honoured like Moonraker, and recorded (printgate must never send it).
    let r = upload(
        &http,
        &sim,
        Some("k3y"),
        "e.gcode",
        data.clone(),
        &[("print", "true")],
    )
    .await
    .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["print_started"], true);
    assert!(
        sim.uploads()
            .iter()
            .any(|u| u.path == "e.gcode" && u.print_requested)
    );
    // The loaded file cannot be replaced or deleted while printing.
    let r = upload(&http, &sim, Some("k3y"), "e.gcode", data.clone(), &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let del = http
        .delete(format!("{}/server/files/gcodes/a.gcode", sim.http_url()))
        .header("X-Api-Key", "k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let info: Value = http
        .get(format!("{}/server/info", sim.http_url()))
        .header("X-Api-Key", "k3y")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["result"]["klippy_state"], "ready");
}

#[tokio::test]
async fn response_and_start_knobs() {
    let b = broker().await;
    let sim = SimMoonraker::start(sim_config(&b)).await.unwrap();
    connected(&sim).await;
    let mut gw = Gateway::connect(&b, "gw-knobs", &[RESP], 64 * 1024).await;
    sim.put_file("a.gcode", gcode(600, 5));
    let knobs = sim.knobs();

    // drop_responses: executed, never answered (the next answered request proves it).
    knobs.set(|k| k.drop_responses = true);
    let req = json!({"jsonrpc": "2.0", "method": "printer.gcode.script", "params": {"script": "M104 S150"}, "id": 7});
    gw.publish_raw(req.to_string().into_bytes()).await;
    let e = sim
        .rpc_log()
        .wait_for(|e| e.id == json!(7), WAIT)
        .await
        .unwrap();
    assert!(e.executed() && !e.response_sent);
    assert_eq!(sim.truth().borrow().extruder_target, 150.0);
    knobs.set(|k| k.drop_responses = false);
    let req = json!({"jsonrpc": "2.0", "method": "server.info", "id": 8});
    gw.publish_raw(req.to_string().into_bytes()).await;
    // Responses arrive in request order: everything before id 8 would have shown up first.
    let first = gw.next_json(RESP, |_| true).await;
    assert_eq!(
        first["id"], 8,
        "the dropped response was sent after all: {first}"
    );

    // duplicate_responses: the same response twice.
    knobs.set(|k| k.duplicate_responses = true);
    let r = gw.rpc("server.info", json!({})).await;
    let again = gw.next_json(RESP, |_| true).await;
    assert_eq!(again, r);
    knobs.set(|k| k.duplicate_responses = false);

    // ignore_start: "ok" but no print; refuse_start: Klipper's busy error.
    knobs.set(|k| k.ignore_start = true);
    assert_eq!(
        gw.rpc("printer.print.start", json!({"filename": "a.gcode"}))
            .await["result"],
        "ok"
    );
    assert_eq!(sim.truth().borrow().print_state, PrintState::Standby);
    knobs.set(|k| {
        k.ignore_start = false;
        k.refuse_start = true;
    });
    let r = gw
        .rpc("printer.print.start", json!({"filename": "a.gcode"}))
        .await;
    assert_eq!(r["error"]["code"], 400);
    assert_eq!(sim.truth().borrow().jobs_started, 0);
    knobs.set(|k| k.refuse_start = false);

    // Klippy not ready: gcode methods fail with its state message; disconnected: 503.
    knobs.set_klippy_state(KlippyState::Startup);
    let r = gw
        .rpc("printer.print.start", json!({"filename": "a.gcode"}))
        .await;
    assert_eq!(r["error"]["code"], 400);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Printer is not ready")
    );
    assert_eq!(
        gw.rpc("server.info", json!({})).await["result"]["klippy_state"],
        "startup"
    );
    knobs.set_klippy_state(KlippyState::Disconnected);
    let r = gw
        .rpc(
            "printer.objects.query",
            json!({"objects": {"webhooks": null}}),
        )
        .await;
    assert_eq!(
        r["error"],
        json!({"code": 503, "message": "Klippy Host not connected"})
    );
    assert_eq!(
        gw.rpc("server.info", json!({})).await["result"]["klippy_connected"],
        false
    );
    knobs.set_klippy_state(KlippyState::Ready);
    assert_eq!(
        gw.rpc("printer.print.start", json!({"filename": "a.gcode"}))
            .await["result"],
        "ok"
    );
    assert_eq!(sim.truth().borrow().jobs_started, 1);
}

#[tokio::test]
async fn status_knobs_qos_and_split_status() {
    let b = broker().await;
    let mut cfg = sim_config(&b);
    cfg.time_scale = 50.0;
    let mut gw = Gateway::connect(&b, "gw-sk", &[STATUS, RESP], 64 * 1024).await;
    let sim = SimMoonraker::start(cfg).await.unwrap();
    gw.next_json(STATUS, |_| true).await;
    let knobs = sim.knobs();

    knobs.set(|k| k.malformed_status = true);
    let bad = gw
        .next_on(STATUS, |b| serde_json::from_slice::<Value>(b).is_err())
        .await;
    assert!(!bad.payload.is_empty());
    knobs.set(|k| k.malformed_status = false);

    // status_silence: ticks go on (temperatures move) but nothing is published.
    knobs.set(|k| k.status_silence = true);
    gw.rpc("printer.gcode.script", json!({"script": "M104 S250"}))
        .await;
    let before = sim.truth().borrow().status_publishes;
    let mut t = sim.truth();
    timeout(WAIT, t.wait_for(|t| t.extruder_temp > 60.0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sim.truth().borrow().status_publishes, before);
    knobs.set(|k| k.status_silence = false);

    // mqtt_qos 1: publishes go out at QoS 1.
    knobs.set(|k| k.mqtt_qos = 1);
    let p = gw.next_on(STATUS, |_| true).await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sim.shutdown().await;

    // publish_split_status: one retained message per field.
    let mut cfg = sim_config(&b);
    cfg.instance_name = "split".into();
    cfg.client_id = Some("moonraker-split".into());
    cfg.publish_split_status = true;
    let sim = SimMoonraker::start(cfg).await.unwrap();
    let topic = "split/klipper/state/print_stats/state";
    let mut gw2 = Gateway::connect(&b, "gw-split", &[topic], 64 * 1024).await;
    gw2.next_on(topic, |_| true).await;
    // Once the broker has it, a late subscriber gets it as a retained message.
    let mut gw3 = Gateway::connect(&b, "gw-split-late", &[topic], 64 * 1024).await;
    let p = gw3.next_on(topic, |_| true).await;
    assert!(p.retain);
    let v: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["value"], "standby");
    assert!(v["eventtime"].as_f64().is_some());
    assert_eq!(sim.instance_name(), "split");
    sim.shutdown().await;
}

#[tokio::test]
async fn oversize_status_and_refused_credentials() {
    let limits = BrokerLimits {
        max_packet_bytes: 4 * 1024 * 1024,
        ..BrokerLimits::default()
    };
    let b = embedded::start(&limits).await.unwrap();
    let mut gw = Gateway::connect(&b, "gw-big", &[STATUS], 4 * 1024 * 1024).await;
    let sim = SimMoonraker::start(sim_config(&b)).await.unwrap();
    gw.next_json(STATUS, |_| true).await;
    sim.knobs().set(|k| k.oversize_status = true);
    let big = gw.next_on(STATUS, |b| b.len() > 1024 * 1024).await;
    let v: Value = serde_json::from_slice(&big.payload).unwrap();
    assert!(v["status"].is_object());

    let mut cfg = sim_config(&b);
    cfg.instance_name = "wrongpw".into();
    cfg.client_id = Some("moonraker-wrongpw".into());
    cfg.password = Some("not-the-password".into());
    let bad = SimMoonraker::start(cfg).await.unwrap();
    let mut t = bad.truth();
    let refused = timeout(WAIT, t.wait_for(|t| t.mqtt_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(!refused.mqtt_connected);
    assert!(refused.mqtt_error.unwrap().contains("username/password"));
}

/// Moonraker's default `client_id` is empty (paho sends an empty id with MQTT 3.1.1): two
/// such printers on one broker both work.
#[tokio::test]
async fn default_empty_client_ids_coexist() {
    let b = broker().await;
    let mut cfg = sim_config(&b);
    cfg.client_id = None;
    let first = SimMoonraker::start(cfg.clone()).await.unwrap();
    connected(&first).await;
    cfg.instance_name = "other".into();
    let second = SimMoonraker::start(cfg).await.unwrap();
    connected(&second).await;
    let mut gw = Gateway::connect(
        &b,
        "gw-empty",
        &[RESP, "other/moonraker/api/response"],
        64 * 1024,
    )
    .await;
    assert!(gw.rpc("server.info", json!({})).await["result"].is_object());
    let req = json!({"jsonrpc": "2.0", "method": "server.info", "id": 1});
    gw.client
        .publish(
            "other/moonraker/api/request",
            QoS::AtLeastOnce,
            false,
            req.to_string(),
        )
        .await
        .unwrap();
    gw.next_json("other/moonraker/api/response", |v| v["id"] == 1)
        .await;
    assert_eq!(
        first.truth().borrow().mqtt_connections,
        1,
        "not kicked by the second"
    );
}

/// With printgate's default broker limits (64 KiB packets) an oversize status gets the simulated
/// Moonraker disconnected by the broker (its will fires); it comes back and keeps answering.
#[tokio::test]
async fn oversize_status_over_default_limits_reconnects() {
    let b = broker().await;
    let sim = SimMoonraker::start(sim_config(&b)).await.unwrap();
    connected(&sim).await;
    let mut gw = Gateway::connect(&b, "gw-limit", &[AVAIL, RESP], 64 * 1024).await;
    gw.next_json(AVAIL, |v| v["server"] == "online").await;
    sim.knobs().set(|k| k.oversize_status = true);
    gw.next_json(AVAIL, |v| v["server"] == "offline").await;
    gw.next_json(AVAIL, |v| v["server"] == "online").await;
    let mut t = sim.truth();
    timeout(
        WAIT,
        t.wait_for(|t| t.mqtt_connected && t.mqtt_connections >= 2),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        gw.rpc("server.info", json!({})).await["result"]["klippy_state"],
        "ready"
    );
}
