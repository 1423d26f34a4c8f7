//! `printgate gpio set <pin> <high|low>`: drive an input of the simulated GPIO inside a running
//! gateway (`demo`, or `serve` with `safety.gpio_backend = "simulated"`). The simulated pins live
//! in that process, so this is a thin HTTP client of `POST /api/v1/safety/sim-input`
//! ([`super::safety_api`]) authenticated with an API token.

use super::safety_api::{LevelName, SimInputBody};
use clap::{Args, Subcommand};

/// Arguments of `printgate gpio`.
#[derive(Debug, Clone, Args)]
pub struct GpioArgs {
    #[command(subcommand)]
    pub command: GpioCommand,
    /// Address of the running gateway's web interface.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API token (create one under Settings → API tokens).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PRINTGATE_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum GpioCommand {
    /// Drive a simulated input pin to a level (e.g. `gpio set 17 low` asserts an active-low smoke
    /// input). Waits until the gateway has debounced it; prints the safety status.
    Set {
        /// BCM GPIO number of a configured input.
        pin: u8,
        #[arg(value_enum)]
        level: CliLevel,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CliLevel {
    High,
    Low,
}

/// Run `printgate gpio …`; returns the exit code (0 done, 1 the gateway refused or could not be
/// reached, 2 bad arguments).
pub fn gpio_cli(args: GpioArgs) -> i32 {
    let Some(token) = args.token.filter(|t| !t.trim().is_empty()) else {
        eprintln!(
            "error: an API token is needed: pass --token or set PRINTGATE_TOKEN (create one under Settings → API tokens)"
        );
        return 2;
    };
    let GpioCommand::Set { pin, level } = args.command;
    let body = SimInputBody {
        pin: Some(pin),
        level: Some(match level {
            CliLevel::High => LevelName::High,
            CliLevel::Low => LevelName::Low,
        }),
        input: None,
        asserted: None,
    };
    let url = format!("{}/api/v1/safety/sim-input", args.url.trim_end_matches('/'));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let body = match serde_json::to_vec(&body) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let sent = crate::alerts::http::post(
            &url,
            &[("X-Api-Key", token)],
            "application/json",
            body,
            std::time::Duration::from_secs(30),
        )
        .await;
        match sent {
            Ok(a) if (200..300).contains(&a.status) => {
                println!("{}", a.body);
                0
            }
            Ok(a) => {
                let message = serde_json::from_str::<serde_json::Value>(&a.body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or(a.body);
                eprintln!("error: the gateway answered {}: {message}", a.status);
                1
            }
            Err(e) => {
                eprintln!("error: cannot reach the gateway at {url}: {e}. Is it running, and is --url right?");
                1
            }
        }
    })
}
