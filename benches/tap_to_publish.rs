//! Tap → start latency of the real gateway: from `Dispatcher::submit(Event::Tap)` to the moment
//! the simulated printer logged the `project_file` command (real TLS MQTT on loopback), with the
//! job's file already staged, the printer idle and its last full report fresh — what a person
//! waits for after tapping "plate clear". Prints p50/p90/p99/max over `TAPS` taps (default
//! 1,000; `PRINTGATE_BENCH_TAPS` overrides). Targets: p99 ≤ 200 ms, aim ≤ 20 ms.
//!
//! Several simulated X1C printers are used in turn so that one cools down (the simulator raises
//! an over-temperature health message until it has, which blocks starts) while the next is
//! measured. Run with `cargo bench --bench tap_to_publish`.

use printgate::config::{
    Config, DispatchConfig, LinkConfig, Model, PrinterConfig, TlsMode, WebConfig,
};
use printgate::jobs::dispatcher::{DispatchState, Event};
use printgate::jobs::model::{JobId, JobState, NewJob, Target};
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::sim::{SimConfig, SimPrinter};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PRINTERS: usize = 4;
/// Fast enough that a print ends (and the printer cools) within a round over the printers,
/// slow enough that prepare and running each last a simulator tick so the gateway confirms.
const TIME_SCALE: f64 = 400.0;
const WAIT: Duration = Duration::from_secs(30);

fn printer_name(i: usize) -> String {
    format!("printer {}", i + 1)
}

fn config(dir: &std::path::Path, sims: &[SimPrinter]) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        web: WebConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..WebConfig::default()
        },
        link: LinkConfig {
            keepalive_secs: 30,
            silence_secs: 60,
            silence_reconnect_secs: 30,
            backoff_min_ms: 50,
            backoff_max_ms: 500,
            auth_backoff_secs: 2,
            pushall_min_interval_ms: 200,
        },
        dispatch: DispatchConfig {
            plate_clear_ttl_secs: 600,
            start_window_secs: 60,
            report_max_age_secs: 10,
            confirm_phase_a_secs: 30,
            confirm_phase_b_secs: 30,
        },
        printers: sims
            .iter()
            .enumerate()
            .map(|(i, s)| PrinterConfig {
                name: printer_name(i),
                model: s.model(),
                serial: s.serial().to_string(),
                host: s.host(),
                access_code: s.access_code(),
                tls: TlsMode::Pin,
                mqtt_port: s.mqtt_port(),
                ftps_port: s.ftps_port(),
                ..PrinterConfig::default()
            })
            .collect(),
        safety: Default::default(),
        alerts: Default::default(),
        metrics: Default::default(),
        // Measured without the MQTT broker (nothing of it is on the tap → start path).
        broker: printgate::broker::config::BrokerConfig {
            mode: printgate::broker::config::BrokerMode::Off,
            ..Default::default()
        },
    }
}

/// The printer may be started at once: online, full report younger than half the allowed age
/// (no pushall needed), idle, no error or blocking health message; its job staged.
fn ready(s: &DispatchState, printer: &str, job: JobId, now: u64) -> bool {
    let staged = s
        .jobs
        .get(&job)
        .is_some_and(|j| j.state == JobState::Staged);
    let printer_ok = s.printers.get(printer).is_some_and(|p| {
        p.link_online
            && p.report.as_ref().is_some_and(|r| {
                r.link_online
                    && r.have_full_report
                    && r.full_report_at
                        .is_some_and(|at| now.saturating_sub(at) < s.timings.report_max_age_ms / 2)
                    && r.gcode_state.is_startable()
                    && r.print_error == 0
                    && !r.blocking_hms
                    && !r.verification_failed
            })
    });
    staged && printer_ok
}

