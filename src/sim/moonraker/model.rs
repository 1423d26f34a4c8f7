//! The simulated Klipper printer behind Moonraker: the printer objects (`webhooks`,
//! `print_stats`, `virtual_sdcard`, `display_status`, `extruder`, `heater_bed`, `toolhead`) with
//! the fields of Moonraker's `printer_objects.md`, the print state machine and a cheap analysis
//! of the gcode (slicer time estimate, layer markers, first temperatures). Pure logic: time only
//! moves through [`Printer::advance`].

use serde_json::{Map, Value, json};

use super::knobs::KlippyState;

/// `print_stats.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrintState {
    #[default]
    Standby,
    Printing,
    Paused,
    Complete,
    Cancelled,
    Error,
}

impl PrintState {
    pub fn as_str(self) -> &'static str {
        match self {
            PrintState::Standby => "standby",
            PrintState::Printing => "printing",
            PrintState::Paused => "paused",
            PrintState::Complete => "complete",
            PrintState::Cancelled => "cancelled",
            PrintState::Error => "error",
        }
    }
}

/// Where the gcode storage lives on a typical Klipper host (`virtual_sdcard.file_path`).
pub const GCODES_DIR: &str = "/home/pi/printer_data/gcodes";

/// The objects this simulator has (`printer.objects.list`).
pub const OBJECTS: [&str; 7] = [
    "webhooks",
    "print_stats",
    "virtual_sdcard",
    "display_status",
    "extruder",
    "heater_bed",
    "toolhead",
];

const AMBIENT: f64 = 22.0;
const EXTRUDER_RATE: f64 = 3.0; // °C per simulated second
const BED_RATE: f64 = 1.0;
const COOL_RATE: f64 = 0.5;
const DEFAULT_EXTRUDER_TARGET: f64 = 210.0;
const DEFAULT_BED_TARGET: f64 = 60.0;

/// What a cheap scan of a gcode file tells the simulator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcodeInfo {
    /// Slicer estimate in seconds (`; estimated printing time (normal mode) = 1h 2m 3s`,
    /// Cura's `;TIME:3723`).
    pub estimated_secs: Option<f64>,
    /// `SET_PRINT_STATS_INFO TOTAL_LAYER=n`, Cura's `;LAYER_COUNT:n`, else the number of
    /// `;LAYER_CHANGE` / `;LAYER:` markers.
    pub layers: Option<u32>,
    pub extruder_temp: Option<f64>,
    pub bed_temp: Option<f64>,
    /// `; filament used [mm] = 1234.5`.
    pub filament_mm: Option<f64>,
}

/// Scan a gcode file (bounded by its size; the whole file is in memory anyway).
pub fn analyse_gcode(bytes: &[u8]) -> GcodeInfo {
    let text = String::from_utf8_lossy(bytes);
    let mut info = GcodeInfo::default();
    let (mut layer_change, mut layer_colon) = (0u32, 0u32);
    let mut declared_layers = None;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix(';') {
            let c = rest.trim();
            if c.starts_with("LAYER_CHANGE") {
                layer_change = layer_change.saturating_add(1);
            } else if let Some(n) = c.strip_prefix("LAYER_COUNT:") {
                declared_layers = n.trim().parse().ok().or(declared_layers);
            } else if c.starts_with("LAYER:") {
                layer_colon = layer_colon.saturating_add(1);
            } else if let Some(t) = c.strip_prefix("TIME:") {
                if info.estimated_secs.is_none() {
                    info.estimated_secs = t.trim().parse::<f64>().ok().filter(|v| *v > 0.0);
                }
            } else if c.starts_with("estimated printing time")
                && info.estimated_secs.is_none()
                && let Some((_, v)) = c.split_once('=')
            {
                info.estimated_secs = parse_duration(v);
            } else if c.starts_with("filament used [mm]")
                && let Some((_, v)) = c.split_once('=')
            {
                info.filament_mm = v
                    .split(',')
                    .filter_map(|p| p.trim().parse::<f64>().ok())
                    .reduce(|a, b| a + b);
            }
            continue;
        }
        let code = line.split(';').next().unwrap_or("").trim();
        let upper = code.to_ascii_uppercase();
        if let Some(rest) = upper.strip_prefix("SET_PRINT_STATS_INFO") {
            if let Some(n) = word_value(rest, "TOTAL_LAYER=") {
                declared_layers = n.parse().ok().or(declared_layers);
            }
        } else if upper.starts_with("M104 ") || upper.starts_with("M109 ") {
            if info.extruder_temp.is_none() {
                info.extruder_temp = s_value(&upper).filter(|t| *t > 0.0);
            }
        } else if (upper.starts_with("M140 ") || upper.starts_with("M190 "))
            && info.bed_temp.is_none()
        {
            info.bed_temp = s_value(&upper).filter(|t| *t > 0.0);
        }
    }
    info.layers = declared_layers.or_else(|| {
        let counted = layer_change.max(layer_colon);
        (counted > 0).then_some(counted)
    });
    info
}

