//! JSON-RPC 2.0 dispatch of the simulated Moonraker, following Moonraker's `JsonRPC.dispatch`
//! (common.py) and the MQTT transport's screening (mqtt.py): parse error -32700 with a null id,
//! invalid request -32600, unknown method -32601, params that are not an object -32602, a
//! repeated `mqtt_timestamp` -10000 ("Duplicate MQTT Request", not executed), server errors
//! with their HTTP status as code (404 → -32601), no response for requests without an id.
//! Klipper-backed methods fail with 503 "Klippy Host not connected" when Klippy is gone and
//! with 400 + Klippy's state message when a gcode runs while Klippy is not ready.

use serde_json::{Map, Value, json};
use std::time::Instant;

use super::files::{self, item_json};
use super::knobs::{KlippyState, MoonrakerKnobValues};
use super::log::{RpcEntry, RpcOutcome};
use super::model::{OBJECTS, PrintState};
use super::{Shared, SimState};

/// `DUP_API_REQ_CODE` in Moonraker's mqtt.py.
pub const DUP_API_REQ_CODE: i64 = -10000;
const TIMESTAMP_DEQUE_LEN: usize = 20;

const METHODS: [&str; 14] = [
    "server.info",
    "server.files.list",
    "server.files.delete_file",
    "printer.info",
    "printer.objects.list",
    "printer.objects.query",
    "printer.print.start",
    "printer.print.pause",
    "printer.print.resume",
    "printer.print.cancel",
    "printer.gcode.script",
    "printer.emergency_stop",
    "printer.restart",
    "printer.firmware_restart",
];

type RpcError = (i64, String);

fn error(code: i64, msg: &str, id: &Value) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": msg}, "id": id})
}

/// Handle one payload from the request topic: the response payload to publish (if any) and one
/// log entry per request (a batch gives several).
pub(crate) fn handle(shared: &Shared, conn: u64, payload: &[u8]) -> (Option<Value>, Vec<RpcEntry>) {
    let blank = |outcome| RpcEntry {
        index: 0,
        at: Instant::now(),
        conn,
        method: String::new(),
        params: Value::Null,
        id: Value::Null,
        mqtt_timestamp: None,
        outcome,
        error: None,
        response: None,
        response_sent: false,
        payload: payload.to_vec(),
    };
    let parsed: Result<Value, _> = serde_json::from_slice(payload);
    let obj = match parsed {
        Ok(v) => v,
        Err(_) => {
            let resp = error(-32700, "Parse error", &Value::Null);
            let mut e = blank(RpcOutcome::Rejected);
            e.error = Some((-32700, "Parse error".into()));
            e.response = Some(resp.clone());
            return (Some(resp), vec![e]);
        }
    };
    match obj {
        Value::Array(items) => {
            let mut responses = Vec::new();
            let mut entries = Vec::new();
            for item in items {
                let (resp, entry) = process_object(shared, item, blank(RpcOutcome::Rejected));
                if let Some(r) = resp {
                    responses.push(r);
                }
                entries.push(entry);
            }
            let resp = (!responses.is_empty()).then_some(Value::Array(responses));
            (resp, entries)
        }
        other => {
            let (resp, entry) = process_object(shared, other, blank(RpcOutcome::Rejected));
            (resp, vec![entry])
        }
    }
}

