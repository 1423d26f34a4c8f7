//! The fleet overview: what the other gateways on the shared broker publish (their retained
//! `status`, availability, and each printer's retained `state` and availability under
//! `<prefix>/<gateway>/…`), kept in memory for a read-only page. Nothing here sends anything:
//! a command for another gateway's printer goes to that gateway's own command topics, where its
//! own rules decide.

use crate::broker::topics::{GatewayStatus, ONLINE};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Gateways and printers kept at most (a broker full of strangers cannot fill the memory).
pub const MAX_GATEWAYS: usize = 64;
pub const MAX_PRINTERS_PER_GATEWAY: usize = 512;
/// State payloads larger than this are not looked at.
const MAX_STATE_BYTES: usize = 64 * 1024;

/// One printer of a fleet gateway, as its retained topics say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetPrinter {
    /// Topic segment (`Garage_P1S`).
    pub topic_id: String,
    /// Configured name, from its state.
    pub name: Option<String>,
    pub online: Option<bool>,
    pub gcode_state: Option<String>,
    pub percent: Option<u64>,
    pub job_name: Option<String>,
}

/// One gateway of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetGateway {
    pub id: String,
    /// Its will / availability: `None` before anything was seen.
    pub online: Option<bool>,
    pub status: Option<GatewayStatus>,
    pub printers: BTreeMap<String, FleetPrinter>,
}

/// The fleet as seen on the shared broker.
#[derive(Debug)]
pub struct FleetView {
    prefix: String,
    own: String,
    gateways: Mutex<BTreeMap<String, FleetGateway>>,
}

impl FleetView {
    /// The view of fleet `prefix` from gateway `own`.
    pub fn new(prefix: &str, own: &str) -> Self {
        FleetView {
            prefix: prefix.to_string(),
            own: own.to_string(),
            gateways: Mutex::default(),
        }
    }

    /// This gateway's own id.
    pub fn own_id(&self) -> &str {
        &self.own
    }

    /// Forget everything (a new broker session re-delivers the retained messages).
    pub fn clear(&self) {
        if let Ok(mut g) = self.gateways.lock() {
            g.clear();
        }
    }

    /// Take one message of the fleet's tree into account; others are ignored.
    pub fn observe(&self, topic: &str, payload: &[u8]) {
        let Some(rest) = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let Ok(mut all) = self.gateways.lock() else {
            return;
        };
        let gateway_id = match parts.first() {
            Some(id) if !id.is_empty() => *id,
            _ => return,
        };
        if !all.contains_key(gateway_id) && (payload.is_empty() || all.len() >= MAX_GATEWAYS) {
            return;
        }
        let gw = all
            .entry(gateway_id.to_string())
            .or_insert_with(|| FleetGateway {
                id: gateway_id.to_string(),
                ..FleetGateway::default()
            });
        match parts[1..] {
            ["availability"] => gw.online = Some(payload == ONLINE.as_bytes()),
            ["status"] => gw.status = serde_json::from_slice(payload).ok(),
            [printer, kind @ ("state" | "availability")] if !printer.is_empty() => {
                if payload.is_empty() {
                    gw.printers.remove(printer);
                    return;
                }
                if !gw.printers.contains_key(printer)
                    && gw.printers.len() >= MAX_PRINTERS_PER_GATEWAY
                {
                    return;
                }
                let p = gw
                    .printers
                    .entry(printer.to_string())
                    .or_insert_with(|| FleetPrinter {
                        topic_id: printer.to_string(),
                        ..FleetPrinter::default()
                    });
                if kind == "availability" {
                    p.online = Some(payload == ONLINE.as_bytes());
                } else if payload.len() <= MAX_STATE_BYTES
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
                {
                    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
                    p.name = text("name");
                    p.gcode_state = text("gcode_state");
                    p.job_name = text("job_name");
                    p.percent = v.get("percent").and_then(|x| x.as_u64());
                }
            }
            _ => {}
        }
    }

    /// Every gateway seen, by id.
    pub fn gateways(&self) -> Vec<FleetGateway> {
        self.gateways
            .lock()
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_gateways_printers_apart_and_ignores_other_trees() {
        let f = FleetView::new("printgate", "a");
        f.observe("printgate/a/availability", b"online");
        f.observe("printgate/b/availability", b"offline");
        f.observe(
            "printgate/b/printer_1/state",
            br#"{"name":"printer 1","gcode_state":"RUNNING","percent":40}"#,
        );
        f.observe("printgate/a/printer_1/availability", b"online");
        f.observe("other/b/printer_2/state", b"{}");
        f.observe("printgate/b/printer_3/state", b"not json");
        let g = f.gateways();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].online, Some(true));
        assert_eq!(g[1].online, Some(false));
        let p = &g[1].printers["printer_1"];
        assert_eq!(
            (p.name.as_deref(), p.gcode_state.as_deref(), p.percent),
            (Some("printer 1"), Some("RUNNING"), Some(40))
        );
        assert_eq!(
            g[1].printers.len(),
            2,
            "a bad payload still names the printer"
        );
        f.observe("printgate/b/printer_1/state", b"");
        assert!(!f.gateways()[1].printers.contains_key("printer_1"));
        for i in 0..(MAX_GATEWAYS * 2) {
            f.observe(&format!("printgate/g{i}/availability"), b"online");
        }
        assert_eq!(f.gateways().len(), MAX_GATEWAYS);
    }
}
