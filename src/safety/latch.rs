//! The trip latch (docs/architecture.md I5): [`TripController`] owns the relay outputs and is the only code
//! that switches them.
//!
//! * [`TripController::trip`] is synchronous and switches every affected relay off **first** —
//!   no `await`, no disk, no allocation before the writes — then returns a [`TripRecord`] for the
//!   follow-up (persist with [`TripController::persist`], send `stop`, pause the queue, notify).
//! * A latched trip survives restarts: built from [`BootState`] (read from the store), the
//!   controller drives the affected relays off at the moment they become outputs and keeps them
//!   off.
//! * [`TripController::reset`] needs a named user and the id of the trip they confirmed; it is
//!   refused while an input is still asserted or a trip is not yet recorded, is logged, and never
//!   switches a relay on. Power comes back only by an explicit [`TripController::set_power`].
//! * [`TripController::set_power`] is refused while tripped and, unless forced, while a printer
//!   on that relay is printing. A trip racing with a power-on always wins (see the comments).

use crate::safety::config::{InputRole, SafetyConfig};
use crate::safety::gpio::{Gpio, GpioError, OutputConfig, OutputPin};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Which heater a thermal cause is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Heater {
    Nozzle,
    Bed,
}

impl Heater {
    pub fn as_str(self) -> &'static str {
        match self {
            Heater::Nozzle => "nozzle",
            Heater::Bed => "bed",
        }
    }
}

/// Why safety tripped or alerted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SafetyCause {
    /// The smoke detector input was asserted.
    Smoke,
    /// The second input (heat detector / enclosure door) was asserted.
    SecondInput { name: String },
    /// A person pressed "emergency stop" (all printers when `printer` is None).
    EmergencyStop {
        by_user: String,
        printer: Option<String>,
    },
    /// A temperature above the model's absolute limit.
    OverTemperature {
        printer: String,
        heater: Heater,
        temp: f64,
        limit: f64,
    },
    /// A temperature well above its target (or above the idle floor with target 0) and rising.
    ThermalRunaway {
        printer: String,
        heater: Heater,
        temp: f64,
        target: f64,
        rise: f64,
        window_secs: f64,
    },
    /// Target set but the temperature does not rise (heater or thermistor fault).
    HeaterNotHeating {
        printer: String,
        heater: Heater,
        temp: f64,
        target: f64,
    },
    /// Target reached earlier but the temperature stays well below it.
    HeaterNotHolding {
        printer: String,
        heater: Heater,
        temp: f64,
        target: f64,
    },
    /// No report for this long while printing.
    ReportSilence { printer: String, silent_secs: u64 },
    /// The printer itself reported a heater fault, over-temperature or fire (HMS or
    /// `print_error`, see `safety::printer_faults`).
    PrinterFault {
        printer: String,
        /// `0300_0200_0001_0003` (HMS) or `0300_8044` (`print_error`).
        code: String,
        /// The code with its meaning, as the UI shows it.
        text: String,
    },
}

impl SafetyCause {
    /// The one printer this cause is about, or None for "every printer".
    pub fn printer(&self) -> Option<&str> {
        match self {
            SafetyCause::Smoke | SafetyCause::SecondInput { .. } => None,
            SafetyCause::EmergencyStop { printer, .. } => printer.as_deref(),
            SafetyCause::OverTemperature { printer, .. }
            | SafetyCause::ThermalRunaway { printer, .. }
            | SafetyCause::HeaterNotHeating { printer, .. }
            | SafetyCause::HeaterNotHolding { printer, .. }
            | SafetyCause::ReportSilence { printer, .. }
            | SafetyCause::PrinterFault { printer, .. } => Some(printer),
        }
    }

    pub fn scope(&self) -> TripScope {
        match self.printer() {
            Some(p) => TripScope::Printer(p.to_string()),
            None => TripScope::All,
        }
    }

