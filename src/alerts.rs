//! Alerts to people who are not looking at the page: an ntfy topic (push notification on the
//! phone), a generic JSON webhook (Home Assistant, Node-RED, …) and an optional buzzer on a GPIO
//! output. Configured in `[alerts]`, plus ntfy/webhook targets added in Settings →
//! Notifications (stored in the database, handed over with [`Notifier::set_stored_targets`]);
//! every target is rate-limited on its own so that a flapping
//! input or a flaky printer cannot flood a phone, while safety trips are never held back by the
//! hourly budget.
//!
//! [`Notifier::notify`] never waits for the network: each delivery runs in its own task with a
//! timeout, and the outcome is logged and published on [`Notifier::deliveries`]. The settings
//! page's test button calls [`Notifier::test`], which waits and reports every target's result.
//! [`printer_alerts`] and [`unconfirmed_jobs`] are the pure rules for the non-safety alerts
//! (print finished, printer offline while printing, job unconfirmed).

pub mod http;

use crate::printer::{GcodeState, PrinterSnapshot};
use crate::safety::gpio::OutputPin;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// `[alerts]` in printgate.toml.
///
/// ```toml
/// [alerts]
/// repeat_after_secs = 300   # the same alert (kind + printer) at most this often per target
/// max_per_hour = 30         # per target; safety trips are exempt
///
/// [[alerts.targets]]
/// kind = "ntfy"
/// url = "https://ntfy.sh/my-secret-printgate-topic"
/// # token = "tk_…"          # for a protected topic
///
/// [[alerts.targets]]
/// kind = "webhook"
/// url = "http://homeassistant.local:8123/api/webhook/printgate"
///
/// [[alerts.targets]]
/// kind = "buzzer"
/// pin = 23
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default)]
    pub targets: Vec<AlertTarget>,
    /// The same alert (kind and printer) is sent to a target at most once in this many seconds.
    #[serde(default = "default_repeat_after")]
    pub repeat_after_secs: u64,
    /// At most this many alerts per target in any hour; safety trips are always sent.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
}

fn default_repeat_after() -> u64 {
    300
}
fn default_max_per_hour() -> u32 {
    30
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            targets: Vec::new(),
            repeat_after_secs: default_repeat_after(),
            max_per_hour: default_max_per_hour(),
        }
    }
}

/// One place alerts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertTarget {
    /// POST the message to an ntfy topic URL (`https://ntfy.sh/<topic>` or a self-hosted server)
    /// with `Title`, `Priority` and `Tags` headers.
    Ntfy {
        url: String,
        /// Access token for a protected topic (sent as `Authorization: Bearer …`).
        #[serde(default)]
        token: Option<String>,
    },
    /// POST a JSON object (`kind`, `severity`, `title`, `message`, `printer`, `at_unix_ms`).
    Webhook { url: String },
    /// Pulse a GPIO output (a buzzer module): three pulses for a safety trip, one otherwise.
    Buzzer {
        /// BCM GPIO number.
        pin: u8,
        #[serde(default = "default_pulse_ms")]
        pulse_ms: u64,
        /// The buzzer sounds when the pin is low.
        #[serde(default)]
        active_low: bool,
    },
}

fn default_pulse_ms() -> u64 {
    700
}

impl AlertTarget {
    /// Short label for logs and the settings page (never includes a token).
    pub fn label(&self) -> String {
        match self {
            AlertTarget::Ntfy { url, .. } => format!("ntfy {}", redact_url(url)),
            AlertTarget::Webhook { url } => format!("webhook {}", redact_url(url)),
            AlertTarget::Buzzer { pin, .. } => format!("buzzer on GPIO {pin}"),
        }
    }
}

