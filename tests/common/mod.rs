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
        alerts: Default::default(),
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
