//! The fixed set of harmless commands `[printers.virtual_printer] allow = [...]` can open to a
//! virtual printer's clients. By default a virtual printer refuses everything that is not a
//! status request, pause / resume / stop / chamber light or a queued `project_file`; the
//! allow-list can forward these few settings, which change neither motion, heaters, filament
//! nor what prints:
//!
//! - `print_speed`: the running print's speed profile (`param` "1" silent … "4" ludicrous);
//! - `ams_filament_setting`: the metadata of an AMS tray (type, colour, temperatures shown);
//!   it moves nothing;
//! - `xcam_control_set`: switching the camera's AI detections (spaghetti, first layer, …);
//! - `ipcam_record_set`: switching the camera's recording on or off.
//!
//! Never in the set, whatever the config says: `project_file`, `gcode_file`, `gcode_line`,
//! motion, heating, calibration, AMS loading/unloading, or anything else that can start a print.

use crate::printer::SettingCommand;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A command a virtual printer may forward when the config allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AllowedCommand {
    PrintSpeed,
    AmsFilamentSetting,
    XcamControlSet,
    IpcamRecordSet,
}

impl AllowedCommand {
    /// Every command that can be allowed.
    pub const ALL: [AllowedCommand; 4] = [
        AllowedCommand::PrintSpeed,
        AllowedCommand::AmsFilamentSetting,
        AllowedCommand::XcamControlSet,
        AllowedCommand::IpcamRecordSet,
    ];

    /// Its `command` value in a request.
    pub fn command(self) -> &'static str {
        match self {
            AllowedCommand::PrintSpeed => "print_speed",
            AllowedCommand::AmsFilamentSetting => "ams_filament_setting",
            AllowedCommand::XcamControlSet => "xcam_control_set",
            AllowedCommand::IpcamRecordSet => "ipcam_record_set",
        }
    }

    /// The request section it comes in (docs/bambu-protocol.md §4).
    pub fn section(self) -> &'static str {
        match self {
            AllowedCommand::PrintSpeed | AllowedCommand::AmsFilamentSetting => "print",
            AllowedCommand::XcamControlSet => "xcam",
            AllowedCommand::IpcamRecordSet => "camera",
        }
    }

    /// The allowed command a request's section and command name, if any.
    pub fn of(section: &str, command: &str) -> Option<AllowedCommand> {
        Self::ALL
            .into_iter()
            .find(|a| a.section() == section && a.command() == command)
    }

    /// The command to publish for a client's request body, or why its fields are refused.
    pub fn setting(self, body: &Map<String, Value>) -> Result<SettingCommand, String> {
        if self == AllowedCommand::PrintSpeed {
            let level = body.get("param").and_then(Value::as_str).map(str::trim);
            if !matches!(level, Some("1" | "2" | "3" | "4")) {
                return Err(format!(
                    "print_speed takes param \"1\" (silent) to \"4\" (ludicrous), not {:?}; nothing was sent",
                    body.get("param")
                ));
            }
        }
        let mut fields = body.clone();
        fields.remove("sequence_id");
        fields.remove("command");
        Ok(SettingCommand {
            section: self.section(),
            command: self.command(),
            fields,
        })
    }

    fn names() -> String {
        Self::ALL
            .iter()
            .map(|a| a.command())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl TryFrom<String> for AllowedCommand {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if let Some(a) = Self::ALL.into_iter().find(|a| a.command() == name) {
            return Ok(a);
        }
        let why = match name.as_str() {
            "project_file" | "gcode_file" => "it starts a print, which only the plate gate may do",
            "gcode_line" => "G-code can move and heat the printer",
            n if n.contains("cali") => "calibration moves and heats the printer",
            n if n.starts_with("ams") => "it moves filament",
            _ => "it is not one of the harmless commands printgate can forward",
        };
        Err(format!(
            "{name:?} cannot be allowed: {why}; the allow-list takes only {}",
            Self::names()
        ))
    }
}

impl From<AllowedCommand> for String {
    fn from(a: AllowedCommand) -> String {
        a.command().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_fixed_harmless_set_can_be_allowed_and_the_rest_is_refused_in_words() {
        for a in AllowedCommand::ALL {
            assert_eq!(AllowedCommand::try_from(a.command().to_string()), Ok(a));
            assert_eq!(AllowedCommand::of(a.section(), a.command()), Some(a));
        }
        for (bad, word) in [
            ("project_file", "starts a print"),
            ("gcode_file", "starts a print"),
            ("gcode_line", "G-code"),
            ("calibration", "calibration"),
            ("ams_change_filament", "moves filament"),
            ("set_bed_temp", "not one of the harmless"),
        ] {
            let e = AllowedCommand::try_from(bad.to_string()).expect_err(bad);
            assert!(e.contains(word) && e.contains("print_speed"), "{bad}: {e}");
        }
        assert_eq!(AllowedCommand::of("print", "xcam_control_set"), None);
    }

    #[test]
    fn a_setting_keeps_the_fields_but_not_the_clients_ids_and_checks_the_speed_level() {
        let body = json!({"command": "print_speed", "sequence_id": "7", "param": "3"});
        let s = AllowedCommand::PrintSpeed
            .setting(body.as_object().unwrap())
            .expect("a speed level");
        assert_eq!((s.section, s.command), ("print", "print_speed"));
        assert_eq!(Value::Object(s.fields), json!({"param": "3"}));
        let bad = json!({"command": "print_speed", "param": "9"});
        let e = AllowedCommand::PrintSpeed
            .setting(bad.as_object().unwrap())
            .expect_err("no level 9");
        assert!(e.contains("\"1\""), "{e}");
    }
}
