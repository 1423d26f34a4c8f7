//! `printgate.toml`: the one configuration file. Parsed with serde (unknown keys are errors) and
//! validated as a whole so that every problem is reported at once, each naming the key, the bad
//! value and the fix. `serve`, `demo`, `check-config` and the tests all go through [`Config::load`]
//! / [`Config::validate`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use crate::printer::Model;

/// How the printer's TLS certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Trust on first use: pin the leaf's SHA-256 and require CN = serial afterwards.
    #[default]
    Pin,
    /// Accept any certificate (only for troubleshooting; logged loudly).
    Insecure,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrinterConfig {
    /// Unique display name, also used in URLs and MQTT topics.
    pub name: String,
    /// How printgate talks to the printer: `bambu` (default) or `moonraker`.
    #[serde(default)]
    pub kind: PrinterKind,
    /// Bambu model; `KLIPPER` for Moonraker printers (may be left out there).
    pub model: Model,
    /// 15-character serial (printer screen / SSDP USN), case-sensitive. Bambu only (empty for
    /// Moonraker printers).
    pub serial: String,
    /// IP address or host name on the LAN.
    pub host: String,
    /// 8-character LAN access code from the printer screen. Bambu only (empty for Moonraker
    /// printers).
    pub access_code: String,
    #[serde(default)]
    pub tls: TlsMode,
    /// MQTT port (8883 on real printers).
    #[serde(default = "default_mqtt_port")]
    pub mqtt_port: u16,
    /// FTPS port (990 on real printers).
    #[serde(default = "default_ftps_port")]
    pub ftps_port: u16,
    /// Chamber-camera port of a P1P/P1S/A1/A1 mini (6000 on real printers; `printgate sim`
    /// lists its simulators' in the `camera_port` column).
    #[serde(default = "default_camera_port")]
    pub camera_port: u16,
    /// Moonraker only: `instance_name` of the printer's `[mqtt]` section in moonraker.conf.
    #[serde(default)]
    pub instance_name: String,
    /// Moonraker only: port of Moonraker's HTTP API (file uploads).
    #[serde(default = "default_moonraker_http_port")]
    pub http_port: u16,
    /// Moonraker only: Moonraker API key, when its `[authorization]` requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Bambu only: serve this printer to the LAN as a virtual printer (off by default).
    #[serde(
        default,
        skip_serializing_if = "crate::virtual_printer::config::VirtualPrinterConfig::is_default"
    )]
    pub virtual_printer: crate::virtual_printer::config::VirtualPrinterConfig,
}

impl Default for PrinterConfig {
    /// Only for struct-update syntax in code; a real printer comes from the config file.
    fn default() -> Self {
        PrinterConfig {
            name: String::new(),
            kind: PrinterKind::Bambu,
            model: Model::X1C,
            serial: String::new(),
            host: String::new(),
            access_code: String::new(),
            tls: TlsMode::Pin,
            mqtt_port: default_mqtt_port(),
            ftps_port: default_ftps_port(),
            camera_port: default_camera_port(),
            instance_name: String::new(),
            http_port: default_moonraker_http_port(),
            api_key: None,
            virtual_printer: Default::default(),
        }
    }
}

/// Which protocol a printer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrinterKind {
    /// Bambu Lab LAN mode: printgate connects to the printer's MQTT broker and FTPS server.
    #[default]
    Bambu,
    /// Klipper + Moonraker: Moonraker's `[mqtt]` component connects to printgate's broker.
    Moonraker,
}

/// A stable unique id of a printer (Home Assistant): the Bambu serial, or
/// `klipper-<instance_name>` for a Klipper printer.
pub fn printer_unique_id(p: &PrinterConfig) -> String {
    match p.kind {
        PrinterKind::Bambu => p.serial.clone(),
        PrinterKind::Moonraker => format!("klipper-{}", p.instance_name),
    }
}

fn default_moonraker_http_port() -> u16 {
    7125
}

fn default_mqtt_port() -> u16 {
    8883
}
fn default_ftps_port() -> u16 {
    990
}
fn default_camera_port() -> u16 {
    6000
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Mark the session cookie `Secure` (set when the page is served over HTTPS, e.g. behind a
    /// TLS reverse proxy; requests with `X-Forwarded-Proto: https` get it anyway).
    #[serde(default)]
    pub secure_cookies: bool,
    /// Largest print file accepted by an upload, in MiB (default 512). A bigger upload is
    /// refused with 413 while it streams, before it is stored.
    #[serde(default = "default_max_upload_mb")]
    pub max_upload_mb: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            secure_cookies: false,
            max_upload_mb: default_max_upload_mb(),
        }
    }
}

impl WebConfig {
    /// [`WebConfig::max_upload_mb`] in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_mb.saturating_mul(1024 * 1024)
    }
}

/// Default of `web.max_upload_mb`: the biggest real multi-plate sliced files are a few hundred MB.
pub const DEFAULT_MAX_UPLOAD_MB: u64 = 512;

