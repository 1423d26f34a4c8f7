//! Protocol-faithful simulator of a Klipper printer running Moonraker with its `[mqtt]`
//! component pointed at printgate's broker (issue #9). Like real Moonraker it connects *as a
//! client* (clean session, MQTT 3.1.1, will `{"server":"offline"}` retained on
//! `{instance}/moonraker/status`), answers JSON-RPC 2.0 on `{instance}/moonraker/api/request`
//! → `{instance}/moonraker/api/response` (duplicate `mqtt_timestamp` filtering included),
//! publishes `{instance}/klipper/status` (full once after Klippy starts, then deltas), serves
//! the HTTP file API (`POST /server/files/upload` …) and runs a simulated print.
//!
//! Start one with [`SimMoonraker::start`], change its behaviour through [`MoonrakerKnobs`], check
//! what it received with [`SimMoonraker::rpc_log`] and what it is doing with
//! [`SimMoonraker::truth`].

mod files;
mod http;
pub mod knobs;
pub mod log;
pub mod model;
mod mqtt;
mod rpc;

pub use knobs::{KlippyState, MoonrakerKnobValues, MoonrakerKnobs, UploadFailure};
pub use log::{MoonrakerTruth, RpcEntry, RpcLog, RpcOutcome, UploadRecord};
pub use model::PrintState;

use anyhow::Context;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use files::GcodeStore;
use model::Printer;

/// How a simulated Moonraker is set up (its `moonraker.conf` `[mqtt]` and `[authorization]`).
#[derive(Debug, Clone)]
pub struct MoonrakerSimConfig {
    pub instance_name: String,
    /// Broker host:port (plain MQTT) the simulated Moonraker connects to.
    pub broker: SocketAddr,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: Option<String>,
    /// HTTP API listen address (127.0.0.1:0 in tests).
    pub http_listen: SocketAddr,
    pub api_key: Option<String>,
    pub time_scale: f64,
    pub publish_split_status: bool,
    /// `[mqtt] status_objects`: object name and its fields (`None` = all fields). Empty: no
    /// status is published at all (as in Moonraker).
    pub status_objects: Vec<(String, Option<Vec<String>>)>,
}

/// The objects printgate asks users to list under `status_objects` (issue #9), all fields.
pub const DEFAULT_STATUS_OBJECTS: [&str; 6] = [
    "webhooks",
    "print_stats",
    "virtual_sdcard",
    "display_status",
    "extruder",
    "heater_bed",
];

impl MoonrakerSimConfig {
    pub fn new(instance_name: &str, broker: SocketAddr) -> Self {
        Self {
            instance_name: instance_name.to_string(),
            broker,
            username: None,
            password: None,
            client_id: None,
            http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: None,
            time_scale: 1.0,
            publish_split_status: false,
            status_objects: DEFAULT_STATUS_OBJECTS
                .iter()
                .map(|o| (o.to_string(), None))
                .collect(),
        }
    }
}

/// Mutable state shared by the MQTT, HTTP and tick tasks.
pub(crate) struct SimState {
    pub printer: Printer,
    pub files: GcodeStore,
    /// Last 20 `mqtt_timestamp`s (Moonraker's `timestamp_deque`).
    pub timestamps: VecDeque<Value>,
    /// The status as last reported by "Klipper" (what deltas are computed against).
    pub last_status: Map<String, Value>,
    pub status_publishes: u64,
    pub mqtt_connected: bool,
    pub mqtt_error: Option<String>,
    pub mqtt_connections: u64,
}

/// The MQTT session currently up.
#[derive(Clone)]
pub(crate) struct Link {
    pub client: rumqttc::AsyncClient,
}

