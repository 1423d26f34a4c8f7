//! The report side of the Bambu protocol (docs/bambu-protocol.md §3): lenient decoding of payloads from
//! `device/<serial>/report`, classification into status pushes, command acks and version
//! answers, the per-printer merged report document (Bambu Studio's `json_diff` rule: `msg` 0
//! replaces, deltas deep-merge, arrays are replaced wholesale), and the typed
//! [`PrinterState`] read from the merged document. Pure: no I/O, never panics on input.

use crate::printer::Model;
use crate::printer::state::{CommandAck, GcodeState, HmsEntry, PrinterState};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Payloads above this size are dropped (a full H2D report is ~32 KB).
pub const MAX_REPORT_BYTES: usize = 1 << 20;

/// How many recent push `sequence_id`s are remembered for duplicate detection.
const RECENT_PUSHES: usize = 16;

/// `print.fun` bit set when the printer requires signed commands (Developer Mode off).
pub const FUN_REQUIRES_SIGNATURE: u64 = 0x2000_0000;

/// Why a payload was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report of {0} bytes is larger than the 1 MiB limit; dropped")]
    TooLarge(usize),
    #[error("report is not valid JSON ({0}); dropped")]
    Malformed(String),
    #[error("report is not a JSON object; dropped")]
    NotObject,
}

/// One decoded message from the report topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `print.command == "push_status"`; the whole message (rooted at the top).
    Push(Value),
    /// Answer to `info.get_version`.
    Version {
        firmware: Option<String>,
        ack: CommandAck,
    },
    /// Acknowledgement (or echo) of a command, correlated by `command` + `sequence_id`.
    Ack(CommandAck),
    /// Anything else (`mc_print` log lines, unknown sections): ignored.
    Other,
}

/// Decode a payload leniently: size limit, trailing NUL/whitespace stripped, UTF-8 with a
/// Latin-1 fallback, must be a JSON object.
pub fn decode(bytes: &[u8]) -> Result<Map<String, Value>, ReportError> {
    if bytes.len() > MAX_REPORT_BYTES {
        tracing::warn!(
            bytes = bytes.len(),
            limit = MAX_REPORT_BYTES,
            "dropping oversize printer report"
        );
        return Err(ReportError::TooLarge(bytes.len()));
    }
    let mut end = bytes.len();
    while end > 0 && matches!(bytes.get(end - 1), Some(&b) if b == 0 || b.is_ascii_whitespace()) {
        end -= 1;
    }
    let trimmed = bytes.get(..end).unwrap_or_default();
    let text: std::borrow::Cow<'_, str> = match std::str::from_utf8(trimmed) {
        Ok(s) => s.into(),
        Err(_) => trimmed
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into(),
    };
    let text = text.trim_start_matches('\u{feff}');
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ReportError::NotObject),
        Err(e) => Err(ReportError::Malformed(e.to_string())),
    }
}

