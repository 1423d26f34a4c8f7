//! Broker figures from issue 7, on this machine, in one run:
//!
//! 1. printgate's embedded broker (front door + rumqttd, in this process via
//!    `printgate::start`), the same rumqttd reached directly on its internal port (no front
//!    door), and Mosquitto (`/usr/sbin/mosquitto`, own process) side by side:
//!    1→1 QoS 0 and QoS 1, 10→10 fan-out QoS 1 (throughput, publish → receive latency from a
//!    timestamp in the payload), 100 idle clients (connect time; Mosquitto's RSS).
//! 2. Whole-gateway memory: `printgate serve` in its own process with the embedded broker,
//!    `printgate sim --printers 10` in another, 50 MQTT clients subscribed to `printgate/#`,
//!    then 50 more idle clients (VmRSS / VmHWM from /proc).
//! 3. 100 simulated printers on one gateway: CPU, RSS, and whether every printer's state and
//!    availability arrive over MQTT.
//!
//! Run with `cargo bench --bench broker`. Knobs: `PRINTGATE_BENCH_MSGS` (1→1 message count,
//! default 20000), `PRINTGATE_BENCH_FAN_MSGS` (messages per fan-out publisher, default 1000),
//! `PRINTGATE_BENCH_SECS` (sampling period of parts 2 and 3, default 30),
//! `PRINTGATE_BENCH_BIG` (0 skips part 3). Everything listens on 127.0.0.1; children are
//! stopped when this program ends, also on a panic.

mod common;
use common::*;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_printgate");
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const PAYLOAD: usize = 200;
/// No single measurement runs longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// A subscriber that saw nothing for this long stops waiting (QoS 0 losses).
const QUIET_LIMIT: Duration = Duration::from_secs(3);

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// MQTT clients
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    creds: Option<(String, String)>,
}

fn options(t: &Target, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, t.addr.ip().to_string(), t.addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    o.set_clean_session(true);
    if let Some((u, p)) = &t.creds {
        o.set_credentials(u.clone(), p.clone());
    }
    o
}

async fn until<F: Fn(&Event) -> bool>(el: &mut EventLoop, what: &str, f: F) -> Res<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for _ in 0..10_000 {
        let ev = tokio::time::timeout_at(deadline, el.poll())
            .await
            .map_err(|_| format!("no {what} within 20 s"))?
            .map_err(|e| format!("while waiting for {what}: {e}"))?;
        if f(&ev) {
            return Ok(());
        }
    }
    Err(format!("no {what} in 10000 events").into())
}

