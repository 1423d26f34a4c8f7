//! Thermal watchdog: pure checks of printer temperature reports, a second and independent layer
//! above the printer's own firmware protection. It sees only what the printer reports (about once
//! a second over Wi-Fi, sometimes as deltas, sometimes rounded), so it is deliberately less
//! sensitive than firmware checks for faults the firmware handles, and strict about the ones that
//! mean fire: a heater far above where it should be and still climbing.
//!
//! Per heater (nozzle, bed), on every report ([`ThermalWatchdog::observe`], ~100 ns):
//!
//! * **Over limit → trip.** Temperature above the model's slicer limit (docs/bambu-protocol.md §11: X1
//!   300/110, P1 and A1 300/100, A1 mini 300/80, P2S 300/110, H2D 350/120) plus a margin (20 °C
//!   nozzle, 15 °C bed) for `over_limit_samples` (2) consecutive reports. The slicer never asks
//!   for more than the limit, so a reading above it plus the margin is not a normal print.
//! * **Runaway → trip.** Temperature more than `runaway_over_target_c` above a set target (15 °C
//!   nozzle, 10 °C bed), or above `runaway_idle_floor_c` with target 0 (100 °C nozzle, 70 °C
//!   bed — above what a 65 °C H2D chamber can do to an unpowered heater), **and** rising by at
//!   least `runaway_rise_c` (10 °C / 5 °C) within `runaway_window_secs` (30 s / 90 s). Samples
//!   before the last target change are not counted, so lowering a target while the heater is
//!   still climbing from thermal lag never trips (the lag adds a few degrees, not 10). Neither
//!   Klipper nor Marlin checks this direction explicitly — they rely on `max_temp`/`MAXTEMP` —
//!   but a printgate relay can still cut mains power when the printer's own controller is what
//!   failed (stuck MOSFET, firmware hang).
//! * **Not heating → alert** (trip only with `heater_fault_trips`). Modelled on Klipper's
//!   `verify_heater`: while below `target - hysteresis`, the temperature must gain
//!   `heating_gain_c` every `check_gain_time_secs`. Klipper's defaults are hysteresis 5 °C,
//!   heating_gain 2 °C, check_gain_time 20 s (extruder) / 60 s (bed); Marlin's
//!   `WATCH_TEMP_PERIOD`/`INCREASE` are 40 s / 2 °C (hotend) and `WATCH_BED_TEMP_*` 60 s / 2 °C.
//!   printgate uses gain 2 °C over 40 s (nozzle) / 120 s (bed) with a 10 °C band: at least as
//!   long as either firmware waits, so the printer's own check always speaks first.
//! * **Not holding → alert** (same switch). After reaching the target, Klipper accumulates
//!   `(target - hysteresis - temp)` per second and faults at `max_error` 120 °C·s; Marlin's
//!   thermal runaway protection faults after `THERMAL_PROTECTION_PERIOD` 40 s more than
//!   `THERMAL_PROTECTION_HYSTERESIS` 4 °C below target (bed: 20 s / 2 °C). printgate accumulates
//!   the same way with 240 °C·s (nozzle) and 600 °C·s (bed): a thermistor that fell out reads
//!   low while the heater runs flat out, which the firmware should catch first; printgate tells
//!   a person in case it did not.
//! * **Silence → warning** (trip only with `silence_trips`). While the printer is printing, no
//!   report for `silence_secs` (120 s), checked by [`ThermalWatchdog::tick`]. Not a trip by
//!   default: Wi-Fi trouble is far more likely than fire, and cutting power ends the print.
//!
//! Normal heat-up (no overshoot beyond the bands), cool-down after a print (target 0, falling)
//! and target changes mid-print never produce a verdict; the tests drive hundreds of randomised
//! realistic prints to show it.

use crate::printer::GcodeState;
use crate::printer::Model;
use crate::safety::config::{AutoPowerOffConfig, HeaterWatchConfig, WatchdogConfig};
use crate::safety::latch::{Heater, SafetyCause};
use std::collections::HashMap;

