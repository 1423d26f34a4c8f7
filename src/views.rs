//! The printer read model: what a reader is shown for a printer, computed from its snapshot and
//! its plate (pure, no I/O). The same view feeds the HTML status page, `GET /api/v1/printers`
//! and the MQTT state tree (`broker/topics.rs`), and never contains secrets. It lives below
//! both web/ and broker/ so that neither borrows the other's types.

use crate::jobs::filament::Rgba;
use crate::jobs::model::{JobState, Millis};
use crate::jobs::plate::PlateState;
use crate::printer::Model;
use crate::printer::state::{AmsKind, AmsUnit, FilamentSlots, Tray};
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
    /// AMS units, trays and external spools; `None` when the printer reports none (Klipper,
    /// or no report yet).
    pub filament: Option<FilamentView>,
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

/// Where a printer's filament comes from, as people read it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FilamentView {
    pub units: Vec<AmsUnitView>,
    pub external: Vec<TrayView>,
    /// Labels of the trays feeding a nozzle now (e.g. `AMS 1 slot 2`).
    pub active: Vec<String>,
}

/// One AMS unit.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AmsUnitView {
    /// As reported: 0–3, AMS HT 128–135.
    pub id: u32,
    /// `AMS 1`, `AMS lite`, `AMS HT 1`.
    pub name: String,
    /// 1 (dry) … 5 (wet), as Bambu's apps show it.
    pub humidity_level: Option<u8>,
    pub humidity_percent: Option<u8>,
    pub temp_c: Option<f64>,
    pub drying_minutes_left: Option<u32>,
    pub trays: Vec<TrayView>,
}

/// One tray or external spool holder.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrayView {
    /// `AMS 1 slot 2`, `AMS HT 1`, `External spool`.
    pub label: String,
    /// The tray id `ams_mapping` uses (0–15, 128–135, 254/255).
    pub mapping_id: Option<u32>,
    pub loaded: bool,
    /// e.g. `PLA`.
    pub material: Option<String>,
    /// e.g. `PLA Matte`.
    pub sub_brand: Option<String>,
    /// Bambu filament preset id, e.g. `GFA00`.
    pub filament_id: Option<String>,
    /// `#RRGGBB`, for a swatch.
    pub color: Option<String>,
    /// A plain word for the colour (`black`, `red`, `clear`).
    pub color_name: Option<String>,
    pub remain_percent: Option<u8>,
    /// Feeding a nozzle now.
    pub active: bool,
    /// One line for people: `PLA Matte · black · 93 % left`, `empty`.
    pub text: String,
}

fn unit_name(u: &AmsUnit, units: usize) -> String {
    match u.kind {
        AmsKind::AmsHt => format!("AMS HT {}", u.id.saturating_sub(127)),
        AmsKind::AmsLite if units == 1 => "AMS lite".into(),
        kind => format!("{} {}", kind.display_name(), u.id + 1),
    }
}

fn external_label(t: &Tray, count: usize) -> String {
    match (count, t.slot) {
        (2.., 254) => "External spool (left nozzle)".into(),
        (2.., 255) => "External spool (right nozzle)".into(),
        _ => "External spool".into(),
    }
}

fn tray_view(t: &Tray, label: String) -> TrayView {
    let rgba = t.color.as_deref().and_then(Rgba::parse);
    let text = if !t.loaded {
        "empty".to_string()
    } else if let Some(material) = t.sub_brand.as_ref().or(t.material.as_ref()) {
        let mut parts = vec![material.clone()];
        if let Some(c) = rgba {
            parts.push(c.name().to_string());
        }
        if let Some(r) = t.remain_percent {
            parts.push(format!("{r} % left"));
        }
        parts.join(" · ")
    } else {
        "a spool with no filament set — choose its filament on the printer's screen".into()
    };
    TrayView {
        label,
        mapping_id: t.mapping_id,
        loaded: t.loaded,
        material: t.material.clone(),
        sub_brand: t.sub_brand.clone(),
        filament_id: t.filament_id.clone(),
        color: rgba.map(Rgba::css),
        color_name: rgba.map(|c| c.name().to_string()),
        remain_percent: t.remain_percent,
        active: t.active,
        text,
    }
}

