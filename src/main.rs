//! Command-line entry point: parses arguments (clap) and hands over to the library. Nothing else
//! lives here, so `serve`, `demo` and the tests run the same code.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// printgate — a LAN gateway for Bambu Lab printers that never starts a print until a person
/// has tapped "plate clear".
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with the printers of a config file.
    Serve {
        /// Path to printgate.toml (see deploy/printgate.example.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 if valid, 2 with one line per problem on stderr.
    CheckConfig {
        /// Path to printgate.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run simulated Bambu printers standalone (for measuring a gateway in another process).
    ///
    /// Prints one line per printer: name model serial host mqtt_port ftps_port camera_port
    /// access_code fingerprint (camera_port: the P1/A1 chamber image, `-` on other models). Runs until SIGINT (Ctrl-C) or SIGTERM, then stops every printer and exits 0.
    /// Every printer announces itself with an SSDP NOTIFY every 5 s (unicast, to
    /// 127.0.0.1:2021 unless --ssdp-target says otherwise).
    Sim {
        /// How many printers to simulate.
        #[arg(long, value_name = "N", default_value_t = 1)]
        printers: usize,
        /// Comma-separated models, cycled over the printers (X1C, X1E, P1P, P1S, A1, A1MINI, P2S, H2D).
        #[arg(
            long,
            value_name = "MODELS",
            value_delimiter = ',',
            default_value = "P1S"
        )]
        models: Vec<String>,
        /// How much faster than real time the simulated prints run.
        #[arg(long, value_name = "X", default_value_t = 1.0)]
        time_scale: f64,
        /// Give printer N its own address 127.0.0.(N+1) with a printer's ports (MQTT 8883,
        /// FTPS 990), for third-party clients that hard-code them. Port 990 needs root,
        /// CAP_NET_BIND_SERVICE or a network namespace (unshare --net --map-root-user).
        #[arg(long)]
        standard_ports: bool,
        /// MQTT clients each printer accepts at once (default: the model's; 1 on P1/A1, whose
        /// newest client kicks the older one).
        #[arg(long, value_name = "N")]
        max_clients: Option<usize>,
        /// Where the SSDP NOTIFYs go (unicast UDP; a printer broadcasts to port 2021).
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:2021")]
        ssdp_target: SocketAddr,
        /// Send no SSDP announcements.
        #[arg(long)]
        no_ssdp: bool,
    },
    /// Set (or reset) the password of a web account, creating it (as administrator) if missing.
    ///
    /// Reads the new password twice from the terminal, or two lines from stdin when not a
    /// terminal.
    SetPassword {
        /// Path to printgate.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// User name of the account.
        #[arg(long, value_name = "NAME")]
        user: String,
    },
    /// Check a live installation and print each problem with its fix. Exit 1 if a check failed.
    Doctor {
        /// Path to printgate.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a consistent copy of the database and stored print files to ARCHIVE (zip).
    ///
    /// Safe while the gateway runs.
    Backup {
        /// Path to printgate.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The archive to write.
        #[arg(value_name = "ARCHIVE")]
        file: PathBuf,
    },
    /// Put back a backup made by `printgate backup` (stop the gateway first).
    Restore {
        /// Path to printgate.toml.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The archive to restore.
        #[arg(value_name = "ARCHIVE")]
        file: PathBuf,
    },
    /// Print the argon2 hash of a password for `[[broker.users]] password_hash`.
    ///
    /// Reads the password from the terminal (twice), or one line from stdin when not a terminal.
    HashPassword,
    /// Run the dispatcher's seeded fault simulation and check the safety invariants.
    ///
    /// Random schedules of reports, taps, uploads,
    /// link drops, lost, duplicated and late acks and upload/publish results, reorders and
    /// cancels during uploads, restarts and clock jumps) and check invariants I1–I4, I6, I7 after
    /// every step. The first line names the start seed (a fresh random one unless --seed is
    /// given); the last line reads `N schedules, V violations`; the exit code is non-zero when
    /// V > 0, and each failure prints the command that replays it.
    Simulate {
        /// How many schedules (seeds) to run.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        seeds: u64,
        /// The first seed (default: a fresh random one, printed first); replay one failure with
        /// `--seeds 1 --seed S`.
        #[arg(long, value_name = "S")]
        seed: Option<u64>,
    },
    /// Drive the simulated GPIO of a running gateway (demo, or gpio_backend = "simulated").
    Gpio(printgate::web::gpio_cli::GpioArgs),
    /// Run a benchmark and print its figures.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Run the gateway with three simulated Bambu printers (P1S, X1C, A1 mini) and one simulated
    /// Klipper printer (its Moonraker connects to the embedded broker) in one process.
    Demo {
        /// Address of the web interface (loopback only is recommended).
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Address of the embedded MQTT broker (user demo, password demo).
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:1883")]
        mqtt_listen: SocketAddr,
        /// Data directory; a fresh temporary one when omitted (deleted on exit).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// How much faster than real time the simulated printers run.
        #[arg(long, value_name = "X", default_value_t = 60.0)]
        time_scale: f64,
    },
    /// Internal: the embedded MQTT broker's own process, started and watched by `serve` and
    /// `demo` (settings on stdin); not for use by hand.
    #[command(hide = true)]
    BrokerWorker,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Smoke edge → relay written (10,000 edges, simulated GPIO, 10 printers reporting and 20
    /// dashboard clients); the last line reads `smoke->relay p50 <n> us, p99 <n> us, max <n> us`.
    Safety,
}

/// `printgate hash-password`: read a password, print its argon2 PHC string.
fn hash_password_cli() -> i32 {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Again: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("error: the two passwords differ; nothing was printed");
                return 1;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("error: cannot read the password: {e}");
                return 1;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("error: cannot read the password from stdin: {e}");
            return 1;
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        eprintln!("error: empty password; nothing was printed");
        return 1;
    }
    match printgate::broker::auth::hash_password(&password) {
        Ok(hash) => {
            println!("{hash}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Cancel `token` on SIGINT or SIGTERM. On Unix the handlers are installed before this
/// returns, so a signal that arrives right after start-up is not lost.
fn cancel_on_signals(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::spawn(async move {
                    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                    tracing::info!("shutting down");
                    token.cancel();
                });
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("warning: cannot listen for SIGINT/SIGTERM ({e}); trying Ctrl-C only");
            }
        }
    }
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::CheckConfig { config } => {
            return exit_code(printgate::config::check_config_cli(config));
        }
        Command::Gpio(args) => {
            return exit_code(printgate::web::gpio_cli::gpio_cli(args.clone()));
        }
        Command::Bench {
            what: BenchWhat::Safety,
        } => {
            return exit_code(printgate::app::bench::bench_safety_cli());
        }
        Command::HashPassword => return exit_code(hash_password_cli()),
        Command::Doctor { config } => return exit_code(printgate::doctor::doctor_cli(config)),
        Command::Backup { config, file } => {
            return exit_code(printgate::backup::backup_cli(config, file));
        }
        Command::Restore { config, file } => {
            return exit_code(printgate::backup::restore_cli(config, file));
        }
        Command::SetPassword { config, user } => {
            return exit_code(printgate::web::auth::set_password_cli(config, user));
        }
        Command::Simulate { seeds, seed } => {
            return exit_code(printgate::jobs::simulation::simulate_cli(*seeds, *seed));
        }
        _ => {}
    }
    printgate::notify::return_large_frees_to_the_system();
    printgate::notify::init_logging();
    if let Command::BrokerWorker = cli.command {
        return exit_code(printgate::broker::worker::worker_main());
    }
    // The embedded broker runs in a child process of this very binary, so a broker crash or
    // hang never ends the safety path (src/broker/worker.rs).
    match printgate::broker::worker::this_executable() {
        Ok(exe) => printgate::broker::worker::use_executable(exe),
        Err(e) => eprintln!(
            "warning: cannot find this program's own file ({e}); the MQTT broker runs inside the gateway process"
        ),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async move {
        let token = CancellationToken::new();
        cancel_on_signals(token.clone());
        match cli.command {
            Command::Serve { config } => {
                let config = match printgate::config::Config::load(&config) {
                    Ok(c) => c,
                    Err(errors) => {
                        eprintln!("{} is not valid:\n{errors}", config.display());
                        return Ok(ExitCode::from(2));
                    }
                };
                printgate::start(config, token).await?.wait().await;
                Ok(ExitCode::SUCCESS)
            }
            Command::CheckConfig { .. }
            | Command::Doctor { .. }
            | Command::HashPassword
            | Command::Backup { .. }
            | Command::Restore { .. }
            | Command::Gpio(_)
            | Command::Bench { .. }
            | Command::Simulate { .. }
            | Command::BrokerWorker
            | Command::SetPassword { .. } => Ok(ExitCode::SUCCESS),
            Command::Sim {
                printers,
                models,
                time_scale,
                standard_ports,
                max_clients,
                ssdp_target,
                no_ssdp,
            } => {
                let mut parsed = Vec::new();
                for m in &models {
                    match printgate::config::Model::parse(m) {
                        Some(model) => parsed.push(model),
                        None => anyhow::bail!(
                            "unknown model {m:?}; use one of X1C, X1E, P1P, P1S, A1, A1MINI, P2S, H2D"
                        ),
                    }
                }
                let opts = printgate::sim::cli::SimCliOptions {
                    standard_ports,
                    max_clients,
                    ssdp_target: (!no_ssdp).then_some(ssdp_target),
                    ..Default::default()
                };
                printgate::sim::cli::run_sim_cli(printers, parsed, time_scale, opts, token)
                    .await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Demo {
                listen,
                mqtt_listen,
                data_dir,
                time_scale,
            } => printgate::app::demo::run(listen, mqtt_listen, data_dir, time_scale, token)
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
