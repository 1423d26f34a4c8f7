//! Latency and cost measurements for `printgate bench safety` and `benches/safety.rs`: input edge
//! to relay written through the real input thread, debouncer, callback and trip path on the
//! simulated GPIO, the bare `trip()` call, and the watchdog's cost per report. The same path
//! inside a running gateway is measured by `crate::app::bench`.

use crate::printer::GcodeState;
use crate::printer::Model;
use crate::safety::config::{InputPinConfig, Pull, RelayConfig, SafetyConfig, WatchdogConfig};
use crate::safety::gpio::{Gpio, GpioError, InputConfig};
use crate::safety::latch::{BootState, InputKind, SafetyCause, TripController};
use crate::safety::sim_gpio::SimGpio;
use crate::safety::watchdog::{ThermalSample, ThermalWatchdog};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LatencySummary {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl LatencySummary {
    /// Summarise samples (sorted in place). Empty input gives all zeros.
    pub fn from_samples(samples: &mut [Duration]) -> LatencySummary {
        samples.sort_unstable();
        let pick = |q: f64| -> Duration {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let i = ((samples.len() - 1) as f64 * q).round() as usize;
            samples.get(i).copied().unwrap_or(Duration::ZERO)
        };
        LatencySummary {
            n: samples.len(),
            min: pick(0.0),
            p50: pick(0.5),
            p99: pick(0.99),
            max: pick(1.0),
        }
    }
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} min={:?} p50={:?} p99={:?} max={:?}",
            self.n, self.min, self.p50, self.p99, self.max
        )
    }
}

pub(crate) const SMOKE_PIN: u8 = 17;
const RELAY_PIN: u8 = 18;

fn bench_controller(sim: &SimGpio) -> Result<TripController, GpioError> {
    let cfg = SafetyConfig {
        relays: vec![RelayConfig {
            printer: "bench".into(),
            pin: RELAY_PIN,
            active_low: true,
            on_at_boot: true,
        }],
        ..SafetyConfig::default()
    };
    TripController::new(sim, &cfg, &["bench".to_string()], &BootState::default())
}

/// `n` smoke edges on the simulated GPIO with a 0 ms debounce: time from `set_input` to the relay
/// write recorded by the backend (input thread hop + debouncer + callback + `trip`). A real
/// input adds its debounce period on top.
pub fn bench_edge_to_relay(n: usize) -> Result<LatencySummary, GpioError> {
    let sim = SimGpio::new();
    let controller = Arc::new(bench_controller(&sim)?);
    let (tx, rx) = mpsc::channel::<bool>();
    let c = controller.clone();
    sim.configure_input(
        &InputConfig::from_pin_config(
            &InputPinConfig {
                pin: SMOKE_PIN,
                pull: Pull::Up,
                active_level: crate::safety::config::ActiveLevel::Low,
                debounce_ms: 0,
            },
            "smoke input",
        ),
        Box::new(move |ev| {
            let _ = c.on_input(InputKind::Smoke, ev.asserted);
            let _ = tx.send(ev.asserted);
        }),
    )?;
    let timeout = |what: &str| GpioError::Io {
        what: "bench".into(),
        detail: format!("no {what} callback within 2 s"),
    };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        sim.clear_history();
        let t0 = Instant::now();
        sim.set_input_asserted(SMOKE_PIN, true)?;
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(true) => {}
            _ => return Err(timeout("assert")),
        }
        let written = sim
            .output_history()
            .into_iter()
            .find(|w| w.pin == RELAY_PIN && !w.on)
            .ok_or_else(|| timeout("relay write"))?;
        samples.push(written.at.saturating_duration_since(t0));
        sim.set_input_asserted(SMOKE_PIN, false)?;
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(false) => {}
            _ => return Err(timeout("release")),
        }
    }
    Ok(LatencySummary::from_samples(&mut samples))
}

/// `n` direct `trip()` calls: from the call to the relay write recorded by the backend.
pub fn bench_trip_call(n: usize) -> Result<LatencySummary, GpioError> {
    let sim = SimGpio::new();
    let controller = bench_controller(&sim)?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        sim.clear_history();
        let t0 = Instant::now();
        let _record = controller.trip(SafetyCause::Smoke, Vec::new());
        if let Some(w) = sim.output_history().first() {
            samples.push(w.at.saturating_duration_since(t0));
        }
    }
    Ok(LatencySummary::from_samples(&mut samples))
}

/// Mean cost of one `ThermalWatchdog::observe` over `n` reports of a normal print on 3 printers
/// (nanoseconds per report).
pub fn bench_watchdog_observe(n: usize) -> f64 {
    let mut wd = ThermalWatchdog::new(WatchdogConfig::default());
    let names = ["x1c", "p1s", "a1mini"];
    let models = [Model::X1C, Model::P1S, Model::A1Mini];
    let mut nozzle = [25.0f64; 3];
    let mut bed = [25.0f64; 3];
    let start = Instant::now();
    let mut verdicts = 0usize;
    for i in 0..n {
        let p = i % 3;
        let now_ms = (i / 3) as u64 * 1000;
        nozzle[p] += (220.0 - nozzle[p]) * 0.05;
        bed[p] += (60.0 - bed[p]) * 0.01;
        let s = ThermalSample {
            now_ms,
            nozzle: Some(nozzle[p]),
            nozzle_target: Some(220.0),
            bed: Some(bed[p]),
            bed_target: Some(60.0),
            gcode_state: GcodeState::Running,
        };
        if wd.observe(names[p], models[p], &s).is_some() {
            verdicts += 1;
        }
    }
    let elapsed = start.elapsed();
    std::hint::black_box(verdicts);
    elapsed.as_nanos() as f64 / n.max(1) as f64
}
