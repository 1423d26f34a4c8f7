//! The simulator speaks the Bambu LAN protocol (docs/bambu-protocol.md §12): checked with a plain rumqttc
//! client over real TLS on loopback, pinned to the simulator's certificate fingerprint.

use printgate::config::Model;
use printgate::printer::GcodeState;
use printgate::sim::{SimConfig, SimPrinter};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{Value, json};
#[path = "common/tls.rs"]
mod tls;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

fn tls_config(fingerprint: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(tls::pinned_client_config(
        fingerprint,
        None,
        &[&rustls::version::TLS12],
    ))
}

struct TestClient {
    client: AsyncClient,
    events: EventLoop,
    request_topic: String,
    report_topic: String,
    /// Reports that arrived while `send` drove the event loop.
    pending: VecDeque<(Vec<u8>, Value)>,
}

impl TestClient {
    /// Connect and wait for CONNACK; the error is what the event loop reported.
    async fn connect(p: &SimPrinter, code: &str, id: &str) -> Result<TestClient, ConnectionError> {
        Self::connect_pinned(p, code, id, &p.fingerprint()).await
    }

    async fn connect_pinned(
        p: &SimPrinter,
        code: &str,
        id: &str,
        fingerprint: &str,
    ) -> Result<TestClient, ConnectionError> {
        let mut opts = MqttOptions::new(id, p.host(), p.mqtt_port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_credentials("bblp", code);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls_config(fingerprint),
        )));
        let (client, mut events) = AsyncClient::new(opts, 16);
        loop {
            match timeout(WAIT, events.poll()).await {
                Err(_) => return Err(ConnectionError::NetworkTimeout),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
            }
        }
        Ok(TestClient {
            client,
            events,
            request_topic: p.request_topic().to_string(),
            report_topic: p.report_topic().to_string(),
            pending: VecDeque::new(),
        })
    }

    async fn subscribe(&mut self, topic: &str) -> Result<(), ConnectionError> {
        self.client
            .subscribe(topic, QoS::AtMostOnce)
            .await
            .expect("queue subscribe");
        loop {
            match timeout(WAIT, self.events.poll()).await {
                Err(_) => return Err(ConnectionError::NetworkTimeout),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return Ok(()),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn subscribe_report(&mut self) {
        let topic = self.report_topic.clone();
        self.subscribe(&topic).await.expect("SUBACK");
    }

    async fn send(&mut self, msg: Value) {
        self.send_raw(serde_json::to_vec(&msg).expect("json"), QoS::AtLeastOnce)
            .await;
    }

    /// Publish and drive the event loop until the packet was written.
    async fn send_raw(&mut self, payload: Vec<u8>, qos: QoS) {
        self.client
            .publish(&self.request_topic, qos, false, payload)
            .await
            .expect("queue publish");
        loop {
            match timeout(WAIT, self.events.poll()).await {
                Err(_) => panic!("publish not written within {WAIT:?}"),
                Ok(Err(e)) => panic!("connection failed while publishing: {e}"),
                Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => return,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let v = serde_json::from_slice(&p.payload).expect("report is JSON");
                    self.pending.push_back((p.payload.to_vec(), v));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Next message on the report topic within `limit`; `None` on timeout.
    async fn next(&mut self, limit: Duration) -> Result<Option<(Vec<u8>, Value)>, ConnectionError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(Some(m));
        }
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.poll()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let v = serde_json::from_slice(&p.payload).expect("report is JSON");
                    return Ok(Some((p.payload.to_vec(), v)));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Messages until one satisfies `pred`; returns all seen (the match last).
    async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Ok(Some((_, v))) => {
                    let hit = pred(&v);
                    seen.push(v);
                    if hit {
                        return seen;
                    }
                }
                Ok(None) => panic!("expected message did not arrive; saw {seen:#?}"),
                Err(e) => panic!("connection failed while waiting: {e}; saw {seen:#?}"),
            }
        }
    }

    /// Poll until the connection fails; `true` if it did within `limit`.
    async fn dropped_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.poll()).await {
                Err(_) => return false,
                Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn is_push(v: &Value) -> bool {
    v["print"]["command"] == "push_status"
}

fn is_ack(v: &Value, section: &str, command: &str, seq: &str) -> bool {
    v[section]["command"] == command && v[section]["sequence_id"] == seq
}

fn config(model: Model, time_scale: f64) -> SimConfig {
    let mut c = SimConfig::new(model);
    c.time_scale = time_scale;
    c.report_interval = Duration::from_millis(50);
    c
}

/// A minimal sliced 3MF for `model_code` with a predicted print time.
fn three_mf(model_code: &str, prediction_secs: u32) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default();
    w.start_file("Metadata/plate_1.gcode", opts).expect("zip");
    w.write_all(b"G28\nG1 X10 Y10\n").expect("zip");
    w.start_file("Metadata/slice_info.config", opts)
        .expect("zip");
    write!(
        w,
        "<?xml version=\"1.0\"?><config><plate><metadata key=\"index\" value=\"1\"/>\
         <metadata key=\"printer_model_id\" value=\"{model_code}\"/>\
         <metadata key=\"prediction\" value=\"{prediction_secs}\"/></plate></config>"
    )
    .expect("zip");
    w.finish().expect("zip");
    buf.into_inner()
}

fn project_file(seq: &str, name: &str, subtask_id: &str) -> Value {
    json!({"print": {
        "sequence_id": seq, "command": "project_file", "param": "Metadata/plate_1.gcode",
        "url": format!("ftp://{name}"), "file": name, "md5": "",
        "subtask_name": "bracket", "project_id": subtask_id, "profile_id": "0",
        "task_id": subtask_id, "subtask_id": subtask_id, "bed_type": "textured_plate",
        "timelapse": false, "bed_leveling": true, "flow_cali": false,
        "vibration_cali": false, "layer_inspect": true, "use_ams": false
    }})
}

#[tokio::test]
async fn wrong_access_code_gets_connack_5_or_4() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    match TestClient::connect(&p, "00000000", "bad").await {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => {}
        other => panic!("expected CONNACK 5, got {:?}", other.err()),
    }
    p.knobs()
        .set(|k| k.auth_refusal = printgate::sim::AuthRefusal::BadUserNamePassword);
    match TestClient::connect(&p, "00000000", "bad").await {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)) => {}
        other => panic!("expected CONNACK 4, got {:?}", other.err()),
    }
    // The right code works, any client id.
    TestClient::connect(
        &p,
        &p.access_code(),
        "ha-bambulab-0b6f2c1e-5d7a-4d3f-9e7b-3a1f",
    )
    .await
    .expect("right code accepted");
    p.shutdown().await;
}

