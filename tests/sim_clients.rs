//! Issue 14: `printgate sim` cannot be told apart from a printer by Bambu LAN client libraries
//! nobody on this project wrote, run unmodified (bambulabs-api and bambu-connect from PyPI,
//! pinned in .ci/run). `tests/py/bambu_clients.py` starts `printgate sim --standard-ports` (each
//! printer on its own 127.0.0.N with MQTT 8883 and FTPS 990, the ports these libraries
//! hard-code) and drives every printer: connect, every typed getter, the full state, upload /
//! list / download / delete over their FTPS, start, pause, resume, stop, G-code; and a discovery
//! listener on UDP 2021 (as Bambu Studio and Home Assistant run one) hears every printer's
//! SSDP NOTIFY. bambulabs-api's AMS getters read the simulator's AMS trays, and printgate's
//! report parser reads the document that library merged the same way (issue 21).
//!
//! Port 990 needs privileges, so the script runs in a network namespace of its own
//! (`unshare --net --map-root-user`, with its loopback brought up): that works for root and,
//! where user namespaces are allowed, for everyone, and keeps 8883/990 of the machine free.
//! Without a namespace the test runs on the machine's loopback when it is root, and skips with
//! the reason otherwise.

use std::process::Command;

const MODELS: &str = "P1S,X1C,P1P,A1,A1MINI,P2S,H2D";

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// How to run a command where it may bind 127.0.0.N:990, or why it cannot.
fn runner() -> Result<Vec<String>, String> {
    let ns = Command::new("unshare")
        .args(["--net", "--map-root-user", "sh", "-c", "ip link set lo up"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ns {
        return Ok(["unshare", "--net", "--map-root-user", "sh", "-c"]
            .map(String::from)
            .to_vec());
    }
    if is_root() {
        return Ok(vec!["sh".into(), "-c".into()]);
    }
    Err("cannot bind port 990: not root, and no network namespace (`unshare --net --map-root-user` failed: user namespaces disabled, or unshare/ip missing)".into())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn third_party_clients_drive_every_model_unmodified() {
    assert!(
        python_has("bambulabs_api, bambu_connect"),
        "python3 with bambulabs-api and bambu-connect is not installed: run `bash .ci/run` (it pins their versions)"
    );
    let run = match runner() {
        Ok(r) => r,
        Err(why) => {
            eprintln!("SKIPPED third_party_clients_drive_every_model_unmodified: {why}");
            return;
        }
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/bambu_clients.py");
    let inner = format!(
        "ip link set lo up 2>/dev/null; exec timeout 300 python3 '{script}' '{}' '{MODELS}'",
        env!("CARGO_BIN_EXE_printgate")
    );
    let (program, args) = run.split_first().expect("runner");
    let out = Command::new(program)
        .args(args)
        .arg(&inner)
        .output()
        .expect("the client script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the third-party clients found the simulator out (exit {:?}):\n{stderr}\n{stdout}",
        out.status.code()
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let api = v["bambulabs_api"].as_array().map_or(0, Vec::len);
    assert_eq!(
        api,
        MODELS.split(',').count(),
        "bambulabs-api ran on every model: {v}"
    );
    assert_eq!(v["bambu_connect"].as_array().map_or(0, Vec::len), 2, "{v}");
    // bambulabs-api's camera client read a JPEG from every P1/A1 chamber camera.
    let chamber = MODELS
        .split(',')
        .filter(|m| matches!(*m, "P1P" | "P1S" | "A1" | "A1MINI"))
        .count();
    assert!(chamber > 0, "{MODELS}");
    assert_eq!(
        v["camera"].as_array().map_or(0, Vec::len),
        chamber,
        "bambulabs-api read the chamber image: {v}"
    );
    assert_eq!(
        v["ssdp"].as_object().map_or(0, |o| o.len()),
        MODELS.split(',').count(),
        "every printer heard on UDP 2021: {v}"
    );
    for row in v["bambulabs_api"].as_array().into_iter().flatten() {
        ams_getters_read_the_simulated_trays(row);
    }
}

/// Issue 21: bambulabs-api's AMS getters (`ams_hub()`: units, their humidity and trays) read
/// the simulator's AMS as the simulator means it, and printgate's own parser reads the same
/// document (the one the library merged) the same way.
fn ams_getters_read_the_simulated_trays(row: &serde_json::Value) {
    use printgate::printer::Model;
    use printgate::printer::bambu::report::printer_state;
    let name = row["model"].as_str().unwrap_or_default();
    let model = Model::parse(name).unwrap_or_else(|| panic!("model {name:?}"));
    let ams = &row["ams"];
    assert_eq!(
        ams.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["0".to_string()]),
        "{name}: one AMS unit, id 0: {row}"
    );
    assert_eq!(
        ams["0"]["humidity"], 4,
        "{name}: the reported humidity level"
    );
    let defaults = printgate::sim::default_trays();
    let library_trays = ams["0"]["trays"].as_object().cloned().unwrap_or_default();
    // The library lists only trays with an `n` key: the P1/A1 shape has it, the newer
    // models' captured shape does not (on a real X1C/P2S/H2D it lists no tray either).
    let with_n = matches!(model, Model::P1P | Model::P1S | Model::A1 | Model::A1Mini);
    assert_eq!(
        library_trays.len(),
        if with_n { 4 } else { 0 },
        "{name}: {row}"
    );
    let ours = printer_state(&row["ams_dump"], model)
        .filament
        .unwrap_or_else(|| panic!("{name}: printgate read no AMS from {}", row["ams_dump"]));
    let unit = ours.units.first().expect("a unit");
    assert_eq!(unit.trays.len(), 4, "{name}");
    for (slot, spool) in defaults.iter().enumerate() {
        let spool = spool.as_ref().expect("default spools fill every slot");
        let t = &unit.trays[slot];
        assert_eq!(
            (t.material.as_deref(), t.color.as_deref()),
            (Some(spool.material.as_str()), Some(spool.color.as_str())),
            "{name}: printgate's reading of slot {slot}"
        );
        if with_n {
            let lib = &library_trays[&slot.to_string()];
            assert_eq!(
                (
                    &lib["tray_type"],
                    &lib["tray_color"],
                    &lib["tray_sub_brands"]
                ),
                (
                    &serde_json::json!(spool.material),
                    &serde_json::json!(spool.color),
                    &serde_json::json!(spool.sub_brand)
                ),
                "{name}: bambulabs-api's reading of slot {slot}"
            );
            assert_eq!(lib["tray_info_idx"], serde_json::json!(spool.preset));
        }
    }
}
