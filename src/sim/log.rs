//! Ground truth for tests: every PUBLISH the simulator received on its request topic, in arrival
//! order, and the simulator's internal state ([`SimTruth`]) that the gateway's merged view can be
//! compared to. Tests await entries and transitions instead of sleeping.

use crate::printer::{GcodeState, HmsEntry};
use bytes::Bytes;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// One PUBLISH received on `device/<serial>/request`.
#[derive(Debug, Clone)]
pub struct LoggedCommand {
    /// 0-based position in the log.
    pub index: usize,
    /// Monotonic arrival time.
    pub at: Instant,
    /// Arrival time in unix milliseconds.
    pub unix_ms: u64,
    /// Connection the publish arrived on (increments per TCP connection).
    pub conn_id: u64,
    pub client_id: String,
    pub qos: u8,
    /// First top-level section key in message order (`print`, `pushing`, …) if the payload
    /// parsed as JSON.
    pub section: Option<String>,
    pub command: Option<String>,
    /// `sequence_id` as a string (ints are converted).
    pub sequence_id: Option<String>,
    /// Every section of the message in message order with its `command` (a message may carry
    /// several, e.g. `pushing.pushall` + `info.get_version` + `upgrade.get_history`).
    pub sections: Vec<(String, Option<String>)>,
    /// Parsed payload (after stripping trailing NUL/whitespace), if it was JSON.
    pub json: Option<Value>,
    /// Raw payload bytes as received.
    pub payload: Bytes,
}

impl LoggedCommand {
    /// `true` for `print.project_file` (in any section of the message).
    pub fn is_project_file(&self) -> bool {
        self.has("print", "project_file")
    }

    /// The message carries `section.command`.
    pub fn has(&self, section: &str, command: &str) -> bool {
        self.sections
            .iter()
            .any(|(s, c)| s == section && c.as_deref() == Some(command))
    }
}

/// Append-only command log with a broadcast for live observers.
#[derive(Clone)]
pub struct CommandLog {
    entries: Arc<Mutex<Vec<LoggedCommand>>>,
    tx: broadcast::Sender<LoggedCommand>,
}

impl Default for CommandLog {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandLog {
    pub fn new() -> Self {
        Self {
            entries: Arc::new(Mutex::new(Vec::new())),
            tx: broadcast::channel(1024).0,
        }
    }

    /// Record a publish; returns the stored entry.
    pub fn record(
        &self,
        conn_id: u64,
        client_id: &str,
        qos: u8,
        payload: Bytes,
        json: Option<Value>,
        in_order: &[(String, Value)],
    ) -> LoggedCommand {
        let sections: Vec<(String, Option<String>)> = in_order
            .iter()
            .filter(|(_, body)| body.is_object())
            .map(|(s, body)| {
                let c = body
                    .get("command")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                (s.clone(), c)
            })
            .collect();
        let first = in_order
            .iter()
            .find(|(_, b)| b.is_object())
            .map(|(s, b)| serde_json::json!({ s.clone(): b.clone() }));
        let (section, command, sequence_id) = first
            .as_ref()
            .or(json.as_ref())
            .map(describe)
            .unwrap_or_default();
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = LoggedCommand {
            index: entries.len(),
            at: Instant::now(),
            unix_ms,
            conn_id,
            client_id: client_id.to_string(),
            qos,
            section,
            command,
            sequence_id,
            sections,
            json,
            payload,
        };
        entries.push(entry.clone());
        // Sent under the lock so that subscribers see entries in log order.
        let _ = self.tx.send(entry.clone());
        entry
    }

    pub fn snapshot(&self) -> Vec<LoggedCommand> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LoggedCommand> {
        self.tx.subscribe()
    }
}

/// `(section, command, sequence_id)` of a request message.
fn describe(v: &Value) -> (Option<String>, Option<String>, Option<String>) {
    let Some(obj) = v.as_object() else {
        return (None, None, None);
    };
    let Some((section, body)) = obj.iter().next() else {
        return (None, None, None);
    };
    let command = body
        .get("command")
        .and_then(Value::as_str)
        .map(str::to_string);
    let sequence_id = body.get("sequence_id").and_then(sequence_id_string);
    (Some(section.clone()), command, sequence_id)
}

/// A `sequence_id` as a string whether it was sent as a string or a number.
pub fn sequence_id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The simulator's internal truth at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct SimTruth {
    pub gcode_state: GcodeState,
    pub percent: u32,
    pub remaining_minutes: u32,
    pub layer: u32,
    pub total_layers: u32,
    pub stg_cur: i32,
    /// Temperatures as reported (overrides applied).
    pub nozzle_temp: f64,
    pub nozzle_target: f64,
    pub bed_temp: f64,
    pub bed_target: f64,
    pub chamber_temp: f64,
    pub subtask_id: String,
    pub subtask_name: String,
    pub gcode_file: String,
    pub print_error: u32,
    pub hms: Vec<HmsEntry>,
    pub lights_on: bool,
    /// Authenticated MQTT sessions right now.
    pub connections: usize,
    /// The MQTT port accepts TCP connections (false during a power cut or `disconnect_for`).
    pub listening: bool,
    /// Periodic pushes enabled (`pushing.start`/`stop`).
    pub pushing: bool,
    /// Printer powered (false after a power cut).
    pub powered: bool,
    /// Jobs that entered PREPARE since the simulator started.
    pub jobs_started: u64,
    /// Report pushes published (full and delta).
    pub pushes: u64,
}