    /// Short machine name (`smoke`, `thermal_runaway`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            SafetyCause::Smoke => "smoke",
            SafetyCause::SecondInput { .. } => "second_input",
            SafetyCause::EmergencyStop { .. } => "emergency_stop",
            SafetyCause::OverTemperature { .. } => "over_temperature",
            SafetyCause::ThermalRunaway { .. } => "thermal_runaway",
            SafetyCause::HeaterNotHeating { .. } => "heater_not_heating",
            SafetyCause::HeaterNotHolding { .. } => "heater_not_holding",
            SafetyCause::ReportSilence { .. } => "report_silence",
            SafetyCause::PrinterFault { .. } => "printer_fault",
        }
    }

    /// One sentence for people.
    pub fn describe(&self) -> String {
        match self {
            SafetyCause::Smoke => "smoke detector alarm".into(),
            SafetyCause::SecondInput { name } => format!("{name} input asserted"),
            SafetyCause::EmergencyStop { by_user, printer } => match printer {
                Some(p) => format!("emergency stop of {p} by {by_user}"),
                None => format!("emergency stop of all printers by {by_user}"),
            },
            SafetyCause::OverTemperature {
                printer,
                heater,
                temp,
                limit,
            } => format!(
                "{printer}: {} at {temp:.1} °C, above the limit of {limit:.0} °C",
                heater.as_str()
            ),
            SafetyCause::ThermalRunaway {
                printer,
                heater,
                temp,
                target,
                rise,
                window_secs,
            } => format!(
                "{printer}: {} thermal runaway — {temp:.1} °C with target {target:.0} °C, rose {rise:.1} °C in {window_secs:.0} s",
                heater.as_str()
            ),
            SafetyCause::HeaterNotHeating {
                printer,
                heater,
                temp,
                target,
            } => format!(
                "{printer}: {} not heating ({temp:.1} °C, target {target:.0} °C) — heater or thermistor fault?",
                heater.as_str()
            ),
            SafetyCause::HeaterNotHolding {
                printer,
                heater,
                temp,
                target,
            } => format!(
                "{printer}: {} cannot hold its target ({temp:.1} °C, target {target:.0} °C) — heater or thermistor fault?",
                heater.as_str()
            ),
            SafetyCause::ReportSilence {
                printer,
                silent_secs,
            } => format!("{printer}: no report for {silent_secs} s while printing"),
            SafetyCause::PrinterFault { printer, text, .. } => {
                format!("{printer} reported {text}")
            }
        }
    }
}

/// What a trip affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "printer", rename_all = "snake_case")]
pub enum TripScope {
    All,
    Printer(String),
}

/// A printer's temperatures at the time of a trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PrinterReading {
    pub printer: String,
    pub gcode_state: Option<String>,
    pub nozzle: Option<f64>,
    pub nozzle_target: Option<f64>,
    pub bed: Option<f64>,
    pub bed_target: Option<f64>,
}

/// Who reset a trip, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TripReset {
    pub at_unix_ms: i64,
    pub by_user: String,
}

/// One trip: cause, time, readings and what was switched off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripRecord {
    /// Row id once persisted.
    pub id: Option<i64>,
    pub cause: SafetyCause,
    pub scope: TripScope,
    /// Printers to stop (every printer for `All`; else the printer and those sharing its relay).
    pub affected_printers: Vec<String>,
    /// Relay pins written off.
    pub relays_off: Vec<u8>,
    pub at_unix_ms: i64,
    pub readings: Vec<PrinterReading>,
    /// Set once a person reset it.
    pub reset: Option<TripReset>,
    /// When the relay writes finished (this process only; not stored).
    #[serde(skip)]
    pub relays_off_at: Option<Instant>,
}

impl TripRecord {
    pub fn affects(&self, printer: &str) -> bool {
        self.scope == TripScope::All || self.affected_printers.iter().any(|p| p == printer)
    }
}

/// What the store knows at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootState {
    /// Trips not reset yet, oldest first.
    pub open_trips: Vec<TripRecord>,
    /// Last commanded state per relay pin.
    pub relay_states: HashMap<u8, bool>,
}

/// Which GPIO input changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Smoke,
    Second,
}

