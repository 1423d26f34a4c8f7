//! Whole-gateway load figures from issue 7, on the real binary (`printgate serve` in its own
//! process, simulated printers in another, `printgate sim`):
//!
//! 1. **clients**: the embedded broker, 10 printers and 50 MQTT clients (rumqttc, broker user
//!    `watch` from the config) subscribed to `printgate/#` with QoS 1. A control user sends
//!    `plate_clear` to every printer (each printer's `state` changes once: every client must
//!    receive the 10 new states) and then one `light` command per second (each answer on
//!    `…/cmd/light/result` reaches every client). The serve process's VmRSS / VmHWM and CPU
//!    are sampled; the summary gives median and peak RSS, CPU %, and per client what it
//!    received (retained state of every printer, the new states, the command results, no
//!    disconnect). Target: RSS < 25 MB.
//! 2. **printers**: 100 simulated printers on one gateway (with the broker and one `printgate/#`
//!    subscriber): CPU and RSS of serve (and the simulator's CPU), and whether every printer's
//!    state stays fresh: `report_age_secs` of every printer from `GET /api/v1/printers`
//!    (signed in with a web account made by `printgate set-password`) sampled over the run, plus
//!    `state` and `availability` seen over MQTT, and one state change per printer end to end
//!    (`plate_clear` over MQTT → the new `state` on MQTT, latency per printer). Idle simulated
//!    P1/A1 printers, like real ones, only report changes, so their report age grows while
//!    nothing happens; the end-to-end change is what shows the gateway keeping up.
//!
//! glibc keeps the 19 MiB of an argon2 password check (MQTT or web login) resident after it
//! is freed (its dynamic mmap threshold); run with `MALLOC_MMAP_THRESHOLD_=131072` (passed on
//! to serve) to see the RSS without that effect.
//!
//! Run with `cargo bench --bench broker_load`. Knobs: `PRINTGATE_BENCH_SECS` (sampling period of
//! each scenario, default 20), `PRINTGATE_BENCH_INTERVAL_SECS` (sample interval, default 2),
//! `PRINTGATE_LOAD` (`clients`, `printers` or `all`, default `all`),
//! `PRINTGATE_LOAD_CLIENTS` (default 50), `PRINTGATE_LOAD_PRINTERS` (scenario 2, default 100).
//! Everything listens on 127.0.0.1 (mDNS and SSDP off); every child is stopped when this program
//! ends, also on a panic.

mod common;
use common::*;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_printgate");
const WATCH_PW: &str = "watch-pw-1234";
const CTL_PW: &str = "ctl-pw-1234";
const WEB_USER: &str = "bench";
const WEB_PW: &str = "bench-web-password-1234";

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// RSS and CPU of one process over a sampling period.
struct Sampler {
    pid: u32,
    t0: Instant,
    cpu0: u64,
    samples: Vec<Mem>,
}

