//! Small command-line tools run as a user runs them: `hash-password` prints a hash the broker
//! accepts; `check-config` exits 0 / 2; `--help` names every command.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_printgate");

#[test]
fn hash_password_prints_a_hash_that_verifies() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(&hash).expect("a PHC string");
    assert!(
        Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok()
    );
    assert!(
        Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err()
    );
}

#[test]
fn help_names_every_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "serve",
        "demo",
        "check-config",
        "sim",
        "simulate",
        "set-password",
        "doctor",
        "backup",
        "restore",
        "gpio",
        "bench",
        "hash-password",
    ] {
        assert!(text.contains(cmd), "--help lists {cmd}:\n{text}");
    }
}

#[test]
fn check_config_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("data_dir = {:?}\n", dir.path().join("data"))).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "data_dir = 5\ncolour = \"red\"\n").unwrap();
    let run = |p: &std::path::Path| {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(p)
            .output()
            .unwrap()
    };
    assert_eq!(run(&good).status.code(), Some(0));
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
}
