//! Simulated GPIO for `demo`, development off a Pi and tests. Inputs are driven by
//! [`SimGpio::set_input`] (tests, the demo UI, `printgate gpio`) and go through the same input
//! thread and debouncer as the rppal backend. Outputs keep their state, readable with
//! [`SimGpio::output_state`], and every write is recorded with its `Instant` so tests can check
//! that a relay was switched off before something else happened.

use crate::safety::gpio::{
    Gpio, GpioError, GpioKind, InputCallback, InputConfig, Level, OutputConfig, OutputPin,
};
use crate::safety::input_worker::{self, InputWorker, RawEdge};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

/// One recorded output write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputWrite {
    pub pin: u8,
    /// Logical state written.
    pub on: bool,
    /// Electrical level that results (after `active_low`).
    pub level: Level,
    pub at: Instant,
}

/// Writes kept in the history (oldest dropped first).
pub const HISTORY_CAPACITY: usize = 65_536;

struct SimInput {
    cfg: InputConfig,
    level: Arc<AtomicU8>,
    worker: InputWorker,
}

struct SimOutputShared {
    cfg: OutputConfig,
    on: AtomicBool,
}

#[derive(Default)]
struct SimInner {
    inputs: Mutex<HashMap<u8, SimInput>>,
    outputs: Mutex<HashMap<u8, Arc<SimOutputShared>>>,
    history: Mutex<VecDeque<OutputWrite>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn level_to_u8(l: Level) -> u8 {
    u8::from(l.is_high())
}

/// The simulated backend. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct SimGpio {
    inner: Arc<SimInner>,
}

impl SimGpio {
    pub fn new() -> SimGpio {
        let inner = SimInner::default();
        lock(&inner.history).reserve(4096);
        SimGpio {
            inner: Arc::new(inner),
        }
    }

    /// Drive a configured input to an electrical level (as the wire would).
    pub fn set_input(&self, pin: u8, level: Level) -> Result<(), GpioError> {
        let inputs = lock(&self.inner.inputs);
        let input = inputs.get(&pin).ok_or(GpioError::NotAnInput { pin })?;
        input.level.store(level_to_u8(level), Ordering::SeqCst);
        // The worker only stops when this backend is dropped, so a send cannot fail while we
        // hold `inputs`; ignoring the result is therefore safe.
        let _ = input.worker.edges.send(RawEdge {
            level,
            at: Instant::now(),
        });
        Ok(())
    }

    /// Drive a configured input to its asserted (`true`) or released level.
    pub fn set_input_asserted(&self, pin: u8, asserted: bool) -> Result<(), GpioError> {
        let level = {
            let inputs = lock(&self.inner.inputs);
            let input = inputs.get(&pin).ok_or(GpioError::NotAnInput { pin })?;
            let on = input.cfg.asserted_level();
            if asserted { on } else { on.inverted() }
        };
        self.set_input(pin, level)
    }

    /// The raw (undebounced) level currently applied to an input.
    pub fn input_level(&self, pin: u8) -> Option<Level> {
        lock(&self.inner.inputs)
            .get(&pin)
            .map(|i| Level::from_high(i.level.load(Ordering::SeqCst) != 0))
    }

    /// Configured input pins with their labels.
    pub fn inputs(&self) -> Vec<(u8, String)> {
        let mut v: Vec<(u8, String)> = lock(&self.inner.inputs)
            .iter()
            .map(|(p, i)| (*p, i.cfg.label.clone()))
            .collect();
        v.sort();
        v
    }

    /// Logical state (on = relay closed) of a configured output.
    pub fn output_state(&self, pin: u8) -> Option<bool> {
        lock(&self.inner.outputs)
            .get(&pin)
            .map(|o| o.on.load(Ordering::SeqCst))
    }

    /// Electrical level of a configured output.
    pub fn output_level(&self, pin: u8) -> Option<Level> {
        lock(&self.inner.outputs)
            .get(&pin)
            .map(|o| o.cfg.level_for(o.on.load(Ordering::SeqCst)))
    }

    /// Every output write so far (up to [`HISTORY_CAPACITY`]), oldest first.
    pub fn output_history(&self) -> Vec<OutputWrite> {
        lock(&self.inner.history).iter().copied().collect()
    }

