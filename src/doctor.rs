//! `printgate doctor`: checks a live installation and prints every problem with its fix —
//! configuration, data directory and database, a running gateway, the web port, GPIO access, the
//! clock, disk space, and for each printer: MQTT and FTPS ports reachable, TLS certificate
//! (pinned or not), access code accepted, reports arriving, Developer Mode.
//!
//! A printer is tested with one short MQTT session (TLS, CONNECT, SUBSCRIBE to its report
//! topic, one `pushall`, wait for a full report, DISCONNECT); no command with an effect is sent.
//! P1 and A1 printers allow one local MQTT client: while a gateway runs on the same data
//! directory (it holds the instance lock, [`crate::notify::running_gateway`]) their session
//! belongs to it, so doctor does not connect and says so.
//!
//! The checks are plain functions over a [`DoctorOptions`] so that tests can simulate a skewed
//! clock or an unsynchronised one, and a full disk.

use crate::config::{Config, PrinterConfig, TlsMode};
use crate::printer::bambu::report::{Ingested, ReportMerger};
use crate::printer::bambu::tls::{CertRejection, MemoryPinStore, PinStore, PrinterTls};
use crate::printer::bambu::{commands, errors};
use crate::safety::config::GpioBackendChoice;
use crate::store::DATABASE_FILE;
use crate::store::StoreError;
use crate::store::backup::{DatabaseInfo, inspect_database};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, NetworkOptions, Packet,
    QoS, TlsConfiguration, Transport,
};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but something deserves attention.
    Warn,
    /// Broken: printgate will not work (fully) until it is fixed.
    Fail,
    /// Not checked (a prerequisite failed, or checking would disturb the running gateway).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// What a check is about; tests look findings up by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Config,
    DataDir,
    Database,
    Gateway,
    /// Which user the checks ran as.
    User,
    WebPort,
    /// The embedded MQTT broker's listeners.
    BrokerPorts,
    Gpio,
    Clock,
    Disk,
    /// Printer by name: TCP reachability of its MQTT port.
    PrinterReachable(String),
    /// TCP reachability of its FTPS port (uploads).
    PrinterFtps(String),
    /// TLS certificate checks and pin.
    PrinterCertificate(String),
    /// MQTT login with the access code.
    PrinterAccessCode(String),
    /// Reports arriving on the report topic.
    PrinterReports(String),
    PrinterDeveloperMode(String),
}

impl Subject {
    fn describe(&self) -> String {
        match self {
            Subject::Config => "configuration".into(),
            Subject::DataDir => "data directory".into(),
            Subject::Database => "database".into(),
            Subject::Gateway => "gateway".into(),
            Subject::User => "user".into(),
            Subject::WebPort => "web port".into(),
            Subject::BrokerPorts => "MQTT broker ports".into(),
            Subject::Gpio => "GPIO".into(),
            Subject::Clock => "clock".into(),
            Subject::Disk => "disk space".into(),
            Subject::PrinterReachable(n) => format!("printer {n:?}: network"),
            Subject::PrinterFtps(n) => format!("printer {n:?}: file upload port"),
            Subject::PrinterCertificate(n) => format!("printer {n:?}: certificate"),
            Subject::PrinterAccessCode(n) => format!("printer {n:?}: access code"),
            Subject::PrinterReports(n) => format!("printer {n:?}: reports"),
            Subject::PrinterDeveloperMode(n) => format!("printer {n:?}: Developer Mode"),
        }
    }
}

/// One finding: what was checked, the verdict, what was seen and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub subject: Subject,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

/// Every finding of one run, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, subject: Subject, status: Status, detail: impl Into<String>) {
        self.findings.push(Finding {
            subject,
            status,
            detail: detail.into(),
            fix: None,
        });
    }
    fn add_fix(
        &mut self,
        subject: Subject,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.findings.push(Finding {
            subject,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
    /// The finding about `subject`, if it was checked.
    pub fn get(&self, subject: &Subject) -> Option<&Finding> {
        self.findings.iter().find(|f| &f.subject == subject)
    }
    /// Exit status of `printgate doctor`: 1 when a check failed, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failures() > 0)
    }
    pub fn failures(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .count()
    }
    /// The text `printgate doctor` prints: one line per finding, the fix indented below it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{:>4}  {}: {}",
                f.status.label(),
                f.subject.describe(),
                f.detail
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "      fix: {fix}");
            }
        }
        let fails = self.failures();
        let warns = self
            .findings
            .iter()
            .filter(|f| f.status == Status::Warn)
            .count();
        let _ = writeln!(
            out,
            "{} checks, {fails} failed, {warns} warnings",
            self.findings.len()
        );
        out
    }
}

