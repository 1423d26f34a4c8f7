//! One simulated Bambu printer ([`SimPrinter`]) and a group of them ([`SimFleet`]): wires the
//! print state machine, the report publisher, the MQTT server and the SSDP announcer together
//! on loopback with ephemeral ports, and exposes the knobs, the command log and the internal
//! truth to tests.
//!
//! Inside, a [`Hub`] holds the shared state. One core task ticks the machine (every 50 ms real
//! time, scaled by `time_scale`) and publishes reports every `report_interval` (real time);
//! connection tasks call into the hub when a request arrives.

use crate::config::Model;
use crate::printer::GcodeState;
use crate::printer::bambu::request_json::{Sections, parse_lenient, parse_lenient_as};
use crate::sim::ftps::{FtpsKnobs, FtpsServerHandle};
use crate::sim::knobs::{KnobValues, SecondClientPolicy, SimKnobs};
use crate::sim::log::{CommandLog, LoggedCommand, SimTruth};
use crate::sim::machine::{CommandCtx, Machine, SimSpool};
use crate::sim::reports::{self, ReportCtx};
use crate::sim::storage::SimStorage;
use crate::sim::tls::SimIdentity;
use crate::sim::{mqtt, ssdp};
use anyhow::Context;
use bytes::Bytes;
use rand::Rng;
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use rumqttc::mqttbytes::v4::Login;
use rustls::ServerConfig;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Real-time period of the machine tick.
const MACHINE_TICK: Duration = Duration::from_millis(50);
/// X1/H2 idle cadence: a full report every this many report ticks.
const IDLE_FULL_EVERY: u64 = 4;

/// How to build one simulated printer.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub model: Model,
    /// Display name (SSDP `DevName`).
    pub name: String,
    /// 15-character serial; generated with the model's prefix when `None`.
    pub serial: Option<String>,
    /// 8-digit access code; random when `None`.
    pub access_code: Option<String>,
    /// Simulated seconds per real second (360 = a 2-hour print in 20 s).
    pub time_scale: f64,
    /// Real-time period of status pushes.
    pub report_interval: Duration,
    /// Where SSDP NOTIFYs go (unicast, loopback in tests); `None` = no announcements.
    pub ssdp_target: Option<SocketAddr>,
    /// Real-time period of SSDP NOTIFYs (5 s on real printers).
    pub ssdp_interval: Duration,
    pub developer_mode: bool,
    /// Loopback address the printer's services listen on (its "IP", also in `net.info` and
    /// SSDP `Location`); `127.0.0.1` unless a standard-ports fleet gives each printer its own.
    pub address: Ipv4Addr,
    /// MQTT port; 0 = ephemeral (8883 on a real printer).
    pub mqtt_port: u16,
    /// FTPS port; 0 = ephemeral (990 on a real printer).
    pub ftps_port: u16,
    /// Chamber-image camera port on P1/A1 models; 0 = ephemeral (6000 on a real printer).
    pub camera_port: u16,
    /// Real-time period of camera frames (about 1 s on a printer).
    pub camera_frame_interval: Duration,
    /// Override the model's MQTT client limit (1 on P1/A1, 4 on X1).
    pub max_clients: Option<usize>,
}

impl SimConfig {
    /// Defaults: model display name, generated serial and code, real time, 1 s reports, no SSDP,
    /// Developer Mode on.
    pub fn new(model: Model) -> Self {
        Self {
            model,
            name: model.display_name().to_string(),
            serial: None,
            access_code: None,
            time_scale: 1.0,
            report_interval: Duration::from_secs(1),
            ssdp_target: None,
            ssdp_interval: Duration::from_secs(5),
            developer_mode: true,
            address: Ipv4Addr::LOCALHOST,
            mqtt_port: 0,
            ftps_port: 0,
            camera_port: 0,
            camera_frame_interval: Duration::from_secs(1),
            max_clients: None,
        }
    }

    /// Listen on `address` with the standard ports of a printer (MQTT 8883, FTPS 990).
    pub fn with_standard_ports(mut self, address: Ipv4Addr) -> Self {
        self.address = address;
        self.mqtt_port = STANDARD_MQTT_PORT;
        self.ftps_port = STANDARD_FTPS_PORT;
        self.camera_port = crate::sim::camera::STANDARD_CAMERA_PORT;
        self
    }
}

/// MQTT over TLS port of a real printer.
pub const STANDARD_MQTT_PORT: u16 = 8883;
/// Implicit FTPS port of a real printer.
pub const STANDARD_FTPS_PORT: u16 = 990;