#[tokio::test]
async fn subscribing_to_request_topic_or_wildcard_drops_the_connection() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    for topic in [p.request_topic().to_string(), "#".to_string()] {
        let mut c = TestClient::connect(&p, &p.access_code(), "sub")
            .await
            .unwrap();
        assert!(
            c.subscribe(&topic).await.is_err(),
            "subscribing to {topic} must drop the connection"
        );
    }
    // Wrong-case serial: SUBACK, then silence even after pushall.
    let mut c = TestClient::connect(&p, &p.access_code(), "case")
        .await
        .unwrap();
    let wrong = format!(
        "device/{}/report",
        p.serial().to_lowercase().replace('p', "x")
    );
    c.subscribe(&wrong)
        .await
        .expect("SUBACK for another serial");
    c.send(json!({"pushing": {"sequence_id": "1", "command": "pushall"}}))
        .await;
    assert!(c.next(Duration::from_millis(300)).await.unwrap().is_none());
    p.shutdown().await;
}

#[tokio::test]
async fn pushall_and_get_version_on_x1c() {
    let p = SimPrinter::start(config(Model::X1C, 1.0)).await.unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "x1")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(json!({"info": {"sequence_id": "20001", "command": "get_version"}}))
        .await;
    c.send(json!({"pushing": {"sequence_id": "20002", "command": "pushall"}}))
        .await;
    let seen = c.until(|v| is_ack(v, "info", "get_version", "20001")).await;
    let version = seen.last().unwrap();
    assert_eq!(version["info"]["module"][0]["name"], "ota");
    assert_eq!(
        version["info"]["module"][0]["product_name"],
        "Bambu Lab X1-Carbon"
    );
    let seen = c
        .until(|v| is_push(v) && v["print"]["msg"] == 0 && v["print"]["gcode_state"] == "IDLE")
        .await;
    let full = &seen.last().unwrap()["print"];
    assert_eq!(full["stg_cur"], -1);
    let fun = u64::from_str_radix(full["fun"].as_str().unwrap(), 16).unwrap();
    assert_eq!(fun & 0x2000_0000, 0, "Developer Mode on: bit 29 clear");
    assert!(full["sequence_id"].is_string());
    // X1 reports are pretty-printed with 4 spaces.
    let (raw, _) = loop {
        let m = c.next(WAIT).await.unwrap().expect("X1 keeps pushing");
        if is_push(&m.1) {
            break m;
        }
    };
    assert!(String::from_utf8(raw).unwrap().contains("\n        \""));
    p.shutdown().await;
}

#[tokio::test]
async fn p1s_sends_deltas_with_only_changed_keys() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    // Nothing but the light changes (the Wi-Fi reading holds still).
    p.knobs().set(|k| k.wifi_wanders = false);
    let mut c = TestClient::connect(&p, &p.access_code(), "p1")
        .await
        .unwrap();
    c.subscribe_report().await;
    // Idle and unchanged: nothing at all.
    assert!(c.next(Duration::from_millis(300)).await.unwrap().is_none());
    c.send(json!({"pushing": {"sequence_id": "1", "command": "pushall"}}))
        .await;
    let (raw, full) = c.next(WAIT).await.unwrap().expect("full report");
    assert_eq!(full["print"]["msg"], 0);
    assert_eq!(full["print"]["chamber_temper"], 5.0);
    assert!(!raw.contains(&b'\n'), "P1 JSON is compact");
    let full_seq: u64 = full["print"]["sequence_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    c.send(json!({"system": {"sequence_id": "2", "command": "ledctrl", "led_node": "chamber_light",
        "led_mode": "off", "led_on_time": 500, "led_off_time": 500, "loop_times": 0, "interval_time": 0}}))
        .await;
    let seen = c.until(is_push).await;
    assert!(
        seen.iter()
            .any(|v| is_ack(v, "system", "ledctrl", "2") && v["system"]["result"] == "success")
    );
    let delta = &seen.last().unwrap()["print"];
    let mut keys: Vec<&str> = delta
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(keys, ["command", "lights_report", "msg", "sequence_id"]);
    assert_eq!(delta["msg"], 1);
    assert_eq!(delta["lights_report"][0]["mode"], "off");
    let delta_seq: u64 = delta["sequence_id"].as_str().unwrap().parse().unwrap();
    assert!(delta_seq > full_seq, "own push counter increments");
    assert!(c.next(Duration::from_millis(300)).await.unwrap().is_none());
    p.shutdown().await;
}