fn process_object(shared: &Shared, obj: Value, mut entry: RpcEntry) -> (Option<Value>, RpcEntry) {
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    entry.id = id.clone();
    let reject = |entry: &mut RpcEntry, code: i64, msg: &str| {
        let resp = error(code, msg, &id);
        entry.error = Some((code, msg.to_string()));
        entry.response = Some(resp.clone());
        Some(resp)
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        let r = reject(&mut entry, -32600, "Invalid Request");
        return (r, entry);
    }
    let method = match obj.get("method") {
        // A response object (no method): Moonraker logs and ignores it.
        None => return (None, entry),
        Some(Value::String(m)) => m.clone(),
        Some(_) => {
            let r = reject(&mut entry, -32600, "Invalid Request");
            return (r, entry);
        }
    };
    entry.method = method.clone();
    entry.params = obj.get("params").cloned().unwrap_or(Value::Null);
    if !METHODS.contains(&method.as_str()) {
        let r = reject(&mut entry, -32601, "Method not found");
        return (r, entry);
    }
    let mut params = match obj.get("params") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            let r = reject(&mut entry, -32602, "Invalid params:");
            return (r, entry);
        }
    };
    // Moonraker's MQTT `screen_rpc_request`: pop the timestamp, refuse repeats.
    let ts = params.remove("mqtt_timestamp");
    entry.mqtt_timestamp = ts.clone();
    let knobs = shared.knobs.get();
    let result = {
        let mut st = shared.lock();
        shared.sync_klippy(&mut st);
        if let Some(ts) = ts.filter(|t| !t.is_null()) {
            if st.timestamps.contains(&ts) {
                drop(st);
                entry.outcome = RpcOutcome::Duplicate;
                let r = reject(&mut entry, DUP_API_REQ_CODE, "Duplicate MQTT Request");
                return (r, entry);
            }
            if st.timestamps.len() >= TIMESTAMP_DEQUE_LEN {
                st.timestamps.pop_front();
            }
            st.timestamps.push_back(ts);
        }
        entry.outcome = RpcOutcome::Executed;
        execute(shared, &mut st, &knobs, &method, &params)
    };
    shared.refresh_truth();
    let resp = match result {
        Ok(v) => json!({"jsonrpc": "2.0", "result": v, "id": id}),
        Err((code, msg)) => {
            let code = if code == 404 { -32601 } else { code };
            entry.error = Some((code, msg.clone()));
            error(code, &msg, &id)
        }
    };
    if id.is_null() {
        return (None, entry);
    }
    entry.response = Some(resp.clone());
    (Some(resp), entry)
}

fn str_arg<'a>(params: &'a Map<String, Value>, key: &str) -> Result<&'a str, RpcError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| (400, format!("No data for argument: {key}")))
}

