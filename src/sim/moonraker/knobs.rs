//! Fault and behaviour knobs of one simulated Moonraker. A [`MoonrakerKnobs`] handle is cheap to
//! clone and shared by every part of the simulator; tests change values while it runs and the
//! change applies to the next request, upload or status tick.

use std::sync::Arc;
use tokio::sync::watch;

/// Klippy's state as Moonraker reports it (`server.info` `klippy_state`, `webhooks.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KlippyState {
    #[default]
    Ready,
    Startup,
    Shutdown,
    Error,
    /// Moonraker has no connection to Klippy at all (`klippy_connected: false`).
    Disconnected,
}

impl KlippyState {
    /// The string Moonraker and Klipper use.
    pub fn as_str(self) -> &'static str {
        match self {
            KlippyState::Ready => "ready",
            KlippyState::Startup => "startup",
            KlippyState::Shutdown => "shutdown",
            KlippyState::Error => "error",
            KlippyState::Disconnected => "disconnected",
        }
    }

    /// Klipper's usual `state_message` for this state.
    pub fn default_message(self) -> &'static str {
        match self {
            KlippyState::Ready => "Printer is ready",
            KlippyState::Startup => {
                "Printer is not ready\nThe klippy host software is attempting to connect.  Please\nretry in a few moments."
            }
            KlippyState::Shutdown => {
                "Lost communication with MCU 'mcu'\nOnce the underlying issue is corrected, use the\n\"FIRMWARE_RESTART\" command to reset the firmware, reload the\nconfig, and restart the host software.\nPrinter is shutdown\n"
            }
            KlippyState::Error => {
                "mcu 'mcu': Unable to connect\nOnce the underlying issue is corrected, use the\n\"FIRMWARE_RESTART\" command to reset the firmware, reload the\nconfig, and restart the host software.\nError configuring printer\n"
            }
            KlippyState::Disconnected => "Klippy Disconnected",
        }
    }
}

/// How `POST /server/files/upload` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadFailure {
    #[default]
    None,
    /// 500 Internal Server Error after reading the body, nothing stored.
    Http500,
    /// The disk is full: Moonraker's behaviour (500, "Unable to save file"), nothing stored.
    DiskFull,
    /// Read part of the body, then close the TCP connection without a response.
    DropMidBody,
}

/// All knob values. Defaults describe a healthy printer.
#[derive(Debug, Clone, PartialEq)]
pub struct MoonrakerKnobValues {
    /// Execute requests but never publish a response.
    pub drop_responses: bool,
    /// Execute requests of these methods but never publish their responses.
    pub drop_responses_to: Vec<String>,
    /// Answer `printer.print.start` with "ok" but never start printing.
    pub ignore_start: bool,
    /// Answer `printer.print.start` with Klipper's busy error (400, "SD busy"), no print.
    pub refuse_start: bool,
    /// Klippy's state (`printer.*` methods fail unless `Ready`).
    pub klippy_state: KlippyState,
    /// Publish non-JSON garbage on `{instance}/klipper/status` instead of each status update.
    pub malformed_status: bool,
    /// Publish one status payload larger than 1 MiB (once per activation, while connected).
    pub oversize_status: bool,
    pub upload_failure: UploadFailure,
    /// Publish every JSON-RPC response twice.
    pub duplicate_responses: bool,
    /// QoS of every publish and of the request subscription (Moonraker's `default_qos`), 0 or 1.
    pub mqtt_qos: u8,
    /// Publish no status updates (JSON-RPC is still answered).
    pub status_silence: bool,
    /// Bytes of gcode storage; uploads beyond it fail like a full disk. `None` = unlimited.
    pub storage_capacity: Option<u64>,
    /// Print duration (simulated seconds) for files without a slicer time estimate.
    pub default_print_secs: f64,
    /// Layer count for files without layer markers (`None`: `info.total_layer` stays null).
    pub default_total_layers: Option<u32>,
}

impl Default for MoonrakerKnobValues {
    fn default() -> Self {
        Self {
            drop_responses: false,
            drop_responses_to: Vec::new(),
            ignore_start: false,
            refuse_start: false,
            klippy_state: KlippyState::Ready,
            malformed_status: false,
            oversize_status: false,
            upload_failure: UploadFailure::None,
            duplicate_responses: false,
            mqtt_qos: 0,
            status_silence: false,
            storage_capacity: None,
            default_print_secs: 600.0,
            default_total_layers: Some(50),
        }
    }
}

/// Shared, live-editable knobs of one simulated Moonraker.
#[derive(Clone)]
pub struct MoonrakerKnobs {
    tx: Arc<watch::Sender<MoonrakerKnobValues>>,
}

impl Default for MoonrakerKnobs {
    fn default() -> Self {
        Self::new(MoonrakerKnobValues::default())
    }
}

impl MoonrakerKnobs {
    pub fn new(values: MoonrakerKnobValues) -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(values)),
        }
    }
    /// A copy of the current values.
    pub fn get(&self) -> MoonrakerKnobValues {
        self.tx.borrow().clone()
    }
    /// Change knobs: `knobs.set(|k| k.drop_responses = true)`.
    pub fn set(&self, f: impl FnOnce(&mut MoonrakerKnobValues)) {
        self.tx.send_modify(f);
    }
    /// Observe changes.
    pub fn watch(&self) -> watch::Receiver<MoonrakerKnobValues> {
        self.tx.subscribe()
    }
    pub fn set_klippy_state(&self, state: KlippyState) {
        self.set(|k| k.klippy_state = state);
    }
}
