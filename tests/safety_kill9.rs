//! kill -9 right after a smoke edge, with the real binary (`printgate serve`): the edge is driven
//! through the API (`POST /api/v1/safety/sim-input`, answered once the trip is recorded), the
//! process is killed with SIGKILL, and a new process on the same data directory must keep every
//! relay off from its first write, still show the trip latched, and start nothing even with a
//! queued job and a plate-clear tap.

mod common;

use common::*;
use printgate::config::Model;
use printgate::sim::SimPrinter;
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// A running `printgate serve`; killed with SIGKILL when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(config: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_printgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("printgate serve starts");
        let (tx, rx) = mpsc::channel::<String>();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let url = loop {
            let line = rx
                .recv_timeout(WAIT)
                .expect("printgate printed its web address in time");
            if let Some(rest) = line.split("web interface on ").nth(1) {
                let url: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && !c.is_control())
                    .collect();
                break url;
            }
        };
        // Keep draining the output so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        Serve { child, url }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, sim: &SimPrinter) -> std::path::PathBuf {
    let toml = format!(
        r#"data_dir = "{data}"

[web]
listen = "127.0.0.1:0"

[broker]
mode = "off"

[link]
keepalive_secs = 2
backoff_min_ms = 50
backoff_max_ms = 500

[[printers]]
name = "printer 1"
model = "{model}"
serial = "{serial}"
host = "{host}"
access_code = "{code}"
mqtt_port = {mqtt}
ftps_port = {ftps}

[safety]
gpio_backend = "simulated"
relay_fail_safe = "power_off_when_gateway_down"

[safety.smoke]
pin = {smoke}
debounce_ms = 20

[[safety.relays]]
printer = "printer 1"
pin = 5
"#,
        data = dir.join("data").display(),
        model = sim.model().config_name(),
        serial = sim.serial(),
        host = sim.host(),
        code = sim.access_code(),
        mqtt = sim.mqtt_port(),
        ftps = sim.ftps_port(),
        smoke = SMOKE_PIN,
    );
    let path = dir.join("printgate.toml");
    std::fs::write(&path, toml).expect("config written");
    path
}

fn api(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-api-key", token.parse().expect("header"));
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(WAIT)
        .build()
        .expect("client")
}

async fn safety_status(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let r = client
        .get(format!("{url}/api/v1/safety"))
        .send()
        .await
        .expect("status request");
    let code = r.status();
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {code}: {e}: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_right_after_a_smoke_edge_keeps_relays_off_latched_and_nothing_dispatched() {
    let sim = start_sim(Model::P1S, 1.0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &sim);
    // An account with an API token, made the way `printgate demo` makes its own.
    std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
    {
        let store =
            printgate::store::Store::open(&dir.path().join("data").join(printgate::DATABASE_FILE))
                .expect("store");
        printgate::web::auth::ensure_demo_account(&store).expect("demo account");
    }
    let client = api(printgate::web::auth::DEMO_API_TOKEN);

    // First life: a queued job, then smoke; SIGKILL as soon as the API says the trip is recorded.
    let first = Serve::start(&config);
    let status = safety_status(&client, &first.url).await;
    assert_eq!(status["tripped"], false, "{status}");
    assert_eq!(status["relays"][0]["on"], true);
    let bytes = build_3mf(&Fixture3mf {
        prediction_secs: 600,
        layers: 20,
        ..Fixture3mf::for_model(Model::P1S)
    });
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("cube.gcode.3mf"),
        )
        .text("printer", "printer 1");
    let r = client
        .post(format!("{}/api/v1/jobs", first.url))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert!(r.status().is_success(), "upload: {}", r.status());
    let answer: serde_json::Value = client
        .post(format!("{}/api/v1/safety/sim-input", first.url))
        .json(&serde_json::json!({"input": "smoke", "asserted": true}))
        .send()
        .await
        .expect("sim-input")
        .json()
        .await
        .expect("JSON");
    first.kill9();
    assert_eq!(answer["tripped"], true, "{answer}");
    assert_eq!(answer["unpersisted"], 0);
    let trip_id = answer["trip"]["id"].as_i64().expect("trip id");

    // Second life on the same data directory.
    let mut commands = sim.subscribe_commands();
    let second = Serve::start(&config);
    let status = safety_status(&client, &second.url).await;
    assert_eq!(status["tripped"], true, "{status}");
    assert_eq!(status["trip"]["id"].as_i64(), Some(trip_id));
    assert_eq!(status["trip"]["cause"]["kind"], "smoke");
    assert_eq!(status["relays"][0]["on"], false, "relay off after restart");
    assert_eq!(status["printers"][0]["latched"], true);
    // Power cannot be switched on while latched.
    let r = client
        .post(format!("{}/api/v1/safety/power", second.url))
        .json(&serde_json::json!({"printer": "printer 1", "on": true, "confirm": true}))
        .send()
        .await
        .expect("power");
    assert_eq!(r.status(), reqwest::StatusCode::CONFLICT);

    // Once the new process is connected to the printer, a plate-clear tap starts nothing.
    tokio::time::timeout(WAIT, async {
        loop {
            match commands.recv().await {
                Ok(c) if c.command.as_deref() == Some("pushall") => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("simulator stopped: {e}"),
            }
        }
    })
    .await
    .expect("the restarted gateway connected to the printer");
    let r = client
        .post(format!(
            "{}/api/v1/printers/printer%201/plate-clear",
            second.url
        ))
        .json(&serde_json::json!({"tap_id": "after-kill9"}))
        .send()
        .await
        .expect("tap");
    let tap: serde_json::Value = r.json().await.expect("tap JSON");
    assert!(starts(&sim).is_empty(), "no start after the restart: {tap}");
    let jobs: serde_json::Value = client
        .get(format!("{}/api/v1/jobs", second.url))
        .send()
        .await
        .expect("jobs")
        .json()
        .await
        .expect("jobs JSON");
    for job in jobs.as_array().expect("job list") {
        assert!(
            !matches!(job["state"].as_str(), Some("starting" | "printing")),
            "{job}"
        );
    }
    drop(second);
    sim.shutdown().await;
}
