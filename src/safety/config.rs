//! `[safety]` in `printgate.toml`: which GPIO backend to use, the smoke input (and an optional
//! second input), the relays that cut each printer's mains power, the thermal watchdog's
//! thresholds and the optional auto power-off after a finished print.
//!
//! Every field has a default, so an empty `[safety]` section (or none at all) is valid: it means
//! "no smoke input, no relays, watchdog on with the defaults documented in
//! [`crate::safety::watchdog`]". [`SafetyConfig::validate`] reports every problem at once, each
//! naming the key and the fix.

use crate::printer::Model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Which GPIO implementation drives the inputs and relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GpioBackendChoice {
    /// rppal when this is a Raspberry Pi with `/dev/gpiomem` or `/dev/gpiochip0`, else the
    /// simulated backend with a loud warning.
    #[default]
    Auto,
    /// Always the Raspberry Pi GPIO; start-up fails with a clear error when it is not usable.
    Rppal,
    /// Always the simulated GPIO (demo, tests, development off a Pi).
    Simulated,
}

/// Internal pull resistor of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pull {
    #[default]
    Up,
    Down,
    None,
}

/// Electrical level at which an input counts as asserted ("smoke!").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActiveLevel {
    /// Asserted when pulled to ground (open-collector alarm output with a pull-up): the default.
    #[default]
    Low,
    High,
}

/// What a second input does when asserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputRole {
    /// Cut power like the smoke input (heat detector).
    #[default]
    Trip,
    /// Only notify (enclosure door).
    Alert,
}

/// Documents how the relays are wired, i.e. what happens to printer power when the Pi (or its
/// GPIO) is unpowered or crashed. printgate cannot measure this; it is shown on the safety page
/// and `check-config` warns when it is `unspecified`. See deploy/WIRING.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RelayFailSafe {
    /// Not stated yet.
    #[default]
    Unspecified,
    /// Printers lose power when the gateway is down (normally-open contacts): the safe choice.
    PowerOffWhenGatewayDown,
    /// Printers keep power when the gateway is down (normally-closed contacts): protection
    /// disappears together with the gateway.
    PowerOnWhenGatewayDown,
}

/// A GPIO input (smoke detector, heat detector, door switch). Pins are BCM GPIO numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputPinConfig {
    /// BCM GPIO number (not the physical header pin number).
    pub pin: u8,
    #[serde(default)]
    pub pull: Pull,
    #[serde(default)]
    pub active_level: ActiveLevel,
    /// The input must stay asserted this long before it counts; shorter glitches are ignored.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

fn default_debounce_ms() -> u64 {
    200
}

impl InputPinConfig {
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
}

/// The optional second input with its own name and role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondInputConfig {
    /// Shown in alerts and trip records, e.g. "heat detector" or "enclosure door".
    #[serde(default = "default_second_name")]
    pub name: String,
    #[serde(default)]
    pub role: InputRole,
    /// BCM GPIO number.
    pub pin: u8,
    #[serde(default)]
    pub pull: Pull,
    #[serde(default)]
    pub active_level: ActiveLevel,
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

impl SecondInputConfig {
    /// The electrical part of this input.
    pub fn input(&self) -> InputPinConfig {
        InputPinConfig {
            pin: self.pin,
            pull: self.pull,
            active_level: self.active_level,
            debounce_ms: self.debounce_ms,
        }
    }
}

fn default_second_name() -> String {
    "second input".into()
}

/// One relay in the mains line of one printer. Several printers may share one relay (same pin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Printer name as in `[[printers]]`.
    pub printer: String,
    /// BCM GPIO number driving the relay module.
    pub pin: u8,
    /// Most relay modules switch on when their input is pulled low.
    #[serde(default = "default_true")]
    pub active_low: bool,
    /// Power this printer when the gateway starts, unless a trip is latched or the relay was last
    /// switched off (a gateway restart must not cut a running print).
    #[serde(default = "default_true")]
    pub on_at_boot: bool,
}

fn default_true() -> bool {
    true
}