pub(crate) struct Shared {
    pub cfg: MoonrakerSimConfig,
    pub knobs: MoonrakerKnobs,
    pub log: RpcLog,
    state: Mutex<SimState>,
    truth: watch::Sender<MoonrakerTruth>,
    link: Mutex<Option<Link>>,
    uploads: Mutex<Vec<UploadRecord>>,
    /// `true` between `go_offline` and `come_back`.
    pub offline: watch::Sender<bool>,
    /// Set once by `shutdown`.
    pub stopping: watch::Sender<bool>,
    /// `status_objects` as a `printer.objects.query` argument.
    pub subscription: Map<String, Value>,
    started: Instant,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.cfg.instance_name)
    }

    /// Klipper's `eventtime`: seconds on the host's monotonic clock.
    pub fn eventtime(&self) -> f64 {
        let t = 4000.0 + self.started.elapsed().as_secs_f64();
        (t * 1000.0).round() / 1000.0
    }

    pub fn link(&self) -> Option<Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_link(&self, link: Option<Link>) {
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
    }

    pub fn qos(&self) -> rumqttc::QoS {
        if self.knobs.get().mqtt_qos >= 1 {
            rumqttc::QoS::AtLeastOnce
        } else {
            rumqttc::QoS::AtMostOnce
        }
    }

    /// Publish on the current session; `false` when MQTT is down or the queue is full.
    pub fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) -> bool {
        let Some(link) = self.link() else {
            return false;
        };
        link.client
            .try_publish(topic, self.qos(), retain, payload)
            .is_ok()
    }

    pub fn record_upload(&self, rec: UploadRecord) {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
    }

    /// Push the current state to `truth` watchers (only when something changed).
    pub fn refresh_truth(&self) {
        let t = {
            let st = self.lock();
            let p = &st.printer;
            MoonrakerTruth {
                print_state: p.print_state,
                filename: p.filename.clone(),
                progress: p.progress,
                current_layer: p.current_layer,
                total_layer: p.total_layer,
                extruder_temp: p.extruder.temperature,
                extruder_target: p.extruder.target,
                bed_temp: p.bed.temperature,
                bed_target: p.bed.target,
                klippy_state: p.klippy(),
                mqtt_connected: st.mqtt_connected,
                mqtt_error: st.mqtt_error.clone(),
                mqtt_connections: st.mqtt_connections,
                jobs_started: p.jobs_started,
                status_publishes: st.status_publishes,
            }
        };
        self.truth.send_if_modified(|cur| {
            if *cur == t {
                false
            } else {
                *cur = t;
                true
            }
        });
    }

    /// Follow the `klippy_state` knob (called before every request and tick).
    pub fn sync_klippy(&self, st: &mut SimState) {
        st.printer.set_klippy(self.knobs.get().klippy_state);
    }
}

/// A running simulated Moonraker. Dropping it without [`shutdown`](Self::shutdown) is like
/// pulling the plug: the TCP connection closes without DISCONNECT and the broker fires the will.
pub struct SimMoonraker {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    mqtt_task: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimMoonraker {
    /// Bind the HTTP API, start the status ticker and connect to the broker (in the
    /// background: returns before the first CONNACK; watch `truth().mqtt_connected`).
    pub async fn start(cfg: MoonrakerSimConfig) -> anyhow::Result<SimMoonraker> {
        if !(cfg.time_scale.is_finite() && cfg.time_scale > 0.0) {
            anyhow::bail!(
                "time scale must be a positive number (1 = real time), got {}",
                cfg.time_scale
            );
        }
        if cfg.instance_name.is_empty()
            || cfg.instance_name.contains(['+', '#'])
            || cfg.instance_name.starts_with('/')
        {
            anyhow::bail!(
                "instance_name {:?} is not usable as an MQTT topic prefix: it must be non-empty and contain no wildcard ('+', '#')",
                cfg.instance_name
            );
        }
        let listener = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .with_context(|| {
                format!(
                    "simulated Moonraker could not listen on {} for its HTTP API",
                    cfg.http_listen
                )
            })?;
        let http_addr = listener.local_addr()?;
        let knobs = MoonrakerKnobs::default();
        let mut printer = Printer::new();
        printer.set_klippy(knobs.get().klippy_state);
        let st = SimState {
            printer,
            files: GcodeStore::default(),
            timestamps: VecDeque::with_capacity(20),
            last_status: Map::new(),
            status_publishes: 0,
            mqtt_connected: false,
            mqtt_error: None,
            mqtt_connections: 0,
        };
        let truth = watch::Sender::new(MoonrakerTruth {
            print_state: PrintState::Standby,
            filename: String::new(),
            progress: 0.0,
            current_layer: None,
            total_layer: None,
            extruder_temp: 0.0,
            extruder_target: 0.0,
            bed_temp: 0.0,
            bed_target: 0.0,
            klippy_state: KlippyState::Ready,
            mqtt_connected: false,
            mqtt_error: None,
            mqtt_connections: 0,
            jobs_started: 0,
            status_publishes: 0,
        });
        let subscription = cfg
            .status_objects
            .iter()
            .map(|(name, fields)| {
                let v = fields.as_ref().map_or(Value::Null, |f| {
                    Value::Array(f.iter().cloned().map(Value::String).collect())
                });
                (name.clone(), v)
            })
            .collect();
        let shared = Arc::new(Shared {
            subscription,
            cfg,
            knobs,
            log: RpcLog::new(),
            state: Mutex::new(st),
            truth,
            link: Mutex::new(None),
            uploads: Mutex::new(Vec::new()),
            offline: watch::Sender::new(false),
            stopping: watch::Sender::new(false),
            started: Instant::now(),
        });
        shared.refresh_truth();
        let tasks = vec![
            tokio::spawn(mqtt::run_ticker(shared.clone())),
            tokio::spawn(http::serve(shared.clone(), listener)),
        ];
        let mqtt_task = Some(tokio::spawn(mqtt::run_connection(shared.clone())));
        Ok(SimMoonraker {
            shared,
            http_addr,
            mqtt_task,
            tasks,
        })
    }