/// The filament view of a printer's slots.
pub fn filament_view(slots: &FilamentSlots) -> FilamentView {
    let count = slots.units.len();
    let units: Vec<AmsUnitView> = slots
        .units
        .iter()
        .map(|u| {
            let name = unit_name(u, count);
            AmsUnitView {
                id: u.id,
                trays: u
                    .trays
                    .iter()
                    .map(|t| {
                        let label = if u.kind == AmsKind::AmsHt {
                            name.clone()
                        } else {
                            format!("{name} slot {}", t.slot + 1)
                        };
                        tray_view(t, label)
                    })
                    .collect(),
                name,
                humidity_level: u.humidity_level,
                humidity_percent: u.humidity_percent,
                temp_c: u.temp_c,
                drying_minutes_left: u.drying_minutes_left,
            }
        })
        .collect();
    let external: Vec<TrayView> = slots
        .external
        .iter()
        .map(|t| tray_view(t, external_label(t, slots.external.len())))
        .collect();
    let active = units
        .iter()
        .flat_map(|u| u.trays.iter())
        .chain(external.iter())
        .filter(|t| t.active)
        .map(|t| t.label.clone())
        .collect();
    FilamentView {
        units,
        external,
        active,
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
        filament: st.and_then(|s| s.filament.as_ref()).map(filament_view),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tray(unit: Option<u32>, slot: u32) -> Tray {
        Tray {
            unit,
            slot,
            mapping_id: Some(slot),
            loaded: true,
            material: Some("PLA".into()),
            sub_brand: Some("PLA Matte".into()),
            filament_id: Some("GFA01".into()),
            color: Some("000000FF".into()),
            remain_percent: Some(93),
            active: false,
        }
    }

    #[test]
    fn trays_read_as_words() {
        let mut empty = tray(Some(0), 1);
        empty.loaded = false;
        let mut unset = tray(Some(0), 2);
        (unset.material, unset.sub_brand, unset.color) = (None, None, None);
        let mut ext = tray(None, 254);
        ext.active = true;
        ext.sub_brand = None;
        ext.remain_percent = None;
        let slots = FilamentSlots {
            units: vec![
                AmsUnit {
                    id: 0,
                    kind: AmsKind::Ams,
                    humidity_level: Some(2),
                    humidity_percent: None,
                    temp_c: None,
                    drying_minutes_left: None,
                    trays: vec![tray(Some(0), 0), empty, unset],
                },
                AmsUnit {
                    id: 128,
                    kind: AmsKind::AmsHt,
                    humidity_level: None,
                    humidity_percent: None,
                    temp_c: None,
                    drying_minutes_left: None,
                    trays: vec![tray(Some(128), 0)],
                },
            ],
            external: vec![ext],
        };
        let v = filament_view(&slots);
        let lines: Vec<(&str, &str)> = v
            .units
            .iter()
            .flat_map(|u| u.trays.iter())
            .chain(v.external.iter())
            .map(|t| (t.label.as_str(), t.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                ("AMS 1 slot 1", "PLA Matte · black · 93 % left"),
                ("AMS 1 slot 2", "empty"),
                (
                    "AMS 1 slot 3",
                    "a spool with no filament set — choose its filament on the printer's screen"
                ),
                ("AMS HT 1", "PLA Matte · black · 93 % left"),
                ("External spool", "PLA · black"),
            ]
        );
        assert_eq!(v.active, ["External spool"]);
        assert_eq!(v.units[0].trays[0].color.as_deref(), Some("#000000"));
        assert_eq!(v.units[1].name, "AMS HT 1");
    }

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