/// Thresholds for one heater (nozzle or bed). See [`crate::safety::watchdog`] for how each one
/// compares with Klipper's `verify_heater` and Marlin's thermal protection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaterWatchConfig {
    /// Runaway: temperature this far above a set target …
    pub runaway_over_target_c: f64,
    /// … and still rising by at least this much …
    pub runaway_rise_c: f64,
    /// … within this window (samples before the last target change are not counted).
    pub runaway_window_secs: f64,
    /// With target 0 (heater should be off): runaway when above this and rising as above.
    pub runaway_idle_floor_c: f64,
    /// "At target" band, like Klipper's `hysteresis`.
    pub hysteresis_c: f64,
    /// While heating, the temperature must gain this much …
    pub heating_gain_c: f64,
    /// … every this many seconds (Klipper `check_gain_time`, Marlin `WATCH_TEMP_PERIOD`).
    pub check_gain_time_secs: f64,
    /// After reaching the target: accumulated °C·s below `target - hysteresis` before a
    /// "not holding temperature" fault (Klipper `max_error`).
    pub max_error_c_secs: f64,
}

impl HeaterWatchConfig {
    pub fn nozzle_default() -> Self {
        Self {
            runaway_over_target_c: 15.0,
            runaway_rise_c: 10.0,
            runaway_window_secs: 30.0,
            runaway_idle_floor_c: 100.0,
            hysteresis_c: 10.0,
            heating_gain_c: 2.0,
            check_gain_time_secs: 40.0,
            max_error_c_secs: 240.0,
        }
    }
    pub fn bed_default() -> Self {
        Self {
            runaway_over_target_c: 10.0,
            runaway_rise_c: 5.0,
            runaway_window_secs: 90.0,
            runaway_idle_floor_c: 70.0,
            hysteresis_c: 10.0,
            heating_gain_c: 2.0,
            check_gain_time_secs: 120.0,
            max_error_c_secs: 600.0,
        }
    }
}

/// Per-model absolute limits (°C) overriding the built-in table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimitsConfig {
    pub nozzle_max_c: Option<f64>,
    pub bed_max_c: Option<f64>,
}

/// The thermal watchdog (printgate's second layer above the printer's own protection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "HeaterWatchConfig::nozzle_default")]
    pub nozzle: HeaterWatchConfig,
    #[serde(default = "HeaterWatchConfig::bed_default")]
    pub bed: HeaterWatchConfig,
    /// Added to the model's slicer limit (docs/bambu-protocol.md §11) before "over limit" trips.
    #[serde(default = "default_nozzle_margin")]
    pub nozzle_limit_margin_c: f64,
    #[serde(default = "default_bed_margin")]
    pub bed_limit_margin_c: f64,
    /// Consecutive reports above the limit needed to trip (1 = the first one).
    #[serde(default = "default_over_limit_samples")]
    pub over_limit_samples: u32,
    /// Overrides of the built-in limits, keyed by model name as in `[[printers]] model`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelLimitsConfig>,
    /// A heater that does not heat or hold its target trips instead of only alerting.
    #[serde(default)]
    pub heater_fault_trips: bool,
    /// While printing, no report for this long is a warning.
    #[serde(default = "default_silence_secs")]
    pub silence_secs: u64,
    /// … and trips instead of only warning.
    #[serde(default)]
    pub silence_trips: bool,
}

fn default_nozzle_margin() -> f64 {
    20.0
}
fn default_bed_margin() -> f64 {
    15.0
}
fn default_over_limit_samples() -> u32 {
    2
}
fn default_silence_secs() -> u64 {
    120
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            nozzle: HeaterWatchConfig::nozzle_default(),
            bed: HeaterWatchConfig::bed_default(),
            nozzle_limit_margin_c: default_nozzle_margin(),
            bed_limit_margin_c: default_bed_margin(),
            over_limit_samples: default_over_limit_samples(),
            models: BTreeMap::new(),
            heater_fault_trips: false,
            silence_secs: default_silence_secs(),
            silence_trips: false,
        }
    }
}

/// Slicer (Bambu Studio) limits per model, nozzle / bed °C (docs/bambu-protocol.md §11).
pub fn studio_limits(model: Model) -> (f64, f64) {
    match model {
        Model::X1C | Model::X1E => (300.0, 110.0),
        Model::P1P | Model::P1S | Model::A1 => (300.0, 100.0),
        Model::A1Mini => (300.0, 80.0),
        Model::P2S => (300.0, 110.0),
        Model::H2D => (350.0, 120.0),
        // Klipper has its own max_temp per heater; this is a common ceiling (override per model).
        Model::Klipper => (300.0, 120.0),
    }
}