    pub fn clear_history(&self) {
        lock(&self.inner.history).clear();
    }
}

impl Gpio for SimGpio {
    fn kind(&self) -> GpioKind {
        GpioKind::Simulated
    }

    fn configure_input(
        &self,
        cfg: &InputConfig,
        on_change: InputCallback,
    ) -> Result<(), GpioError> {
        let mut inputs = lock(&self.inner.inputs);
        if inputs.contains_key(&cfg.pin) || lock(&self.inner.outputs).contains_key(&cfg.pin) {
            return Err(GpioError::PinBusy {
                pin: cfg.pin,
                label: cfg.label.clone(),
            });
        }
        if cfg.pin > crate::safety::config::MAX_BCM_PIN {
            return Err(GpioError::PinInvalid {
                pin: cfg.pin,
                label: cfg.label.clone(),
            });
        }
        // An unconnected input rests at its pull level; without a pull we assume "released".
        let rest = match cfg.pull {
            crate::safety::config::Pull::Up => Level::High,
            crate::safety::config::Pull::Down => Level::Low,
            crate::safety::config::Pull::None => cfg.asserted_level().inverted(),
        };
        let level = Arc::new(AtomicU8::new(level_to_u8(rest)));
        let sampled = level.clone();
        let worker = input_worker::spawn(
            cfg,
            rest,
            Some(Box::new(move || {
                Level::from_high(sampled.load(Ordering::SeqCst) != 0)
            })),
            on_change,
        )?;
        inputs.insert(
            cfg.pin,
            SimInput {
                cfg: cfg.clone(),
                level,
                worker,
            },
        );
        Ok(())
    }

    fn input_asserted(&self, pin: u8) -> Result<bool, GpioError> {
        lock(&self.inner.inputs)
            .get(&pin)
            .map(|i| i.worker.asserted.load(Ordering::SeqCst))
            .ok_or(GpioError::NotAnInput { pin })
    }

    fn configure_output(&self, cfg: &OutputConfig) -> Result<Arc<dyn OutputPin>, GpioError> {
        let mut outputs = lock(&self.inner.outputs);
        if outputs.contains_key(&cfg.pin) || lock(&self.inner.inputs).contains_key(&cfg.pin) {
            return Err(GpioError::PinBusy {
                pin: cfg.pin,
                label: cfg.label.clone(),
            });
        }
        if cfg.pin > crate::safety::config::MAX_BCM_PIN {
            return Err(GpioError::PinInvalid {
                pin: cfg.pin,
                label: cfg.label.clone(),
            });
        }
        let shared = Arc::new(SimOutputShared {
            cfg: cfg.clone(),
            on: AtomicBool::new(cfg.initial_on),
        });
        outputs.insert(cfg.pin, shared.clone());
        // Weak: an input callback may own this output while the backend owns the input thread's
        // sender; a strong reference here would keep both alive forever.
        let out = SimOutput {
            shared,
            inner: Arc::downgrade(&self.inner),
        };
        out.set(cfg.initial_on);
        Ok(Arc::new(out))
    }
}

struct SimOutput {
    shared: Arc<SimOutputShared>,
    inner: Weak<SimInner>,
}

impl OutputPin for SimOutput {
    fn pin(&self) -> u8 {
        self.shared.cfg.pin
    }
    fn set(&self, on: bool) {
        let Some(inner) = self.inner.upgrade() else {
            // The backend is gone: keep the state, there is no history to record into.
            self.shared.on.store(on, Ordering::SeqCst);
            return;
        };
        // State and history under one lock so the history order is the write order.
        let mut h = lock(&inner.history);
        self.shared.on.store(on, Ordering::SeqCst);
        if h.len() >= HISTORY_CAPACITY {
            h.pop_front();
        }
        h.push_back(OutputWrite {
            pin: self.shared.cfg.pin,
            on,
            level: self.shared.cfg.level_for(on),
            at: Instant::now(),
        });
    }
    fn is_on(&self) -> bool {
        self.shared.on.load(Ordering::SeqCst)
    }
}
