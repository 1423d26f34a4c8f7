//! JSON payloads of the commands printgate publishes to `device/<serial>/request`
//! (docs/bambu-protocol.md §4), and the `sequence_id` counter that makes every id unique, also across
//! gateway restarts (the lead seeds it from the database). Pure: builders return the payload and
//! the id they used; publishing happens in the session.

use crate::printer::{PrinterCommand, StartRequest};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared, monotonically increasing source of `sequence_id`s (decimal strings).
///
/// Cloning shares the counter. Seed it above every id ever used (persist [`SequenceIds::peek`]
/// or reserve blocks), because some firmware refuses a reused id (84033544).
#[derive(Debug, Clone)]
pub struct SequenceIds {
    next: Arc<AtomicU64>,
}

impl SequenceIds {
    /// The first id handed out will be `first`.
    pub fn new(first: u64) -> Self {
        Self {
            next: Arc::new(AtomicU64::new(first)),
        }
    }
    /// Take the next id.
    pub fn next_id(&self) -> String {
        self.next.fetch_add(1, Ordering::SeqCst).to_string()
    }
    /// The id the next call to [`SequenceIds::next_id`] will return (for persisting).
    pub fn peek(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
}

impl Default for SequenceIds {
    /// Studio counts up from 20000; a fresh gateway without history starts there too.
    fn default() -> Self {
        Self::new(20_000)
    }
}

/// Per-job print options of `project_file` (§4.2). Defaults: `false, true, false, false, true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrintOptions {
    pub timelapse: bool,
    pub bed_leveling: bool,
    pub flow_cali: bool,
    pub vibration_cali: bool,
    pub layer_inspect: bool,
}

impl Default for PrintOptions {
    fn default() -> Self {
        Self {
            timelapse: false,
            bed_leveling: true,
            flow_cali: false,
            vibration_cali: false,
            layer_inspect: true,
        }
    }
}

/// A payload ready to publish and the `sequence_id` inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub sequence_id: String,
    pub payload: Value,
}

impl Built {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a `Value` cannot fail (all keys are strings).
        serde_json::to_vec(&self.payload).unwrap_or_default()
    }
}

fn section(section: &str, seq: String, command: &str, mut extra: Value) -> Built {
    let mut body = json!({ "sequence_id": seq, "command": command });
    if let (Some(body_map), Some(extra_map)) = (body.as_object_mut(), extra.as_object_mut()) {
        body_map.append(extra_map);
    }
    Built {
        sequence_id: seq,
        payload: json!({ section: body }),
    }
}

/// `{"pushing":{"sequence_id":…,"command":"pushall"}}`
pub fn pushall(ids: &SequenceIds) -> Built {
    section("pushing", ids.next_id(), "pushall", json!({}))
}

/// `{"pushing":{"sequence_id":…,"command":"start"}}` (turns periodic pushes back on).
pub fn pushing_start(ids: &SequenceIds) -> Built {
    section("pushing", ids.next_id(), "start", json!({}))
}

/// `{"info":{"sequence_id":…,"command":"get_version"}}`
pub fn get_version(ids: &SequenceIds) -> Built {
    section("info", ids.next_id(), "get_version", json!({}))
}

