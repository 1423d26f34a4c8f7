//! The `printgate/…` topic tree and its payloads (pure; no I/O). The tree is documented in
//! README ("MQTT topics"):
//!
//! - `printgate/availability` — `online`/`offline`, retained; the gateway's will message.
//! - `printgate/status` — retained JSON about the gateway (printers online, safety trip).
//! - `printgate/<printer>/state` — retained JSON: the merged printer state, never secrets.
//! - `printgate/<printer>/availability` — retained `online`/`offline` (the printer link).
//! - `printgate/<printer>/events` — JSON events (job started/finished/unconfirmed, plate, safety).
//! - `printgate/<printer>/cmd/<pause|resume|stop|plate_clear|light|power>` — commands; the answer
//!   comes on `…/cmd/<kind>/result`.
//!
//! `<printer>` is the printer's configured name with spaces written as `_` (see [`topic_ids`]).

use crate::views::PrinterView;
use serde::{Deserialize, Serialize};

pub const ROOT: &str = "printgate";
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// Topic segment for each printer name, in the same order: spaces become `_`; a name that would
/// collide with an earlier one gets `-2`, `-3`, … appended.
pub fn topic_ids(names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let base = name.replace(' ', "_");
        let mut id = base.clone();
        let mut n = 2u32;
        while out.iter().any(|o| o.eq_ignore_ascii_case(&id)) {
            id = format!("{base}-{n}");
            n += 1;
        }
        out.push(id);
    }
    out
}

pub fn gateway_availability() -> String {
    format!("{ROOT}/availability")
}
pub fn gateway_status() -> String {
    format!("{ROOT}/status")
}
pub fn state(printer: &str) -> String {
    format!("{ROOT}/{printer}/state")
}
pub fn availability(printer: &str) -> String {
    format!("{ROOT}/{printer}/availability")
}
pub fn events(printer: &str) -> String {
    format!("{ROOT}/{printer}/events")
}
pub fn cmd(printer: &str, kind: CommandKind) -> String {
    format!("{ROOT}/{printer}/cmd/{}", kind.as_str())
}
pub fn cmd_result(printer: &str, kind: CommandKind) -> String {
    format!("{ROOT}/{printer}/cmd/{}/result", kind.as_str())
}
/// Filter matching every command topic (not the results).
pub fn cmd_filter() -> String {
    format!("{ROOT}/+/cmd/+")
}

/// Where one gateway's tree lives: `printgate` alone, or `<prefix>/<gateway>` in a fleet of
/// gateways that share one broker (`[broker] gateway_id`). Every topic of the gateway is built
/// from it, so two gateways never publish into each other's topics or act on each other's
/// commands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tree {
    root: String,
    /// The fleet's common prefix and this gateway's id, when in a fleet.
    fleet: Option<(String, String)>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            root: ROOT.to_string(),
            fleet: None,
        }
    }
}

impl Tree {
    /// The tree of gateway `id` under `prefix` (`printgate/<id>/…`), or `prefix` alone.
    pub fn new(prefix: &str, gateway_id: Option<&str>) -> Tree {
        match gateway_id {
            Some(id) => Tree {
                root: format!("{prefix}/{id}"),
                fleet: Some((prefix.to_string(), id.to_string())),
            },
            None => Tree {
                root: prefix.to_string(),
                fleet: None,
            },
        }
    }
    pub fn root(&self) -> &str {
        &self.root
    }
    /// This gateway's id in its fleet.
    pub fn gateway_id(&self) -> Option<&str> {
        self.fleet.as_ref().map(|(_, id)| id.as_str())
    }
    /// The fleet's common prefix, when in a fleet.
    pub fn fleet_prefix(&self) -> Option<&str> {
        self.fleet.as_ref().map(|(p, _)| p.as_str())
    }
    pub fn gateway_availability(&self) -> String {
        format!("{}/availability", self.root)
    }
    pub fn gateway_status(&self) -> String {
        format!("{}/status", self.root)
    }
    pub fn state(&self, printer: &str) -> String {
        format!("{}/{printer}/state", self.root)
    }
    pub fn availability(&self, printer: &str) -> String {
        format!("{}/{printer}/availability", self.root)
    }
    pub fn events(&self, printer: &str) -> String {
        format!("{}/{printer}/events", self.root)
    }
    pub fn cmd(&self, printer: &str, kind: CommandKind) -> String {
        format!("{}/{printer}/cmd/{}", self.root, kind.as_str())
    }
    pub fn cmd_result(&self, printer: &str, kind: CommandKind) -> String {
        format!("{}/{printer}/cmd/{}/result", self.root, kind.as_str())
    }
    /// Filter matching this gateway's command topics (not the results).
    pub fn cmd_filter(&self) -> String {
        format!("{}/+/cmd/+", self.root)
    }
    /// `<root>/<printer>/cmd/<kind>` of this tree → (printer topic id, kind).
    pub fn parse_cmd_topic<'a>(&self, topic: &'a str) -> Option<(&'a str, CommandKind)> {
        let rest = topic.strip_prefix(self.root.as_str())?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (printer, cmd, kind) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cmd != "cmd" || printer.is_empty() {
            return None;
        }
        if printer.contains(['+', '#']) {
            return None;
        }
        Some((printer, CommandKind::parse(kind)?))
    }
    /// Filters that show the other gateways of the fleet: their status, availability and
    /// printers' retained state and availability. Empty outside a fleet.
    pub fn fleet_filters(&self) -> Vec<String> {
        let Some(prefix) = self.fleet_prefix() else {
            return Vec::new();
        };
        vec![
            format!("{prefix}/+/status"),
            format!("{prefix}/+/availability"),
            format!("{prefix}/+/+/state"),
            format!("{prefix}/+/+/availability"),
        ]
    }
}