/// What to tell a user whose bind failed: ports below 1024 need privileges.
fn bind_hint(port: u16) -> &'static str {
    if port != 0 && port < 1024 {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE: run as root, inside a network namespace such as `unshare --net --map-root-user`, or lower net.ipv4.ip_unprivileged_port_start)"
    } else {
        ""
    }
}

/// A model-correct 15-character serial: prefix, `00A`, 9 random digits.
pub fn generate_serial(model: Model) -> String {
    let n: u64 = rand::rng().random_range(0..1_000_000_000);
    format!("{}00A{n:09}", model.serial_prefix())
}

/// A random 8-digit access code.
pub fn generate_access_code() -> String {
    let n: u32 = rand::rng().random_range(0..100_000_000);
    format!("{n:08}")
}

/// Whether the printer is reachable, and the time-boxed faults of the network side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gate {
    pub powered: bool,
    /// Listener closed (TCP refused) until then.
    pub offline_until: Option<Instant>,
    /// Connections freeze (nothing read or written) until then, then are dropped.
    pub half_open_until: Option<Instant>,
}

impl Gate {
    pub fn accepting(&self, now: Instant) -> bool {
        self.powered && self.offline_until.is_none_or(|t| now >= t)
    }
    pub fn half_open(&self, now: Instant) -> Option<Instant> {
        self.half_open_until.filter(|t| now < *t)
    }
}

/// What the hub decided about a freshly authenticated client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Accept { drop_after: Option<Duration> },
    RefuseConnack,
    Drop,
}

struct ConnEntry {
    authed: bool,
    cancel: CancellationToken,
}

struct Core {
    machine: Machine,
    push_seq: u64,
    /// The status object as last pushed (base of P1 deltas).
    last_sent: Map<String, Value>,
    pushing: bool,
    report_ticks: u64,
    pushes: u64,
}

