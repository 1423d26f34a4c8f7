//! `printgate.toml` parsing and validation: one test per kind of mistake, asserting the exact
//! message a user sees, plus a file with many mistakes, good files, and the promise that
//! access codes never appear in any error output.

use printgate::config::{Config, Model, check_config_cli};
use std::path::Path;

const ORIGIN: &str = "printgate.toml";

/// A valid configuration with two printers; `DATA_DIR` is replaced by a temporary directory.
const GOOD: &str = r#"
data_dir = "DATA_DIR"

[web]
listen = "127.0.0.1:0"

[dispatch]
start_window_secs = 60
report_max_age_secs = 10

[[printers]]
name = "Workshop X1C"
model = "X1C"
serial = "00M09A123456789"
host = "192.168.1.50"
access_code = "S3cr3t!9"

[[printers]]
name = "Garage P1S"
model = "P1S"
serial = "01P00A987654321"
host = "p1s.lan"
access_code = "Zq8Wn2Lx"
"#;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }
    /// The good file with `from` replaced by `to` (which must occur).
    fn good_with(&self, from: &str, to: &str) -> String {
        let text = GOOD.replace("DATA_DIR", &self.data_dir());
        assert!(
            text.contains(from),
            "test bug: {from:?} not in the base config"
        );
        text.replacen(from, to, 1)
    }
    fn errors(&self, text: &str) -> Vec<String> {
        match Config::parse_toml(text, ORIGIN) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }
    fn errors_with(&self, from: &str, to: &str) -> Vec<String> {
        self.errors(&self.good_with(from, to))
    }
}

#[test]
fn good_config_loads_with_defaults() {
    let case = Case::new();
    let path = case.dir.path().join("printgate.toml");
    std::fs::write(&path, GOOD.replace("DATA_DIR", &case.data_dir())).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.printers.len(), 2);
    assert_eq!(config.printers[1].model, Model::P1S);
    assert_eq!(config.printers[0].mqtt_port, 8883);
    assert_eq!(config.printers[0].ftps_port, 990);
    assert_eq!(config.printers[0].camera_port, 6000);
    assert_eq!(config.dispatch.plate_clear_ttl_secs, 1800);
    assert_eq!(config.link.keepalive_secs, 30);
    assert!(Path::new(&case.data_dir()).is_dir(), "data_dir is created");
    config.validate().unwrap();
    assert_eq!(check_config_cli(&path), 0);
}

#[test]
fn model_names_are_accepted_loosely() {
    let case = Case::new();
    let text = case
        .good_with("model = \"P1S\"", "model = \"p1s\"")
        .replace("model = \"X1C\"", "model = \"x1c\"");
    let config = Config::parse_toml(&text, ORIGIN).unwrap();
    assert_eq!(config.printers[0].model, Model::X1C);
    let text = case
        .good_with("model = \"P1S\"", "model = \"A1 mini\"")
        .replace("01P00A987654321", "030000000000001");
    assert_eq!(
        Config::parse_toml(&text, ORIGIN).unwrap().printers[1].model,
        Model::A1Mini
    );
}

#[test]
fn example_config_validates() {
    let case = Case::new();
    let text = std::fs::read_to_string("deploy/printgate.example.toml").unwrap();
    let line = "data_dir = \"/var/lib/printgate\"";
    assert!(text.contains(line));
    let text = text.replace(line, &format!("data_dir = \"{}\"", case.data_dir()));
    let config = Config::parse_toml(&text, "printgate.example.toml").unwrap();
    assert_eq!(config.printers.len(), 2);
}

#[test]
fn toml_syntax_error_names_line_and_column() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("host = \"p1s.lan\"", "host = \"p1s.lan"),
        vec![
            "printgate.toml: line 22, column 16: TOML syntax error: invalid basic string, expected `\"`; fix the file at that spot (text values need double quotes, sections are written [web] or [[printers]])"
        ]
    );
}

#[test]
fn unreadable_file_is_reported() {
    let case = Case::new();
    let path = case.dir.path().join("missing.toml");
    let err = Config::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read the configuration file {}: No such file or directory (os error 2); check the path and that printgate may read it",
            path.display()
        )
    );
    assert_eq!(check_config_cli(&path), 2);
}

