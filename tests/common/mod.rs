//! Shared harness for integration tests: simulated printers on loopback and the real gateway
//! (`printgate::start`) pointed at them, with a temporary data directory and short timings.
#![allow(dead_code)]

pub mod mosquitto;

use printgate::config::{
    Config, DispatchConfig, LinkConfig, Model, PrinterConfig, TlsMode, WebConfig,
};
use printgate::jobs::dispatcher::Event;
use printgate::jobs::model::{Job, JobId, JobState, NewJob, Target};
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::sim::{LoggedCommand, SimConfig, SimPrinter};
use printgate::{RunningGateway, start};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct TestGateway {
    pub sims: Vec<SimPrinter>,
    pub running: Option<RunningGateway>,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

pub fn fast_link() -> LinkConfig {
    LinkConfig {
        keepalive_secs: 2,
        silence_secs: 10,
        silence_reconnect_secs: 5,
        backoff_min_ms: 50,
        backoff_max_ms: 500,
        auth_backoff_secs: 2,
        pushall_min_interval_ms: 200,
    }
}

pub async fn start_sim(model: Model, time_scale: f64) -> SimPrinter {
    let mut cfg = SimConfig::new(model);
    cfg.name = format!("sim {}", model.config_name());
    cfg.time_scale = time_scale;
    cfg.report_interval = Duration::from_millis(100);
    SimPrinter::start(cfg).await.expect("simulator starts")
}

pub fn printer_config(name: &str, sim: &SimPrinter) -> PrinterConfig {
    PrinterConfig {
        name: name.to_string(),
        model: sim.model(),
        serial: sim.serial().to_string(),
        host: sim.host(),
        access_code: sim.access_code(),
        tls: TlsMode::Pin,
        mqtt_port: sim.mqtt_port(),
        ftps_port: sim.ftps_port(),
        camera_port: sim.camera_port().unwrap_or(6000),
        ..PrinterConfig::default()
    }
}

/// A Klipper printer `name` whose Moonraker is not running (a loopback port nobody listens
/// on): plain G-code goes to it and it stays offline.
pub fn offline_klipper_printer(name: &str) -> PrinterConfig {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    PrinterConfig {
        name: name.into(),
        kind: printgate::config::PrinterKind::Moonraker,
        model: Model::Klipper,
        host: "127.0.0.1".into(),
        instance_name: name.to_lowercase(),
        http_port: closed_port,
        ..PrinterConfig::default()
    }
}

pub fn config_for(dir: &std::path::Path, sims: &[SimPrinter]) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        web: WebConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..WebConfig::default()
        },
        link: fast_link(),
        dispatch: DispatchConfig {
            plate_clear_ttl_secs: 600,
            start_window_secs: 20,
            report_max_age_secs: 5,
            confirm_phase_a_secs: 8,
            confirm_phase_b_secs: 8,
        },
        printers: sims
            .iter()
            .enumerate()
            .map(|(i, s)| printer_config(&format!("printer {}", i + 1), s))
            .collect(),
        safety: Default::default(),
        alerts: Default::default(),
        metrics: Default::default(),
        broker: printgate::broker::config::BrokerConfig {
            mode: printgate::broker::config::BrokerMode::Off,
            ..Default::default()
        },
    }
}