/// A person's request to reset the latch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRequest {
    /// The authenticated user (the web layer checks the session; empty is refused).
    pub by_user: String,
    /// Id of the most recent open trip, as shown on the confirmation page: a trip recorded after
    /// the page was shown makes the reset fail, so nobody resets a trip they have not seen.
    pub confirmed_trip_id: i64,
    pub at_unix_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("no safety trip is latched")]
    NotTripped,
    #[error("a reset needs a signed-in user")]
    NotAuthenticated,
    #[error(
        "the {0} input is still asserted; clear the cause (ventilate, check the detector) before resetting"
    )]
    InputStillAsserted(String),
    #[error("a trip is still being recorded; reload the safety page and confirm again")]
    TripBeingRecorded,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A manual power request for one printer's relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRequest {
    pub printer: String,
    pub on: bool,
    /// Switch even though a printer on this relay is printing.
    pub force: bool,
}

/// What [`TripController::set_power`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerChange {
    pub pin: u8,
    /// Every printer on this relay.
    pub printers: Vec<String>,
    pub on: bool,
    /// The relay was in the other state before.
    pub changed: bool,
    pub forced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowerError {
    #[error("printer \"{0}\" has no relay in [safety.relays]; add one to switch its power")]
    NoRelay(String),
    #[error(
        "a safety trip is latched for {0}; power stays off until a person resets it on the safety page"
    )]
    Tripped(String),
    #[error(
        "{0} is printing; switching the power would ruin the print. Stop the print first, or force it"
    )]
    Printing(String),
    #[error("a safety trip happened at the same moment; power stays off")]
    TripRaced,
}

/// Current state for the status page and the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SafetyStatus {
    pub tripped: bool,
    /// Every printer is latched off (a trip of scope `All`).
    pub all_latched: bool,
    pub latched_printers: Vec<String>,
    pub smoke_asserted: bool,
    pub second_asserted: bool,
    pub relays: Vec<RelayStatus>,
    /// Trips returned by `trip` but not yet persisted.
    pub unpersisted: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayStatus {
    pub pin: u8,
    pub printers: Vec<String>,
    pub on: bool,
}

struct RelaySlot {
    pin: u8,
    printers: Vec<String>,
    out: Arc<dyn OutputPin>,
}

impl RelaySlot {
    fn serves(&self, printer: &str) -> bool {
        self.printers.iter().any(|p| p == printer)
    }
}

#[derive(Default)]
struct LatchState {
    all: bool,
    printers: BTreeSet<String>,
    unpersisted: usize,
}