/// One report's temperatures (from the merged printer state) and the time it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalSample {
    /// Monotonic milliseconds (any fixed origin).
    pub now_ms: u64,
    pub nozzle: Option<f64>,
    pub nozzle_target: Option<f64>,
    pub bed: Option<f64>,
    pub bed_target: Option<f64>,
    pub gcode_state: GcodeState,
}

/// What the watchdog wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchdogVerdict {
    /// Cut power: hand the cause to `TripController::trip`.
    Trip(SafetyCause),
    /// Tell a person.
    Alert(SafetyCause),
}

impl WatchdogVerdict {
    pub fn cause(&self) -> &SafetyCause {
        match self {
            WatchdogVerdict::Trip(c) | WatchdogVerdict::Alert(c) => c,
        }
    }
    pub fn is_trip(&self) -> bool {
        matches!(self, WatchdogVerdict::Trip(_))
    }
}

/// Power off a finished printer once its nozzle has cooled (`[safety.auto_power_off]`).
pub fn auto_power_off_due(cfg: &AutoPowerOffConfig, sample: &ThermalSample) -> bool {
    cfg.enabled
        && sample.gcode_state == GcodeState::Finish
        && sample.nozzle.is_some_and(|t| t < cfg.nozzle_below_c)
}

const RING: usize = 64;
/// Longest time step counted into the "not holding" error (a gap in reports is not evidence).
const MAX_STEP_MS: u64 = 5_000;
/// Target changes smaller than this are noise.
const TARGET_EPSILON: f64 = 0.5;

/// Kinds of finding for one heater.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Finding {
    OverLimit {
        temp: f64,
        limit: f64,
    },
    Runaway {
        temp: f64,
        target: f64,
        rise: f64,
        window_secs: f64,
    },
    NotHeating {
        temp: f64,
        target: f64,
    },
    NotHolding {
        temp: f64,
        target: f64,
    },
}

#[derive(Debug, Clone)]
struct HeaterWatch {
    ring: [(u64, f32); RING],
    len: usize,
    head: usize,
    last_store_ms: u64,
    started: bool,
    last_ms: u64,
    target: f64,
    over_count: u32,
    over_tripped: bool,
    runaway_tripped: bool,
    approach_armed: bool,
    goal_temp: f64,
    goal_deadline_ms: u64,
    reached: bool,
    error: f64,
    fault_alerted: bool,
}

impl HeaterWatch {
    fn new() -> HeaterWatch {
        HeaterWatch {
            ring: [(0, 0.0); RING],
            len: 0,
            head: 0,
            last_store_ms: 0,
            started: false,
            last_ms: 0,
            target: 0.0,
            over_count: 0,
            over_tripped: false,
            runaway_tripped: false,
            approach_armed: false,
            goal_temp: 0.0,
            goal_deadline_ms: 0,
            reached: false,
            error: 0.0,
            fault_alerted: false,
        }
    }

    fn store(&mut self, now_ms: u64, temp: f64, spacing_ms: u64) {
        if self.len > 0 && now_ms.saturating_sub(self.last_store_ms) < spacing_ms {
            return;
        }
        self.ring[self.head] = (now_ms, temp as f32);
        self.head = (self.head + 1) % RING;
        self.len = (self.len + 1).min(RING);
        self.last_store_ms = now_ms;
    }

    fn min_since(&self, since_ms: u64) -> Option<f64> {
        let mut min: Option<f64> = None;
        for &(t, v) in self.ring.iter().take(self.len) {
            if t >= since_ms {
                let v = f64::from(v);
                min = Some(min.map_or(v, |m: f64| m.min(v)));
            }
        }
        min
    }

