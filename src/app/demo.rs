//! `printgate demo`: three simulated Bambu printers (P1S, X1C, A1 mini), one simulated Klipper
//! printer (Moonraker connecting to the gateway's broker with a login the gateway issued) and
//! the real gateway in one process, with a temporary data directory unless one is given.
//! Everything listens on the address the user chose for the web page (loopback by default);
//! the simulators and each Bambu printer's virtual printer on 127.0.0.1.

use crate::config::{Config, DispatchConfig, LinkConfig, Model, PrinterConfig, TlsMode, WebConfig};
use crate::sim::fixtures::{Fixture3mf, build_3mf};
use crate::sim::{SimConfig, SimPrinter};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The printers of the demo, in the order shown, with the job each one is printing when the
/// demo starts (name, predicted seconds).
pub const DEMO_PRINTERS: [(&str, Model, &str, u64); 3] = [
    ("Garage P1S", Model::P1S, "shelf_bracket_v3", 1800),
    ("Office X1C", Model::X1C, "cable_clip_x12", 3600),
    ("Desk A1 mini", Model::A1Mini, "phone_stand", 2400),
];

/// The demo's Klipper printer: name and Moonraker instance name.
pub const DEMO_KLIPPER: (&str, &str) = ("Workbench Voron", "voron");

/// The demo's simulated smoke input (active low, pull-up) and relay pins, one per printer
/// (the Klipper printer's last).
pub const DEMO_SMOKE_PIN: u8 = 17;
pub const DEMO_RELAY_PINS: [u8; 4] = [5, 6, 13, 19];

/// Put a sliced file on each simulated printer and start it from the printer's "screen", the
/// way a person at the printer would, so the demo shows prints in progress from the first
/// second. The gateway only observes these prints (and marks the plates occupied).
pub fn start_local_prints(sims: &[SimPrinter]) -> anyhow::Result<()> {
    for (sim, (_, model, job, secs)) in sims.iter().zip(DEMO_PRINTERS) {
        let file = format!("{job}.gcode.3mf");
        let bytes = build_3mf(&Fixture3mf {
            prediction_secs: secs,
            layers: 120,
            ..Fixture3mf::for_model(model)
        });
        sim.storage()
            .put(&file, bytes)
            .map_err(|e| anyhow::anyhow!("simulated storage refused the demo file: {e:?}"))?;
        sim.start_from_screen(&file, job);
    }
    Ok(())
}

/// Start the simulators and return them with a gateway config pointing at them.
pub async fn start_simulators(
    data_dir: PathBuf,
    listen: SocketAddr,
    time_scale: f64,
) -> anyhow::Result<(Vec<SimPrinter>, Config)> {
    let mut sims = Vec::new();
    let mut printers = Vec::new();
    for (name, model, _, _) in DEMO_PRINTERS {
        let sim = SimPrinter::start(SimConfig {
            name: name.to_string(),
            time_scale,
            report_interval: Duration::from_secs(1),
            ..SimConfig::new(model)
        })
        .await?;
        // Loaded AMS trays: the simulator's white, black and red PLA and blue PETG, with the
        // Bambu green PLA the demo files are sliced for in slot 3 (their starts map to it).
        sim.load_tray(
            2,
            Some(crate::sim::SimSpool::new(
                "GFA00",
                "PLA",
                "PLA Basic",
                "00AE42FF",
                90,
            )),
        );
        printers.push(PrinterConfig {
            name: name.to_string(),
            model,
            serial: sim.serial().to_string(),
            host: sim.host().to_string(),
            access_code: sim.access_code().to_string(),
            tls: TlsMode::Pin,
            mqtt_port: sim.mqtt_port(),
            ftps_port: sim.ftps_port(),
            camera_port: sim
                .camera_port()
                .unwrap_or(crate::sim::camera::STANDARD_CAMERA_PORT),
            // Each Bambu printer is also served as a virtual printer, on loopback only.
            virtual_printer: crate::virtual_printer::config::VirtualPrinterConfig::on(
                SocketAddr::from(([127, 0, 0, 1], 0)),
            ),
            ..PrinterConfig::default()
        });
        sims.push(sim);
    }
    // Moonraker's HTTP API port must be in the config before the gateway starts; the
    // simulated Moonraker binds it once the broker it connects to is up.
    let klipper_http = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    printers.push(PrinterConfig {
        name: DEMO_KLIPPER.0.to_string(),
        kind: crate::config::PrinterKind::Moonraker,
        model: Model::Klipper,
        host: "127.0.0.1".into(),
        instance_name: DEMO_KLIPPER.1.to_string(),
        http_port: klipper_http,
        ..PrinterConfig::default()
    });
    let config = Config {
        data_dir,
        web: WebConfig {
            listen,
            ..WebConfig::default()
        },
        link: LinkConfig::default(),
        dispatch: DispatchConfig::default(),
        printers,
        // Never the Pi's pins in the demo, even when run on a Pi: a simulated smoke input on
        // GPIO 17 (`printgate gpio set 17 low` asserts it) and one relay per printer.
        safety: crate::safety::SafetyConfig {
            gpio_backend: crate::safety::config::GpioBackendChoice::Simulated,
            smoke: Some(crate::safety::config::InputPinConfig {
                pin: DEMO_SMOKE_PIN,
                pull: Default::default(),
                active_level: Default::default(),
                debounce_ms: 50,
            }),
            relays: DEMO_PRINTERS
                .iter()
                .map(|(name, ..)| *name)
                .chain([DEMO_KLIPPER.0])
                .zip(DEMO_RELAY_PINS)
                .map(|(name, pin)| crate::safety::config::RelayConfig {
                    printer: name.to_string(),
                    pin,
                    active_low: true,
                    on_at_boot: true,
                })
                .collect(),
            relay_fail_safe: crate::safety::config::RelayFailSafe::PowerOffWhenGatewayDown,
            ..Default::default()
        },
        alerts: Default::default(),
        metrics: Default::default(),
        // Embedded broker on loopback with user demo/demo; no TLS, mDNS or SSDP socket.
        broker: crate::broker::config::BrokerConfig::demo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            1883,
        )))?,
    };
    Ok((sims, config))
}

