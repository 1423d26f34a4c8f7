//! `printgate sim`: run N simulated printers on loopback until SIGINT (Ctrl-C) or SIGTERM and
//! print how to reach each one (one line per printer), so the gateway or Bambu tools can be
//! pointed at them.
//!
//! By default every printer listens on 127.0.0.1 with ephemeral ports. With
//! [`SimCliOptions::standard_ports`] printer N gets its own loopback address 127.0.0.(N+1) with
//! the ports of a real printer (MQTT 8883, FTPS 990, camera 6000 on P1/A1), so a third-party client that hard-codes
//! them can be pointed at it unchanged; binding 990 needs root, `CAP_NET_BIND_SERVICE` or a
//! network namespace (`unshare --net --map-root-user`). 127.0.0.1 is left to the gateway.

use crate::config::Model;
use crate::sim::printer::{SimConfig, SimFleet, SimPrinter};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where `printgate sim` sends its SSDP NOTIFYs unless told otherwise: the discovery port of
/// Bambu printers on loopback (a printer broadcasts to 255.255.255.255:2021; the simulator
/// never broadcasts).
pub const DEFAULT_SSDP_TARGET: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 2021);

/// Options of `printgate sim` beyond printers, models and time scale.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCliOptions {
    /// Printer N on 127.0.0.(N+1) with ports 8883 and 990.
    pub standard_ports: bool,
    /// MQTT clients each printer accepts at once (default: the model's, 1 on P1/A1).
    pub max_clients: Option<usize>,
    /// Where NOTIFYs go; `None` = no announcements.
    pub ssdp_target: Option<SocketAddr>,
    /// Period of the NOTIFYs (5 s on a printer).
    pub ssdp_interval: Duration,
}

impl Default for SimCliOptions {
    fn default() -> Self {
        Self {
            standard_ports: false,
            max_clients: None,
            ssdp_target: Some(DEFAULT_SSDP_TARGET),
            ssdp_interval: Duration::from_secs(5),
        }
    }
}

/// Loopback address of printer `index` (0-based) in standard-ports mode: 127.0.0.2, .3, …
pub fn standard_address(index: usize) -> Option<Ipv4Addr> {
    let last = u8::try_from(index.checked_add(2)?).ok()?;
    (last < 255).then(|| Ipv4Addr::new(127, 0, 0, last))
}

/// Models used when none are given.
pub const DEFAULT_MODELS: [Model; 3] = [Model::P1S, Model::X1C, Model::A1Mini];

/// One line describing a running simulator:
/// `name model serial host mqtt_port ftps_port camera_port access_code fingerprint`
/// (`camera_port` is `-` on models without the port-6000 chamber image).
pub fn describe(p: &SimPrinter) -> String {
    format!(
        "{} {} {} {} {} {} {} {} {}",
        p.name(),
        p.model().config_name(),
        p.serial(),
        p.host(),
        p.mqtt_port(),
        p.ftps_port(),
        p.camera_port()
            .map_or_else(|| "-".to_string(), |c| c.to_string()),
        p.access_code(),
        p.fingerprint()
    )
}

/// The configurations `run_sim_cli` starts: models cycled, names `sim-<n>-<model>`.
pub fn fleet_configs(printers: usize, models: &[Model], time_scale: f64) -> Vec<SimConfig> {
    let models: &[Model] = if models.is_empty() {
        &DEFAULT_MODELS
    } else {
        models
    };
    models
        .iter()
        .cycle()
        .take(printers)
        .enumerate()
        .map(|(i, m)| {
            let mut cfg = SimConfig::new(*m);
            cfg.name = format!("sim-{}-{}", i + 1, m.config_name().to_ascii_lowercase());
            cfg.time_scale = time_scale;
            cfg
        })
        .collect()
}

/// [`fleet_configs`] with the options applied.
pub fn fleet_configs_with(
    printers: usize,
    models: &[Model],
    time_scale: f64,
    opts: &SimCliOptions,
) -> anyhow::Result<Vec<SimConfig>> {
    let mut configs = fleet_configs(printers, models, time_scale);
    for (i, cfg) in configs.iter_mut().enumerate() {
        if opts.standard_ports {
            let Some(address) = standard_address(i) else {
                anyhow::bail!(
                    "--standard-ports gives each printer its own address 127.0.0.2 … 127.0.0.254: at most 253 printers"
                );
            };
            *cfg = cfg.clone().with_standard_ports(address);
        }
        cfg.max_clients = opts.max_clients;
        cfg.ssdp_target = opts.ssdp_target;
        cfg.ssdp_interval = opts.ssdp_interval;
    }
    Ok(configs)
}

/// Start `printers` simulators (models cycled), print one line each, run until `stop` is
/// cancelled (the binary cancels it on SIGINT and SIGTERM), then shut every printer down.
pub async fn run_sim_cli(
    printers: usize,
    models: Vec<Model>,
    time_scale: f64,
    opts: SimCliOptions,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if printers == 0 {
        anyhow::bail!("nothing to simulate: ask for at least one printer");
    }
    if !(time_scale.is_finite() && time_scale > 0.0) {
        anyhow::bail!("time scale must be a positive number (1 = real time), got {time_scale}");
    }
    if opts.max_clients == Some(0) {
        anyhow::bail!("--max-clients must be at least 1");
    }
    let fleet = SimFleet::start(fleet_configs_with(printers, &models, time_scale, &opts)?).await?;
    println!("# name model serial host mqtt_port ftps_port camera_port access_code fingerprint");
    for p in fleet.printers() {
        println!("{}", describe(p));
    }
    // A reader behind a pipe sees the table now, not when the buffer fills.
    let _ = std::io::stdout().flush();
    stop.cancelled().await;
    fleet.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_cycle() {
        let c = fleet_configs(4, &[Model::P1S, Model::X1C], 2.0);
        let m: Vec<Model> = c.iter().map(|c| c.model).collect();
        assert_eq!(m, vec![Model::P1S, Model::X1C, Model::P1S, Model::X1C]);
        assert_eq!(c[2].name, "sim-3-p1s");
        assert_eq!(fleet_configs(1, &[], 1.0)[0].model, Model::P1S);
    }

    #[test]
    fn standard_ports_give_each_printer_its_own_address() {
        let opts = SimCliOptions {
            standard_ports: true,
            ..SimCliOptions::default()
        };
        let c = fleet_configs_with(3, &[Model::P1S], 1.0, &opts).unwrap();
        let a: Vec<_> = c
            .iter()
            .map(|c| (c.address, c.mqtt_port, c.ftps_port))
            .collect();
        assert_eq!(
            a,
            vec![
                (Ipv4Addr::new(127, 0, 0, 2), 8883, 990),
                (Ipv4Addr::new(127, 0, 0, 3), 8883, 990),
                (Ipv4Addr::new(127, 0, 0, 4), 8883, 990),
            ]
        );
        assert!(fleet_configs_with(254, &[Model::P1S], 1.0, &opts).is_err());
        assert_eq!(standard_address(252), Some(Ipv4Addr::new(127, 0, 0, 254)));
        assert_eq!(standard_address(253), None);
    }
}