#[tokio::test]
async fn second_client_on_p1_kicks_the_first() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    let mut first = TestClient::connect(&p, &p.access_code(), "first")
        .await
        .unwrap();
    first.subscribe_report().await;
    p.wait_truth(WAIT, |t| t.connections == 1).await.unwrap();
    let _second = TestClient::connect(&p, &p.access_code(), "second")
        .await
        .unwrap();
    assert!(first.dropped_within(WAIT).await, "older client kicked");
    p.wait_truth(WAIT, |t| t.connections == 1).await.unwrap();

    // Refusal policy: CONNACK 3 for the newcomer.
    p.knobs()
        .set(|k| k.second_client = printgate::sim::SecondClientPolicy::RefuseConnack);
    match TestClient::connect(&p, &p.access_code(), "third").await {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable)) => {}
        other => panic!("expected CONNACK 3, got {:?}", other.err()),
    }
    p.shutdown().await;
}

#[tokio::test]
async fn project_file_runs_idle_prepare_running_finish() {
    let p = SimPrinter::start(config(Model::P1S, 600.0)).await.unwrap();
    p.storage()
        .put("/pg-000001.gcode.3mf", three_mf("C12", 900))
        .unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "job")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(project_file("21010", "pg-000001.gcode.3mf", "1184023377"))
        .await;
    let seen = c
        .until(|v| is_push(v) && v["print"]["gcode_state"] == "FINISH")
        .await;
    let ack = seen
        .iter()
        .find(|v| is_ack(v, "print", "project_file", "21010"))
        .expect("ack");
    assert_eq!(ack["print"]["result"], "success");
    assert_eq!(ack["print"]["subtask_name"], "bracket");
    let states: Vec<&str> = seen
        .iter()
        .filter_map(|v| v["print"]["gcode_state"].as_str())
        .collect();
    assert_eq!(states, ["PREPARE", "RUNNING", "FINISH"]);
    let prepare = seen
        .iter()
        .find(|v| v["print"]["gcode_state"] == "PREPARE")
        .unwrap();
    assert_eq!(prepare["print"]["subtask_id"], "1184023377");
    assert_eq!(prepare["print"]["gcode_file"], "pg-000001.gcode.3mf");
    assert_eq!(prepare["print"]["print_type"], "local");
    assert!(
        seen.iter()
            .any(|v| v["print"]["nozzle_target_temper"] == 220.0)
    );
    assert!(seen.iter().any(|v| v["print"]["stg_cur"] == 0));
    let t = p
        .wait_truth(WAIT, |t| t.gcode_state == GcodeState::Finish)
        .await
        .unwrap();
    assert_eq!((t.percent, t.remaining_minutes), (100, 0));
    assert_eq!((t.nozzle_target, t.bed_target), (0.0, 0.0));
    assert_eq!(t.layer, t.total_layers);
    assert_eq!(t.jobs_started, 1);
    p.shutdown().await;
}

#[tokio::test]
async fn start_while_busy_is_refused_with_0500_4004() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    p.storage()
        .put("a.gcode.3mf", three_mf("C12", 36_000))
        .unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "busy")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(project_file("1", "a.gcode.3mf", "11")).await;
    p.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Prepare)
        .await
        .unwrap();
    c.send(project_file("2", "a.gcode.3mf", "22")).await;
    let seen = c
        .until(|v| is_push(v) && v["print"]["print_error"] == 0x0500_4004)
        .await;
    let ack = seen
        .iter()
        .find(|v| is_ack(v, "print", "project_file", "2"))
        .expect("fail ack");
    assert_eq!(ack["print"]["result"], "failed");
    let t = p.truth().borrow().clone();
    assert!(t.gcode_state.is_active());
    assert_eq!((t.subtask_id.as_str(), t.jobs_started), ("11", 1));
    // The knob refuses even when idle.
    p.knobs().set(|k| k.refuse_busy = true);
    c.send(json!({"print": {"sequence_id": "3", "command": "stop", "param": ""}}))
        .await;
    p.wait_truth(WAIT, |t| {
        t.gcode_state == GcodeState::Failed && t.print_error == 0x0300_400C
    })
    .await
    .unwrap();
    p.wait_truth(WAIT, |t| t.print_error == 0).await.unwrap();
    c.send(project_file("4", "a.gcode.3mf", "44")).await;
    c.until(|v| is_ack(v, "print", "project_file", "4") && v["print"]["result"] == "failed")
        .await;
    assert_eq!(p.truth().borrow().jobs_started, 1);
    p.shutdown().await;
}