/// `1d 2h 3m 4s` → seconds.
fn parse_duration(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for tok in s.split_whitespace() {
        let (num, unit) = tok.split_at(tok.len().saturating_sub(1));
        let Ok(n) = num.parse::<f64>() else { continue };
        let mult = match unit {
            "d" => 86400.0,
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            _ => continue,
        };
        total += n * mult;
        any = true;
    }
    (any && total > 0.0).then_some(total)
}

/// The `S` parameter of an (upper-cased) gcode line.
fn s_value(line: &str) -> Option<f64> {
    line.split_whitespace()
        .skip(1)
        .find_map(|w| w.strip_prefix('S'))
        .and_then(|v| v.parse().ok())
}

/// `KEY=value` inside a command's parameters.
fn word_value<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    params.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// One heater (`extruder`, `heater_bed`).
#[derive(Debug, Clone, PartialEq)]
pub struct Heater {
    pub temperature: f64,
    pub target: f64,
    pub power: f64,
    rate: f64,
}

impl Heater {
    fn new(rate: f64) -> Self {
        Self {
            temperature: AMBIENT,
            target: 0.0,
            power: 0.0,
            rate,
        }
    }

    fn advance(&mut self, dt: f64) {
        if self.target > 0.0 {
            let diff = self.target - self.temperature;
            let step = (self.rate * dt).min(diff.abs());
            self.temperature += step.copysign(diff);
            self.power = if diff > 1.0 { 1.0 } else { 0.35 };
        } else {
            let diff = AMBIENT - self.temperature;
            self.temperature += (COOL_RATE * dt).min(diff.abs()).copysign(diff);
            self.power = 0.0;
        }
        self.temperature = round2(self.temperature);
    }

    fn at_target(&self) -> bool {
        self.target <= 0.0 || self.temperature >= self.target - 2.0
    }

