//! Virtual printers under load (issue 19), measured on the real release binary:
//!
//! - report mirror latency: a simulated printer publishes a status report → each of the clients
//!   of its virtual printer has received it, p50/p99/max over every delivery, with the number of
//!   reports a client never got;
//! - the same figure for the reference: the same number of clients subscribed to the simulated
//!   printers directly (what the tools would do without printgate), in the same run;
//! - gateway CPU (utime + stime over the measured period) and RSS of `printgate serve` with the
//!   clients on its virtual printers, next to the same gateway with the same printers and no
//!   virtual printers.
//!
//! The simulated printers (P1S, printing at 60x, so they push a delta every second) run in this
//! process, so a report's publish time is read where it is published; `printgate serve` runs in
//! its own process, so its CPU and memory are its own. The clients verify nothing about the
//! TLS certificates (the handshake is before the measured period; tests/virtual_printers.rs
//! checks the certificates). Every figure is printed; nothing is asserted.
//!
//! Run with `cargo bench --bench virtual_printers`. Environment knobs: `PRINTGATE_BENCH_SECS`
//! (measured period of each phase, default 60), `PRINTGATE_BENCH_VIRTUAL_PRINTERS` (default 4,
//! at most 16), `PRINTGATE_BENCH_CLIENTS` (clients per printer, default 10, at most 50).
//! Everything listens on 127.0.0.1; every child is stopped when this program ends.

mod common;
use common::*;

use printgate::config::Model;
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::sim::{SimConfig, SimPrinter};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_printgate");
/// The log line `serve` writes when a virtual printer listens.
const MARKER_VIRTUAL: &str = "virtual printer listening";
/// How long start-up (links up, virtual printers listening, clients subscribed) may take.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Where one printer's clients connect, and as whom.
#[derive(Debug, Clone)]
struct Target {
    /// The serial in the reports the clients receive.
    serial: String,
    host: String,
    port: u16,
    access_code: String,
}

/// A report as published, by printer and the bytes a client receives (serial already
/// rewritten): when it was published.
type Published = HashMap<(usize, Vec<u8>), Instant>;
/// A report a client received: printer, bytes, when.
type Received = (usize, Vec<u8>, Instant);

/// What one phase measured.
#[derive(Default)]
struct Deliveries {
    latencies: Vec<Duration>,
    published: usize,
    missed: usize,
}

impl Deliveries {
    fn describe(&mut self) -> String {
        self.latencies.sort();
        let n = self.latencies.len();
        if n == 0 {
            return format!("no deliveries ({} reports published)", self.published);
        }
        let pct = |q: f64| self.latencies[((n - 1) as f64 * q) as usize];
        format!(
            "{n} deliveries of {} reports: p50 {}, p99 {}, max {}; {} deliveries missed",
            self.published,
            us(pct(0.5)),
            us(pct(0.99)),
            us(pct(1.0)),
            self.missed
        )
    }
}

fn us(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// TLS that accepts any certificate: see the module comment.
fn any_certificate() -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Any(provider)))
            .with_no_client_auth(),
    )
}

/// Connect and subscribe `clients` clients to `target`; each received report goes to `tx` with
/// its arrival time. Returns once every client has its SUBACK.
async fn subscribe_clients(
    printer: usize,
    target: &Target,
    clients: usize,
    tag: &str,
    tx: &mpsc::UnboundedSender<Received>,
) -> Res<Vec<AsyncClient>> {
    let tls = any_certificate();
    let topic = format!("device/{}/report", target.serial);
    let mut out = Vec::new();
    for i in 0..clients {
        let mut o = MqttOptions::new(
            format!("{tag}-{}-{i}", target.serial),
            target.host.clone(),
            target.port,
        );
        o.set_credentials("bblp", target.access_code.clone());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
        let (client, mut events) = AsyncClient::new(o, 64);
        client.subscribe(&topic, QoS::AtMostOnce).await?;
        let subscribed = tokio::time::timeout(START_LIMIT, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match subscribed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("{tag} client {i} of {}: {e}", target.serial).into()),
            Err(_) => {
                return Err(format!("{tag} client {i} of {}: no SUBACK", target.serial).into());
            }
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev
                    && tx
                        .send((printer, p.payload.to_vec(), Instant::now()))
                        .is_err()
                {
                    break;
                }
            }
        });
        out.push(client);
    }
    Ok(out)
}

