//! The printer read model: what a reader is shown for a printer, computed from its snapshot and
//! its plate (pure, no I/O). The same view feeds the HTML status page, `GET /api/v1/printers`
//! and the MQTT state tree (`broker/topics.rs`), and never contains secrets. It lives below
//! both web/ and broker/ so that neither borrows the other's types.

use crate::jobs::model::{JobState, Millis};
use crate::jobs::plate::PlateState;
use crate::printer::Model;
use crate::printer::{GcodeState, PrinterCommand, PrinterSnapshot};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HmsView {
    pub code: String,
    pub severity: u32,
    pub text: String,
}

/// A printer as the status page and `GET /api/v1/printers` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PrinterView {
    pub name: String,
    pub model: String,
    pub link: String,
    pub online: bool,
    pub gcode_state: String,
    pub percent: Option<u32>,
    pub layer: Option<u32>,
    pub total_layers: Option<u32>,
    pub remaining_minutes: Option<u32>,
    pub nozzle_temp: Option<f64>,
    pub nozzle_target: Option<f64>,
    pub bed_temp: Option<f64>,
    pub bed_target: Option<f64>,
    pub chamber_temp: Option<f64>,
    pub job_name: Option<String>,
    pub print_error: Option<String>,
    /// A message from the printer for people (Klipper: "Klipper is shutdown: …").
    pub printer_message: Option<String>,
    pub hms: Vec<HmsView>,
    /// Seconds since the last report, if any arrived on this connection.
    pub report_age_secs: Option<u64>,
    pub plate: PlateView,
    /// Thumbnail of the plate of the last job started here (what to take off).
    pub thumbnail_url: Option<String>,
    /// Per-printer queue pause.
    pub queue_paused: bool,
    /// The print controls that apply in the reported state (none while the printer is offline).
    pub controls: ControlsView,
}

/// Which print controls a card offers. Only those that make sense in the state the printer
/// reports: Pause while it prints, Resume while it is paused, Stop while a print is on it (or
/// its state is unknown: Stop is the way out). The gateway also refuses Pause and Resume when
/// they do not apply ([`control_not_applicable`]), for a page that was showing an older state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ControlsView {
    pub pause: bool,
    pub resume: bool,
    pub stop: bool,
}

impl ControlsView {
    pub fn any(&self) -> bool {
        self.pause || self.resume || self.stop
    }
}

/// The controls offered for a printer that is `online` (or not) and reports `state`.
pub fn controls_offered(online: bool, state: Option<GcodeState>) -> ControlsView {
    if !online {
        return ControlsView::default();
    }
    let state = state.unwrap_or_default();
    ControlsView {
        pause: control_not_applicable(&PrinterCommand::Pause, state).is_none(),
        resume: control_not_applicable(&PrinterCommand::Resume, state).is_none(),
        stop: state.is_active() || state == GcodeState::Unknown,
    }
}

/// Why `cmd` makes no sense in the state the printer reports (pause while not printing, resume
/// while not paused), or `None`. Stop is always sent when asked: it is the way out, whatever the
/// report.
pub fn control_not_applicable(cmd: &PrinterCommand, state: GcodeState) -> Option<String> {
    match cmd {
        PrinterCommand::Pause
            if !matches!(
                state,
                GcodeState::Prepare | GcodeState::Slicing | GcodeState::Running
            ) =>
        {
            Some(format!(
                "is not printing (it reports {}): there is nothing to pause",
                state.as_str()
            ))
        }
        PrinterCommand::Resume if state != GcodeState::Pause => Some(format!(
            "is not paused (it reports {}): there is nothing to resume",
            state.as_str()
        )),
        _ => None,
    }
}

/// The plate gate of one printer, the most visible thing on its card.
#[derive(Debug, Clone, Serialize, Default, utoipa::ToSchema)]
pub struct PlateView {
    /// `clear`, `occupied` or `unknown`.
    pub state: String,
    /// What the person should do or know.
    pub text: String,
    pub tapped_by: Option<String>,
    /// Minutes until the tap expires.
    pub expires_in_minutes: Option<u64>,
    /// Whether the card offers the Plate clear button: not while the plate is clear, nor while
    /// a print is on the printer (the tap would be refused then).
    pub tap_offered: bool,
}