    fn status(&self) -> Value {
        json!({"temperature": self.temperature, "target": self.target, "power": self.power})
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The job being printed.
#[derive(Debug, Clone, PartialEq)]
struct Job {
    estimated_secs: f64,
    filament_mm: f64,
}

/// Why a print command was refused (Klipper's gcode error → JSON-RPC code 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KlipperError(pub String);

/// The printer and its objects.
#[derive(Debug, Clone)]
pub struct Printer {
    klippy: KlippyState,
    /// `Some` after an emergency stop (overrides the default shutdown message).
    shutdown_reason: Option<String>,
    pub print_state: PrintState,
    pub filename: String,
    message: String,
    total_duration: f64,
    print_duration: f64,
    filament_used: f64,
    pub total_layer: Option<u32>,
    pub current_layer: Option<u32>,
    file_path: Option<String>,
    file_size: u64,
    file_position: u64,
    pub progress: f64,
    is_active: bool,
    display_message: String,
    pub extruder: Heater,
    pub bed: Heater,
    homed_axes: String,
    print_time: f64,
    estimated_print_time: f64,
    job: Option<Job>,
    pub jobs_started: u64,
    /// Set when Klippy (re)started and the full status has not been published yet.
    pub klippy_started_pending: bool,
}

impl Default for Printer {
    fn default() -> Self {
        Self::new()
    }
}

impl Printer {
    pub fn new() -> Self {
        Self {
            klippy: KlippyState::Ready,
            shutdown_reason: None,
            print_state: PrintState::Standby,
            filename: String::new(),
            message: String::new(),
            total_duration: 0.0,
            print_duration: 0.0,
            filament_used: 0.0,
            total_layer: None,
            current_layer: None,
            file_path: None,
            file_size: 0,
            file_position: 0,
            progress: 0.0,
            is_active: false,
            display_message: String::new(),
            extruder: Heater::new(EXTRUDER_RATE),
            bed: Heater::new(BED_RATE),
            homed_axes: String::new(),
            print_time: 0.0,
            estimated_print_time: 0.0,
            job: None,
            jobs_started: 0,
            klippy_started_pending: true,
        }
    }

    pub fn klippy(&self) -> KlippyState {
        self.klippy
    }

    pub fn state_message(&self) -> String {
        match (&self.shutdown_reason, self.klippy) {
            (Some(r), KlippyState::Shutdown) => r.clone(),
            _ => self.klippy.default_message().to_string(),
        }
    }

    /// Follow the `klippy_state` knob. Entering shutdown/error ends a running print with an
    /// error; coming back to `ready` from any other state is a Klippy restart (objects reset,
    /// full status published again).
    pub fn set_klippy(&mut self, state: KlippyState) {
        if state == self.klippy {
            return;
        }
        let was = self.klippy;
        self.klippy = state;
        if state != KlippyState::Shutdown {
            self.shutdown_reason = None;
        }
        match state {
            KlippyState::Shutdown | KlippyState::Error => self.fail_print(),
            KlippyState::Ready if was != KlippyState::Ready => {
                let jobs = self.jobs_started;
                *self = Printer {
                    jobs_started: jobs,
                    ..Printer::new()
                };
            }
            KlippyState::Startup | KlippyState::Disconnected => self.klippy_started_pending = true,
            KlippyState::Ready => {}
        }
    }

    /// `printer.emergency_stop`: Klippy shuts down.
    pub fn emergency_stop(&mut self) {
        self.klippy = KlippyState::Shutdown;
        self.shutdown_reason = Some("Shutdown due to webhooks request".into());
        self.fail_print();
    }

    fn fail_print(&mut self) {
        if matches!(self.print_state, PrintState::Printing | PrintState::Paused) {
            self.print_state = PrintState::Error;
            self.message = self.state_message();
            self.is_active = false;
            self.job = None;
        }
        self.extruder.target = 0.0;
        self.bed.target = 0.0;
    }

    /// Klipper's `SDCARD_PRINT_FILE`: start printing `name` (already resolved in storage).
    pub fn start_print(
        &mut self,
        name: &str,
        bytes: &[u8],
        default_secs: f64,
        default_layers: Option<u32>,
    ) -> Result<(), KlipperError> {
        if self.print_state == PrintState::Printing {
            return Err(KlipperError("SD busy".into()));
        }
        let info = analyse_gcode(bytes);
        self.print_state = PrintState::Printing;
        self.filename = name.to_string();
        self.message.clear();
        self.total_duration = 0.0;
        self.print_duration = 0.0;
        self.filament_used = 0.0;
        self.total_layer = info.layers.or(default_layers);
        self.current_layer = self.total_layer.map(|_| 0);
        self.file_path = Some(format!("{GCODES_DIR}/{name}"));
        self.file_size = bytes.len() as u64;
        self.file_position = 0;
        self.progress = 0.0;
        self.is_active = true;
        self.homed_axes = "xyz".into();
        self.extruder.target = info.extruder_temp.unwrap_or(DEFAULT_EXTRUDER_TARGET);
        self.bed.target = info.bed_temp.unwrap_or(DEFAULT_BED_TARGET);
        self.job = Some(Job {
            estimated_secs: info.estimated_secs.unwrap_or(default_secs).max(1.0),
            filament_mm: info.filament_mm.unwrap_or(1000.0),
        });
        self.jobs_started += 1;
        Ok(())
    }

    /// Klipper's `PAUSE` (a no-op unless printing).
    pub fn pause(&mut self) {
        if self.print_state == PrintState::Printing {
            self.print_state = PrintState::Paused;
            self.is_active = false;
        }
    }

    /// Klipper's `RESUME` (a no-op unless paused).
    pub fn resume(&mut self) {
        if self.print_state == PrintState::Paused {
            self.print_state = PrintState::Printing;
            self.is_active = true;
        }
    }

    /// Klipper's `CANCEL_PRINT` (a no-op unless printing or paused).
    pub fn cancel(&mut self) {
        if matches!(self.print_state, PrintState::Printing | PrintState::Paused) {
            self.print_state = PrintState::Cancelled;
            self.is_active = false;
            self.job = None;
            self.extruder.target = 0.0;
            self.bed.target = 0.0;
        }
    }

    /// Jump a running (or paused) print to its end.
    pub fn finish_now(&mut self) {
        if let Some(job) = &self.job {
            let rest = (job.estimated_secs - self.print_duration).max(0.0);
            self.print_duration += rest;
            self.total_duration += rest;
            self.complete();
        }
    }

    fn complete(&mut self) {
        self.print_state = PrintState::Complete;
        self.progress = 1.0;
        self.file_position = self.file_size;
        self.current_layer = self.total_layer;
        if let Some(job) = self.job.take() {
            self.filament_used = job.filament_mm;
        }
        self.is_active = false;
        self.extruder.target = 0.0;
        self.bed.target = 0.0;
    }

    /// `M104`/`M109`/`M140`/`M190` and the print macros of a `printer.gcode.script`.
    pub fn run_gcode_line(&mut self, line: &str) {
        let code = line
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_uppercase();
        let cmd = code.split_whitespace().next().unwrap_or("");
        match cmd {
            "M104" | "M109" => {
                if let Some(t) = s_value(&code) {
                    self.extruder.target = t.max(0.0);
                }
            }
            "M140" | "M190" => {
                if let Some(t) = s_value(&code) {
                    self.bed.target = t.max(0.0);
                }
            }
            "M112" => self.emergency_stop(),
            "PAUSE" => self.pause(),
            "RESUME" => self.resume(),
            "CANCEL_PRINT" => self.cancel(),
            "M117" => {
                self.display_message = line.trim().get(4..).unwrap_or("").trim().to_string();
            }
            "G28" => self.homed_axes = "xyz".into(),
            _ => {}
        }
    }

    /// Move simulated time forward by `dt` seconds.
    pub fn advance(&mut self, dt: f64) {
        if !(dt.is_finite() && dt > 0.0) {
            return;
        }
        self.extruder.advance(dt);
        self.bed.advance(dt);
        self.estimated_print_time += dt;
        match self.print_state {
            PrintState::Printing => {
                self.total_duration += dt;
                self.print_time = self.estimated_print_time;
                // Heating (M190/M109 in the start gcode) does not count as print time.
                if !(self.extruder.at_target() && self.bed.at_target()) {
                    return;
                }
                let Some(job) = self.job.clone() else { return };
                self.print_duration = (self.print_duration + dt).min(job.estimated_secs);
                let p = (self.print_duration / job.estimated_secs).clamp(0.0, 1.0);
                self.progress = round4(p);
                self.file_position = (p * self.file_size as f64) as u64;
                self.filament_used = round2(p * job.filament_mm);
                if let Some(total) = self.total_layer {
                    let layer = ((p * f64::from(total)).ceil() as u32).clamp(1, total.max(1));
                    self.current_layer = Some(layer);
                }
                if p >= 1.0 {
                    self.complete();
                }
            }
            PrintState::Paused => self.total_duration += dt,
            _ => {}
        }
    }

    /// The full status of one object, `None` for objects this printer does not have.
    pub fn object_status(&self, name: &str) -> Option<Value> {
        let v = match name {
            "webhooks" => json!({
                "state": self.klippy.as_str(),
                "state_message": self.state_message(),
            }),
            "print_stats" => json!({
                "filename": self.filename,
                "total_duration": round2(self.total_duration),
                "print_duration": round2(self.print_duration),
                "filament_used": self.filament_used,
                "state": self.print_state.as_str(),
                "message": self.message,
                "info": {"total_layer": self.total_layer, "current_layer": self.current_layer},
            }),
            "virtual_sdcard" => json!({
                "file_path": self.file_path,
                "progress": self.progress,
                "is_active": self.is_active,
                "file_position": self.file_position,
                "file_size": self.file_size,
            }),
            "display_status" => json!({
                "progress": self.progress,
                "message": self.display_message,
            }),
            "extruder" => self.extruder.status(),
            "heater_bed" => self.bed.status(),
            "toolhead" => json!({
                "homed_axes": self.homed_axes,
                "print_time": round2(self.print_time),
                "estimated_print_time": round2(self.estimated_print_time),
            }),
            _ => return None,
        };
        Some(v)
    }

    /// Every object's full status.
    pub fn full_status(&self) -> Map<String, Value> {
        OBJECTS
            .iter()
            .filter_map(|o| self.object_status(o).map(|v| (o.to_string(), v)))
            .collect()
    }

    /// `printer.objects.query`: `{"print_stats": null, "extruder": ["target"]}` → the requested
    /// fields of the known objects (unknown objects are omitted, unknown fields skipped).
    pub fn query(&self, objects: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, fields) in objects {
            let Some(Value::Object(all)) = self.object_status(name) else {
                continue;
            };
            let picked: Map<String, Value> = match fields {
                Value::Array(list) => all
                    .into_iter()
                    .filter(|(k, _)| list.iter().any(|f| f.as_str() == Some(k)))
                    .collect(),
                _ => all,
            };
            out.insert(name.clone(), Value::Object(picked));
        }
        out
    }
}

fn round4(v: f64) -> f64 {
    (v * 10000.0).round() / 10000.0
}

/// The fields of `now` that differ from `before`, per object (Klipper's subscription update).
pub fn status_delta(before: &Map<String, Value>, now: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (obj, fields) in now {
        let Value::Object(fields) = fields else {
            continue;
        };
        let prev = before.get(obj).and_then(Value::as_object);
        let changed: Map<String, Value> = fields
            .iter()
            .filter(|(k, v)| prev.and_then(|p| p.get(*k)) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !changed.is_empty() {
            out.insert(obj.clone(), Value::Object(changed));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyses_prusa_and_cura_headers() {
        let prusa = b"M140 S65\nM104 S215\n;LAYER_CHANGE\nG1 X1\n;LAYER_CHANGE\n; filament used [mm] = 1200.5\n; estimated printing time (normal mode) = 1h 2m 3s\n";
        let i = analyse_gcode(prusa);
        assert_eq!(i.estimated_secs, Some(3723.0));
        assert_eq!(i.layers, Some(2));
        assert_eq!(i.extruder_temp, Some(215.0));
        assert_eq!(i.bed_temp, Some(65.0));
        assert_eq!(i.filament_mm, Some(1200.5));
        let cura = b";TIME:600\n;LAYER_COUNT:12\n;LAYER:0\n;LAYER:1\nM190 S50\n";
        let i = analyse_gcode(cura);
        assert_eq!(i.estimated_secs, Some(600.0));
        assert_eq!(i.layers, Some(12));
        assert_eq!(i.bed_temp, Some(50.0));
        assert_eq!(analyse_gcode(b"\xff\xfe garbage"), GcodeInfo::default());
    }

    #[test]
    fn print_runs_heats_and_completes() {
        let mut p = Printer::new();
        p.start_print("a.gcode", b";TIME:100\nM104 S200\nM140 S60\n", 600.0, None)
            .unwrap();
        assert_eq!(p.print_state, PrintState::Printing);
        assert_eq!(
            p.start_print("b.gcode", b"", 1.0, None),
            Err(KlipperError("SD busy".into()))
        );
        p.advance(1.0);
        assert_eq!(p.progress, 0.0, "still heating");
        for _ in 0..100 {
            p.advance(5.0);
        }
        assert_eq!(p.print_state, PrintState::Complete);
        assert_eq!(p.progress, 1.0);
        assert_eq!(p.extruder.target, 0.0);
        assert_eq!(p.filename, "a.gcode");
    }

    #[test]
    fn pause_resume_cancel_and_estop() {
        let mut p = Printer::new();
        p.pause();
        assert_eq!(p.print_state, PrintState::Standby);
        p.start_print("a.gcode", b"", 60.0, Some(3)).unwrap();
        p.pause();
        assert_eq!(p.print_state, PrintState::Paused);
        p.resume();
        assert_eq!(p.print_state, PrintState::Printing);
        p.cancel();
        assert_eq!(p.print_state, PrintState::Cancelled);
        p.start_print("a.gcode", b"", 60.0, Some(3)).unwrap();
        p.emergency_stop();
        assert_eq!(p.print_state, PrintState::Error);
        assert_eq!(p.klippy(), KlippyState::Shutdown);
        assert_eq!(p.state_message(), "Shutdown due to webhooks request");
        p.set_klippy(KlippyState::Ready);
        assert_eq!(p.print_state, PrintState::Standby);
        assert!(p.klippy_started_pending);
    }

    #[test]
    fn delta_and_query_pick_fields() {
        let mut p = Printer::new();
        let before = p.full_status();
        p.run_gcode_line("M104 S200");
        let d = status_delta(&before, &p.full_status());
        assert_eq!(
            d,
            json!({"extruder": {"target": 200.0}})
                .as_object()
                .unwrap()
                .clone()
        );
        let q = p.query(
            json!({"extruder": ["target"], "nope": null, "webhooks": null})
                .as_object()
                .unwrap(),
        );
        assert_eq!(q["extruder"], json!({"target": 200.0}));
        assert!(!q.contains_key("nope"));
        assert_eq!(q["webhooks"]["state"], "ready");
    }
}
