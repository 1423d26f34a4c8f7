//! The printer vocabulary every room shares: the models printgate knows, with their codes,
//! serial prefixes and protocol traits (docs/bambu-protocol.md §11), and the subtask ids and
//! remote file names by which a printer's reports are matched to printgate's jobs (§4.2, §5.3).

use serde::{Deserialize, Serialize};

/// Printer models printgate knows (docs/bambu-protocol.md §11).
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
    /// Any Klipper printer reached through Moonraker's `[mqtt]` component (`kind = "moonraker"`).
    #[serde(rename = "KLIPPER", alias = "klipper", alias = "Klipper")]
    Klipper,
}

impl Model {
    /// The Bambu Lab models (Klipper printers are not listed: they have no model code, serial
    /// prefix or SSDP announcement).
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
            Model::Klipper => "klipper",
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
            Model::Klipper => "",
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
            Model::Klipper => "Klipper",
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
            Model::Klipper => "KLIPPER",
        }
    }
    /// A Bambu Lab printer (MQTT/FTPS on the printer) rather than a Klipper one.
    pub fn is_bambu(self) -> bool {
        self != Model::Klipper
    }
    pub fn from_model_code(code: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.model_code() == code)
    }
    pub fn parse(name: &str) -> Option<Model> {
        let n = name.to_ascii_uppercase().replace(['-', ' ', '_'], "");
        Model::ALL
            .into_iter()
            .chain([Model::Klipper])
            .find(|m| m.config_name() == n)
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

/// Largest subtask id a printer accepts unchanged (P1S firmware clamps bigger values).
pub const MAX_SUBTASK_ID: u32 = (1u32 << 31) - 1;

/// Remote file name used for a subtask id.
pub fn remote_name_for(subtask_id: u32) -> String {
    format!("pg-{subtask_id}.gcode.3mf")
}

/// Remote file name of a plain G-code job (Klipper printers) for a subtask id.
pub fn gcode_remote_name_for(subtask_id: u32) -> String {
    format!("pg-{subtask_id}.gcode")
}

/// The subtask id in a remote file name printgate gave (`pg-<id>.gcode[.3mf]`), if it is one.
pub fn subtask_id_in_remote_name(name: &str) -> Option<u32> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let rest = base.strip_prefix("pg-")?;
    let digits = rest
        .strip_suffix(".gcode.3mf")
        .or_else(|| rest.strip_suffix(".gcode"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
