//! Raspberry Pi GPIO through the `rppal` crate. Inputs use rppal's asynchronous interrupt on both
//! edges; each edge goes to the shared input thread and debouncer ([`crate::safety::debounce`]),
//! exactly as on the simulated backend, instead of the kernel's own debounce (which would make
//! the Pi behave differently from the tests). Outputs are driven to their initial state at the
//! moment they become outputs and are left as they are when printgate exits (a gateway restart
//! must not cut a running print; what happens when the Pi itself loses power is a wiring choice,
//! `safety.relay_fail_safe`).
//!
//! rppal's errors are mapped to messages that say what to do: permission → gpio group, busy or
//! invalid pin → which pin and what it was for.

use crate::safety::config::Pull;
use crate::safety::gpio::{
    Gpio, GpioError, GpioKind, InputCallback, InputConfig, Level, OutputConfig, OutputPin,
};
use crate::safety::input_worker::{self, InputWorker, RawEdge};
use rppal::gpio as rp;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn map_err(e: rp::Error, pin: Option<(u8, &str)>) -> GpioError {
    match (e, pin) {
        (rp::Error::PermissionDenied(path), _) => GpioError::PermissionDenied { path },
        (rp::Error::PinUsed(p), label) => GpioError::PinBusy {
            pin: p,
            label: label.map(|(_, l)| l.to_string()).unwrap_or_default(),
        },
        (rp::Error::PinNotAvailable(p), label) => GpioError::PinInvalid {
            pin: p,
            label: label.map(|(_, l)| l.to_string()).unwrap_or_default(),
        },
        (rp::Error::UnknownModel, _) => GpioError::NotAvailable {
            detail: "rppal could not identify a Raspberry Pi model".into(),
        },
        (rp::Error::Io(io), Some((p, label))) => GpioError::Io {
            what: format!("GPIO {p} ({label})"),
            detail: io.to_string(),
        },
        (rp::Error::Io(io), None) => {
            if io.kind() == std::io::ErrorKind::PermissionDenied {
                GpioError::PermissionDenied {
                    path: "/dev/gpiomem or /dev/gpiochip0".into(),
                }
            } else {
                GpioError::NotAvailable {
                    detail: io.to_string(),
                }
            }
        }
        (other, p) => GpioError::Io {
            what: p
                .map(|(p, l)| format!("GPIO {p} ({l})"))
                .unwrap_or_else(|| "GPIO".into()),
            detail: other.to_string(),
        },
    }
}

struct RppalInput {
    // Kept alive: dropping it stops the interrupt and the input thread.
    _pin: Arc<Mutex<rp::InputPin>>,
    worker: InputWorker,
}

/// The Raspberry Pi backend.
pub struct RppalGpio {
    gpio: rp::Gpio,
    inputs: Mutex<HashMap<u8, RppalInput>>,
}

impl RppalGpio {
    /// Open the Pi's GPIO (fails with a clear error off a Pi or without permission).
    pub fn open() -> Result<RppalGpio, GpioError> {
        let gpio = rp::Gpio::new().map_err(|e| map_err(e, None))?;
        Ok(RppalGpio {
            gpio,
            inputs: Mutex::new(HashMap::new()),
        })
    }

    fn take(&self, pin: u8, label: &str) -> Result<rp::Pin, GpioError> {
        self.gpio
            .get(pin)
            .map_err(|e| map_err(e, Some((pin, label))))
    }
}

fn to_level(l: rp::Level) -> Level {
    Level::from_high(l == rp::Level::High)
}

impl Gpio for RppalGpio {
    fn kind(&self) -> GpioKind {
        GpioKind::Rppal
    }

    fn configure_input(
        &self,
        cfg: &InputConfig,
        on_change: InputCallback,
    ) -> Result<(), GpioError> {
        let pin = self.take(cfg.pin, &cfg.label)?;
        let input = match cfg.pull {
            Pull::Up => pin.into_input_pullup(),
            Pull::Down => pin.into_input_pulldown(),
            Pull::None => pin.into_input(),
        };
        let initial = to_level(input.read());
        let input = Arc::new(Mutex::new(input));
        let sampler_pin = input.clone();
        let worker = input_worker::spawn(
            cfg,
            initial,
            Some(Box::new(move || to_level(lock(&sampler_pin).read()))),
            on_change,
        )?;
        let edges = Mutex::new(worker.edges.clone());
        lock(&input)
            .set_async_interrupt(rp::Trigger::Both, None, move |event: rp::Event| {
                let level = match event.trigger {
                    rp::Trigger::RisingEdge => Level::High,
                    rp::Trigger::FallingEdge => Level::Low,
                    // Not produced for Trigger::Both; the resample will catch up.
                    _ => return,
                };
                // The input thread ends only when this closure is dropped; nothing to do if not.
                let _ = lock(&edges).send(RawEdge {
                    level,
                    at: Instant::now(),
                });
            })
            .map_err(|e| map_err(e, Some((cfg.pin, &cfg.label))))?;
        lock(&self.inputs).insert(
            cfg.pin,
            RppalInput {
                _pin: input,
                worker,
            },
        );
        Ok(())
    }

    fn input_asserted(&self, pin: u8) -> Result<bool, GpioError> {
        lock(&self.inputs)
            .get(&pin)
            .map(|i| i.worker.asserted.load(Ordering::SeqCst))
            .ok_or(GpioError::NotAnInput { pin })
    }

    fn configure_output(&self, cfg: &OutputConfig) -> Result<Arc<dyn OutputPin>, GpioError> {
        let pin = self.take(cfg.pin, &cfg.label)?;
        let mut out = match cfg.level_for(cfg.initial_on) {
            Level::High => pin.into_output_high(),
            Level::Low => pin.into_output_low(),
        };
        out.set_reset_on_drop(false);
        Ok(Arc::new(RppalOutput {
            cfg: cfg.clone(),
            pin: Mutex::new(out),
            on: AtomicBool::new(cfg.initial_on),
        }))
    }
}

struct RppalOutput {
    cfg: OutputConfig,
    pin: Mutex<rp::OutputPin>,
    on: AtomicBool,
}

impl OutputPin for RppalOutput {
    fn pin(&self) -> u8 {
        self.cfg.pin
    }
    fn set(&self, on: bool) {
        let mut pin = lock(&self.pin);
        match self.cfg.level_for(on) {
            Level::High => pin.set_high(),
            Level::Low => pin.set_low(),
        }
        self.on.store(on, Ordering::SeqCst);
    }
    fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }
}