fn execute(
    shared: &Shared,
    st: &mut SimState,
    knobs: &MoonrakerKnobValues,
    method: &str,
    params: &Map<String, Value>,
) -> Result<Value, RpcError> {
    let klippy = st.printer.klippy();
    if method.starts_with("printer.") && klippy == KlippyState::Disconnected {
        return Err((503, "Klippy Host not connected".into()));
    }
    let gcode_ready = || -> Result<(), RpcError> {
        if klippy == KlippyState::Ready {
            Ok(())
        } else {
            Err((400, st.printer.state_message()))
        }
    };
    match method {
        "server.info" => Ok(json!({
            "klippy_connected": klippy != KlippyState::Disconnected,
            "klippy_state": klippy.as_str(),
            "components": [
                "secrets", "template", "klippy_connection", "jsonrpc", "internal_transport",
                "application", "websockets", "database", "dbus_manager", "file_manager",
                "klippy_apis", "machine", "data_store", "shell_command", "proc_stats",
                "job_state", "job_queue", "history", "authorization", "mqtt"
            ],
            "failed_components": [],
            "registered_directories": ["config", "logs", "gcodes"],
            "warnings": [],
            "websocket_count": 0,
            "moonraker_version": "v0.9.3-sim",
            "missing_klippy_requirements": [],
            "api_version": [1, 5, 0],
            "api_version_string": "1.5.0",
        })),
        "printer.info" => Ok(json!({
            "state": klippy.as_str(),
            "state_message": st.printer.state_message(),
            "hostname": shared.cfg.instance_name,
            "klipper_path": "/home/pi/klipper",
            "python_path": "/home/pi/klippy-env/bin/python",
            "process_id": 1234,
            "user_id": 1000,
            "group_id": 1000,
            "log_file": "/home/pi/printer_data/logs/klippy.log",
            "config_file": "/home/pi/printer_data/config/printer.cfg",
            "software_version": "v0.12.0-sim",
            "cpu_info": "4 core ARMv8 (simulated)",
        })),
        "printer.objects.list" => Ok(json!({"objects": OBJECTS})),
        "printer.objects.query" => {
            let objects = params
                .get("objects")
                .ok_or_else(|| (400, "Missing Argument [objects]".to_string()))?
                .as_object()
                .ok_or_else(|| (400, "Invalid Argument Type [objects]".to_string()))?;
            let valid = objects.values().all(|v| {
                v.is_null() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
            });
            if !valid {
                return Err((400, "Invalid argument".into()));
            }
            Ok(json!({"eventtime": shared.eventtime(), "status": st.printer.query(objects)}))
        }
        "printer.print.start" => {
            let filename = str_arg(params, "filename")?;
            gcode_ready()?;
            let name = filename.trim_start_matches('/');
            tracing::info!(instance = %shared.cfg.instance_name, "printer.print.start {name}");
            if knobs.refuse_start || st.printer.print_state == PrintState::Printing {
                return Err((400, "SD busy".into()));
            }
            if knobs.ignore_start {
                return Ok(json!("ok"));
            }
            let SimState { printer, files, .. } = st;
            let (resolved, file) = files
                .resolve(name)
                .ok_or_else(|| (400, "Unable to open file".to_string()))?;
            printer
                .start_print(
                    &resolved,
                    &file.bytes,
                    knobs.default_print_secs,
                    knobs.default_total_layers,
                )
                .map_err(|e| (400, e.0))?;
            Ok(json!("ok"))
        }
        "printer.print.pause" => {
            gcode_ready()?;
            st.printer.pause();
            Ok(json!("ok"))
        }
        "printer.print.resume" => {
            gcode_ready()?;
            st.printer.resume();
            Ok(json!("ok"))
        }
        "printer.print.cancel" => {
            gcode_ready()?;
            st.printer.cancel();
            Ok(json!("ok"))
        }
        "printer.gcode.script" => {
            let script = str_arg(params, "script")?;
            gcode_ready()?;
            for line in script.lines() {
                tracing::info!(instance = %shared.cfg.instance_name, "gcode: {line}");
                st.printer.run_gcode_line(line);
            }
            if st.printer.klippy() == KlippyState::Shutdown {
                shared.knobs.set_klippy_state(KlippyState::Shutdown);
            }
            Ok(json!("ok"))
        }
        "printer.emergency_stop" => {
            st.printer.emergency_stop();
            shared.knobs.set_klippy_state(KlippyState::Shutdown);
            Ok(json!("ok"))
        }
        "printer.restart" | "printer.firmware_restart" => {
            // Klippy restarts: startup now, ready again on the next tick.
            st.printer.set_klippy(KlippyState::Startup);
            shared.knobs.set_klippy_state(KlippyState::Ready);
            Ok(json!("ok"))
        }
        "server.files.list" => {
            let root = params
                .get("root")
                .and_then(Value::as_str)
                .unwrap_or("gcodes");
            match root {
                "gcodes" => Ok(st.files.list_json()),
                "config" => Ok(json!([])),
                other => Err((400, format!("Invalid root path ({other})"))),
            }
        }
        "server.files.delete_file" => {
            let path = str_arg(params, "path")?;
            let Some(rel) = path.trim_start_matches('/').strip_prefix("gcodes/") else {
                return Err((400, format!("Invalid root path ({path})")));
            };
            let rel =
                files::normalise(rel).ok_or_else(|| (400, format!("Invalid path ({path})")))?;
            let loaded = matches!(
                st.printer.print_state,
                PrintState::Printing | PrintState::Paused
            ) && st.printer.filename == rel;
            if loaded {
                return Err((403, "File currently in use".into()));
            }
            let file = st
                .files
                .remove(&rel)
                .ok_or_else(|| (404, format!("File does not exist ({rel})")))?;
            Ok(json!({"item": item_json(&rel, &file), "action": "delete_file"}))
        }
        _ => Err((-32601, "Method not found".into())),
    }
}