/// Kernel clock discipline state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSync {
    Synchronised,
    Unsynchronised,
    /// The kernel could not be asked.
    Unknown,
}

/// Knobs of a run; [`DoctorOptions::default`] is what `printgate doctor` uses.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// "Now" for the clock checks (tests pass a skewed clock).
    pub now: SystemTime,
    /// Clock discipline; `None` asks the kernel (adjtimex).
    pub clock_sync: Option<ClockSync>,
    /// Per-printer bound for the MQTT test (connect + login + first full report).
    pub printer_timeout: Duration,
    /// Less free space than this in the data directory is a failure …
    pub disk_fail_below: u64,
    /// … and less than this a warning.
    pub disk_warn_below: u64,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            now: SystemTime::now(),
            clock_sync: None,
            printer_timeout: Duration::from_secs(15),
            disk_fail_below: 100 << 20,
            disk_warn_below: 1 << 30,
        }
    }
}

/// Earliest plausible time (2025-01-01 UTC): a clock before it was never set (a Pi has no
/// battery-backed clock and boots with the last saved time or 1970).
const EARLIEST_PLAUSIBLE_MS: i64 = 1_735_689_600_000;
/// The clock may lag the latest recorded time by this much before it counts as set back.
const CLOCK_BEHIND_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// Run every check for the configuration file at `config_path`.
pub async fn run(config_path: &Path, opts: &DoctorOptions) -> Report {
    let mut report = Report::default();
    let config = match Config::load(config_path) {
        Ok(c) => {
            report.add(
                Subject::Config,
                Status::Ok,
                format!(
                    "{} is valid ({} printer{})",
                    config_path.display(),
                    c.printers.len(),
                    if c.printers.len() == 1 { "" } else { "s" }
                ),
            );
            c
        }
        Err(errors) => {
            report.add_fix(
                Subject::Config,
                Status::Fail,
                format!("{} is not valid:\n      {}", config_path.display(), errors.to_string().replace('\n', "\n      ")),
                format!(
                    "correct each line above (the commented example is /usr/share/doc/printgate/printgate.example.toml), then run `printgate check-config --config {}`",
                    config_path.display()
                ),
            );
            return report;
        }
    };

    check_data_dir(&config, &mut report);
    let db = check_database(&config, &mut report);
    let running = crate::notify::running_gateway(&config.data_dir);
    match &running {
        Some(pid) => report.add(
            Subject::Gateway,
            Status::Ok,
            format!(
                "a gateway is running on {} (process {pid})",
                config.data_dir.display()
            ),
        ),
        None => report.add(
            Subject::Gateway,
            Status::Ok,
            format!("no gateway is running on {}", config.data_dir.display()),
        ),
    }
    check_web_port(&config, running.is_some(), &mut report).await;
    check_broker_ports(&config, running.is_some(), &mut report).await;
    check_gpio(&config, &mut report);
    check_clock(opts, db.as_ref(), &mut report);
    check_disk(&config, opts, &mut report);
    for p in &config.printers {
        if p.kind == crate::config::PrinterKind::Moonraker {
            check_moonraker(p, &mut report).await;
            continue;
        }
        if running.is_some() && p.model.max_mqtt_clients() == 1 {
            report.add(
                Subject::PrinterReachable(p.name.clone()),
                Status::Skip,
                format!(
                    "not tested: the running gateway holds this {}'s only MQTT session (a second client would disconnect it); its web page shows the live link state — stop the gateway (`sudo systemctl stop printgate`) to run this test",
                    p.model.display_name()
                ),
            );
            continue;
        }
        let pin = db.as_ref().and_then(|d| d.pins.get(&p.serial).cloned());
        check_printer(p, pin, opts, &mut report).await;
    }
    if is_root() {
        report.add_fix(
            Subject::User,
            Status::Warn,
            "doctor runs as root: file and GPIO permissions were checked for root, not for the service user",
            "run it as the service user: `sudo -u printgate printgate doctor --config /etc/printgate/printgate.toml`",
        );
    }
    report
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn check_data_dir(config: &Config, report: &mut Report) {
    let dir = &config.data_dir;
    let probe = dir.join(format!(".doctor-probe-{}", std::process::id()));
    match std::fs::write(&probe, b"probe") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            report.add(
                Subject::DataDir,
                Status::Ok,
                format!("{} is writable", dir.display()),
            );
        }
        Err(e) => report.add_fix(
            Subject::DataDir,
            Status::Fail,
            format!("cannot write in {}: {e}", dir.display()),
            format!(
                "`sudo chown -R printgate:printgate {}` (the .deb's unit uses StateDirectory=printgate, i.e. /var/lib/printgate)",
                dir.display()
            ),
        ),
    }
}