#[test]
fn unknown_keys_are_named_with_the_valid_ones() {
    let case = Case::new();
    let text = case
        .good_with("[web]", "colour = \"red\"\n[web]\nport = 8080")
        .replace("host = \"p1s.lan\"", "hostname = \"p1s.lan\"");
    assert_eq!(
        case.errors(&text),
        vec![
            "colour: unknown key; valid keys at the top level: data_dir, web, link, dispatch, printers, safety, alerts, broker, metrics",
            "web.port: unknown key; valid keys in [web]: listen, secure_cookies, max_upload_mb",
            "printers[1].hostname: unknown key; valid keys in [[printers]]: name, kind, model, serial, host, access_code, tls, mqtt_port, ftps_port, camera_port, instance_name, http_port, api_key, virtual_printer (did you mean host?)",
            "printers[1].host: missing; every [[printers]] needs name, model, serial, host and access_code (add host = …)",
        ]
    );
}

#[test]
fn access_code_must_have_8_characters() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("\"S3cr3t!9\"", "\"S3cr3t!\""),
        vec![
            "printers[0].access_code = <7 hidden characters>: the LAN access code has exactly 8 characters, this one has 7; copy it from the printer's screen (LAN Only / Access Code)"
        ]
    );
}

#[test]
fn access_code_of_wrong_type() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("\"S3cr3t!9\"", "31415926"),
        vec![
            "printers[0].access_code = <hidden>: the access code must be text in double quotes: the 8 characters shown on the printer's screen"
        ]
    );
}

#[test]
fn serial_of_wrong_length() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("00M09A123456789", "00M09A12345678"),
        vec![
            "printers[0].serial = \"00M09A12345678\": a serial number has 15 characters, this one has 14; copy it from the printer's screen or sticker"
        ]
    );
}

#[test]
fn serial_in_lower_case() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("00M09A123456789", "00m09a123456789"),
        vec![
            "printers[0].serial = \"00m09a123456789\": a serial number uses only digits and capital letters A–Z; write it as \"00M09A123456789\""
        ]
    );
}

#[test]
fn serial_of_another_model() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("00M09A123456789", "01P09A123456789"),
        vec![
            "printers[0].serial = \"01P09A123456789\": this serial starts with 01P, which is a P1S serial, but model = \"X1C\" (X1C serials start with 00M); correct the model or the serial"
        ]
    );
}

#[test]
fn serial_with_unknown_prefix() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("00M09A123456789", "ZZZ09A123456789"),
        vec![
            "printers[0].serial = \"ZZZ09A123456789\": this serial starts with ZZZ but X1C serials start with 00M; correct the model or the serial"
        ]
    );
}

#[test]
fn host_must_be_an_address_or_name() {
    let case = Case::new();
    let expected = |v: &str| {
        format!(
            "printers[0].host = \"{v}\": not an IP address or host name; write just the printer's address, e.g. \"192.168.1.50\" or \"x1c.local\" (no http://, port or path)"
        )
    };
    for bad in [
        "http://192.168.1.50",
        "192.168.1.300",
        "192.168.1.50:8883",
        "",
        "my printer",
        "-x.lan",
    ] {
        assert_eq!(
            case.errors_with("\"192.168.1.50\"", &format!("\"{bad}\"")),
            vec![expected(bad)],
            "host {bad:?}"
        );
    }
    for good in [
        "10.0.0.7",
        "fe80::1",
        "x1c",
        "x1c.lan.",
        "printer-1.home.arpa",
    ] {
        let text = case.good_with("\"192.168.1.50\"", &format!("\"{good}\""));
        assert!(Config::parse_toml(&text, ORIGIN).is_ok(), "host {good:?}");
    }
}

#[test]
fn duplicate_names_and_serials() {
    let case = Case::new();
    let text = case
        .good_with("\"Garage P1S\"", "\"workshop x1c\"")
        .replace("01P00A987654321", "00M09A123456789")
        .replace("model = \"P1S\"", "model = \"X1C\"");
    assert_eq!(
        case.errors(&text),
        vec![
            "printers[1].name = \"workshop x1c\": printers[0] already has this name (names are compared ignoring case); give every printer its own name",
            "printers[1].serial = \"00M09A123456789\": printers[0] already has this serial; list each printer once",
        ]
    );
}

#[test]
fn printer_name_must_fit_urls_and_topics() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("\"Garage P1S\"", "\"Garage/P1S\""),
        vec![
            "printers[1].name = \"Garage/P1S\": '/' is not allowed; printer names may use only letters, digits, spaces, '-' and '_' (1–32 characters, no space at either end) because they appear in URLs and MQTT topics"
        ]
    );
    assert_eq!(
        case.errors_with("\"Garage P1S\"", "\" Garage\""),
        vec![
            "printers[1].name = \" Garage\": the name starts or ends with a space; printer names may use only letters, digits, spaces, '-' and '_' (1–32 characters, no space at either end) because they appear in URLs and MQTT topics"
        ]
    );
}