fn default_max_upload_mb() -> u64 {
    DEFAULT_MAX_UPLOAD_MB
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// Timings of the printer links (docs/bambu-protocol.md §2.6). Defaults follow the document; tests shorten them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// MQTT keepalive in seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// No message for this long → `pushing.start` + `pushall`.
    #[serde(default = "default_silence")]
    pub silence_secs: u64,
    /// Still nothing this long after the nudge → reconnect with a fresh client.
    #[serde(default = "default_silence_reconnect")]
    pub silence_reconnect_secs: u64,
    /// Reconnect backoff start and cap, in milliseconds.
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Backoff after the access code was rejected.
    #[serde(default = "default_auth_backoff")]
    pub auth_backoff_secs: u64,
    /// Minimum time between two `pushall` requests.
    #[serde(default = "default_pushall_interval")]
    pub pushall_min_interval_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_keepalive() -> u64 {
    30
}
fn default_silence() -> u64 {
    60
}
fn default_silence_reconnect() -> u64 {
    30
}
fn default_backoff_min() -> u64 {
    1000
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_auth_backoff() -> u64 {
    300
}
fn default_pushall_interval() -> u64 {
    3000
}

/// Dispatcher windows (docs/architecture.md I1–I4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// A plate-clear tap expires after this many seconds.
    #[serde(default = "default_plate_ttl")]
    pub plate_clear_ttl_secs: u64,
    /// A start decision not published within this many seconds is dropped (I3).
    #[serde(default = "default_start_window")]
    pub start_window_secs: u64,
    /// The printer's last full report must be younger than this at publish time (I4).
    #[serde(default = "default_report_max_age")]
    pub report_max_age_secs: u64,
    /// Phase A of start confirmation: active state or our subtask id within this many seconds.
    #[serde(default = "default_confirm_a")]
    pub confirm_phase_a_secs: u64,
    /// Phase B: after only our id was echoed, an active state within this many more seconds.
    #[serde(default = "default_confirm_b")]
    pub confirm_phase_b_secs: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_plate_ttl() -> u64 {
    30 * 60
}
fn default_start_window() -> u64 {
    60
}
fn default_report_max_age() -> u64 {
    10
}
fn default_confirm_a() -> u64 {
    90
}
fn default_confirm_b() -> u64 {
    180
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite database and stored files live.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub link: LinkConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    #[serde(default, rename = "printers")]
    pub printers: Vec<PrinterConfig>,
    /// Smoke input, relays, thermal watchdog (`[safety]`).
    #[serde(default)]
    pub safety: crate::safety::config::SafetyConfig,
    /// Where alerts go: ntfy, webhook, buzzer (`[alerts]`).
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// MQTT broker, Home Assistant discovery, mDNS, printer discovery (`[broker]`).
    #[serde(default)]
    pub broker: crate::broker::config::BrokerConfig,
    /// Prometheus `GET /metrics` (`[metrics]`).
    #[serde(default)]
    pub metrics: crate::metrics::config::MetricsConfig,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in the configuration: which key, its (printable) value, what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key with array indices, e.g. `printers[1].access_code`; empty for problems with the
    /// file as a whole (unreadable, TOML syntax).
    pub key: String,
    /// The offending value as written in TOML (`"X9"`, `0`), or empty. Access codes are never
    /// shown: only their length (`<7 hidden characters>`).
    pub value: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, value: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            value: value.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.key.is_empty(), self.value.is_empty()) {
            (true, _) => write!(f, "{}", self.message),
            (false, true) => write!(f, "{}: {}", self.key, self.message),
            (false, false) => write!(f, "{} = {}: {}", self.key, self.value, self.message),
        }
    }
}

/// Every problem found in a configuration (never empty when returned as an error). Displays as
/// one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.errors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(errors: Vec<ConfigError>) -> Self {
        ConfigErrors { errors }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// The valid model names, for messages.
fn model_list() -> String {
    format!(
        "{} (Bambu Lab), or KLIPPER with kind = \"moonraker\"",
        Model::ALL.map(Model::config_name).join(", ")
    )
}