fn check_database(config: &Config, report: &mut Report) -> Option<DatabaseInfo> {
    let path = config.data_dir.join(DATABASE_FILE);
    if !path.exists() {
        report.add(
            Subject::Database,
            Status::Ok,
            format!(
                "{} does not exist yet; the gateway creates it",
                path.display()
            ),
        );
        return None;
    }
    let known = crate::store::Store::schema_version();
    let inspected = inspect_database(&path);
    crate::backup::give_back_to_service_user(&config.data_dir);
    match inspected {
        Ok(info) if info.schema_version < known => {
            report.add(
                Subject::Database,
                Status::Ok,
                format!(
                    "{} is intact, schema {} (upgraded to {known} at the next start, after an automatic copy to backups/)",
                    path.display(),
                    info.schema_version
                ),
            );
            Some(info)
        }
        Ok(info) => {
            report.add(
                Subject::Database,
                Status::Ok,
                format!(
                    "{} is intact, schema {}",
                    path.display(),
                    info.schema_version
                ),
            );
            Some(info)
        }
        Err(e @ StoreError::NewerSchema { .. }) => {
            report.add_fix(
                Subject::Database,
                Status::Fail,
                e.to_string(),
                "install the newer printgate again, or `printgate restore` a backup made with this version",
            );
            None
        }
        Err(e) => {
            report.add_fix(
                Subject::Database,
                Status::Fail,
                e.to_string(),
                "restore the last backup (`printgate restore --config … FILE`) or move the file aside to start empty",
            );
            None
        }
    }
}

