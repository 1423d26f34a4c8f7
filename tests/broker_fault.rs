//! The safety path survives a broker failure. The real gateway (simulated printers, simulated
//! GPIO, ephemeral loopback ports, a temp data dir) runs its embedded MQTT broker in a child
//! process (`printgate broker-worker`, the binary cargo built). The test is the fault hook, as
//! an operator would be: it finds the worker among its child processes and kills it with
//! SIGKILL (a crash) or stops it with SIGSTOP (a stall), while a printer is printing. Then:
//! the smoke input still cuts the relays at once, the thermal watchdog still trips, the web UI
//! answers, a paho-mqtt client that was connected reconnects by itself and gets the printers'
//! state again, a fresh client finds the retained state, Home Assistant discovery and the
//! gateway's availability on the new broker, and the restart starts no print. And with
//! `printgate demo` as a separate process: a panic on a worker thread (debug-build fault hook)
//! ends that worker, which is replaced and serves the retained state again; a SIGKILLed gateway
//! leaves no worker behind; Ctrl-C (SIGINT to the whole process group) stops both without being
//! taken for a crash.

mod common;

use common::*;
use printgate::config::{Config, Model};
use printgate::safety::runtime::SafetyUpdate;
use printgate::sim::knobs::Heater as SimHeater;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

const SCRAPE_TOKEN: &str = "scrape-token-broker-fault";
const USER: &str = "watcher";
const PASSWORD: &str = "watch-it";

/// How long a smoke edge may take to reach the relay, broker down or not (the bench measures
/// microseconds; this bound only has to be far below a person's reaction, and above a loaded
/// CI machine's scheduling hiccups).
const SMOKE_TO_RELAY: Duration = Duration::from_millis(250);

/// The gateway with `models`, `[safety]` on the simulated GPIO, the embedded broker on an
/// ephemeral port with one read-only user, Home Assistant discovery on.
async fn gateway(models: &[Model], time_scale: f64) -> TestGateway {
    use printgate::broker::config::{Access, BrokerConfig, BrokerMode, BrokerUser};
    // As `printgate serve` does: the broker runs as `<this binary> broker-worker`.
    printgate::broker::worker::use_executable(env!("CARGO_BIN_EXE_printgate").into());
    let mut sims = Vec::new();
    for m in models {
        sims.push(start_sim(*m, time_scale).await);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config: Config = config_for(dir.path(), &sims);
    config.safety = safety_config(sims.len());
    let mut broker = BrokerConfig {
        mode: BrokerMode::Embedded,
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_listen: None,
        users: vec![BrokerUser {
            name: USER.into(),
            password_hash: printgate::broker::auth::hash_password(PASSWORD).expect("hash"),
            access: Access::Read,
        }],
        ..BrokerConfig::default()
    };
    broker.mdns.enabled = false;
    broker.ssdp.enabled = false;
    config.broker = broker;
    config.metrics.enabled = true;
    config.metrics.token = Some(SCRAPE_TOKEN.into());
    let tg = TestGateway::start_with(sims, dir, config).await;
    tg.wait_online().await;
    tg
}

fn mqtt_port(tg: &TestGateway) -> u16 {
    tg.running
        .as_ref()
        .and_then(|r| r.broker.as_ref())
        .and_then(|b| b.mqtt_addr)
        .expect("embedded broker listens")
        .port()
}

/// The supervisor's view of the broker worker.
fn worker_status(
    tg: &TestGateway,
) -> tokio::sync::watch::Receiver<printgate::broker::supervisor::WorkerStatus> {
    tg.running
        .as_ref()
        .and_then(|r| r.broker.as_ref())
        .and_then(|b| b.broker_worker.clone())
        .expect("the broker runs in a worker process")
}

/// Child processes of this test process running `printgate broker-worker` (read from /proc,
/// as `ps` would show them).
fn worker_pids() -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == b"broker-worker")
        {
            pids.push(pid);
        }
    }
    pids
}