async fn connect(t: &Target, id: &str) -> Res<(AsyncClient, EventLoop)> {
    // rumqttd refuses client ids with '/' (and drops the connection without a CONNACK).
    let id = id.replace('/', "-");
    let (c, mut el) = AsyncClient::new(options(t, &id), 1000);
    until(&mut el, "CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await?;
    Ok((c, el))
}

async fn subscriber(t: &Target, id: &str, filter: &str, qos: QoS) -> Res<(AsyncClient, EventLoop)> {
    let (c, mut el) = connect(t, id).await?;
    c.subscribe(filter, qos).await?;
    until(&mut el, "SUBACK", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await?;
    Ok((c, el))
}

/// Flow control shared by the publishers and subscribers of one run: a publisher waits while
/// more than `WINDOW` messages per subscriber are on their way, so the figures measure what a
/// broker sustains rather than how much of an unbounded burst it buffers or drops.
#[derive(Default)]
struct Window {
    sent: AtomicUsize,
    received: AtomicUsize,
    subs: usize,
    notify: tokio::sync::Notify,
}

const WINDOW: usize = 100;

impl Window {
    async fn wait_room(&self) {
        let end = tokio::time::Instant::now() + QUIET_LIMIT;
        for _ in 0..1_000_000 {
            let notified = self.notify.notified();
            let out = self.sent.load(Ordering::Acquire) * self.subs;
            if out <= self.received.load(Ordering::Acquire) + WINDOW * self.subs
                || tokio::time::Instant::now() >= end
            {
                return;
            }
            let _ = tokio::time::timeout_at(end, notified).await;
        }
    }
}

struct Received {
    lat_ns: Vec<u64>,
    last_rx_ns: u64,
}

/// Receive up to `expected` publishes (bounded by RUN_LIMIT and QUIET_LIMIT).
async fn receive(mut el: EventLoop, expected: usize, w: Arc<Window>) -> Received {
    let mut lat = Vec::with_capacity(expected);
    let mut last = 0;
    let end = tokio::time::Instant::now() + RUN_LIMIT;
    while lat.len() < expected && tokio::time::Instant::now() < end {
        match tokio::time::timeout(QUIET_LIMIT, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let now = now_ns();
                let sent = p
                    .payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(now);
                lat.push(now.saturating_sub(sent));
                last = now;
                w.received.fetch_add(1, Ordering::Release);
                w.notify.notify_waiters();
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Received {
        lat_ns: lat,
        last_rx_ns: last,
    }
}

/// Publish `n` messages on `topic`, then wait for the acks (QoS 1).
async fn publish(
    c: AsyncClient,
    mut el: EventLoop,
    topic: String,
    qos: QoS,
    n: usize,
    w: Arc<Window>,
) -> Res<()> {
    let acks_wanted = if qos == QoS::AtMostOnce { 0 } else { n };
    let poller = tokio::spawn(async move {
        let mut acks = 0;
        let mut sent = 0;
        let end = tokio::time::Instant::now() + RUN_LIMIT;
        while (acks < acks_wanted || sent < n) && tokio::time::Instant::now() < end {
            match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acks += 1,
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_)))) => sent += 1,
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        // Let the last QoS 0 bytes leave before the client goes away.
        let _ = tokio::time::timeout(Duration::from_millis(50), el.poll()).await;
        (acks, sent)
    });
    let mut payload = vec![b'x'; PAYLOAD];
    for _ in 0..n {
        w.wait_room().await;
        w.sent.fetch_add(1, Ordering::Release);
        payload[..8].copy_from_slice(&now_ns().to_be_bytes());
        c.publish(topic.clone(), qos, false, payload.clone())
            .await?;
    }
    let (acks, sent) = poller.await?;
    if sent < n || acks < acks_wanted {
        eprintln!("  publisher on {topic}: {sent}/{n} sent, {acks}/{acks_wanted} acked");
    }
    let _ = c.disconnect().await;
    Ok(())
}

#[derive(Clone, Default)]
struct Flow {
    published: usize,
    expected: usize,
    received: usize,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64 / 1e6
}

/// `pubs` publishers on topics `<base>/<i>`, `subs` subscribers on `<base>/+`.
async fn flow(
    t: &Target,
    base: &str,
    qos: QoS,
    pubs: usize,
    subs: usize,
    per_pub: usize,
) -> Res<Flow> {
    let expected = pubs * per_pub;
    let w = Arc::new(Window {
        subs,
        ..Default::default()
    });
    let mut rx = Vec::new();
    for s in 0..subs {
        let (c, el) = subscriber(t, &format!("bs{s}-{base}"), &format!("{base}/+"), qos).await?;
        rx.push((c, tokio::spawn(receive(el, expected, w.clone()))));
    }
    let mut clients = Vec::new();
    for p in 0..pubs {
        clients.push(connect(t, &format!("bp{p}-{base}")).await?);
    }
    let start = now_ns();
    let mut tx = Vec::new();
    for (p, (c, el)) in clients.into_iter().enumerate() {
        tx.push(tokio::spawn(publish(
            c,
            el,
            format!("{base}/{p}"),
            qos,
            per_pub,
            w.clone(),
        )));
    }
    for h in tx {
        h.await??;
    }
    let mut lat = Vec::new();
    let mut last = start;
    for (c, h) in rx {
        let r = h.await?;
        last = last.max(r.last_rx_ns);
        lat.extend(r.lat_ns);
        let _ = c.disconnect().await;
    }
    lat.sort_unstable();
    let secs = (last.saturating_sub(start)) as f64 / 1e9;
    Ok(Flow {
        published: expected,
        expected: expected * subs,
        received: lat.len(),
        msgs_per_s: if secs > 0.0 {
            lat.len() as f64 / secs
        } else {
            0.0
        },
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
    })
}

struct Idle {
    total: Duration,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    held: Vec<(AsyncClient, EventLoop)>,
}

/// Connect `n` clients one after another and keep them.
async fn idle_clients(t: &Target, prefix: &str, n: usize) -> Res<Idle> {
    let mut times = Vec::new();
    let mut held = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let s = Instant::now();
        held.push(connect(t, &format!("{prefix}-{i}")).await?);
        times.push(s.elapsed().as_nanos() as u64);
    }
    let total = t0.elapsed();
    times.sort_unstable();
    Ok(Idle {
        total,
        p50_ms: pct(&times, 0.5),
        p99_ms: pct(&times, 0.99),
        max_ms: times.last().copied().unwrap_or(0) as f64 / 1e6,
        held,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 1: brokers side by side
// ---------------------------------------------------------------------------------------------

fn start_mosquitto(dir: &Path) -> Res<(Guard, Target)> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             log_dest stderr\nmax_connections 500\nset_tcp_nodelay true\n"
        ),
    )?;
    let g = Guard::spawn(
        "mosquitto",
        Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Our own file: mosquitto running as root drops to its own user and could not
            // open a log file in the temp dir.
            .stderr(std::fs::File::create(dir.join("mosquitto.log"))?),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok((
                g,
                Target {
                    name: "mosquitto",
                    addr,
                    creds: None,
                },
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("mosquitto did not listen within 5 s".into())
}

fn bench_limits() -> printgate::broker::config::BrokerLimits {
    printgate::broker::config::BrokerLimits {
        max_connections: 256,
        // The default (50/s per client) would make a throughput test measure the limiter.
        publishes_per_sec: 1_000_000,
        // All bench clients connect at once from 127.0.0.1.
        max_unauthenticated: 256,
        max_unauthenticated_per_address: 256,
        ..Default::default()
    }
}

async fn start_printgate(data: &Path) -> Res<(printgate::RunningGateway, Target)> {
    let mut broker =
        printgate::broker::config::BrokerConfig::demo(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| e.to_string())?;
    broker.limits = bench_limits();
    let config = printgate::config::Config {
        data_dir: data.to_path_buf(),
        web: printgate::config::WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Default::default()
        },
        link: Default::default(),
        dispatch: Default::default(),
        printers: Vec::new(),
        safety: printgate::safety::SafetyConfig {
            gpio_backend: printgate::safety::config::GpioBackendChoice::Simulated,
            ..Default::default()
        },
        alerts: Default::default(),
        metrics: Default::default(),
        broker,
    };
    let running = printgate::start(config, tokio_util::sync::CancellationToken::new())
        .await
        .map_err(|e| e.to_string())?;
    let addr = running
        .broker
        .as_ref()
        .and_then(|b| b.mqtt_addr)
        .ok_or("printgate started without an MQTT listener")?;
    Ok((
        running,
        Target {
            name: "printgate",
            addr,
            creds: Some(("demo".into(), "demo".into())),
        },
    ))
}

struct Row {
    name: &'static str,
    qos0: Flow,
    qos1: Flow,
    fan: Flow,
    idle: Option<(Duration, f64, f64, f64)>,
    rss_idle: Option<(u64, u64)>,
}

async fn measure(t: &Target, run: &str, n: usize, fan_n: usize, rss_pid: Option<u32>) -> Res<Row> {
    println!("-- {} on {} --", t.name, t.addr);
    let qos0 = flow(t, &format!("bench/{run}/q0"), QoS::AtMostOnce, 1, 1, n).await?;
    show("1→1 QoS 0", &qos0);
    let qos1 = flow(t, &format!("bench/{run}/q1"), QoS::AtLeastOnce, 1, 1, n).await?;
    show("1→1 QoS 1", &qos1);
    let fan = flow(
        t,
        &format!("bench/{run}/fan"),
        QoS::AtLeastOnce,
        10,
        10,
        fan_n,
    )
    .await?;
    show("10→10 QoS 1", &fan);
    let before = match rss_pid {
        Some(p) => Some(mem(p)?.rss_kb),
        None => None,
    };
    let idle = idle_clients(t, &format!("idle-{run}"), 100).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = match rss_pid {
        Some(p) => Some(mem(p)?.rss_kb),
        None => None,
    };
    println!(
        "  100 idle clients: {:?} in total, per connect p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        idle.total, idle.p50_ms, idle.p99_ms, idle.max_ms
    );
    let rss_idle = before.zip(after);
    if let Some((b, a)) = rss_idle {
        println!("  broker RSS {} → {} with 100 idle clients", mb(b), mb(a));
    }
    let summary = (idle.total, idle.p50_ms, idle.p99_ms, idle.max_ms);
    for (c, _) in &idle.held {
        let _ = c.try_disconnect();
    }
    drop(idle);
    Ok(Row {
        name: t.name,
        qos0,
        qos1,
        fan,
        idle: Some(summary),
        rss_idle,
    })
}

fn show(label: &str, f: &Flow) {
    println!(
        "  {label}: {} published, {}/{} received, {:.0} msg/s, latency p50 {:.2} ms p99 {:.2} ms",
        f.published, f.received, f.expected, f.msgs_per_s, f.p50_ms, f.p99_ms
    );
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

async fn part1(dir: &Path) -> Res<()> {
    let n = env_u64("PRINTGATE_BENCH_MSGS", 20_000) as usize;
    let fan_n = env_u64("PRINTGATE_BENCH_FAN_MSGS", 1_000) as usize;
    println!(
        "== part 1: brokers side by side ({n} msgs 1→1, 10×{fan_n} fan-out, {PAYLOAD} B, at most {WINDOW} msgs per subscriber in flight) =="
    );
    let (mosq_guard, mosq) = start_mosquitto(dir)?;
    let (running, pg) = start_printgate(&dir.join("pg-data")).await?;
    let internal = printgate::broker::embedded::start(&bench_limits())
        .await
        .map_err(|e| e.to_string())?;
    let direct = Target {
        name: "rumqttd-direct",
        addr: internal.v4,
        creds: Some((internal.username.clone(), internal.password.clone())),
    };

    // Warm-up (connection paths, allocations) on each, not counted.
    for t in [&mosq, &pg, &direct] {
        flow(t, "bench/warm", QoS::AtLeastOnce, 1, 1, 500)
            .await
            .map_err(|e| format!("{} warm-up: {e}", t.name))?;
    }
    let rows = vec![
        measure(&mosq, "m", n, fan_n, Some(mosq_guard.pid())).await?,
        measure(&pg, "p", n, fan_n, None).await?,
        measure(&direct, "d", n, fan_n, None).await?,
    ];

    // printgate's front door at its default limit (50 publishes/s per client).
    println!();
    println!("== summary part 1 ==");
    println!(
        "{:<15} {:>12} {:>9} {:>12} {:>9} {:>14} {:>9} {:>12}",
        "broker", "q0 msg/s", "q0 p99", "q1 msg/s", "q1 p99", "fan deliv/s", "fan p99", "100conn"
    );
    for r in &rows {
        println!(
            "{:<15} {:>12.0} {:>7.2}ms {:>12.0} {:>7.2}ms {:>14.0} {:>7.2}ms {:>10.0}ms   (q0 {}/{}, q1 {}/{}, fan {}/{})",
            r.name,
            r.qos0.msgs_per_s,
            r.qos0.p99_ms,
            r.qos1.msgs_per_s,
            r.qos1.p99_ms,
            r.fan.msgs_per_s,
            r.fan.p99_ms,
            r.idle
                .map(|i| i.0.as_secs_f64() * 1000.0)
                .unwrap_or(f64::NAN),
            r.qos0.received,
            r.qos0.expected,
            r.qos1.received,
            r.qos1.expected,
            r.fan.received,
            r.fan.expected,
        );
    }
    if let [m, p, d] = rows.as_slice() {
        let line = |label: &str, a: &Row| {
            println!(
                "{label}: throughput q0 {} q1 {} fan {}; p99 latency (other/this, ≥1 = as fast) q0 {} q1 {} fan {}; 100-connect time (other/this) {}",
                ratio(a.qos0.msgs_per_s, m.qos0.msgs_per_s),
                ratio(a.qos1.msgs_per_s, m.qos1.msgs_per_s),
                ratio(a.fan.msgs_per_s, m.fan.msgs_per_s),
                ratio(m.qos0.p99_ms, a.qos0.p99_ms),
                ratio(m.qos1.p99_ms, a.qos1.p99_ms),
                ratio(m.fan.p99_ms, a.fan.p99_ms),
                ratio(
                    m.idle.map(|i| i.0.as_secs_f64()).unwrap_or(0.0),
                    a.idle.map(|i| i.0.as_secs_f64()).unwrap_or(0.0)
                ),
            )
        };
        line("printgate/mosquitto", p);
        line("rumqttd-direct/mosquitto", d);
        println!(
            "printgate/rumqttd-direct (front door share): throughput q0 {} q1 {} fan {}",
            ratio(p.qos0.msgs_per_s, d.qos0.msgs_per_s),
            ratio(p.qos1.msgs_per_s, d.qos1.msgs_per_s),
            ratio(p.fan.msgs_per_s, d.fan.msgs_per_s),
        );
        if let Some((b, a)) = m.rss_idle {
            println!(
                "mosquitto RSS: {} before, {} with 100 idle clients",
                mb(b),
                mb(a)
            );
        }
    }
    running.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parts 2 and 3: printgate serve in its own process
// ---------------------------------------------------------------------------------------------

struct Ports {
    web: u16,
    mqtt: u16,
    mqtts: u16,
}

fn write_config(
    path: &Path,
    data: &Path,
    ports: &Ports,
    hash: &str,
    printers: &[SimPrinter],
) -> Res<()> {
    let mut t = format!(
        "data_dir = {}\n\n[web]\nlisten = \"127.0.0.1:{}\"\n\n[broker]\nlisten = \"127.0.0.1:{}\"\n\
         tls_listen = \"127.0.0.1:{}\"\n\n[broker.limits]\nmax_connections = 200\n\n\
         [broker.mdns]\nenabled = false\n\n[broker.ssdp]\nenabled = false\n\n\
         [[broker.users]]\nname = \"bench\"\npassword_hash = {}\naccess = \"read\"\n",
        toml_str(&data.display().to_string()),
        ports.web,
        ports.mqtt,
        ports.mqtts,
        toml_str(hash)
    );
    for p in printers {
        t.push_str(&p.toml_block());
    }
    std::fs::write(path, t)?;
    Ok(())
}

struct Serve {
    guard: Guard,
    connected: Arc<AtomicUsize>,
    target: Target,
}

fn start_serve(
    bin: &Path,
    dir: &Path,
    tag: &str,
    printers: &[SimPrinter],
    hash: &str,
) -> Res<Serve> {
    let ports = Ports {
        web: free_port()?,
        mqtt: free_port()?,
        mqtts: free_port()?,
    };
    let config = dir.join(format!("printgate-{tag}.toml"));
    write_config(
        &config,
        &dir.join(format!("data-{tag}")),
        &ports,
        hash,
        printers,
    )?;
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
    let out = guard
        .child
        .stderr
        .take()
        .ok_or("serve stderr (its log) not captured")?;
    let connected = drain(out, dir.join(format!("serve-{tag}.log")), MARKER_CONNECTED);
    let addr = SocketAddr::from(([127, 0, 0, 1], ports.mqtt));
    let mut up = false;
    for _ in 0..2000 {
        if let Ok(Some(st)) = guard.child.try_wait() {
            return Err(format!("printgate serve exited during start-up: {st}").into());
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !up {
        return Err("printgate serve's MQTT listener did not open within 20 s".into());
    }
    Ok(Serve {
        guard,
        connected,
        target: Target {
            name: "printgate serve",
            addr,
            creds: Some(("bench".into(), "bench-pw".into())),
        },
    })
}

/// Messages seen on one topic, when the last arrived, and its payload.
type TopicSeen = (usize, Instant, Vec<u8>);

/// Per-topic message counts and last arrival, from clients subscribed to `printgate/#`.
#[derive(Default)]
struct Seen {
    msgs: AtomicUsize,
    per_topic: std::sync::Mutex<std::collections::HashMap<String, TopicSeen>>,
}

fn watch_all(
    mut el: EventLoop,
    seen: Arc<Seen>,
    record: bool,
    end: tokio::time::Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while tokio::time::Instant::now() < end {
            match tokio::time::timeout_at(end, el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    seen.msgs.fetch_add(1, Ordering::Relaxed);
                    if record && let Ok(mut m) = seen.per_topic.lock() {
                        let e = m
                            .entry(p.topic.clone())
                            .or_insert((0, Instant::now(), Vec::new()));
                        e.0 += 1;
                        e.1 = Instant::now();
                        e.2 = p.payload.to_vec();
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
    })
}

fn sample_line(label: &str, pid: u32) -> Res<Mem> {
    let m = mem(pid)?;
    println!(
        "  {label}: VmRSS {}, VmHWM {}, {} threads",
        mb(m.rss_kb),
        mb(m.hwm_kb),
        m.threads
    );
    Ok(m)
}

async fn part2(bin: &Path, dir: &Path, hash: &str, secs: u64) -> Res<()> {
    println!();
    println!(
        "== part 2: printgate serve + 10 simulated printers (other process) + 50 subscribers =="
    );
    let (_sim, printers) = start_sim(bin, 10, dir)?;
    let mut serve = start_serve(bin, dir, "10", &printers, hash)?;
    let pid = serve.guard.pid();
    let t = wait_connected(
        &mut serve.guard,
        &serve.connected,
        10,
        Duration::from_secs(90),
    )
    .await?;
    println!("  10 printers connected {t:?} after the MQTT listener opened");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = sample_line("printers only, no MQTT clients", pid)?;
    let seen = Arc::new(Seen::default());
    let end = tokio::time::Instant::now() + Duration::from_secs(secs + 120);
    let mut subs = Vec::new();
    let t0 = Instant::now();
    for i in 0..50 {
        let (c, el) = subscriber(
            &serve.target,
            &format!("sub{i}"),
            "printgate/#",
            QoS::AtMostOnce,
        )
        .await?;
        subs.push((c, watch_all(el, seen.clone(), false, end)));
    }
    println!(
        "  50 clients connected and subscribed in {:?}",
        t0.elapsed()
    );
    let cpu0 = cpu_ticks(pid)?;
    let m0 = seen.msgs.load(Ordering::Relaxed);
    let ts = Instant::now();
    let mut rss = Vec::new();
    for i in 1..=secs.div_ceil(5) {
        let mark = Duration::from_secs(i * 5);
        if let Some(w) = mark.checked_sub(ts.elapsed()) {
            tokio::time::sleep(w).await;
        }
        rss.push(sample_line(
            &format!("t={} s, 50 subscribers", ts.elapsed().as_secs()),
            pid,
        )?);
    }
    let cpu = (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks() as f64;
    let msgs = seen.msgs.load(Ordering::Relaxed) - m0;
    let el = ts.elapsed().as_secs_f64();
    let idle = idle_clients(&serve.target, "idle", 50).await?;
    println!(
        "  50 more idle clients: {:?} total, connect p50 {:.1} ms p99 {:.1} ms",
        idle.total, idle.p50_ms, idle.p99_ms
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with100 = sample_line("100 clients (50 subscribed, 50 idle)", pid)?;
    let max = rss.iter().map(|m| m.rss_kb).max().unwrap_or(0);
    let hwm = rss
        .iter()
        .map(|m| m.hwm_kb)
        .max()
        .unwrap_or(0)
        .max(with100.hwm_kb);
    println!();
    println!("== summary part 2 ==");
    println!(
        "serve RSS: {} with printers only; max {} with 50 subscribers over {el:.0} s; {} with 100 clients; VmHWM {} (target < 25 MB)",
        mb(base.rss_kb),
        mb(max),
        mb(with100.rss_kb),
        mb(hwm)
    );
    println!(
        "serve CPU with 50 subscribers: {:.2} s over {el:.0} s = {:.1} % of one core; {msgs} messages delivered to the 50 subscribers ({:.0}/s)",
        cpu,
        100.0 * cpu / el,
        msgs as f64 / el
    );
    drop(idle);
    for (c, h) in subs {
        let _ = c.try_disconnect();
        h.abort();
    }
    Ok(())
}

async fn part3(bin: &Path, dir: &Path, hash: &str, secs: u64) -> Res<()> {
    println!();
    println!("== part 3: 100 simulated printers (other process) on one gateway ==");
    let (sim, printers) = start_sim(bin, 100, dir)?;
    let mut serve = start_serve(bin, dir, "100", &printers, hash)?;
    let pid = serve.guard.pid();
    let t = wait_connected(
        &mut serve.guard,
        &serve.connected,
        100,
        Duration::from_secs(180),
    )
    .await?;
    println!("  100 printers connected {t:?} after the MQTT listener opened");
    let seen = Arc::new(Seen::default());
    let end = tokio::time::Instant::now() + Duration::from_secs(secs + 60);
    let (c, el) = subscriber(&serve.target, "watch", "printgate/#", QoS::AtMostOnce).await?;
    let h = watch_all(el, seen.clone(), true, end);
    let cpu0 = cpu_ticks(pid)?;
    let sim_cpu0 = cpu_ticks(sim.pid())?;
    let ts = Instant::now();
    let mut rss = Vec::new();
    for i in 1..=secs.div_ceil(5) {
        let mark = Duration::from_secs(i * 5);
        if let Some(w) = mark.checked_sub(ts.elapsed()) {
            tokio::time::sleep(w).await;
        }
        rss.push(sample_line(
            &format!("t={} s", ts.elapsed().as_secs()),
            pid,
        )?);
    }
    let el_s = ts.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks() as f64;
    let sim_cpu = (cpu_ticks(sim.pid())? - sim_cpu0) as f64 / clock_ticks() as f64;
    let window = Duration::from_secs(10);
    let (states, fresh, online, min_updates, status) = {
        let m = seen.per_topic.lock().map_err(|_| "poisoned")?;
        let state: Vec<_> = m
            .iter()
            .filter(|(k, _)| k.ends_with("/state") && k.matches('/').count() == 2)
            .collect();
        let fresh = state.iter().filter(|(_, v)| v.1.elapsed() < window).count();
        let min_updates = state.iter().map(|(_, v)| v.0).min().unwrap_or(0);
        let online = m
            .iter()
            .filter(|(k, v)| {
                k.ends_with("/availability") && k.matches('/').count() == 2 && v.2 == b"online"
            })
            .count();
        let status = m
            .get("printgate/status")
            .map(|v| String::from_utf8_lossy(&v.2).to_string())
            .unwrap_or_default();
        (state.len(), fresh, online, min_updates, status)
    };
    let max = rss.iter().map(|m| m.rss_kb).max().unwrap_or(0);
    let hwm = rss.iter().map(|m| m.hwm_kb).max().unwrap_or(0);
    println!();
    println!("== summary part 3 ==");
    println!(
        "serve with 100 printers over {el_s:.0} s: CPU {:.1} % of one core, RSS max {}, VmHWM {}; simulator process CPU {:.1} %",
        100.0 * cpu / el_s,
        mb(max),
        mb(hwm),
        100.0 * sim_cpu / el_s
    );
    println!(
        "MQTT: state topics seen for {states}/100 printers, {fresh} updated in the last {window:?}, fewest updates per printer {min_updates}; availability online {online}/100; {} messages in total",
        seen.msgs.load(Ordering::Relaxed)
    );
    println!("printgate/status: {status}");
    let _ = c.try_disconnect();
    h.abort();
    Ok(())
}

fn main() -> Res<()> {
    EPOCH.get_or_init(Instant::now);
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let secs = env_u64("PRINTGATE_BENCH_SECS", 30).max(5);
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("printgate");
    std::fs::copy(BIN, &bin).map_err(|e| format!("cannot copy {BIN}: {e}"))?;
    println!(
        "printgate broker bench: {BIN}; work dir {}",
        dir.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if env_u64("PRINTGATE_BENCH_PART1", 1) != 0 {
            part1(dir.path()).await?;
        }
        let hash = hash_password(&bin, "bench-pw")?;
        if env_u64("PRINTGATE_BENCH_PART2", 1) != 0 {
            part2(&bin, dir.path(), &hash, secs).await?;
        }
        if env_u64("PRINTGATE_BENCH_BIG", 1) != 0 {
            part3(&bin, dir.path(), &hash, secs).await?;
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    // rumqttd has no shutdown; its threads end with the process.
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
