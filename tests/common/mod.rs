//! Shared harness for integration tests: simulated printers on loopback and the real gateway
//! (`printgate::start`) pointed at them, with a temporary data directory and short timings.
#![allow(dead_code)]

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

    /// Wait until every printer is online with a full report (the dispatcher can decide).
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
                if let Ok(Some(job)) = gw.store.job(id) {
                    if job.state == state {
                        return job;
                    }
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