impl Config {
    /// Read, parse and validate `printgate.toml`. Every problem is reported at once (TOML syntax
    /// errors stop at the first one, since nothing after it can be trusted). Validation creates
    /// `data_dir` if it is missing and checks that it is writable.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::from(vec![ConfigError::new(
                "",
                "",
                format!(
                    "cannot read the configuration file {}: {e}; check the path and that printgate may read it",
                    path.display()
                ),
            )])
        })?;
        Self::parse_toml(&text, &path.display().to_string())
    }

    /// Parse and validate configuration text; `origin` names it in syntax errors (a file path).
    pub fn parse_toml(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => return Err(vec![syntax_error(text, origin, &e)].into()),
        };
        let secrets = access_codes_in(&table);
        let mut errs = Vec::new();
        let config = parse_table(table, &mut errs);
        if config.is_none() && errs.is_empty() {
            errs.push(ConfigError::new(
                "",
                "",
                format!("{origin}: the configuration could not be read; compare it with deploy/printgate.example.toml"),
            ));
        }
        scrub(&mut errs, &secrets);
        sort_by_printer(&mut errs);
        match config {
            Some(config) if errs.is_empty() => Ok(config),
            _ => Err(errs.into()),
        }
    }

    /// Check a configuration (also one built in code): every problem at once. Creates `data_dir`
    /// if needed and checks it is writable by writing and deleting a probe file.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        self.check_sections(&mut errs);
        check_printers(&self.printer_refs(), &mut errs);
        self.check_safety(&self.printers, &mut errs);
        self.check_moonraker_broker(&self.printers, &mut errs);
        for message in self.broker.problems() {
            errs.push(ConfigError::new("", "", message));
        }
        for message in self.metrics.problems() {
            errs.push(ConfigError::new("", "", message));
        }
        sort_by_printer(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.into())
        }
    }

    fn printer_refs(&self) -> Vec<PrinterRef<'_>> {
        self.printers
            .iter()
            .enumerate()
            .map(|(index, printer)| PrinterRef {
                index,
                printer,
                model_known: true,
            })
            .collect()
    }

    /// Moonraker printers reach printgate through its broker: it must be on.
    fn check_moonraker_broker(&self, printers: &[PrinterConfig], errs: &mut Vec<ConfigError>) {
        if self.broker.mode != crate::broker::config::BrokerMode::Off {
            return;
        }
        if let Some((i, p)) = printers
            .iter()
            .enumerate()
            .find(|(_, p)| p.kind == PrinterKind::Moonraker)
        {
            errs.push(ConfigError::new(
                format!("printers[{i}].kind"),
                "\"moonraker\"",
                format!(
                    "{} is a Moonraker printer, which connects to printgate's MQTT broker, but [broker] mode = \"off\"; set mode = \"embedded\" (or \"external\")",
                    p.name
                ),
            ));
        }
    }

    /// `[safety]` problems; relays must name configured printers.
    fn check_safety(&self, printers: &[PrinterConfig], errs: &mut Vec<ConfigError>) {
        let names: Vec<&str> = printers.iter().map(|p| p.name.as_str()).collect();
        for message in self.safety.validate(&names) {
            errs.push(ConfigError::new("", "", message));
        }
        for message in self.alerts.validate() {
            errs.push(ConfigError::new("", "", message));
        }
    }

    fn check_sections(&self, errs: &mut Vec<ConfigError>) {
        check_data_dir(&self.data_dir, errs);
        let l = &self.link;
        let mut r = RangeCheck { errs };
        r.check(
            "web.max_upload_mb",
            self.web.max_upload_mb,
            1,
            16 * 1024,
            "MiB",
            default_max_upload_mb(),
        );
        r.check(
            "link.keepalive_secs",
            l.keepalive_secs,
            1,
            600,
            "seconds",
            30,
        );
        r.check("link.silence_secs", l.silence_secs, 1, 3600, "seconds", 60);
        r.check(
            "link.silence_reconnect_secs",
            l.silence_reconnect_secs,
            1,
            3600,
            "seconds",
            30,
        );
        r.check(
            "link.backoff_min_ms",
            l.backoff_min_ms,
            1,
            60_000,
            "milliseconds",
            1000,
        );
        r.check(
            "link.backoff_max_ms",
            l.backoff_max_ms,
            1,
            3_600_000,
            "milliseconds",
            30_000,
        );
        if l.backoff_max_ms < l.backoff_min_ms && l.backoff_max_ms >= 1 {
            r.errs.push(ConfigError::new(
                "link.backoff_max_ms",
                l.backoff_max_ms.to_string(),
                format!(
                    "is smaller than link.backoff_min_ms = {}; the cap must be at least the start value",
                    l.backoff_min_ms
                ),
            ));
        }
        r.check(
            "link.auth_backoff_secs",
            l.auth_backoff_secs,
            1,
            86_400,
            "seconds",
            300,
        );
        r.check(
            "link.pushall_min_interval_ms",
            l.pushall_min_interval_ms,
            0,
            600_000,
            "milliseconds",
            3000,
        );

        let d = &self.dispatch;
        r.check(
            "dispatch.plate_clear_ttl_secs",
            d.plate_clear_ttl_secs,
            1,
            604_800,
            "seconds",
            1800,
        );
        r.check(
            "dispatch.start_window_secs",
            d.start_window_secs,
            1,
            600,
            "seconds",
            60,
        );
        r.check(
            "dispatch.report_max_age_secs",
            d.report_max_age_secs,
            1,
            600,
            "seconds",
            10,
        );
        if d.report_max_age_secs > d.start_window_secs && d.start_window_secs >= 1 {
            r.errs.push(ConfigError::new(
                "dispatch.report_max_age_secs",
                d.report_max_age_secs.to_string(),
                format!(
                    "is longer than dispatch.start_window_secs = {}; a report that old may predate the start decision; use at most {} (default 10)",
                    d.start_window_secs, d.start_window_secs
                ),
            ));
        }
        r.check(
            "dispatch.confirm_phase_a_secs",
            d.confirm_phase_a_secs,
            1,
            3600,
            "seconds",
            90,
        );
        r.check(
            "dispatch.confirm_phase_b_secs",
            d.confirm_phase_b_secs,
            1,
            3600,
            "seconds",
            180,
        );
    }
}