/// Classify a decoded message (§3.1, §3.8).
pub fn classify(msg: Map<String, Value>) -> Message {
    let is_push = msg
        .get("print")
        .and_then(|p| p.get("command"))
        .and_then(Value::as_str)
        == Some("push_status");
    if is_push {
        return Message::Push(Value::Object(msg));
    }
    if let Some(info) = msg.get("info").and_then(Value::as_object)
        && info.get("command").and_then(Value::as_str) == Some("get_version")
    {
        let firmware = info
            .get("module")
            .and_then(Value::as_array)
            .and_then(|mods| {
                mods.iter()
                    .find(|m| m.get("name").and_then(Value::as_str) == Some("ota"))
            })
            .and_then(|m| m.get("sw_ver"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(ack) = parse_ack(info) {
            return Message::Version { firmware, ack };
        }
    }
    for (key, section) in &msg {
        if key == "mc_print" {
            continue;
        }
        if let Some(section) = section.as_object()
            && let Some(ack) = parse_ack(section)
        {
            return Message::Ack(ack);
        }
    }
    Message::Other
}

fn parse_ack(section: &Map<String, Value>) -> Option<CommandAck> {
    let command = section.get("command")?.as_str()?.to_string();
    let sequence_id = section.get("sequence_id").and_then(id_string)?;
    let success = section.get("result").and_then(Value::as_str).and_then(|r| {
        let r = r.trim().to_ascii_lowercase();
        if r.starts_with("fail") {
            Some(false)
        } else if r == "success" || r == "ok" {
            Some(true)
        } else {
            None
        }
    });
    let reason = section
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    let err_code = section.get("err_code").and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    Some(CommandAck {
        command,
        sequence_id,
        success,
        reason,
        err_code,
    })
}

/// A decimal id that may arrive as a string or an integer.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What [`ReportMerger::ingest`] did with one payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    /// A full report replaced the document.
    Full,
    /// A delta was merged. `trusted` is false while no full report has been seen.
    Delta {
        trusted: bool,
    },
    /// Same push delivered twice (same `sequence_id` and content): not merged again.
    Duplicate,
    Version {
        firmware: Option<String>,
        ack: CommandAck,
    },
    Ack(CommandAck),
    Ignored,
}

/// The merged report document of one printer on one connection (§3.3).
#[derive(Debug, Default, Clone)]
pub struct ReportMerger {
    doc: Option<Value>,
    have_full: bool,
    pushall_wanted: bool,
    untrusted_deltas: u64,
    recent: VecDeque<(String, u64)>,
}

impl ReportMerger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode, classify and (for pushes) merge one payload.
    pub fn ingest(&mut self, bytes: &[u8]) -> Result<Ingested, ReportError> {
        let msg = decode(bytes)?;
        Ok(match classify(msg) {
            Message::Push(v) => self.merge_push(v, content_hash(bytes)),
            Message::Version { firmware, ack } => Ingested::Version { firmware, ack },
            Message::Ack(ack) => Ingested::Ack(ack),
            Message::Other => Ingested::Ignored,
        })
    }

    /// Merge one status push (the whole message, `{"print":{…}}`).
    pub fn apply_push(&mut self, msg: Value) -> Ingested {
        let fingerprint = content_hash(msg.to_string().as_bytes());
        self.merge_push(msg, fingerprint)
    }

    /// Merge a push whose content hash (for duplicate detection) is `fingerprint`.
    fn merge_push(&mut self, msg: Value, fingerprint: u64) -> Ingested {
        let print = msg.get("print");
        if let Some(seq) = print.and_then(|p| p.get("sequence_id")).and_then(id_string) {
            if self
                .recent
                .iter()
                .any(|(s, f)| *s == seq && *f == fingerprint)
            {
                return Ingested::Duplicate;
            }
            if self.recent.len() >= RECENT_PUSHES {
                self.recent.pop_front();
            }
            self.recent.push_back((seq, fingerprint));
        }
        let full = print.and_then(|p| p.get("msg")).is_some_and(|m| match m {
            Value::Number(n) => n.as_u64() == Some(0),
            Value::String(s) => s.trim() == "0",
            _ => false,
        });
        if full {
            self.doc = Some(msg);
            self.have_full = true;
            self.pushall_wanted = false;
            return Ingested::Full;
        }
        match self.doc.as_mut() {
            Some(doc) => deep_merge(doc, msg),
            None => self.doc = Some(msg),
        }
        if !self.have_full {
            self.untrusted_deltas += 1;
            self.pushall_wanted = true;
        }
        Ingested::Delta {
            trusted: self.have_full,
        }
    }

    /// The merged document, if any push has arrived.
    pub fn doc(&self) -> Option<&Value> {
        self.doc.as_ref()
    }

    /// A full report has been merged; the document can be trusted.
    pub fn have_full_report(&self) -> bool {
        self.have_full
    }

    /// Deltas merged before the first full report.
    pub fn untrusted_deltas(&self) -> u64 {
        self.untrusted_deltas
    }

    /// A delta arrived before any full report: the caller should send `pushall`. Returns true
    /// once per request (the flag is cleared), and again after the next untrusted delta.
    pub fn take_pushall_request(&mut self) -> bool {
        std::mem::take(&mut self.pushall_wanted)
    }

    /// The typed state of the merged document.
    pub fn state(&self, model: Model) -> Option<PrinterState> {
        self.doc.as_ref().map(|d| printer_state(d, model))
    }
}

