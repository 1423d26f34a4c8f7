//! `printgate demo` as a newcomer runs it: the real binary, its own simulators, a web page on an
//! ephemeral loopback port. The page lists the four printers (three Bambu, one Klipper through
//! its simulated Moonraker), and each goes through a print (RUNNING, then FINISH) while the
//! page is watched.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serves_four_printers_that_print() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_printgate"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--time-scale",
            "400",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo starts");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo(child);
    // The first line names the address: "printgate demo: open http://127.0.0.1:PORT …".
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("demo printed its address")
            .expect("utf-8");
        if let Some(rest) = line.split("open ").nth(1) {
            break rest.split_whitespace().next().expect("url").to_string();
        }
    };
    // Then one line per Bambu printer's virtual printer: address, serial, access code.
    let mut virtual_lines = Vec::new();
    while virtual_lines.len() < 3 {
        let line = lines
            .next()
            .expect("demo printed its virtual printers")
            .expect("utf-8");
        if line.contains("virtual printer of") {
            virtual_lines.push(line);
        }
    }
    std::thread::spawn(move || for _ in lines {});

    // The demo's API key (printed on its console) works for scripts and slicers.
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| {
        client
            .get(format!("{url}{path}"))
            .header("X-Api-Key", "printgate-demo")
            .send()
            .expect("request")
    };
    let page = get("/").text().expect("body");
    for name in [
        "Garage P1S",
        "Office X1C",
        "Desk A1 mini",
        "Workbench Voron",
    ] {
        assert!(page.contains(name), "{name} on the page");
    }

    // The Bambu printers have loaded AMS trays, and the demo's queued jobs carry their
    // filament list: each would start on the green PLA in AMS slot 3 (issue 21).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let printers: serde_json::Value = get("/api/v1/printers").json().expect("json");
        let jobs: serde_json::Value = get("/api/v1/jobs").json().expect("json");
        let slot3 = printers.as_array().expect("array").iter().take(3).all(|p| {
            p["filament"]["units"][0]["trays"][2]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("PLA Basic · green"))
        });
        let planned = jobs
            .as_array()
            .expect("array")
            .iter()
            .filter(|j| {
                j["trays"]["lines"][0]
                    .as_str()
                    .is_some_and(|l| l.ends_with("→ AMS 1 slot 3: PLA (green)"))
            })
            .count();
        if slot3 && planned == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "trays {printers} / jobs {jobs}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The API lists the virtual printers the console printed, on loopback.
    let vps: serde_json::Value = get("/api/v1/virtual-printers").json().expect("json");
    let vps = vps.as_array().expect("array");
    assert_eq!(vps.len(), 3, "{vps:?}");
    for (vp, line) in vps.iter().zip(&virtual_lines) {
        assert_eq!(vp["host"], "127.0.0.1", "{vp}");
        for key in ["printer", "serial", "access_code"] {
            let v = vp[key].as_str().expect(key);
            assert!(line.contains(v), "{key} {v} printed in {line:?}");
        }
        let port = vp["mqtt_port"].as_u64().expect("port");
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    }

    // Each printer is seen printing and then finished, through the gateway's own view.
    let mut seen_running = [false; 4];
    let mut seen_finished = [false; 4];
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen_finished.iter().any(|f| !f) {
        assert!(
            Instant::now() < deadline,
            "running {seen_running:?}, finished {seen_finished:?}"
        );
        let printers: serde_json::Value = get("/api/v1/printers").json().expect("json");
        for (i, p) in printers
            .as_array()
            .expect("array")
            .iter()
            .enumerate()
            .take(4)
        {
            match p["gcode_state"].as_str() {
                Some("RUNNING") | Some("PREPARE") => seen_running[i] = true,
                Some("FINISH") if seen_running[i] => seen_finished[i] = true,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(demo);
}
