//! What a virtual printer does with a client's request on `device/<serial>/request`
//! (docs/bambu-protocol.md §4): status and info are answered from printgate's state, pause /
//! resume / stop / the chamber light go through printgate's printer controls, and everything
//! that could move, heat or reconfigure the printer is refused with an acknowledgement that
//! says why. A `project_file` is never a start: it asks to queue the file the client uploaded
//! as a job, which starts only after Plate clear. The config's allow-list (`allow.rs`) can open
//! a fixed set of harmless settings, which are then sent on to the printer. Pure: the server
//! carries the decisions out.

use super::allow::AllowedCommand;
use crate::printer::{PrinterCommand, SettingCommand};
use serde_json::{Map, Value};

/// What to do for one section of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish a full report built from the merged state.
    PushAll,
    /// Answer `get_version` with this `sequence_id`.
    Version { sequence_id: Value },
    /// Carry out a control through printgate's rules, then acknowledge it.
    Control {
        command: PrinterCommand,
        /// The action's name in printgate's history (`pause`, `light-on`, …).
        action: &'static str,
    },
    /// Queue the file the client uploaded as a job (never a start): the plate-clear gate
    /// decides when it prints.
    QueueFile {
        /// Name of the uploaded file (the last part of `url` or `file`).
        file: String,
        /// 1-based plate index from `param` (`Metadata/plate_<n>.gcode`).
        plate: u32,
        /// `subtask_name`, the job's name on the printer's screen.
        name: Option<String>,
    },
    /// Send this allowed setting on to the printer (`[printers.virtual_printer] allow`).
    Forward(SettingCommand),
    /// Answer with a failed acknowledgement giving this reason.
    Refuse(String),
    /// Nothing to do and nothing to answer (`pushing.start`, unknown noise).
    Nothing,
}

/// The reason given for a `gcode_file`: printgate prints sliced projects only.
pub const GCODE_FILE_REFUSED: &str = "printgate's virtual printer does not print bare G-code files; send the sliced project (.gcode.3mf) from the slicer instead";

/// The sections of a request in the order they came (`printer/bambu/request_json.rs`), each
/// with its decision; sections that are not objects are left out. `allow`: the settings the
/// config lets through.
pub fn decide(
    sections: &[(String, Value)],
    allow: &[AllowedCommand],
) -> Vec<(String, Map<String, Value>, Decision)> {
    sections
        .iter()
        .filter_map(|(section, body)| {
            let body = body.as_object()?;
            let command = body.get("command").and_then(Value::as_str).unwrap_or("");
            let decision = match AllowedCommand::of(section, command) {
                Some(a) if allow.contains(&a) => match a.setting(body) {
                    Ok(setting) => Decision::Forward(setting),
                    Err(why) => Decision::Refuse(why),
                },
                _ => decide_section(section, body),
            };
            Some((section.clone(), body.clone(), decision))
        })
        .collect()
}

fn decide_section(section: &str, body: &Map<String, Value>) -> Decision {
    let command = body.get("command").and_then(Value::as_str).unwrap_or("");
    match (section, command) {
        ("pushing", "pushall") => Decision::PushAll,
        ("pushing", "start" | "stop") => Decision::Nothing,
        ("info", "get_version") => Decision::Version {
            sequence_id: body.get("sequence_id").cloned().unwrap_or(Value::Null),
        },
        ("print", "pause") => control(PrinterCommand::Pause, "pause"),
        ("print", "resume") => control(PrinterCommand::Resume, "resume"),
        ("print", "stop") => control(PrinterCommand::Stop, "stop"),
        ("print", "project_file") => project_file(body),
        ("print", "gcode_file") => Decision::Refuse(GCODE_FILE_REFUSED.to_string()),
        ("print", "gcode_line") => refuse(
            "G-code",
            "G-code moves and heats the printer outside printgate's checks",
        ),
        ("print", "print_speed") => refuse(
            "speed",
            "changing a running print's speed is off unless the config allows it ([printers.virtual_printer] allow = [\"print_speed\"])",
        ),
        ("print", c) if c.contains("cali") => refuse(
            "calibration",
            "calibration moves and heats the printer outside printgate's checks",
        ),
        ("print", c) if c.starts_with("ams") => refuse(
            "AMS",
            "AMS commands move filament outside printgate's checks",
        ),
        ("system", "ledctrl") => light(body),
        (section, "") => Decision::Refuse(format!(
            "the {section:?} request has no \"command\"; nothing was done"
        )),
        (section, command) => Decision::Refuse(format!(
            "printgate's virtual printer does not carry out {section}.{command}; nothing was done (use the printer's screen)"
        )),
    }
}