    /// Update with one reading; at most one trip finding and one alert finding.
    fn update(
        &mut self,
        cfg: &HeaterWatchConfig,
        limit: f64,
        over_limit_samples: u32,
        now_ms: u64,
        temp: f64,
        target: f64,
    ) -> (Option<Finding>, Option<Finding>) {
        let window_ms = (cfg.runaway_window_secs * 1000.0) as u64;
        let spacing_ms = (window_ms / (RING as u64 - 4)).max(250);
        let step_ms = if self.started {
            now_ms.saturating_sub(self.last_ms).min(MAX_STEP_MS)
        } else {
            0
        };
        let target_changed = !self.started || (target - self.target).abs() > TARGET_EPSILON;
        if target_changed {
            // Like Klipper: a new target restarts every trend check.
            self.len = 0;
            self.head = 0;
            self.approach_armed = false;
            self.reached = false;
            self.error = 0.0;
            self.fault_alerted = false;
            self.target = target;
        }
        self.started = true;
        self.last_ms = now_ms;
        self.store(now_ms, temp, spacing_ms);

        let mut trip = None;
        let mut alert = None;

        // Absolute limit.
        if temp > limit {
            self.over_count = self.over_count.saturating_add(1);
            if self.over_count >= over_limit_samples && !self.over_tripped {
                self.over_tripped = true;
                trip = Some(Finding::OverLimit { temp, limit });
            }
        } else {
            self.over_count = 0;
            if temp < limit - 5.0 {
                self.over_tripped = false;
            }
        }

        // Runaway: far above where it should be and still climbing.
        let threshold = if target > 0.0 {
            target + cfg.runaway_over_target_c
        } else {
            cfg.runaway_idle_floor_c
        };
        if temp > threshold {
            let floor = self
                .min_since(now_ms.saturating_sub(window_ms))
                .unwrap_or(temp);
            let rise = temp - floor;
            if rise >= cfg.runaway_rise_c && !self.runaway_tripped && trip.is_none() {
                self.runaway_tripped = true;
                trip = Some(Finding::Runaway {
                    temp,
                    target,
                    rise,
                    window_secs: cfg.runaway_window_secs,
                });
            }
        } else {
            self.runaway_tripped = false;
        }

        // Heating and holding (Klipper verify_heater style).
        if target > 0.0 {
            if temp >= target - cfg.hysteresis_c {
                self.approach_armed = false;
                self.reached = true;
                if temp <= target + cfg.hysteresis_c {
                    self.error = 0.0;
                }
            } else if self.reached {
                self.error += (target - cfg.hysteresis_c - temp) * step_ms as f64 / 1000.0;
                if self.error >= cfg.max_error_c_secs && !self.fault_alerted {
                    self.fault_alerted = true;
                    alert = Some(Finding::NotHolding { temp, target });
                }
            } else if !self.approach_armed {
                self.approach_armed = true;
                self.goal_temp = temp + cfg.heating_gain_c;
                self.goal_deadline_ms = now_ms + (cfg.check_gain_time_secs * 1000.0) as u64;
            } else if temp >= self.goal_temp {
                self.goal_temp = temp + cfg.heating_gain_c;
                self.goal_deadline_ms = now_ms + (cfg.check_gain_time_secs * 1000.0) as u64;
            } else if now_ms >= self.goal_deadline_ms && !self.fault_alerted {
                self.fault_alerted = true;
                alert = Some(Finding::NotHeating { temp, target });
            }
        }
        (trip, alert)
    }
}

#[derive(Debug, Clone)]
struct PrinterWatch {
    nozzle: HeaterWatch,
    bed: HeaterWatch,
    last_report_ms: u64,
    printing: bool,
    silence_reported: bool,
}

/// The watchdog for every printer. Not thread-safe by itself; one task owns it.
#[derive(Debug, Clone)]
pub struct ThermalWatchdog {
    cfg: WatchdogConfig,
    printers: HashMap<String, PrinterWatch>,
    /// Verdicts found alongside a more severe one, handed out by the next call.
    pending: Vec<WatchdogVerdict>,
}

impl ThermalWatchdog {
    pub fn new(cfg: WatchdogConfig) -> ThermalWatchdog {
        ThermalWatchdog {
            cfg,
            printers: HashMap::new(),
            pending: Vec::new(),
        }
    }

    pub fn config(&self) -> &WatchdogConfig {
        &self.cfg
    }