/// `printgate check-config`: prints `config OK: N printers` and returns 0, or prints every
/// problem on stderr and returns 2.
pub fn check_config_cli(path: &Path) -> i32 {
    match Config::load(path) {
        Ok(config) => {
            let n = config.printers.len();
            println!("config OK: {n} printer{}", if n == 1 { "" } else { "s" });
            0
        }
        Err(errors) => {
            let n = errors.len();
            eprintln!(
                "{}: {n} problem{} found:",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            eprintln!("{errors}");
            2
        }
    }
}

/// A TOML syntax error with its 1-based line and column (columns count characters).
fn syntax_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let location = match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!(" line {line}, column {column}")
        }
        None => String::new(),
    };
    ConfigError::new(
        "",
        "",
        format!(
            "{origin}{}{location}: TOML syntax error: {}; fix the file at that spot (text values need double quotes, sections are written [web] or [[printers]])",
            if location.is_empty() { "" } else { ":" },
            e.message().trim_end()
        ),
    )
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Group problems: the file and its sections first, then printer by printer (keeping the order
/// in which they were found within each group).
fn sort_by_printer(errs: &mut [ConfigError]) {
    errs.sort_by_key(|e| {
        e.key
            .strip_prefix("printers[")
            .and_then(|r| r.split_once(']'))
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .map_or(0, |i| i + 1)
    });
}

/// Access codes as written (also under misspelled keys), so that no message can leak them.
fn access_codes_in(table: &toml::Table) -> Vec<String> {
    let mut codes = Vec::new();
    if let Some(toml::Value::Array(items)) = table.get("printers") {
        for item in items {
            if let toml::Value::Table(t) = item {
                for (k, v) in t {
                    if let (true, toml::Value::String(s)) =
                        (k.to_ascii_lowercase().contains("code"), v)
                        && s.chars().count() >= 6
                    {
                        codes.push(s.clone());
                    }
                }
            }
        }
    }
    codes
}

/// Last line of defence: no message or value may contain an access code.
fn scrub(errs: &mut [ConfigError], secrets: &[String]) {
    for e in errs {
        for s in secrets {
            if e.message.contains(s.as_str()) {
                e.message = e.message.replace(s.as_str(), "<hidden>");
            }
            if e.value.contains(s.as_str()) {
                e.value = e.value.replace(s.as_str(), "<hidden>");
            }
        }
    }
}

/// How an access code is shown: its length only.
fn hidden(value: Option<&toml::Value>) -> String {
    match value {
        Some(toml::Value::String(s)) => hidden_len(s),
        _ => "<hidden>".to_string(),
    }
}

fn hidden_len(s: &str) -> String {
    let n = s.chars().count();
    format!("<{n} hidden character{}>", if n == 1 { "" } else { "s" })
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("code") || k.contains("key") || k.contains("password")
}

/// Parse the whole table leniently: every section and every printer is deserialized on its
/// own, unknown keys are collected one by one, so one mistake does not hide the others.
fn parse_table(mut table: toml::Table, errs: &mut Vec<ConfigError>) -> Option<Config> {
    let raw_printers = table.remove("printers");

    // web.listen gets its own message (serde's "invalid socket address syntax" is cryptic).
    if let Some(toml::Value::Table(web)) = table.get_mut("web")
        && let Some(listen) = web.get("listen")
    {
        let ok = matches!(listen, toml::Value::String(s) if s.parse::<SocketAddr>().is_ok());
        if !ok {
            errs.push(ConfigError::new(
                "web.listen",
                render(listen),
                "not an IP address with a port; write e.g. \"0.0.0.0:8080\" (all interfaces) or \"192.168.1.10:8080\"",
            ));
            web.remove("listen");
        }
    }

    let config: Option<Config> = deserialize_lenient("", table, errs);

    let mut printers = Vec::new();
    let mut all_printers_parsed = true;
    match raw_printers {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                let prefix = format!("printers[{i}]");
                match item {
                    toml::Value::Table(t) => match parse_printer(&prefix, t, errs) {
                        Some((p, model_known)) => printers.push((i, p, model_known)),
                        None => all_printers_parsed = false,
                    },
                    other => {
                        all_printers_parsed = false;
                        errs.push(ConfigError::new(
                            prefix,
                            render(&other),
                            "each printer must be a [[printers]] table with name, model, serial, host and access_code",
                        ));
                    }
                }
            }
        }
        Some(other) => {
            all_printers_parsed = false;
            errs.push(ConfigError::new(
                "printers",
                render(&other),
                "printers are written as [[printers]] tables, one per printer (see deploy/printgate.example.toml)",
            ));
        }
    }

    let refs: Vec<PrinterRef<'_>> = printers
        .iter()
        .map(|(index, printer, model_known)| PrinterRef {
            index: *index,
            printer,
            model_known: *model_known,
        })
        .collect();
    // Everything that parsed is checked, so that one run shows every problem.
    if let Some(config) = &config {
        config.check_sections(errs);
    }
    check_printers(&refs, errs);
    if let Some(config) = &config {
        let parsed: Vec<PrinterConfig> = refs.iter().map(|r| r.printer.clone()).collect();
        config.check_safety(&parsed, errs);
        config.check_moonraker_broker(&parsed, errs);
    }
    let complete = all_printers_parsed && refs.iter().all(|r| r.model_known);
    let mut config = config?;
    if !complete {
        return None;
    }
    config.printers = printers.into_iter().map(|(_, p, _)| p).collect();
    Some(config)
}