#[tokio::test]
async fn developer_mode_off_refuses_print_commands_but_lights_work() {
    let mut cfg = config(Model::X1C, 1.0);
    cfg.developer_mode = false;
    let p = SimPrinter::start(cfg).await.unwrap();
    p.storage()
        .put("a.gcode.3mf", three_mf("BL-P001", 600))
        .unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "dev")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(project_file("30", "a.gcode.3mf", "77")).await;
    let seen = c.until(|v| is_ack(v, "print", "project_file", "30")).await;
    let ack = &seen.last().unwrap()["print"];
    assert_eq!(ack["result"], "failed");
    assert_eq!(ack["reason"], "mqtt message verify failed");
    assert_eq!(ack["err_code"], 84_033_543);
    let seen = c
        .until(|v| is_push(v) && v["print"]["hms"].as_array().is_some_and(|h| !h.is_empty()))
        .await;
    let full = &seen.last().unwrap()["print"];
    assert_eq!(full["hms"][0]["attr"], 0x0500_0500);
    assert_eq!(full["hms"][0]["code"], 0x0001_0007);
    assert_eq!(full["gcode_state"], "IDLE");
    let fun = u64::from_str_radix(full["fun"].as_str().unwrap(), 16).unwrap();
    assert_ne!(fun & 0x2000_0000, 0, "bit 29 set without Developer Mode");
    c.send(json!({"system": {"sequence_id": "31", "command": "ledctrl", "led_node": "chamber_light",
        "led_mode": "off", "led_on_time": 500, "led_off_time": 500, "loop_times": 0, "interval_time": 0}}))
        .await;
    let seen = c.until(|v| is_ack(v, "system", "ledctrl", "31")).await;
    assert_eq!(seen.last().unwrap()["system"]["result"], "success");
    p.wait_truth(WAIT, |t| !t.lights_on).await.unwrap();
    assert_eq!(p.truth().borrow().jobs_started, 0);

    // P1S 01.10 style: an ack without `result`.
    p.knobs()
        .set(|k| k.refusal_style = printgate::sim::RefusalStyle::AckWithoutResult);
    c.send(json!({"print": {"sequence_id": "32", "command": "pause", "param": ""}}))
        .await;
    let seen = c.until(|v| is_ack(v, "print", "pause", "32")).await;
    assert!(seen.last().unwrap()["print"].get("result").is_none());
    p.shutdown().await;
}

#[tokio::test]
async fn command_log_holds_every_request_in_order() {
    let p = SimPrinter::start(config(Model::A1, 1.0)).await.unwrap();
    let mut log_rx = p.subscribe_commands();
    let c = TestClient::connect(&p, &p.access_code(), "logger")
        .await
        .unwrap();
    let mut events = c.events;
    let driver = tokio::spawn(async move {
        // Drive the client's event loop so that its publishes go out.
        while events.poll().await.is_ok() {}
    });
    for i in 1..=4 {
        c.client
            .publish(
                &c.request_topic,
                if i % 2 == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
                false,
                serde_json::to_vec(
                    &json!({"pushing": {"sequence_id": i.to_string(), "command": "pushall"}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    // A slicer-style payload with a trailing NUL is still understood.
    let mut raw = br#"{"info":{"sequence_id":"5","command":"get_version"}}"#.to_vec();
    raw.push(0);
    c.client
        .publish(&c.request_topic, QoS::AtLeastOnce, false, raw.clone())
        .await
        .unwrap();
    for _ in 0..5 {
        timeout(WAIT, log_rx.recv()).await.unwrap().unwrap();
    }
    let log = p.command_log();
    let seqs: Vec<&str> = log
        .iter()
        .filter_map(|l| l.sequence_id.as_deref())
        .collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "5"]);
    assert!(log.iter().all(|l| l.client_id == "logger"));
    assert_eq!(log[1].qos, 0);
    assert_eq!(log[0].qos, 1);
    assert_eq!(log[4].section.as_deref(), Some("info"));
    assert_eq!(log[4].command.as_deref(), Some("get_version"));
    assert_eq!(log[4].payload.as_ref(), raw.as_slice());
    assert!(
        log.windows(2)
            .all(|w| w[0].at <= w[1].at && w[0].index + 1 == w[1].index)
    );
    driver.abort();
    p.shutdown().await;
}

#[tokio::test]
async fn pause_resume_stop_and_stop_while_finish() {
    let p = SimPrinter::start(config(Model::X1C, 50.0)).await.unwrap();
    p.storage()
        .put("a.gcode.3mf", three_mf("BL-P001", 360_000))
        .unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "ctl")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(project_file("1", "a.gcode.3mf", "5")).await;
    p.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Running)
        .await
        .unwrap();
    c.send(json!({"print": {"sequence_id": "2", "command": "pause", "param": ""}}))
        .await;
    p.wait_truth(WAIT, |t| {
        t.gcode_state == GcodeState::Pause && t.stg_cur == 16
    })
    .await
    .unwrap();
    c.send(json!({"print": {"sequence_id": "3", "command": "resume", "param": ""}}))
        .await;
    p.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Running)
        .await
        .unwrap();
    c.send(json!({"print": {"sequence_id": "4", "command": "stop", "param": ""}}))
        .await;
    let seen = c
        .until(|v| is_push(v) && v["print"]["gcode_state"] == "FAILED")
        .await;
    assert_eq!(seen.last().unwrap()["print"]["print_error"], 0x0300_400C);
    p.wait_truth(WAIT, |t| {
        t.print_error == 0 && t.gcode_state == GcodeState::Failed
    })
    .await
    .unwrap();
    p.shutdown().await;
}