    /// Check one report. Returns the most severe new verdict (a trip before an alert); any other
    /// verdict found at the same time is returned by the next `observe` or `tick`.
    pub fn observe(
        &mut self,
        printer: &str,
        model: Model,
        s: &ThermalSample,
    ) -> Option<WatchdogVerdict> {
        if !self.cfg.enabled {
            return None;
        }
        let (nozzle_limit, bed_limit) = self.cfg.limits_for(model);
        if !self.printers.contains_key(printer) {
            self.printers.insert(
                printer.to_string(),
                PrinterWatch {
                    nozzle: HeaterWatch::new(),
                    bed: HeaterWatch::new(),
                    last_report_ms: s.now_ms,
                    printing: false,
                    silence_reported: false,
                },
            );
        }
        let w = self.printers.get_mut(printer)?;
        w.last_report_ms = s.now_ms;
        w.printing = s.gcode_state.is_active();
        w.silence_reported = false;

        let mut found: [(Heater, Option<Finding>, Option<Finding>); 2] =
            [(Heater::Nozzle, None, None), (Heater::Bed, None, None)];
        if let Some(t) = s.nozzle.filter(|t| t.is_finite()) {
            let (trip, alert) = w.nozzle.update(
                &self.cfg.nozzle,
                nozzle_limit,
                self.cfg.over_limit_samples,
                s.now_ms,
                t,
                s.nozzle_target.filter(|t| t.is_finite()).unwrap_or(0.0),
            );
            found[0] = (Heater::Nozzle, trip, alert);
        }
        if let Some(t) = s.bed.filter(|t| t.is_finite()) {
            let (trip, alert) = w.bed.update(
                &self.cfg.bed,
                bed_limit,
                self.cfg.over_limit_samples,
                s.now_ms,
                t,
                s.bed_target.filter(|t| t.is_finite()).unwrap_or(0.0),
            );
            found[1] = (Heater::Bed, trip, alert);
        }
        if found.iter().all(|(_, t, a)| t.is_none() && a.is_none()) {
            return self.pop_pending();
        }
        for (heater, trip, alert) in found {
            if let Some(f) = trip {
                self.pending
                    .push(WatchdogVerdict::Trip(cause(printer, heater, f)));
            }
            if let Some(f) = alert {
                let c = cause(printer, heater, f);
                self.pending.push(if self.cfg.heater_fault_trips {
                    WatchdogVerdict::Trip(c)
                } else {
                    WatchdogVerdict::Alert(c)
                });
            }
        }
        self.pop_pending()
    }

    fn pop_pending(&mut self) -> Option<WatchdogVerdict> {
        let i = self.pending.iter().position(WatchdogVerdict::is_trip).or(
            if self.pending.is_empty() {
                None
            } else {
                Some(0)
            },
        )?;
        Some(self.pending.remove(i))
    }

    /// Periodic check (call every second or so): silence while printing, plus any verdicts left
    /// over from `observe`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<WatchdogVerdict> {
        let mut out = std::mem::take(&mut self.pending);
        if !self.cfg.enabled {
            return out;
        }
        let limit_ms = self.cfg.silence_secs.saturating_mul(1000);
        for (name, w) in &mut self.printers {
            let silent = now_ms.saturating_sub(w.last_report_ms);
            if w.printing && !w.silence_reported && silent >= limit_ms {
                w.silence_reported = true;
                let c = SafetyCause::ReportSilence {
                    printer: name.clone(),
                    silent_secs: silent / 1000,
                };
                out.push(if self.cfg.silence_trips {
                    WatchdogVerdict::Trip(c)
                } else {
                    WatchdogVerdict::Alert(c)
                });
            }
        }
        out.sort_by_key(|v| !v.is_trip());
        out
    }

    /// Drop a printer's history (removed from the config, or re-paired).
    pub fn forget(&mut self, printer: &str) {
        self.printers.remove(printer);
    }
}

fn cause(printer: &str, heater: Heater, f: Finding) -> SafetyCause {
    let printer = printer.to_string();
    match f {
        Finding::OverLimit { temp, limit } => SafetyCause::OverTemperature {
            printer,
            heater,
            temp,
            limit,
        },
        Finding::Runaway {
            temp,
            target,
            rise,
            window_secs,
        } => SafetyCause::ThermalRunaway {
            printer,
            heater,
            temp,
            target,
            rise,
            window_secs,
        },
        Finding::NotHeating { temp, target } => SafetyCause::HeaterNotHeating {
            printer,
            heater,
            temp,
            target,
        },
        Finding::NotHolding { temp, target } => SafetyCause::HeaterNotHolding {
            printer,
            heater,
            temp,
            target,
        },
    }
}
