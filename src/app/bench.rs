//! `printgate bench safety`: the smoke edge → relay path measured inside a running gateway
//! (10 simulated printers reporting at 1 Hz, 20 HTTP clients polling the dashboard) over 10,000
//! edges, next to the safety room's own measurements (`crate::safety::bench`).

use crate::printer::Model;
use crate::safety::bench::{LatencySummary, SMOKE_PIN, bench_trip_call, bench_watchdog_observe};
use crate::safety::config::{InputPinConfig, Pull, RelayConfig, SafetyConfig};
use crate::safety::gpio::Gpio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Printers, HTTP pollers and edges of `printgate bench safety`.
const GATEWAY_PRINTERS: usize = 10;
const DASHBOARD_POLLERS: usize = 20;
const GATEWAY_EDGES: usize = 10_000;

/// Counts of the dashboard polls made during the measurement.
#[derive(Debug, Default)]
struct PollCounts {
    ok: std::sync::atomic::AtomicU64,
    other: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

/// One `GET /` over a fresh connection; returns the status code.
async fn poll_dashboard(addr: std::net::SocketAddr) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: bench\r\nX-Api-Key: {}\r\nConnection: close\r\n\r\n",
        crate::web::auth::DEMO_API_TOKEN
    );
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(buf.get(..12).unwrap_or(&buf)).into_owned();
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Smoke edge → relays written, measured in the running gateway: `n` edges on the simulated
/// GPIO (0 ms debounce) through the real input thread, trip path and follow-up, while
/// [`GATEWAY_PRINTERS`] simulated printers report at 1 Hz and [`DASHBOARD_POLLERS`] HTTP clients
/// poll the dashboard. The latency is from `set_input` to the last relay's off write recorded by
/// the backend. Prints a description and returns the summary.
async fn bench_gateway_edges(n: usize) -> anyhow::Result<LatencySummary> {
    use crate::config::{Config, PrinterConfig, TlsMode, WebConfig};
    use crate::safety::config::{ActiveLevel, GpioBackendChoice, RelayFailSafe};
    use crate::sim::{SimConfig, SimPrinter};
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir()?;
    let mut sims = Vec::new();
    for i in 0..GATEWAY_PRINTERS {
        let model = [Model::P1S, Model::X1C, Model::A1Mini][i % 3];
        let mut cfg = SimConfig::new(model);
        cfg.name = format!("bench {}", i + 1);
        cfg.report_interval = Duration::from_secs(1);
        sims.push(SimPrinter::start(cfg).await?);
    }
    let printers: Vec<PrinterConfig> = sims
        .iter()
        .enumerate()
        .map(|(i, s)| PrinterConfig {
            name: format!("printer {}", i + 1),
            model: s.model(),
            serial: s.serial().to_string(),
            host: s.host(),
            access_code: s.access_code(),
            tls: TlsMode::Pin,
            mqtt_port: s.mqtt_port(),
            ftps_port: s.ftps_port(),
            ..PrinterConfig::default()
        })
        .collect();
    let relays: Vec<RelayConfig> = printers
        .iter()
        .enumerate()
        .map(|(i, p)| RelayConfig {
            printer: p.name.clone(),
            pin: 5 + u8::try_from(i).unwrap_or(0),
            active_low: true,
            on_at_boot: true,
        })
        .collect();
    let relay_pins: Vec<u8> = relays.iter().map(|r| r.pin).collect();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        web: WebConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..WebConfig::default()
        },
        link: Default::default(),
        dispatch: Default::default(),
        printers,
        safety: SafetyConfig {
            gpio_backend: GpioBackendChoice::Simulated,
            smoke: Some(InputPinConfig {
                pin: SMOKE_PIN,
                pull: Pull::Up,
                active_level: ActiveLevel::Low,
                debounce_ms: 0,
            }),
            relays,
            relay_fail_safe: RelayFailSafe::PowerOffWhenGatewayDown,
            ..SafetyConfig::default()
        },
        alerts: Default::default(),
        metrics: Default::default(),
        broker: crate::broker::config::BrokerConfig {
            mode: crate::broker::config::BrokerMode::Off,
            ..Default::default()
        },
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = crate::app::start(config, shutdown.clone()).await?;
    let gw = running.gateway.clone();
    // The pollers sign in with the demo account's API token (this is a throwaway gateway).
    crate::web::auth::ensure_demo_account(&gw.store)?;
    for p in &gw.printers {
        let mut rx = p.link.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.link.is_online()))
            .await
            .map_err(|_| anyhow::anyhow!("printer {} did not come online in 30 s", p.name))??;
    }
    let safety = gw
        .safety
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the gateway has no safety room"))?;
    let sim = safety
        .sim_gpio()
        .ok_or_else(|| anyhow::anyhow!("the bench needs the simulated GPIO"))?;

    let counts = Arc::new(PollCounts::default());
    let stop_polling = tokio_util::sync::CancellationToken::new();
    let mut pollers = tokio::task::JoinSet::new();
    for _ in 0..DASHBOARD_POLLERS {
        let counts = counts.clone();
        let stop = stop_polling.clone();
        let addr = running.web_addr;
        pollers.spawn(async move {
            while !stop.is_cancelled() {
                match poll_dashboard(addr).await {
                    Ok(200) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => counts.other.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }

    let measure = tokio::task::spawn_blocking(move || -> Result<Vec<Duration>, String> {
        let mut samples = Vec::with_capacity(n);
        let deadline = |what: &str| format!("no {what} within 2 s");
        let poll = Duration::from_micros(20);
        for _ in 0..n {
            sim.clear_history();
            let t0 = Instant::now();
            sim.set_input_asserted(SMOKE_PIN, true)
                .map_err(|e| e.to_string())?;
            let until = t0 + Duration::from_secs(2);
            let last_write = loop {
                let h = sim.output_history();
                let offs: Vec<Instant> = relay_pins
                    .iter()
                    .filter_map(|pin| {
                        h.iter()
                            .find(|w| w.pin == *pin && !w.on && w.at >= t0)
                            .map(|w| w.at)
                    })
                    .collect();
                if offs.len() == relay_pins.len() {
                    break offs.into_iter().max().unwrap_or(t0);
                }
                if Instant::now() > until {
                    return Err(deadline("relay writes"));
                }
                std::thread::sleep(poll);
            };
            samples.push(last_write.saturating_duration_since(t0));
            sim.set_input_asserted(SMOKE_PIN, false)
                .map_err(|e| e.to_string())?;
            let until = Instant::now() + Duration::from_secs(2);
            while sim.input_asserted(SMOKE_PIN).map_err(|e| e.to_string())? {
                if Instant::now() > until {
                    return Err(deadline("release"));
                }
                std::thread::sleep(poll);
            }
        }
        Ok(samples)
    });
    let samples = measure.await?.map_err(|e| anyhow::anyhow!(e))?;
    stop_polling.cancel();
    while pollers.join_next().await.is_some() {}
    let trips = gw
        .store
        .trip_history(usize::MAX)
        .map(|t| t.len())
        .unwrap_or(0);
    println!(
        "load: {GATEWAY_PRINTERS} simulated printers reporting at 1 Hz, {DASHBOARD_POLLERS} HTTP clients polling the dashboard (GET /, standing in for SSE clients, which do not exist yet): {} polls answered 200, {} other status, {} failed",
        counts.ok.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "edges: {n} smoke edges on the simulated GPIO (0 ms debounce; a wired input adds its debounce), latency to the last of {} relay writes; {trips} trips recorded by the follow-up meanwhile",
        GATEWAY_PRINTERS
    );
    running.shutdown().await;
    for s in sims {
        s.shutdown().await;
    }
    let mut samples = samples;
    Ok(LatencySummary::from_samples(&mut samples))
}

/// `printgate bench safety`: the gateway-level smoke → relay latency under load, the bare
/// `trip()` call and the watchdog's cost per report. The last line reads
/// `smoke->relay p50 <n> us, p99 <n> us, max <n> us`. Returns the exit code.
pub fn bench_safety_cli() -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match bench_trip_call(10_000) {
        Ok(s) => println!("trip() call -> relay written: {s}"),
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    }
    let ns = bench_watchdog_observe(3_000_000);
    println!("thermal watchdog: {ns:.0} ns per report (ThermalWatchdog::observe)");
    match runtime.block_on(bench_gateway_edges(GATEWAY_EDGES)) {
        Ok(s) => {
            println!(
                "smoke->relay p50 {} us, p99 {} us, max {} us",
                s.p50.as_micros(),
                s.p99.as_micros(),
                s.max.as_micros()
            );
            0
        }
        Err(e) => {
            eprintln!("error: safety bench failed: {e:#}");
            1
        }
    }
}
