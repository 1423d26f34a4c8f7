//! `printgate.toml`: the one configuration file. Parsed with serde (unknown keys are errors) and
//! validated as a whole so that every problem is reported at once, each naming the key, the bad
//! value and the fix. `serve`, `demo`, `check-config` and the tests all go through [`Config::load`]
//! / [`Config::validate`].

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Printer models printgate knows (BAMBU-LAN.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Model {
    X1C,
    X1E,
    P1P,
    P1S,
    A1,
    #[serde(rename = "A1MINI", alias = "A1mini", alias = "A1-mini")]
    A1Mini,
    P2S,
    H2D,
}

impl Model {
    pub const ALL: [Model; 8] = [
        Model::X1C,
        Model::X1E,
        Model::P1P,
        Model::P1S,
        Model::A1,
        Model::A1Mini,
        Model::P2S,
        Model::H2D,
    ];
    /// `printer_model_id` in slice_info.config and SSDP `DevModel`.
    pub fn model_code(self) -> &'static str {
        match self {
            Model::X1C => "BL-P001",
            Model::X1E => "C13",
            Model::P1P => "C11",
            Model::P1S => "C12",
            Model::A1 => "N2S",
            Model::A1Mini => "N1",
            Model::P2S => "N7",
            Model::H2D => "O1D",
        }
    }
    /// Serial number prefix.
    pub fn serial_prefix(self) -> &'static str {
        match self {
            Model::X1C => "00M",
            Model::X1E => "03W",
            Model::P1P => "01S",
            Model::P1S => "01P",
            Model::A1 => "039",
            Model::A1Mini => "030",
            Model::P2S => "22E",
            Model::H2D => "094",
        }
    }
    pub fn display_name(self) -> &'static str {
        match self {
            Model::X1C => "X1 Carbon",
            Model::X1E => "X1E",
            Model::P1P => "P1P",
            Model::P1S => "P1S",
            Model::A1 => "A1",
            Model::A1Mini => "A1 mini",
            Model::P2S => "P2S",
            Model::H2D => "H2D",
        }
    }
    pub fn config_name(self) -> &'static str {
        match self {
            Model::X1C => "X1C",
            Model::X1E => "X1E",
            Model::P1P => "P1P",
            Model::P1S => "P1S",
            Model::A1 => "A1",
            Model::A1Mini => "A1MINI",
            Model::P2S => "P2S",
            Model::H2D => "H2D",
        }
    }
    pub fn from_model_code(code: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.model_code() == code)
    }
    pub fn parse(name: &str) -> Option<Model> {
        let n = name.to_ascii_uppercase().replace(['-', ' ', '_'], "");
        Model::ALL.into_iter().find(|m| m.config_name() == n)
    }
    /// P1/A1 send deltas and allow one local MQTT client.
    pub fn sends_deltas(self) -> bool {
        matches!(self, Model::P1P | Model::P1S | Model::A1 | Model::A1Mini)
    }
    pub fn has_chamber_sensor(self) -> bool {
        matches!(self, Model::X1C | Model::X1E | Model::H2D)
    }
    /// Maximum concurrent local MQTT clients the firmware tolerates.
    pub fn max_mqtt_clients(self) -> usize {
        match self {
            Model::X1C | Model::X1E => 4,
            _ => 1,
        }
    }
}

/// How the printer's TLS certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Trust on first use: pin the leaf's SHA-256 and require CN = serial afterwards.
    #[default]
    Pin,
    /// Accept any certificate (only for troubleshooting; logged loudly).
    Insecure,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrinterConfig {
    /// Unique display name, also used in URLs and MQTT topics.
    pub name: String,
    pub model: Model,
    /// 15-character serial (printer screen / SSDP USN), case-sensitive.
    pub serial: String,
    /// IP address or host name on the LAN.
    pub host: String,
    /// 8-character LAN access code from the printer screen.
    pub access_code: String,
    #[serde(default)]
    pub tls: TlsMode,
    /// MQTT port (8883 on real printers).
    #[serde(default = "default_mqtt_port")]
    pub mqtt_port: u16,
    /// FTPS port (990 on real printers).
    #[serde(default = "default_ftps_port")]
    pub ftps_port: u16,
}

fn default_mqtt_port() -> u16 {
    8883
}
fn default_ftps_port() -> u16 {
    990
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// Timings of the printer links (BAMBU-LAN.md §2.6). Defaults follow the document; tests shorten them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// MQTT keepalive in seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// No message for this long → `pushing.start` + `pushall`.
    #[serde(default = "default_silence")]
    pub silence_secs: u64,
    /// Still nothing this long after the nudge → reconnect with a fresh client.
    #[serde(default = "default_silence_reconnect")]
    pub silence_reconnect_secs: u64,
    /// Reconnect backoff start and cap, in milliseconds.
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Backoff after the access code was rejected.
    #[serde(default = "default_auth_backoff")]
    pub auth_backoff_secs: u64,
    /// Minimum time between two `pushall` requests.
    #[serde(default = "default_pushall_interval")]
    pub pushall_min_interval_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_keepalive() -> u64 {
    30
}
fn default_silence() -> u64 {
    60
}
fn default_silence_reconnect() -> u64 {
    30
}
fn default_backoff_min() -> u64 {
    1000
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_auth_backoff() -> u64 {
    300
}
fn default_pushall_interval() -> u64 {
    3000
}

/// Dispatcher windows (DESIGN.md I1–I4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// A plate-clear tap expires after this many seconds.
    #[serde(default = "default_plate_ttl")]
    pub plate_clear_ttl_secs: u64,
    /// A start decision not published within this many seconds is dropped (I3).
    #[serde(default = "default_start_window")]
    pub start_window_secs: u64,
    /// The printer's last full report must be younger than this at publish time (I4).
    #[serde(default = "default_report_max_age")]
    pub report_max_age_secs: u64,
    /// Phase A of start confirmation: active state or our subtask id within this many seconds.
    #[serde(default = "default_confirm_a")]
    pub confirm_phase_a_secs: u64,
    /// Phase B: after only our id was echoed, an active state within this many more seconds.
    #[serde(default = "default_confirm_b")]
    pub confirm_phase_b_secs: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_plate_ttl() -> u64 {
    30 * 60
}
fn default_start_window() -> u64 {
    60
}
fn default_report_max_age() -> u64 {
    10
}
fn default_confirm_a() -> u64 {
    90
}
fn default_confirm_b() -> u64 {
    180
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite database and stored files live.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub link: LinkConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    #[serde(default, rename = "printers")]
    pub printers: Vec<PrinterConfig>,
}