#[tokio::test]
async fn power_cut_refuses_connections_and_boots_idle() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "pw")
        .await
        .unwrap();
    c.subscribe_report().await;
    p.power_cut();
    assert!(c.dropped_within(WAIT).await);
    p.wait_truth(WAIT, |t| !t.listening && !t.powered)
        .await
        .unwrap();
    assert!(
        TestClient::connect(&p, &p.access_code(), "pw2")
            .await
            .is_err()
    );
    p.power_restore(false);
    let mut c = TestClient::connect(&p, &p.access_code(), "pw3")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(json!({"pushing": {"sequence_id": "1", "command": "pushall"}}))
        .await;
    let seen = c.until(is_push).await;
    assert_eq!(seen.last().unwrap()["print"]["gcode_state"], "IDLE");
    p.shutdown().await;
}

#[tokio::test]
async fn regenerated_certificate_fails_the_old_pin() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    let old = p.fingerprint();
    let new = p.regenerate_certificate().unwrap();
    assert_ne!(old, new);
    assert!(
        TestClient::connect_pinned(&p, &p.access_code(), "pin", &old)
            .await
            .is_err()
    );
    TestClient::connect_pinned(&p, &p.access_code(), "pin", &new)
        .await
        .expect("new pin works");
    p.shutdown().await;
}

#[tokio::test]
async fn ssdp_notify_reaches_the_target_and_follows_developer_mode() {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(Model::P1S, 1.0);
    cfg.ssdp_target = Some(sock.local_addr().unwrap());
    cfg.ssdp_interval = Duration::from_millis(50);
    let p = SimPrinter::start(cfg).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("NOTIFY * HTTP/1.1\r\n"));
    assert!(text.contains(&format!("USN: {}\r\n", p.serial())));
    assert!(text.contains("DevModel.bambu.com: C12\r\n"));
    assert!(text.contains("DevConnect.bambu.com: lan\r\n"));
    p.knobs().set_developer_mode(false);
    let deadline = Instant::now() + WAIT;
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .expect("cloud announcement")
            .unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("DevConnect.bambu.com: cloud\r\n") {
            break;
        }
    }
    p.shutdown().await;
}

#[tokio::test]
async fn ack_knobs_drop_duplicate_strict_and_withheld_puback() {
    let p = SimPrinter::start(config(Model::P1S, 600.0)).await.unwrap();
    p.storage()
        .put("a.gcode.3mf", three_mf("C12", 600))
        .unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "acks")
        .await
        .unwrap();
    c.subscribe_report().await;

    // Duplicate delivery: the same ack twice.
    p.knobs().set(|k| k.duplicate_deliveries = true);
    c.send(json!({"info": {"sequence_id": "d1", "command": "get_version"}}))
        .await;
    let mut dups = 0;
    c.until(|v| {
        if is_ack(v, "info", "get_version", "d1") {
            dups += 1;
        }
        dups == 2
    })
    .await;
    p.knobs().set(|k| k.duplicate_deliveries = false);

    // Strict sequence ids: a reused id is refused with 84033544.
    p.knobs().set(|k| k.strict_sequence_ids = true);
    for _ in 0..2 {
        c.send(json!({"print": {"sequence_id": "s1", "command": "pause", "param": ""}}))
            .await;
    }
    let seen = c
        .until(|v| is_ack(v, "print", "pause", "s1") && v["print"]["err_code"] == 84_033_544)
        .await;
    assert_eq!(seen.last().unwrap()["print"]["result"], "failed");

    // Dropped acks: the job runs, no ack ever arrives.
    p.knobs().set(|k| k.drop_acks = true);
    c.send(project_file("p1", "a.gcode.3mf", "9")).await;
    let seen = c
        .until(|v| is_push(v) && v["print"]["gcode_state"] == "FINISH")
        .await;
    assert!(
        !seen
            .iter()
            .any(|v| is_ack(v, "print", "project_file", "p1"))
    );

    // Withheld PUBACK: the publish is processed, no PUBACK comes.
    p.knobs().set(|k| {
        k.withhold_puback = true;
        k.drop_acks = false;
    });
    let before = p.command_log().len();
    c.send(json!({"pushing": {"sequence_id": "w1", "command": "pushall"}}))
        .await;
    let deadline = Instant::now() + Duration::from_millis(400);
    while let Ok(ev) = tokio::time::timeout_at(deadline, c.events.poll()).await {
        assert!(
            !matches!(ev, Ok(Event::Incoming(Packet::PubAck(_)))),
            "PUBACK must be withheld"
        );
    }
    assert_eq!(p.command_log().len(), before + 1);
    p.shutdown().await;
}