impl LatchState {
    fn is_tripped(&self) -> bool {
        self.all || !self.printers.is_empty()
    }
    fn covers(&self, printer: &str) -> bool {
        self.all || self.printers.contains(printer)
    }
    fn add(&mut self, rec: &TripRecord) {
        match rec.scope {
            TripScope::All => self.all = true,
            TripScope::Printer(_) => self.printers.extend(rec.affected_printers.iter().cloned()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Owns the relays; trips, latches, resets and switches power.
pub struct TripController {
    relays: Vec<RelaySlot>,
    printers: Vec<String>,
    /// Trips started / trips whose latch bookkeeping is done. Unequal = a trip is in flight.
    trips_started: AtomicU64,
    trips_done: AtomicU64,
    latch: Mutex<LatchState>,
    smoke_asserted: AtomicBool,
    second_asserted: AtomicBool,
    second: Option<(String, InputRole)>,
}

impl TripController {
    /// Configure every relay output and restore the latch. Relays covered by an open trip are
    /// driven off as they become outputs; others take their last commanded state, else
    /// `on_at_boot`. `printers` are all configured printer names.
    pub fn new(
        gpio: &dyn Gpio,
        cfg: &SafetyConfig,
        printers: &[String],
        boot: &BootState,
    ) -> Result<TripController, GpioError> {
        let mut latch = LatchState::default();
        for rec in &boot.open_trips {
            latch.add(rec);
        }
        // Group relay entries by pin (several printers may share one relay).
        let mut by_pin: Vec<(u8, bool, bool, Vec<String>)> = Vec::new();
        for r in &cfg.relays {
            match by_pin.iter_mut().find(|(pin, ..)| *pin == r.pin) {
                Some(entry) => {
                    entry.2 &= r.on_at_boot;
                    entry.3.push(r.printer.clone());
                }
                None => by_pin.push((r.pin, r.active_low, r.on_at_boot, vec![r.printer.clone()])),
            }
        }
        let mut relays = Vec::with_capacity(by_pin.len());
        for (pin, active_low, on_at_boot, served) in by_pin {
            let latched = served.iter().any(|p| latch.covers(p));
            let initial_on = !latched && boot.relay_states.get(&pin).copied().unwrap_or(on_at_boot);
            let out = gpio.configure_output(&OutputConfig {
                pin,
                active_low,
                initial_on,
                label: format!("relay of {}", served.join(", ")),
            })?;
            relays.push(RelaySlot {
                pin,
                printers: served,
                out,
            });
        }
        Ok(TripController {
            relays,
            printers: printers.to_vec(),
            trips_started: AtomicU64::new(0),
            trips_done: AtomicU64::new(0),
            latch: Mutex::new(latch),
            smoke_asserted: AtomicBool::new(false),
            second_asserted: AtomicBool::new(false),
            second: cfg.second_input.as_ref().map(|s| (s.name.clone(), s.role)),
        })
    }

    /// Trip: every relay serving the cause's printer (all relays when it names none) is written
    /// off before anything else happens; then the latch is updated and the record returned for
    /// the follow-up. Tripping while already tripped writes the relays off again and returns a
    /// new record (every trip is recorded).
    pub fn trip(&self, cause: SafetyCause, readings: Vec<PrinterReading>) -> TripRecord {
        // Announce the trip before the writes: a concurrent power-on re-checks this counter
        // after its own write and switches off again (see `set_power`).
        self.trips_started.fetch_add(1, Ordering::SeqCst);
        let only = cause.printer();
        for r in &self.relays {
            if only.is_none_or(|p| r.serves(p)) {
                r.out.set(false);
            }
        }
        let relays_off_at = Instant::now();

        // Bookkeeping only from here on.
        let scope = cause.scope();
        let mut relays_off = Vec::new();
        let mut affected: BTreeSet<String> = BTreeSet::new();
        match only {
            None => affected.extend(self.printers.iter().cloned()),
            Some(p) => {
                affected.insert(p.to_string());
            }
        }
        for r in &self.relays {
            if only.is_none_or(|p| r.serves(p)) {
                relays_off.push(r.pin);
                affected.extend(r.printers.iter().cloned());
            }
        }
        let record = TripRecord {
            id: None,
            cause,
            scope,
            affected_printers: affected.into_iter().collect(),
            relays_off,
            at_unix_ms: now_unix_ms(),
            readings,
            reset: None,
            relays_off_at: Some(relays_off_at),
        };
        {
            let mut latch = lock(&self.latch);
            latch.add(&record);
            latch.unpersisted += 1;
            self.trips_done.fetch_add(1, Ordering::SeqCst);
        }
        record
    }

    /// A debounced input change. Trips on smoke, and on the second input when its role is
    /// `trip`; tracks the state so a reset is refused while the input is still asserted.
    pub fn on_input(&self, input: InputKind, asserted: bool) -> Option<TripRecord> {
        match input {
            InputKind::Smoke => {
                self.smoke_asserted.store(asserted, Ordering::SeqCst);
                asserted.then(|| self.trip(SafetyCause::Smoke, Vec::new()))
            }
            InputKind::Second => {
                self.second_asserted.store(asserted, Ordering::SeqCst);
                match &self.second {
                    Some((name, InputRole::Trip)) if asserted => {
                        Some(self.trip(SafetyCause::SecondInput { name: name.clone() }, Vec::new()))
                    }
                    _ => None,
                }
            }
        }
    }

    /// Persist a record returned by [`TripController::trip`] (sets its id). Call it from the
    /// follow-up (e.g. in `spawn_blocking`); until every trip is persisted a reset is refused.
    pub fn persist(&self, store: &Store, record: &mut TripRecord) -> Result<i64, StoreError> {
        let id = store.record_trip(record)?;
        record.id = Some(id);
        let mut latch = lock(&self.latch);
        latch.unpersisted = latch.unpersisted.saturating_sub(1);
        Ok(id)
    }

    pub fn is_tripped(&self) -> bool {
        lock(&self.latch).is_tripped()
    }

    /// A trip is latched that covers this printer.
    pub fn is_printer_tripped(&self, printer: &str) -> bool {
        lock(&self.latch).covers(printer)
    }

    pub fn status(&self) -> SafetyStatus {
        let latch = lock(&self.latch);
        SafetyStatus {
            tripped: latch.is_tripped(),
            all_latched: latch.all,
            latched_printers: latch.printers.iter().cloned().collect(),
            smoke_asserted: self.smoke_asserted.load(Ordering::SeqCst),
            second_asserted: self.second_asserted.load(Ordering::SeqCst),
            relays: self
                .relays
                .iter()
                .map(|r| RelayStatus {
                    pin: r.pin,
                    printers: r.printers.clone(),
                    on: r.out.is_on(),
                })
                .collect(),
            unpersisted: latch.unpersisted,
        }
    }

    /// Whether a printer's relay is on (None: the printer has no relay).
    pub fn relay_on(&self, printer: &str) -> Option<bool> {
        self.relays
            .iter()
            .find(|r| r.serves(printer))
            .map(|r| r.out.is_on())
    }

    /// Reset the latch after a person confirmed it. Relays stay as they are (off).
    /// Returns the number of trips reset.
    pub fn reset(&self, store: &Store, req: &ResetRequest) -> Result<usize, ResetError> {
        if req.by_user.trim().is_empty() {
            return Err(ResetError::NotAuthenticated);
        }
        let mut latch = lock(&self.latch);
        if self.trips_started.load(Ordering::SeqCst) != self.trips_done.load(Ordering::SeqCst)
            || latch.unpersisted > 0
        {
            return Err(ResetError::TripBeingRecorded);
        }
        if self.smoke_asserted.load(Ordering::SeqCst) {
            return Err(ResetError::InputStillAsserted("smoke".into()));
        }
        if let Some((name, InputRole::Trip)) = &self.second
            && self.second_asserted.load(Ordering::SeqCst)
        {
            return Err(ResetError::InputStillAsserted(name.clone()));
        }
        if !latch.is_tripped() && store.latched_trip()?.is_none() {
            return Err(ResetError::NotTripped);
        }
        let n = store.reset_trip(&req.by_user, req.at_unix_ms, req.confirmed_trip_id)?;
        *latch = LatchState::default();
        Ok(n)
    }

    /// Switch one printer's relay by hand. Refused while a trip covers any printer on that relay
    /// (switching off is always allowed), and while one of them is printing unless forced.
    /// `printing` tells whether a printer is printing now. Record the change with
    /// `Store::record_power_change`.
    pub fn set_power(
        &self,
        req: &PowerRequest,
        printing: &dyn Fn(&str) -> bool,
    ) -> Result<PowerChange, PowerError> {
        let slot = self
            .relays
            .iter()
            .find(|r| r.serves(&req.printer))
            .ok_or_else(|| PowerError::NoRelay(req.printer.clone()))?;
        let latch = lock(&self.latch);
        let started = self.trips_started.load(Ordering::SeqCst);
        if req.on {
            if started != self.trips_done.load(Ordering::SeqCst) {
                return Err(PowerError::TripRaced);
            }
            if let Some(p) = slot.printers.iter().find(|p| latch.covers(p)) {
                return Err(PowerError::Tripped(p.clone()));
            }
        }
        let busy: Vec<&str> = slot
            .printers
            .iter()
            .map(String::as_str)
            .filter(|p| printing(p))
            .collect();
        if !busy.is_empty() && !req.force {
            return Err(PowerError::Printing(busy.join(", ")));
        }
        let was_on = slot.out.is_on();
        slot.out.set(req.on);
        if req.on && self.trips_started.load(Ordering::SeqCst) != started {
            // A trip began after our checks. Either it writes this relay off after our write,
            // or it began before this load and we switch off here: off wins either way.
            slot.out.set(false);
            return Err(PowerError::TripRaced);
        }
        drop(latch);
        Ok(PowerChange {
            pin: slot.pin,
            printers: slot.printers.clone(),
            on: req.on,
            changed: was_on != req.on,
            forced: req.force && !busy.is_empty(),
        })
    }

    /// Relay pins with the printers they serve.
    pub fn relays(&self) -> Vec<(u8, Vec<String>)> {
        self.relays
            .iter()
            .map(|r| (r.pin, r.printers.clone()))
            .collect()
    }
}