/// One printer table: the model name is normalised (`x1c`, `A1 mini` are accepted) and an
/// unknown one reported here with the list of valid names.
fn parse_printer(
    prefix: &str,
    mut t: toml::Table,
    errs: &mut Vec<ConfigError>,
) -> Option<(PrinterConfig, bool)> {
    let mut model_known = true;
    let klipper_model = matches!(t.get("model"), Some(toml::Value::String(m)) if Model::parse(m) == Some(Model::Klipper));
    if klipper_model && !t.contains_key("kind") {
        t.insert("kind".into(), toml::Value::String("moonraker".into()));
    }
    let moonraker = matches!(t.get("kind"), Some(toml::Value::String(k)) if k.eq_ignore_ascii_case("moonraker"));
    if moonraker {
        // Bambu-only keys a Moonraker printer leaves out (set ones are reported later).
        for key in ["serial", "access_code"] {
            t.entry(key)
                .or_insert_with(|| toml::Value::String(String::new()));
        }
    }
    if moonraker && !t.contains_key("model") {
        t.insert(
            "model".into(),
            toml::Value::String(Model::Klipper.config_name().into()),
        );
    }
    if let Some(toml::Value::String(name)) = t.get("model") {
        match Model::parse(name) {
            Some(m) => {
                t.insert("model".into(), toml::Value::String(m.config_name().into()));
            }
            None => {
                errs.push(ConfigError::new(
                    format!("{prefix}.model"),
                    render(&toml::Value::String(name.clone())),
                    format!("unknown printer model; use one of {}", model_list()),
                ));
                model_known = false;
                // A placeholder so the rest of the printer is still checked.
                t.insert(
                    "model".into(),
                    toml::Value::String(Model::X1C.config_name().into()),
                );
            }
        }
    }
    deserialize_lenient::<PrinterConfig>(prefix, t, errs).map(|p| (p, model_known))
}

/// Deserialize `T` from `table`, collecting errors: an unknown key is reported and removed and
/// the attempt repeated; a bad value is reported and removed (its default applies, or a later
/// "missing" error is suppressed). Bounded by the number of keys in the table.
fn deserialize_lenient<T: DeserializeOwned>(
    prefix: &str,
    mut table: toml::Table,
    errs: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut reported: HashSet<Vec<String>> = HashSet::new();
    let mut missing = false;
    let attempts = count_keys(&table) + 8;
    for _ in 0..attempts {
        let err = match T::deserialize(toml::Value::Table(table.clone())) {
            Ok(v) => return (!missing).then_some(v),
            Err(e) => e,
        };
        let mut path = error_keys(&err);
        let message = err.message().trim_end().to_string();
        if let Some((field, valid)) = unknown_field(&message) {
            path.push(field);
            errs.push(unknown_key_error(prefix, &path, &valid));
            if !remove_at(&mut table, &path) {
                return None;
            }
        } else if let Some(field) = missing_field(&message) {
            path.push(field);
            if !reported.insert(path.clone()) {
                return None;
            }
            errs.push(missing_key_error(prefix, &path));
            // A placeholder lets the next attempt find further missing keys; the result is
            // discarded.
            missing = true;
            // The model placeholder must be a valid name or it would fail in its turn.
            let placeholder = if path.last().is_some_and(|f| f == "model") {
                Model::X1C.config_name()
            } else {
                ""
            };
            if !insert_at(&mut table, &path, toml::Value::String(placeholder.into())) {
                return None;
            }
        } else {
            if path.is_empty() || reported.contains(&path) {
                return None;
            }
            let key = join_key(prefix, &path);
            let secret = path.last().is_some_and(|k| is_secret_key(k));
            let value = value_at(&table, &path);
            errs.push(if secret {
                ConfigError::new(
                    key,
                    hidden(value),
                    "the access code must be text in double quotes: the 8 characters shown on the printer's screen",
                )
            } else {
                ConfigError::new(
                    key,
                    value.map(render).unwrap_or_default(),
                    format!(
                        "wrong type or value ({message}); see deploy/printgate.example.toml for the expected form"
                    ),
                )
            });
            if !remove_at(&mut table, &path) {
                return None;
            }
            reported.insert(path);
        }
    }
    None
}

