//! Running under systemd: readiness and watchdog over `sd_notify` (the unit in
//! `deploy/printgate.service` is `Type=notify` with `WatchdogSec`), the instance lock that tells
//! `doctor` and `restore` a gateway is running on a data directory, and log lines that journald
//! files under the right priority.
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) the notifications are no-ops; the
//! instance lock is always taken.

use crate::store::Store;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The lock file in the data directory, held (flock) by the running gateway. It contains the
/// gateway's process id.
pub const LOCK_FILE: &str = "printgate.lock";

/// Why the gateway could not declare itself ready.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error(
        "another printgate (process {pid}) is already running with the data directory {dir}; stop it first (`sudo systemctl stop printgate`) — two gateways on one database would both start prints"
    )]
    AlreadyRunning { dir: PathBuf, pid: String },
    #[error(
        "cannot create the lock file {path}: {source}; check that printgate may write in its data directory"
    )]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The path of the instance lock for `data_dir`.
pub fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK_FILE)
}

/// Take the instance lock of `data_dir` and write our pid into it. The lock lasts as long as the
/// returned file is open (the kernel releases it when the process dies, also on `kill -9`).
pub fn take_instance_lock(data_dir: &Path) -> Result<File, ReadyError> {
    let path = lock_path(data_dir);
    let lock_err = |source| ReadyError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(ReadyError::AlreadyRunning {
                dir: data_dir.to_path_buf(),
                pid: pid.trim().chars().take(20).collect(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}

/// Whether a gateway holds the instance lock of `data_dir`: `Some(pid text)` if so. A missing
/// lock file or one nobody holds means no gateway runs on this directory.
pub fn running_gateway(data_dir: &Path) -> Option<String> {
    let mut file = File::open(lock_path(data_dir)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid: String = pid.trim().chars().take(20).collect();
            Some(if pid.is_empty() { "?".into() } else { pid })
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The web server listens: take the instance lock, tell systemd `READY=1`, and start the
/// watchdog task (in `tasks`, so that shutting the gateway down also releases the lock). The
/// watchdog task pings `WATCHDOG=1` at half of `WATCHDOG_USEC` from the gateway's runtime: when
/// the runtime is stuck the pings stop and systemd restarts the service. On shutdown it sends
/// `STOPPING=1` and releases the lock.
pub fn gateway_ready(
    gateway: &crate::app::Gateway,
    tasks: &mut JoinSet<()>,
    shutdown: CancellationToken,
) -> Result<(), ReadyError> {
    let lock = take_instance_lock(&gateway.config.data_dir)?;
    let watchdog = sd_notify::watchdog_enabled();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    if let Some(period) = watchdog {
        tracing::debug!(
            "systemd watchdog every {} ms",
            period.as_millis().saturating_div(2)
        );
    }
    tasks.spawn(watchdog_task(
        lock,
        watchdog,
        gateway.store.clone(),
        shutdown,
    ));
    Ok(())
}

/// Ping the systemd watchdog until shutdown, then say we are stopping. A ping is sent only when
/// the runtime got to run this task in time **and** the database answers a trivial query
/// within the period: a wedged runtime or a stuck database lock stops the pings, and systemd
/// restarts the gateway.
async fn watchdog_task(
    lock: File,
    period: Option<Duration>,
    store: Arc<Store>,
    shutdown: CancellationToken,
) {
    if let Some(period) = period {
        let half = (period / 2).max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(half);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    let probe = tokio::task::spawn_blocking({
                        let store = store.clone();
                        move || store.is_responsive()
                    });
                    match tokio::time::timeout(half, probe).await {
                        Ok(Ok(true)) => notify(&[sd_notify::NotifyState::Watchdog]),
                        _ => tracing::error!(
                            "the database did not answer within {} ms; not pinging the systemd watchdog (systemd will restart printgate)",
                            half.as_millis()
                        ),
                    }
                }
            }
        }
    } else {
        shutdown.cancelled().await;
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    drop(lock);
}

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------------

/// Make glibc hand blocks of 128 KiB and more straight back to the system when freed. Every
/// argon2 password check (web login, MQTT login) allocates 19 MiB; with glibc's default,
/// sliding threshold that memory often stays resident in a thread's arena afterwards (measured:
/// 42 MB instead of 23 MB for a gateway with 10 printers and 50 MQTT clients). No effect on
/// other C libraries.
pub fn return_large_frees_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of glibc's allocator; it is called once,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Set up logging. Under systemd (stderr is the journal, `JOURNAL_STREAM` set) every line starts
/// with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug/trace), which
/// journald turns into the entry's priority (`journalctl -p warning -u printgate`); no colours
/// and no timestamps (journald adds its own). Elsewhere: the usual coloured lines. The level
/// comes from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rumqttd only ever talks to printgate's own MQTT front door (which logs what clients
        // do); its per-connection errors (e.g. the start-up readiness probe) are noise, and its
        // failures are logged by `broker::embedded`. RUST_LOG overrides this.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JournalFormat)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The sd-daemon priority prefix for a level.
pub fn syslog_prefix(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::ERROR => "<3>",
        tracing::Level::WARN => "<4>",
        tracing::Level::INFO => "<6>",
        tracing::Level::DEBUG | tracing::Level::TRACE => "<7>",
    }
}

/// `<prio>target: span{fields}: message fields` — one journal entry per event.
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "{}{}: ",
            syslog_prefix(*meta.level()),
            meta.target()
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
