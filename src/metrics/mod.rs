//! Metrics: the Prometheus endpoint `GET /metrics` (text format 0.0.4, encoded by
//! `prometheus-client`). Counters that only this process sees (web requests and their latency,
//! MQTT traffic) live in [`Metrics`]; everything else is read at scrape time from where it is
//! kept: printer snapshots, the dispatcher, the safety runtime, the database's audit tables
//! (starts, taps, trips: totals that survive restarts) and `/proc/self`.
//!
//! Naming follows the Prometheus conventions: a `printgate_` prefix, base units in the name
//! (`_seconds`, `_bytes`, `_celsius`, `_ratio`), `_total` on counters, the standard
//! `process_*` names for the process, and only labels with few values (printer names, states,
//! causes, route templates — never raw paths or job ids). The list is in README ("Metrics").

pub mod config;
pub mod http;
pub mod process;

use crate::app::Gateway;
use crate::broker::stats::{BrokerStats, BrokerStatsSnapshot};
use crate::jobs::model::JobState;
use crate::jobs::plate::PlateState;
use crate::printer::state::GcodeState;
use crate::store::stats::MetricCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// A gauge holding a float.
type FGauge = Gauge<f64, AtomicU64>;

/// Labels of one web request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/printers/{name}`), `unmatched` for paths no route serves.
    pub route: String,
    pub method: String,
    pub status: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrinterLabel {
    printer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrinterInfo {
    printer: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrinterState {
    printer: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrinterSensor {
    printer: String,
    sensor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrinterOutcome {
    printer: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrinterResult {
    printer: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InputLabels {
    input: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabel {
    pin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// Upper bounds of the web latency histogram: 5 ms … ~10 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// What one process counts as it runs (web requests, the MQTT side's counters).
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    broker: OnceLock<Arc<BrokerStats>>,
    started_at: SystemTime,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            broker: OnceLock::new(),
            started_at: SystemTime::now(),
            started: Instant::now(),
        }
    }
}

impl Metrics {
    /// Count one answered web request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The MQTT side's counters, once it has started.
    pub fn set_broker(&self, stats: Arc<BrokerStats>) {
        let _ = self.broker.set(stats);
    }

    fn broker(&self) -> Option<BrokerStatsSnapshot> {
        self.broker.get().map(|b| b.snapshot())
    }
}

/// Everything a scrape shows that is not kept in [`Metrics`]: read from the gateway's parts
/// (the caller reads `counts` from the database off the async threads).
pub fn render(gw: &Gateway, counts: &MetricCounts) -> Result<String, std::fmt::Error> {
    let mut root = Registry::default();
    process::register(&mut root, &gw.metrics);
    let reg = root.sub_registry_with_prefix("printgate");

    let info = Family::<VersionLabel, Gauge>::default();
    info.get_or_create(&VersionLabel {
        version: env!("CARGO_PKG_VERSION").into(),
    })
    .set(1);
    reg.register("build_info", "printgate version (always 1)", info);
    let uptime = FGauge::default();
    uptime.set(gw.metrics.started.elapsed().as_secs_f64());
    reg.register(
        "uptime_seconds",
        "Seconds since the gateway started",
        uptime,
    );

    register_printers(reg, gw, counts);
    register_queue(reg, gw, counts);
    register_safety(reg, gw, counts);
    register_broker(reg, gw);
    register_database(reg, gw);

    reg.register(
        "http_requests",
        "Web requests answered, by route template, method and status",
        gw.metrics.requests.clone(),
    );
    reg.register(
        "http_request_duration_seconds",
        "Time from request to response headers, by route template and method",
        gw.metrics.latency.clone(),
    );

    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &root)?;
    Ok(out)
}

const GCODE_STATES: [GcodeState; 8] = [
    GcodeState::Idle,
    GcodeState::Prepare,
    GcodeState::Slicing,
    GcodeState::Running,
    GcodeState::Pause,
    GcodeState::Finish,
    GcodeState::Failed,
    GcodeState::Unknown,
];

fn register_printers(reg: &mut Registry, gw: &Gateway, counts: &MetricCounts) {
    let info = Family::<PrinterInfo, Gauge>::default();
    let online = Family::<PrinterLabel, Gauge>::default();
    let state = Family::<PrinterState, Gauge>::default();
    let progress = Family::<PrinterLabel, FGauge>::default();
    let temp = Family::<PrinterSensor, FGauge>::default();
    let target = Family::<PrinterSensor, FGauge>::default();
    let age = Family::<PrinterLabel, FGauge>::default();
    let reconnects = Family::<PrinterLabel, Counter>::default();
    let plate = Family::<PrinterLabel, Gauge>::default();
    let starts = Family::<PrinterOutcome, Counter>::default();
    let taps = Family::<PrinterResult, Counter>::default();
    let dispatch = gw.dispatcher.state();
    let now = Instant::now();
    for p in &gw.printers {
        let l = PrinterLabel {
            printer: p.name.clone(),
        };
        info.get_or_create(&PrinterInfo {
            printer: p.name.clone(),
            model: p.model.display_name().to_string(),
        })
        .set(1);
        let snap = p.link.subscribe().borrow().clone();
        online
            .get_or_create(&l)
            .set(i64::from(snap.link.is_online()));
        let current = snap.state.as_ref().map(|s| s.gcode_state);
        for s in GCODE_STATES {
            state
                .get_or_create(&PrinterState {
                    printer: p.name.clone(),
                    state: s.as_str().to_ascii_lowercase(),
                })
                .set(i64::from(current.unwrap_or_default() == s));
        }
        if let Some(st) = &snap.state {
            if let Some(pct) = st.percent {
                progress
                    .get_or_create(&l)
                    .set(f64::from(pct.min(100)) / 100.0);
            }
            for (sensor, value, goal) in [
                ("nozzle", st.nozzle_temp, st.nozzle_target),
                ("bed", st.bed_temp, st.bed_target),
                ("chamber", st.chamber_temp, None),
            ] {
                let key = PrinterSensor {
                    printer: p.name.clone(),
                    sensor: sensor.into(),
                };
                if let Some(v) = value {
                    temp.get_or_create(&key).set(v);
                }
                if let Some(v) = goal {
                    target.get_or_create(&key).set(v);
                }
            }
        }
        if let Some(at) = snap.last_report_at {
            age.get_or_create(&l)
                .set(now.saturating_duration_since(at).as_secs_f64());
        }
        reconnects
            .get_or_create(&l)
            .inc_by(snap.connection_epoch.saturating_sub(1));
        let clear = dispatch
            .printers
            .get(&p.name)
            .is_some_and(|r| matches!(r.plate, PlateState::Clear(_)));
        plate.get_or_create(&l).set(i64::from(clear));
        for outcome in ["confirmed", "unconfirmed", "refused"] {
            let n = counts
                .starts
                .get(&(p.name.clone(), outcome))
                .copied()
                .unwrap_or(0);
            starts
                .get_or_create(&PrinterOutcome {
                    printer: p.name.clone(),
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
        for result in ["accepted", "refused"] {
            let n = counts
                .taps
                .get(&(p.name.clone(), result))
                .copied()
                .unwrap_or(0);
            taps.get_or_create(&PrinterResult {
                printer: p.name.clone(),
                result: result.into(),
            })
            .inc_by(n);
        }
    }
    reg.register(
        "printer_info",
        "A configured printer and its model (always 1)",
        info,
    );
    reg.register("printer_online", "1 while the printer's link is up", online);
    reg.register(
        "printer_state",
        "1 for the printer's current job state (lower-case gcode_state)",
        state,
    );
    reg.register(
        "printer_progress_ratio",
        "Progress of the current print, 0 to 1",
        progress,
    );
    reg.register(
        "printer_temperature_celsius",
        "Measured temperature by sensor (nozzle, bed, chamber)",
        temp,
    );
    reg.register(
        "printer_target_temperature_celsius",
        "Target temperature by sensor",
        target,
    );
    reg.register(
        "printer_report_age_seconds",
        "Seconds since the printer's last report",
        age,
    );
    reg.register(
        "printer_reconnects",
        "Link reconnections since the gateway started",
        reconnects,
    );
    reg.register(
        "printer_plate_clear",
        "1 while a plate-clear tap waits to be used",
        plate,
    );
    reg.register(
        "printer_starts",
        "Print starts by outcome (confirmed, unconfirmed, refused by the printer), from the job log",
        starts,
    );
    reg.register(
        "plate_taps",
        "Plate-clear taps by result (accepted, refused), from the tap log",
        taps,
    );
}

fn register_queue(reg: &mut Registry, gw: &Gateway, counts: &MetricCounts) {
    let jobs = Family::<StateLabel, Gauge>::default();
    for s in JobState::ALL {
        let name = s.as_str();
        let n = counts.jobs.get(name).copied().unwrap_or(0);
        jobs.get_or_create(&StateLabel { state: name.into() })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    reg.register("queue_jobs", "Jobs in the database by state", jobs);
    let oldest = FGauge::default();
    if let Some(created) = counts.oldest_waiting_ms {
        let now = chrono::Utc::now().timestamp_millis();
        oldest.set((now - created).max(0) as f64 / 1000.0);
    }
    reg.register(
        "queue_oldest_waiting_seconds",
        "Age of the oldest job still waiting (queued or staged); 0 when none waits",
        oldest,
    );
    let paused = Gauge::<i64>::default();
    paused.set(i64::from(gw.dispatcher.state().queue_paused));
    reg.register("queue_paused", "1 while the whole queue is paused", paused);
}

/// Trip causes shown at 0 before they ever happened (`SafetyCause::kind`); causes found in
/// the trip log are shown whatever their name.
const TRIP_CAUSES: [&str; 9] = [
    "smoke",
    "second_input",
    "emergency_stop",
    "over_temperature",
    "thermal_runaway",
    "heater_not_heating",
    "heater_not_holding",
    "report_silence",
    "printer_fault",
];

fn register_safety(reg: &mut Registry, gw: &Gateway, counts: &MetricCounts) {
    let trips = Family::<CauseLabel, Counter>::default();
    for cause in TRIP_CAUSES {
        trips
            .get_or_create(&CauseLabel {
                cause: cause.into(),
            })
            .inc_by(0);
    }
    for (cause, n) in &counts.trips {
        trips
            .get_or_create(&CauseLabel {
                cause: cause.clone(),
            })
            .inc_by(*n);
    }
    reg.register(
        "safety_trips",
        "Safety trips by cause, from the trip log",
        trips,
    );
    let Some(safety) = &gw.safety else { return };
    let view = safety.status();
    let tripped = Gauge::<i64>::default();
    tripped.set(i64::from(view.tripped));
    reg.register(
        "safety_tripped",
        "1 while a safety trip is latched (relays off, queue paused)",
        tripped,
    );
    let inputs = Family::<InputLabels, Gauge>::default();
    for i in &view.inputs {
        inputs
            .get_or_create(&InputLabels {
                input: i.name.clone(),
                role: i.role.clone(),
            })
            .set(i64::from(i.asserted));
    }
    reg.register(
        "safety_input_asserted",
        "1 while a safety input (smoke detector) is asserted",
        inputs,
    );
    let relays = Family::<RelayLabel, Gauge>::default();
    for r in &view.relays {
        relays
            .get_or_create(&RelayLabel {
                pin: r.pin.to_string(),
            })
            .set(i64::from(r.on));
    }
    reg.register(
        "safety_relay_on",
        "1 while the relay on this GPIO pin powers its printers",
        relays,
    );
}

fn register_broker(reg: &mut Registry, gw: &Gateway) {
    let Some(b) = gw.metrics.broker() else { return };
    let g = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let c = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    reg.register(
        "mqtt_connected",
        "1 while the gateway's own MQTT client is connected to the broker",
        g(u64::from(b.connected)),
    );
    reg.register(
        "mqtt_connects",
        "Times the gateway's own MQTT client connected to the broker",
        c(b.connects),
    );
    reg.register(
        "mqtt_published_messages",
        "Messages the gateway published to the broker (state, discovery, events, results)",
        c(b.published),
    );
    reg.register(
        "broker_clients",
        "MQTT clients logged in to the embedded broker",
        g(b.clients),
    );
    reg.register(
        "broker_received_messages",
        "PUBLISH packets the embedded broker received from clients",
        c(b.received),
    );
    reg.register(
        "broker_refused_logins",
        "MQTT logins the embedded broker refused",
        c(b.refused_logins),
    );
    if let Some(up) = b.worker_up {
        reg.register(
            "broker_worker_up",
            "1 while the embedded broker's worker process runs and answers",
            g(u64::from(up)),
        );
        reg.register(
            "broker_worker_restarts",
            "Embedded broker worker processes restarted after a crash or a hang",
            c(b.worker_restarts),
        );
    }
}

fn register_database(reg: &mut Registry, gw: &Gateway) {
    let db = gw.config.data_dir.join(crate::store::DATABASE_FILE);
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum();
    let g = FGauge::default();
    g.set(size as f64);
    reg.register(
        "database_size_bytes",
        "Size of the SQLite database with its write-ahead log",
        g,
    );
    if let Some(at) = crate::backup::last_backup_at(&gw.config.data_dir) {
        let ts = FGauge::default();
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        ts.set(secs);
        reg.register(
            "backup_last_success_timestamp_seconds",
            "When `printgate backup` last wrote an archive (Unix time)",
            ts,
        );
        let age = FGauge::default();
        age.set(
            SystemTime::now()
                .duration_since(at)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        reg.register(
            "backup_age_seconds",
            "Seconds since `printgate backup` last wrote an archive",
            age,
        );
    }
}