/// The one broker worker of this gateway.
fn the_worker() -> u32 {
    let pids = worker_pids();
    assert_eq!(
        pids.len(),
        1,
        "expected one `printgate broker-worker` child process, found {pids:?}: with the broker \
         inside the gateway process, a broker crash ends the relay control, the smoke input and \
         the thermal watchdog with it"
    );
    pids[0]
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// A paho-mqtt subscriber in its own process, reporting what it sees line by line.
struct Watcher {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// The last payload seen per topic, with the connection number it arrived on.
    seen: BTreeMap<String, (u64, String)>,
    connections: u64,
}

impl Watcher {
    async fn start(port: u16) -> Watcher {
        require_paho();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/broker_fault_watcher.py"
        );
        let mut child = tokio::process::Command::new("python3")
            .args([script, "127.0.0.1", &port.to_string(), USER, PASSWORD])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().expect("stdout");
        Watcher {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
            seen: BTreeMap::new(),
            connections: 0,
        }
    }

    /// Read events until `done` holds (bounded by [`WAIT`]).
    async fn until(&mut self, what: &str, done: impl Fn(&Watcher) -> bool) {
        let wait = async {
            while !done(self) {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .expect("watcher output")
                    .unwrap_or_else(|| panic!("the paho watcher ended while waiting for {what}"));
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
                match v["event"].as_str() {
                    Some("connected") => self.connections = v["n"].as_u64().unwrap_or(0),
                    Some("message") => {
                        let topic = v["topic"].as_str().unwrap_or_default().to_string();
                        let payload = v["payload"].as_str().unwrap_or_default().to_string();
                        self.seen
                            .insert(topic, (v["n"].as_u64().unwrap_or(0), payload));
                    }
                    Some("refused") => panic!("the broker refused the paho watcher: {line}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("paho watcher: no {what} within {WAIT:?}"));
    }

    /// The payload of `topic` if it arrived on connection `n` or later.
    fn on_connection(&self, topic: &str, n: u64) -> Option<&str> {
        self.seen
            .get(topic)
            .filter(|(c, _)| *c >= n)
            .map(|(_, p)| p.as_str())
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn state_is_printing(payload: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(payload).is_ok_and(|v| v["gcode_state"] == "RUNNING")
}

/// A fresh rumqttc client: subscribes and collects the retained messages it is sent until it
/// has each of `want` and at least one Home Assistant discovery config (bounded).
async fn retained_on_a_fresh_client(port: u16, want: &[&str]) -> BTreeMap<String, String> {
    let mut o = MqttOptions::new("fresh-after-restart", "127.0.0.1", port);
    o.set_credentials(USER, PASSWORD);
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(o, 64);
    client
        .subscribe("printgate/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client
        .subscribe("homeassistant/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut got = BTreeMap::new();
    let wait = async {
        let discovery = |got: &BTreeMap<String, String>| {
            got.keys()
                .any(|t| t.starts_with("homeassistant/") && t.ends_with("/config"))
        };
        while !(want.iter().all(|t| got.contains_key(*t)) && discovery(&got)) {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                    got.insert(p.topic.clone(), String::from_utf8_lossy(&p.payload).into());
                }
                Ok(_) => {}
                Err(e) => panic!("fresh client: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| {
        panic!(
            "fresh client: retained {want:?} not all there, got {:?}",
            got.keys()
        )
    });
    got
}

/// The web UI answers while the broker is down: the health check, and the signed-in
/// dashboard with the printers on it.
async fn web_answers(tg: &TestGateway, browser: &Browser) {
    let health = reqwest::Client::new()
        .get(tg.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("GET /healthz while the broker is down");
    assert!(
        health.status().is_success(),
        "/healthz: {}",
        health.status()
    );
    let page = browser
        .http
        .get(format!("{}/", browser.base))
        .header("cookie", &browser.cookie)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("GET / while the broker is down");
    assert!(page.status().is_success(), "GET /: {}", page.status());
    let html = page.text().await.expect("dashboard");
    assert!(
        html.contains("printer 1"),
        "the dashboard lists the printers"
    );
}

/// The value of a series on `GET /metrics`.
async fn metric(tg: &TestGateway, series: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(tg.url("/metrics"))
        .bearer_auth(SCRAPE_TOKEN)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The tests find "the" worker among this process's children: one gateway at a time.
static ONE_GATEWAY_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const STATE_1: &str = "printgate/printer_1/state";
const GATEWAY_AVAILABILITY: &str = "printgate/availability";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_worker_killed_while_printing_smoke_still_cuts_power_and_clients_get_the_state_back()
{
    let _one = ONE_GATEWAY_AT_A_TIME.lock().await;
    let tg = gateway(&[Model::P1S], 1.0).await;
    start_screen_print(&tg.sims[0], "benchy", 3600);
    let port = mqtt_port(&tg);
    let mut watcher = Watcher::start(port).await;
    watcher
        .until("printer 1 printing (connection 1)", |w| {
            w.on_connection(STATE_1, 1).is_some_and(state_is_printing)
        })
        .await;

    let browser = tg.browser().await;
    let mut status = worker_status(&tg);
    let worker = the_worker();
    assert_eq!(status.borrow().pid, Some(worker));
    let killed = Instant::now();
    signal(worker, "KILL");
    // The broker is gone (its process killed) at this instant: the safety room must not care.
    let gpio = tg.sim_gpio();
    let mut updates = tg.safety().subscribe();
    let edge = Instant::now();
    gpio.set_input_asserted(SMOKE_PIN, true)
        .expect("smoke input");
    wait_update(&mut updates, "smoke trip", |u| {
        matches!(u, SafetyUpdate::Tripped { .. })
    })
    .await;
    let off = gpio
        .output_history()
        .into_iter()
        .find(|w| w.pin == 5 && !w.on && w.at >= edge)
        .expect("relay 5 written off after the edge");
    eprintln!(
        "smoke edge -> relay off, broker just killed: {:?}",
        off.at - edge
    );
    assert!(
        off.at - edge <= SMOKE_TO_RELAY,
        "smoke edge -> relay off took {:?} with the broker killed",
        off.at - edge
    );
    web_answers(&tg, &browser).await;
    wait_stops(&tg.sims[0], 1).await;

    let replaced = tokio::time::timeout(WAIT, status.wait_for(|s| s.up && s.generation == 2))
        .await
        .expect("a new worker within WAIT")
        .expect("supervisor running")
        .clone();
    eprintln!("SIGKILL -> new broker worker ready: {:?}", killed.elapsed());
    assert_eq!(replaced.restarts, 1);
    let why = replaced.last_failure.clone().unwrap_or_default();
    assert!(why.contains("SIGKILL"), "{why}");
    // paho reconnects by itself and gets the state again, from the new broker.
    watcher
        .until("printer 1 state after reconnecting", |w| {
            w.connections >= 2 && w.on_connection(STATE_1, 2).is_some()
        })
        .await;
    eprintln!(
        "SIGKILL -> paho has the state again: {:?}",
        killed.elapsed()
    );
    assert_eq!(
        metric(&tg, "printgate_broker_worker_restarts_total").await,
        Some(1.0)
    );
    assert_eq!(metric(&tg, "printgate_broker_worker_up").await, Some(1.0));
    assert_eq!(
        Some(the_worker()),
        replaced.pid,
        "the new worker serves the broker"
    );
    assert_ne!(replaced.pid, Some(worker));
    let fresh = retained_on_a_fresh_client(port, &[STATE_1, GATEWAY_AVAILABILITY]).await;
    assert_eq!(
        fresh.get(GATEWAY_AVAILABILITY).map(String::as_str),
        Some("online")
    );
    let state: serde_json::Value = serde_json::from_str(&fresh[STATE_1]).expect("state JSON");
    assert_eq!(state["safety_tripped"], true, "{state}");
    // A reconnect never starts a print (I1–I8): the only print is the one started on the screen.
    assert!(starts(&tg.sims[0]).is_empty(), "{:?}", starts(&tg.sims[0]));
    watcher.stop().await;
    tg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_worker_stalled_while_printing_is_replaced_and_the_watchdog_still_trips() {
    // Time scale 10: the simulated runaway heats the idle nozzle by 20 °C per real second.
    let _one = ONE_GATEWAY_AT_A_TIME.lock().await;
    let tg = gateway(&[Model::P1S, Model::X1C], 10.0).await;
    start_screen_print(&tg.sims[1], "long-part", 36_000);
    let port = mqtt_port(&tg);
    let mut watcher = Watcher::start(port).await;
    let state_2 = "printgate/printer_2/state";
    watcher
        .until("printer 2 printing (connection 1)", |w| {
            w.on_connection(state_2, 1).is_some_and(state_is_printing)
        })
        .await;

    let browser = tg.browser().await;
    let mut status = worker_status(&tg);
    let worker = the_worker();
    let stopped = Instant::now();
    signal(worker, "STOP");
    // The broker hangs (its process stopped): connections stay open and nothing answers.
    let window = tg.gw().config.safety.watchdog.nozzle.runaway_window_secs;
    let floor = tg.gw().config.safety.watchdog.nozzle.runaway_idle_floor_c;
    let mut updates = tg.safety().subscribe();
    let mut link = tg.gw().printers[0].link.subscribe();
    tg.sims[0].knobs().set(|k| {
        k.thermal_runaway = Some(SimHeater::Nozzle);
        k.firmware_reports_overheat = false;
    });
    tokio::time::timeout(
        WAIT,
        link.wait_for(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.nozzle_temp)
                .is_some_and(|t| t > floor)
        }),
    )
    .await
    .expect("nozzle above the idle floor")
    .expect("link");
    let above = Instant::now();
    web_answers(&tg, &browser).await;
    wait_update(&mut updates, "runaway trip", |u| {
        matches!(u, SafetyUpdate::Tripped { .. })
    })
    .await;
    assert!(
        above.elapsed() <= Duration::from_secs_f64(window),
        "tripped {:?} after crossing the floor, broker stalled",
        above.elapsed()
    );
    eprintln!(
        "SIGSTOP -> watchdog trip: {:?} (worker replaced by then: {})",
        stopped.elapsed(),
        status.borrow().generation > 1
    );
    assert_eq!(tg.sim_gpio().output_state(5), Some(false));
    assert_eq!(
        tg.sim_gpio().output_state(6),
        Some(true),
        "printer 2 keeps power"
    );

    // The stalled worker is found out, killed and replaced; paho comes back and sees printer 2
    // still printing.
    let replaced = tokio::time::timeout(WAIT, status.wait_for(|s| s.up && s.generation == 2))
        .await
        .expect("the stalled worker replaced within WAIT")
        .expect("supervisor running")
        .clone();
    eprintln!(
        "SIGSTOP -> new broker worker ready: {:?}",
        stopped.elapsed()
    );
    assert_eq!(replaced.restarts, 1);
    let why = replaced.last_failure.clone().unwrap_or_default();
    assert!(why.contains("stopped answering"), "{why}");
    assert!(
        !std::path::Path::new(&format!("/proc/{worker}")).exists()
            || std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| s
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))),
        "the stalled worker {worker} was killed"
    );
    watcher
        .until("printer 2 state after reconnecting", |w| {
            w.connections >= 2 && w.on_connection(state_2, 2).is_some_and(state_is_printing)
        })
        .await;
    eprintln!(
        "SIGSTOP -> paho has the state again: {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        Some(the_worker()),
        replaced.pid,
        "the new worker serves the broker"
    );
    let fresh = retained_on_a_fresh_client(port, &[state_2, GATEWAY_AVAILABILITY]).await;
    assert!(state_is_printing(&fresh[state_2]), "{}", fresh[state_2]);
    for sim in &tg.sims {
        assert!(starts(sim).is_empty(), "{:?}", starts(sim));
    }
    watcher.stop().await;
    tg.shutdown().await;
}

/// `printgate demo` as a user runs it, in a process group of its own (as a terminal's
/// foreground job is), with stderr captured; returns it and its broker worker's pid once it
/// says where its broker listens.
fn start_demo(dir: &std::path::Path) -> (std::process::Child, u32, GroupGuard) {
    let (demo, _, guard) = start_demo_with(dir, &[]);
    let parent = demo.id();
    let worker = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|a| a == b"broker-worker")
        })
        .expect("printgate demo runs its broker in a `printgate broker-worker` child");
    (demo, worker, guard)
}

/// Kills a demo's whole process group (the gateway and its worker) when dropped, so a failing
/// test leaves nothing running; after a clean exit the group is gone and this does nothing.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.0))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// [`start_demo`] with extra environment variables; also returns the demo's stdout lines up to
/// its broker line (the web address is among them).
fn start_demo_with(
    dir: &std::path::Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> (std::process::Child, Vec<String>, GroupGuard) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_printgate"));
    for (k, v) in env {
        command.env(k, v);
    }
    let mut demo = command
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("printgate demo runs");
    let guard = GroupGuard(demo.id());
    // The demo prints its addresses once everything listens.
    let stdout = demo.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut said = Vec::new();
    for line in lines.by_ref().take(200) {
        let Ok(line) = line else { break };
        let done = line.contains("MQTT broker on");
        said.push(line);
        if done {
            break;
        }
    }
    assert!(
        said.last().is_some_and(|l| l.contains("MQTT broker on")),
        "printgate demo did not say where its broker listens: {said:?}"
    );
    // Keep reading stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (demo, said, guard)
}

/// Whether `pid` is gone (or a zombie), watched in /proc for at most 10 s: it is not our child.
fn ends_within_10_s(pid: u32) -> bool {
    ends_within(pid, Duration::from_secs(10))
}

/// Whether `pid` is gone (or a zombie) now or within `limit` (checked every 20 ms).
fn ends_within(pid: u32, limit: Duration) -> bool {
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    let until = std::time::Instant::now() + limit;
    loop {
        if !alive(pid) {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway killed with SIGKILL (no chance to clean up) leaves no broker worker behind: the
/// worker's stdin closes and it ends.
#[test]
fn a_killed_gateway_leaves_no_broker_worker_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut demo, worker, _guard) = start_demo(dir.path());
    demo.kill().expect("SIGKILL the gateway");
    demo.wait().expect("reaped");
    assert!(
        ends_within_10_s(worker),
        "broker worker {worker} still runs after its gateway was killed"
    );
}

/// Ctrl-C in a terminal signals the whole process group, worker included: the gateway shuts
/// down in order, exits 0, its worker ends with it, and nothing is mistaken for a crash.
#[test]
fn ctrl_c_stops_the_gateway_and_its_worker_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (demo, worker, _guard) = start_demo(dir.path());
    // Ctrl-C and `systemctl stop` reach the worker too; it leaves stopping to its gateway. (Its
    // not dying is a non-event: checked after a bounded 0.5 s; before the fix it died at once.)
    signal(worker, "INT");
    signal(worker, "TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !ends_within(worker, Duration::ZERO),
        "the broker worker died of SIGINT/SIGTERM on its own"
    );
    let group = demo.id();
    signal_group(group, "INT");
    let out = demo.wait_with_output().expect("the demo exits");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{log}", out.status);
    assert!(
        ends_within_10_s(worker),
        "broker worker {worker} still runs"
    );
    assert!(
        !log.contains("MQTT broker worker (pid"),
        "a stop by Ctrl-C was logged as a broker failure:\n{log}"
    );
}

fn signal_group(group: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{group}"))
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{sig} -- -{group} failed");
}

/// A panic on a thread of the broker worker (debug builds abort on it as release builds do):
/// the worker ends, a new one starts, the gateway keeps serving its web page, and MQTT clients
/// find the gateway's retained state on the new broker. The fault hook makes exactly one
/// worker panic ([`printgate::broker::worker::PANIC_ONCE_ENV`]).
#[test]
fn a_panicking_broker_thread_costs_a_restart_not_the_gateway() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("panicked-once");
    let (mut demo, said, _guard) = start_demo_with(
        &dir.path().join("data"),
        &[(
            printgate::broker::worker::PANIC_ONCE_ENV,
            marker.as_os_str(),
        )],
    );
    // The gateway's log, line by line, until the replacement worker is ready (bounded).
    let stderr = demo.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut log: Vec<String> = Vec::new();
    while !log
        .iter()
        .any(|l| l.contains("a new MQTT broker worker is ready on the same loopback ports"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => log.push(l),
            Err(_) => panic!("no replacement worker within {WAIT:?}:\n{}", log.join("\n")),
        }
    }
    let log = log.join("\n");
    assert!(marker.exists(), "the fault hook ran");
    let first: u32 = log
        .split("MQTT broker worker (pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the log names the worker that ended:\n{log}"));
    assert!(
        log.contains(&format!("MQTT broker worker (pid {first}) ended"))
            && log.contains("SIGABRT: it panicked")
            && log.contains("Restart 1 in 100 ms"),
        "the restart is told in words:\n{log}"
    );
    assert!(
        ends_within(first, Duration::ZERO),
        "the panicked worker is gone"
    );
    // The web page answers; MQTT clients get the retained state from the new broker.
    let web = said
        .iter()
        .find_map(|l| l.split("open ").nth(1)?.split_whitespace().next())
        .expect("the demo's web address")
        .to_string();
    let mqtt_port: u16 = said
        .last()
        .and_then(|l| l.split("MQTT broker on 127.0.0.1:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("the demo's MQTT port");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let health = reqwest::get(format!("{web}/healthz"))
            .await
            .expect("web answers");
        assert!(health.status().is_success());
        let mut o = MqttOptions::new("after-panic", "127.0.0.1", mqtt_port);
        o.set_credentials("demo", "demo");
        let (client, mut events) = AsyncClient::new(o, 16);
        client
            .subscribe(GATEWAY_AVAILABILITY, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let online = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await
                    && p.retain
                {
                    return p.payload;
                }
            }
        })
        .await
        .expect("retained availability from the new broker");
        assert_eq!(&online[..], b"online");
    });
    signal_group(demo.id(), "INT");
    let status = demo.wait().expect("the demo exits");
    assert!(status.success(), "{status:?}");
}