/// A `project_file` names a file uploaded to the virtual printer and a plate (§4.2).
fn project_file(body: &Map<String, Value>) -> Decision {
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").trim();
    let source = if text("url").is_empty() {
        text("file")
    } else {
        text("url")
    };
    let file = source.rsplit('/').next().unwrap_or("").trim();
    if file.is_empty() {
        return Decision::Refuse(
            "the project_file names no file (url or file); upload the project first, then send it again".into(),
        );
    }
    let param = text("param");
    let plate = match param
        .strip_prefix("Metadata/plate_")
        .and_then(|p| p.strip_suffix(".gcode"))
    {
        None if param.is_empty() => 1,
        Some(n) => match n.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Decision::Refuse(format!(
                    "param {param:?} names no plate; it must be Metadata/plate_<n>.gcode"
                ));
            }
        },
        None => {
            return Decision::Refuse(format!(
                "param {param:?} names no plate; it must be Metadata/plate_<n>.gcode"
            ));
        }
    };
    let name = Some(text("subtask_name").to_string()).filter(|n| !n.is_empty());
    Decision::QueueFile {
        file: file.to_string(),
        plate,
        name,
    }
}

fn control(command: PrinterCommand, action: &'static str) -> Decision {
    Decision::Control { command, action }
}

fn refuse(what: &str, why: &str) -> Decision {
    Decision::Refuse(format!(
        "printgate's virtual printer refuses {what} commands: {why}; nothing was sent to the printer (use the printer's screen)"
    ))
}

fn light(body: &Map<String, Value>) -> Decision {
    let node = body.get("led_node").and_then(Value::as_str).unwrap_or("");
    if node != "chamber_light" {
        return Decision::Refuse(format!(
            "printgate's virtual printer switches the chamber light only, not {node:?}; nothing was sent"
        ));
    }
    match body.get("led_mode").and_then(Value::as_str) {
        Some("on") => control(PrinterCommand::Light(true), "light-on"),
        Some("off") => control(PrinterCommand::Light(false), "light-off"),
        other => Decision::Refuse(format!(
            "the chamber light can be switched \"on\" or \"off\", not {other:?}; nothing was sent"
        )),
    }
}