impl WatchdogConfig {
    /// Absolute trip limits (nozzle, bed) for a model: override or Studio limit, plus margin.
    pub fn limits_for(&self, model: Model) -> (f64, f64) {
        let (mut nozzle, mut bed) = studio_limits(model);
        // Keys are written as loosely as printer models (`A1 mini`, `a1mini`, `KLIPPER`).
        if let Some(o) = self
            .models
            .iter()
            .find(|(k, _)| Model::parse(k) == Some(model))
            .map(|(_, o)| o)
        {
            nozzle = o.nozzle_max_c.unwrap_or(nozzle);
            bed = o.bed_max_c.unwrap_or(bed);
        }
        (
            nozzle + self.nozzle_limit_margin_c,
            bed + self.bed_limit_margin_c,
        )
    }
}

/// Switch a printer off once a finished print has cooled down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoPowerOffConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Power off when the printer is FINISH and the nozzle is below this.
    #[serde(default = "default_power_off_nozzle")]
    pub nozzle_below_c: f64,
}

fn default_power_off_nozzle() -> f64 {
    50.0
}

impl Default for AutoPowerOffConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            nozzle_below_c: default_power_off_nozzle(),
        }
    }
}

/// `[safety]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    #[serde(default)]
    pub gpio_backend: GpioBackendChoice,
    /// The smoke detector's alarm output. None: no smoke input wired (a warning at start).
    #[serde(default)]
    pub smoke: Option<InputPinConfig>,
    /// Optional heat detector (trip) or enclosure door switch (alert).
    #[serde(default)]
    pub second_input: Option<SecondInputConfig>,
    #[serde(default)]
    pub relays: Vec<RelayConfig>,
    #[serde(default)]
    pub relay_fail_safe: RelayFailSafe,
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    #[serde(default)]
    pub auto_power_off: AutoPowerOffConfig,
}

/// Highest BCM GPIO number accepted (the 40-pin header exposes 0–27).
pub const MAX_BCM_PIN: u8 = 27;