async fn check_web_port(config: &Config, gateway_running: bool, report: &mut Report) {
    let addr = config.web.listen;
    if gateway_running {
        report.add(
            Subject::WebPort,
            Status::Ok,
            format!("{addr} belongs to the running gateway"),
        );
        return;
    }
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            drop(l);
            report.add(Subject::WebPort, Status::Ok, format!("{addr} is free"));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => report.add_fix(
            Subject::WebPort,
            Status::Fail,
            format!("{addr} is already in use by another program"),
            format!(
                "find it with `sudo ss -ltnp 'sport = :{}'` and stop it, or choose another port in [web] listen",
                addr.port()
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => report.add_fix(
            Subject::WebPort,
            Status::Fail,
            format!("not allowed to listen on {addr}: {e}"),
            "ports below 1024 need a capability: keep printgate on 8080 behind a reverse proxy, or add AmbientCapabilities=CAP_NET_BIND_SERVICE in a drop-in (see README \"Install on a Raspberry Pi\")",
        ),
        Err(e) => report.add_fix(
            Subject::WebPort,
            Status::Fail,
            format!("cannot listen on {addr}: {e}"),
            "use an address of this machine in [web] listen (0.0.0.0 = every interface)",
        ),
    }
}

async fn check_broker_ports(config: &Config, gateway_running: bool, report: &mut Report) {
    let b = &config.broker;
    if b.mode != crate::broker::config::BrokerMode::Embedded {
        return;
    }
    let addrs: Vec<std::net::SocketAddr> = std::iter::once(b.listen)
        .chain(b.tls_listen)
        .chain(b.websocket_listen)
        .collect();
    let shown = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ");
    if gateway_running {
        report.add(
            Subject::BrokerPorts,
            Status::Ok,
            format!("{shown} belong to the running gateway"),
        );
        return;
    }
    let mut busy = Vec::new();
    for addr in &addrs {
        if let Err(e) = tokio::net::TcpListener::bind(addr).await {
            busy.push(format!("{addr}: {e}"));
        }
    }
    if busy.is_empty() {
        report.add(
            Subject::BrokerPorts,
            Status::Ok,
            format!("{shown} are free"),
        );
    } else {
        report.add_fix(
            Subject::BrokerPorts,
            Status::Fail,
            format!("cannot listen on {}", busy.join("; ")),
            "another MQTT broker (e.g. Mosquitto) may own the port: stop it, use it with [broker] mode = \"external\", or move printgate's broker with [broker] listen / tls_listen",
        );
    }
}

fn check_gpio(config: &Config, report: &mut Report) {
    let s = &config.safety;
    let wired = s.smoke.is_some() || s.second_input.is_some() || !s.relays.is_empty();
    let on_pi = crate::safety::gpio::is_raspberry_pi();
    let use_pi = match s.gpio_backend {
        GpioBackendChoice::Simulated => false,
        GpioBackendChoice::Rppal => true,
        GpioBackendChoice::Auto => on_pi && crate::safety::gpio::has_gpio_device(),
    };
    if !use_pi {
        if wired {
            report.add_fix(
                Subject::Gpio,
                Status::Warn,
                "the SIMULATED GPIO is in use: the smoke input and the relays in [safety] are not connected to anything",
                if on_pi {
                    "set safety.gpio_backend = \"rppal\" (or \"auto\") to use this Pi's GPIO"
                } else {
                    "run printgate on the Raspberry Pi the detector and relays are wired to"
                },
            );
        } else {
            report.add(
                Subject::Gpio,
                Status::Ok,
                "no inputs or relays configured; GPIO not used",
            );
        }
        return;
    }
    let devices = ["/dev/gpiomem", "/dev/gpiomem0", "/dev/gpiochip0"];
    let mut seen = Vec::new();
    for dev in devices {
        if !Path::new(dev).exists() {
            continue;
        }
        match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            Ok(_) => {
                report.add(
                    Subject::Gpio,
                    Status::Ok,
                    format!("{dev} can be opened for reading and writing"),
                );
                return;
            }
            Err(e) => seen.push(format!("{dev}: {e}")),
        }
    }
    if seen.is_empty() {
        report.add_fix(
            Subject::Gpio,
            Status::Fail,
            "no GPIO device (/dev/gpiomem, /dev/gpiochip0) on this machine",
            "on a Raspberry Pi, use Raspberry Pi OS (or a kernel with the GPIO character device); elsewhere set safety.gpio_backend = \"simulated\"",
        );
    } else {
        report.add_fix(
            Subject::Gpio,
            Status::Fail,
            format!("cannot open the GPIO: {}", seen.join("; ")),
            "add the service user to the gpio group (`sudo usermod -aG gpio printgate`; the .deb does this) and make sure /dev/gpiochip* belong to that group (udev rule /usr/lib/udev/rules.d/60-printgate-gpio.rules), then restart printgate",
        );
    }
}

/// Ask the kernel whether the clock is disciplined (what `timedatectl` shows as "System clock
/// synchronized").
pub fn kernel_clock_sync() -> ClockSync {
    // SAFETY: `timex` is plain data; with `modes = 0` adjtimex only reads (no privileges).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return ClockSync::Unknown;
    }
    if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        ClockSync::Unsynchronised
    } else {
        ClockSync::Synchronised
    }
}