fn is_status_push(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .is_ok_and(|v| v["print"]["command"] == "push_status")
}

/// Record, for `period`, every status report the printers publish (rewritten to what the
/// clients see) and every report the clients receive; then match them up.
async fn measure(
    sims: &[SimPrinter],
    targets: &[Target],
    clients_per_printer: usize,
    rx: &mut mpsc::UnboundedReceiver<Received>,
    period: Duration,
) -> Deliveries {
    // Drop what arrived before the measured period.
    while rx.try_recv().is_ok() {}
    let (pub_tx, mut pub_rx) = mpsc::unbounded_channel::<Received>();
    let mut watchers = Vec::new();
    for (i, (sim, target)) in sims.iter().zip(targets).enumerate() {
        let mut feed = sim.subscribe_reports();
        let real = sim.serial().to_string();
        let seen_as = target.serial.clone();
        let tx = pub_tx.clone();
        watchers.push(tokio::spawn(async move {
            while let Ok(payload) = feed.recv().await {
                let at = Instant::now();
                if is_status_push(&payload) {
                    let text = String::from_utf8_lossy(&payload).replace(&real, &seen_as);
                    let _ = tx.send((i, text.into_bytes(), at));
                }
            }
        }));
    }
    drop(pub_tx);
    let mut published: Published = HashMap::new();
    let mut received: Vec<Received> = Vec::new();
    let end = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            Some((i, p, at)) = pub_rx.recv() => { published.entry((i, p)).or_insert(at); }
            Some(r) = rx.recv() => received.push(r),
        }
    }
    for w in &watchers {
        w.abort();
    }
    // Deliveries of the last reports may still be on their way: wait (bounded) for them.
    let grace = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(r)) = tokio::time::timeout_at(grace, rx.recv()).await {
        received.push(r);
    }
    let mut d = Deliveries {
        published: published.len(),
        ..Default::default()
    };
    let mut got: HashMap<(usize, Vec<u8>), usize> = HashMap::new();
    for (i, payload, at) in received {
        let key = (i, payload);
        if let Some(t0) = published.get(&key) {
            d.latencies.push(at.saturating_duration_since(*t0));
            *got.entry(key).or_default() += 1;
        }
    }
    for key in published.keys() {
        let n = got.get(key).copied().unwrap_or(0);
        d.missed += clients_per_printer.saturating_sub(n);
    }
    d
}

fn write_config(
    path: &Path,
    data_dir: &Path,
    web_port: u16,
    sims: &[SimPrinter],
    virtual_ports: Option<&[(u16, u16)]>,
) -> Res<()> {
    // Where the virtual printers' SSDP announcements go: a loopback port nobody reads.
    let announce = free_port()?;
    let mut t = format!(
        "data_dir = {}\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n\n[broker]\nmode = \"off\"\n",
        toml_str(&data_dir.display().to_string())
    );
    for (i, s) in sims.iter().enumerate() {
        t.push_str(&format!(
            "\n[[printers]]\nname = \"bench {i}\"\nmodel = \"P1S\"\nserial = {}\nhost = {}\n\
             access_code = {}\ntls = \"pin\"\nmqtt_port = {}\nftps_port = {}\n",
            toml_str(s.serial()),
            toml_str(&s.host()),
            toml_str(&s.access_code()),
            s.mqtt_port(),
            s.ftps_port()
        ));
        if let Some(ports) = virtual_ports {
            let (mqtt, ftps) = ports[i];
            t.push_str(&format!(
                "\n[printers.virtual_printer]\nenabled = true\nlisten = \"127.0.0.1:{mqtt}\"\n\
                 ftps_listen = \"127.0.0.1:{ftps}\"\n\
                 # Loopback only: no announcement may leave this machine.\n\
                 announce_to = \"127.0.0.1:{announce}\"\nssdp_port = 0\ndetect_port = 0\n\
                 detect_tls_port = 0\n"
            ));
        }
    }
    std::fs::write(path, t)?;
    Ok(())
}

struct Serve {
    guard: Guard,
    connected: Arc<std::sync::atomic::AtomicUsize>,
    listening: Arc<std::sync::atomic::AtomicUsize>,
}