#[test]
fn unknown_model_lists_the_valid_ones() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("model = \"P1S\"", "model = \"P1X\""),
        vec![
            "printers[1].model = \"P1X\": unknown printer model; use one of X1C, X1E, P1P, P1S, A1, A1MINI, P2S, H2D (Bambu Lab), or KLIPPER with kind = \"moonraker\""
        ]
    );
}

#[test]
fn data_dir_that_cannot_be_created() {
    let case = Case::new();
    let file = case.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let below = file.join("data");
    let text = GOOD.replace("DATA_DIR", &below.display().to_string());
    assert_eq!(
        case.errors(&text),
        vec![format!(
            "data_dir = \"{0}\": cannot create this directory (Not a directory (os error 20)); create it and let the printgate user write to it, e.g. sudo install -d -o printgate {0}",
            below.display()
        )]
    );
    let text = GOOD.replace("DATA_DIR", &file.display().to_string());
    assert_eq!(
        case.errors(&text),
        vec![format!(
            "data_dir = \"{}\": is a file, not a directory; point data_dir at a directory",
            file.display()
        )]
    );
}

#[test]
fn data_dir_that_cannot_be_written() {
    use std::os::unix::fs::PermissionsExt;
    let case = Case::new();
    let dir = case.dir.path().join("locked");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    // root may write anyway; the check must then pass, since it really tries.
    let writable = std::fs::write(dir.join("probe"), b"x").is_ok();
    let _ = std::fs::remove_file(dir.join("probe"));
    let text = GOOD.replace("DATA_DIR", &dir.display().to_string());
    let result = Config::parse_toml(&text, ORIGIN);
    if writable {
        assert!(result.is_ok());
    } else {
        let errs: Vec<String> = result
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            vec![format!(
                "data_dir = \"{0}\": printgate cannot write in this directory (Permission denied (os error 13)); give the printgate user write access, e.g. sudo chown printgate {0}",
                dir.display()
            )]
        );
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no probe file left behind"
    );
}

#[test]
fn web_listen_must_be_address_and_port() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("\"127.0.0.1:0\"", "\"localhost:8080\""),
        vec![
            "web.listen = \"localhost:8080\": not an IP address with a port; write e.g. \"0.0.0.0:8080\" (all interfaces) or \"192.168.1.10:8080\""
        ]
    );
    assert_eq!(
        case.errors_with("\"127.0.0.1:0\"", "8080"),
        vec![
            "web.listen = 8080: not an IP address with a port; write e.g. \"0.0.0.0:8080\" (all interfaces) or \"192.168.1.10:8080\""
        ]
    );
}

#[test]
fn dispatch_windows_out_of_range() {
    let case = Case::new();
    assert_eq!(
        case.errors_with("start_window_secs = 60", "start_window_secs = 0"),
        vec!["dispatch.start_window_secs = 0: must be between 1 and 600 seconds (default 60)"]
    );
    assert_eq!(
        case.errors_with("report_max_age_secs = 10", "report_max_age_secs = 90"),
        vec![
            "dispatch.report_max_age_secs = 90: is longer than dispatch.start_window_secs = 60; a report that old may predate the start decision; use at most 60 (default 10)"
        ]
    );
}

#[test]
fn link_backoff_cap_below_start() {
    let case = Case::new();
    assert_eq!(
        case.errors_with(
            "[dispatch]",
            "[link]\nbackoff_min_ms = 5000\nbackoff_max_ms = 2000\n[dispatch]"
        ),
        vec![
            "link.backoff_max_ms = 2000: is smaller than link.backoff_min_ms = 5000; the cap must be at least the start value"
        ]
    );
}

#[test]
fn port_zero_is_refused() {
    let case = Case::new();
    assert_eq!(
        case.errors_with(
            "access_code = \"Zq8Wn2Lx\"",
            "access_code = \"Zq8Wn2Lx\"\nmqtt_port = 0"
        ),
        vec![
            "printers[1].mqtt_port = 0: port 0 cannot be used; leave the key out to use the printer's standard port 8883"
        ]
    );
    assert_eq!(
        case.errors_with(
            "access_code = \"Zq8Wn2Lx\"",
            "access_code = \"Zq8Wn2Lx\"\ncamera_port = 0"
        ),
        vec![
            "printers[1].camera_port = 0: port 0 cannot be used; leave the key out to use the printer's standard port 6000"
        ]
    );
}

