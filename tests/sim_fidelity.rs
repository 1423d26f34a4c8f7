//! `printgate sim` as a user (or a service manager) runs it: the real binary on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if a test fails half-way.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `printgate sim` and wait until its printer table is printed; returns the table rows.
fn start_sim(printers: usize) -> (Sim, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_printgate"))
        .args([
            "sim",
            "--printers",
            &printers.to_string(),
            "--models",
            "P1S,X1C",
            "--no-ssdp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("printgate sim starts");
    let stdout = child.stdout.take().expect("stdout");
    let sim = Sim(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rows = Vec::new();
    while rows.len() < printers {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("printgate sim printed its printer table within 60 s");
        if !line.starts_with('#') {
            rows.push(line);
        }
    }
    (sim, rows)
}

/// Wait (bounded) for the child to exit.
fn wait_exit(sim: &mut Sim, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    // Bounded by the deadline; polls every 20 ms.
    while Instant::now() < deadline {
        if let Some(status) = sim.0.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// D6 (issue 14): SIGTERM (what systemd, docker and `kill` send) and SIGINT stop `printgate sim`
/// cleanly with exit status 0.
#[test]
fn sim_stops_cleanly_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (mut sim, rows) = start_sim(2);
        for row in &rows {
            let fields: Vec<&str> = row.split(' ').collect();
            assert_eq!(
                fields.len(),
                9,
                "name model serial host mqtt ftps camera code fp: {row}"
            );
            assert_eq!(fields[3], "127.0.0.1");
        }
        let pid = i32::try_from(sim.0.id()).expect("pid fits");
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let status = wait_exit(&mut sim, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("printgate sim still running 10 s after signal {signal}"));
        assert!(status.success(), "signal {signal}: {status:?}");
    }
}