/// Shared state of one simulated printer.
pub(crate) struct Hub {
    pub model: Model,
    pub name: String,
    pub serial: String,
    pub report_topic: String,
    pub request_topic: String,
    pub knobs: SimKnobs,
    pub storage: SimStorage,
    pub log: CommandLog,
    pub ip: Ipv4Addr,
    core: Mutex<Core>,
    out: broadcast::Sender<Bytes>,
    truth_tx: watch::Sender<SimTruth>,
    tls: Mutex<(SimIdentity, Arc<ServerConfig>)>,
    conns: Mutex<BTreeMap<u64, ConnEntry>>,
    gate: watch::Sender<Gate>,
    next_conn_id: AtomicU64,
    mqtt_addr: SocketAddr,
    /// A listener bound by `power_restore` so that the port is open when it returns.
    prebound: Mutex<Option<std::net::TcpListener>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Hub {
    fn report_ctx<'a>(&self, machine: &'a Machine, knobs: &KnobValues) -> ReportCtx<'a> {
        ReportCtx {
            model: self.model,
            developer_mode: knobs.developer_mode,
            sdcard: knobs.sdcard && !self.storage.is_missing(),
            ip: self.ip,
            nozzle_override: knobs.nozzle_temp_override,
            bed_override: knobs.bed_temp_override,
            wifi_wanders: knobs.wifi_wanders,
            machine,
        }
    }

    pub fn gate(&self) -> watch::Receiver<Gate> {
        self.gate.subscribe()
    }

    pub fn truth_rx(&self) -> watch::Receiver<SimTruth> {
        self.truth_tx.subscribe()
    }

    pub fn powered(&self) -> bool {
        self.gate.borrow().powered
    }

    pub fn subscribe_out(&self) -> broadcast::Receiver<Bytes> {
        self.out.subscribe()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(lock(&self.tls).1.clone())
    }

    pub fn identity(&self) -> SimIdentity {
        lock(&self.tls).0.clone()
    }

    /// A new TCP connection: its id and the token that ends it.
    pub fn register_conn(&self, parent: &CancellationToken) -> (u64, CancellationToken) {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let cancel = parent.child_token();
        lock(&self.conns).insert(
            id,
            ConnEntry {
                authed: false,
                cancel: cancel.clone(),
            },
        );
        (id, cancel)
    }

    pub fn remove_conn(&self, id: u64) {
        let mut conns = lock(&self.conns);
        conns.remove(&id);
        self.set_connection_count(&conns);
    }

    fn set_connection_count(&self, conns: &BTreeMap<u64, ConnEntry>) {
        let n = conns.values().filter(|c| c.authed).count();
        self.truth_tx.send_if_modified(|t| {
            let changed = t.connections != n;
            t.connections = n;
            changed
        });
    }

    /// `None` if user and access code are right, else the CONNACK refusal code.
    pub fn check_login(&self, login: Option<&Login>) -> Option<ConnectReturnCode> {
        let knobs = self.knobs.get();
        let ok = login.is_some_and(|l| l.username == "bblp" && l.password == knobs.access_code);
        if ok {
            None
        } else {
            Some(match knobs.auth_refusal {
                crate::sim::knobs::AuthRefusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
                crate::sim::knobs::AuthRefusal::BadUserNamePassword => {
                    ConnectReturnCode::BadUserNamePassword
                }
            })
        }
    }

    /// Apply the model's client limit to an authenticated connection.
    pub fn admit(&self, id: u64) -> Admission {
        let knobs = self.knobs.get();
        let limit = knobs
            .max_clients
            .unwrap_or(self.model.max_mqtt_clients())
            .max(1);
        let mut conns = lock(&self.conns);
        let others: Vec<u64> = conns
            .iter()
            .filter(|(cid, c)| c.authed && **cid != id)
            .map(|(cid, _)| *cid)
            .collect();
        let mut drop_after = None;
        if others.len() >= limit {
            match knobs.second_client {
                SecondClientPolicy::RefuseConnack => return Admission::RefuseConnack,
                SecondClientPolicy::RefuseDrop => return Admission::Drop,
                SecondClientPolicy::KickOlder | SecondClientPolicy::Flap => {
                    let excess = others.len() + 1 - limit;
                    for cid in others.iter().take(excess) {
                        if let Some(c) = conns.get_mut(cid) {
                            c.authed = false;
                            c.cancel.cancel();
                        }
                    }
                    if knobs.second_client == SecondClientPolicy::Flap {
                        drop_after = Some(Duration::from_secs(1));
                    }
                }
            }
        }
        if let Some(c) = conns.get_mut(&id) {
            c.authed = true;
        }
        self.set_connection_count(&conns);
        Admission::Accept { drop_after }
    }

    /// Drop every connection (authenticated or not).
    pub fn disconnect_all(&self) {
        let mut conns = lock(&self.conns);
        for c in conns.values_mut() {
            c.authed = false;
            c.cancel.cancel();
        }
        self.set_connection_count(&conns);
    }

    pub fn take_prebound(&self) -> Option<std::net::TcpListener> {
        lock(&self.prebound).take()
    }

    /// The listener task reports whether the MQTT port is open.
    pub fn set_listening(&self, on: bool) {
        self.truth_tx.send_if_modified(|t| {
            let changed = t.listening != on;
            t.listening = on;
            changed
        });
    }

    pub fn set_gate(&self, f: impl FnOnce(&mut Gate)) {
        self.gate.send_modify(f);
    }

    /// A PUBLISH on the request topic: log it, then act on it (now or after the QoS 0 delay).
    pub fn handle_request(
        self: &Arc<Self>,
        conn_id: u64,
        client_id: &str,
        qos: u8,
        payload: Bytes,
    ) {
        let json = parse_lenient(&payload);
        // Parsed a second time to keep the sections in message order (`json` is sorted).
        let sections = parse_lenient_as::<Sections>(&payload);
        let in_order = sections.as_ref().map_or(&[][..], |s| s.0.as_slice());
        self.log.record(
            conn_id,
            client_id,
            qos,
            payload.clone(),
            json.clone(),
            in_order,
        );
        let Some(sections) = sections else {
            return;
        };
        match self.knobs.get().qos0_delay {
            Some(delay) if qos == 0 && !delay.is_zero() => {
                let hub = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    hub.process(&sections);
                });
            }
            _ => self.process(&sections),
        }
    }

    /// Act on every section of one request, in message order, as a printer does: a message
    /// with `pushing.pushall` + `info.get_version` gets a full report and a version answer.
    fn process(&self, sections: &Sections) {
        let knobs = self.knobs.get();
        if !self.powered() || knobs.ignore_commands {
            return;
        }
        let mut core = lock(&self.core);
        if !self.powered() {
            return;
        }
        for (section, body) in &sections.0 {
            let Some(body) = body.as_object() else {
                continue;
            };
            let ack = self.section(&mut core, &knobs, section, body);
            if let Some(ack) = ack
                && !knobs.drop_acks
            {
                self.publish(&knobs, &ack);
            }
        }
        self.update_truth(&core, &knobs);
    }

    /// One section of a request; returns the answer to publish, if the firmware sends one.
    fn section(
        &self,
        core: &mut Core,
        knobs: &KnobValues,
        section: &str,
        body: &Map<String, Value>,
    ) -> Option<Value> {
        let command = body.get("command").and_then(Value::as_str).unwrap_or("");
        match (section, command) {
            ("pushing", "pushall") => {
                self.push_full(core, knobs);
                None
            }
            ("pushing", "start") => {
                core.pushing = true;
                None
            }
            ("pushing", "stop") => {
                core.pushing = false;
                None
            }
            ("info", "get_version") => Some(reports::version_answer(
                self.model,
                &self.serial,
                body.get("sequence_id").cloned().unwrap_or(Value::Null),
            )),
            ("system", "ledctrl") => {
                if body.get("led_node").and_then(Value::as_str) == Some("chamber_light") {
                    match body.get("led_mode").and_then(Value::as_str) {
                        Some("on") | Some("flashing") => core.machine.lights_on = true,
                        Some("off") => core.machine.lights_on = false,
                        _ => {}
                    }
                }
                let mut ack = body.clone();
                ack.insert("result".into(), "success".into());
                ack.insert("reason".into(), "".into());
                Some(serde_json::json!({ "system": ack }))
            }
            ("print", _) => {
                let ctx = CommandCtx {
                    knobs,
                    storage: &self.storage,
                    unix_now: unix_now(),
                };
                core.machine.handle_print(body, &ctx).ack
            }
            ("upgrade", "get_history") => Some(reports::firmware_history_answer(
                self.model,
                body.get("sequence_id").cloned().unwrap_or(Value::Null),
            )),
            ("xcam", "xcam_control_set") => {
                // Switch one AI detector (`module_name`) on or off; the `xcam` object of the
                // next reports shows it.
                let module = body
                    .get("module_name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let on = body.get("control").and_then(Value::as_bool);
                let known = reports::XCAM_MODULES.contains(&module);
                if let (true, Some(on)) = (known, on) {
                    core.machine.xcam.insert(module.to_string(), on);
                }
                let mut ack = body.clone();
                let ok = known && on.is_some();
                ack.insert(
                    "result".into(),
                    if ok { "success" } else { "failed" }.into(),
                );
                ack.insert("reason".into(), "".into());
                Some(serde_json::json!({ "xcam": ack }))
            }
            // `security.*`, `camera.*` and unknown sections or commands: no public capture shows
            // an answer to them, so the simulator stays silent, as the firmware does for a
            // command it does not know.
            _ => None,
        }
    }

    /// A person starts a print on the printer's own screen: same state machine as a
    /// `project_file`, but nothing arrives over the network, so nothing is logged.
    fn start_from_screen(&self, file_name: &str, subtask_name: &str) {
        let knobs = self.knobs.get();
        let mut core = lock(&self.core);
        if !self.powered() {
            return;
        }
        let body = serde_json::json!({
            "command": "project_file",
            "sequence_id": "0",
            "param": "Metadata/plate_1.gcode",
            "url": format!("file:///sdcard/{file_name}"),
            "file": file_name,
            "md5": "",
            "subtask_name": subtask_name,
            "project_id": "0", "profile_id": "0", "task_id": "0", "subtask_id": "0",
            "bed_type": "auto", "timelapse": false, "bed_leveling": true, "flow_cali": false,
            "vibration_cali": false, "layer_inspect": true, "use_ams": false,
        });
        if let Some(body) = body.as_object() {
            let ctx = CommandCtx {
                knobs: &knobs,
                storage: &self.storage,
                unix_now: unix_now(),
            };
            let _ = core.machine.handle_print(body, &ctx);
        }
        self.update_truth(&core, &knobs);
    }

    /// Put a message on the report topic (respecting power, silence and duplication knobs).
    fn publish(&self, knobs: &KnobValues, v: &Value) {
        if !self.powered() || knobs.report_silence {
            return;
        }
        let bytes = Bytes::from(reports::encode(self.model, v));
        let _ = self.out.send(bytes.clone());
        if knobs.duplicate_deliveries {
            let _ = self.out.send(bytes);
        }
    }

    fn push_full(&self, core: &mut Core, knobs: &KnobValues) {
        let status = reports::status_object(&self.report_ctx(&core.machine, knobs));
        core.push_seq += 1;
        core.pushes += 1;
        let msg = reports::push_message(status.clone(), 0, core.push_seq);
        core.last_sent = status;
        self.publish(knobs, &msg);
    }

    /// Advance the machine by `real_dt` real seconds.
    pub fn machine_tick(&self, real_dt: f64) {
        let knobs = self.knobs.get();
        let mut core = lock(&self.core);
        // Checked under the core lock: `power_cut` flips the gate before taking it.
        if !self.powered() {
            return;
        }
        let scale = core.machine.time_scale;
        core.machine.advance(real_dt * scale, &knobs);
        self.update_truth(&core, &knobs);
    }

    /// One report period: push per the model's style, then open the next report epoch.
    pub fn report_tick(&self) {
        let knobs = self.knobs.get();
        let mut core = lock(&self.core);
        if !self.powered() {
            return;
        }
        core.report_ticks += 1;
        if core.pushing {
            let status = reports::status_object(&self.report_ctx(&core.machine, &knobs));
            if self.model.sends_deltas() {
                if let Some(d) = reports::delta(&core.last_sent, &status) {
                    core.push_seq += 1;
                    core.pushes += 1;
                    let msg = reports::push_message(d, 1, core.push_seq);
                    core.last_sent = status;
                    self.publish(&knobs, &msg);
                }
            } else {
                let important = [
                    "gcode_state",
                    "print_error",
                    "hms",
                    "subtask_id",
                    "lights_report",
                    "stg_cur",
                ]
                .iter()
                .any(|k| core.last_sent.get(*k) != status.get(*k));
                if core.machine.state.is_active()
                    || important
                    || core.report_ticks.is_multiple_of(IDLE_FULL_EVERY)
                {
                    self.push_full(&mut core, &knobs);
                }
            }
        }
        core.machine.report_epoch += 1;
        self.update_truth(&core, &knobs);
    }

    fn update_truth(&self, core: &Core, knobs: &KnobValues) {
        let m = &core.machine;
        let ctx = self.report_ctx(m, knobs);
        let job = m.job.as_ref();
        let powered = self.powered();
        let next = |connections: usize, listening: bool| SimTruth {
            gcode_state: m.state,
            percent: m.percent,
            remaining_minutes: m.remaining_minutes,
            layer: m.layer,
            total_layers: m.total_layers,
            stg_cur: m.stg_cur,
            nozzle_temp: reports::nozzle_temp(&ctx),
            nozzle_target: m.nozzle_target,
            bed_temp: reports::bed_temp(&ctx),
            bed_target: m.bed_target,
            chamber_temp: reports::chamber_temp(&ctx).unwrap_or(m.chamber),
            subtask_id: job.map(|j| j.subtask_id.clone()).unwrap_or_default(),
            subtask_name: job.map(|j| j.subtask_name.clone()).unwrap_or_default(),
            gcode_file: job.map(|j| j.gcode_file.clone()).unwrap_or_default(),
            print_error: m.print_error,
            hms: m.hms.clone(),
            lights_on: m.lights_on,
            connections,
            listening,
            pushing: core.pushing,
            powered,
            jobs_started: m.jobs_started,
            pushes: core.pushes,
        };
        self.truth_tx.send_if_modified(|t| {
            let n = next(t.connections, t.listening);
            if *t == n {
                false
            } else {
                *t = n;
                true
            }
        });
    }

    fn power_cut(&self) {
        self.set_gate(|g| g.powered = false);
        self.set_listening(false);
        self.disconnect_all();
        let knobs = self.knobs.get();
        let core = lock(&self.core);
        self.update_truth(&core, &knobs);
    }

    fn power_restore(&self, offer_resume: bool) {
        let knobs = self.knobs.get();
        {
            let mut core = lock(&self.core);
            core.machine.power_restored(offer_resume);
            core.pushing = true;
            core.last_sent = reports::status_object(&self.report_ctx(&core.machine, &knobs));
        }
        match std::net::TcpListener::bind(self.mqtt_addr) {
            Ok(l) => {
                *lock(&self.prebound) = Some(l);
                self.set_listening(true);
            }
            Err(e) => {
                tracing::warn!(addr = %self.mqtt_addr, error = %e, "simulator could not reopen its MQTT port at once; the listener keeps trying");
            }
        }
        self.set_gate(|g| {
            g.powered = true;
            g.offline_until = None;
            g.half_open_until = None;
        });
        let core = lock(&self.core);
        self.update_truth(&core, &knobs);
    }

    fn dismiss(&self) {
        let knobs = self.knobs.get();
        let mut core = lock(&self.core);
        core.machine.dismiss();
        self.update_truth(&core, &knobs);
    }

    fn set_door(&self, open: bool) {
        let knobs = self.knobs.get();
        let mut core = lock(&self.core);
        core.machine.set_door(open);
        self.update_truth(&core, &knobs);
    }

    fn set_spool(&self, slot: Option<usize>, spool: Option<SimSpool>) -> bool {
        let knobs = self.knobs.get();
        let mut core = lock(&self.core);
        let placed = match slot {
            Some(i) => match core.machine.trays.get_mut(i) {
                Some(t) => {
                    *t = spool;
                    true
                }
                None => false,
            },
            None => {
                core.machine.external_spool = spool;
                true
            }
        };
        self.update_truth(&core, &knobs);
        placed
    }

    fn regenerate_certificate(&self) -> anyhow::Result<String> {
        let id = SimIdentity::generate(&self.serial)?;
        let cfg = id.server_config(false)?;
        let fp = id.leaf_fingerprint();
        *lock(&self.tls) = (id, cfg);
        Ok(fp)
    }
}