fn count_keys(table: &toml::Table) -> usize {
    table
        .values()
        .map(|v| match v {
            toml::Value::Table(t) => 1 + count_keys(t),
            _ => 1,
        })
        .sum()
}

/// The key path toml attached to a deserialization error (`in `web.listen`` in its Display).
fn error_keys(err: &toml::de::Error) -> Vec<String> {
    let shown = err.to_string();
    shown
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `").and_then(|r| r.strip_suffix('`')))
        .map(|k| k.split('.').map(str::to_string).collect())
        .unwrap_or_default()
}

/// `unknown field `x`, expected one of `a`, `b`` → ("x", ["a", "b"]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let valid = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), valid))
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split_once('`')?.0.to_string())
}

fn join_key(prefix: &str, path: &[String]) -> String {
    let mut key = prefix.to_string();
    for p in path {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(p);
    }
    key
}

fn table_label(prefix: &str, path: &[String]) -> String {
    let parents = path.get(..path.len().saturating_sub(1)).unwrap_or(&[]);
    if prefix.starts_with("printers[") && parents.is_empty() {
        "[[printers]]".to_string()
    } else if prefix.is_empty() && parents.is_empty() {
        "at the top level".to_string()
    } else {
        let name = join_key(
            if prefix.starts_with("printers[") {
                "printers"
            } else {
                prefix
            },
            parents,
        );
        format!("[{name}]")
    }
}

fn unknown_key_error(prefix: &str, path: &[String], valid: &[String]) -> ConfigError {
    let field = path.last().map(String::as_str).unwrap_or_default();
    let place = table_label(prefix, path);
    let place = if place.starts_with('[') {
        format!("in {place}")
    } else {
        place
    };
    let mut message = if valid.is_empty() {
        format!("unknown key; no keys are allowed {place}")
    } else {
        format!("unknown key; valid keys {place}: {}", valid.join(", "))
    };
    if let Some(guess) = closest(field, valid) {
        message.push_str(&format!(" (did you mean {guess}?)"));
    }
    ConfigError::new(join_key(prefix, path), "", message)
}

fn missing_key_error(prefix: &str, path: &[String]) -> ConfigError {
    let field = path.last().map(String::as_str).unwrap_or_default();
    let message = match (prefix.starts_with("printers["), field) {
        (false, "data_dir") => {
            "missing; add data_dir = \"/var/lib/printgate\" (where the database and files are kept)"
                .to_string()
        }
        (true, _) => format!(
            "missing; every [[printers]] needs name, model, serial, host and access_code (add {field} = …)"
        ),
        _ => "missing; add it (see deploy/printgate.example.toml)".to_string(),
    };
    ConfigError::new(join_key(prefix, path), "", message)
}

fn value_at<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        match t.get(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return None,
        }
    }
    t.get(last)
}

fn remove_at(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut t = table;
    for p in parents {
        match t.get_mut(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    t.remove(last).is_some()
}

fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut t = table;
    for p in parents {
        match t.get_mut(p) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    t.insert(last.clone(), value);
    true
}

/// A value as written in TOML, shortened for one-line messages.
fn render(value: &toml::Value) -> String {
    let s = value.to_string();
    let s = s.replace('\n', " ");
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

/// A valid key close to a misspelled one: equal ignoring `_`/`-`/case, one a prefix of the
/// other (`hostname` → `host`), or within edit distance 2.
fn closest(field: &str, valid: &[String]) -> Option<String> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    valid
        .iter()
        .map(|v| {
            let (nv, nf) = (norm(v), norm(field));
            let d = if nv == nf {
                0
            } else if nv.len() >= 3 && nf.len() >= 3 && (nf.starts_with(&nv) || nv.starts_with(&nf))
            {
                1
            } else {
                edit_distance(field, v)
            };
            (d, v)
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

struct RangeCheck<'a> {
    errs: &'a mut Vec<ConfigError>,
}

impl RangeCheck<'_> {
    fn check(&mut self, key: &str, value: u64, lo: u64, hi: u64, unit: &str, default: u64) {
        if value < lo || value > hi {
            self.errs.push(ConfigError::new(
                key,
                value.to_string(),
                format!("must be between {lo} and {hi} {unit} (default {default})"),
            ));
        }
    }
}

fn check_data_dir(dir: &Path, errs: &mut Vec<ConfigError>) {
    let key = "data_dir";
    let value = render(&toml::Value::String(dir.display().to_string()));
    if dir.as_os_str().is_empty() {
        errs.push(ConfigError::new(
            key,
            value,
            "is empty; set it to a directory printgate may write, e.g. \"/var/lib/printgate\"",
        ));
        return;
    }
    if dir.exists() && !dir.is_dir() {
        errs.push(ConfigError::new(
            key,
            value,
            "is a file, not a directory; point data_dir at a directory",
        ));
        return;
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        errs.push(ConfigError::new(
            key,
            value,
            format!(
                "cannot create this directory ({e}); create it and let the printgate user write to it, e.g. sudo install -d -o printgate {}",
                dir.display()
            ),
        ));
        return;
    }
    let probe = dir.join(format!(".printgate-write-test-{}", std::process::id()));
    let written =
        std::fs::write(&probe, b"printgate write test").and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&probe);
        errs.push(ConfigError::new(
            key,
            value,
            format!(
                "printgate cannot write in this directory ({e}); give the printgate user write access, e.g. sudo chown printgate {}",
                dir.display()
            ),
        ));
    }
}

/// A printer to check, with its index in the file.
struct PrinterRef<'a> {
    index: usize,
    printer: &'a PrinterConfig,
    /// False when the model name was not recognised (already reported): skip the serial prefix.
    model_known: bool,
}

