//! The number and time formats of a printer card (`templates/card_body.html`): every page that
//! includes the card implements [`CardText`]. Pure: the clock and time zone are passed in.

use crate::views::PrinterView;
use chrono::{DateTime, TimeZone, Utc};

/// The formats a printer card's template uses (`card_body.html`): every page that includes the
/// card implements this.
pub trait CardText {
    fn fmt_temp(&self, t: &Option<f64>) -> String {
        fmt_temp(*t)
    }
    fn fmt_minutes(&self, m: &Option<u32>) -> String {
        fmt_minutes(*m)
    }
    /// "1 h 05 min left", "under a minute left" or "estimating…".
    fn fmt_remaining(&self, p: &PrinterView) -> String {
        remaining_text(p)
    }
    /// Whether the card shows progress: while a print is on the printer or just ended (an idle
    /// printer reports 0 % of nothing).
    fn shows_progress(&self, p: &PrinterView) -> bool {
        p.percent.is_some()
            && (printing(p) || matches!(p.gcode_state.as_str(), "FINISH" | "FAILED"))
    }
    /// When the print should be done, in the gateway's time zone (the page's script shows it in
    /// the phone's).
    fn finish_at(&self, p: &PrinterView) -> Option<ClockTime> {
        finish_time(p, Utc::now(), &chrono::Local)
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

/// Whether the printer reports a print that is still going (the remaining time means something).
fn printing(p: &PrinterView) -> bool {
    matches!(
        p.gcode_state.as_str(),
        "PREPARE" | "SLICING" | "RUNNING" | "PAUSE"
    )
}

/// What the card says about the time left. A printer reports 0 minutes while it prepares and
/// before its first estimate; that is shown as "estimating…", never as "0 min left".
pub fn remaining_text(p: &PrinterView) -> String {
    match p.gcode_state.as_str() {
        "FINISH" => return "finished".into(),
        "FAILED" => return "stopped".into(),
        _ => {}
    }
    let started = p.percent.unwrap_or(0) > 0;
    match p.remaining_minutes {
        Some(0) if started => "under a minute left".into(),
        Some(m) if m > 0 && printing(p) => format!("{} left", fmt_minutes(Some(m))),
        _ if printing(p) => "estimating…".into(),
        _ => "no estimate".into(),
    }
}

/// A point in time for a `<time>` element: the machine-readable instant and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockTime {
    /// RFC 3339 in UTC, for `datetime=` (the page's script shows it in the phone's time zone).
    pub iso: String,
    /// The local clock time, e.g. `14:35` (today) or `Fri 14:35` (later).
    pub text: String,
}

/// When a running print should end: `now` plus the reported minutes left, as a clock time in
/// `tz`. `None` while there is no estimate (see [`remaining_text`]) or nothing is printing.
pub fn finish_time<Tz: TimeZone>(p: &PrinterView, now: DateTime<Utc>, tz: &Tz) -> Option<ClockTime>
where
    Tz::Offset: std::fmt::Display,
{
    if !printing(p) || p.gcode_state == "PAUSE" {
        return None;
    }
    let minutes = p.remaining_minutes.filter(|m| *m > 0)?;
    let at = now + chrono::Duration::minutes(i64::from(minutes));
    let (local_now, local_at) = (now.with_timezone(tz), at.with_timezone(tz));
    let text = if local_now.date_naive() == local_at.date_naive() {
        local_at.format("%H:%M").to_string()
    } else {
        local_at.format("%a %H:%M").to_string()
    };
    Some(ClockTime {
        iso: at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn view(state: &str, percent: Option<u32>, remaining: Option<u32>) -> PrinterView {
        PrinterView {
            name: "p".into(),
            model: "P1S".into(),
            link: String::new(),
            online: true,
            gcode_state: state.into(),
            percent,
            layer: None,
            total_layers: None,
            remaining_minutes: remaining,
            nozzle_temp: None,
            nozzle_target: None,
            bed_temp: None,
            bed_target: None,
            chamber_temp: None,
            job_name: None,
            print_error: None,
            printer_message: None,
            hms: vec![],
            report_age_secs: None,
            plate: Default::default(),
            thumbnail_url: None,
            queue_paused: false,
            controls: Default::default(),
            filament: None,
        }
    }

    #[test]
    fn zero_minutes_before_the_first_estimate_reads_estimating() {
        assert_eq!(
            remaining_text(&view("PREPARE", Some(0), Some(0))),
            "estimating…"
        );
        assert_eq!(
            remaining_text(&view("RUNNING", Some(0), Some(0))),
            "estimating…"
        );
        assert_eq!(remaining_text(&view("RUNNING", None, None)), "estimating…");
        assert_eq!(
            remaining_text(&view("RUNNING", Some(3), Some(65))),
            "1 h 05 min left"
        );
        assert_eq!(
            remaining_text(&view("RUNNING", Some(99), Some(0))),
            "under a minute left"
        );
        assert_eq!(
            remaining_text(&view("FINISH", Some(100), Some(0))),
            "finished"
        );
        assert_eq!(
            remaining_text(&view("FAILED", Some(40), Some(0))),
            "stopped"
        );
        assert_eq!(remaining_text(&view("IDLE", None, None)), "no estimate");
        assert_eq!(
            remaining_text(&view("IDLE", Some(0), Some(0))),
            "no estimate"
        );
        struct Page;
        impl CardText for Page {}
        assert!(!Page.shows_progress(&view("IDLE", Some(0), Some(0))));
        assert!(Page.shows_progress(&view("RUNNING", Some(0), Some(0))));
        assert!(Page.shows_progress(&view("FINISH", Some(100), Some(0))));
        assert!(!Page.shows_progress(&view("RUNNING", None, Some(3))));
    }

    #[test]
    fn the_finish_is_a_clock_time_in_the_given_zone() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T08:40:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let berlin = FixedOffset::east_opt(3600).unwrap();
        let f = finish_time(&view("RUNNING", Some(10), Some(65)), now, &berlin).unwrap();
        assert_eq!(f.text, "10:45");
        assert_eq!(f.iso, "2026-12-03T09:45:10Z");
        // Past midnight: the day is named.
        let late = finish_time(&view("RUNNING", Some(10), Some(20 * 60)), now, &berlin).unwrap();
        assert_eq!(late.text, "Fri 05:40");
        // No estimate, paused, or not printing: no finish time.
        for v in [
            view("RUNNING", Some(0), Some(0)),
            view("PAUSE", Some(50), Some(30)),
            view("FINISH", Some(100), Some(0)),
            view("IDLE", None, Some(30)),
        ] {
            assert_eq!(finish_time(&v, now, &berlin), None, "{}", v.gcode_state);
        }
    }
}