async fn queue_job(gw: &printgate::Gateway, printer: usize, n: usize, file: &[u8]) -> JobId {
    let stored = gw
        .files
        .ingest("bench.gcode.3mf", std::io::Cursor::new(file.to_vec()))
        .await
        .expect("file stored");
    let (job, _) = gw
        .store
        .create_job(
            &NewJob {
                idempotency_key: format!("bench-{printer}-{n}"),
                target: Target::Printer(printer_name(printer)),
                model_code: Model::X1C.model_code().to_string(),
                file_sha256: stored.sha256,
                plate: 1,
                name: format!("bench {n}"),
                deadline: None,
                created_by: "bench".into(),
            },
            gw.dispatcher.now(),
        )
        .expect("job created");
    gw.dispatcher
        .submit(Event::JobQueued(Box::new(job.clone())))
        .await
        .expect("dispatcher running");
    job.id
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn report(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap_or(1);
    println!(
        "{label}: n={} p50={} p90={} p99={} max={} mean={}",
        v.len(),
        ms(percentile(&v, 0.50)),
        ms(percentile(&v, 0.90)),
        ms(percentile(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
        ms(mean),
    );
}

async fn run(taps: usize) {
    let mut sims = Vec::new();
    for i in 0..PRINTERS {
        let mut cfg = SimConfig::new(Model::X1C);
        cfg.name = format!("bench X1C {i}");
        cfg.time_scale = TIME_SCALE;
        cfg.report_interval = Duration::from_millis(25);
        sims.push(SimPrinter::start(cfg).await.expect("simulator starts"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let running = printgate::start(config(dir.path(), &sims), shutdown.clone())
        .await
        .expect("gateway starts");
    let gw: Arc<printgate::Gateway> = running.gateway.clone();
    let file = build_3mf(&Fixture3mf {
        prediction_secs: 10,
        layers: 5,
        ..Fixture3mf::for_model(Model::X1C)
    });
    let mut jobs: Vec<JobId> = Vec::new();
    for p in 0..PRINTERS {
        jobs.push(queue_job(&gw, p, 0, &file).await);
    }
    let mut view = gw.dispatcher.subscribe();
    let mut to_log = Vec::with_capacity(taps);
    let mut to_return = Vec::with_capacity(taps);
    let started = Instant::now();
    for n in 0..taps {
        let p = n % PRINTERS;
        let name = printer_name(p);
        let job = jobs[p];
        let clock = gw.dispatcher.clone();
        tokio::time::timeout(WAIT, view.wait_for(|s| ready(s, &name, job, clock.now())))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "tap {n}: {name} not ready: {:?}",
                    gw.store
                        .job(job)
                        .ok()
                        .flatten()
                        .map(|j| (j.state, j.message))
                )
            })
            .expect("dispatcher running");
        let mut commands = sims[p].subscribe_commands();
        let t0 = Instant::now();
        let notices = gw
            .dispatcher
            .submit(Event::Tap {
                printer: name.clone(),
                user: "bench".into(),
                tap_id: format!("bench-tap-{n}"),
            })
            .await
            .expect("dispatcher running");
        let returned = t0.elapsed();
        let logged = tokio::time::timeout(WAIT, async {
            loop {
                match commands.recv().await {
                    Ok(c) if c.is_project_file() => return c.at,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("simulator stopped: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("tap {n} on {name} started nothing: {notices:?}"));
        to_log.push(logged.saturating_duration_since(t0));
        to_return.push(returned);
        // The next job for this printer; it is staged once the current print has ended.
        jobs[p] = queue_job(&gw, p, n + 1, &file).await;
    }
    let elapsed = started.elapsed();
    println!(
        "tap_to_publish: {taps} taps over {PRINTERS} simulated X1C printers in {:.1} s",
        elapsed.as_secs_f64()
    );
    report("tap -> project_file logged by the printer", to_log.clone());
    report(
        "tap -> submit() returned (decided, committed, handed to the link)",
        to_return,
    );
    let mut sorted = to_log;
    sorted.sort();
    let p99 = percentile(&sorted, 0.99);
    println!(
        "target p99 <= 200 ms: {}; aim <= 20 ms: {}",
        if p99 <= Duration::from_millis(200) {
            "met"
        } else {
            "MISSED"
        },
        if p99 <= Duration::from_millis(20) {
            "met"
        } else {
            "missed"
        },
    );
    running.shutdown().await;
    for s in sims {
        s.shutdown().await;
    }
}

fn main() {
    let taps = std::env::var("PRINTGATE_BENCH_TAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(taps));
}