fn check_printers(printers: &[PrinterRef<'_>], errs: &mut Vec<ConfigError>) {
    for r in printers {
        check_printer(r, errs);
    }
    // Duplicates: the later entry is reported, naming the earlier one.
    for (pos, r) in printers.iter().enumerate() {
        let earlier = printers.get(..pos).unwrap_or(&[]);
        let p = r.printer;
        if !p.name.is_empty()
            && let Some(first) = earlier
                .iter()
                .find(|o| o.printer.name.to_lowercase() == p.name.to_lowercase())
        {
            errs.push(ConfigError::new(
                format!("printers[{}].name", r.index),
                render(&toml::Value::String(p.name.clone())),
                format!(
                    "printers[{}] already has this name (names are compared ignoring case); give every printer its own name",
                    first.index
                ),
            ));
        }
        if !p.instance_name.is_empty()
            && let Some(first) = earlier.iter().find(|o| {
                o.printer
                    .instance_name
                    .eq_ignore_ascii_case(&p.instance_name)
            })
        {
            errs.push(ConfigError::new(
                format!("printers[{}].instance_name", r.index),
                render(&toml::Value::String(p.instance_name.clone())),
                format!(
                    "printers[{}] already uses this instance_name; every Moonraker needs its own (it names its MQTT topics)",
                    first.index
                ),
            ));
        }
        if !p.serial.is_empty()
            && let Some(first) = earlier
                .iter()
                .find(|o| o.printer.serial.eq_ignore_ascii_case(&p.serial))
        {
            errs.push(ConfigError::new(
                format!("printers[{}].serial", r.index),
                render(&toml::Value::String(p.serial.clone())),
                format!(
                    "printers[{}] already has this serial; list each printer once",
                    first.index
                ),
            ));
        }
    }
    let virtual_printers: Vec<_> = printers
        .iter()
        .map(|r| (r.index, &r.printer.virtual_printer))
        .collect();
    for (i, message) in crate::virtual_printer::config::listen_conflicts(&virtual_printers) {
        let listen = printers
            .iter()
            .find(|r| r.index == i)
            .map(|r| r.printer.virtual_printer.listen.to_string())
            .unwrap_or_default();
        errs.push(ConfigError::new(
            format!("printers[{i}].virtual_printer.listen"),
            render(&toml::Value::String(listen)),
            message,
        ));
    }
}

/// Longest printer name accepted.
pub const MAX_PRINTER_NAME_CHARS: usize = 32;

fn check_printer(r: &PrinterRef<'_>, errs: &mut Vec<ConfigError>) {
    let p = r.printer;
    let key = |k: &str| format!("printers[{}].{k}", r.index);
    let quoted = |s: &str| render(&toml::Value::String(s.to_string()));

    if let Some(problem) = printer_name_problem(&p.name) {
        errs.push(ConfigError::new(
            key("name"),
            quoted(&p.name),
            format!(
                "{problem}; printer names may use only letters, digits, spaces, '-' and '_' (1–{MAX_PRINTER_NAME_CHARS} characters, no space at either end) because they appear in URLs and MQTT topics"
            ),
        ));
    }

    if p.kind == PrinterKind::Moonraker {
        check_moonraker_printer(r, errs);
        return;
    }
    if p.model == Model::Klipper {
        errs.push(ConfigError::new(
            key("model"),
            quoted(p.model.config_name()),
            "Klipper printers are reached through Moonraker; write kind = \"moonraker\" (and instance_name) or choose a Bambu model",
        ));
        return;
    }
    if let Some(problem) = serial_problem(&p.serial, r.model_known.then_some(p.model)) {
        errs.push(ConfigError::new(key("serial"), quoted(&p.serial), problem));
    }

    if !is_valid_host(&p.host) {
        errs.push(ConfigError::new(
            key("host"),
            quoted(&p.host),
            "not an IP address or host name; write just the printer's address, e.g. \"192.168.1.50\" or \"x1c.local\" (no http://, port or path)",
        ));
    }

    let code_len = p.access_code.chars().count();
    if code_len != 8 {
        errs.push(ConfigError::new(
            key("access_code"),
            hidden_len(&p.access_code),
            format!(
                "the LAN access code has exactly 8 characters, this one has {code_len}; copy it from the printer's screen (LAN Only / Access Code)"
            ),
        ));
    }

    for (name, port, default) in [
        ("mqtt_port", p.mqtt_port, 8883),
        ("ftps_port", p.ftps_port, 990),
        ("camera_port", p.camera_port, 6000),
    ] {
        if port == 0 {
            errs.push(ConfigError::new(
                key(name),
                "0",
                format!("port 0 cannot be used; leave the key out to use the printer's standard port {default}"),
            ));
        }
    }
}

/// The keys of a Moonraker printer: instance name, host, HTTP port; no Bambu keys.
fn check_moonraker_printer(r: &PrinterRef<'_>, errs: &mut Vec<ConfigError>) {
    let p = r.printer;
    let key = |k: &str| format!("printers[{}].{k}", r.index);
    let quoted = |s: &str| render(&toml::Value::String(s.to_string()));
    if p.virtual_printer.enabled {
        errs.push(ConfigError::new(
            key("virtual_printer.enabled"),
            "true",
            "virtual printers speak the Bambu LAN protocol and serve Bambu printers only; remove [printers.virtual_printer] from this Moonraker printer",
        ));
    }
    if p.model != Model::Klipper {
        errs.push(ConfigError::new(
            key("model"),
            quoted(p.model.config_name()),
            "a Moonraker printer is a Klipper printer; leave model out (or write model = \"KLIPPER\")",
        ));
    }
    if let Some(problem) = instance_name_problem(&p.instance_name) {
        errs.push(ConfigError::new(
            key("instance_name"),
            quoted(&p.instance_name),
            format!(
                "{problem}; write the instance_name of the [mqtt] section in the printer's moonraker.conf (letters, digits, '-', '_', '.')"
            ),
        ));
    }
    if !is_valid_host(&p.host) {
        errs.push(ConfigError::new(
            key("host"),
            quoted(&p.host),
            "not an IP address or host name; write the address of the printer running Moonraker, e.g. \"192.168.1.60\" or \"voron.local\" (no http://, port or path)",
        ));
    }
    if p.http_port == 0 {
        errs.push(ConfigError::new(
            key("http_port"),
            "0",
            "port 0 cannot be used; leave the key out to use Moonraker's standard port 7125",
        ));
    }
    for (name, set) in [
        ("serial", !p.serial.is_empty()),
        ("access_code", !p.access_code.is_empty()),
    ] {
        if set {
            errs.push(ConfigError::new(
                key(name),
                "(set)",
                format!("{name} belongs to Bambu printers; remove it from this kind = \"moonraker\" printer"),
            ));
        }
    }
}

/// Why a Moonraker `instance_name` cannot be used as the first level of its MQTT topics.
pub fn instance_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("instance_name is missing".into());
    }
    if name.len() > 64 {
        return Some(format!(
            "the name has {} characters (at most 64)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!("{c:?} is not allowed"));
    }
    if name.eq_ignore_ascii_case(crate::broker::topics::ROOT)
        || name.eq_ignore_ascii_case("homeassistant")
    {
        return Some("this name is reserved for printgate's own topics".into());
    }
    None
}

/// Why a printer name is unusable, or `None`.
pub fn printer_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_')))
    {
        return Some(format!("{c:?} is not allowed"));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Some("the name starts or ends with a space".into());
    }
    let n = name.chars().count();
    if n > MAX_PRINTER_NAME_CHARS {
        return Some(format!("the name has {n} characters"));
    }
    None
}