#[test]
fn wrong_value_type() {
    let case = Case::new();
    assert_eq!(
        case.errors_with(
            "access_code = \"Zq8Wn2Lx\"",
            "access_code = \"Zq8Wn2Lx\"\nftps_port = 70000"
        ),
        vec![
            "printers[1].ftps_port = 70000: wrong type or value (invalid value: integer `70000`, expected u16); see deploy/printgate.example.toml for the expected form"
        ]
    );
}

#[test]
fn missing_keys_are_all_named() {
    let case = Case::new();
    let text = case
        .good_with("data_dir = ", "# data_dir = ")
        .replace("serial = \"01P00A987654321\"\n", "")
        .replace("host = \"p1s.lan\"\n", "");
    assert_eq!(
        case.errors(&text),
        vec![
            "data_dir: missing; add data_dir = \"/var/lib/printgate\" (where the database and files are kept)",
            "printers[1].serial: missing; every [[printers]] needs name, model, serial, host and access_code (add serial = …)",
            "printers[1].host: missing; every [[printers]] needs name, model, serial, host and access_code (add host = …)",
        ]
    );
}

/// Many mistakes in one file: all are reported in one run, grouped by printer.
#[test]
fn every_problem_is_reported_at_once() {
    let case = Case::new();
    let text = format!(
        r#"
data_dir = "{}"
[web]
listen = "0.0.0.0"
[dispatch]
start_window_secs = 0
[[printers]]
name = "Shop: X1C"
model = "X9"
serial = "00M09A123456789"
host = "192.168.1.50"
access_code = "abc"
[[printers]]
name = "Shop 2"
model = "A1"
serial = "00M09A123456789"
host = "http://printer"
access_code = "ABCD1234"
ftps_port = 0
nozzle = 0.4
"#,
        case.data_dir()
    );
    let err = Config::parse_toml(&text, ORIGIN).unwrap_err();
    assert_eq!(
        err.to_string(),
        [
            "web.listen = \"0.0.0.0\": not an IP address with a port; write e.g. \"0.0.0.0:8080\" (all interfaces) or \"192.168.1.10:8080\"",
            "dispatch.start_window_secs = 0: must be between 1 and 600 seconds (default 60)",
            "printers[0].model = \"X9\": unknown printer model; use one of X1C, X1E, P1P, P1S, A1, A1MINI, P2S, H2D (Bambu Lab), or KLIPPER with kind = \"moonraker\"",
            "printers[0].name = \"Shop: X1C\": ':' is not allowed; printer names may use only letters, digits, spaces, '-' and '_' (1–32 characters, no space at either end) because they appear in URLs and MQTT topics",
            "printers[0].access_code = <3 hidden characters>: the LAN access code has exactly 8 characters, this one has 3; copy it from the printer's screen (LAN Only / Access Code)",
            "printers[1].nozzle: unknown key; valid keys in [[printers]]: name, kind, model, serial, host, access_code, tls, mqtt_port, ftps_port, camera_port, instance_name, http_port, api_key, virtual_printer",
            "printers[1].serial = \"00M09A123456789\": this serial starts with 00M, which is a X1C serial, but model = \"A1\" (A1 serials start with 039); correct the model or the serial",
            "printers[1].host = \"http://printer\": not an IP address or host name; write just the printer's address, e.g. \"192.168.1.50\" or \"x1c.local\" (no http://, port or path)",
            "printers[1].ftps_port = 0: port 0 cannot be used; leave the key out to use the printer's standard port 990",
            "printers[1].serial = \"00M09A123456789\": printers[0] already has this serial; list each printer once",
        ]
        .join("\n")
    );
    // The CLI reports the same and exits with 2.
    let path = case.dir.path().join("bad.toml");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(check_config_cli(&path), 2);
}