fn start_serve(bin: &Path, config: &Path, log: PathBuf) -> Res<Serve> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn("printgate serve", &mut cmd)?;
    let err = guard.child.stderr.take().ok_or("serve log not captured")?;
    // Two markers from one log: copy it once, count both.
    let (a, b) = split_log(err, log);
    let connected = drain(a, PathBuf::from("/dev/null"), MARKER_CONNECTED);
    let listening = drain(b, PathBuf::from("/dev/null"), MARKER_VIRTUAL);
    Ok(Serve {
        guard,
        connected,
        listening,
    })
}

/// Copy a child's log into `log` and into two pipes (one per marker counter).
fn split_log(
    out: impl std::io::Read + Send + 'static,
    log: PathBuf,
) -> (std::io::PipeReader, std::io::PipeReader) {
    use std::io::{BufRead, Write};
    let (ra, mut wa) = std::io::pipe().expect("pipe");
    let (rb, mut wb) = std::io::pipe().expect("pipe");
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(log).ok();
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            let _ = writeln!(wa, "{line}");
            let _ = writeln!(wb, "{line}");
        }
    });
    (ra, rb)
}

/// CPU (ms of utime + stime) and RSS (peak over samples) of `pid` over `period`.
async fn sample_process(pid: u32, period: Duration) -> Res<(f64, Mem)> {
    let t0 = cpu_ticks(pid)?;
    let mut peak = mem(pid)?;
    let end = Instant::now() + period;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        let m = mem(pid)?;
        if m.rss_kb > peak.rss_kb {
            peak = m;
        }
    }
    let ticks = cpu_ticks(pid)? - t0;
    Ok((ticks as f64 * 1000.0 / clock_ticks() as f64, peak))
}

/// Wait until `counter` reaches `n` or the child exits.
async fn wait_for(
    serve: &mut Serve,
    counter: &std::sync::atomic::AtomicUsize,
    n: usize,
    what: &str,
) -> Res<()> {
    wait_connected(&mut serve.guard, counter, n, START_LIMIT)
        .await
        .map(|_| ())
        .map_err(|e| format!("{what}: {e}").into())
}

fn identities(data_dir: &Path) -> Res<HashMap<String, (String, String)>> {
    let text = std::fs::read_to_string(data_dir.join("virtual-printers/identities.json"))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = HashMap::new();
    for (name, c) in v.as_object().ok_or("identities.json is not an object")? {
        out.insert(
            name.clone(),
            (
                c["serial"].as_str().unwrap_or_default().to_string(),
                c["access_code"].as_str().unwrap_or_default().to_string(),
            ),
        );
    }
    Ok(out)
}

