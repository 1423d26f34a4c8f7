//! Issue 14: `printgate sim` cannot be told apart from a printer by Bambu LAN client libraries
//! nobody on this project wrote, run unmodified (bambulabs-api and bambu-connect from PyPI,
//! pinned in .ci/run). `tests/py/bambu_clients.py` starts `printgate sim --standard-ports` (each
//! printer on its own 127.0.0.N with MQTT 8883 and FTPS 990, the ports these libraries
//! hard-code) and drives every printer: connect, every typed getter, the full state, upload /
//! list / download / delete over their FTPS, start, pause, resume, stop, G-code; and a discovery
//! listener on UDP 2021 (as Bambu Studio and Home Assistant run one) hears every printer's
//! SSDP NOTIFY.
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
}