/// Queue one job per printer so the demo shows the gate: each waits until its printer's current
/// print is done and someone taps Plate clear.
pub async fn queue_demo_jobs(gw: &crate::app::Gateway) -> anyhow::Result<()> {
    for (name, model, _, _) in DEMO_PRINTERS {
        let job_name = format!("next_on_{}", model.config_name().to_ascii_lowercase());
        let bytes = build_3mf(&Fixture3mf {
            prediction_secs: 1500,
            layers: 80,
            ..Fixture3mf::for_model(model)
        });
        queue_demo_file(gw, name, model, &format!("{job_name}.gcode.3mf"), bytes).await?;
    }
    Ok(())
}

/// Store `bytes` and queue them as a job for printer `name` (once per data directory).
async fn queue_demo_file(
    gw: &crate::app::Gateway,
    name: &str,
    model: Model,
    file_name: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    use crate::jobs::dispatcher::Event;
    use crate::jobs::model::{NewJob, Target};
    let stored = gw
        .files
        .ingest(file_name, std::io::Cursor::new(bytes))
        .await?;
    let sha = stored.sha256.clone();
    let job_name = stored
        .display_name
        .trim_end_matches(".gcode.3mf")
        .trim_end_matches(".gcode")
        .to_string();
    // The filaments the plate needs, recorded as an upload records them: the demo's starts
    // carry a tray mapping like any other.
    let filaments = crate::web::job_filaments::recorded(&stored, 1);
    let (job, created) = gw.store.create_job_with_filaments(
        &NewJob {
            idempotency_key: format!("demo-{name}"),
            target: Target::Printer(name.to_string()),
            model_code: model.model_code().to_string(),
            file_sha256: stored.sha256,
            plate: 1,
            name: job_name,
            deadline: None,
            created_by: "demo".into(),
        },
        filaments.as_deref(),
        gw.dispatcher.now(),
    )?;
    if created {
        gw.dispatcher
            .submit(Event::JobQueued(Box::new(job)))
            .await?;
    } else {
        // Already queued by an earlier run on this data directory.
        gw.files.release(&sha).await?;
    }
    Ok(())
}

