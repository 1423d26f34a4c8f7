//! The input thread shared by both GPIO backends: raw edges (from rppal's interrupt thread or from
//! `SimGpio::set_input`) go through the pure [`Debouncer`] and every accepted change calls the
//! input's callback on this thread. As a safety net against a lost interrupt the thread also
//! samples the pin's real level every `resample` period and treats a difference as an edge.

use crate::safety::debounce::{Debouncer, Level};
use crate::safety::gpio::{GpioError, InputCallback, InputConfig, InputEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A raw (undebounced) level change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEdge {
    pub level: Level,
    pub at: Instant,
}

/// Reads the pin's current electrical level.
pub(crate) type Sampler = Box<dyn Fn() -> Level + Send>;

/// Handle kept by the backend: feeds edges, reads the debounced state. Dropping every sender
/// stops the thread.
pub(crate) struct InputWorker {
    pub edges: mpsc::Sender<RawEdge>,
    pub asserted: Arc<AtomicBool>,
}

/// How often the pin level is re-read to catch a lost interrupt.
pub(crate) const RESAMPLE_EVERY: Duration = Duration::from_millis(1000);

pub(crate) fn spawn(
    cfg: &InputConfig,
    initial: Level,
    sampler: Option<Sampler>,
    callback: InputCallback,
) -> Result<InputWorker, GpioError> {
    let (tx, rx) = mpsc::channel::<RawEdge>();
    let asserted = Arc::new(AtomicBool::new(false));
    let shared = asserted.clone();
    let cfg = cfg.clone();
    let base = Instant::now();
    let period_us = u64::try_from(cfg.debounce.as_micros()).unwrap_or(u64::MAX);
    // Start from "released" so that an input already asserted at start-up is reported.
    let mut deb = Debouncer::new(cfg.asserted_level().inverted(), period_us);
    let us = move |t: Instant| -> u64 {
        u64::try_from(t.saturating_duration_since(base).as_micros()).unwrap_or(u64::MAX)
    };
    let pin = cfg.pin;
    std::thread::Builder::new()
        .name(format!("gpio-in-{pin}"))
        .spawn(move || {
            let fire = |level: Level| {
                let is_asserted = cfg.is_asserted(level);
                shared.store(is_asserted, Ordering::SeqCst);
                callback(InputEvent {
                    pin,
                    level,
                    asserted: is_asserted,
                    at: Instant::now(),
                });
            };
            if let Some(level) = deb.edge(initial, us(base)) {
                fire(level);
            }
            let mut next_sample = Instant::now() + RESAMPLE_EVERY;
            loop {
                let now = Instant::now();
                let mut wake = next_sample;
                if let Some(d) = deb.deadline() {
                    wake = wake.min(base + Duration::from_micros(d));
                }
                match rx.recv_timeout(wake.saturating_duration_since(now)) {
                    Ok(edge) => {
                        if let Some(level) = deb.edge(edge.level, us(edge.at)) {
                            fire(level);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                let now = Instant::now();
                if now >= next_sample {
                    next_sample = now + RESAMPLE_EVERY;
                    if let Some(sample) = &sampler {
                        let level = sample();
                        if let Some(accepted) = deb.edge(level, us(now)) {
                            fire(accepted);
                        }
                    }
                }
                if let Some(level) = deb.poll(us(now)) {
                    fire(level);
                }
            }
        })
        .map_err(|e| GpioError::Io {
            what: format!("GPIO {pin} input thread"),
            detail: e.to_string(),
        })?;
    Ok(InputWorker {
        edges: tx,
        asserted,
    })
}
