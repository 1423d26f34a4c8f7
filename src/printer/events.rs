//! Turns two consecutive snapshots of a printer into the history rows worth keeping
//! (link up/down and state changes, gcode state changes, HMS raised/cleared, print errors).
//! Pure: the app's recorder task feeds it and writes the rows to the store.

use super::{LinkState, PrinterSnapshot};
use serde_json::json;

/// One row for `printer_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterEvent {
    pub kind: &'static str,
    pub detail: serde_json::Value,
}

fn link_kind(prev: &LinkState, next: &LinkState) -> &'static str {
    match (prev.is_online(), next.is_online()) {
        (false, true) => "link_up",
        (true, false) => "link_down",
        _ => "link_state",
    }
}

/// What changed from `prev` to `next` that a person would want in the history.
pub fn diff(prev: &PrinterSnapshot, next: &PrinterSnapshot) -> Vec<PrinterEvent> {
    let mut out = Vec::new();
    if prev.link != next.link {
        out.push(PrinterEvent {
            kind: link_kind(&prev.link, &next.link),
            detail: json!({ "state": next.link, "text": next.link.describe() }),
        });
    }
    let (Some(p), Some(n)) = (prev.state.as_ref(), next.state.as_ref()) else {
        if let (None, Some(n)) = (prev.state.as_ref(), next.state.as_ref()) {
            out.push(PrinterEvent {
                kind: "gcode_state",
                detail: json!({ "from": null, "to": n.gcode_state.as_str() }),
            });
        }
        return out;
    };
    if p.gcode_state != n.gcode_state {
        out.push(PrinterEvent {
            kind: "gcode_state",
            detail: json!({
                "from": p.gcode_state.as_str(),
                "to": n.gcode_state.as_str(),
                "subtask_name": n.subtask_name,
            }),
        });
    }
    for h in n.hms.iter().filter(|h| !p.hms.contains(h)) {
        out.push(PrinterEvent {
            kind: "hms_raised",
            detail: json!({ "code": h.display_code(), "severity": h.severity() }),
        });
    }
    for h in p.hms.iter().filter(|h| !n.hms.contains(h)) {
        out.push(PrinterEvent {
            kind: "hms_cleared",
            detail: json!({ "code": h.display_code() }),
        });
    }
    if p.print_error != n.print_error && n.print_error != 0 {
        out.push(PrinterEvent {
            kind: "print_error",
            detail: json!({ "code": format!("{:04X}_{:04X}", n.print_error >> 16, n.print_error & 0xFFFF) }),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::{GcodeState, HmsEntry, PrinterState};

    fn snap(link: LinkState, state: Option<PrinterState>) -> PrinterSnapshot {
        PrinterSnapshot {
            link,
            state,
            ..Default::default()
        }
    }

    #[test]
    fn link_up_and_down_are_named() {
        let a = snap(LinkState::Connecting, None);
        let b = snap(LinkState::Online, None);
        assert_eq!(diff(&a, &b)[0].kind, "link_up");
        assert_eq!(diff(&b, &a)[0].kind, "link_down");
        assert!(diff(&b, &b).is_empty());
    }

    #[test]
    fn state_and_hms_changes_are_recorded() {
        let idle = PrinterState {
            gcode_state: GcodeState::Idle,
            ..Default::default()
        };
        let mut running = idle.clone();
        running.gcode_state = GcodeState::Running;
        running.hms = vec![HmsEntry {
            attr: 0x0300_0200,
            code: 0x0001_0003,
        }];
        let a = snap(LinkState::Online, Some(idle.clone()));
        let b = snap(LinkState::Online, Some(running));
        let kinds: Vec<_> = diff(&a, &b).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec!["gcode_state", "hms_raised"]);
        let kinds: Vec<_> = diff(&b, &a).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec!["gcode_state", "hms_cleared"]);
    }
}
