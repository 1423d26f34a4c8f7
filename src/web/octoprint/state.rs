//! A printer's state as OctoPrint names it: the state text of `/api/job` and `/api/printer`
//! (`Operational`, `Printing`, `Paused`, `Error`, `Offline`, …) and the `flags` OctoPrint
//! derives from it, for every printer kind. Pure: it reads the vendor-neutral
//! [`PrinterState`] the Bambu and Moonraker links both fill in, and the link's health.
//!
//! | printgate sees | OctoPrint text | flags set |
//! |---|---|---|
//! | link connecting, or online without a report yet, or `UNKNOWN` without a message | `Connecting` | none |
//! | printer unreachable (off, unplugged) | `Offline` | closedOrError |
//! | access code / TLS / certificate refused, or connected but silent | `Offline after error` | closedOrError, error |
//! | `UNKNOWN` with a printer message (Klipper `shutdown` / `error` / `startup`) | `Error` | closedOrError, error |
//! | IDLE, FINISH, FAILED (Klipper standby, complete, cancelled, error) | `Operational` | operational, ready |
//! | the same with a print error or a fatal/serious HMS entry (Bambu) | `Error` | closedOrError, error |
//! | PREPARE, SLICING | `Starting` | operational, printing |
//! | RUNNING (Klipper printing) | `Printing` | operational, printing |
//! | PAUSE (Klipper paused) | `Paused` | operational, paused |
//!
//! `sdReady` is always false (printgate answers `feature.sdSupport: false`).

use crate::printer::bambu::errors::start_blockers;
use crate::printer::{GcodeState, LinkState, PrinterState};
use serde::Serialize;
use std::time::Duration;

/// One of the OctoPrint states printgate reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OctoKind {
    Connecting,
    Offline,
    OfflineAfterError,
    Error,
    Operational,
    Starting,
    Printing,
    Paused,
}

/// OctoPrint's state flags (field names as OctoPrint sends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Flags {
    pub operational: bool,
    pub printing: bool,
    pub cancelling: bool,
    pub pausing: bool,
    pub resuming: bool,
    pub finishing: bool,
    pub closed_or_error: bool,
    pub error: bool,
    pub paused: bool,
    pub ready: bool,
    pub sd_ready: bool,
}

impl OctoKind {
    /// OctoPrint's state text.
    pub fn text(self) -> &'static str {
        match self {
            OctoKind::Connecting => "Connecting",
            OctoKind::Offline => "Offline",
            OctoKind::OfflineAfterError => "Offline after error",
            OctoKind::Error => "Error",
            OctoKind::Operational => "Operational",
            OctoKind::Starting => "Starting",
            OctoKind::Printing => "Printing",
            OctoKind::Paused => "Paused",
        }
    }

    /// The flags OctoPrint sets in this state.
    pub fn flags(self) -> Flags {
        let mut f = Flags::default();
        match self {
            OctoKind::Connecting => {}
            OctoKind::Offline => f.closed_or_error = true,
            OctoKind::OfflineAfterError | OctoKind::Error => {
                f.closed_or_error = true;
                f.error = true;
            }
            OctoKind::Operational => {
                f.operational = true;
                f.ready = true;
            }
            OctoKind::Starting | OctoKind::Printing => {
                f.operational = true;
                f.printing = true;
            }
            OctoKind::Paused => {
                f.operational = true;
                f.paused = true;
            }
        }
        f
    }

    /// Printing or paused: OctoPrint's "active print job".
    pub fn has_active_job(self) -> bool {
        matches!(
            self,
            OctoKind::Starting | OctoKind::Printing | OctoKind::Paused
        )
    }
}

/// A printer's OctoPrint state: kind, and the error text OctoPrint sends with error states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OctoState {
    pub kind: OctoKind,
    pub error: Option<String>,
}

impl OctoState {
    fn of(kind: OctoKind) -> Self {
        OctoState { kind, error: None }
    }
    fn error(kind: OctoKind, why: String) -> Self {
        OctoState {
            kind,
            error: Some(why),
        }
    }
}