/// An acknowledgement in the printer's shape (§5.1): the request echoed under its section, with
/// `result` and `reason`.
pub fn ack(section: &str, body: &Map<String, Value>, ok: bool, reason: &str) -> Value {
    let mut echo = body.clone();
    echo.insert(
        "result".into(),
        if ok { "success" } else { "failed" }.into(),
    );
    echo.insert("reason".into(), reason.into());
    let mut msg = Map::new();
    msg.insert(section.to_string(), Value::Object(echo));
    Value::Object(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sections(v: Value) -> Vec<(String, Value)> {
        v.as_object().expect("object").clone().into_iter().collect()
    }

    fn one(v: Value) -> Decision {
        decide(&sections(v), &[]).pop().expect("a section").2
    }

    #[test]
    fn allowed_settings_are_forwarded_and_nothing_else_is_opened() {
        let speed = json!({"print": {"command": "print_speed", "sequence_id": "5", "param": "2"}});
        assert!(matches!(one(speed.clone()), Decision::Refuse(ref r) if r.contains("allow")));
        let allow = [AllowedCommand::PrintSpeed, AllowedCommand::XcamControlSet];
        match decide(&sections(speed), &allow).pop().expect("a section").2 {
            Decision::Forward(s) => {
                assert_eq!((s.section, s.command), ("print", "print_speed"));
                assert_eq!(s.fields.get("param"), Some(&json!("2")));
            }
            other => panic!("{other:?}"),
        }
        // Allowed or not, G-code and starts keep their decisions.
        for req in [
            json!({"print": {"command": "gcode_line", "param": "G28"}}),
            json!({"camera": {"command": "ipcam_record_set", "control": "enable"}}),
        ] {
            let d = decide(&sections(req.clone()), &allow)
                .pop()
                .expect("a section")
                .2;
            assert!(matches!(d, Decision::Refuse(_)), "{req}: {d:?}");
        }
        let xcam = json!({"xcam": {"command": "xcam_control_set", "module_name": "spaghetti_detector", "control": true}});
        assert!(matches!(
            decide(&sections(xcam), &allow).pop().expect("a section").2,
            Decision::Forward(_)
        ));
    }

    #[test]
    fn a_project_file_is_never_a_start_but_a_file_to_queue() {
        let d = one(
            json!({"print": {"command": "project_file", "sequence_id": "13",
            "param": "Metadata/plate_2.gcode", "url": "ftp:///lid.gcode.3mf", "subtask_name": "lid"}}),
        );
        assert_eq!(
            d,
            Decision::QueueFile {
                file: "lid.gcode.3mf".into(),
                plate: 2,
                name: Some("lid".into())
            }
        );
        // Every URL form of §4.2 names the file by its last part; `file` when there is no url.
        for url in [
            "ftp://a.gcode.3mf",
            "file:///sdcard/a.gcode.3mf",
            "file:///media/usb0/a.gcode.3mf",
        ] {
            let d = one(
                json!({"print": {"command": "project_file", "param": "Metadata/plate_1.gcode", "url": url}}),
            );
            assert!(
                matches!(d, Decision::QueueFile { ref file, plate: 1, .. } if file == "a.gcode.3mf"),
                "{url}: {d:?}"
            );
        }
        let d = one(json!({"print": {"command": "project_file", "file": "b.gcode.3mf"}}));
        assert!(
            matches!(d, Decision::QueueFile { ref file, plate: 1, name: None } if file == "b.gcode.3mf")
        );
        for bad in [
            json!({"print": {"command": "project_file"}}),
            json!({"print": {"command": "project_file", "url": "ftp://a.3mf", "param": "Metadata/plate_0.gcode"}}),
            json!({"print": {"command": "project_file", "url": "ftp://a.3mf", "param": "x"}}),
            json!({"print": {"command": "gcode_file", "param": "/sdcard/a.gcode"}}),
        ] {
            assert!(matches!(one(bad.clone()), Decision::Refuse(_)), "{bad}");
        }
    }

    #[test]
    fn controls_go_to_printgate_and_the_rest_is_refused_with_a_reason() {
        assert_eq!(
            one(json!({"print": {"command": "pause", "sequence_id": "1"}})),
            Decision::Control {
                command: PrinterCommand::Pause,
                action: "pause"
            }
        );
        assert_eq!(
            one(json!({"print": {"command": "stop"}})),
            Decision::Control {
                command: PrinterCommand::Stop,
                action: "stop"
            }
        );
        assert_eq!(
            one(
                json!({"system": {"command": "ledctrl", "led_node": "chamber_light", "led_mode": "on"}})
            ),
            Decision::Control {
                command: PrinterCommand::Light(true),
                action: "light-on"
            }
        );
        for (req, word) in [
            (
                json!({"print": {"command": "gcode_line", "param": "G28\n"}}),
                "G-code",
            ),
            (json!({"print": {"command": "calibration"}}), "calibration"),
            (
                json!({"print": {"command": "extrusion_cali_set"}}),
                "calibration",
            ),
            (json!({"print": {"command": "ams_change_filament"}}), "AMS"),
            (
                json!({"system": {"command": "ledctrl", "led_node": "work_light", "led_mode": "on"}}),
                "chamber light only",
            ),
            (
                json!({"upgrade": {"command": "upgrade_confirm"}}),
                "upgrade.upgrade_confirm",
            ),
        ] {
            match one(req.clone()) {
                Decision::Refuse(why) => assert!(why.contains(word), "{req}: {why}"),
                other => panic!("{req}: {other:?}"),
            }
        }
    }

    #[test]
    fn status_requests_are_answered_from_state() {
        assert_eq!(
            one(json!({"pushing": {"command": "pushall", "sequence_id": "1"}})),
            Decision::PushAll
        );
        assert_eq!(
            one(json!({"info": {"command": "get_version", "sequence_id": "9"}})),
            Decision::Version {
                sequence_id: json!("9")
            }
        );
        assert_eq!(
            one(json!({"pushing": {"command": "start"}})),
            Decision::Nothing
        );
        let both = json!({"pushing": {"command": "pushall"}, "info": {"command": "get_version"}});
        assert_eq!(decide(&sections(both), &[]).len(), 2);
        assert!(decide(&sections(json!({"print": 5})), &[]).is_empty());
    }

    #[test]
    fn an_ack_echoes_the_request_with_result_and_reason() {
        let body = json!({"command": "gcode_line", "sequence_id": "2006", "param": "G28"});
        let a = ack("print", body.as_object().unwrap(), false, "no");
        assert_eq!(a["print"]["sequence_id"], "2006");
        assert_eq!(a["print"]["command"], "gcode_line");
        assert_eq!(a["print"]["result"], "failed");
        assert_eq!(a["print"]["reason"], "no");
    }
}