/// The commands clients may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Pause,
    Resume,
    Stop,
    PlateClear,
    Light,
    Power,
}

impl CommandKind {
    pub const ALL: [CommandKind; 6] = [
        CommandKind::Pause,
        CommandKind::Resume,
        CommandKind::Stop,
        CommandKind::PlateClear,
        CommandKind::Light,
        CommandKind::Power,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Stop => "stop",
            CommandKind::PlateClear => "plate_clear",
            CommandKind::Light => "light",
            CommandKind::Power => "power",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
    /// `light` and `power` need `ON`/`OFF`.
    pub fn takes_switch(self) -> bool {
        matches!(self, CommandKind::Light | CommandKind::Power)
    }
}

/// `printgate/<printer>/cmd/<kind>` → (printer topic id, kind). Anything else (results, other
/// depths, unknown kinds, wildcards) → `None`.
pub fn parse_cmd_topic(topic: &str) -> Option<(&str, CommandKind)> {
    let mut parts = topic.split('/');
    let (root, printer, cmd, kind) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || root != ROOT || cmd != "cmd" || printer.is_empty() {
        return None;
    }
    if printer.contains(['+', '#']) {
        return None;
    }
    Some((printer, CommandKind::parse(kind)?))
}

/// A parsed command payload: an optional switch value and an optional request id echoed in the
/// result. Accepted: empty, `PRESS`, `ON`/`OFF` (any case, also `true`/`false`/`1`/`0`), or JSON
/// `{"id": "...", "on": true}` / `{"id": "...", "state": "ON"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandPayload {
    pub on: Option<bool>,
    pub id: Option<String>,
}

/// Largest command payload looked at.
pub const MAX_CMD_PAYLOAD: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload larger than {MAX_CMD_PAYLOAD} bytes")]
    TooLarge,
    #[error("payload is not UTF-8 text")]
    NotText,
    #[error("{0} needs ON or OFF (or JSON {{\"on\": true}})")]
    NeedsSwitch(&'static str),
    #[error("payload {0:?} not understood; send ON, OFF, PRESS, or JSON {{\"id\": \"…\"}}")]
    Unknown(String),
}

fn switch_word(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Some(true),
        "off" | "false" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_cmd_payload(
    kind: CommandKind,
    payload: &[u8],
) -> Result<CommandPayload, PayloadError> {
    if payload.len() > MAX_CMD_PAYLOAD {
        return Err(PayloadError::TooLarge);
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| PayloadError::NotText)?
        .trim();
    let parsed = if text.starts_with('{') {
        #[derive(Deserialize)]
        struct Json {
            id: Option<serde_json::Value>,
            on: Option<bool>,
            state: Option<String>,
        }
        let j: Json = serde_json::from_str(text)
            .map_err(|_| PayloadError::Unknown(text.chars().take(40).collect()))?;
        CommandPayload {
            on: j.on.or_else(|| j.state.as_deref().and_then(switch_word)),
            id: j.id.map(|v| match v {
                serde_json::Value::String(s) => s.chars().take(64).collect(),
                other => other.to_string().chars().take(64).collect(),
            }),
        }
    } else if text.is_empty() || text.eq_ignore_ascii_case("press") {
        CommandPayload::default()
    } else if let Some(on) = switch_word(text) {
        CommandPayload {
            on: Some(on),
            id: None,
        }
    } else {
        return Err(PayloadError::Unknown(text.chars().take(40).collect()));
    };
    if kind.takes_switch() && parsed.on.is_none() {
        return Err(PayloadError::NeedsSwitch(kind.as_str()));
    }
    Ok(parsed)
}

/// The answer on `…/cmd/<kind>/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub ok: bool,
    /// What happened, in words a person understands.
    pub message: String,
    /// The request id from the command payload, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The retained `state` payload: the page's view of the printer plus gateway-side facts.
#[derive(Debug, Clone, Serialize)]
pub struct StatePayload {
    #[serde(flatten)]
    pub printer: PrinterView,
    /// Estimated end of the job, RFC 3339 in UTC (from the remaining time), while printing.
    pub eta: Option<String>,
    /// A print error or a fatal/serious HMS message is present.
    pub error: bool,
    /// `true` once a person tapped "plate clear" (unknown = occupied).
    pub plate_clear: Option<bool>,
    pub safety_tripped: Option<bool>,
    /// Relay power of this printer, if a relay is configured.
    pub power_on: Option<bool>,
}

/// Gateway facts the printer view does not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayFacts {
    pub plate_clear: Option<bool>,
    pub safety_tripped: Option<bool>,
    pub power_on: Option<bool>,
}