    pub fn instance_name(&self) -> &str {
        &self.shared.cfg.instance_name
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The `[mqtt]` section of a `moonraker.conf` that behaves like this simulator (for docs and
    /// the demo page). The password is written as given.
    pub fn moonraker_conf(&self) -> String {
        let c = &self.shared.cfg;
        let mut out = format!(
            "[mqtt]\naddress: {}\nport: {}\n",
            c.broker.ip(),
            c.broker.port()
        );
        if let Some(u) = &c.username {
            out.push_str(&format!("username: {u}\n"));
        }
        if let Some(p) = &c.password {
            out.push_str(&format!("password: {p}\n"));
        }
        if let Some(id) = &c.client_id {
            out.push_str(&format!("client_id: {id}\n"));
        }
        out.push_str(&format!("instance_name: {}\n", c.instance_name));
        if c.publish_split_status {
            out.push_str("publish_split_status: True\n");
        }
        out.push_str("status_objects:\n");
        for (name, fields) in &c.status_objects {
            match fields {
                None => out.push_str(&format!("  {name}\n")),
                Some(f) => out.push_str(&format!("  {name}={}\n", f.join(","))),
            }
        }
        out
    }

    pub fn knobs(&self) -> MoonrakerKnobs {
        self.shared.knobs.clone()
    }

    /// Every JSON-RPC request received, in order.
    pub fn rpc_log(&self) -> RpcLog {
        self.shared.log.clone()
    }

    pub fn truth(&self) -> watch::Receiver<MoonrakerTruth> {
        self.shared.truth.subscribe()
    }

    /// The gcodes storage, `(path relative to the root, bytes)`.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        self.shared.lock().files.all()
    }

    /// Put a file into the gcodes storage (no capacity check: test setup).
    pub fn put_file(&self, name: &str, bytes: Vec<u8>) {
        if let Err(e) = self.shared.lock().files.put(name, bytes, None) {
            tracing::warn!(instance = %self.instance_name(), "put_file({name}) refused: {e}");
        }
    }

    /// Every successful HTTP upload, in order.
    pub fn uploads(&self) -> Vec<UploadRecord> {
        self.shared
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A print started on the printer's own screen (not through printgate).
    pub fn start_from_screen(&self, filename: &str) -> anyhow::Result<()> {
        let knobs = self.shared.knobs.get();
        {
            let mut st = self.shared.lock();
            self.shared.sync_klippy(&mut st);
            if st.printer.klippy() != KlippyState::Ready {
                anyhow::bail!("Klippy is not ready: {}", st.printer.state_message());
            }
            let SimState { printer, files, .. } = &mut *st;
            let (name, file) = files
                .resolve(filename)
                .with_context(|| format!("no file {filename:?} in the gcodes storage"))?;
            printer.start_print(
                &name,
                &file.bytes,
                knobs.default_print_secs,
                knobs.default_total_layers,
            )?;
        }
        self.shared.refresh_truth();
        Ok(())
    }

    /// Jump the running print to complete.
    pub fn finish_now(&self) {
        self.shared.lock().printer.finish_now();
        self.shared.refresh_truth();
    }

    /// Drop the MQTT TCP connection without DISCONNECT (the broker fires the will) and stay
    /// away until [`come_back`](Self::come_back). Returns once the session is down.
    pub async fn go_offline(&self) {
        self.shared.offline.send_replace(true);
        let mut truth = self.truth();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            truth.wait_for(|t| !t.mqtt_connected),
        )
        .await;
    }

    /// Reconnect after [`go_offline`](Self::go_offline); returns once connected (or the
    /// connection was refused, or after 5 s).
    pub async fn come_back(&self) {
        let before = self.shared.lock().mqtt_connections;
        self.shared.offline.send_replace(false);
        let mut truth = self.truth();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            truth.wait_for(|t| {
                (t.mqtt_connected && t.mqtt_connections > before) || t.mqtt_error.is_some()
            }),
        )
        .await;
    }

    /// Clean shutdown: `{"server":"offline"}` retained, then DISCONNECT.
    pub async fn shutdown(mut self) {
        self.shared.stopping.send_replace(true);
        if let Some(task) = self.mqtt_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for SimMoonraker {
    fn drop(&mut self) {
        if let Some(t) = &self.mqtt_task {
            t.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