impl Sampler {
    fn start(pid: u32) -> Res<Sampler> {
        Ok(Sampler {
            pid,
            t0: Instant::now(),
            cpu0: cpu_ticks(pid)?,
            samples: vec![mem(pid)?],
        })
    }
    fn sample(&mut self, label: &str) -> Res<()> {
        let m = mem(self.pid)?;
        println!(
            "  t={:>3} s {label}: VmRSS {}, VmHWM {}, {} threads",
            self.t0.elapsed().as_secs(),
            mb(m.rss_kb),
            mb(m.hwm_kb),
            m.threads
        );
        self.samples.push(m);
        Ok(())
    }
    /// (median RSS, max RSS, VmHWM, CPU % of one core, seconds)
    fn finish(&self) -> Res<(u64, u64, u64, f64, f64)> {
        let secs = self.t0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(self.pid)?.saturating_sub(self.cpu0)) as f64 / clock_ticks() as f64;
        let rss: Vec<u64> = self.samples.iter().map(|m| m.rss_kb).collect();
        Ok((
            median(rss.clone()),
            rss.iter().copied().max().unwrap_or(0),
            self.samples.iter().map(|m| m.hwm_kb).max().unwrap_or(0),
            100.0 * cpu / secs.max(1e-9),
            secs,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator, the config, printgate serve
// ---------------------------------------------------------------------------------------------

/// A web account for `GET /api/v1/printers` (before serve starts).
fn web_account(bin: &Path, config: &Path) -> Res<()> {
    let mut child = Command::new(bin)
        .args(["set-password", "--user", WEB_USER, "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(format!("{WEB_PW}\n{WEB_PW}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "printgate set-password failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

struct Hashes {
    watch: String,
    ctl: String,
}

struct Serve {
    guard: Guard,
    connected: Arc<AtomicUsize>,
    mqtt: SocketAddr,
    web: u16,
}

fn start_serve(
    bin: &Path,
    dir: &Path,
    tag: &str,
    printers: &[SimPrinter],
    h: &Hashes,
) -> Res<Serve> {
    let (web, mqtt, mqtts) = (free_port()?, free_port()?, free_port()?);
    let data = dir.join(format!("data-{tag}"));
    let mut t = format!(
        "data_dir = {}\n\n[web]\nlisten = \"127.0.0.1:{web}\"\n\n[broker]\n\
         listen = \"127.0.0.1:{mqtt}\"\ntls_listen = \"127.0.0.1:{mqtts}\"\n\n\
         [broker.limits]\nmax_connections = 200\nmax_unauthenticated = 256\n\
         max_unauthenticated_per_address = 256\n\n\
         [broker.mdns]\nenabled = false\n\n[broker.ssdp]\nenabled = false\n\n\
         [[broker.users]]\nname = \"watch\"\npassword_hash = {}\naccess = \"read\"\n\n\
         [[broker.users]]\nname = \"ctl\"\npassword_hash = {}\naccess = \"control\"\n",
        toml_str(&data.display().to_string()),
        toml_str(&h.watch),
        toml_str(&h.ctl),
    );
    for p in printers {
        t.push_str(&p.toml_block());
    }
    let config = dir.join(format!("printgate-{tag}.toml"));
    std::fs::write(&config, t)?;
    web_account(bin, &config)?;
    let mut guard = Guard::spawn(
        "printgate serve",
        Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let out = guard.child.stderr.take().ok_or("serve log not captured")?;
    let connected = Arc::new(AtomicUsize::new(0));
    {
        let c = connected.clone();
        let log = dir.join(format!("serve-{tag}.log"));
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log).ok();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains(MARKER_CONNECTED) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
    }
    let mqtt = SocketAddr::from(([127, 0, 0, 1], mqtt));
    for _ in 0..2000 {
        if let Ok(Some(st)) = guard.child.try_wait() {
            return Err(format!("printgate serve exited during start-up: {st}").into());
        }
        if std::net::TcpStream::connect(mqtt).is_ok() {
            return Ok(Serve {
                guard,
                connected,
                mqtt,
                web,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("printgate serve's MQTT listener did not open within 20 s".into())
}

/// `printgate/<id>/…` topic ids of the printers, as the gateway makes them.
fn topic_ids(printers: &[SimPrinter]) -> Vec<String> {
    let names: Vec<&str> = printers.iter().map(|p| p.name.as_str()).collect();
    printgate::broker::topics::topic_ids(&names)
}

// ---------------------------------------------------------------------------------------------
// MQTT clients
// ---------------------------------------------------------------------------------------------

fn options(addr: SocketAddr, id: &str, user: &str, pw: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    o.set_credentials(user, pw);
    o
}

async fn until(el: &mut EventLoop, what: &str, f: impl Fn(&Event) -> bool) -> Res<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for _ in 0..100_000 {
        let ev = tokio::time::timeout_at(deadline, el.poll())
            .await
            .map_err(|_| format!("no {what} within 20 s"))?
            .map_err(|e| format!("while waiting for {what}: {e}"))?;
        if f(&ev) {
            return Ok(());
        }
    }
    Err(format!("no {what} in 100000 events").into())
}

/// What one subscribed client received.
#[derive(Default)]
struct ClientLog {
    /// Per printer topic id: number of `state` messages, when the last arrived, whether its
    /// last payload said `plate_clear: true`.
    states: HashMap<String, (usize, Instant, bool)>,
    /// Per printer topic id: last `availability` payload.
    availability: HashMap<String, String>,
    /// Per printer topic id: when the first `state` with `plate_clear: true` arrived.
    cleared_at: HashMap<String, Instant>,
    results: usize,
    messages: usize,
    /// The connection ended (text of the error).
    closed: Option<String>,
}

async fn subscribe_and_log(
    addr: SocketAddr,
    id: String,
    qos: QoS,
    stop: CancellationToken,
) -> Res<(AsyncClient, Arc<Mutex<ClientLog>>)> {
    let (c, mut el) = AsyncClient::new(options(addr, &id, "watch", WATCH_PW), 100);
    until(&mut el, "CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await?;
    c.subscribe("printgate/#", qos).await?;
    until(&mut el, "SUBACK", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await?;
    let log = Arc::new(Mutex::new(ClientLog::default()));
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = el.poll() => ev,
            };
            let Ok(mut g) = l.lock() else { return };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    g.messages += 1;
                    let parts: Vec<&str> = p.topic.split('/').collect();
                    match parts.as_slice() {
                        ["printgate", id, "state"] => {
                            let clear = serde_json::from_slice::<serde_json::Value>(&p.payload)
                                .is_ok_and(|v| v["plate_clear"] == true);
                            let e = g.states.entry(id.to_string()).or_insert((
                                0,
                                Instant::now(),
                                false,
                            ));
                            e.0 += 1;
                            e.1 = Instant::now();
                            e.2 = clear;
                            if clear {
                                g.cleared_at
                                    .entry(id.to_string())
                                    .or_insert_with(Instant::now);
                            }
                        }
                        ["printgate", id, "availability"] => {
                            g.availability.insert(
                                id.to_string(),
                                String::from_utf8_lossy(&p.payload).into_owned(),
                            );
                        }
                        ["printgate", _, "cmd", _, "result"] => g.results += 1,
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    g.closed = Some(e.to_string());
                    return;
                }
            }
        }
    });
    Ok((c, log))
}

/// The control user's client; its event loop runs in a task until `stop`.
async fn control_client(addr: SocketAddr, stop: CancellationToken) -> Res<AsyncClient> {
    let (c, mut el) = AsyncClient::new(options(addr, "load-ctl", "ctl", CTL_PW), 100);
    until(&mut el, "CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = el.poll() => if ev.is_err() { return },
            }
        }
    });
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: 10 printers, 50 clients
// ---------------------------------------------------------------------------------------------

async fn scenario_clients(bin: &Path, dir: &Path, h: &Hashes, secs: u64, every: u64) -> Res<()> {
    const PRINTERS: usize = 10;
    let clients = env_u64("PRINTGATE_LOAD_CLIENTS", 50).clamp(1, 150) as usize;
    println!();
    println!(
        "== scenario clients: printgate serve + {PRINTERS} simulated printers (other process) + {clients} MQTT clients on printgate/# (QoS 1) =="
    );
    println!("  load average before: {}", load_average());
    let (_sim, printers) = start_sim(bin, PRINTERS, dir)?;
    let mut serve = start_serve(bin, dir, "clients", &printers, h)?;
    let pid = serve.guard.pid();
    let t = wait_connected(
        &mut serve.guard,
        &serve.connected,
        PRINTERS,
        Duration::from_secs(90),
    )
    .await?;
    println!("  {PRINTERS} printers connected {t:?} after the MQTT listener opened");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = mem(pid)?;
    println!(
        "  printers only, no MQTT clients: VmRSS {}, VmHWM {}",
        mb(base.rss_kb),
        mb(base.hwm_kb)
    );

    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let mut subs = Vec::new();
    for i in 0..clients {
        subs.push(
            subscribe_and_log(
                serve.mqtt,
                format!("load-{i}"),
                QoS::AtLeastOnce,
                stop.clone(),
            )
            .await?,
        );
    }
    println!(
        "  {clients} clients connected and subscribed in {:?}",
        t0.elapsed()
    );
    let ctl = control_client(serve.mqtt, stop.clone()).await?;
    let ids = topic_ids(&printers);
    // Every client has the retained state of every printer (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    let retained_ok = loop {
        let ok = subs.iter().all(|(_, l)| {
            l.lock()
                .map(|g| ids.iter().all(|id| g.states.contains_key(id)))
                .unwrap_or(false)
        });
        if ok || Instant::now() > deadline {
            break ok;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let before: Vec<HashMap<String, usize>> = subs
        .iter()
        .map(|(_, l)| {
            l.lock()
                .map(|g| g.states.iter().map(|(k, v)| (k.clone(), v.0)).collect())
                .unwrap_or_default()
        })
        .collect();

    // Sampling period: plate_clear for every printer at the start (one new state each), then
    // one light command per second, round robin.
    let mut sampler = Sampler::start(pid)?;
    let cleared_sent = Instant::now();
    for id in &ids {
        ctl.publish(
            format!("printgate/{id}/cmd/plate_clear"),
            QoS::AtLeastOnce,
            false,
            "PRESS",
        )
        .await?;
    }
    let mut sent = ids.len();
    let mut next_sample = every;
    for s in 1..=secs {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            sampler.t0 + Duration::from_secs(s),
        ))
        .await;
        let id = &ids[(s as usize) % ids.len()];
        let on = if s % 2 == 0 { "ON" } else { "OFF" };
        ctl.publish(
            format!("printgate/{id}/cmd/light"),
            QoS::AtLeastOnce,
            false,
            on,
        )
        .await?;
        sent += 1;
        if s >= next_sample {
            sampler.sample(&format!("{clients} clients"))?;
            next_sample += every;
        }
        if let Ok(Some(st)) = serve.guard.child.try_wait() {
            return Err(format!("printgate serve exited during the run: {st}").into());
        }
    }
    // Let the last answers arrive (bounded), then read the logs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (med, max, hwm, cpu, el) = sampler.finish()?;
    let mut latencies: Vec<u64> = Vec::new();
    for (_, l) in &subs {
        if let Ok(g) = l.lock() {
            latencies.extend(
                g.cleared_at
                    .values()
                    .map(|t| t.saturating_duration_since(cleared_sent).as_millis() as u64),
            );
        }
    }
    latencies.sort_unstable();
    let mut closed = 0;
    let mut all_new_states = 0;
    let mut results = Vec::new();
    let mut min_msgs = usize::MAX;
    for ((_, l), before) in subs.iter().zip(&before) {
        let Ok(g) = l.lock() else { continue };
        if g.closed.is_some() {
            closed += 1;
        }
        let fresh = ids.iter().all(|id| {
            g.states
                .get(id)
                .is_some_and(|v| v.2 && v.0 > before.get(id).copied().unwrap_or(0))
        });
        if fresh {
            all_new_states += 1;
        }
        results.push(g.results);
        min_msgs = min_msgs.min(g.messages);
    }
    let online_everywhere = subs
        .iter()
        .filter(|(_, l)| {
            l.lock()
                .map(|g| {
                    ids.iter()
                        .all(|id| g.availability.get(id).map(String::as_str) == Some("online"))
                })
                .unwrap_or(false)
        })
        .count();
    results.sort_unstable();
    println!();
    println!("== summary clients ({PRINTERS} printers, {clients} clients) ==");
    println!(
        "serve RSS: {} with printers only; with {clients} clients over {el:.0} s ({} samples): median {}, max {}; VmHWM {} (target < 25 MB)",
        mb(base.rss_kb),
        sampler.samples.len(),
        mb(med),
        mb(max),
        mb(hwm)
    );
    println!("serve CPU: {cpu:.1} % of one core over {el:.0} s");
    println!(
        "clients: retained state of all {PRINTERS} printers at subscribe: {}; new state (plate_clear) of all {PRINTERS} printers received by {all_new_states}/{clients}; availability online for all printers at {online_everywhere}/{clients}; disconnected: {closed}",
        if retained_ok {
            "every client"
        } else {
            "NOT every client"
        },
    );
    println!(
        "plate_clear command → new state at the clients ({} of {} deliveries): median {} ms, max {} ms",
        latencies.len(),
        clients * PRINTERS,
        latencies.get(latencies.len() / 2).copied().unwrap_or(0),
        latencies.last().copied().unwrap_or(0)
    );
    println!(
        "command results per client (sent {sent} commands): min {} median {} max {}; fewest messages received by one client: {min_msgs}",
        results.first().copied().unwrap_or(0),
        results.get(results.len() / 2).copied().unwrap_or(0),
        results.last().copied().unwrap_or(0)
    );
    println!("  load average after: {}", load_average());
    stop.cancel();
    for (c, _) in subs {
        let _ = c.try_disconnect();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scenario 2: 100 printers
// ---------------------------------------------------------------------------------------------

/// Signs in on the web and returns the session cookie (`name=value`).
async fn web_login(http: &reqwest::Client, port: u16) -> Res<String> {
    let resp = http
        .post(format!("http://127.0.0.1:{port}/login"))
        .form(&[("username", WEB_USER), ("password", WEB_PW)])
        .send()
        .await?;
    let cookie = resp
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|c| c.contains('=') && !c.ends_with('='))
        .map(String::from);
    cookie.ok_or_else(|| {
        format!(
            "web login answered {} without a session cookie",
            resp.status()
        )
        .into()
    })
}

/// `(name, online, report_age_secs)` of every printer.
async fn api_printers(
    http: &reqwest::Client,
    port: u16,
    cookie: &str,
) -> Res<Vec<(String, bool, Option<u64>)>> {
    let v: serde_json::Value = http
        .get(format!("http://127.0.0.1:{port}/api/v1/printers"))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let list = v
        .as_array()
        .or_else(|| v["printers"].as_array())
        .ok_or("GET /api/v1/printers: not a list")?;
    Ok(list
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["online"] == true,
                p["report_age_secs"].as_u64(),
            )
        })
        .collect())
}

async fn scenario_printers(bin: &Path, dir: &Path, h: &Hashes, secs: u64, every: u64) -> Res<()> {
    let n = env_u64("PRINTGATE_LOAD_PRINTERS", 100).clamp(1, 200) as usize;
    println!();
    println!("== scenario printers: {n} simulated printers (other process) on one gateway ==");
    println!("  load average before: {}", load_average());
    let (sim, printers) = start_sim(bin, n, dir)?;
    let mut serve = start_serve(bin, dir, "printers", &printers, h)?;
    let pid = serve.guard.pid();
    let t = wait_connected(
        &mut serve.guard,
        &serve.connected,
        n,
        Duration::from_secs(240),
    )
    .await?;
    println!("  {n} printers connected {t:?} after the MQTT listener opened");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let cookie = web_login(&http, serve.web).await?;
    let stop = CancellationToken::new();
    let (watcher, log) = subscribe_and_log(
        serve.mqtt,
        "load-watch".into(),
        QoS::AtMostOnce,
        stop.clone(),
    )
    .await?;
    let ids = topic_ids(&printers);
    let ctl = control_client(serve.mqtt, stop.clone()).await?;

    // A state change for every printer, end to end: plate_clear over MQTT (paced below the
    // front door's 50 publishes/s per client) → dispatcher → the printer's `state` topic.
    let mut cleared_sent: HashMap<String, Instant> = HashMap::new();
    for id in &ids {
        cleared_sent.insert(id.clone(), Instant::now());
        ctl.publish(
            format!("printgate/{id}/cmd/plate_clear"),
            QoS::AtLeastOnce,
            false,
            "PRESS",
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Idle P1/A1 printers only report changes: a light command to one printer every
    // `LIGHT_PACE` (round robin) makes every printer report at least every n × LIGHT_PACE, so
    // the report age the gateway shows measures how well it keeps up.
    const LIGHT_PACE: Duration = Duration::from_millis(50);
    let light_round = LIGHT_PACE * n as u32;
    {
        let ctl = ctl.clone();
        let ids = ids.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            for round in 0u64.. {
                for id in &ids {
                    let on = if round % 2 == 0 { "ON" } else { "OFF" };
                    let sent = ctl.publish(
                        format!("printgate/{id}/cmd/light"),
                        QoS::AtLeastOnce,
                        false,
                        on,
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = sent => if r.is_err() { return },
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(LIGHT_PACE) => {}
                    }
                }
            }
        });
    }
    // The first round of light commands has to reach every printer before ages mean anything.
    tokio::time::sleep(light_round + Duration::from_secs(1)).await;
    let mut sampler = Sampler::start(pid)?;
    let sim_cpu0 = cpu_ticks(sim.pid())?;
    // Per printer: the largest report age seen in any sample, and samples where it was offline.
    let mut max_age: HashMap<String, u64> = HashMap::new();
    let mut offline: HashMap<String, usize> = HashMap::new();
    let mut missing_age = 0usize;
    let mut api_samples = 0usize;
    let mut api_ms = Vec::new();
    for i in 1..=secs.div_ceil(every) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            sampler.t0 + Duration::from_secs(i * every),
        ))
        .await;
        if let Ok(Some(st)) = serve.guard.child.try_wait() {
            return Err(format!("printgate serve exited during the run: {st}").into());
        }
        let q = Instant::now();
        let list = api_printers(&http, serve.web, &cookie).await?;
        api_ms.push(q.elapsed().as_millis() as u64);
        api_samples += 1;
        for (name, online, age) in list {
            match age {
                Some(a) => {
                    let m = max_age.entry(name.clone()).or_insert(0);
                    *m = (*m).max(a);
                }
                None => missing_age += 1,
            }
            if !online {
                *offline.entry(name).or_insert(0) += 1;
            }
        }
        sampler.sample(&format!("{n} printers"))?;
    }
    let (med, max, hwm, cpu, el) = sampler.finish()?;
    let sim_cpu = 100.0 * (cpu_ticks(sim.pid())?.saturating_sub(sim_cpu0)) as f64
        / clock_ticks() as f64
        / el.max(1e-9);
    let (states, online_mqtt, closed, mut latencies) = {
        let g = log.lock().map_err(|_| "poisoned")?;
        let latencies: Vec<u64> = ids
            .iter()
            .filter_map(|id| {
                let sent = cleared_sent.get(id)?;
                let got = g.cleared_at.get(id)?;
                Some(got.saturating_duration_since(*sent).as_millis() as u64)
            })
            .collect();
        let states = ids.iter().filter(|id| g.states.contains_key(*id)).count();
        let online = ids
            .iter()
            .filter(|id| g.availability.get(*id).map(String::as_str) == Some("online"))
            .count();
        (states, online, g.closed.clone(), latencies)
    };
    latencies.sort_unstable();
    let mut ages: Vec<u64> = max_age.values().copied().collect();
    ages.sort_unstable();
    let stale_limit = light_round.as_secs() + 2;
    let stale: Vec<&String> = max_age
        .iter()
        .filter(|(_, a)| **a > stale_limit)
        .map(|(n, _)| n)
        .collect();
    api_ms.sort_unstable();
    println!();
    println!("== summary printers ({n} printers) ==");
    println!(
        "serve over {el:.0} s ({} samples): CPU {cpu:.1} % of one core; RSS median {}, max {}; VmHWM {}; simulator process CPU {sim_cpu:.1} %",
        sampler.samples.len(),
        mb(med),
        mb(max),
        mb(hwm)
    );
    println!(
        "freshness via GET /api/v1/printers ({api_samples} samples, answer median {} ms, max {} ms; every printer got a light command every {light_round:?}): printers with a report age {}/{n}; max report age per printer: median {} s, worst {} s; printers ever above {} s: {}; offline sightings: {}; samples without a report age: {missing_age}",
        api_ms.get(api_ms.len() / 2).copied().unwrap_or(0),
        api_ms.last().copied().unwrap_or(0),
        max_age.len(),
        ages.get(ages.len() / 2).copied().unwrap_or(0),
        ages.last().copied().unwrap_or(0),
        stale_limit,
        stale.len(),
        offline.values().sum::<usize>()
    );
    println!(
        "MQTT (one printgate/# subscriber): state seen for {states}/{n} printers, availability online {online_mqtt}/{n}{}",
        closed
            .map(|e| format!(", subscriber DISCONNECTED: {e}"))
            .unwrap_or_default()
    );
    println!(
        "state change end to end (plate_clear over MQTT → new state on MQTT): {}/{n} printers, latency median {} ms, max {} ms",
        latencies.len(),
        latencies.get(latencies.len() / 2).copied().unwrap_or(0),
        latencies.last().copied().unwrap_or(0)
    );
    println!("  load average after: {}", load_average());
    stop.cancel();
    let _ = watcher.try_disconnect();
    let _ = ctl.try_disconnect();
    Ok(())
}

fn main() -> Res<()> {
    let secs = env_u64("PRINTGATE_BENCH_SECS", 20).max(2);
    let every = env_u64("PRINTGATE_BENCH_INTERVAL_SECS", 2).clamp(1, secs);
    let which = std::env::var("PRINTGATE_LOAD").unwrap_or_else(|_| "all".into());
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("printgate");
    std::fs::copy(BIN, &bin).map_err(|e| format!("cannot copy {BIN}: {e}"))?;
    println!(
        "printgate broker load bench: {BIN}; work dir {} (deleted at exit); {} CPUs; load average {}",
        dir.path().display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load_average()
    );
    let h = Hashes {
        watch: hash_password(&bin, WATCH_PW)?,
        ctl: hash_password(&bin, CTL_PW)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if which == "all" || which == "clients" {
            scenario_clients(&bin, dir.path(), &h, secs, every).await?;
        }
        if which == "all" || which == "printers" {
            scenario_printers(&bin, dir.path(), &h, secs, every).await?;
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