/// Map the link's health and the printer's last state (see the module table).
pub fn octo_state(link: &LinkState, state: Option<&PrinterState>) -> OctoState {
    match link {
        LinkState::Online | LinkState::DeveloperModeRequired => {}
        LinkState::Connecting => return OctoState::of(OctoKind::Connecting),
        LinkState::Unreachable(_) => return OctoState::of(OctoKind::Offline),
        LinkState::AccessCodeRejected
        | LinkState::TlsError(_)
        | LinkState::FingerprintChanged { .. }
        | LinkState::Silent => {
            return OctoState::error(OctoKind::OfflineAfterError, link.describe());
        }
    }
    let Some(st) = state else {
        return OctoState::of(OctoKind::Connecting);
    };
    match st.gcode_state {
        GcodeState::Unknown => match &st.status_message {
            Some(m) => OctoState::error(OctoKind::Error, m.clone()),
            None => OctoState::of(OctoKind::Connecting),
        },
        GcodeState::Prepare | GcodeState::Slicing => OctoState::of(OctoKind::Starting),
        GcodeState::Running => OctoState::of(OctoKind::Printing),
        GcodeState::Pause => OctoState::of(OctoKind::Paused),
        GcodeState::Idle | GcodeState::Finish | GcodeState::Failed => {
            // A cancel echo in `print_error` is not an error (zero age: still in its grace).
            let blockers = start_blockers(st, Duration::ZERO);
            if blockers.is_empty() {
                OctoState::of(OctoKind::Operational)
            } else {
                OctoState::error(OctoKind::Error, blockers.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::HmsEntry;

    fn st(g: GcodeState) -> PrinterState {
        PrinterState {
            gcode_state: g,
            ..PrinterState::default()
        }
    }

    fn kind(link: &LinkState, s: Option<&PrinterState>) -> OctoKind {
        octo_state(link, s).kind
    }

    #[test]
    fn every_bambu_state_maps_to_octoprint() {
        let on = LinkState::Online;
        for (g, k) in [
            (GcodeState::Idle, OctoKind::Operational),
            (GcodeState::Finish, OctoKind::Operational),
            (GcodeState::Failed, OctoKind::Operational),
            (GcodeState::Prepare, OctoKind::Starting),
            (GcodeState::Slicing, OctoKind::Starting),
            (GcodeState::Running, OctoKind::Printing),
            (GcodeState::Pause, OctoKind::Paused),
            (GcodeState::Unknown, OctoKind::Connecting),
        ] {
            assert_eq!(kind(&on, Some(&st(g))), k, "{g:?}");
        }
        // Developer Mode missing: still online and reporting.
        let dev = LinkState::DeveloperModeRequired;
        assert_eq!(
            kind(&dev, Some(&st(GcodeState::Running))),
            OctoKind::Printing
        );
        // A print error (not a cancel echo) or a serious HMS entry: Error, with the reason.
        let mut failed = st(GcodeState::Failed);
        failed.print_error = 0x0500_8051;
        let s = octo_state(&on, Some(&failed));
        assert_eq!(s.kind, OctoKind::Error);
        assert!(s.error.unwrap().contains("0500_8051"));
        let mut cancelled = st(GcodeState::Failed);
        cancelled.print_error = 0x0300_400C;
        assert_eq!(kind(&on, Some(&cancelled)), OctoKind::Operational);
        let mut hms = st(GcodeState::Idle);
        hms.hms = vec![HmsEntry {
            attr: 0x0300_0200,
            code: 0x0001_0003,
        }];
        assert_eq!(kind(&on, Some(&hms)), OctoKind::Error);
    }

    #[test]
    fn every_link_state_maps_to_octoprint() {
        let idle = st(GcodeState::Idle);
        assert_eq!(
            kind(&LinkState::Connecting, Some(&idle)),
            OctoKind::Connecting
        );
        assert_eq!(kind(&LinkState::Online, None), OctoKind::Connecting);
        assert_eq!(
            kind(&LinkState::Unreachable("refused".into()), None),
            OctoKind::Offline
        );
        for l in [
            LinkState::AccessCodeRejected,
            LinkState::TlsError("bad".into()),
            LinkState::FingerprintChanged {
                pinned: "a".into(),
                seen: "b".into(),
            },
            LinkState::Silent,
        ] {
            let s = octo_state(&l, Some(&idle));
            assert_eq!(s.kind, OctoKind::OfflineAfterError, "{l:?}");
            assert_eq!(s.error.as_deref(), Some(l.describe().as_str()));
        }
    }

    #[test]
    fn klipper_states_map_to_octoprint() {
        // The Moonraker link's own mapping (print_stats.state, webhooks.state) feeds this one.
        use crate::printer::moonraker::status::KlipperStatus;
        let on = LinkState::Online;
        for (print_state, klippy, k) in [
            ("standby", "ready", OctoKind::Operational),
            ("printing", "ready", OctoKind::Printing),
            ("paused", "ready", OctoKind::Paused),
            ("complete", "ready", OctoKind::Operational),
            ("cancelled", "ready", OctoKind::Operational),
            ("error", "ready", OctoKind::Operational),
            ("printing", "shutdown", OctoKind::Error),
            ("standby", "error", OctoKind::Error),
            ("standby", "startup", OctoKind::Error),
        ] {
            let mut m = KlipperStatus::default();
            m.replace(&serde_json::json!({"status": {
                "print_stats": {"state": print_state, "filename": "cube.gcode"},
                "webhooks": {"state": klippy, "state_message": "MCU 'mcu' shutdown"},
            }}))
            .expect("status");
            let s = m.to_state();
            assert_eq!(kind(&on, Some(&s)), k, "{print_state}/{klippy}");
        }
    }

    #[test]
    fn flags_follow_octoprint() {
        let f = OctoKind::Operational.flags();
        assert!(f.operational && f.ready && !f.printing && !f.error && !f.closed_or_error);
        let f = OctoKind::Paused.flags();
        assert!(f.operational && f.paused && !f.printing && !f.ready);
        let f = OctoKind::Printing.flags();
        assert!(f.operational && f.printing && !f.ready);
        let f = OctoKind::Offline.flags();
        assert!(f.closed_or_error && !f.error && !f.operational);
        let json = serde_json::to_value(OctoKind::Error.flags()).unwrap();
        for key in [
            "operational",
            "printing",
            "cancelling",
            "pausing",
            "resuming",
            "finishing",
            "closedOrError",
            "error",
            "paused",
            "ready",
            "sdReady",
        ] {
            assert!(json[key].is_boolean(), "{key} in {json}");
        }
        assert_eq!(json.as_object().unwrap().len(), 11);
    }
}
