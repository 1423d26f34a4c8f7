//! `printgate sim`: run N simulated printers on loopback until SIGINT (Ctrl-C) or SIGTERM and
//! print how to reach each one (one line per printer), so the gateway or Bambu tools can be
//! pointed at them.

use crate::config::Model;
use crate::sim::printer::{SimConfig, SimFleet, SimPrinter};
use std::io::Write;
use tokio_util::sync::CancellationToken;

/// Models used when none are given.
pub const DEFAULT_MODELS: [Model; 3] = [Model::P1S, Model::X1C, Model::A1Mini];

/// One line describing a running simulator:
/// `name model serial host mqtt_port access_code fingerprint`.
pub fn describe(p: &SimPrinter) -> String {
    format!(
        "{} {} {} {} {} {} {} {}",
        p.name(),
        p.model().config_name(),
        p.serial(),
        p.host(),
        p.mqtt_port(),
        p.ftps_port(),
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

/// Start `printers` simulators (models cycled), print one line each, run until `stop` is
/// cancelled (the binary cancels it on SIGINT and SIGTERM), then shut every printer down.
pub async fn run_sim_cli(
    printers: usize,
    models: Vec<Model>,
    time_scale: f64,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if printers == 0 {
        anyhow::bail!("nothing to simulate: ask for at least one printer");
    }
    if !(time_scale.is_finite() && time_scale > 0.0) {
        anyhow::bail!("time scale must be a positive number (1 = real time), got {time_scale}");
    }
    let fleet = SimFleet::start(fleet_configs(printers, &models, time_scale)).await?;
    println!("# name model serial host mqtt_port ftps_port access_code fingerprint");
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
}