impl TestGateway {
    pub async fn start(models: &[Model], time_scale: f64) -> TestGateway {
        let mut sims = Vec::new();
        for m in models {
            sims.push(start_sim(*m, time_scale).await);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config_for(dir.path(), &sims);
        Self::start_with(sims, dir, config).await
    }

    pub async fn start_with(
        sims: Vec<SimPrinter>,
        dir: tempfile::TempDir,
        config: Config,
    ) -> TestGateway {
        let shutdown = CancellationToken::new();
        let running = start(config, shutdown.clone())
            .await
            .expect("gateway starts");
        TestGateway {
            sims,
            running: Some(running),
            shutdown,
            dir,
        }
    }

    /// The gateway with no printers and its embedded broker on an ephemeral loopback port
    /// (mDNS and SSDP off), with one broker user; returns the broker's address.
    pub async fn start_broker(
        user: &str,
        password: &str,
        access: printgate::broker::config::Access,
    ) -> (TestGateway, SocketAddr) {
        use printgate::broker::config::{BrokerConfig, BrokerMode, BrokerUser};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = config_for(dir.path(), &[]);
        let mut broker = BrokerConfig {
            mode: BrokerMode::Embedded,
            listen: "127.0.0.1:0".parse().expect("address"),
            tls_listen: None,
            users: vec![BrokerUser {
                name: user.into(),
                password_hash: printgate::broker::auth::hash_password(password).expect("hash"),
                access,
            }],
            ..BrokerConfig::default()
        };
        broker.mdns.enabled = false;
        broker.ssdp.enabled = false;
        cfg.broker = broker;
        let tg = TestGateway::start_with(Vec::new(), dir, cfg).await;
        let mqtt = tg
            .running
            .as_ref()
            .and_then(|r| r.broker.as_ref())
            .and_then(|b| b.mqtt_addr)
            .expect("embedded broker listens");
        (tg, mqtt)
    }

    pub fn gw(&self) -> &Arc<printgate::Gateway> {
        &self.running.as_ref().expect("running").gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.running.as_ref().expect("running").web_addr,
            path
        )
    }

    /// Wait until every printer is online with a full report and the dispatcher has seen it.
    pub async fn wait_online(&self) {
        for p in &self.gw().printers {
            let mut rx = p.link.subscribe();
            tokio::time::timeout(
                WAIT,
                rx.wait_for(|s| s.link.is_online() && s.have_full_report),
            )
            .await
            .expect("printer online in time")
            .expect("link alive");
        }
        // The dispatcher must have seen it too: a tap before that is refused (state unknown).
        let names: Vec<String> = self.gw().printers.iter().map(|p| p.name.clone()).collect();
        let mut rx = self.gw().dispatcher.subscribe();
        tokio::time::timeout(
            WAIT,
            rx.wait_for(|s| {
                names.iter().all(|n| {
                    s.printers.get(n).is_some_and(|p| {
                        p.report
                            .as_ref()
                            .is_some_and(|r| r.link_online && r.have_full_report)
                    })
                })
            }),
        )
        .await
        .expect("dispatcher saw every printer in time")
        .expect("dispatcher running");
    }

    /// Store a fixture file for `model` and queue it for `printer` (or any compatible).
    pub async fn queue(&self, printer: Option<&str>, model: Model, key: &str) -> Job {
        let gw = self.gw();
        let bytes = build_3mf(&Fixture3mf {
            prediction_secs: 600,
            layers: 20,
            ..Fixture3mf::for_model(model)
        });
        let stored = gw
            .files
            .ingest(&format!("{key}.gcode.3mf"), std::io::Cursor::new(bytes))
            .await
            .expect("file stored");
        let (job, _) = gw
            .store
            .create_job(
                &NewJob {
                    idempotency_key: key.to_string(),
                    target: match printer {
                        Some(p) => Target::Printer(p.to_string()),
                        None => Target::AnyCompatible,
                    },
                    model_code: model.model_code().to_string(),
                    file_sha256: stored.sha256,
                    plate: 1,
                    name: key.to_string(),
                    deadline: None,
                    created_by: "test".into(),
                },
                gw.dispatcher.now(),
            )
            .expect("job created");
        gw.dispatcher
            .submit(Event::JobQueued(Box::new(job.clone())))
            .await
            .expect("dispatcher running");
        job
    }

    pub async fn tap(&self, printer: &str, tap_id: &str) -> Vec<String> {
        self.gw()
            .dispatcher
            .submit(Event::Tap {
                printer: printer.to_string(),
                user: "tester".into(),
                tap_id: tap_id.to_string(),
            })
            .await
            .expect("dispatcher running")
            .into_iter()
            .map(|n| n.message)
            .collect()
    }