/// `print.project_file` exactly as §4.2: `url` `ftp://<name>`, `param`
/// `Metadata/plate_<n>.gcode`, the subtask id as project/task/subtask id (strings),
/// `profile_id` `"0"`, booleans as JSON booleans; `ams_mapping` / `ams_mapping2` only when the
/// request carries them.
pub fn project_file(ids: &SequenceIds, req: &StartRequest, opts: PrintOptions) -> Built {
    let id = req.subtask_id.to_string();
    let mut built = section(
        "print",
        ids.next_id(),
        "project_file",
        json!({
            "param": format!("Metadata/plate_{}.gcode", req.plate),
            "url": format!("ftp://{}", req.remote_name),
            "file": req.remote_name,
            "md5": req.md5,
            "subtask_name": req.subtask_name,
            "project_id": id,
            "profile_id": "0",
            "task_id": id,
            "subtask_id": id,
            "bed_type": req.bed_type,
            "timelapse": opts.timelapse,
            "bed_leveling": opts.bed_leveling,
            "flow_cali": opts.flow_cali,
            "vibration_cali": opts.vibration_cali,
            "layer_inspect": opts.layer_inspect,
            "use_ams": req.use_ams,
        }),
    );
    if let (Some(m), Some(body)) = (
        &req.ams_mapping,
        built
            .payload
            .get_mut("print")
            .and_then(Value::as_object_mut),
    ) {
        body.insert("ams_mapping".into(), json!(m.flat));
        let pairs: Vec<Value> = m
            .pairs
            .iter()
            .map(|(ams_id, slot_id)| json!({ "ams_id": ams_id, "slot_id": slot_id }))
            .collect();
        body.insert("ams_mapping2".into(), Value::Array(pairs));
    }
    built
}

/// `print.pause` with `param:""`.
pub fn pause(ids: &SequenceIds) -> Built {
    section("print", ids.next_id(), "pause", json!({ "param": "" }))
}

/// `print.resume` with `param:""`.
pub fn resume(ids: &SequenceIds) -> Built {
    section("print", ids.next_id(), "resume", json!({ "param": "" }))
}

/// `print.stop` with `param:""`.
pub fn stop(ids: &SequenceIds) -> Built {
    section("print", ids.next_id(), "stop", json!({ "param": "" }))
}

/// `system.ledctrl` for the chamber light, all six fields present.
pub fn chamber_light(ids: &SequenceIds, on: bool) -> Built {
    section(
        "system",
        ids.next_id(),
        "ledctrl",
        json!({
            "led_node": "chamber_light",
            "led_mode": if on { "on" } else { "off" },
            "led_on_time": 500,
            "led_off_time": 500,
            "loop_times": 0,
            "interval_time": 0,
        }),
    )
}

/// The payload for a [`PrinterCommand`] (start with default print options).
pub fn build(ids: &SequenceIds, cmd: &PrinterCommand) -> Built {
    match cmd {
        PrinterCommand::Start(req) => project_file(ids, req, PrintOptions::default()),
        PrinterCommand::Pause => pause(ids),
        PrinterCommand::Resume => resume(ids),
        PrinterCommand::Stop => stop(ids),
        PrinterCommand::Light(on) => chamber_light(ids, *on),
        PrinterCommand::PushAll => pushall(ids),
        PrinterCommand::Setting(c) => {
            let mut fields = c.fields.clone();
            fields.remove("sequence_id");
            fields.remove("command");
            section(c.section, ids.next_id(), c.command, Value::Object(fields))
        }
    }
}