fn check_clock(opts: &DoctorOptions, db: Option<&DatabaseInfo>, report: &mut Report) {
    let now_ms = opts
        .now
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let shown = chrono::DateTime::from_timestamp_millis(now_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| now_ms.to_string());
    let why = "TLS to the printers and the start windows and plate-clear expiry depend on it";
    if now_ms < EARLIEST_PLAUSIBLE_MS {
        report.add_fix(
            Subject::Clock,
            Status::Fail,
            format!("the clock says {shown}, which cannot be right; {why}"),
            "enable network time: `sudo timedatectl set-ntp true`, and check `timedatectl timesync-status` (a Pi has no battery clock)",
        );
        return;
    }
    if let Some(latest) = db.and_then(|d| d.latest_time_ms)
        && latest > now_ms + CLOCK_BEHIND_TOLERANCE_MS
    {
        let behind = Duration::from_millis(u64::try_from(latest - now_ms).unwrap_or(0));
        report.add_fix(
            Subject::Clock,
            Status::Fail,
            format!(
                "the clock ({shown}) is {} min behind the latest time recorded in the database: it was set back or never synchronised after boot; {why}",
                behind.as_secs() / 60
            ),
            "synchronise it: `sudo timedatectl set-ntp true`, wait for `timedatectl` to show \"System clock synchronized: yes\", then restart printgate",
        );
        return;
    }
    match opts.clock_sync.unwrap_or_else(kernel_clock_sync) {
        ClockSync::Synchronised => report.add(
            Subject::Clock,
            Status::Ok,
            format!("{shown}, synchronised by network time"),
        ),
        ClockSync::Unsynchronised => report.add_fix(
            Subject::Clock,
            Status::Fail,
            format!("{shown}, but not synchronised; {why}"),
            "`sudo timedatectl set-ntp true` and check that the Pi reaches a time server (`timedatectl timesync-status`)",
        ),
        ClockSync::Unknown => report.add(
            Subject::Clock,
            Status::Warn,
            format!("{shown}; could not ask the kernel whether it is synchronised"),
        ),
    }
}

