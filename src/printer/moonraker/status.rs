//! Klipper printer objects as Moonraker reports them (`printer.objects.query` results and the
//! `{instance}/klipper/status` deltas of the `[mqtt]` component) merged into one map, and the
//! vendor-neutral [`PrinterState`] computed from that map. Pure: no I/O.
//!
//! Objects printgate reads (Moonraker's "Printer Objects" documentation): `webhooks` (Klippy
//! ready/startup/shutdown/error), `print_stats` (state, filename, durations, layers),
//! `virtual_sdcard` and `display_status` (progress), `extruder` and `heater_bed`
//! (temperature, target).

use crate::printer::model::subtask_id_in_remote_name;
use crate::printer::{GcodeState, PrinterState};
use serde_json::{Map, Value};

/// The objects printgate queries and expects in `status_objects`.
pub const OBJECTS: [&str; 6] = [
    "webhooks",
    "print_stats",
    "virtual_sdcard",
    "display_status",
    "extruder",
    "heater_bed",
];

/// The merged state of Klipper's objects, object name → field → value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KlipperStatus {
    objects: Map<String, Value>,
}

/// Why a status payload was not merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no \"status\" object in the payload")]
    NoStatus,
    #[error("object {0:?} is not a JSON object")]
    NotAnObject(String),
}

impl KlipperStatus {
    /// Replace everything with a full query result (`{"eventtime":…,"status":{…}}` or just the
    /// status object).
    pub fn replace(&mut self, result: &Value) -> Result<(), StatusError> {
        let status = status_of(result)?;
        let mut objects = Map::new();
        for (name, fields) in status {
            let Value::Object(f) = fields else {
                return Err(StatusError::NotAnObject(name.clone()));
            };
            objects.insert(name.clone(), Value::Object(f.clone()));
        }
        self.objects = objects;
        Ok(())
    }

    /// Merge a delta: each object's fields replace the ones held (Klipper sends changed fields
    /// only; nested values such as `print_stats.info` are replaced whole).
    pub fn merge(&mut self, payload: &Value) -> Result<(), StatusError> {
        let status = status_of(payload)?;
        // Check everything first so a bad payload changes nothing.
        if let Some((name, _)) = status.iter().find(|(_, v)| !v.is_object()) {
            return Err(StatusError::NotAnObject(name.clone()));
        }
        for (name, fields) in status {
            if let Value::Object(f) = fields {
                self.set_fields(name, f);
            }
        }
        Ok(())
    }

    /// Merge one field published under `{instance}/klipper/state/{object}/{field}`
    /// (`publish_split_status`), payload `{"eventtime":…,"value":…}`.
    pub fn merge_split(&mut self, object: &str, field: &str, payload: &Value) -> bool {
        let Some(value) = payload.get("value") else {
            return false;
        };
        let mut f = Map::new();
        f.insert(field.to_string(), value.clone());
        self.set_fields(object, &f);
        true
    }

    fn set_fields(&mut self, name: &str, fields: &Map<String, Value>) {
        let entry = self
            .objects
            .entry(name.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(held) = entry {
            for (k, v) in fields {
                held.insert(k.clone(), v.clone());
            }
        }
    }

    fn field(&self, object: &str, field: &str) -> Option<&Value> {
        self.objects.get(object)?.get(field)
    }

    fn f64(&self, object: &str, field: &str) -> Option<f64> {
        self.field(object, field)?
            .as_f64()
            .filter(|v| v.is_finite())
    }

    fn str(&self, object: &str, field: &str) -> Option<&str> {
        self.field(object, field)?.as_str()
    }

    /// Klippy's state from `webhooks.state` (`ready`, `startup`, `shutdown`, `error`).
    pub fn klippy_state(&self) -> Option<&str> {
        self.str("webhooks", "state")
    }

    /// The vendor-neutral state. `print_stats.state`: standby → IDLE, printing → RUNNING,
    /// paused → PAUSE, complete → FINISH, cancelled/error → FAILED. While Klippy is not
    /// `ready` the state is UNKNOWN (nothing may start) with Klippy's message.
    pub fn to_state(&self) -> PrinterState {
        let print_state = self.str("print_stats", "state").unwrap_or("");
        let mut gcode_state = match print_state {
            "standby" => GcodeState::Idle,
            "printing" => GcodeState::Running,
            "paused" => GcodeState::Pause,
            "complete" => GcodeState::Finish,
            "cancelled" | "error" => GcodeState::Failed,
            _ => GcodeState::Unknown,
        };
        let mut message = match (print_state, self.str("print_stats", "message")) {
            ("error", Some(m)) if !m.is_empty() => Some(format!("print error: {}", clip(m))),
            _ => None,
        };
        match self.klippy_state() {
            Some("ready") | None => {}
            Some(other) => {
                gcode_state = GcodeState::Unknown;
                let detail = self
                    .str("webhooks", "state_message")
                    .map(clip)
                    .unwrap_or_default();
                message = Some(format!("Klipper is {}: {detail}", clip(other)));
            }
        }
        let progress = self
            .f64("display_status", "progress")
            .filter(|p| *p > 0.0)
            .or_else(|| self.f64("virtual_sdcard", "progress"))
            .map(|p| p.clamp(0.0, 1.0));
        let print_duration = self.f64("print_stats", "print_duration");
        let remaining_minutes = match (gcode_state, progress, print_duration) {
            (GcodeState::Running | GcodeState::Pause, Some(p), Some(d)) if p > 0.001 => {
                let left = d / p - d;
                Some((left / 60.0).round().clamp(0.0, 1e6) as u32)
            }
            (GcodeState::Finish, _, _) => Some(0),
            _ => None,
        };
        let info_u32 = |k: &str| {
            self.field("print_stats", "info")
                .and_then(|i| i.get(k))
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let filename = self
            .str("print_stats", "filename")
            .filter(|f| !f.is_empty())
            .map(|f| clip(f).to_string());
        PrinterState {
            gcode_state,
            percent: progress.map(|p| (p * 100.0).round() as u32),
            remaining_minutes,
            layer: info_u32("current_layer"),
            total_layers: info_u32("total_layer"),
            nozzle_temp: self.f64("extruder", "temperature"),
            nozzle_target: self.f64("extruder", "target"),
            bed_temp: self.f64("heater_bed", "temperature"),
            bed_target: self.f64("heater_bed", "target"),
            chamber_temp: None,
            subtask_id: filename
                .as_deref()
                .and_then(subtask_id_in_remote_name)
                .map(|id| id.to_string()),
            subtask_name: filename.clone(),
            gcode_file: filename,
            print_error: 0,
            hms: Vec::new(),
            sdcard: None,
            requires_signed_commands: None,
            chamber_light_on: None,
            wifi_signal: None,
            firmware: None,
            status_message: message,
            filament: None,
        }
    }
}

fn status_of(payload: &Value) -> Result<&Map<String, Value>, StatusError> {
    match payload.get("status") {
        Some(Value::Object(s)) => Ok(s),
        Some(_) => Err(StatusError::NoStatus),
        None => match payload {
            // A bare status object (no eventtime wrapper) is accepted too.
            Value::Object(m) if !m.contains_key("eventtime") => Ok(m),
            _ => Err(StatusError::NoStatus),
        },
    }
}

/// Text from the printer, bounded for display and logs.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full() -> Value {
        json!({"eventtime": 100.0, "status": {
            "webhooks": {"state": "ready", "state_message": "Printer is ready"},
            "print_stats": {"state": "standby", "filename": "", "print_duration": 0.0,
                            "info": {"current_layer": null, "total_layer": null}},
            "virtual_sdcard": {"progress": 0.0, "is_active": false},
            "display_status": {"progress": 0.0, "message": null},
            "extruder": {"temperature": 24.5, "target": 0.0},
            "heater_bed": {"temperature": 23.9, "target": 0.0}
        }})
    }