/// `(section, command)` a payload carries, as the printer's ack will echo it.
pub fn command_key(cmd: &PrinterCommand) -> (&'static str, &'static str) {
    match cmd {
        PrinterCommand::Start(_) => ("print", "project_file"),
        PrinterCommand::Pause => ("print", "pause"),
        PrinterCommand::Resume => ("print", "resume"),
        PrinterCommand::Stop => ("print", "stop"),
        PrinterCommand::Light(_) => ("system", "ledctrl"),
        PrinterCommand::PushAll => ("pushing", "pushall"),
        PrinterCommand::Setting(c) => (c.section, c.command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StartRequest {
        StartRequest {
            remote_name: "pg-000418.gcode.3mf".into(),
            plate: 1,
            subtask_name: "lid_v2".into(),
            subtask_id: 1_184_023_377,
            md5: String::new(),
            bed_type: "textured_plate".into(),
            use_ams: false,
            ams_mapping: None,
        }
    }

    #[test]
    fn project_file_matches_the_reference_document() {
        let ids = SequenceIds::new(21_010);
        let built = project_file(&ids, &start(), PrintOptions::default());
        assert_eq!(built.sequence_id, "21010");
        let expected = json!({"print":{
          "sequence_id":"21010","command":"project_file",
          "param":"Metadata/plate_1.gcode",
          "url":"ftp://pg-000418.gcode.3mf",
          "file":"pg-000418.gcode.3mf",
          "md5":"",
          "subtask_name":"lid_v2",
          "project_id":"1184023377","profile_id":"0","task_id":"1184023377","subtask_id":"1184023377",
          "bed_type":"textured_plate",
          "timelapse":false,"bed_leveling":true,"flow_cali":false,"vibration_cali":false,"layer_inspect":true,
          "use_ams":false
        }});
        assert_eq!(built.payload, expected);
    }

    #[test]
    fn plate_and_bools_follow_the_request() {
        let ids = SequenceIds::default();
        let mut req = start();
        req.plate = 3;
        req.use_ams = true;
        req.md5 = "ABCDEF".into();
        let built = project_file(&ids, &req, PrintOptions::default());
        let p = &built.payload["print"];
        assert_eq!(p["param"], "Metadata/plate_3.gcode");
        assert_eq!(p["use_ams"], true);
        assert_eq!(p["md5"], "ABCDEF");
        assert!(p.get("ams_mapping").is_none() && p.get("ams_mapping2").is_none());
    }

    #[test]
    fn mapping_fields_have_studios_shape() {
        let ids = SequenceIds::new(21_010);
        let mut req = start();
        req.use_ams = true;
        req.ams_mapping = Some(crate::printer::AmsMappingFields {
            flat: vec![3, -1, 128],
            pairs: vec![(0, 3), (255, 255), (128, 0)],
        });
        let p = project_file(&ids, &req, PrintOptions::default()).payload;
        assert_eq!(p["print"]["ams_mapping"], json!([3, -1, 128]));
        assert_eq!(
            p["print"]["ams_mapping2"],
            json!([{"ams_id":0,"slot_id":3},{"ams_id":255,"slot_id":255},{"ams_id":128,"slot_id":0}])
        );
    }

    #[test]
    fn simple_commands() {
        let ids = SequenceIds::new(21_001);
        assert_eq!(
            pushall(&ids).payload,
            json!({"pushing":{"sequence_id":"21001","command":"pushall"}})
        );
        assert_eq!(
            pushing_start(&ids).payload,
            json!({"pushing":{"sequence_id":"21002","command":"start"}})
        );
        assert_eq!(
            get_version(&ids).payload,
            json!({"info":{"sequence_id":"21003","command":"get_version"}})
        );
        assert_eq!(
            pause(&ids).payload,
            json!({"print":{"sequence_id":"21004","command":"pause","param":""}})
        );
        assert_eq!(
            resume(&ids).payload,
            json!({"print":{"sequence_id":"21005","command":"resume","param":""}})
        );
        assert_eq!(
            stop(&ids).payload,
            json!({"print":{"sequence_id":"21006","command":"stop","param":""}})
        );
        assert_eq!(
            chamber_light(&ids, true).payload,
            json!({"system":{"sequence_id":"21007","command":"ledctrl","led_node":"chamber_light",
              "led_mode":"on","led_on_time":500,"led_off_time":500,"loop_times":0,"interval_time":0}})
        );
        assert_eq!(
            chamber_light(&ids, false).payload["system"]["led_mode"],
            "off"
        );
    }

    #[test]
    fn ids_are_shared_and_never_reused() {
        let ids = SequenceIds::new(5);
        let other = ids.clone();
        let a = ids.next_id();
        let b = other.next_id();
        assert_eq!((a.as_str(), b.as_str()), ("5", "6"));
        assert_eq!(ids.peek(), 7);
        let built = build(&ids, &PrinterCommand::Stop);
        assert_eq!(built.sequence_id, "7");
        assert!(String::from_utf8(built.to_bytes()).is_ok_and(|s| s.contains("\"stop\"")));
    }
}