async fn start_printing(sims: &[SimPrinter]) -> Res<()> {
    for (i, sim) in sims.iter().enumerate() {
        let file = format!("bench_{i}.gcode.3mf");
        let bytes = build_3mf(&Fixture3mf {
            prediction_secs: 360_000,
            layers: 2000,
            ..Fixture3mf::for_model(Model::P1S)
        });
        sim.storage()
            .put(&file, bytes)
            .map_err(|e| format!("cannot store {file} on the simulator: {e:?}"))?;
        sim.start_from_screen(&file, &format!("bench_{i}"));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_u64("PRINTGATE_BENCH_SECS", 60).max(5);
    let n = env_u64("PRINTGATE_BENCH_VIRTUAL_PRINTERS", 4).clamp(1, 16) as usize;
    let clients = env_u64("PRINTGATE_BENCH_CLIENTS", 10).clamp(1, 50) as usize;
    let period = Duration::from_secs(secs);
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("printgate");
    std::fs::copy(BIN, &bin).map_err(|e| format!("cannot copy {BIN}: {e}"))?;
    println!("printgate bench virtual_printers: {BIN}");
    println!(
        "{n} simulated P1S printing, {clients} clients per printer, {secs} s per phase; load {}",
        load_average()
    );

    let mut sims = Vec::new();
    for i in 0..n {
        let mut cfg = SimConfig::new(Model::P1S);
        cfg.name = format!("bench {i}");
        cfg.ssdp_target = None;
        // A minute of printing per second: temperatures, progress and layers change in every
        // push, so every push is a report the clients must get.
        cfg.time_scale = 60.0;
        // One session for printgate plus the reference's clients.
        cfg.max_clients = Some(clients + 1);
        sims.push(SimPrinter::start(cfg).await?);
    }
    start_printing(&sims).await?;

    // Reference: the clients on the printers themselves.
    let direct: Vec<Target> = sims
        .iter()
        .map(|s| Target {
            serial: s.serial().to_string(),
            host: s.host(),
            port: s.mqtt_port(),
            access_code: s.access_code(),
        })
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    for (i, t) in direct.iter().enumerate() {
        held.extend(subscribe_clients(i, t, clients, "direct", &tx).await?);
    }
    let mut reference = measure(&sims, &direct, clients, &mut rx, period).await;
    for c in held.drain(..) {
        let _ = c.disconnect().await;
    }
    println!(
        "reference, clients on the printers: {}",
        reference.describe()
    );

    // The gateway without virtual printers.
    let data_plain = dir.path().join("data-plain");
    let config_plain = dir.path().join("plain.toml");
    write_config(&config_plain, &data_plain, free_port()?, &sims, None)?;
    let mut plain = start_serve(&bin, &config_plain, dir.path().join("serve-plain.log"))?;
    let c = plain.connected.clone();
    wait_for(&mut plain, &c, n, "gateway without virtual printers").await?;
    let (cpu_plain, mem_plain) = sample_process(plain.guard.pid(), period).await?;
    plain.guard.stop();

    // The gateway with a virtual printer per printer and the clients on them.
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((free_port()?, free_port()?));
    }
    let data_vp = dir.path().join("data-virtual");
    let config_vp = dir.path().join("virtual.toml");
    write_config(&config_vp, &data_vp, free_port()?, &sims, Some(&ports))?;
    let mut serve = start_serve(&bin, &config_vp, dir.path().join("serve-virtual.log"))?;
    let (c, l) = (serve.connected.clone(), serve.listening.clone());
    wait_for(&mut serve, &c, n, "gateway links").await?;
    wait_for(&mut serve, &l, n, "virtual printers").await?;
    let ids = identities(&data_vp)?;
    let mut targets = Vec::new();
    for (i, (mqtt, _)) in ports.iter().enumerate() {
        let (serial, code) = ids
            .get(&format!("bench {i}"))
            .ok_or(format!("no identity for bench {i}"))?
            .clone();
        targets.push(Target {
            serial,
            host: "127.0.0.1".into(),
            port: *mqtt,
            access_code: code,
        });
    }
    for (i, t) in targets.iter().enumerate() {
        held.extend(subscribe_clients(i, t, clients, "virtual", &tx).await?);
    }
    let pid = serve.guard.pid();
    let sampler = tokio::spawn(async move { sample_process(pid, period).await.ok() });
    let mut mirrored = measure(&sims, &targets, clients, &mut rx, period).await;
    let (cpu_vp, mem_vp) = sampler.await?.ok_or("could not sample printgate serve")?;
    for c in held.drain(..) {
        let _ = c.disconnect().await;
    }
    serve.guard.stop();
    println!(
        "virtual printers, clients on printgate: {}",
        mirrored.describe()
    );
    let cpu_pct = |ms: f64| ms / (secs as f64 * 10.0);
    println!(
        "gateway without virtual printers: CPU {:.0} ms in {secs} s ({:.2} % of a core), RSS {} (threads {})",
        cpu_plain,
        cpu_pct(cpu_plain),
        mb(mem_plain.rss_kb),
        mem_plain.threads
    );
    println!(
        "gateway with {n} virtual printers x {clients} clients: CPU {:.0} ms in {secs} s ({:.2} % of a core), RSS {} (threads {})",
        cpu_vp,
        cpu_pct(cpu_vp),
        mb(mem_vp.rss_kb),
        mem_vp.threads
    );
    println!(
        "ratios (virtual / without): CPU {:.2}, RSS {:.2}",
        cpu_vp / cpu_plain.max(1.0),
        mem_vp.rss_kb as f64 / mem_plain.rss_kb.max(1) as f64
    );
    for s in sims {
        s.shutdown().await;
    }
    Ok(())
}