/// Free bytes for unprivileged users in the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `st` is plain data filled by statvfs; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn check_disk(config: &Config, opts: &DoctorOptions, report: &mut Report) {
    let mib = |b: u64| b >> 20;
    match free_bytes(&config.data_dir) {
        Ok(free) if free < opts.disk_fail_below => report.add_fix(
            Subject::Disk,
            Status::Fail,
            format!(
                "only {} MiB free for {} (uploads and the database need room)",
                mib(free),
                config.data_dir.display()
            ),
            "free space (`sudo journalctl --vacuum-size=100M`, old backups in the data directory's backups/), or use a larger SD card / USB disk",
        ),
        Ok(free) if free < opts.disk_warn_below => report.add_fix(
            Subject::Disk,
            Status::Warn,
            format!("{} MiB free for {}", mib(free), config.data_dir.display()),
            "free some space before it runs out (old backups, journal: `sudo journalctl --vacuum-size=100M`)",
        ),
        Ok(free) => report.add(
            Subject::Disk,
            Status::Ok,
            format!("{} MiB free for {}", mib(free), config.data_dir.display()),
        ),
        Err(e) => report.add(
            Subject::Disk,
            Status::Warn,
            format!("cannot read the free space of {}: {e}", config.data_dir.display()),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Printers
// ---------------------------------------------------------------------------------------------

/// How the MQTT test of one printer ended.
enum MqttOutcome {
    /// Logged in; the first full report (if any arrived in time) and a possible `fun`/HMS verdict.
    LoggedIn {
        developer_mode: Option<bool>,
        got_report: bool,
    },
    AccessCodeRejected,
    Cert(CertRejection),
    Tls(String),
    Other(String),
    TimedOut,
}

/// A Klipper printer: Moonraker's HTTP API answers (uploads go there) and Klipper's state.
async fn check_moonraker(p: &PrinterConfig, report: &mut Report) {
    let base = crate::printer::moonraker::upload::base_url(&p.host, p.http_port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut req = client.get(format!("{base}/server/info"));
    if let Some(key) = &p.api_key {
        req = req.header("X-Api-Key", key);
    }
    let subject = Subject::PrinterReachable(p.name.clone());
    match req.send().await {
        Ok(r) if r.status().is_success() => {
            let info: serde_json::Value = r.json().await.unwrap_or_default();
            let result = info.get("result").unwrap_or(&info);
            let klippy = result
                .get("klippy_state")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown");
            let mqtt = result
                .get("components")
                .and_then(|c| c.as_array())
                .is_some_and(|c| c.iter().any(|v| v.as_str() == Some("mqtt")));
            if mqtt {
                report.add(
                    subject,
                    Status::Ok,
                    format!("Moonraker answers on {base}; Klipper is {klippy}; its [mqtt] component is loaded"),
                );
            } else {
                report.add_fix(
                    subject,
                    Status::Warn,
                    format!("Moonraker answers on {base} (Klipper is {klippy}) but its [mqtt] component is not loaded"),
                    "add the [mqtt] section shown on this printer's page in printgate to moonraker.conf and restart Moonraker",
                );
            }
        }
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => report.add_fix(
            subject,
            Status::Fail,
            format!("Moonraker on {base} refused printgate ({})", r.status()),
            "set api_key for this printer in printgate.toml (Moonraker: Settings → API key), or add printgate's address to trusted_clients in [authorization]",
        ),
        Ok(r) => report.add_fix(
            subject,
            Status::Fail,
            format!("{base}/server/info answered {}", r.status()),
            "check host and http_port: they must point at Moonraker (port 7125 by default)",
        ),
        Err(e) => report.add_fix(
            subject,
            Status::Fail,
            format!("Moonraker on {base} does not answer: {e}"),
            "check that the printer is on, host and http_port are right (Moonraker listens on 7125 by default) and nothing blocks the port",
        ),
    }
}

async fn check_printer(
    p: &PrinterConfig,
    pin: Option<String>,
    opts: &DoctorOptions,
    report: &mut Report,
) {
    let name = p.name.clone();
    let target = format!("{}:{}", p.host, p.mqtt_port);
    // 1. TCP.
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((p.host.as_str(), p.mqtt_port)),
    )
    .await;
    match connect {
        Ok(Ok(s)) => {
            drop(s);
            report.add(
                Subject::PrinterReachable(name.clone()),
                Status::Ok,
                format!("{target} answers"),
            );
        }
        Ok(Err(e)) => {
            report.add_fix(
                Subject::PrinterReachable(name),
                Status::Fail,
                format!("cannot connect to {target}: {e}"),
                "check that the printer is on and in LAN Only mode, that `host` is its address (give it a fixed IP in your router) and that this Pi is on the same network (`ping` it)",
            );
            return;
        }
        Err(_) => {
            report.add_fix(
                Subject::PrinterReachable(name),
                Status::Fail,
                format!("no answer from {target} within 5 s"),
                "check that the printer is on, that `host` is its address and that no firewall blocks port 8883",
            );
            return;
        }
    }

    // 1b. FTPS (uploads): only that the port answers; the login is the same access code.
    let ftps = format!("{}:{}", p.host, p.ftps_port);
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((p.host.as_str(), p.ftps_port)),
    )
    .await
    {
        Ok(Ok(_)) => report.add(
            Subject::PrinterFtps(name.clone()),
            Status::Ok,
            format!("{ftps} answers"),
        ),
        Ok(Err(e)) => report.add_fix(
            Subject::PrinterFtps(name.clone()),
            Status::Fail,
            format!("cannot connect to {ftps}: {e}; print files cannot be sent"),
            "check that a storage card is in the printer and that ftps_port is 990 (the default) for real printers",
        ),
        Err(_) => report.add_fix(
            Subject::PrinterFtps(name.clone()),
            Status::Fail,
            format!("no answer from {ftps} within 5 s; print files cannot be sent"),
            "check that no firewall blocks port 990 between this machine and the printer",
        ),
    }

    // 2. TLS + login + one report.
    let pins = Arc::new(MemoryPinStore::new());
    if let Some(fp) = &pin {
        let _ = pins.store_pin(&p.serial, fp);
    }
    let tls = match PrinterTls::new(&p.serial, p.tls, pins) {
        Ok(t) => t,
        Err(e) => {
            report.add(
                Subject::PrinterCertificate(name),
                Status::Fail,
                e.to_string(),
            );
            return;
        }
    };
    let outcome = match tokio::time::timeout(opts.printer_timeout, mqtt_probe(p, &tls)).await {
        Ok(o) => o,
        Err(_) => MqttOutcome::TimedOut,
    };
    let cert_subject = Subject::PrinterCertificate(name.clone());
    match &outcome {
        MqttOutcome::Cert(CertRejection::FingerprintChanged { pinned, seen }) => {
            report.add_fix(
                cert_subject,
                Status::Fail,
                format!("the certificate changed: pinned {pinned}, the printer now presents {seen}"),
                "if the printer was replaced or reset, re-pair it on its page in the web interface; otherwise something else answers at this address",
            );
            return;
        }
        MqttOutcome::Cert(rej @ CertRejection::WrongSerial { .. }) => {
            report.add_fix(
                cert_subject,
                Status::Fail,
                rej.to_string(),
                "copy the serial exactly from the printer screen (Settings → Device); it is case-sensitive",
            );
            return;
        }
        MqttOutcome::Cert(rej) => {
            report.add(cert_subject, Status::Fail, rej.to_string());
            return;
        }
        MqttOutcome::Tls(e) => {
            report.add_fix(
                cert_subject,
                Status::Fail,
                format!("TLS with {target} failed: {e}"),
                "check that `host` is the printer (not another device) and that its MQTT port is 8883",
            );
            return;
        }
        _ => {}
    }
    let seen = tls.last_accepted();
    match (p.tls, &pin, &seen) {
        (TlsMode::Insecure, _, _) => report.add_fix(
            cert_subject,
            Status::Warn,
            "tls = \"insecure\": the certificate is not checked; anyone on the LAN could impersonate the printer",
            "remove `tls = \"insecure\"` from this printer (the default \"pin\" remembers the certificate)",
        ),
        (TlsMode::Pin, Some(fp), _) => report.add(
            cert_subject,
            Status::Ok,
            format!("pinned ({}…) and matching", fp.get(..16).unwrap_or(fp)),
        ),
        (TlsMode::Pin, None, Some(fp)) => report.add_fix(
            cert_subject,
            Status::Warn,
            format!(
                "not pinned yet; the printer presents {fp} (CN = its serial)"
            ),
            "the gateway pins it on its first connection; start it (`sudo systemctl start printgate`) on a network you trust",
        ),
        (TlsMode::Pin, None, None) => {}
    }

    let code = Subject::PrinterAccessCode(name.clone());
    match outcome {
        MqttOutcome::AccessCodeRejected => report.add_fix(
            code,
            Status::Fail,
            "the printer refused the access code",
            "read the 8-character access code on the printer screen (Settings → LAN Only Mode; it changes whenever LAN Only or Developer Mode is switched) and put it into access_code",
        ),
        MqttOutcome::TimedOut => report.add_fix(
            code,
            Status::Fail,
            format!(
                "no MQTT login answer within {} s",
                opts.printer_timeout.as_secs()
            ),
            "another program may hold the printer's only session (Bambu Studio, Home Assistant, a second gateway): close it, or restart the printer",
        ),
        MqttOutcome::Other(e) => report.add_fix(
            code,
            Status::Fail,
            e,
            "restart the printer; on P1/A1 make sure no other program (Bambu Studio, Home Assistant) is connected to it",
        ),
        MqttOutcome::LoggedIn {
            developer_mode,
            got_report,
        } => {
            report.add(code, Status::Ok, "accepted");
            let reports = Subject::PrinterReports(name.clone());
            if got_report {
                report.add(reports, Status::Ok, "a full status report arrived");
            } else {
                report.add_fix(
                    reports,
                    Status::Fail,
                    "logged in, but no status report arrived",
                    "check the serial (15 characters, case-sensitive, Settings → Device): a wrong serial is accepted but nothing arrives",
                );
            }
            let dev = Subject::PrinterDeveloperMode(name);
            match developer_mode {
                Some(true) => report.add(dev, Status::Ok, "on (the printer accepts commands)"),
                Some(false) => report.add_fix(
                    dev,
                    Status::Fail,
                    "off: the printer refuses start, pause and stop from printgate",
                    "printer screen → Settings → LAN Only Mode: enable LAN Only, then Developer Mode; then update access_code (it changes)",
                ),
                None => report.add(
                    dev,
                    if got_report { Status::Ok } else { Status::Skip },
                    "this printer does not report it; printgate detects a refusal at the first start and shows \"Developer Mode required\"",
                ),
            }
        }
        MqttOutcome::Cert(_) | MqttOutcome::Tls(_) => {}
    }
}

/// One MQTT session: login, subscribe, one `pushall`, wait for a full report, disconnect.
async fn mqtt_probe(p: &PrinterConfig, tls: &PrinterTls) -> MqttOutcome {
    let client_id = format!("printgate-doctor-{:08x}", rand::random::<u32>());
    let mut opts = MqttOptions::new(client_id, p.host.clone(), p.mqtt_port);
    opts.set_credentials("bblp", p.access_code.clone());
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(
        crate::printer::bambu::session::MAX_INCOMING_PACKET,
        256 << 10,
    );
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls.client_config(),
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, 8);
    let mut net = NetworkOptions::new();
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
    let report_topic = format!("device/{}/report", p.serial);
    let request_topic = format!("device/{}/request", p.serial);
    // Ids below the gateway's first id (20 000): never one the gateway used or will use.
    let ids = commands::SequenceIds::new(10_000 + u64::from(rand::random::<u16>() % 10_000));
    let mut merger = ReportMerger::new();
    let mut logged_in = false;
    let mut developer_mode = None;
    // Every iteration handles one event; the caller's timeout bounds the loop.
    loop {
        let event = match eventloop.poll().await {
            Ok(ev) => ev,
            Err(e) => {
                if let Some(rej) = tls.take_rejection() {
                    return MqttOutcome::Cert(rej);
                }
                return match e {
                    ConnectionError::ConnectionRefused(
                        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
                    ) => MqttOutcome::AccessCodeRejected,
                    ConnectionError::Tls(te) => MqttOutcome::Tls(te.to_string()),
                    other if logged_in => MqttOutcome::LoggedIn {
                        developer_mode,
                        got_report: false,
                    }
                    .or_lost(other),
                    other => MqttOutcome::Other(format!("the MQTT login failed: {other}")),
                };
            }
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                logged_in = true;
                let sub = client
                    .subscribe(report_topic.clone(), QoS::AtMostOnce)
                    .await;
                let push = client
                    .publish(
                        request_topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        commands::pushall(&ids).to_bytes(),
                    )
                    .await;
                if let Err(e) = sub.and(push) {
                    return MqttOutcome::Other(format!("cannot send the status request: {e}"));
                }
            }
            Event::Incoming(Packet::Publish(msg)) if msg.topic == report_topic => {
                let full = matches!(merger.ingest(&msg.payload), Ok(Ingested::Full));
                if let Some(state) = merger.state(p.model) {
                    if state.hms.iter().any(errors::is_developer_mode_refusal_hms) {
                        developer_mode = Some(false);
                    } else if let Some(signed) = state.requires_signed_commands {
                        developer_mode = Some(!signed);
                    }
                }
                if full {
                    let _ = client.disconnect().await;
                    // Let the DISCONNECT go out; bounded by the caller's timeout.
                    for _ in 0..4 {
                        match eventloop.poll().await {
                            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    return MqttOutcome::LoggedIn {
                        developer_mode,
                        got_report: true,
                    };
                }
            }
            _ => {}
        }
    }
}

impl MqttOutcome {
    /// A logged-in session that dropped before a full report: keep what was learned.
    fn or_lost(self, e: ConnectionError) -> MqttOutcome {
        tracing::debug!("doctor's printer session ended: {e}");
        self
    }
}

/// `printgate doctor --config FILE`: print every finding; exit 0 when nothing failed, 1 when
/// something did. Builds its own runtime: call it outside any tokio runtime.
pub fn doctor_cli(config: &Path) -> i32 {
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
    println!("printgate doctor: {}", config.display());
    let report = runtime.block_on(run(config, &DoctorOptions::default()));
    print!("{}", report.render());
    report.exit_code()
}