    #[test]
    fn full_then_deltas() {
        let mut s = KlipperStatus::default();
        s.replace(&full()).unwrap();
        let st = s.to_state();
        assert_eq!(st.gcode_state, GcodeState::Idle);
        assert_eq!(st.nozzle_temp, Some(24.5));
        assert_eq!(st.gcode_file, None);
        s.merge(&json!({"eventtime": 101.0, "status": {
            "print_stats": {"state": "printing", "filename": "pg-4242.gcode", "print_duration": 600.0,
                            "info": {"current_layer": 12, "total_layer": 100}},
            "virtual_sdcard": {"progress": 0.25},
            "extruder": {"target": 215.0}
        }}))
        .unwrap();
        let st = s.to_state();
        assert_eq!(st.gcode_state, GcodeState::Running);
        assert_eq!(st.subtask_id.as_deref(), Some("4242"));
        assert_eq!(st.percent, Some(25));
        assert_eq!(st.remaining_minutes, Some(30));
        assert_eq!((st.layer, st.total_layers), (Some(12), Some(100)));
        // The delta kept the temperature it did not mention.
        assert_eq!(
            (st.nozzle_temp, st.nozzle_target),
            (Some(24.5), Some(215.0))
        );
    }

    #[test]
    fn states_map_and_klippy_not_ready_blocks() {
        let mut s = KlipperStatus::default();
        s.replace(&full()).unwrap();
        for (ks, g) in [
            ("standby", GcodeState::Idle),
            ("printing", GcodeState::Running),
            ("paused", GcodeState::Pause),
            ("complete", GcodeState::Finish),
            ("cancelled", GcodeState::Failed),
            ("error", GcodeState::Failed),
            ("weird", GcodeState::Unknown),
        ] {
            s.merge(&json!({"status": {"print_stats": {"state": ks}}}))
                .unwrap();
            assert_eq!(s.to_state().gcode_state, g, "{ks}");
        }
        s.merge(&json!({"status": {"print_stats": {"state": "standby"},
            "webhooks": {"state": "shutdown", "state_message": "MCU 'mcu' shutdown: Timer too close"}}}))
            .unwrap();
        let st = s.to_state();
        assert_eq!(st.gcode_state, GcodeState::Unknown);
        assert!(!st.gcode_state.is_startable());
        assert!(st.status_message.unwrap().contains("Timer too close"));
    }

    #[test]
    fn bad_payloads_change_nothing() {
        let mut s = KlipperStatus::default();
        s.replace(&full()).unwrap();
        let before = s.clone();
        assert_eq!(
            s.merge(&json!({"eventtime": 1.0})),
            Err(StatusError::NoStatus)
        );
        assert!(
            s.merge(&json!({"status": {"extruder": 5, "print_stats": {"state": "printing"}}}))
                .is_err()
        );
        assert!(s.merge(&json!([1, 2])).is_err());
        assert_eq!(s, before);
        // Non-finite / wrong-typed values are ignored, not trusted.
        s.merge(&json!({"status": {"extruder": {"temperature": "hot"}}}))
            .unwrap();
        assert_eq!(s.to_state().nozzle_temp, None);
    }

    #[test]
    fn split_status_fields() {
        let mut s = KlipperStatus::default();
        s.replace(&full()).unwrap();
        assert!(s.merge_split(
            "heater_bed",
            "target",
            &json!({"eventtime": 5.0, "value": 60.0})
        ));
        assert!(!s.merge_split("heater_bed", "target", &json!({"eventtime": 5.0})));
        assert_eq!(s.to_state().bed_target, Some(60.0));
    }
}