    /// Wait (on dispatcher state changes) until the job is in `state`.
    pub async fn wait_job(&self, id: JobId, state: JobState) -> Job {
        let gw = self.gw();
        let mut rx = gw.dispatcher.subscribe();
        let wait = async {
            loop {
                if let Ok(Some(job)) = gw.store.job(id)
                    && job.state == state
                {
                    return job;
                }
                if rx.changed().await.is_err() {
                    panic!("dispatcher stopped");
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(job) => job,
            Err(_) => panic!(
                "job {id} did not reach {state:?}; it is {:?}",
                gw.store
                    .job(id)
                    .ok()
                    .flatten()
                    .map(|j| (j.state, j.message))
            ),
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        for s in std::mem::take(&mut self.sims) {
            s.shutdown().await;
        }
    }
}

/// The `project_file` commands a simulator received.
pub fn starts(sim: &SimPrinter) -> Vec<LoggedCommand> {
    sim.command_log()
        .into_iter()
        .filter(|c| c.is_project_file())
        .collect()
}

// ------------------------------------------------------------------------------------------
// Outage replay, kill -9 and benchmark helpers: the JSON API as a client sees it, dispatcher
// readiness, and an audit of every start the simulators received against the database.

use printgate::jobs::dispatcher::DispatchState;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// A 3MF sliced for `model` whose print takes `prediction_secs` simulated seconds.
pub fn fixture_bytes(model: Model, prediction_secs: u64) -> Vec<u8> {
    build_3mf(&Fixture3mf {
        prediction_secs,
        layers: 10,
        ..Fixture3mf::for_model(model)
    })
}

/// An API token of the gateway's demo account (`demo`), created in `store` if missing: what a
/// slicer or script sends in `X-Api-Key`.
pub fn demo_api_token(store: &printgate::store::Store) -> String {
    printgate::web::auth::ensure_demo_account(store).expect("demo account and token");
    printgate::web::auth::DEMO_API_TOKEN.to_string()
}

/// A client of the JSON API (`/api/v1/…`), optionally with an API token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    client: reqwest::Client,
}

/// Status code and JSON body of one API answer.
#[derive(Debug, Clone)]
pub struct ApiAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl ApiAnswer {
    /// The `notices` of a tap or job action, joined.
    pub fn notices(&self) -> String {
        self.body
            .get("notices")
            .and_then(|n| n.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" · ")
            })
            .unwrap_or_default()
    }
    /// A tap the dispatcher accepted (2xx and no "not accepted" notice).
    pub fn tap_accepted(&self) -> bool {
        (200..300).contains(&self.status) && !self.notices().contains("not accepted")
    }
    pub fn job_id(&self) -> Option<JobId> {
        self.body.get("id").and_then(|v| v.as_i64())
    }
}

fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Api {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Api {
        Api {
            base: format!("http://{addr}"),
            token,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    fn with_auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.header("X-Api-Key", t),
            None => rb,
        }
    }

    async fn answer(rb: reqwest::RequestBuilder) -> Result<ApiAnswer, reqwest::Error> {
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok(ApiAnswer { status, body })
    }

    /// `POST /api/v1/jobs` (multipart `file`, `printer`, `plate`; `Idempotency-Key` header).
    pub async fn upload(
        &self,
        file_name: &str,
        bytes: Vec<u8>,
        printer: Option<&str>,
        key: Option<&str>,
    ) -> Result<ApiAnswer, reqwest::Error> {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_string());
        let mut form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("plate", "1");
        if let Some(p) = printer {
            form = form.text("printer", p.to_string());
        }
        let mut rb = self
            .client
            .post(format!("{}/api/v1/jobs", self.base))
            .multipart(form);
        if let Some(k) = key {
            rb = rb.header("Idempotency-Key", k);
        }
        Self::answer(self.with_auth(rb)).await
    }

    /// `POST /api/v1/printers/{name}/plate-clear` with `{"tap_id": …}`.
    pub async fn tap(&self, printer: &str, tap_id: &str) -> Result<ApiAnswer, reqwest::Error> {
        let rb = self
            .client
            .post(format!(
                "{}/api/v1/printers/{}/plate-clear",
                self.base,
                path_segment(printer)
            ))
            .json(&serde_json::json!({ "tap_id": tap_id }));
        Self::answer(self.with_auth(rb)).await
    }

    /// `POST /api/v1/jobs/{id}/{action}` (`cancel`, `start-again`, `up`, `down`).
    pub async fn job_action(&self, id: JobId, action: &str) -> Result<ApiAnswer, reqwest::Error> {
        let rb = self
            .client
            .post(format!("{}/api/v1/jobs/{id}/{action}", self.base));
        Self::answer(self.with_auth(rb)).await
    }

    /// `GET /api/v1/jobs`: the queue and the jobs needing a person.
    pub async fn jobs(&self) -> Result<ApiAnswer, reqwest::Error> {
        let rb = self.client.get(format!("{}/api/v1/jobs", self.base));
        Self::answer(self.with_auth(rb)).await
    }

    /// `GET /api/v1/printers`.
    pub async fn printers(&self) -> Result<ApiAnswer, reqwest::Error> {
        let rb = self.client.get(format!("{}/api/v1/printers", self.base));
        Self::answer(self.with_auth(rb)).await
    }
}