pub fn state_payload(
    view: PrinterView,
    facts: GatewayFacts,
    now: chrono::DateTime<chrono::Utc>,
) -> StatePayload {
    let active = matches!(view.gcode_state.as_str(), "PREPARE" | "RUNNING" | "PAUSE");
    let eta = view.remaining_minutes.filter(|_| active).map(|m| {
        (now + chrono::Duration::minutes(i64::from(m)))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let error = view.print_error.is_some() || view.hms.iter().any(|h| matches!(h.severity, 1 | 2));
    StatePayload {
        printer: view,
        eta,
        error,
        plate_clear: facts.plate_clear,
        safety_tripped: facts.safety_tripped,
        power_on: facts.power_on,
    }
}

/// One entry on `printgate/<printer>/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPayload {
    /// e.g. `job_started`, `job_finished`, `job_unconfirmed`, `plate_clear`, `safety_trip`.
    pub kind: String,
    pub detail: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// The retained gateway `status` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub version: String,
    pub printers: usize,
    pub printers_online: usize,
    pub safety_tripped: Option<bool>,
    /// The gateway's id in a fleet (`[broker] gateway_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// Its web interface, where its printers are controlled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_are_unique_and_space_free() {
        assert_eq!(
            topic_ids(&["Garage P1S", "Garage_P1S", "x1c", "garage_p1s"]),
            ["Garage_P1S", "Garage_P1S-2", "x1c", "garage_p1s-3"]
        );
    }

    #[test]
    fn a_fleet_tree_parses_only_its_own_commands() {
        let a = Tree::new("printgate", Some("farm-a"));
        let b = Tree::new("printgate", Some("farm-b"));
        for k in CommandKind::ALL {
            let t = a.cmd("printer_1", k);
            assert_eq!(t, format!("printgate/farm-a/printer_1/cmd/{}", k.as_str()));
            assert_eq!(a.parse_cmd_topic(&t), Some(("printer_1", k)));
            assert_eq!(b.parse_cmd_topic(&t), None, "{t}");
            assert_eq!(a.parse_cmd_topic(&a.cmd_result("printer_1", k)), None);
        }
        assert_eq!(
            a.parse_cmd_topic("printgate/farm-ab/printer_1/cmd/stop"),
            None
        );
        assert_eq!(a.cmd_filter(), "printgate/farm-a/+/cmd/+");
        let single = Tree::default();
        assert_eq!(single.state("x"), state("x"));
        assert_eq!(
            single.parse_cmd_topic("printgate/x/cmd/stop"),
            parse_cmd_topic("printgate/x/cmd/stop")
        );
        assert!(single.fleet_filters().is_empty());
        assert_eq!(a.fleet_filters()[2], "printgate/+/+/state");
    }

    #[test]
    fn command_topics_round_trip() {
        for k in CommandKind::ALL {
            let t = cmd("Garage_P1S", k);
            assert_eq!(parse_cmd_topic(&t), Some(("Garage_P1S", k)));
            assert_eq!(parse_cmd_topic(&cmd_result("Garage_P1S", k)), None);
        }
        for bad in [
            "printgate/x/cmd/explode",
            "printgate/+/cmd/stop",
            "printgate//cmd/stop",
            "other/x/cmd/stop",
            "printgate/x/state",
            "printgate/x/cmd",
        ] {
            assert_eq!(parse_cmd_topic(bad), None, "{bad}");
        }
    }

    #[test]
    fn command_payloads() {
        let p = |k, s: &str| parse_cmd_payload(k, s.as_bytes());
        assert_eq!(p(CommandKind::Pause, ""), Ok(CommandPayload::default()));
        assert_eq!(
            p(CommandKind::Pause, "PRESS"),
            Ok(CommandPayload::default())
        );
        assert_eq!(p(CommandKind::Light, "on").unwrap().on, Some(true));
        assert_eq!(p(CommandKind::Power, "OFF").unwrap().on, Some(false));
        assert_eq!(
            p(CommandKind::Power, r#"{"id":"r1","state":"ON"}"#),
            Ok(CommandPayload {
                on: Some(true),
                id: Some("r1".into())
            })
        );
        assert_eq!(
            p(CommandKind::Stop, r#"{"id":7}"#).unwrap().id.as_deref(),
            Some("7")
        );
        assert!(matches!(
            p(CommandKind::Light, ""),
            Err(PayloadError::NeedsSwitch("light"))
        ));
        assert!(matches!(
            p(CommandKind::Stop, "now!"),
            Err(PayloadError::Unknown(_))
        ));
        assert_eq!(
            parse_cmd_payload(CommandKind::Stop, &[b' '; 2000]),
            Err(PayloadError::TooLarge)
        );
        assert_eq!(
            parse_cmd_payload(CommandKind::Stop, &[0xff]),
            Err(PayloadError::NotText)
        );
    }
}