impl SafetyConfig {
    /// Every problem in `[safety]`, each naming the key and the fix. `printers` are the names
    /// from `[[printers]]`.
    pub fn validate(&self, printers: &[&str]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut used: BTreeMap<u8, String> = BTreeMap::new();
        let mut claim = |pin: u8, key: String, errors: &mut Vec<String>| {
            if pin > MAX_BCM_PIN {
                errors.push(format!(
                    "{key} = {pin}: not a GPIO on the 40-pin header; use a BCM GPIO number 0–{MAX_BCM_PIN} (not the physical pin number)"
                ));
            }
            if let Some(other) = used.get(&pin) {
                errors.push(format!(
                    "{key} = {pin}: GPIO {pin} is already used by {other}; give each input and relay its own pin"
                ));
            } else {
                used.insert(pin, key);
            }
        };
        if let Some(s) = &self.smoke {
            claim(s.pin, "safety.smoke.pin".into(), &mut errors);
            check_debounce(&s.debounce_ms, "safety.smoke.debounce_ms", &mut errors);
        }
        if let Some(s) = &self.second_input {
            claim(s.pin, "safety.second_input.pin".into(), &mut errors);
            check_debounce(
                &s.debounce_ms,
                "safety.second_input.debounce_ms",
                &mut errors,
            );
            if s.name.trim().is_empty() {
                errors.push(
                    "safety.second_input.name is empty; name it, e.g. \"heat detector\"".into(),
                );
            }
        }
        // Relays: several printers may share a pin, but then with the same polarity.
        let mut relay_pins: BTreeMap<u8, (usize, bool)> = BTreeMap::new();
        let mut relay_printers: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, r) in self.relays.iter().enumerate() {
            let key = format!("safety.relays[{i}]");
            if !printers.contains(&r.printer.as_str()) {
                errors.push(format!(
                    "{key}.printer = \"{}\": no printer with that name in [[printers]]; use one of: {}",
                    r.printer,
                    printers.join(", ")
                ));
            }
            if let Some(prev) = relay_printers.insert(r.printer.as_str(), i) {
                errors.push(format!(
                    "{key}.printer = \"{}\": printer already has a relay in safety.relays[{prev}]; one relay per printer",
                    r.printer
                ));
            }
            match relay_pins.get(&r.pin) {
                Some((first, active_low)) => {
                    if *active_low != r.active_low {
                        errors.push(format!(
                            "{key}.active_low = {}: GPIO {} is shared with safety.relays[{first}] which says active_low = {active_low}; a shared relay has one polarity",
                            r.active_low, r.pin
                        ));
                    }
                }
                None => {
                    relay_pins.insert(r.pin, (i, r.active_low));
                    claim(r.pin, format!("{key}.pin"), &mut errors);
                }
            }
        }
        let w = &self.watchdog;
        for (name, h) in [("nozzle", &w.nozzle), ("bed", &w.bed)] {
            for (field, v) in [
                ("runaway_over_target_c", h.runaway_over_target_c),
                ("runaway_rise_c", h.runaway_rise_c),
                ("runaway_window_secs", h.runaway_window_secs),
                ("runaway_idle_floor_c", h.runaway_idle_floor_c),
                ("hysteresis_c", h.hysteresis_c),
                ("heating_gain_c", h.heating_gain_c),
                ("check_gain_time_secs", h.check_gain_time_secs),
                ("max_error_c_secs", h.max_error_c_secs),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    errors.push(format!(
                        "safety.watchdog.{name}.{field} = {v}: must be a positive number"
                    ));
                }
            }
        }
        for (field, v) in [
            ("nozzle_limit_margin_c", w.nozzle_limit_margin_c),
            ("bed_limit_margin_c", w.bed_limit_margin_c),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                errors.push(format!("safety.watchdog.{field} = {v}: must be 0 or more"));
            }
        }
        if w.over_limit_samples == 0 {
            errors.push("safety.watchdog.over_limit_samples = 0: must be at least 1".into());
        }
        if w.silence_secs == 0 {
            errors.push("safety.watchdog.silence_secs = 0: must be at least 1 second".into());
        }
        for (name, o) in &w.models {
            if Model::parse(name).is_none() {
                let known: Vec<&str> = Model::ALL
                    .iter()
                    .chain(&[Model::Klipper])
                    .map(|m| m.config_name())
                    .collect();
                errors.push(format!(
                    "safety.watchdog.models.{name}: unknown model; use one of {}",
                    known.join(", ")
                ));
            }
            for (field, v) in [("nozzle_max_c", o.nozzle_max_c), ("bed_max_c", o.bed_max_c)] {
                if let Some(v) = v
                    && !(v.is_finite() && v > 0.0 && v < 600.0)
                {
                    errors.push(format!(
                        "safety.watchdog.models.{name}.{field} = {v}: must be between 0 and 600 °C"
                    ));
                }
            }
        }
        let apo = &self.auto_power_off;
        if !(apo.nozzle_below_c.is_finite() && apo.nozzle_below_c > 0.0) {
            errors.push(format!(
                "safety.auto_power_off.nozzle_below_c = {}: must be a positive temperature",
                apo.nozzle_below_c
            ));
        }
        errors
    }

    /// Non-fatal remarks for `check-config` and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.smoke.is_none() {
            w.push(
                "no smoke input configured ([safety.smoke]): printgate will not cut power on smoke"
                    .into(),
            );
        }
        if !self.relays.is_empty() && self.relay_fail_safe == RelayFailSafe::Unspecified {
            w.push("safety.relay_fail_safe is unspecified: state how the relays behave when the gateway is down (see deploy/WIRING.md)".into());
        }
        if !self.watchdog.enabled {
            w.push(
                "safety.watchdog.enabled = false: printgate does not watch printer temperatures"
                    .into(),
            );
        }
        w
    }

    /// The relay pin of a printer, if it has one.
    pub fn relay_for(&self, printer: &str) -> Option<&RelayConfig> {
        self.relays.iter().find(|r| r.printer == printer)
    }
}

fn check_debounce(ms: &u64, key: &str, errors: &mut Vec<String>) {
    if *ms > 10_000 {
        errors.push(format!(
            "{key} = {ms}: more than 10 s delays every trip; use 20–500 ms"
        ));
    }
}