/// Hash of a payload's bytes (trailing NUL/whitespace ignored) for duplicate detection.
fn content_hash(bytes: &[u8]) -> u64 {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes.get(end - 1), Some(&b) if b == 0 || b.is_ascii_whitespace()) {
        end -= 1;
    }
    let mut h = DefaultHasher::new();
    bytes.get(..end).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Bambu Studio's `json_diff` merge: objects recurse, everything else (scalars, arrays, type
/// changes) replaces; keys missing from `delta` keep their value.
pub fn deep_merge(doc: &mut Value, delta: Value) {
    match (doc, delta) {
        (Value::Object(dst), Value::Object(src)) => {
            for (key, value) in src {
                match dst.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value)
                    }
                    _ => {
                        dst.insert(key, value);
                    }
                }
            }
        }
        (dst, src) => *dst = src,
    }
}

pub(super) fn as_f64(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    f.is_finite().then_some(f)
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn as_u32(v: &Value) -> Option<u32> {
    as_u64(v).and_then(|n| u32::try_from(n).ok())
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `print_error` as u32; negative values are the signed view of the same 32 bits. A value that
/// is present but unreadable counts as an error (`u32::MAX`), never as "no error".
fn print_error_value(v: &Value) -> u32 {
    match v {
        Value::Null => 0,
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u32::try_from(u).unwrap_or(u32::MAX)
            } else if let Some(i) = n.as_i64() {
                i32::try_from(i).map(|i| i as u32).unwrap_or(u32::MAX)
            } else {
                n.as_f64()
                    .filter(|f| *f == 0.0)
                    .map(|_| 0)
                    .unwrap_or(u32::MAX)
            }
        }
        Value::String(s) => s.trim().parse::<u32>().unwrap_or(u32::MAX),
        _ => u32::MAX,
    }
}

/// Packed `(target << 16) | current` temperature → `(current, target)` in °C.
fn unpack_temp(v: &Value) -> Option<(f64, f64)> {
    let packed = as_u64(v)?;
    Some((
        f64::from((packed & 0xFFFF) as u16),
        f64::from(((packed >> 16) & 0xFFFF) as u16),
    ))
}

/// The extruder the packed nozzle temperature is read from: the entry with `id` 0 (the right
/// nozzle on dual-nozzle models, the only one elsewhere), else the first entry.
fn packed_nozzle(device: &Value) -> Option<(f64, f64)> {
    let info = device.get("extruder")?.get("info")?.as_array()?;
    let entry = info
        .iter()
        .find(|e| e.get("id").and_then(as_u64) == Some(0))
        .or_else(|| info.first())?;
    unpack_temp(entry.get("temp")?)
}

