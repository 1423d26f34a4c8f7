//! Ground truth for tests: every JSON-RPC request the simulated Moonraker received on its request
//! topic, in arrival order ([`RpcLog`]), and its internal state ([`MoonrakerTruth`]). Tests await
//! entries and transitions instead of sleeping.

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

use super::knobs::KlippyState;
use super::model::PrintState;

/// What happened to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcOutcome {
    /// The method ran (its result may still have been an error, see `error`).
    Executed,
    /// Refused before running: a repeated `mqtt_timestamp` (code -10000).
    Duplicate,
    /// Refused before running: parse error, invalid request, unknown method, bad params.
    Rejected,
}

/// One JSON-RPC request received on `{instance}/moonraker/api/request`.
#[derive(Debug, Clone)]
pub struct RpcEntry {
    /// 0-based position in the log.
    pub index: usize,
    /// Monotonic arrival time.
    pub at: Instant,
    /// MQTT connection the request arrived on (1 for the first connection, +1 per reconnect).
    pub conn: u64,
    /// `method`, or "" when the request had none (or was not JSON).
    pub method: String,
    /// `params` as received (including `mqtt_timestamp`), `Value::Null` when absent.
    pub params: Value,
    /// `id` as received (`Value::Null` when absent).
    pub id: Value,
    /// `params.mqtt_timestamp`, if present.
    pub mqtt_timestamp: Option<Value>,
    pub outcome: RpcOutcome,
    /// `(code, message)` of the error response, if the answer was an error.
    pub error: Option<(i64, String)>,
    /// The response published, `None` for notifications (no `id`).
    pub response: Option<Value>,
    /// `false` when the response was withheld (`drop_responses`) or MQTT was down.
    pub response_sent: bool,
    /// The raw payload.
    pub payload: Vec<u8>,
}

impl RpcEntry {
    pub fn executed(&self) -> bool {
        self.outcome == RpcOutcome::Executed
    }
}

/// Append-only request log with a broadcast for live observers.
#[derive(Clone)]
pub struct RpcLog {
    entries: Arc<Mutex<Vec<RpcEntry>>>,
    tx: broadcast::Sender<RpcEntry>,
}

impl Default for RpcLog {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcLog {
    pub fn new() -> Self {
        Self {
            entries: Arc::new(Mutex::new(Vec::new())),
            tx: broadcast::channel(1024).0,
        }
    }

    /// Record an entry (its `index` is assigned here); returns the stored entry.
    pub(crate) fn record(&self, mut entry: RpcEntry) -> RpcEntry {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entry.index = entries.len();
        entries.push(entry.clone());
        // Sent under the lock so that subscribers see entries in log order.
        let _ = self.tx.send(entry.clone());
        entry
    }

    /// Every entry so far, in arrival order.
    pub fn entries(&self) -> Vec<RpcEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RpcEntry> {
        self.tx.subscribe()
    }

    /// The first entry (already logged or arriving within `timeout`) that matches `pred`.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&RpcEntry) -> bool,
        timeout: Duration,
    ) -> Option<RpcEntry> {
        // Subscribe before reading the log so that nothing falls between the two.
        let mut rx = self.subscribe();
        if let Some(e) = self.entries().into_iter().find(|e| pred(e)) {
            return Some(e);
        }
        tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Ok(e) if pred(&e) => return Some(e),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(e) = self.entries().into_iter().find(|e| pred(e)) {
                            return Some(e);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Entries whose method is `method`.
    pub fn calls(&self, method: &str) -> Vec<RpcEntry> {
        self.entries()
            .into_iter()
            .filter(|e| e.method == method)
            .collect()
    }
}

/// The simulated Moonraker's internal state at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct MoonrakerTruth {
    pub print_state: PrintState,
    /// `print_stats.filename` ("" when none is loaded).
    pub filename: String,
    /// `virtual_sdcard.progress`, 0.0 ..= 1.0.
    pub progress: f64,
    pub current_layer: Option<u32>,
    pub total_layer: Option<u32>,
    pub extruder_temp: f64,
    pub extruder_target: f64,
    pub bed_temp: f64,
    pub bed_target: f64,
    pub klippy_state: KlippyState,
    /// The MQTT session is up (CONNACK accepted, not yet dropped).
    pub mqtt_connected: bool,
    /// Why the last connection attempt failed (e.g. CONNACK refused: bad credentials).
    pub mqtt_error: Option<String>,
    /// MQTT connections established since start.
    pub mqtt_connections: u64,
    /// Prints that entered `printing` since start (any source).
    pub jobs_started: u64,
    /// Status payloads published on `klipper/status` (full and delta).
    pub status_publishes: u64,
}

/// One successful `POST /server/files/upload`.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRecord {
    /// Path relative to the gcodes root.
    pub path: String,
    pub size: u64,
    /// The form asked Moonraker to start printing (`print=true`); printgate must never do this.
    pub print_requested: bool,
    pub print_started: bool,
    pub at: Instant,
}