/// Scheme, host and port only: topic names and webhook ids are secrets of a kind.
fn redact_url(url: &str) -> String {
    match url.parse::<axum::http::Uri>() {
        Ok(u) if u.host().is_some() => format!(
            "{}://{}{}/…",
            u.scheme_str().unwrap_or("?"),
            u.host().unwrap_or("?"),
            u.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        _ => "(invalid URL)".into(),
    }
}

/// Longest URL accepted for an HTTP target.
pub const MAX_URL_LEN: usize = 2048;

/// What is wrong with an ntfy/webhook URL, in words for a person (`None` when it is usable).
/// The URL itself is not repeated: it may hold a secret topic or webhook id.
pub fn url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("the URL is empty; write it like https://ntfy.sh/my-topic".into());
    }
    if url.len() > MAX_URL_LEN {
        return Some(format!(
            "the URL is longer than {MAX_URL_LEN} characters; use a shorter one"
        ));
    }
    match url.parse::<axum::http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
            if u.authority().is_some_and(|a| a.as_str().contains('@')) {
                Some("user:password@ in the URL is not supported; for ntfy use an access token instead".into())
            } else {
                None
            }
        }
        _ => Some("not an http(s) URL; write it like https://ntfy.sh/my-topic".into()),
    }
}

impl AlertsConfig {
    /// Every problem in `[alerts]`, each naming the key and the fix.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("alerts.targets[{i}]");
            match t {
                AlertTarget::Ntfy { url, .. } | AlertTarget::Webhook { url } => {
                    match url.parse::<axum::http::Uri>() {
                        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                        _ => errors.push(format!(
                            "{key}.url = \"{url}\": not an http(s) URL; write it like https://ntfy.sh/my-topic"
                        )),
                    }
                }
                AlertTarget::Buzzer { pin, pulse_ms, .. } => {
                    if *pin > crate::safety::config::MAX_BCM_PIN {
                        errors.push(format!(
                            "{key}.pin = {pin}: not a GPIO on the 40-pin header; use a BCM GPIO number 0–{}",
                            crate::safety::config::MAX_BCM_PIN
                        ));
                    }
                    if *pulse_ms == 0 || *pulse_ms > 10_000 {
                        errors.push(format!(
                            "{key}.pulse_ms = {pulse_ms}: use 50–10000 milliseconds"
                        ));
                    }
                }
            }
        }
        if self.repeat_after_secs == 0 {
            errors.push(
                "alerts.repeat_after_secs = 0: must be at least 1 second (300 is a good choice)"
                    .into(),
            );
        }
        if self.max_per_hour == 0 {
            errors.push("alerts.max_per_hour = 0: must be at least 1 (30 is a good choice)".into());
        }
        errors
    }

    /// The buzzer target, if one is configured (its pin is opened by the safety runtime).
    pub fn buzzer(&self) -> Option<(u8, bool)> {
        self.targets.iter().find_map(|t| match t {
            AlertTarget::Buzzer {
                pin, active_low, ..
            } => Some((*pin, *active_low)),
            _ => None,
        })
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Power was cut (smoke, thermal, emergency stop).
    SafetyTrip,
    /// A safety warning that did not cut power (heater fault, door, report silence).
    SafetyWarning,
    /// A person reset the trip.
    SafetyReset,
    /// A print ended; the plate needs clearing before the next job.
    PrintFinished,
    /// A start could not be confirmed; a person must look at the printer.
    JobUnconfirmed,
    /// The printer went offline while printing.
    PrinterOffline,
    /// The settings page's test button.
    Test,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::SafetyTrip => "safety_trip",
            AlertKind::SafetyWarning => "safety_warning",
            AlertKind::SafetyReset => "safety_reset",
            AlertKind::PrintFinished => "print_finished",
            AlertKind::JobUnconfirmed => "job_unconfirmed",
            AlertKind::PrinterOffline => "printer_offline",
            AlertKind::Test => "test",
        }
    }
    pub fn severity(self) -> Severity {
        match self {
            AlertKind::SafetyTrip => Severity::Urgent,
            AlertKind::SafetyWarning | AlertKind::PrinterOffline | AlertKind::JobUnconfirmed => {
                Severity::High
            }
            AlertKind::SafetyReset | AlertKind::PrintFinished | AlertKind::Test => {
                Severity::Default
            }
        }
    }
    fn ntfy_tags(self) -> &'static str {
        match self {
            AlertKind::SafetyTrip => "rotating_light,fire",
            AlertKind::SafetyWarning => "warning",
            AlertKind::SafetyReset => "white_check_mark",
            AlertKind::PrintFinished => "checkered_flag",
            AlertKind::JobUnconfirmed => "question",
            AlertKind::PrinterOffline => "electric_plug",
            AlertKind::Test => "bell",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Default,
    High,
    Urgent,
}