/// The dispatcher can decide for `printer`: link online with a full report on the current
/// connection (what a tap needs to be accepted).
pub fn dispatch_ready(s: &DispatchState, printer: &str) -> bool {
    s.printers.get(printer).is_some_and(|p| {
        p.link_online
            && p.report.as_ref().is_some_and(|r| {
                r.link_online && r.have_full_report && p.epoch == Some(r.connection_epoch)
            })
    })
}

impl TestGateway {
    /// Wait (on dispatcher state changes) until the dispatcher can decide for every printer.
    pub async fn wait_dispatch_ready(&self) {
        let names: Vec<String> = self.gw().printers.iter().map(|p| p.name.clone()).collect();
        let mut rx = self.gw().dispatcher.subscribe();
        tokio::time::timeout(
            WAIT,
            rx.wait_for(|s| names.iter().all(|n| dispatch_ready(s, n))),
        )
        .await
        .expect("dispatcher sees every printer online in time")
        .expect("dispatcher running");
    }

    /// Wait until the job is in one of `states` (a fast print may pass `printing` between two
    /// looks, so callers list every acceptable state).
    pub async fn wait_job_in(&self, id: JobId, states: &[JobState]) -> Job {
        let gw = self.gw();
        let mut rx = gw.dispatcher.subscribe();
        let wait = async {
            loop {
                if let Ok(Some(job)) = gw.store.job(id)
                    && states.contains(&job.state)
                {
                    return job;
                }
                if rx.changed().await.is_err() {
                    panic!("dispatcher stopped");
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(job) => job,
            Err(_) => panic!(
                "job {id} did not reach {states:?}; it is {:?}",
                gw.store
                    .job(id)
                    .ok()
                    .flatten()
                    .map(|j| (j.state, j.message))
            ),
        }
    }

    /// A client of this gateway's JSON API, authenticated with the demo account's API token.
    pub fn api(&self) -> Api {
        let token = demo_api_token(&self.gw().store);
        Api::new(
            self.running.as_ref().expect("running").web_addr,
            Some(token),
        )
    }

    /// The SQLite file of this gateway.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join(printgate::DATABASE_FILE)
    }
}

/// One `project_file` a simulator received.
#[derive(Debug, Clone)]
pub struct DeliveredStart {
    pub printer: String,
    pub subtask_id: u32,
    /// Arrival, unix milliseconds.
    pub unix_ms: u64,
    pub at: std::time::Instant,
    /// Simulator connection it arrived on, and when that connection's first request arrived.
    pub conn_id: u64,
    pub conn_first_unix_ms: u64,
}

/// The `project_file` commands in one simulator's log, with their subtask ids.
pub fn delivered_starts(printer: &str, log: &[LoggedCommand]) -> Vec<DeliveredStart> {
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    for c in log {
        let e = first.entry(c.conn_id).or_insert(c.unix_ms);
        *e = (*e).min(c.unix_ms);
    }
    log.iter()
        .filter(|c| c.is_project_file())
        .map(|c| {
            let id = c
                .json
                .as_ref()
                .and_then(|j| j.pointer("/print/subtask_id"))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => s.parse().ok(),
                    serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                    _ => None,
                })
                .unwrap_or(0);
            DeliveredStart {
                printer: printer.to_string(),
                subtask_id: id,
                unix_ms: c.unix_ms,
                at: c.at,
                conn_id: c.conn_id,
                conn_first_unix_ms: first.get(&c.conn_id).copied().unwrap_or(c.unix_ms),
            }
        })
        .collect()
}