/// Why a serial is malformed for `model` (`None` = model unknown, skip the prefix check).
fn serial_problem(serial: &str, model: Option<Model>) -> Option<String> {
    let n = serial.chars().count();
    if n != 15 {
        return Some(format!(
            "a serial number has 15 characters, this one has {n}; copy it from the printer's screen or sticker"
        ));
    }
    if !serial
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        let upper = serial.to_ascii_uppercase();
        let hint = if upper.chars().all(|c| c.is_ascii_alphanumeric()) {
            format!("; write it as \"{upper}\"")
        } else {
            String::new()
        };
        return Some(format!(
            "a serial number uses only digits and capital letters A–Z{hint}"
        ));
    }
    let model = model?;
    let prefix = serial.get(..3).unwrap_or(serial);
    if prefix == model.serial_prefix() {
        return None;
    }
    let wanted = format!(
        "{} serials start with {}",
        model.config_name(),
        model.serial_prefix()
    );
    Some(
        match Model::ALL.into_iter().find(|m| m.serial_prefix() == prefix) {
            Some(other) => format!(
                "this serial starts with {prefix}, which is a {} serial, but model = \"{}\" ({wanted}); correct the model or the serial",
                other.config_name(),
                model.config_name()
            ),
            None => format!(
                "this serial starts with {prefix} but {wanted}; correct the model or the serial"
            ),
        },
    )
}

/// An IP address (v4 or v6) or an RFC 1123 host name.
pub fn is_valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // An all-numeric last label is a mistyped IP address (192.168.1.300), not a name.
    labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit()))
}