impl Severity {
    /// ntfy priority 1–5.
    fn ntfy_priority(self) -> &'static str {
        match self {
            Severity::Default => "3",
            Severity::High => "4",
            Severity::Urgent => "5",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub title: String,
    pub message: String,
    pub printer: Option<String>,
    pub at_unix_ms: i64,
}

impl Alert {
    pub fn new(kind: AlertKind, printer: Option<&str>, title: &str, message: String) -> Alert {
        Alert {
            kind,
            title: title.to_string(),
            message,
            printer: printer.map(str::to_string),
            at_unix_ms: crate::safety::latch::now_unix_ms(),
        }
    }
    fn key(&self) -> (AlertKind, Option<String>) {
        (self.kind, self.printer.clone())
    }
}

/// The outcome of one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Position in the list of all targets at the time of sending: first `[alerts] targets`,
    /// then the ones added in Settings → Notifications.
    pub target: usize,
    /// Stable id of the target: `config-<index>` or the id of a stored target (see [`TargetRef`]).
    pub target_id: String,
    pub label: String,
    pub kind: AlertKind,
    /// `None` when delivered; else what went wrong.
    pub error: Option<String>,
}

/// Why an alert was not sent to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The same alert went out less than `repeat_after_secs` ago.
    Repeat,
    /// The target's hourly budget is used up.
    Budget,
}

/// Per-target rate limit: the same (kind, printer) at most once per `repeat_after`; at most
/// `max_per_hour` sends per rolling hour, safety trips exempt from the budget (but not from the
/// repeat rule). Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    repeat_after: Duration,
    max_per_hour: usize,
    last_sent: HashMap<(AlertKind, Option<String>), Instant>,
    sent: VecDeque<Instant>,
}

const HOUR: Duration = Duration::from_secs(3600);

impl RateLimiter {
    pub fn new(repeat_after: Duration, max_per_hour: u32) -> RateLimiter {
        RateLimiter {
            repeat_after,
            max_per_hour: usize::try_from(max_per_hour).unwrap_or(usize::MAX),
            last_sent: HashMap::new(),
            sent: VecDeque::new(),
        }
    }

    /// Whether `alert` may go out now; records the send when it may.
    pub fn admit(&mut self, alert: &Alert, now: Instant) -> Result<(), Held> {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            self.sent.pop_front();
        }
        self.last_sent
            .retain(|_, t| now.saturating_duration_since(*t) < self.repeat_after);
        let key = alert.key();
        if alert.kind != AlertKind::Test && self.last_sent.contains_key(&key) {
            return Err(Held::Repeat);
        }
        if alert.kind.severity() != Severity::Urgent && self.sent.len() >= self.max_per_hour {
            return Err(Held::Budget);
        }
        self.last_sent.insert(key, now);
        self.sent.push_back(now);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Timeout of one HTTP delivery.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which target: one of `[alerts] targets` (by position) or one added in Settings →
/// Notifications (by its database id). Written `config-<index>` or `<id>` in URLs and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetRef {
    Config(usize),
    Stored(i64),
}