/// The plate view from the dispatcher's plate state. `now`/`ttl_ms` on the dispatcher clock.
pub fn plate_view(plate: Option<&PlateState>, now: Millis, ttl_ms: Millis) -> PlateView {
    match plate {
        Some(PlateState::Clear(tap)) => {
            let left = (tap.at + ttl_ms).saturating_sub(now);
            PlateView {
                state: "clear".into(),
                text: format!("Plate clear — tapped by {}; the next job may start", tap.by),
                tapped_by: Some(tap.by.clone()),
                expires_in_minutes: Some(left.div_ceil(60_000)),
                tap_offered: false,
            }
        }
        Some(PlateState::Occupied) => PlateView {
            state: "occupied".into(),
            text: "Remove the print, then tap Plate clear".into(),
            tap_offered: true,
            ..Default::default()
        },
        _ => PlateView {
            state: "unknown".into(),
            text: "Plate not checked — look at the printer, clear it, then tap Plate clear".into(),
            tap_offered: true,
            ..Default::default()
        },
    }
}

/// What keeps a plate-clear tap from being accepted while a print is on the printer: it reports
/// a print in progress (PREPARE, RUNNING, PAUSE; Klipper's printing and paused map to these), or
/// one of its jobs is being started or printed. `None` when nothing is in progress.
pub fn print_in_progress(
    gcode_state: Option<GcodeState>,
    job_state: Option<JobState>,
) -> Option<String> {
    if let Some(s) = gcode_state.filter(|s| s.is_active()) {
        return Some(format!("it reports {}", s.as_str()));
    }
    job_state
        .filter(|j| matches!(j, JobState::Starting | JobState::Printing))
        .map(|j| format!("a job is {} on it", j.as_str()))
}

/// The plate while a print is in progress: shown without the Plate clear button (the tap would be
/// refused until the print has ended).
pub fn plate_during_print(plate: PlateView, in_progress: Option<String>) -> PlateView {
    match in_progress {
        Some(why) if plate.state != "clear" => PlateView {
            text: format!("Printing ({why}) — tap Plate clear after the print has ended"),
            tap_offered: false,
            ..plate
        },
        Some(_) => PlateView {
            tap_offered: false,
            ..plate
        },
        None => plate,
    }
}

/// Text for an HMS code; the Bambu error catalogue lives with the Bambu link.
pub type HmsTextFn = fn(attr: u32, code: u32) -> String;