/// Configs built in code go through the same checks.
#[test]
fn validate_checks_a_config_built_in_code() {
    let case = Case::new();
    let mut config =
        Config::parse_toml(&GOOD.replace("DATA_DIR", &case.data_dir()), ORIGIN).unwrap();
    config.printers[1].name = config.printers[0].name.clone();
    config.printers[0].access_code = "short".into();
    let errs: Vec<String> = config
        .validate()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs,
        vec![
            "printers[0].access_code = <5 hidden characters>: the LAN access code has exactly 8 characters, this one has 5; copy it from the printer's screen (LAN Only / Access Code)",
            "printers[1].name = \"Workshop X1C\": printers[0] already has this name (names are compared ignoring case); give every printer its own name",
        ]
    );
}

/// Access codes, right or wrong, under the right key or a misspelled one, never appear in any
/// error output.
#[test]
fn access_codes_never_appear_in_errors() {
    let case = Case::new();
    let codes = ["Qx7Pv2Zr", "Kd93Lm", "Wq1Wq1Wq1Wq1", "88442211", "Hn5Tb8Yc"];
    let text = format!(
        r#"
data_dir = "{}"
[[printers]]
name = "A/1"
model = "Nope"
serial = "bad"
host = "::::"
access_code = "{}"
[[printers]]
name = "B"
model = "P1S"
serial = "01P00A987654321"
host = "b.lan"
access_code = "{}"
[[printers]]
name = "C"
model = "P1S"
serial = "01P00A987654322"
host = "c.lan"
access_code = "{}"
[[printers]]
name = "D"
model = "P1S"
serial = "01P00A987654323"
host = "d.lan"
access_code = {}
[[printers]]
name = "E"
model = "P1S"
serial = "01P00A987654324"
host = "e.lan"
acces_code = "{}"
"#,
        case.data_dir(),
        codes[0],
        codes[1],
        codes[2],
        codes[3],
        codes[4]
    );
    let err = Config::parse_toml(&text, ORIGIN).unwrap_err();
    let mut outputs = vec![err.to_string(), format!("{err:?}")];
    for e in err.iter() {
        outputs.extend([e.key.clone(), e.value.clone(), e.message.clone()]);
    }
    assert!(err.len() >= 8, "{err}");
    for out in &outputs {
        for code in codes {
            assert!(!out.contains(code), "access code {code} leaked in: {out}");
        }
    }
    // A code with a syntax error around it: the message shows the position, not the line.
    let text = format!(
        "data_dir = \"{}\"\n[[printers]]\naccess_code = \"{}\n",
        case.data_dir(),
        codes[0]
    );
    let err = Config::parse_toml(&text, ORIGIN).unwrap_err();
    assert!(!err.to_string().contains(codes[0]), "{err}");
    assert!(!format!("{err:?}").contains(codes[0]), "{err:?}");
}

const VORON: &str = r#"
[[printers]]
name = "Workbench Voron"
kind = "moonraker"
instance_name = "voron"
host = "192.168.1.60"
"#;

#[test]
fn a_moonraker_printer_needs_no_serial_or_access_code() {
    let case = Case::new();
    let text = format!("{}{VORON}", case.good_with("", ""));
    let config = Config::parse_toml(&text, ORIGIN).unwrap();
    let p = &config.printers[2];
    assert_eq!(p.kind, printgate::config::PrinterKind::Moonraker);
    assert_eq!(p.model, Model::Klipper);
    assert_eq!(p.http_port, 7125);
    assert!(p.serial.is_empty() && p.access_code.is_empty());
    // model = "klipper" alone means kind = "moonraker".
    let text = format!(
        "{}{}",
        case.good_with("", ""),
        VORON.replace("kind = \"moonraker\"", "model = \"klipper\"")
    );
    assert_eq!(
        Config::parse_toml(&text, ORIGIN).unwrap().printers[2].kind,
        printgate::config::PrinterKind::Moonraker
    );
}