#[tokio::test]
async fn start_knobs_never_start_echo_only_and_late_start() {
    let p = SimPrinter::start(config(Model::P1S, 600.0)).await.unwrap();
    p.storage()
        .put("a.gcode.3mf", three_mf("C12", 600))
        .unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "starts")
        .await
        .unwrap();
    c.subscribe_report().await;

    p.knobs().set(|k| k.ack_but_never_start = true);
    c.send(project_file("1", "a.gcode.3mf", "101")).await;
    let seen = c.until(|v| is_ack(v, "print", "project_file", "1")).await;
    assert_eq!(seen.last().unwrap()["print"]["result"], "success");
    p.knobs().set(|k| {
        k.ack_but_never_start = false;
        k.echo_subtask_then_idle = true;
    });
    c.send(project_file("2", "a.gcode.3mf", "102")).await;
    let seen = c
        .until(|v| is_push(v) && v["print"]["subtask_id"] == "102")
        .await;
    assert_eq!(seen.last().unwrap()["print"].get("gcode_state"), None);
    let t = p.truth().borrow().clone();
    assert_eq!((t.gcode_state, t.jobs_started), (GcodeState::Idle, 0));

    p.knobs().set(|k| {
        k.echo_subtask_then_idle = false;
        k.late_start = Some(Duration::from_millis(400));
    });
    c.send(project_file("3", "a.gcode.3mf", "103")).await;
    let sent_at = p.command_log().last().unwrap().at;
    let t = p
        .wait_truth(WAIT, |t| t.gcode_state == GcodeState::Prepare)
        .await
        .unwrap();
    assert!(sent_at.elapsed() >= Duration::from_millis(400));
    assert_eq!((t.subtask_id.as_str(), t.jobs_started), ("103", 1));
    p.shutdown().await;
}

#[tokio::test]
async fn disconnect_for_half_open_and_report_silence() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "net")
        .await
        .unwrap();
    c.subscribe_report().await;

    // Report silence: TCP stays, nothing is published, commands are still logged.
    p.knobs().set(|k| k.report_silence = true);
    c.send(json!({"pushing": {"sequence_id": "1", "command": "pushall"}}))
        .await;
    assert!(c.next(Duration::from_millis(300)).await.unwrap().is_none());
    assert_eq!(p.command_log().len(), 1);
    p.knobs().set(|k| k.report_silence = false);

    // Half-open: nothing flows, then the connection is dead.
    p.half_open_for(Duration::from_secs(1));
    c.send(json!({"pushing": {"sequence_id": "2", "command": "pushall"}}))
        .await;
    assert!(c.dropped_within(WAIT).await);
    assert_eq!(p.command_log().len(), 1, "nothing read while half-open");

    // Disconnect for a while: port closed, then open again.
    let mut c = TestClient::connect(&p, &p.access_code(), "net2")
        .await
        .unwrap();
    c.subscribe_report().await;
    p.disconnect_for(Duration::from_secs(1));
    assert!(!p.truth().borrow().listening);
    assert!(c.dropped_within(WAIT).await);
    assert!(
        TestClient::connect(&p, &p.access_code(), "refused")
            .await
            .is_err()
    );
    p.wait_truth(WAIT, |t| t.listening).await.unwrap();
    TestClient::connect(&p, &p.access_code(), "net3")
        .await
        .expect("port open again");
    p.shutdown().await;
}

#[tokio::test]
async fn thermal_runaway_latches_hms_and_override_reports_the_value() {
    let p = SimPrinter::start(config(Model::X1C, 20.0)).await.unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "hot")
        .await
        .unwrap();
    c.subscribe_report().await;
    p.knobs()
        .set(|k| k.thermal_runaway = Some(printgate::sim::Heater::Nozzle));
    let seen = c
        .until(|v| {
            v["print"]["hms"]
                .as_array()
                .is_some_and(|h| h.iter().any(|e| e["attr"] == 0x0300_0200))
        })
        .await;
    let last = &seen.last().unwrap()["print"];
    assert_eq!(last["hms"][0]["code"], 0x0001_0003);
    assert!(last["nozzle_temper"].as_f64().unwrap() > 40.0);
    p.knobs().set(|k| {
        k.thermal_runaway = None;
        k.bed_temp_override = Some(130.0);
    });
    c.until(|v| v["print"]["bed_temper"] == 130.0).await;
    p.wait_truth(WAIT, |t| t.bed_temp == 130.0).await.unwrap();
    p.shutdown().await;
}

#[tokio::test]
async fn power_restore_offers_resume_but_never_resumes() {
    let p = SimPrinter::start(config(Model::P1S, 100.0)).await.unwrap();
    p.storage()
        .put("a.gcode.3mf", three_mf("C12", 360_000))
        .unwrap();
    let mut c = TestClient::connect(&p, &p.access_code(), "relay")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(project_file("1", "a.gcode.3mf", "5")).await;
    p.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Running)
        .await
        .unwrap();
    p.power_cut();
    let pushes = p.truth().borrow().pushes;
    assert!(c.dropped_within(WAIT).await);
    p.power_restore(true);
    let t = p.truth().borrow().clone();
    assert_eq!(t.pushes, pushes, "no pushes while powered off");
    assert_eq!(
        (t.gcode_state, t.print_error),
        (GcodeState::Failed, 0x0300_8007)
    );
    assert_eq!(t.nozzle_target, 0.0);
    let mut c = TestClient::connect(&p, &p.access_code(), "relay2")
        .await
        .unwrap();
    c.subscribe_report().await;
    c.send(json!({"pushing": {"sequence_id": "2", "command": "pushall"}}))
        .await;
    let seen = c.until(is_push).await;
    assert_eq!(seen.last().unwrap()["print"]["gcode_state"], "FAILED");
    p.dismiss_on_screen();
    p.wait_truth(WAIT, |t| {
        t.gcode_state == GcodeState::Idle && t.print_error == 0
    })
    .await
    .unwrap();
    p.shutdown().await;
}

