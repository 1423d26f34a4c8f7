//! Vendor-neutral printer state: the typed, merged view of a printer's reports plus the health of
//! the link that carries them. Pure data; the Bambu report parser fills it in.

use serde::Serialize;
use std::time::Instant;

/// The printer's job state (`print.gcode_state` on Bambu printers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GcodeState {
    Idle,
    Prepare,
    Slicing,
    Running,
    Pause,
    Finish,
    Failed,
    /// `INIT`, `OFFLINE`, `UNKNOWN`, `""` or anything unrecognised.
    #[default]
    Unknown,
}

impl GcodeState {
    pub fn parse(s: &str) -> Self {
        match s {
            "IDLE" => Self::Idle,
            "PREPARE" => Self::Prepare,
            "SLICING" => Self::Slicing,
            "RUNNING" => Self::Running,
            "PAUSE" => Self::Pause,
            "FINISH" => Self::Finish,
            "FAILED" => Self::Failed,
            _ => Self::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "IDLE",
            Self::Prepare => "PREPARE",
            Self::Slicing => "SLICING",
            Self::Running => "RUNNING",
            Self::Pause => "PAUSE",
            Self::Finish => "FINISH",
            Self::Failed => "FAILED",
            Self::Unknown => "UNKNOWN",
        }
    }
    /// A new job may be started from this state (I4).
    pub fn is_startable(self) -> bool {
        matches!(self, Self::Idle | Self::Finish | Self::Failed)
    }
    /// A job is in progress (makes the plate occupied).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Prepare | Self::Slicing | Self::Running | Self::Pause
        )
    }
}

/// One HMS (health management) entry as the printer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HmsEntry {
    pub attr: u32,
    pub code: u32,
}

impl HmsEntry {
    /// `AAAA_BBBB_CCCC_DDDD`, never shortened.
    pub fn display_code(&self) -> String {
        format!(
            "{:04X}_{:04X}_{:04X}_{:04X}",
            self.attr >> 16,
            self.attr & 0xFFFF,
            self.code >> 16,
            self.code & 0xFFFF
        )
    }
    /// 1 fatal, 2 serious, 3 common, 4 info.
    pub fn severity(&self) -> u32 {
        self.code >> 16
    }
    /// Severity 1–2 blocks starts.
    pub fn blocks_start(&self) -> bool {
        matches!(self.severity(), 1 | 2)
    }
}

/// The merged, typed printer state. Fields absent from every report so far are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct PrinterState {
    pub gcode_state: GcodeState,
    pub percent: Option<u32>,
    pub remaining_minutes: Option<u32>,
    pub layer: Option<u32>,
    pub total_layers: Option<u32>,
    pub nozzle_temp: Option<f64>,
    pub nozzle_target: Option<f64>,
    pub bed_temp: Option<f64>,
    pub bed_target: Option<f64>,
    /// Only models with a real chamber sensor report this.
    pub chamber_temp: Option<f64>,
    pub subtask_id: Option<String>,
    pub subtask_name: Option<String>,
    pub gcode_file: Option<String>,
    /// 0 = none.
    pub print_error: u32,
    pub hms: Vec<HmsEntry>,
    pub sdcard: Option<bool>,
    /// `print.fun` bit 29: printer requires signed commands (Developer Mode off).
    pub requires_signed_commands: Option<bool>,
    pub chamber_light_on: Option<bool>,
    pub wifi_signal: Option<String>,
    /// Firmware version from `get_version` (module `ota`).
    pub firmware: Option<String>,
    /// A printer-side message for people (e.g. "Klipper is shutdown: …"); Klipper printers.
    pub status_message: Option<String>,
}

/// Health of the link to a printer, shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum LinkState {
    #[default]
    Connecting,
    Online,
    /// CONNACK 4/5 (or FTPS 530): the access code (or serial) is wrong.
    AccessCodeRejected,
    /// TLS failed, or the certificate fingerprint differs from the pinned one.
    TlsError(String),
    /// The printer's certificate changed since it was pinned: re-pair explicitly.
    FingerprintChanged {
        pinned: String,
        seen: String,
    },
    /// Printer refuses unsigned commands: LAN-only + Developer Mode needed.
    DeveloperModeRequired,
    /// TCP connect failed / timed out; retrying with backoff.
    Unreachable(String),
    /// Connected and subscribed but nothing arrives (wrong serial or pushes stopped).
    Silent,
}

impl LinkState {
    pub fn is_online(&self) -> bool {
        matches!(self, Self::Online | Self::DeveloperModeRequired)
    }
    /// Human text for the status page.
    pub fn describe(&self) -> String {
        match self {
            Self::Connecting => "connecting".into(),
            Self::Online => "online".into(),
            Self::AccessCodeRejected => {
                "access code rejected — read the code from the printer screen (it changes when LAN-only or Developer Mode is toggled)".into()
            }
            Self::TlsError(e) => format!("TLS error: {e}"),
            Self::FingerprintChanged { pinned, seen } => format!(
                "certificate changed (pinned {pinned}, printer now presents {seen}); re-pair the printer if this is expected"
            ),
            Self::DeveloperModeRequired => {
                "Developer Mode required — enable LAN Only and Developer Mode on the printer screen; the gateway cannot start, pause or stop prints until then".into()
            }
            Self::Unreachable(e) => format!("unreachable: {e}"),
            Self::Silent => "connected but no reports (wrong serial, or pushes stopped)".into(),
        }
    }
}

/// Whether the printer accepts our control commands (docs/bambu-protocol.md §10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ControlState {
    #[default]
    Unknown,
    Ok,
    Refused,
}

/// Everything the rest of the gateway knows about one printer at one instant.
#[derive(Debug, Clone, Default)]
pub struct PrinterSnapshot {
    pub link: LinkState,
    pub control: ControlState,
    /// `None` until the first report of this connection has arrived.
    pub state: Option<PrinterState>,
    /// A full report (`msg` 0) has been merged on this connection (deltas before it are untrusted).
    pub have_full_report: bool,
    /// Monotonic time of the last message of any kind on the report topic.
    pub last_report_at: Option<Instant>,
    /// Monotonic time of the last full report.
    pub last_full_report_at: Option<Instant>,
    /// Increments on every new connection; lets observers see a reconnect.
    pub connection_epoch: u64,
    /// Last command ack seen: (command, sequence_id, result, reason).
    pub last_ack: Option<CommandAck>,
}

/// An acknowledgement of one of our commands, correlated by `sequence_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandAck {
    pub command: String,
    pub sequence_id: String,
    /// `Some(true)` success, `Some(false)` fail*, `None` no `result` field.
    pub success: Option<bool>,
    pub reason: Option<String>,
    pub err_code: Option<u64>,
}