/// The typed view of a merged report document (`firmware` is filled by the caller from
/// `get_version`). Missing or unreadable fields stay `None`.
pub fn printer_state(doc: &Value, model: Model) -> PrinterState {
    let empty = Value::Null;
    let p = doc.get("print").unwrap_or(&empty);
    let get = |key: &str| p.get(key).filter(|v| !v.is_null());
    let device = p.get("device").unwrap_or(&empty);
    let three_d = p.get("3D").unwrap_or(&empty);

    let (mut nozzle_temp, mut nozzle_target) = (
        get("nozzle_temper").and_then(as_f64),
        get("nozzle_target_temper").and_then(as_f64),
    );
    if let Some((cur, target)) = packed_nozzle(device) {
        nozzle_temp = Some(cur);
        nozzle_target = Some(target);
    }
    let (mut bed_temp, mut bed_target) = (
        get("bed_temper").and_then(as_f64),
        get("bed_target_temper").and_then(as_f64),
    );
    if let Some((cur, target)) = device
        .get("bed")
        .and_then(|b| b.get("info"))
        .and_then(|i| i.get("temp"))
        .and_then(unpack_temp)
    {
        bed_temp = Some(cur);
        bed_target = Some(target);
    }
    let chamber_temp = if model.has_chamber_sensor() {
        device
            .get("ctc")
            .and_then(|c| c.get("info"))
            .and_then(|i| i.get("temp"))
            .and_then(unpack_temp)
            .map(|(cur, _)| cur)
            .or_else(|| get("chamber_temper").and_then(as_f64))
    } else {
        None
    };

    let hms = get("hms")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    Some(HmsEntry {
                        attr: as_u32(e.get("attr")?)?,
                        code: as_u32(e.get("code")?)?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();

    let sdcard = get("sdcard").and_then(Value::as_bool).or_else(|| {
        let flag = get("home_flag").and_then(|v| v.as_i64())?;
        Some((flag >> 8) & 0b11 == 1)
    });

    let requires_signed_commands = get("fun").and_then(|f| {
        let bits = match f {
            Value::String(s) => {
                let s = s.trim();
                let s = s
                    .strip_prefix("0x")
                    .or_else(|| s.strip_prefix("0X"))
                    .unwrap_or(s);
                u64::from_str_radix(s, 16).ok()?
            }
            Value::Number(n) => n.as_u64()?,
            _ => return None,
        };
        Some(bits & FUN_REQUIRES_SIGNATURE != 0)
    });

    let chamber_light_on = get("lights_report")
        .and_then(Value::as_array)
        .and_then(|lights| {
            lights
                .iter()
                .find(|l| l.get("node").and_then(Value::as_str) == Some("chamber_light"))
        })
        .and_then(|l| l.get("mode"))
        .and_then(Value::as_str)
        .map(|mode| mode != "off");

    PrinterState {
        gcode_state: get("gcode_state")
            .and_then(Value::as_str)
            .map(GcodeState::parse)
            .unwrap_or_default(),
        percent: get("mc_percent").and_then(as_u32),
        remaining_minutes: get("mc_remaining_time").and_then(as_u32),
        layer: get("layer_num")
            .or_else(|| three_d.get("layer_num"))
            .and_then(as_u32),
        total_layers: get("total_layer_num")
            .or_else(|| three_d.get("total_layer_num"))
            .and_then(as_u32),
        nozzle_temp,
        nozzle_target,
        bed_temp,
        bed_target,
        chamber_temp,
        subtask_id: get("subtask_id").and_then(as_string),
        subtask_name: get("subtask_name").and_then(as_string),
        gcode_file: get("gcode_file").and_then(as_string),
        print_error: get("print_error").map(print_error_value).unwrap_or(0),
        hms,
        sdcard,
        requires_signed_commands,
        chamber_light_on,
        wifi_signal: get("wifi_signal").and_then(as_string),
        firmware: None,
        status_message: None,
        filament: super::ams::filament_slots(p, model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const FULL_3_6: &str = r#"{
  "print": {
    "command": "push_status", "msg": 0, "sequence_id": "7314",
    "gcode_state": "FINISH", "mc_print_stage": "1", "mc_percent": 100, "mc_remaining_time": 0,
    "layer_num": 212, "total_layer_num": 212,
    "nozzle_temper": 41.5, "nozzle_target_temper": 0, "bed_temper": 38.8, "bed_target_temper": 0,
    "chamber_temper": 5,
    "subtask_name": "shelf_bracket_v3", "subtask_id": "1184022931", "task_id": "1184022931",
    "project_id": "1184022931", "profile_id": "0",
    "gcode_file": "pg-000417.gcode.3mf", "gcode_file_prepare_percent": "100",
    "gcode_start_time": "1767261003", "print_type": "idle", "print_error": 0,
    "hms": [], "stg": [], "stg_cur": 255, "spd_lvl": 2, "spd_mag": 100,
    "wifi_signal": "-57dBm", "sdcard": true, "home_flag": 224478464, "nozzle_diameter": "0.4",
    "lights_report": [{ "node": "chamber_light", "mode": "on" }],
    "net": { "conf": 0, "info": [{ "ip": 1694607552, "mask": 16777215 }] },
    "ipcam": { "ipcam_dev": "1", "ipcam_record": "enable", "timelapse": "disable" },
    "upload": { "status": "idle", "progress": 0, "message": "" },
    "upgrade_state": { "status": "IDLE", "new_version_state": 2, "err_code": 0 },
    "ams": { "ams_exist_bits": "0", "tray_now": "255", "version": 3 },
    "vt_tray": { "id": "254", "tray_type": "PLA", "tray_color": "FFFFFFFF" },
    "online": { "ahb": false, "rfid": false, "version": 9 }
  }
}"#;

    const START_3_7: &str = r#"{"print":{"command":"push_status","msg":1,"sequence_id":"7321","gcode_state":"PREPARE",
 "subtask_name":"lid_v2","subtask_id":"1184023377","task_id":"1184023377",
 "gcode_file":"pg-000418.gcode.3mf","print_type":"local","mc_percent":0,"layer_num":0,
 "gcode_file_prepare_percent":"0"}}"#;

    const PRINTING_3_7: &str = r#"{"print":{"command":"push_status","msg":1,"sequence_id":"8040","mc_percent":37,
 "mc_remaining_time":48,"layer_num":61,"nozzle_temper":219.8,"wifi_signal":"-55dBm"}}"#;

    const PACKED_3_7: &str = r#"{"print":{"command":"push_status","msg":1,"sequence_id":"6191",
 "device":{"bed":{"info":{"temp":4587590},"state":2},
           "extruder":{"info":[{"id":0,"temp":16711934}],"state":1}}}}"#;

    #[test]
    fn full_then_deltas_follow_the_examples() {
        let mut m = ReportMerger::new();
        assert_eq!(m.ingest(FULL_3_6.as_bytes()), Ok(Ingested::Full));
        let s = m.state(Model::P1S).expect("state");
        assert_eq!(s.gcode_state, GcodeState::Finish);
        assert_eq!(s.percent, Some(100));
        assert_eq!(s.layer, Some(212));
        assert_eq!(s.nozzle_temp, Some(41.5));
        assert_eq!(s.bed_temp, Some(38.8));
        assert_eq!(s.chamber_temp, None, "P1S has no chamber sensor");
        assert_eq!(s.subtask_id.as_deref(), Some("1184022931"));
        assert_eq!(s.sdcard, Some(true));
        assert_eq!(s.chamber_light_on, Some(true));
        assert_eq!(s.wifi_signal.as_deref(), Some("-57dBm"));
        assert_eq!(s.requires_signed_commands, None);
        assert_eq!(s.print_error, 0);
        assert!(s.hms.is_empty());
        let f = s.filament.as_ref().expect("ams and vt_tray are reported");
        assert!(f.units.is_empty(), "ams_exist_bits 0: no unit");
        assert_eq!(f.external.len(), 1);
        assert_eq!(f.external[0].material.as_deref(), Some("PLA"));
        assert_eq!(f.external[0].color.as_deref(), Some("FFFFFFFF"));
        assert_eq!(f.active().count(), 0);

        assert_eq!(
            m.ingest(START_3_7.as_bytes()),
            Ok(Ingested::Delta { trusted: true })
        );
        let s = m.state(Model::P1S).expect("state");
        assert_eq!(s.gcode_state, GcodeState::Prepare);
        assert_eq!(s.subtask_name.as_deref(), Some("lid_v2"));
        assert_eq!(s.gcode_file.as_deref(), Some("pg-000418.gcode.3mf"));
        assert_eq!(s.percent, Some(0));
        assert_eq!(s.total_layers, Some(212), "untouched keys keep their value");
        assert_eq!(s.nozzle_temp, Some(41.5));

        m.ingest(PRINTING_3_7.as_bytes()).expect("delta");
        let s = m.state(Model::P1S).expect("state");
        assert_eq!(s.gcode_state, GcodeState::Prepare);
        assert_eq!(s.percent, Some(37));
        assert_eq!(s.remaining_minutes, Some(48));
        assert_eq!(s.layer, Some(61));
        assert_eq!(s.nozzle_temp, Some(219.8));
        assert_eq!(s.wifi_signal.as_deref(), Some("-55dBm"));
        let doc = m.doc().expect("doc");
        assert_eq!(doc["print"]["sequence_id"], "8040");
        assert_eq!(doc["print"]["ipcam"]["record"], Value::Null);
        assert_eq!(doc["print"]["ipcam"]["ipcam_record"], "enable");
        assert!(!m.take_pushall_request());
    }

    #[test]
    fn packed_temperatures_are_preferred() {
        let mut m = ReportMerger::new();
        m.ingest(FULL_3_6.as_bytes()).expect("full");
        m.ingest(PACKED_3_7.as_bytes()).expect("delta");
        let s = m.state(Model::H2D).expect("state");
        assert_eq!((s.bed_temp, s.bed_target), (Some(70.0), Some(70.0)));
        assert_eq!((s.nozzle_temp, s.nozzle_target), (Some(254.0), Some(255.0)));
        assert_eq!(
            s.chamber_temp,
            Some(5.0),
            "chamber_temper used on a model with a sensor"
        );
        // Nested objects merged key by key, the extruder info array replaced wholesale.
        let doc = m.doc().expect("doc");
        assert_eq!(doc["print"]["device"]["bed"]["state"], 2);
        let ctc = json!({"print":{"command":"push_status","msg":1,"sequence_id":"6192",
            "device":{"ctc":{"info":{"temp": (45u64 << 16) | 38}}}}});
        m.apply_push(ctc);
        let s = m.state(Model::H2D).expect("state");
        assert_eq!(s.chamber_temp, Some(38.0));
        assert_eq!(s.bed_temp, Some(70.0), "sibling device keys survive");
    }

    #[test]
    fn arrays_are_replaced_wholesale_and_empty_clears() {
        let mut m = ReportMerger::new();
        m.apply_push(
            json!({"print":{"command":"push_status","msg":0,"sequence_id":"1",
            "hms":[{"attr":0x0500_0500u32,"code":0x0001_0007u32},{"attr":1,"code":0x0003_0001}],
            "stg":[2,1,7]}}),
        );
        assert_eq!(m.state(Model::X1C).map(|s| s.hms.len()), Some(2));
        m.apply_push(
            json!({"print":{"command":"push_status","msg":1,"sequence_id":"2",
            "hms":[{"attr":1,"code":0x0003_0001}],"stg":[14]}}),
        );
        let s = m.state(Model::X1C).expect("state");
        assert_eq!(
            s.hms,
            vec![HmsEntry {
                attr: 1,
                code: 0x0003_0001
            }]
        );
        assert_eq!(
            m.doc().map(|d| d["print"]["stg"].clone()),
            Some(json!([14]))
        );
        m.apply_push(json!({"print":{"command":"push_status","msg":1,"sequence_id":"3","hms":[]}}));
        assert!(m.state(Model::X1C).expect("state").hms.is_empty());
    }

    #[test]
    fn full_report_replaces_and_type_changes_replace() {
        let mut m = ReportMerger::new();
        m.apply_push(
            json!({"print":{"command":"push_status","msg":0,"sequence_id":"1",
            "gcode_state":"RUNNING","upload":{"status":"idle"},"extra":1}}),
        );
        m.apply_push(
            json!({"print":{"command":"push_status","msg":1,"sequence_id":"2",
            "upload":"gone"}}),
        );
        assert_eq!(
            m.doc().map(|d| d["print"]["upload"].clone()),
            Some(json!("gone"))
        );
        m.apply_push(
            json!({"print":{"command":"push_status","msg":0,"sequence_id":"3",
            "gcode_state":"IDLE"}}),
        );
        let doc = m.doc().expect("doc");
        assert_eq!(
            doc["print"]["extra"],
            Value::Null,
            "msg 0 replaces the whole document"
        );
        assert_eq!(doc["print"]["gcode_state"], "IDLE");
    }

    #[test]
    fn absent_msg_merges() {
        let mut m = ReportMerger::new();
        m.ingest(FULL_3_6.as_bytes()).expect("full");
        let out = m.apply_push(json!({"print":{"command":"push_status","sequence_id":"9",
            "gcode_state":"RUNNING"}}));
        assert_eq!(out, Ingested::Delta { trusted: true });
        let s = m.state(Model::H2D).expect("state");
        assert_eq!(s.gcode_state, GcodeState::Running);
        assert_eq!(s.subtask_name.as_deref(), Some("shelf_bracket_v3"));
    }

    #[test]
    fn delta_before_full_is_kept_untrusted_and_asks_for_pushall() {
        let mut m = ReportMerger::new();
        assert_eq!(
            m.ingest(PRINTING_3_7.as_bytes()),
            Ok(Ingested::Delta { trusted: false })
        );
        assert!(!m.have_full_report());
        assert!(m.take_pushall_request());
        assert!(!m.take_pushall_request(), "asked once per untrusted delta");
        assert_eq!(m.state(Model::P1P).and_then(|s| s.percent), Some(37));
        assert_eq!(m.untrusted_deltas(), 1);
        m.ingest(FULL_3_6.as_bytes()).expect("full");
        assert!(m.have_full_report());
        assert!(!m.take_pushall_request());
    }

    #[test]
    fn duplicates_are_detected_by_sequence_id_and_content() {
        let mut m = ReportMerger::new();
        m.ingest(FULL_3_6.as_bytes()).expect("full");
        assert_eq!(
            m.ingest(PRINTING_3_7.as_bytes()),
            Ok(Ingested::Delta { trusted: true })
        );
        assert_eq!(m.ingest(PRINTING_3_7.as_bytes()), Ok(Ingested::Duplicate));
        // Firmware that sends the same counter with different content is not a duplicate.
        let other = json!({"print":{"command":"push_status","msg":1,"sequence_id":"8040",
            "mc_percent":38}});
        assert_eq!(m.apply_push(other), Ingested::Delta { trusted: true });
        assert_eq!(m.state(Model::P1S).and_then(|s| s.percent), Some(38));
    }

    #[test]
    fn acks_and_versions_are_not_merged() {
        let mut m = ReportMerger::new();
        m.ingest(FULL_3_6.as_bytes()).expect("full");
        let ack = br#"{"print":{"command":"project_file","sequence_id":"21010","param":"Metadata/plate_1.gcode","result":"FAIL","reason":"mqtt message verify failed","err_code":84033543}}"#;
        match m.ingest(ack) {
            Ok(Ingested::Ack(a)) => {
                assert_eq!(a.command, "project_file");
                assert_eq!(a.sequence_id, "21010");
                assert_eq!(a.success, Some(false));
                assert_eq!(a.err_code, Some(84_033_543));
            }
            other => panic!("unexpected {other:?}"),
        }
        let version = br#"{"info":{"command":"get_version","sequence_id":20001,"module":[{"name":"esp32","sw_ver":"x"},{"name":"ota","sw_ver":"01.08.02.00","hw_ver":"","sn":"01P"}],"result":"success","reason":""}}"#;
        match m.ingest(version) {
            Ok(Ingested::Version { firmware, ack }) => {
                assert_eq!(firmware.as_deref(), Some("01.08.02.00"));
                assert_eq!(ack.sequence_id, "20001");
                assert_eq!(ack.success, Some(true));
            }
            other => panic!("unexpected {other:?}"),
        }
        let no_result = br#"{"print":{"command":"stop","sequence_id":"5"}}"#;
        assert!(matches!(
            m.ingest(no_result),
            Ok(Ingested::Ack(CommandAck { success: None, .. }))
        ));
        let log = br#"{"mc_print":{"command":"push_info","param":"hello","sequence_id":"1"}}"#;
        assert_eq!(m.ingest(log), Ok(Ingested::Ignored));
        assert_eq!(
            m.state(Model::P1S).map(|s| s.gcode_state),
            Some(GcodeState::Finish)
        );
        assert_eq!(m.doc().map(|d| d.get("info").is_none()), Some(true));
    }

    #[test]
    fn lenient_decoding() {
        let mut payload = PRINTING_3_7.as_bytes().to_vec();
        payload.extend_from_slice(b"\n\0\0 ");
        assert!(decode(&payload).is_ok());
        // Latin-1: 0xE9 is not valid UTF-8 on its own.
        let latin =
            b"{\"print\":{\"command\":\"push_status\",\"msg\":1,\"subtask_name\":\"caf\xE9\"}}";
        let mut m = ReportMerger::new();
        m.ingest(latin).expect("latin-1 accepted");
        assert_eq!(
            m.state(Model::A1).and_then(|s| s.subtask_name).as_deref(),
            Some("café")
        );
        assert!(matches!(decode(b"[1,2]"), Err(ReportError::NotObject)));
        assert!(matches!(
            decode(b"{\"print\":"),
            Err(ReportError::Malformed(_))
        ));
        assert!(matches!(decode(b""), Err(ReportError::Malformed(_))));
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert_eq!(
            decode(&big),
            Err(ReportError::TooLarge(MAX_REPORT_BYTES + 1))
        );
    }

    #[test]
    fn fun_bit_and_odd_field_types() {
        let doc = |fun: &str| json!({"print":{"command":"push_status","msg":0,"fun":fun}});
        assert_eq!(
            printer_state(&doc("3EC1AFFF9CFF"), Model::X1C).requires_signed_commands,
            Some(true)
        );
        assert_eq!(
            printer_state(&doc("3EC18FFF9CFF"), Model::X1C).requires_signed_commands,
            Some(false)
        );
        assert_eq!(
            printer_state(&doc("zz"), Model::X1C).requires_signed_commands,
            None
        );
        let odd = json!({"print":{"mc_percent":"42","layer_num":12.0,"print_error":-1,
            "subtask_id":1234,"nozzle_temper":"210.5","mc_remaining_time":-5,
            "lights_report":[{"node":"chamber_light","mode":"off"}],
            "3D":{"total_layer_num":99},"home_flag":256}});
        let s = printer_state(&odd, Model::P2S);
        assert_eq!(s.percent, Some(42));
        assert_eq!(s.layer, Some(12));
        assert_eq!(s.total_layers, Some(99));
        assert_eq!(s.print_error, u32::MAX);
        assert_eq!(s.subtask_id.as_deref(), Some("1234"));
        assert_eq!(s.nozzle_temp, Some(210.5));
        assert_eq!(s.remaining_minutes, None);
        assert_eq!(s.chamber_light_on, Some(false));
        assert_eq!(s.sdcard, Some(true), "home_flag bits 8-9 = 1 → card ok");
        assert_eq!(s.gcode_state, GcodeState::Unknown);
        let s = printer_state(&json!({"print":{"print_error":"garbage"}}), Model::P1S);
        assert_ne!(
            s.print_error, 0,
            "an unreadable error never reads as no error"
        );
        let s = printer_state(&json!({"print":{"print_error":50348044}}), Model::P1S);
        assert_eq!(s.print_error, 0x0300_400C);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z_0-9]{0,8}".prop_map(Value::String),
            prop_oneof![
                Just("push_status"),
                Just("get_version"),
                Just("0"),
                Just("1"),
                Just("3EC1AFFF9CFF")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            let keys = prop_oneof![
                Just("print".to_string()),
                Just("info".to_string()),
                Just("command".to_string()),
                Just("msg".to_string()),
                Just("sequence_id".to_string()),
                Just("device".to_string()),
                Just("bed".to_string()),
                Just("extruder".to_string()),
                Just("info".to_string()),
                Just("temp".to_string()),
                Just("hms".to_string()),
                Just("module".to_string()),
                Just("name".to_string()),
                Just("print_error".to_string()),
                Just("fun".to_string()),
                Just("lights_report".to_string()),
                Just("ams".to_string()),
                Just("tray".to_string()),
                Just("tray_now".to_string()),
                Just("tray_type".to_string()),
                Just("state".to_string()),
                Just("vt_tray".to_string()),
                Just("vir_slot".to_string()),
                Just("snow".to_string()),
                Just("id".to_string()),
                "[a-z_]{1,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(values in prop::collection::vec(arb_json(), 1..6)) {
            let mut m = ReportMerger::new();
            for v in values {
                let bytes = serde_json::to_vec(&v).unwrap_or_default();
                let _ = m.ingest(&bytes);
                let wrapped = json!({"print": {"command": "push_status", "msg": 1, "x": v.clone()}});
                let _ = m.apply_push(wrapped);
                let _ = m.apply_push(json!({"print": v}));
                for model in Model::ALL {
                    let _ = m.state(model);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6)) {
            let mut m = ReportMerger::new();
            for bytes in chunks {
                let _ = m.ingest(&bytes);
                let _ = m.state(Model::H2D);
            }
        }

        #[test]
        fn merge_of_full_then_delta_equals_manual_overlay(
            a in 0u32..1000, b in 0u32..1000, name in "[a-z]{1,8}")
        {
            let mut m = ReportMerger::new();
            m.apply_push(json!({"print":{"command":"push_status","msg":0,"sequence_id":"1",
                "mc_percent":a,"subtask_name":"x","device":{"bed":{"info":{"temp":a}}}}}));
            m.apply_push(json!({"print":{"command":"push_status","msg":1,"sequence_id":"2",
                "mc_percent":b,"subtask_name":name.clone()}}));
            let s = m.state(Model::H2D).expect("state");
            prop_assert_eq!(s.percent, Some(b));
            prop_assert_eq!(s.subtask_name, Some(name));
            prop_assert_eq!(s.bed_temp, Some(f64::from(a)));
        }
    }
}