/// A client connected with the right code and subscribed to the report topic.
async fn subscribed(p: &SimPrinter, id: &str) -> TestClient {
    let mut c = TestClient::connect(p, &p.access_code(), id).await.unwrap();
    c.subscribe_report().await;
    c
}

/// D1 (issue 14): one message carrying several sections, as a popular client sends on connect,
/// gets every section answered, in message order. P1S: a full report comes only after `pushall`.
#[tokio::test]
async fn several_sections_in_one_message_are_each_answered_in_order() {
    let p = SimPrinter::start(config(Model::P1S, 1.0)).await.unwrap();
    let mut c = subscribed(&p, "multi").await;
    // Written by hand so that the sections stay in this order on the wire.
    let payload = br#"{"pushing":{"sequence_id":"30001","command":"pushall","version":1,"push_target":1},"info":{"sequence_id":"30002","command":"get_version"},"upgrade":{"sequence_id":"30003","command":"get_history"}}"#;
    c.send_raw(payload.to_vec(), QoS::AtLeastOnce).await;
    let seen = c.until(|v| is_ack(v, "info", "get_version", "30002")).await;
    let first_seen = seen.clone();
    let full = seen
        .iter()
        .position(|v| is_push(v) && v["print"]["msg"] == 0)
        .unwrap_or_else(|| panic!("pushall in the same message unanswered; saw {seen:#?}"));
    assert_eq!(
        full,
        seen.len() - 2,
        "full report right before the version answer: {seen:#?}"
    );
    // The reverse order is answered in the reverse order.
    let payload = br#"{"info":{"sequence_id":"30004","command":"get_version"},"pushing":{"sequence_id":"30005","command":"pushall"}}"#;
    c.send_raw(payload.to_vec(), QoS::AtLeastOnce).await;
    let seen = c.until(|v| is_push(v) && v["print"]["msg"] == 0).await;
    assert!(
        seen.iter()
            .any(|v| is_ack(v, "info", "get_version", "30004")),
        "version answer before the full report: {seen:#?}"
    );
    // `upgrade.get_history` of the first message is answered too, after the version answer.
    let mut all = first_seen;
    all.extend(seen);
    let history = all
        .iter()
        .find(|v| is_ack(v, "upgrade", "get_history", "30003"))
        .unwrap_or_else(|| panic!("get_history unanswered: {all:#?}"));
    assert_eq!(history["upgrade"]["result"], "success");
    assert!(history["upgrade"]["firmware_optional"][0]["firmware"]["version"].is_string());
    p.shutdown().await;
}

/// D3 (issue 14): a start without `subtask_name` shows the file's base name as the job name.
#[tokio::test]
async fn start_without_subtask_name_reports_the_file_base_name() {
    for model in [Model::P1S, Model::X1C] {
        let p = SimPrinter::start(config(model, 1.0)).await.unwrap();
        p.storage()
            .put("/lid_v2.gcode.3mf", three_mf(model.model_code(), 900))
            .unwrap();
        let mut c = subscribed(&p, "noname").await;
        let mut start = project_file("31001", "lid_v2.gcode.3mf", "77");
        start["print"]
            .as_object_mut()
            .unwrap()
            .remove("subtask_name");
        c.send(start).await;
        let seen = c
            .until(|v| is_push(v) && v["print"]["gcode_state"] == "PREPARE")
            .await;
        let prepare = &seen.last().unwrap()["print"];
        assert_eq!(prepare["subtask_name"], "lid_v2", "{model:?}: {prepare:#}");
        assert_eq!(prepare["subtask_id"], "77");
        p.shutdown().await;
    }
}

/// D5 (issue 14): a file in a sub-folder of the storage (as Studio's `cache/`) prints with each
/// URL form docs/bambu-protocol.md §4.2 lists, on the models that use it.
#[tokio::test]
async fn printing_from_a_sub_folder_works_with_every_url_form() {
    let cases = [
        (Model::P1S, "file:///sdcard/cache/{}"),
        (Model::A1, "file:///sdcard/cache/{}"),
        (Model::X1C, "ftp:///cache/{}"),
        (Model::H2D, "ftp:///cache/{}"),
        (Model::P2S, "ftp://cache/{}"),
        (Model::P2S, "file:///media/usb0/cache/{}"),
    ];
    for (i, (model, form)) in cases.into_iter().enumerate() {
        let p = SimPrinter::start(config(model, 1.0)).await.unwrap();
        let name = format!("job-{i}.gcode.3mf");
        p.storage()
            .put(&format!("/cache/{name}"), three_mf(model.model_code(), 900))
            .unwrap();
        let mut c = subscribed(&p, "sub").await;
        let url = form.replace("{}", &name);
        let mut start = project_file("32001", &name, "88");
        start["print"]["url"] = json!(url);
        c.send(start).await;
        let seen = c
            .until(|v| {
                is_push(v)
                    && (v["print"]["gcode_state"] == "PREPARE"
                        || v["print"]["print_error"].as_u64().is_some_and(|e| e != 0))
            })
            .await;
        let last = &seen.last().unwrap()["print"];
        assert_eq!(last["gcode_state"], "PREPARE", "{model:?} {url}: {last:#}");
        // A P1 delta carries `print_error` only when it changed.
        assert!(
            last.get("print_error").is_none_or(|e| *e == 0),
            "{model:?} {url}: {last:#}"
        );
        let t = p
            .wait_truth(WAIT, |t| t.gcode_state == GcodeState::Prepare)
            .await
            .unwrap();
        assert_eq!(t.subtask_id, "88");
        p.shutdown().await;
    }
}

