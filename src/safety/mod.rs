//! Safety: the GPIO smoke input (and an optional second input) and the relays that cut printer
//! power, the thermal watchdog, and the latched trip (docs/architecture.md I5).
//!
//! * [`gpio`] — the [`gpio::Gpio`] trait; [`sim_gpio`] and [`rppal_gpio`] backends chosen by
//!   [`gpio::open_gpio`]; [`debounce`] is the pure debouncer both use.
//! * [`latch`] — [`latch::TripController`]: relays off first, then a [`latch::TripRecord`] for the
//!   follow-up (persist, stop printers, pause the queue, notify); latch, reset, manual power.
//! * [`watchdog`] — [`watchdog::ThermalWatchdog`]: pure checks of temperature reports.
//! * [`printer_faults`] — the printer's own heater, over-temperature and fire reports that trip.
//! * [`config`] — `[safety]` in printgate.toml.
//! * [`bench`] — latency figures for `printgate bench safety`.
//! * [`runtime`] — [`runtime::spawn_safety`] runs all of the above inside the gateway and gives
//!   out a [`runtime::SafetyHandle`]; [`web`] is its JSON API, [`cli`] the `printgate gpio` client.
//!
//! Wiring at start-up: `open_gpio` → `TripController::new(gpio, cfg, printers,
//! store.safety_boot_state())` → [`install_inputs`] → a task that handles [`SafetyEvent`]s.

pub mod bench;
pub mod config;
pub mod debounce;
pub mod gpio;
mod input_worker;
pub mod latch;
pub mod printer_faults;
pub mod rppal_gpio;
pub mod runtime;
pub mod sim_gpio;
pub mod watchdog;

pub use config::SafetyConfig;
pub use gpio::{Gpio, GpioError, open_gpio};
pub use latch::{InputKind, SafetyCause, TripController, TripRecord};
pub use watchdog::{ThermalSample, ThermalWatchdog, WatchdogVerdict};

use config::InputRole;
use gpio::InputConfig;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// What the input callbacks report to the async side.
#[derive(Debug, Clone, PartialEq)]
pub enum SafetyEvent {
    /// Relays are already off; persist (`TripController::persist`), stop the affected printers,
    /// pause the queue, notify.
    Tripped(TripRecord),
    /// A debounced input change (for the status page).
    InputChanged {
        input: InputKind,
        name: String,
        asserted: bool,
    },
    /// The second input in `alert` role was asserted.
    Alert(SafetyCause),
}

/// Configure the smoke input and the optional second input on `gpio`. Their callbacks run on the
/// backend's input thread: they call [`TripController::on_input`] (relays off inside it, before
/// anything else) and only then send events on `events` (an unbounded send never waits).
pub fn install_inputs(
    gpio: &dyn Gpio,
    cfg: &SafetyConfig,
    controller: Arc<TripController>,
    events: UnboundedSender<SafetyEvent>,
) -> Result<(), GpioError> {
    if let Some(smoke) = &cfg.smoke {
        let c = controller.clone();
        let tx = events.clone();
        gpio.configure_input(
            &InputConfig::from_pin_config(smoke, "smoke input"),
            Box::new(move |ev| {
                let tripped = c.on_input(InputKind::Smoke, ev.asserted);
                if let Some(record) = tripped {
                    // A closed receiver means the app is shutting down; the relays are off anyway.
                    let _ = tx.send(SafetyEvent::Tripped(record));
                }
                let _ = tx.send(SafetyEvent::InputChanged {
                    input: InputKind::Smoke,
                    name: "smoke".into(),
                    asserted: ev.asserted,
                });
            }),
        )?;
    }
    if let Some(second) = &cfg.second_input {
        let c = controller;
        let tx = events;
        let name = second.name.clone();
        let role = second.role;
        gpio.configure_input(
            &InputConfig::from_pin_config(&second.input(), &second.name),
            Box::new(move |ev| {
                if let Some(record) = c.on_input(InputKind::Second, ev.asserted) {
                    let _ = tx.send(SafetyEvent::Tripped(record));
                }
                if role == InputRole::Alert && ev.asserted {
                    let _ = tx.send(SafetyEvent::Alert(SafetyCause::SecondInput {
                        name: name.clone(),
                    }));
                }
                let _ = tx.send(SafetyEvent::InputChanged {
                    input: InputKind::Second,
                    name: name.clone(),
                    asserted: ev.asserted,
                });
            }),
        )?;
    }
    Ok(())
}