impl TargetRef {
    /// Parse `config-3` or `17`.
    pub fn parse(s: &str) -> Option<TargetRef> {
        match s.strip_prefix("config-") {
            Some(i) => i.parse().ok().map(TargetRef::Config),
            None => s.parse().ok().filter(|id| *id > 0).map(TargetRef::Stored),
        }
    }
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRef::Config(i) => write!(f, "config-{i}"),
            TargetRef::Stored(id) => write!(f, "{id}"),
        }
    }
}

/// A target added at run time (Settings → Notifications), kept in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTarget {
    pub id: i64,
    /// What the person called it ("Phone", "Home Assistant").
    pub name: String,
    pub target: AlertTarget,
}

/// One target as the settings page shows it: never its URL path, query or token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetSummary {
    pub target_ref: TargetRef,
    /// `None` for targets of the configuration file.
    pub name: Option<String>,
    /// `ntfy`, `webhook` or `buzzer`.
    pub kind: &'static str,
    /// Scheme, host and port only (see [`AlertTarget::label`]).
    pub label: String,
    /// An access token is set (it is never shown).
    pub has_token: bool,
}

impl Serialize for TargetRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl AlertTarget {
    pub fn kind_name(&self) -> &'static str {
        match self {
            AlertTarget::Ntfy { .. } => "ntfy",
            AlertTarget::Webhook { .. } => "webhook",
            AlertTarget::Buzzer { .. } => "buzzer",
        }
    }
    fn needs_http(&self) -> bool {
        !matches!(self, AlertTarget::Buzzer { .. })
    }
}

/// A stored target with its own rate limit.
struct StoredSlot {
    stored: StoredTarget,
    limiter: RateLimiter,
}

/// Sends alerts to the targets of `[alerts]` and to those added in Settings → Notifications.
pub struct Notifier {
    config: AlertsConfig,
    limits: Mutex<Vec<RateLimiter>>,
    /// Targets added at run time (replaced as a whole by [`Notifier::set_stored_targets`]).
    stored: Mutex<Vec<StoredSlot>>,
    buzzer: OnceLock<Arc<dyn OutputPin>>,
    deliveries: broadcast::Sender<Delivery>,
    /// Serialises buzzer patterns so two alerts do not interleave their pulses.
    buzzer_busy: Arc<tokio::sync::Mutex<()>>,
}

/// Why the notifier could not be built.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set up HTTPS for alerts: {0}. Check that the system's CA certificates are installed (ca-certificates package)"
)]
pub struct NotifierError(String);

/// Check that HTTPS deliveries can be made (the system's CA store is readable).
pub fn check_http_ready() -> Result<(), NotifierError> {
    http::check_tls().map_err(NotifierError)
}