/// A running simulated printer. Dropping it stops its tasks; [`SimPrinter::shutdown`] also
/// waits for them.
pub struct SimPrinter {
    hub: Arc<Hub>,
    mqtt_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The printer's FTPS file service, sharing its storage and certificate.
    ftps: Option<FtpsServerHandle>,
    /// The chamber-image camera (P1/A1 models only).
    camera: Option<crate::sim::camera::SimCamera>,
}

impl SimPrinter {
    /// Start the printer on 127.0.0.1 with ephemeral ports.
    pub async fn start(cfg: SimConfig) -> anyhow::Result<SimPrinter> {
        let serial = cfg.serial.unwrap_or_else(|| generate_serial(cfg.model));
        let access_code = cfg.access_code.unwrap_or_else(generate_access_code);
        let identity =
            SimIdentity::generate(&serial).context("generating the simulator's certificate")?;
        let server_cfg = identity.server_config(false)?;
        let listener = tokio::net::TcpListener::bind((cfg.address, cfg.mqtt_port))
            .await
            .with_context(|| {
                format!(
                    "binding the simulator's MQTT port {}:{}{}",
                    cfg.address,
                    cfg.mqtt_port,
                    bind_hint(cfg.mqtt_port)
                )
            })?;
        let mqtt_addr = listener.local_addr()?;
        let access_code_for_ftps = access_code.clone();
        let mut knob_values = KnobValues::new(access_code, cfg.developer_mode);
        knob_values.max_clients = cfg.max_clients;
        let knobs = SimKnobs::new(knob_values);
        let storage = SimStorage::default();
        let ftps = crate::sim::ftps::start_on(
            SocketAddr::from((cfg.address, cfg.ftps_port)),
            identity.clone(),
            storage.clone(),
            access_code_for_ftps,
            FtpsKnobs::default(),
        )
        .await
        .with_context(|| {
            format!(
                "starting the simulator's FTPS server on {}:{}{}",
                cfg.address,
                cfg.ftps_port,
                bind_hint(cfg.ftps_port)
            )
        })?;
        let machine = Machine::new(cfg.model, cfg.time_scale);
        let ip = cfg.address;
        let initial_status = reports::status_object(&ReportCtx {
            model: cfg.model,
            developer_mode: cfg.developer_mode,
            sdcard: true,
            ip,
            nozzle_override: None,
            bed_override: None,
            wifi_wanders: true,
            machine: &machine,
        });
        let truth = SimTruth {
            gcode_state: GcodeState::Idle,
            percent: 0,
            remaining_minutes: 0,
            layer: 0,
            total_layers: 0,
            stg_cur: machine.stg_cur,
            nozzle_temp: machine.nozzle,
            nozzle_target: 0.0,
            bed_temp: machine.bed,
            bed_target: 0.0,
            chamber_temp: machine.chamber,
            subtask_id: String::new(),
            subtask_name: String::new(),
            gcode_file: String::new(),
            print_error: 0,
            hms: Vec::new(),
            lights_on: machine.lights_on,
            connections: 0,
            listening: true,
            pushing: true,
            powered: true,
            jobs_started: 0,
            pushes: 0,
        };
        let hub = Arc::new(Hub {
            model: cfg.model,
            name: cfg.name.clone(),
            report_topic: format!("device/{serial}/report"),
            request_topic: format!("device/{serial}/request"),
            serial,
            knobs,
            storage,
            log: CommandLog::new(),
            ip,
            core: Mutex::new(Core {
                machine,
                push_seq: 7000,
                last_sent: initial_status,
                pushing: true,
                report_ticks: 0,
                pushes: 0,
            }),
            out: broadcast::channel(1024).0,
            truth_tx: watch::Sender::new(truth),
            tls: Mutex::new((identity, server_cfg)),
            conns: Mutex::new(BTreeMap::new()),
            gate: watch::Sender::new(Gate {
                powered: true,
                offline_until: None,
                half_open_until: None,
            }),
            next_conn_id: AtomicU64::new(1),
            mqtt_addr,
            prebound: Mutex::new(None),
        });
        let shutdown = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(run_core(
                Arc::clone(&hub),
                cfg.report_interval.max(Duration::from_millis(10)),
                shutdown.clone(),
            )),
            tokio::spawn(mqtt::run_listener(
                Arc::clone(&hub),
                listener,
                mqtt_addr,
                shutdown.clone(),
            )),
        ];
        let camera = if crate::sim::camera::has_chamber_image(cfg.model) {
            let addr = SocketAddr::from((cfg.address, cfg.camera_port));
            let (cam, cam_tasks) = crate::sim::camera::start(
                addr,
                Arc::clone(&hub),
                cfg.camera_frame_interval.max(Duration::from_millis(10)),
                shutdown.clone(),
            )
            .await
            .with_context(|| {
                format!(
                    "binding the simulator's camera port {}:{}",
                    cfg.address, cfg.camera_port
                )
            })?;
            tasks.extend(cam_tasks);
            Some(cam)
        } else {
            None
        };
        if let Some(target) = cfg.ssdp_target {
            tasks.push(tokio::spawn(ssdp::run_announcer(
                Arc::clone(&hub),
                target,
                cfg.ssdp_interval.max(Duration::from_millis(10)),
                shutdown.clone(),
            )));
        }
        tracing::info!(serial = %hub.serial, model = ?cfg.model, port = mqtt_addr.port(), "simulated printer started");
        Ok(SimPrinter {
            hub,
            mqtt_addr,
            shutdown,
            tasks,
            ftps: Some(ftps),
            camera,
        })
    }

    /// The address every service of this printer listens on (`127.0.0.1` by default).
    pub fn host(&self) -> String {
        self.mqtt_addr.ip().to_string()
    }
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_addr.port()
    }
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }
    /// Port of the FTPS file service (990 on a real printer).
    pub fn ftps_port(&self) -> u16 {
        self.ftps.as_ref().map(|f| f.port()).unwrap_or(0)
    }
    /// Port of the chamber-image camera (6000 on a real printer); `None` on models without it.
    pub fn camera_port(&self) -> Option<u16> {
        self.camera.as_ref().map(|c| c.port())
    }
    /// The chamber-image camera (P1/A1 models only).
    pub fn camera(&self) -> Option<&crate::sim::camera::SimCamera> {
        self.camera.as_ref()
    }
    /// Fault knobs of the FTPS file service.
    pub fn ftps_knobs(&self) -> FtpsKnobs {
        self.ftps.as_ref().map(|f| f.knobs()).unwrap_or_default()
    }
    pub fn serial(&self) -> &str {
        &self.hub.serial
    }
    pub fn name(&self) -> &str {
        &self.hub.name
    }
    /// The current access code (the `access_code` knob).
    pub fn access_code(&self) -> String {
        self.hub.knobs.access_code()
    }
    pub fn model(&self) -> Model {
        self.hub.model
    }
    /// The certificate currently presented to new connections.
    pub fn identity(&self) -> SimIdentity {
        self.hub.identity()
    }
    /// SHA-256 (lowercase hex) of the current leaf certificate.
    pub fn fingerprint(&self) -> String {
        self.hub.identity().leaf_fingerprint()
    }
    pub fn storage(&self) -> SimStorage {
        self.hub.storage.clone()
    }
    pub fn knobs(&self) -> SimKnobs {
        self.hub.knobs.clone()
    }
    pub fn report_topic(&self) -> &str {
        &self.hub.report_topic
    }
    pub fn request_topic(&self) -> &str {
        &self.hub.request_topic
    }
    /// Every request received so far, in order.
    pub fn command_log(&self) -> Vec<LoggedCommand> {
        self.hub.log.snapshot()
    }
    /// Every payload the printer puts on its report topic, as it publishes it (from now on);
    /// what every connected client is sent. For measuring delivery latency from the source.
    pub fn subscribe_reports(&self) -> broadcast::Receiver<Bytes> {
        self.hub.subscribe_out()
    }
    /// Requests as they arrive (from now on).
    pub fn subscribe_commands(&self) -> broadcast::Receiver<LoggedCommand> {
        self.hub.log.subscribe()
    }
    pub fn truth(&self) -> watch::Receiver<SimTruth> {
        self.hub.truth_tx.subscribe()
    }
    /// Powered (false between [`power_cut`](Self::power_cut) and
    /// [`power_restore`](Self::power_restore)); for the FTPS server to follow.
    pub fn powered(&self) -> watch::Receiver<bool> {
        let mut gate = self.hub.gate();
        let (tx, rx) = watch::channel(gate.borrow().powered);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    r = gate.changed() => {
                        if r.is_err() { return; }
                        let p = gate.borrow().powered;
                        tx.send_if_modified(|v| { let c = *v != p; *v = p; c });
                    }
                }
            }
        });
        rx
    }

    /// Wait (bounded) until the truth satisfies `pred`; returns that truth.
    pub async fn wait_truth(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&SimTruth) -> bool,
    ) -> anyhow::Result<SimTruth> {
        let mut rx = self.truth();
        let r = tokio::time::timeout(timeout, rx.wait_for(|t| pred(t)))
            .await
            .map(|r| r.map(|t| t.clone()));
        match r {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(_)) => anyhow::bail!("simulator stopped"),
            Err(_) => anyhow::bail!(
                "simulator truth did not reach the expected state within {timeout:?}; last: {:?}",
                *rx.borrow()
            ),
        }
    }

    /// Drop every MQTT connection now (clients may reconnect at once).
    pub fn disconnect_now(&self) {
        self.hub.disconnect_all();
    }
    /// Drop every connection and refuse TCP connections for `d` (real time).
    pub fn disconnect_for(&self, d: Duration) {
        self.hub
            .set_gate(|g| g.offline_until = Some(Instant::now() + d));
        self.hub.set_listening(false);
        self.hub.disconnect_all();
    }
    /// Half-open for `d`: connections stay open but nothing flows either way (PINGREQ unanswered,
    /// new handshakes stall); afterwards the frozen connections are closed.
    pub fn half_open_for(&self, d: Duration) {
        self.hub
            .set_gate(|g| g.half_open_until = Some(Instant::now() + d));
    }
    /// Relay cut: reports stop instantly, connections drop, the port refuses connections.
    pub fn power_cut(&self) {
        self.hub.power_cut();
    }
    /// Power back: boots to IDLE, or to FAILED with 0300_8007 when a job was active and
    /// `offer_resume`. Never resumes a job.
    pub fn power_restore(&self, offer_resume: bool) {
        self.hub.power_restore(offer_resume);
    }
    /// A person starts `file_name` (already on the printer's storage) from the printer's screen.
    pub fn start_from_screen(&self, file_name: &str, subtask_name: &str) {
        self.hub.start_from_screen(file_name, subtask_name);
    }
    /// A person tapped the error/finish dialog away: print_error cleared, FINISH/FAILED → IDLE.
    pub fn dismiss_on_screen(&self) {
        self.hub.dismiss();
    }
    /// Open or close the front door; X1/H2/P2S pause a running job (0300_800F).
    pub fn set_door_open(&self, open: bool) {
        self.hub.set_door(open);
    }
    /// A person puts `spool` into AMS tray `slot` (0–3), or pulls the spool out (`None`); the
    /// next report shows it. `false` if the AMS has no such slot.
    pub fn load_tray(&self, slot: usize, spool: Option<SimSpool>) -> bool {
        self.hub.set_spool(Some(slot), spool)
    }
    /// A person hangs `spool` on the external holder, or takes it off (`None`).
    pub fn load_external_spool(&self, spool: Option<SimSpool>) {
        self.hub.set_spool(None, spool);
    }
    /// New certificate for new connections; returns its fingerprint.
    pub fn regenerate_certificate(&self) -> anyhow::Result<String> {
        self.hub.regenerate_certificate()
    }

    /// Stop all tasks and close every connection.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(ftps) = self.ftps.take() {
            ftps.shutdown().await;
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for SimPrinter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn run_core(hub: Arc<Hub>, report_interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(MACHINE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(report_interval);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = Instant::now();
                hub.machine_tick(now.duration_since(last).as_secs_f64());
                last = now;
            }
            _ = report.tick() => hub.report_tick(),
        }
    }
}

/// Several simulated printers started and stopped together.
pub struct SimFleet {
    printers: Vec<SimPrinter>,
}

impl SimFleet {
    pub async fn start(configs: Vec<SimConfig>) -> anyhow::Result<SimFleet> {
        let mut printers = Vec::with_capacity(configs.len());
        for cfg in configs {
            printers.push(SimPrinter::start(cfg).await?);
        }
        Ok(SimFleet { printers })
    }
    pub fn printers(&self) -> &[SimPrinter] {
        &self.printers
    }
    pub fn get(&self, i: usize) -> Option<&SimPrinter> {
        self.printers.get(i)
    }
    pub fn by_serial(&self, serial: &str) -> Option<&SimPrinter> {
        self.printers.iter().find(|p| p.serial() == serial)
    }
    pub async fn shutdown(self) {
        for p in self.printers {
            p.shutdown().await;
        }
    }
}
