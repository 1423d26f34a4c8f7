//! The GPIO seam: a small synchronous, object-safe [`Gpio`] trait with two backends — rppal on a
//! Raspberry Pi ([`crate::safety::rppal_gpio`]) and a simulated one used off-Pi, in `demo` and in
//! tests ([`crate::safety::sim_gpio`]) — and the choice between them ([`open_gpio`]).
//!
//! Inputs report debounced changes through a callback invoked on the backend's input thread
//! (never on a tokio worker), so the trip path can switch relays off without any `await`.
//! Outputs are switched with [`OutputPin::set`], which respects the relay's active level.

use crate::safety::config::{ActiveLevel, GpioBackendChoice, InputPinConfig, Pull};
pub use crate::safety::debounce::Level;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one input is wired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputConfig {
    /// BCM GPIO number.
    pub pin: u8,
    pub pull: Pull,
    pub active: ActiveLevel,
    pub debounce: Duration,
    /// What the pin is for ("smoke input"), used in error messages.
    pub label: String,
}

impl InputConfig {
    pub fn from_pin_config(cfg: &InputPinConfig, label: &str) -> InputConfig {
        InputConfig {
            pin: cfg.pin,
            pull: cfg.pull,
            active: cfg.active_level,
            debounce: cfg.debounce(),
            label: label.to_string(),
        }
    }
    /// Whether `level` means asserted for this input.
    pub fn is_asserted(&self, level: Level) -> bool {
        match self.active {
            ActiveLevel::Low => level == Level::Low,
            ActiveLevel::High => level == Level::High,
        }
    }
    /// The electrical level that means asserted.
    pub fn asserted_level(&self) -> Level {
        match self.active {
            ActiveLevel::Low => Level::Low,
            ActiveLevel::High => Level::High,
        }
    }
}

/// A debounced change of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub pin: u8,
    pub level: Level,
    /// `level` is the configured active level.
    pub asserted: bool,
    /// When the change was accepted (after the debounce period).
    pub at: Instant,
}

/// Called on the backend's input thread for every debounced change; must not block for long.
pub type InputCallback = Box<dyn Fn(InputEvent) + Send + Sync>;

/// How one output (relay) is wired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    pub pin: u8,
    /// The relay is on when the pin is low.
    pub active_low: bool,
    /// State set at the moment the pin becomes an output (no glitch through the other state).
    pub initial_on: bool,
    pub label: String,
}

impl OutputConfig {
    /// Electrical level for a logical state.
    pub fn level_for(&self, on: bool) -> Level {
        Level::from_high(on != self.active_low)
    }
}

/// One configured output. `set` is cheap and infallible: it is called first on the trip path.
pub trait OutputPin: Send + Sync {
    fn pin(&self) -> u8;
    /// Switch the relay on or off (the active level is applied here).
    fn set(&self, on: bool);
    /// The last state written.
    fn is_on(&self) -> bool;
}

/// Which backend is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpioKind {
    Rppal,
    Simulated,
}

/// A GPIO backend.
pub trait Gpio: Send + Sync {
    fn kind(&self) -> GpioKind;
    /// Configure `cfg.pin` as an input and call `on_change` for every debounced change. When the
    /// input is already asserted at configuration, `on_change` fires once the debounce period
    /// has passed (a smoke alarm present at boot trips).
    fn configure_input(&self, cfg: &InputConfig, on_change: InputCallback)
    -> Result<(), GpioError>;
    /// The debounced state of a configured input.
    fn input_asserted(&self, pin: u8) -> Result<bool, GpioError>;
    /// Configure `cfg.pin` as an output, driven to `cfg.initial_on` at once.
    fn configure_output(&self, cfg: &OutputConfig) -> Result<Arc<dyn OutputPin>, GpioError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpioError {
    #[error(
        "cannot open {path}: permission denied. Add the printgate user to the gpio group (`sudo usermod -aG gpio printgate`, then restart printgate), or run the systemd unit from deploy/ which does this"
    )]
    PermissionDenied { path: String },
    #[error(
        "safety.gpio_backend = \"rppal\" but this machine's Raspberry Pi GPIO is not usable: {detail}. On a Pi, check that /dev/gpiomem or /dev/gpiochip0 exists; elsewhere set safety.gpio_backend = \"simulated\""
    )]
    NotAvailable { detail: String },
    #[error(
        "GPIO {pin} ({label}) is already in use by another printgate input or relay or by another program; choose a free pin in [safety] or stop the other program"
    )]
    PinBusy { pin: u8, label: String },
    #[error(
        "GPIO {pin} ({label}) does not exist on this board; use the BCM GPIO number (0–27 on the 40-pin header), not the physical pin number"
    )]
    PinInvalid { pin: u8, label: String },
    #[error("GPIO {pin} is not configured as an input; configure it in [safety] first")]
    NotAnInput { pin: u8 },
    #[error("GPIO error on {what}: {detail}")]
    Io { what: String, detail: String },
}

/// Whether this machine says it is a Raspberry Pi (device tree model string).
pub fn is_raspberry_pi() -> bool {
    [
        "/proc/device-tree/model",
        "/sys/firmware/devicetree/base/model",
    ]
    .iter()
    .filter_map(|p| std::fs::read(p).ok())
    .any(|bytes| String::from_utf8_lossy(&bytes).contains("Raspberry Pi"))
}

/// Whether a GPIO device node exists.
pub fn has_gpio_device() -> bool {
    ["/dev/gpiomem", "/dev/gpiochip0"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

/// An opened backend plus a warning to log loudly, if the choice deserves one.
pub struct OpenedGpio {
    pub gpio: Arc<dyn Gpio>,
    /// Set when `auto` fell back to the simulated backend.
    pub warning: Option<String>,
    /// The simulated backend, when it is the one in use (demo UI and `printgate gpio` drive it).
    pub sim: Option<Arc<crate::safety::sim_gpio::SimGpio>>,
}

/// Open the configured backend. `auto` picks rppal on a Pi with a GPIO device node, otherwise the
/// simulated backend with a warning; on a Pi whose GPIO cannot be opened it fails (never a
/// silent fallback that would leave the smoke input unconnected).
pub fn open_gpio(choice: GpioBackendChoice) -> Result<OpenedGpio, GpioError> {
    let simulated = |warning: Option<String>| {
        let sim = Arc::new(crate::safety::sim_gpio::SimGpio::new());
        OpenedGpio {
            gpio: sim.clone(),
            warning,
            sim: Some(sim),
        }
    };
    match choice {
        GpioBackendChoice::Simulated => Ok(simulated(None)),
        GpioBackendChoice::Rppal => Ok(OpenedGpio {
            gpio: Arc::new(crate::safety::rppal_gpio::RppalGpio::open()?),
            warning: None,
            sim: None,
        }),
        GpioBackendChoice::Auto => {
            if has_gpio_device() && is_raspberry_pi() {
                Ok(OpenedGpio {
                    gpio: Arc::new(crate::safety::rppal_gpio::RppalGpio::open()?),
                    warning: None,
                    sim: None,
                })
            } else {
                Ok(simulated(Some(
                    "no Raspberry Pi GPIO found (no /dev/gpiomem or /dev/gpiochip0 on a Pi): using the SIMULATED GPIO — the smoke input and relays are not connected to anything. Set safety.gpio_backend = \"simulated\" to silence this, or \"rppal\" to require the Pi's GPIO".into(),
                )))
            }
        }
    }
}