/// What the audit needs besides the database.
pub struct AuditRules {
    pub start_window_ms: u64,
    pub plate_clear_ttl_ms: u64,
    /// Allowed difference between the simulator's and the gateway's clocks (same machine).
    pub clock_tolerance_ms: u64,
    /// Subtask ids a job had before a "start again" (the database keeps only the current one).
    pub previous_subtask_ids: BTreeMap<u32, JobId>,
    /// Tap ids people made (test side); `None` = any tap recorded by a person.
    pub person_taps: Option<BTreeSet<String>>,
}

/// The outcome of [`audit_starts`]: which job and tap authorised each delivered start.
#[derive(Debug, Default)]
pub struct Audit {
    /// (printer, subtask id, job, tap id) per delivered start.
    pub authorised: Vec<(String, u32, JobId, String)>,
    pub violations: Vec<String>,
}

/// Check every delivered start against the database (opened read-only at `db`): no subtask id
/// twice; each maps to a job with a `starting` event (a consumed person's tap, I1) decided before
/// the start arrived, on the connection it arrived on, with the start inside its window (I3);
/// no tap authorises two starts.
pub fn audit_starts(db: &std::path::Path, starts: &[DeliveredStart], rules: &AuditRules) -> Audit {
    use rusqlite::{Connection, OpenFlags, OptionalExtension};
    let mut audit = Audit::default();
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the database read-only");
    let tol = rules.clock_tolerance_ms;
    let mut seen_subtasks: BTreeMap<u32, String> = BTreeMap::new();
    let mut used_attempts: BTreeSet<(JobId, u64)> = BTreeSet::new();
    let mut used_taps: BTreeMap<String, u32> = BTreeMap::new();
    for s in starts {
        let v = &mut audit.violations;
        if let Some(other) = seen_subtasks.insert(s.subtask_id, s.printer.clone()) {
            v.push(format!(
                "subtask {} started twice (on {other} and on {})",
                s.subtask_id, s.printer
            ));
        }
        let job: Option<JobId> = conn
            .query_row(
                "SELECT id FROM jobs WHERE subtask_id = ?1",
                [s.subtask_id],
                |r| r.get(0),
            )
            .optional()
            .expect("query jobs")
            .or_else(|| rules.previous_subtask_ids.get(&s.subtask_id).copied());
        let Some(job) = job else {
            v.push(format!(
                "{}: start of subtask {} belongs to no job",
                s.printer, s.subtask_id
            ));
            continue;
        };
        // The attempt that sent it: the last `starting` event of the job before it arrived.
        let mut stmt = conn
            .prepare(
                "SELECT at_ms, printer, outcome FROM job_events
                 WHERE job_id = ?1 AND what = 'starting' ORDER BY id",
            )
            .expect("prepare");
        let attempts: Vec<(i64, Option<String>, Option<String>)> = stmt
            .query_map([job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query events")
            .collect::<Result<_, _>>()
            .expect("rows");
        let attempt = attempts
            .iter()
            .rev()
            .find(|(at, ..)| (*at as u64) <= s.unix_ms.saturating_add(tol));
        let Some((decided_at, printer, outcome)) = attempt else {
            v.push(format!(
                "{}: subtask {} (job {job}) arrived with no consumed tap before it",
                s.printer, s.subtask_id
            ));
            continue;
        };
        let decided_at = *decided_at as u64;
        if printer.as_deref() != Some(s.printer.as_str()) {
            v.push(format!(
                "job {job} was decided for {printer:?} but arrived at {}",
                s.printer
            ));
        }
        if !used_attempts.insert((job, decided_at)) {
            v.push(format!(
                "{}: one start decision of job {job} delivered twice",
                s.printer
            ));
        }
        let tap_id = outcome
            .as_deref()
            .and_then(|o| o.strip_prefix("consumed plate-clear tap "))
            // A start with a tray mapping says so after the tap: "…tap <id>; filament: …".
            .map(|o| o.split_once("; filament: ").map_or(o, |(tap, _)| tap))
            .unwrap_or_default()
            .to_string();
        type TapRow = (String, String, i64, Option<JobId>);
        let tap: Option<TapRow> = conn
            .query_row(
                "SELECT printer, tapped_by, tapped_at_ms, consumed_by_job FROM plate_taps WHERE tap_id = ?1",
                [&tap_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .expect("query taps");
        match tap {
            None => v.push(format!("job {job}: tap {tap_id:?} is not recorded")),
            Some((tap_printer, by, tapped_at, consumer)) => {
                let tapped_at = tapped_at as u64;
                if tap_printer != s.printer {
                    v.push(format!(
                        "tap {tap_id} of {tap_printer} started a print on {}",
                        s.printer
                    ));
                }
                if consumer != Some(job) {
                    v.push(format!(
                        "tap {tap_id} is consumed by {consumer:?}, not by job {job}"
                    ));
                }
                if by == "gateway" || by == "dispatcher" {
                    v.push(format!("tap {tap_id} was not made by a person ({by})"));
                }
                if let Some(people) = &rules.person_taps
                    && !people.contains(&tap_id)
                {
                    v.push(format!("tap {tap_id} was never made by the test's people"));
                }
                if tapped_at > decided_at || decided_at >= tapped_at + rules.plate_clear_ttl_ms {
                    v.push(format!(
                        "tap {tap_id} (at {tapped_at}) did not vouch for the decision at {decided_at}"
                    ));
                }
                if let Some(prev) = used_taps.insert(tap_id.clone(), s.subtask_id) {
                    v.push(format!(
                        "tap {tap_id} authorised two starts (subtasks {prev} and {})",
                        s.subtask_id
                    ));
                }
            }
        }
        let deadline = decided_at + rules.start_window_ms;
        if s.unix_ms >= deadline + tol {
            v.push(format!(
                "{}: subtask {} arrived {} ms after its start window closed",
                s.printer,
                s.subtask_id,
                s.unix_ms - deadline
            ));
        }
        if decided_at + tol < s.conn_first_unix_ms {
            v.push(format!(
                "{}: subtask {} was decided at {decided_at} before the connection it arrived on \
                 existed (first request {}): a start requested before a reconnect was delivered after it",
                s.printer, s.subtask_id, s.conn_first_unix_ms
            ));
        }
        audit
            .authorised
            .push((s.printer.clone(), s.subtask_id, job, tap_id));
    }
    audit
}

// ---- Safety runtime helpers (safetyrt) ----

/// BCM pin of the simulated smoke input in tests.
pub const SMOKE_PIN: u8 = 17;

/// `[safety]` for tests: simulated GPIO, an active-low smoke input on [`SMOKE_PIN`] (20 ms
/// debounce) and one relay per printer on GPIO 5, 6, … (names as in [`config_for`]).
pub fn safety_config(printers: usize) -> printgate::safety::SafetyConfig {
    use printgate::safety::config::{
        GpioBackendChoice, InputPinConfig, RelayConfig, RelayFailSafe,
    };
    printgate::safety::SafetyConfig {
        gpio_backend: GpioBackendChoice::Simulated,
        smoke: Some(InputPinConfig {
            pin: SMOKE_PIN,
            pull: Default::default(),
            active_level: Default::default(),
            debounce_ms: 20,
        }),
        relays: (0..printers)
            .map(|i| RelayConfig {
                printer: format!("printer {}", i + 1),
                pin: 5 + u8::try_from(i).expect("few printers"),
                active_low: true,
                on_at_boot: true,
            })
            .collect(),
        relay_fail_safe: RelayFailSafe::PowerOffWhenGatewayDown,
        ..Default::default()
    }
}

impl TestGateway {
    pub fn safety(&self) -> &printgate::safety::runtime::SafetyHandle {
        self.gw().safety.as_ref().expect("safety running")
    }

    pub fn sim_gpio(&self) -> Arc<printgate::safety::sim_gpio::SimGpio> {
        self.safety().sim_gpio().expect("simulated GPIO")
    }

    /// Stop the gateway (not the simulators) and start a new one on the same data directory.
    pub async fn restart_with(&mut self, config: Config) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.shutdown = CancellationToken::new();
        self.running = Some(
            start(config, self.shutdown.clone())
                .await
                .expect("gateway restarts"),
        );
    }
}

/// Wait (bounded by [`WAIT`]) for the first safety update matching `pred`.
pub async fn wait_update(
    rx: &mut tokio::sync::broadcast::Receiver<printgate::safety::runtime::SafetyUpdate>,
    what: &str,
    mut pred: impl FnMut(&printgate::safety::runtime::SafetyUpdate) -> bool,
) -> printgate::safety::runtime::SafetyUpdate {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(u) if pred(&u) => return u,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    panic!("safety room stopped while waiting for {what}")
                }
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no safety update: {what}"))
}

/// Put a file on a simulator and start it from its "screen" (a print the gateway only watches).
pub fn start_screen_print(sim: &SimPrinter, name: &str, secs: u64) {
    let bytes = build_3mf(&Fixture3mf {
        prediction_secs: secs,
        layers: 20,
        ..Fixture3mf::for_model(sim.model())
    });
    let file = format!("{name}.gcode.3mf");
    sim.storage().put(&file, bytes).expect("file stored");
    sim.start_from_screen(&file, name);
}

/// `print.stop` commands a simulator received.
pub fn stops(sim: &SimPrinter) -> Vec<LoggedCommand> {
    sim.command_log()
        .into_iter()
        .filter(|c| c.section.as_deref() == Some("print") && c.command.as_deref() == Some("stop"))
        .collect()
}

/// Wait (bounded by [`WAIT`]) until a simulator has received `n` `print.stop` commands.
pub async fn wait_stops(sim: &SimPrinter, n: usize) {
    let mut rx = sim.subscribe_commands();
    let wait = async {
        while stops(sim).len() < n {
            match rx.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{} did not receive {n} stop command(s)", sim.name()));
}

// ------------------------------------------------------------------------------------------
// A browser without JavaScript: signed in with the login form, posting forms with the page's
// CSRF token, never following redirects (the notice is in the `Location`).

/// A signed-in browser session of the demo account.
pub struct Browser {
    pub base: String,
    pub cookie: String,
    pub csrf: String,
    pub http: reqwest::Client,
}

impl Browser {
    /// Sign `demo` in through `/login` at `addr` and read the CSRF token from the upload page.
    pub async fn sign_in(addr: SocketAddr, store: &printgate::store::Store) -> Browser {
        printgate::web::auth::ensure_demo_account(store).expect("demo account");
        let base = format!("http://{addr}");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let resp = http
            .post(format!("{base}/login"))
            .form(&[
                ("username", printgate::web::auth::DEMO_USER),
                ("password", printgate::web::auth::DEMO_PASSWORD),
                ("next", "/"),
            ])
            .send()
            .await
            .expect("login answers");
        let session = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(printgate::web::auth::SESSION_COOKIE))
            .and_then(|line| line.split(';').next())
            .expect("login sets the session cookie")
            .to_string();
        let html = http
            .get(format!("{base}/upload"))
            .header("cookie", &session)
            .send()
            .await
            .expect("upload page answers")
            .text()
            .await
            .expect("upload page text");
        let marker = "name=\"csrf\" value=\"";
        let at = html.find(marker).expect("the upload page has a csrf field") + marker.len();
        let csrf = html
            .get(at..)
            .and_then(|rest| rest.get(..rest.find('"')?))
            .expect("csrf value")
            .to_string();
        Browser {
            base,
            cookie: session,
            csrf,
            http,
        }
    }

    /// A request to `path` with the session cookie.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("accept", "text/html")
    }

    /// A multipart form that starts with the CSRF field (the guard reads it before any file).
    pub fn multipart(&self) -> reqwest::multipart::Form {
        reqwest::multipart::Form::new().text("csrf", self.csrf.clone())
    }

    /// A plain form post (CSRF field included); the answer is not followed.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut fields: Vec<(&str, &str)> = vec![("csrf", self.csrf.as_str())];
        fields.extend_from_slice(form);
        self.post(path).form(&fields).send().await.expect("answer")
    }
}

/// The notice a form answer redirects to (`/?notice=…`, decoded), or "" when there is none.
pub fn redirect_notice(resp: &reqwest::Response) -> String {
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some((_, query)) = location.split_once('?') else {
        return String::new();
    };
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "notice")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl TestGateway {
    /// A browser signed in to this gateway as the demo account.
    pub async fn browser(&self) -> Browser {
        Browser::sign_in(
            self.running.as_ref().expect("running").web_addr,
            &self.gw().store,
        )
        .await
    }
}

/// Fails the test with the command that installs it when Python's paho-mqtt is missing (the
/// second, independent MQTT client of the broker tests; `.ci/run` installs it).
pub fn require_paho() {
    let paho = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        paho,
        "python3 with paho-mqtt is not installed: run `bash .ci/run` or `pip install paho-mqtt`"
    );
}