/// D8 (issue 14): P1/A1 answer `get_version` with `product_name` as real replies do, and every
/// module carries the fields docs/bambu-protocol.md §3.8 quotes.
#[tokio::test]
async fn get_version_carries_product_name_on_every_model() {
    let cases = [
        (Model::P1P, "Bambu Lab P1P"),
        (Model::P1S, "Bambu Lab P1S"),
        (Model::A1, "Bambu Lab A1"),
        (Model::A1Mini, "Bambu Lab A1 mini"),
        (Model::X1C, "Bambu Lab X1-Carbon"),
        (Model::P2S, "Bambu Lab P2S"),
        (Model::H2D, "Bambu Lab H2D"),
    ];
    for (model, product) in cases {
        let p = SimPrinter::start(config(model, 1.0)).await.unwrap();
        let mut c = subscribed(&p, "ver").await;
        c.send(json!({"info": {"sequence_id": "33001", "command": "get_version"}}))
            .await;
        let seen = c.until(|v| is_ack(v, "info", "get_version", "33001")).await;
        let info = &seen.last().unwrap()["info"];
        assert_eq!(
            (&info["result"], &info["reason"]),
            (&json!("success"), &json!(""))
        );
        let modules = info["module"].as_array().expect("module array");
        let ota = modules
            .iter()
            .find(|m| m["name"] == "ota")
            .expect("ota module");
        assert_eq!(ota["product_name"], product, "{model:?}: {ota:#}");
        for m in modules {
            for key in ["name", "sw_ver", "hw_ver", "sn", "product_name"] {
                assert!(m[key].is_string(), "{model:?}: {key} missing in {m:#}");
            }
            assert_eq!(m["sn"], p.serial());
        }
        p.shutdown().await;
    }
}

/// Issue 14, "not modelled": commands that real firmware acts on change the simulated state
/// or are answered: `gcode_line` heater targets, `xcam.xcam_control_set`, `skip_objects`
/// (`s_obj`), an AMS start by `ams_mapping2` (`tray_now`), every section of a message in the
/// command log, and an idle A1 that keeps sending Wi-Fi deltas. (An A1: the P1 firmware's
/// reports carry no `xcam` object.)
#[tokio::test]
async fn firmware_commands_change_state_and_idle_p1_reports_wifi() {
    let p = SimPrinter::start(config(Model::A1, 20.0)).await.unwrap();
    p.storage()
        .put("a.gcode.3mf", three_mf("N2S", 3000))
        .unwrap();
    let mut c = subscribed(&p, "cmds").await;
    // Idle and untouched, an A1 still reports its wandering Wi-Fi signal.
    let seen = c
        .until(|v| is_push(v) && v["print"]["wifi_signal"].is_string())
        .await;
    assert_eq!(seen.last().unwrap()["print"]["msg"], 1, "a delta");
    let payload = br#"{"print":{"sequence_id":"1","command":"gcode_line","param":"M140 S55
M104 S180
"},"xcam":{"sequence_id":"2","command":"xcam_control_set","module_name":"buildplate_marker_detector","control":true,"print_halt":true}}"#;
    c.send_raw(payload.to_vec(), QoS::AtLeastOnce).await;
    p.wait_truth(WAIT, |t| t.bed_target == 55.0 && t.nozzle_target == 180.0)
        .await
        .unwrap();
    let seen = c
        .until(|v| is_ack(v, "xcam", "xcam_control_set", "2"))
        .await;
    assert_eq!(seen.last().unwrap()["xcam"]["result"], "success");
    c.until(|v| v["print"]["xcam"]["buildplate_marker_detector"] == true)
        .await;
    let logged = p.command_log().into_iter().last().unwrap();
    assert_eq!(
        logged.sections,
        vec![
            ("print".to_string(), Some("gcode_line".to_string())),
            ("xcam".to_string(), Some("xcam_control_set".to_string())),
        ]
    );
    assert!(logged.has("xcam", "xcam_control_set"));
    let mut start = project_file("3", "a.gcode.3mf", "9");
    start["print"]["use_ams"] = json!(true);
    start["print"]["ams_mapping"] = json!([2]);
    start["print"]["ams_mapping2"] = json!([{"ams_id": 0, "slot_id": 2}]);
    c.send(start).await;
    p.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Running)
        .await
        .unwrap();
    c.until(|v| v["print"]["ams"]["tray_now"] == "2").await;
    c.send(
        json!({"print": {"sequence_id": "4", "command": "skip_objects", "obj_list": [403, 512]}}),
    )
    .await;
    c.until(|v| v["print"]["s_obj"] == json!([403, 512])).await;
    // A mapping to a tray that does not exist fails the next job (07FF_8012).
    c.send(json!({"print": {"sequence_id": "5", "command": "stop", "param": ""}}))
        .await;
    p.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Failed)
        .await
        .unwrap();
    let mut bad = project_file("6", "a.gcode.3mf", "10");
    bad["print"]["use_ams"] = json!(true);
    bad["print"]["ams_mapping"] = json!([9]);
    c.send(bad).await;
    p.wait_truth(WAIT, |t| t.print_error == 0x07FF_8012)
        .await
        .unwrap();
    p.shutdown().await;
}