#[test]
fn moonraker_printer_mistakes_are_named() {
    let case = Case::new();
    let bad = VORON
        .replace("instance_name = \"voron\"", "instance_name = \"vo/ron\"")
        .replace(
            "host = \"192.168.1.60\"",
            "host = \"192.168.1.60\"\naccess_code = \"12345678\"\nhttp_port = 0",
        );
    let errs = case.errors(&format!("{}{bad}", case.good_with("", "")));
    assert_eq!(
        errs,
        [
            "printers[2].instance_name = \"vo/ron\": '/' is not allowed; write the instance_name of the [mqtt] section in the printer's moonraker.conf (letters, digits, '-', '_', '.')",
            "printers[2].http_port = 0: port 0 cannot be used; leave the key out to use Moonraker's standard port 7125",
            "printers[2].access_code = (set): access_code belongs to Bambu printers; remove it from this kind = \"moonraker\" printer",
        ]
    );
    // Two printers with one instance name; a reserved name; no broker for Moonraker to reach.
    let twice = format!(
        "{}{VORON}{}",
        case.good_with("", ""),
        VORON.replace("Workbench Voron", "Second Voron")
    );
    assert!(case.errors(&twice).iter().any(|e| e.starts_with(
        "printers[3].instance_name = \"voron\": printers[2] already uses this instance_name"
    )),);
    let reserved = format!(
        "{}{}",
        case.good_with("", ""),
        VORON.replace("\"voron\"", "\"printgate\"")
    );
    assert!(
        case.errors(&reserved)
            .iter()
            .any(|e| e.contains("reserved for printgate's own topics"))
    );
    let off = format!(
        "{}\n[broker]\nmode = \"off\"\n{VORON}",
        case.good_with("", "")
    );
    assert!(case.errors(&off).iter().any(|e| {
        e.starts_with("printers[2].kind = \"moonraker\": Workbench Voron is a Moonraker printer")
    }));
    // A Bambu model with kind = "moonraker", and KLIPPER with kind = "bambu".
    let mixed = format!(
        "{}{}",
        case.good_with("", ""),
        VORON.replace(
            "kind = \"moonraker\"",
            "kind = \"moonraker\"\nmodel = \"X1C\""
        )
    );
    assert!(
        case.errors(&mixed)
            .iter()
            .any(|e| e.contains("a Moonraker printer is a Klipper printer"))
    );
}

#[test]
fn broker_listeners_can_be_switched_off() {
    let case = Case::new();
    let text = format!(
        "{}\n[broker]\ntls_listen = \"off\"\nwebsocket_listen = \"127.0.0.1:9001\"\n",
        case.good_with("", "")
    );
    let config = Config::parse_toml(&text, ORIGIN).unwrap();
    assert_eq!(config.broker.tls_listen, None);
    assert_eq!(
        config.broker.websocket_listen,
        Some("127.0.0.1:9001".parse().unwrap())
    );
    let defaults = Config::parse_toml(&case.good_with("", ""), ORIGIN).unwrap();
    assert_eq!(
        defaults.broker.tls_listen,
        Some("0.0.0.0:8883".parse().unwrap())
    );
    assert_eq!(defaults.broker.websocket_listen, None);
    let bad = format!(
        "{}\n[broker]\ntls_listen = \"8883\"\n",
        case.good_with("", "")
    );
    let errs = case.errors(&bad);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("broker.tls_listen") && e.contains("\"off\" for no listener")),
        "{errs:?}"
    );
}

/// Issue 19: `[printers.virtual_printer]` is off unless enabled; two virtual printers cannot
/// share one address and port (slicers expect 8883 on each), and a Moonraker printer has none.
#[test]
fn virtual_printers_are_off_unless_enabled_and_need_an_address_each() {
    let case = Case::new();
    let config = Config::parse_toml(&case.good_with("[web]", "[web]"), ORIGIN).unwrap();
    assert!(config.printers.iter().all(|p| !p.virtual_printer.enabled));
    let x1c_on = "access_code = \"S3cr3t!9\"\n\n[printers.virtual_printer]\nenabled = true\n";
    let text = case.good_with("access_code = \"S3cr3t!9\"", x1c_on);
    let config = Config::parse_toml(&text, ORIGIN).unwrap();
    assert!(config.printers[0].virtual_printer.enabled);
    assert_eq!(
        config.printers[0].virtual_printer.listen.to_string(),
        "0.0.0.0:8883"
    );
    let both = text.replace(
        "access_code = \"Zq8Wn2Lx\"",
        "access_code = \"Zq8Wn2Lx\"\n\n[printers.virtual_printer]\nenabled = true\nlisten = \"192.168.1.9:8883\"\n",
    );
    assert_eq!(
        case.errors(&both),
        [
            "printers[1].virtual_printer.listen = \"192.168.1.9:8883\": printers[0] already serves its virtual printer on 192.168.1.9:8883; give each virtual printer its own address (slicers expect port 8883 on every printer)"
        ]
    );
    let typo = case.good_with(
        "access_code = \"S3cr3t!9\"",
        "access_code = \"S3cr3t!9\"\n\n[printers.virtual_printer]\nenable = true\n",
    );
    let errs = case.errors(&typo);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("printers[0].virtual_printer.enable: unknown key"),
        "{errs:?}"
    );
}