/// Run the demo until `shutdown` is cancelled.
pub async fn run(
    listen: SocketAddr,
    mqtt_listen: SocketAddr,
    data_dir: Option<PathBuf>,
    time_scale: f64,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (_tmp, data_dir) = match data_dir {
        Some(d) => (None, d),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("printgate-demo-")
                .tempdir()?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    if !listen.ip().is_loopback() {
        tracing::warn!("demo listening on {listen}, which is not a loopback address");
    }
    let (sims, mut config) = start_simulators(data_dir.clone(), listen, time_scale).await?;
    config.broker.listen = mqtt_listen;
    start_local_prints(&sims)?;
    // The demo account exists before the gateway starts, so no setup code is needed.
    std::fs::create_dir_all(&data_dir)?;
    crate::web::auth::ensure_demo_account(&crate::store::Store::open(
        &data_dir.join(crate::store::DATABASE_FILE),
    )?)?;
    let klipper_http = config
        .printers
        .iter()
        .find(|p| p.name == DEMO_KLIPPER.0)
        .map(|p| p.http_port)
        .unwrap_or_default();
    let running = crate::app::start(config, shutdown.clone()).await?;
    queue_demo_jobs(&running.gateway).await?;
    let moonraker = start_demo_moonraker(&running, klipper_http, time_scale).await?;
    println!(
        "printgate demo: open http://{} (data in {})",
        running.web_addr,
        data_dir.display()
    );
    println!(
        "  simulated GPIO: smoke input on {DEMO_SMOKE_PIN} (try `printgate gpio set {DEMO_SMOKE_PIN} low --url http://{} --token {}`), relays on {DEMO_RELAY_PINS:?}",
        running.web_addr,
        crate::web::auth::DEMO_API_TOKEN
    );
    if let Some(mqtt) = running.broker.as_ref().and_then(|b| b.mqtt_addr) {
        println!("  MQTT broker on {mqtt} (user demo, password demo); topics under printgate/#");
    }
    for sim in &sims {
        println!(
            "  simulated {:<8} serial {} on {}:{} (access code {})",
            sim.model().display_name(),
            sim.serial(),
            sim.host(),
            sim.mqtt_port(),
            sim.access_code()
        );
    }
    let port = |p: Option<u16>| p.map_or("-".to_string(), |p| p.to_string());
    for vp in running.gateway.virtual_printers.get().into_iter().flatten() {
        println!(
            "  virtual printer of {} on {}:{} serial {} access code {} (MQTT over TLS, user bblp; FTPS uploads on port {}; slicers' detect on ports {}/{} TLS; announced to loopback only; a print sent to it waits for Plate clear)",
            vp.printer,
            vp.host,
            vp.mqtt_port,
            vp.serial,
            vp.access_code,
            port(vp.ftps_port),
            port(vp.detect_port),
            port(vp.detect_tls_port),
        );
    }
    println!(
        "  simulated Klipper  instance {} on {} (Moonraker logs in to the broker as {})",
        moonraker.instance_name(),
        moonraker.http_url(),
        crate::store::printer_credentials::username_for(DEMO_KLIPPER.1)
    );
    running.wait().await;
    moonraker.shutdown().await;
    for sim in sims {
        sim.shutdown().await;
    }
    Ok(())
}

/// Issue the Klipper printer's MQTT login (as a person would on its page), start the simulated
/// Moonraker with it against the gateway's broker, print something "from its screen" and queue
/// a G-code job behind the plate gate.
async fn start_demo_moonraker(
    running: &crate::app::RunningGateway,
    http_port: u16,
    time_scale: f64,
) -> anyhow::Result<crate::sim::moonraker::SimMoonraker> {
    use crate::sim::moonraker::{MoonrakerSimConfig, SimMoonraker};
    let gw = &running.gateway;
    let broker = running
        .broker
        .as_ref()
        .and_then(|b| b.mqtt_addr)
        .ok_or_else(|| anyhow::anyhow!("the demo's broker is not listening"))?;
    let (cred, password) = gw.store.issue_printer_credential(
        DEMO_KLIPPER.0,
        DEMO_KLIPPER.1,
        chrono::Utc::now().timestamp_millis(),
    )?;
    let mut cfg = MoonrakerSimConfig::new(DEMO_KLIPPER.1, broker);
    cfg.username = Some(cred.username);
    cfg.password = Some(password);
    cfg.http_listen = SocketAddr::from(([127, 0, 0, 1], http_port));
    cfg.time_scale = time_scale;
    let sim = SimMoonraker::start(cfg).await?;
    let screen_job = "voron_cube.gcode";
    sim.put_file(screen_job, demo_gcode(2000));
    sim.start_from_screen(screen_job)?;
    queue_demo_file(
        gw,
        DEMO_KLIPPER.0,
        Model::Klipper,
        "bracket_voron.gcode",
        demo_gcode(1500),
    )
    .await?;
    Ok(sim)
}

/// A small but real G-code file with the slicer comments Klipper front ends read.
pub fn demo_gcode(print_secs: u32) -> Vec<u8> {
    let mut g = format!(
        "; generated by PrusaSlicer 2.8.1\n; estimated printing time (normal mode) = {}m {}s\nG28\nG90\nM104 S215\nM140 S60\n",
        print_secs / 60,
        print_secs % 60
    );
    for layer in 1..=40 {
        g.push_str(&format!(
            ";LAYER_CHANGE\nG1 Z{:.2} F600\nG1 X20 Y20 E0.5\nG1 X40 Y20 E1.0\n",
            f64::from(layer) * 0.2
        ));
    }
    g.push_str("M104 S0\nM140 S0\n");
    g.into_bytes()
}
