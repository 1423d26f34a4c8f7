//! `printgate gpio set <pin> <high|low>`: drive an input of the simulated GPIO inside a running
//! gateway (`demo`, or `serve` with `safety.gpio_backend = "simulated"`). The simulated pins live
//! in that process, so this is a thin HTTP client of `POST /api/v1/safety/sim-input`
//! ([`crate::safety::web`]) authenticated with an API token.

use super::web::{LevelName, SimInputBody};
use clap::{Args, Subcommand};

/// Arguments of `printgate gpio`.
#[derive(Debug, Args)]
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

#[derive(Debug, Subcommand)]
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
    runtime.block_on(async move {
        let client = reqwest::Client::new();
        let sent = client
            .post(&url)
            .header("X-Api-Key", token)
            .json(&body)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await;
        match sent {
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if status.is_success() {
                    println!("{text}");
                    0
                } else {
                    let message = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or(text);
                    eprintln!("error: the gateway answered {status}: {message}");
                    1
                }
            }
            Err(e) => {
                eprintln!(
                    "error: cannot reach the gateway at {url}: {e}. Is it running, and is --url right?"
                );
                1
            }
        }
    })
}
