//! What a page shows for a printer, computed from its snapshot (pure, no I/O). The same view
//! feeds the HTML status page and `GET /api/v1/printers`, and never contains secrets.

use crate::config::Model;
use crate::jobs::model::Millis;
use crate::jobs::plate::PlateState;
use crate::printer::PrinterSnapshot;
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
            }
        }
        Some(PlateState::Occupied) => PlateView {
            state: "occupied".into(),
            text: "Remove the print, then tap Plate clear".into(),
            ..Default::default()
        },
        _ => PlateView {
            state: "unknown".into(),
            text: "Plate not checked — look at the printer, clear it, then tap Plate clear".into(),
            ..Default::default()
        },
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
    }
}

/// `12.5` → `"12.5"`, `None` → `"–"`.
pub fn fmt_temp(t: Option<f64>) -> String {
    t.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

/// Minutes → `1 h 05 min`.
pub fn fmt_minutes(m: Option<u32>) -> String {
    match m {
        None => "–".into(),
        Some(m) if m >= 60 => format!("{} h {:02} min", m / 60, m % 60),
        Some(m) => format!("{m} min"),
    }
}