pub fn printer_view(
    name: &str,
    model: Model,
    snap: &PrinterSnapshot,
    now: Instant,
    hms_text: HmsTextFn,
    plate: PlateView,
    queue_paused: bool,
) -> PrinterView {
    let st = snap.state.as_ref();
    PrinterView {
        name: name.to_string(),
        model: model.display_name().to_string(),
        link: snap.link.describe(),
        online: snap.link.is_online(),
        gcode_state: st
            .map(|s| s.gcode_state.as_str().to_string())
            .unwrap_or_else(|| "UNKNOWN".into()),
        percent: st.and_then(|s| s.percent),
        layer: st.and_then(|s| s.layer),
        total_layers: st.and_then(|s| s.total_layers),
        remaining_minutes: st.and_then(|s| s.remaining_minutes),
        nozzle_temp: st.and_then(|s| s.nozzle_temp),
        nozzle_target: st.and_then(|s| s.nozzle_target),
        bed_temp: st.and_then(|s| s.bed_temp),
        bed_target: st.and_then(|s| s.bed_target),
        chamber_temp: st.and_then(|s| s.chamber_temp),
        job_name: st
            .and_then(|s| s.subtask_name.clone())
            .filter(|n| !n.is_empty()),
        printer_message: st.and_then(|s| s.status_message.clone()),
        print_error: st
            .filter(|s| s.print_error != 0)
            .map(|s| format!("{:04X}_{:04X}", s.print_error >> 16, s.print_error & 0xFFFF)),
        hms: st
            .map(|s| {
                s.hms
                    .iter()
                    .map(|h| HmsView {
                        code: h.display_code(),
                        severity: h.severity(),
                        text: hms_text(h.attr, h.code),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        report_age_secs: snap
            .last_report_at
            .map(|t| now.saturating_duration_since(t).as_secs()),
        plate,
        thumbnail_url: None,
        queue_paused,
        controls: controls_offered(snap.link.is_online(), st.map(|s| s.gcode_state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupied() -> PlateView {
        plate_view(Some(&PlateState::Occupied), 0, 60_000)
    }

    #[test]
    fn plate_clear_is_offered_only_when_no_print_is_in_progress() {
        assert!(occupied().tap_offered);
        assert!(plate_view(None, 0, 60_000).tap_offered);
        for active in [GcodeState::Prepare, GcodeState::Running, GcodeState::Pause] {
            let why = print_in_progress(Some(active), None);
            assert!(why.as_deref().is_some_and(|w| w.contains(active.as_str())));
            let plate = plate_during_print(occupied(), why);
            assert!(!plate.tap_offered, "{active:?}");
            assert!(
                plate.text.contains("after the print has ended"),
                "{}",
                plate.text
            );
            assert_eq!(plate.state, "occupied");
        }
        // A job being started: the printer may still report IDLE.
        for job in [JobState::Starting, JobState::Printing] {
            let why = print_in_progress(Some(GcodeState::Idle), Some(job));
            assert!(!plate_during_print(occupied(), why).tap_offered, "{job:?}");
        }
        for ended in [GcodeState::Idle, GcodeState::Finish, GcodeState::Failed] {
            assert_eq!(print_in_progress(Some(ended), Some(JobState::Staged)), None);
            assert!(plate_during_print(occupied(), None).tap_offered);
        }
        assert_eq!(print_in_progress(None, None), None);
    }

    #[test]
    fn only_the_controls_that_apply_are_offered() {
        let offered = |online, state| controls_offered(online, state);
        let (pause, resume, stop) = (
            ControlsView {
                pause: true,
                resume: false,
                stop: true,
            },
            ControlsView {
                pause: false,
                resume: true,
                stop: true,
            },
            ControlsView {
                pause: false,
                resume: false,
                stop: true,
            },
        );
        for printing in [
            GcodeState::Prepare,
            GcodeState::Slicing,
            GcodeState::Running,
        ] {
            assert_eq!(offered(true, Some(printing)), pause, "{printing:?}");
        }
        assert_eq!(offered(true, Some(GcodeState::Pause)), resume);
        for ended in [GcodeState::Idle, GcodeState::Finish, GcodeState::Failed] {
            assert_eq!(
                offered(true, Some(ended)),
                ControlsView::default(),
                "{ended:?}"
            );
            assert!(!offered(true, Some(ended)).any());
        }
        // Unknown state: only the way out.
        assert_eq!(offered(true, Some(GcodeState::Unknown)), stop);
        assert_eq!(offered(true, None), stop);
        // Offline: nothing can be sent.
        for s in [GcodeState::Running, GcodeState::Pause, GcodeState::Unknown] {
            assert_eq!(offered(false, Some(s)), ControlsView::default());
        }
        // What is offered is what the gateway accepts.
        for s in [
            GcodeState::Idle,
            GcodeState::Running,
            GcodeState::Pause,
            GcodeState::Finish,
        ] {
            let c = offered(true, Some(s));
            assert_eq!(
                c.pause,
                control_not_applicable(&PrinterCommand::Pause, s).is_none()
            );
            assert_eq!(
                c.resume,
                control_not_applicable(&PrinterCommand::Resume, s).is_none()
            );
        }
    }
}