impl Notifier {
    /// Build the notifier (an HTTPS client with the system's CA roots when there are HTTP
    /// targets). The buzzer pin is attached later with [`Notifier::attach_buzzer`] by the safety
    /// runtime, which owns the GPIO.
    pub fn new(config: AlertsConfig) -> Result<Notifier, NotifierError> {
        if config.targets.iter().any(AlertTarget::needs_http) {
            check_http_ready()?;
        }
        let limits = config.targets.iter().map(|_| config.limiter()).collect();
        Ok(Notifier {
            config,
            limits: Mutex::new(limits),
            stored: Mutex::new(Vec::new()),
            buzzer: OnceLock::new(),
            deliveries: broadcast::channel(64).0,
            buzzer_busy: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// A notifier with no targets (alerts are only logged).
    pub fn disabled() -> Notifier {
        Notifier {
            config: AlertsConfig::default(),
            limits: Mutex::new(Vec::new()),
            stored: Mutex::new(Vec::new()),
            buzzer: OnceLock::new(),
            deliveries: broadcast::channel(64).0,
            buzzer_busy: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// `[alerts]` as configured (without the targets added in Settings).
    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// Replace the targets added in Settings → Notifications (the whole list, as stored). A
    /// target that stays keeps its rate-limit history. Buzzers are ignored: a GPIO output is
    /// opened only for `[alerts]` at start.
    pub fn set_stored_targets(&self, targets: Vec<StoredTarget>) {
        let mut stored = lock(&self.stored);
        let mut old: HashMap<i64, StoredSlot> =
            stored.drain(..).map(|s| (s.stored.id, s)).collect();
        *stored = targets
            .into_iter()
            .filter(|t| t.target.needs_http())
            .map(|t| {
                let limiter = match old.remove(&t.id) {
                    Some(slot) if slot.stored.target == t.target => slot.limiter,
                    _ => self.config.limiter(),
                };
                StoredSlot { stored: t, limiter }
            })
            .collect();
    }

    /// Every target (configured first, then stored), as the settings page shows them.
    pub fn targets(&self) -> Vec<TargetSummary> {
        let mut out: Vec<TargetSummary> = self
            .config
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| summary(TargetRef::Config(i), None, t))
            .collect();
        out.extend(lock(&self.stored).iter().map(|s| {
            summary(
                TargetRef::Stored(s.stored.id),
                Some(s.stored.name.clone()),
                &s.stored.target,
            )
        }));
        out
    }

    /// How many targets alerts go to.
    pub fn target_count(&self) -> usize {
        self.config.targets.len() + lock(&self.stored).len()
    }

    /// Give the notifier the buzzer's output pin (once; later calls are ignored).
    pub fn attach_buzzer(&self, pin: Arc<dyn OutputPin>) {
        let _ = self.buzzer.set(pin);
    }

    /// Outcomes of deliveries as they finish.
    pub fn deliveries(&self) -> broadcast::Receiver<Delivery> {
        self.deliveries.subscribe()
    }

    /// Ask each target's rate limit (configured first, then stored) and return the admitted
    /// ones with their position.
    fn admit_all(&self, alert: &Alert, now: Instant) -> Vec<(usize, TargetRef, AlertTarget)> {
        let mut out = Vec::new();
        let mut pos = 0;
        {
            let mut limits = lock(&self.limits);
            for (i, (l, t)) in limits.iter_mut().zip(&self.config.targets).enumerate() {
                match l.admit(alert, now) {
                    Ok(()) => out.push((pos, TargetRef::Config(i), t.clone())),
                    Err(held) => {
                        tracing::debug!(
                            target_index = i,
                            ?held,
                            "alert held back by the rate limit"
                        )
                    }
                }
                pos += 1;
            }
        }
        let mut stored = lock(&self.stored);
        for s in stored.iter_mut() {
            match s.limiter.admit(alert, now) {
                Ok(()) => out.push((pos, TargetRef::Stored(s.stored.id), s.stored.target.clone())),
                Err(held) => {
                    tracing::debug!(
                        target_id = s.stored.id,
                        ?held,
                        "alert held back by the rate limit"
                    )
                }
            }
            pos += 1;
        }
        out
    }

    /// Send `alert` to every target whose rate limit admits it, in background tasks. Must be
    /// called inside a tokio runtime.
    pub fn notify(self: &Arc<Self>, alert: Alert) {
        tracing::info!(kind = alert.kind.as_str(), printer = ?alert.printer, "alert: {}: {}", alert.title, alert.message);
        for (pos, r, target) in self.admit_all(&alert, Instant::now()) {
            let me = self.clone();
            let alert = alert.clone();
            tokio::spawn(async move {
                let d = me.deliver(pos, r, &target, &alert).await;
                if let Some(e) = &d.error {
                    tracing::warn!("alert to {} failed: {e}", d.label);
                }
                let _ = me.deliveries.send(d);
            });
        }
    }

    fn test_alert(by_user: &str) -> Alert {
        Alert::new(
            AlertKind::Test,
            None,
            "printgate test alert",
            format!("Test alert sent by {by_user}. If you read this, alerts reach you."),
        )
    }

    /// The test button: send a test alert to every target now (only the repeat rule of the
    /// budget is skipped) and report each result.
    pub async fn test(self: &Arc<Self>, by_user: &str) -> Vec<Delivery> {
        let alert = Self::test_alert(by_user);
        let refs: Vec<TargetRef> = self.targets().iter().map(|t| t.target_ref).collect();
        let mut out = Vec::new();
        for r in refs {
            if let Some(d) = self.test_target(r, &alert).await {
                out.push(d);
            }
        }
        out
    }

    /// The test button of one target: `None` when there is no such target.
    pub async fn test_one(self: &Arc<Self>, target: TargetRef, by_user: &str) -> Option<Delivery> {
        self.test_target(target, &Self::test_alert(by_user)).await
    }

    async fn test_target(&self, r: TargetRef, alert: &Alert) -> Option<Delivery> {
        let now = Instant::now();
        let (pos, target, admitted) = match r {
            TargetRef::Config(i) => {
                let t = self.config.targets.get(i)?.clone();
                let admitted = lock(&self.limits).get_mut(i).map(|l| l.admit(alert, now));
                (i, t, admitted)
            }
            TargetRef::Stored(id) => {
                let mut stored = lock(&self.stored);
                let (j, slot) = stored
                    .iter_mut()
                    .enumerate()
                    .find(|(_, s)| s.stored.id == id)?;
                let t = slot.stored.target.clone();
                let admitted = Some(slot.limiter.admit(alert, now));
                (self.config.targets.len() + j, t, admitted)
            }
        };
        let d = match admitted {
            Some(Ok(())) => self.deliver(pos, r, &target, alert).await,
            _ => Delivery {
                target: pos,
                target_id: r.to_string(),
                label: target.label(),
                kind: alert.kind,
                error: Some(format!(
                    "not sent: this target's limit of {} alerts per hour is used up; try again later",
                    self.config.max_per_hour
                )),
            },
        };
        let _ = self.deliveries.send(d.clone());
        Some(d)
    }

    async fn deliver(
        &self,
        pos: usize,
        r: TargetRef,
        target: &AlertTarget,
        alert: &Alert,
    ) -> Delivery {
        let error = match target {
            AlertTarget::Ntfy { url, token } => self.ntfy(url, token.as_deref(), alert).await,
            AlertTarget::Webhook { url } => self.webhook(url, alert).await,
            AlertTarget::Buzzer { pulse_ms, .. } => self.buzz(*pulse_ms, alert).await,
        }
        .err();
        Delivery {
            target: pos,
            target_id: r.to_string(),
            label: target.label(),
            kind: alert.kind,
            error,
        }
    }

    async fn ntfy(&self, url: &str, token: Option<&str>, alert: &Alert) -> Result<(), String> {
        let mut headers = vec![
            // Header values must be visible ASCII; ntfy decodes RFC 2047 for anything else.
            ("Title", header_safe(&alert.title)),
            (
                "Priority",
                alert.kind.severity().ntfy_priority().to_string(),
            ),
            ("Tags", alert.kind.ntfy_tags().to_string()),
        ];
        if let Some(t) = token {
            headers.push(("Authorization", format!("Bearer {t}")));
        }
        let body = alert.message.clone().into_bytes();
        check(
            http::post(
                url,
                &headers,
                "text/plain; charset=utf-8",
                body,
                HTTP_TIMEOUT,
            )
            .await,
        )
    }

    async fn webhook(&self, url: &str, alert: &Alert) -> Result<(), String> {
        let body = serde_json::json!({
            "source": "printgate",
            "kind": alert.kind,
            "severity": alert.kind.severity(),
            "title": alert.title,
            "message": alert.message,
            "printer": alert.printer,
            "at_unix_ms": alert.at_unix_ms,
        });
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        check(http::post(url, &[], "application/json", body, HTTP_TIMEOUT).await)
    }

    async fn buzz(&self, pulse_ms: u64, alert: &Alert) -> Result<(), String> {
        let pin = self.buzzer.get().cloned().ok_or(
            "the buzzer pin is not set up (the safety runtime opens it at start; check the log for a GPIO error)",
        )?;
        let pulses = if alert.kind.severity() == Severity::Urgent {
            3
        } else {
            1
        };
        let pulse = Duration::from_millis(pulse_ms);
        let _busy = self.buzzer_busy.lock().await;
        for n in 0..pulses {
            if n > 0 {
                tokio::time::sleep(pulse).await;
            }
            pin.set(true);
            tokio::time::sleep(pulse).await;
            pin.set(false);
        }
        Ok(())
    }
}

fn summary(r: TargetRef, name: Option<String>, t: &AlertTarget) -> TargetSummary {
    TargetSummary {
        target_ref: r,
        name,
        kind: t.kind_name(),
        label: t.label(),
        has_token: matches!(t, AlertTarget::Ntfy { token: Some(_), .. }),
    }
}

impl AlertsConfig {
    /// A fresh rate limiter with this configuration's limits.
    fn limiter(&self) -> RateLimiter {
        RateLimiter::new(
            Duration::from_secs(self.repeat_after_secs),
            self.max_per_hour,
        )
    }
}

/// ASCII-only, control characters dropped (for HTTP header values).
fn header_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    out.truncate(200);
    out
}

fn check(sent: Result<http::HttpAnswer, http::HttpError>) -> Result<(), String> {
    match sent {
        Ok(a) if (200..300).contains(&a.status) => Ok(()),
        Ok(a) => {
            let body: String = a.body.chars().take(200).collect();
            Err(format!(
                "the server answered {}{}{}",
                a.status,
                if body.trim().is_empty() { "" } else { ": " },
                body.trim()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Alerts due when a printer's snapshot changes from `prev` to `next`: the print finished (the
/// plate must be cleared), or the link went down while the printer was printing.
pub fn printer_alerts(printer: &str, prev: &PrinterSnapshot, next: &PrinterSnapshot) -> Vec<Alert> {
    let mut out = Vec::new();
    let state = |s: &PrinterSnapshot| {
        s.state
            .as_ref()
            .map(|st| st.gcode_state)
            .unwrap_or(GcodeState::Unknown)
    };
    let (before, after) = (state(prev), state(next));
    if next.link.is_online() && after == GcodeState::Finish && before.is_active() {
        let job = next
            .state
            .as_ref()
            .and_then(|s| s.subtask_name.clone())
            .unwrap_or_else(|| "the print".into());
        out.push(Alert::new(
            AlertKind::PrintFinished,
            Some(printer),
            &format!("{printer}: print finished"),
            format!(
                "{job} finished on {printer}. Remove it, then tap \"Plate clear\" so the next job can start."
            ),
        ));
    }
    if prev.link.is_online() && !next.link.is_online() && before.is_active() {
        out.push(Alert::new(
            AlertKind::PrinterOffline,
            Some(printer),
            &format!("{printer}: offline while printing"),
            format!(
                "printgate lost the connection to {printer} while it was printing ({}). Check the printer and its Wi-Fi.",
                next.link.describe()
            ),
        ));
    }
    out
}

/// Jobs that are `unconfirmed` in `next` but were not in `prev` (ids and names).
pub fn unconfirmed_jobs(
    prev: &crate::jobs::dispatcher::DispatchState,
    next: &crate::jobs::dispatcher::DispatchState,
) -> Vec<Alert> {
    use crate::jobs::model::JobState;
    next.jobs
        .values()
        .filter(|j| j.state == JobState::Unconfirmed)
        .filter(|j| {
            prev.jobs
                .get(&j.id)
                .is_none_or(|p| p.state != JobState::Unconfirmed)
        })
        .map(|j| {
            let printer = j.assigned_printer.as_deref();
            Alert::new(
                AlertKind::JobUnconfirmed,
                printer,
                &format!("job {} unconfirmed", j.name),
                format!(
                    "printgate sent the start of \"{}\"{} but could not confirm it began. Look at the printer; printgate will not send it again.",
                    j.name,
                    printer.map(|p| format!(" to {p}")).unwrap_or_default()
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: AlertKind, printer: Option<&str>) -> Alert {
        Alert::new(kind, printer, "t", "m".into())
    }

    #[test]
    fn repeat_rule_and_hourly_budget() {
        let mut l = RateLimiter::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        let finished = alert(AlertKind::PrintFinished, Some("a"));
        assert_eq!(l.admit(&finished, t0), Ok(()));
        assert_eq!(
            l.admit(&finished, t0 + Duration::from_secs(30)),
            Err(Held::Repeat)
        );
        // Another printer is another alert.
        assert_eq!(
            l.admit(&alert(AlertKind::PrintFinished, Some("b")), t0),
            Ok(())
        );
        assert_eq!(l.admit(&finished, t0 + Duration::from_secs(61)), Ok(()));
        // Budget of 3 per hour used up; a trip still goes out.
        assert_eq!(
            l.admit(
                &alert(AlertKind::PrinterOffline, Some("c")),
                t0 + Duration::from_secs(62)
            ),
            Err(Held::Budget)
        );
        assert_eq!(
            l.admit(
                &alert(AlertKind::SafetyTrip, None),
                t0 + Duration::from_secs(62)
            ),
            Ok(())
        );
        // A second identical trip right after is held (the first already alarmed).
        assert_eq!(
            l.admit(
                &alert(AlertKind::SafetyTrip, None),
                t0 + Duration::from_secs(63)
            ),
            Err(Held::Repeat)
        );
        // An hour later the budget is back.
        assert_eq!(
            l.admit(
                &alert(AlertKind::PrinterOffline, Some("c")),
                t0 + Duration::from_secs(3700)
            ),
            Ok(())
        );
    }

    #[test]
    fn config_parses_and_validates() {
        let cfg: AlertsConfig = toml::from_str(
            r#"
            repeat_after_secs = 60
            [[targets]]
            kind = "ntfy"
            url = "https://ntfy.sh/abc"
            [[targets]]
            kind = "webhook"
            url = "ftp://x"
            [[targets]]
            kind = "buzzer"
            pin = 40
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.targets.len(), 3);
        let errors = cfg.validate();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("alerts.targets[1].url"));
        assert!(errors[1].contains("alerts.targets[2].pin"));
        assert!(
            toml::from_str::<AlertsConfig>(
                "[[targets]]\nkind = \"ntfy\"\nurl = \"https://a\"\nbogus = 1"
            )
            .is_err()
        );
        assert_eq!(
            AlertTarget::Ntfy {
                url: "https://ntfy.sh/secret-topic".into(),
                token: Some("tk".into())
            }
            .label(),
            "ntfy https://ntfy.sh/…"
        );
    }

    #[test]
    fn finish_and_offline_while_printing_alert_once() {
        use crate::printer::{LinkState, PrinterState};
        let snap = |online: bool, state: GcodeState| PrinterSnapshot {
            link: if online {
                LinkState::Online
            } else {
                LinkState::Unreachable("timeout".into())
            },
            state: Some(PrinterState {
                gcode_state: state,
                subtask_name: Some("benchy".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let running = snap(true, GcodeState::Running);
        let finished = snap(true, GcodeState::Finish);
        let a = printer_alerts("p1", &running, &finished);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AlertKind::PrintFinished);
        assert!(a[0].message.contains("benchy"));
        assert!(printer_alerts("p1", &finished, &finished).is_empty());
        let off = snap(false, GcodeState::Running);
        let a = printer_alerts("p1", &running, &off);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AlertKind::PrinterOffline);
        let idle = snap(true, GcodeState::Idle);
        assert!(printer_alerts("p1", &idle, &snap(false, GcodeState::Idle)).is_empty());
    }
}
