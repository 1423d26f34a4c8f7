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
    /// AMS units, their trays and the external spool; `None` while no report carried any.
    pub filament: Option<FilamentSlots>,
}

/// Where filament can come from on a printer: its AMS units and external spool holders, as its
/// reports describe them (Bambu `print.ams`, `print.vt_tray` / `print.vir_slot`).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct FilamentSlots {
    /// AMS units in report order.
    pub units: Vec<AmsUnit>,
    /// External spool holders (one; two on dual-nozzle models).
    pub external: Vec<Tray>,
}

impl FilamentSlots {
    /// Every tray, AMS trays first, then the external spools.
    pub fn trays(&self) -> impl Iterator<Item = &Tray> {
        self.units
            .iter()
            .flat_map(|u| u.trays.iter())
            .chain(self.external.iter())
    }
    /// The trays feeding a nozzle now.
    pub fn active(&self) -> impl Iterator<Item = &Tray> {
        self.trays().filter(|t| t.active)
    }
}

/// Which kind of AMS a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AmsKind {
    /// AMS or AMS 2 Pro: four trays (unit ids 0–3).
    Ams,
    /// AMS lite of the A1 / A1 mini: four trays.
    AmsLite,
    /// AMS HT: one tray (unit ids 128–135).
    AmsHt,
}

impl AmsKind {
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Ams => "AMS",
            Self::AmsLite => "AMS lite",
            Self::AmsHt => "AMS HT",
        }
    }
}

/// One AMS unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmsUnit {
    /// The unit's `id` as reported: 0–3, AMS HT 128–135.
    pub id: u32,
    pub kind: AmsKind,
    /// Humidity level as Bambu's apps show it: 1 (dry) … 5 (wet); the report's `humidity`
    /// counts the other way round (5 = dry).
    pub humidity_level: Option<u8>,
    /// Relative humidity in percent (`humidity_raw`, newer AMS units only).
    pub humidity_percent: Option<u8>,
    /// Temperature inside the unit (°C) where it has a sensor.
    pub temp_c: Option<f64>,
    /// Minutes of drying left while the unit dries its filament.
    pub drying_minutes_left: Option<u32>,
    pub trays: Vec<Tray>,
}

/// One filament slot: an AMS tray or an external spool holder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tray {
    /// The AMS unit's id, `None` for an external spool.
    pub unit: Option<u32>,
    /// Slot within the unit (0–3), or the external spool's id (254 / 255).
    pub slot: u32,
    /// The tray id `ams_mapping` uses: `unit * 4 + slot` (0–15), the unit id for an AMS HT
    /// (128–135), 254 / 255 for an external spool; `None` when the unit id fits no known
    /// numbering.
    pub mapping_id: Option<u32>,
    /// A spool is in the slot.
    pub loaded: bool,
    /// Material (`tray_type`, e.g. `PLA`, `PETG`); `None` when empty or not set on the printer.
    pub material: Option<String>,
    /// Product line (`tray_sub_brands`, e.g. `PLA Matte`).
    pub sub_brand: Option<String>,
    /// Bambu filament preset id (`tray_info_idx`, e.g. `GFA00`).
    pub filament_id: Option<String>,
    /// Colour as `RRGGBBAA` hex, upper case.
    pub color: Option<String>,
    /// Filament left in percent, where the printer estimates it (`remain`; -1 = not estimated).
    pub remain_percent: Option<u8>,
    /// This tray feeds a nozzle now.
    pub active: bool,
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
