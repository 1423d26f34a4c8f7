//! `printgate demo`: three simulated printers (P1S, X1C, A1 mini) and the real gateway in one
//! process, with a temporary data directory unless one is given. Everything listens on the
//! address the user chose for the web page (loopback by default); the simulators on 127.0.0.1.

use crate::config::{Config, DispatchConfig, LinkConfig, Model, PrinterConfig, TlsMode, WebConfig};
use crate::sim::{SimConfig, SimPrinter};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The printers of the demo, in the order shown.
pub const DEMO_PRINTERS: [(&str, Model); 3] = [
    ("Garage P1S", Model::P1S),
    ("Office X1C", Model::X1C),
    ("Desk A1 mini", Model::A1Mini),
];

/// Start the simulators and return them with a gateway config pointing at them.
pub async fn start_simulators(
    data_dir: PathBuf,
    listen: SocketAddr,
    time_scale: f64,
) -> anyhow::Result<(Vec<SimPrinter>, Config)> {
    let mut sims = Vec::new();
    let mut printers = Vec::new();
    for (name, model) in DEMO_PRINTERS {
        let sim = SimPrinter::start(SimConfig {
            name: name.to_string(),
            time_scale,
            report_interval: Duration::from_secs(1),
            ..SimConfig::new(model)
        })
        .await?;
        printers.push(PrinterConfig {
            name: name.to_string(),
            model,
            serial: sim.serial().to_string(),
            host: sim.host().to_string(),
            access_code: sim.access_code().to_string(),
            tls: TlsMode::Pin,
            mqtt_port: sim.mqtt_port(),
            ftps_port: sim.ftps_port(),
        });
        sims.push(sim);
    }
    let config = Config {
        data_dir,
        web: WebConfig { listen },
        link: LinkConfig::default(),
        dispatch: DispatchConfig::default(),
        printers,
        safety: Default::default(),
    };
    Ok((sims, config))
}

/// Run the demo until `shutdown` is cancelled.
pub async fn run(
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    time_scale: f64,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (_tmp, data_dir) = match data_dir {
        Some(d) => (None, d),
        None => {
            let tmp = tempfile::Builder::new().prefix("printgate-demo-").tempdir()?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    if !listen.ip().is_loopback() {
        tracing::warn!("demo listening on {listen}, which is not a loopback address");
    }
    let (sims, config) = start_simulators(data_dir.clone(), listen, time_scale).await?;
    let running = crate::start(config, shutdown.clone()).await?;
    println!("printgate demo: open http://{} (data in {})", running.web_addr, data_dir.display());
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
    running.wait().await;
    for sim in sims {
        sim.shutdown().await;
    }
    Ok(())
}
