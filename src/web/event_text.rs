//! History in words: a stored printer event (kind + JSON detail) as the sentence a person reads
//! ("Started printing benchy.3mf", "Lost the connection: …"), and times as `<time>` elements
//! in the gateway's time zone (the page's script shows them in the phone's). Pure: the time zone
//! and the HMS catalogue are passed in.

use crate::views::HmsTextFn;
use chrono::{DateTime, TimeZone};
use serde_json::Value;

/// A stored instant for a `<time datetime data-local>` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTime {
    /// RFC 3339 in UTC, machine readable.
    pub iso: String,
    /// Date and time in the given zone, e.g. `3 Dec 2026, 09:40:17`.
    pub text: String,
}

/// `ms` (Unix milliseconds) in `tz`; an instant out of range gives empty strings.
pub fn local_time<Tz: TimeZone>(ms: i64, tz: &Tz) -> LocalTime
where
    Tz::Offset: std::fmt::Display,
{
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => LocalTime {
            iso: t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            text: t
                .with_timezone(tz)
                .format("%-d %b %Y, %H:%M:%S")
                .to_string(),
        },
        None => LocalTime {
            iso: String::new(),
            text: String::new(),
        },
    }
}

fn text<'a>(detail: &'a Value, key: &str) -> Option<&'a str> {
    detail
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A gcode state (`RUNNING`) as words.
fn state_words(state: &str) -> String {
    match state {
        "IDLE" => "idle".into(),
        "PREPARE" => "preparing".into(),
        "SLICING" => "slicing".into(),
        "RUNNING" => "printing".into(),
        "PAUSE" => "paused".into(),
        "FINISH" => "finished".into(),
        "FAILED" => "failed".into(),
        other => other.to_lowercase(),
    }
}

/// `AAAA_BBBB_CCCC_DDDD` back into HMS `(attr, code)`.
fn hms_parts(code: &str) -> Option<(u32, u32)> {
    let parts: Vec<u32> = code
        .split('_')
        .map(|p| u32::from_str_radix(p, 16).ok().filter(|v| *v <= 0xFFFF))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [a, b, c, d] => Some(((a << 16) | b, (c << 16) | d)),
        _ => None,
    }
}

fn severity_word(severity: u64) -> &'static str {
    match severity {
        1 => "fatal",
        2 => "serious",
        3 => "common",
        _ => "info",
    }
}

/// What happened, as a sentence. Unknown kinds and odd details fall back to the kind's name and
/// the detail's text, so nothing stored is ever hidden.
pub fn event_sentence(kind: &str, detail: &Value, hms_text: HmsTextFn) -> String {
    let job = text(detail, "subtask_name");
    match kind {
        "link_up" => match text(detail, "text") {
            Some(t) => format!("Connected to the printer ({t})"),
            None => "Connected to the printer".into(),
        },
        "link_down" => match text(detail, "text") {
            Some(t) => format!("Lost the connection to the printer: {t}"),
            None => "Lost the connection to the printer".into(),
        },
        "link_state" => text(detail, "text")
            .map(|t| format!("Connection: {t}"))
            .unwrap_or_else(|| "The connection changed".into()),
        "gcode_state" => {
            let to = text(detail, "to").unwrap_or("UNKNOWN");
            let from = text(detail, "from");
            let name = job.map(|j| format!(" {j}")).unwrap_or_default();
            match (from, to) {
                (None, to) => format!("First report: {}", state_words(to)),
                (Some("PAUSE"), "RUNNING") => format!("Resumed{name}"),
                (_, "RUNNING") => format!("Started printing{name}"),
                (_, "PREPARE") => format!("Preparing to print{name}"),
                (_, "PAUSE") => format!("Paused{name}"),
                (_, "FINISH") => format!("Finished{name}"),
                (_, "FAILED") => format!("The print{name} failed or was stopped"),
                (Some(from), to) => format!("Now {} (was {})", state_words(to), state_words(from)),
            }
        }
        "hms_raised" => {
            let code = text(detail, "code").unwrap_or("?");
            let severity = detail.get("severity").and_then(Value::as_u64).unwrap_or(4);
            let what = hms_parts(code)
                .map(|(attr, c)| hms_text(attr, c))
                .filter(|t| !t.is_empty())
                .map(|t| format!(": {t}"))
                .unwrap_or_default();
            format!(
                "The printer raised a {} message{what} (HMS {code})",
                severity_word(severity)
            )
        }
        "hms_cleared" => format!(
            "The printer cleared message HMS {}",
            text(detail, "code").unwrap_or("?")
        ),
        "print_error" => format!(
            "The printer reported print error {}",
            text(detail, "code").unwrap_or("?")
        ),
        "printer_control" => {
            let by = text(detail, "by").unwrap_or("someone");
            let action = text(detail, "action").unwrap_or("a command");
            let outcome = text(detail, "outcome").unwrap_or("");
            if outcome == "sent" {
                format!("{by} sent {action}")
            } else {
                format!("{by} tried {action}, not sent: {outcome}")
            }
        }
        "printer_login" => {
            let by = text(detail, "by").unwrap_or("someone");
            match (text(detail, "action"), text(detail, "username")) {
                (Some("issued"), Some(user)) => format!("{by} issued the MQTT login {user}"),
                (Some("withdrawn"), _) => format!("{by} withdrew the MQTT login"),
                _ => format!("{by} changed the MQTT login"),
            }
        }
        other => {
            let words = other.replace('_', " ");
            match detail {
                Value::Null => words,
                Value::Object(m) if m.is_empty() => words,
                d => format!("{words}: {d}"),
            }
        }
    }
}

/// A job event (`what` is already words: "plate clear", "published", …) as a sentence.
pub fn job_event_sentence(
    job: i64,
    name: &str,
    what: &str,
    actor: &str,
    outcome: Option<&str>,
) -> String {
    let outcome = outcome
        .filter(|o| !o.is_empty())
        .map(|o| format!(": {o}"))
        .unwrap_or_default();
    format!("Job {job} ({name}): {what}, by {actor}{outcome}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use serde_json::json;

    fn no_text(_: u32, _: u32) -> String {
        String::new()
    }
    fn catalogue(attr: u32, code: u32) -> String {
        if (attr, code) == (0x0300_0100, 0x0001_0003) {
            "heatbed over temperature".into()
        } else {
            String::new()
        }
    }

    #[test]
    fn events_read_as_sentences() {
        let s = |kind, d: Value| event_sentence(kind, &d, catalogue);
        assert_eq!(
            s(
                "gcode_state",
                json!({"from": "IDLE", "to": "RUNNING", "subtask_name": "benchy"})
            ),
            "Started printing benchy"
        );
        assert_eq!(
            s("gcode_state", json!({"from": "PAUSE", "to": "RUNNING"})),
            "Resumed"
        );
        assert_eq!(
            s(
                "gcode_state",
                json!({"from": "RUNNING", "to": "FINISH", "subtask_name": "cube"})
            ),
            "Finished cube"
        );
        assert_eq!(
            s("gcode_state", json!({"from": null, "to": "IDLE"})),
            "First report: idle"
        );
        assert_eq!(
            s("gcode_state", json!({"from": "FINISH", "to": "IDLE"})),
            "Now idle (was finished)"
        );
        assert_eq!(
            s(
                "link_down",
                json!({"state": "x", "text": "connection refused"})
            ),
            "Lost the connection to the printer: connection refused"
        );
        assert_eq!(
            s(
                "hms_raised",
                json!({"code": "0300_0100_0001_0003", "severity": 1})
            ),
            "The printer raised a fatal message: heatbed over temperature (HMS 0300_0100_0001_0003)"
        );
        assert_eq!(
            event_sentence(
                "hms_raised",
                &json!({"code": "0C00_0300_0003_0008", "severity": 3}),
                no_text
            ),
            "The printer raised a common message (HMS 0C00_0300_0003_0008)"
        );
        assert_eq!(
            s(
                "printer_control",
                json!({"action": "stop", "by": "ann", "outcome": "sent"})
            ),
            "ann sent stop"
        );
        assert_eq!(
            s(
                "printer_control",
                json!({"action": "pause", "by": "ann", "outcome": "not connected"})
            ),
            "ann tried pause, not sent: not connected"
        );
        assert_eq!(
            s(
                "printer_login",
                json!({"action": "issued", "username": "moon", "by": "ann"})
            ),
            "ann issued the MQTT login moon"
        );
        // Unknown kinds keep their detail: nothing stored is hidden.
        assert_eq!(
            s("safety_trip", json!({"cause": "smoke"})),
            "safety trip: {\"cause\":\"smoke\"}"
        );
        assert_eq!(s("something", json!({})), "something");
    }

    #[test]
    fn odd_details_never_panic_and_say_what_they_can() {
        for d in [
            json!(null),
            json!(7),
            json!("x"),
            json!([1]),
            json!({"code": 5}),
            json!({"to": 3}),
        ] {
            for kind in [
                "link_up",
                "link_down",
                "link_state",
                "gcode_state",
                "hms_raised",
                "hms_cleared",
                "print_error",
                "printer_control",
                "printer_login",
                "x",
            ] {
                assert!(!event_sentence(kind, &d, catalogue).is_empty());
            }
        }
        assert_eq!(
            hms_parts("0300_0100_0001_0003"),
            Some((0x0300_0100, 0x0001_0003))
        );
        assert_eq!(hms_parts("0300_0100_0001"), None);
        assert_eq!(hms_parts("zz_0_0_0"), None);
        assert_eq!(hms_parts("10000_0_0_0"), None);
    }

    #[test]
    fn times_are_local_with_a_utc_instant() {
        let berlin = FixedOffset::east_opt(3600).unwrap();
        let t = local_time(1_796_287_217_000, &berlin);
        assert_eq!(t.iso, "2026-12-03T08:40:17Z");
        assert_eq!(t.text, "3 Dec 2026, 09:40:17");
        assert_eq!(local_time(i64::MAX, &berlin).iso, "");
    }

    #[test]
    fn job_events_read_as_sentences() {
        assert_eq!(
            job_event_sentence(12, "benchy", "plate clear", "ann", None),
            "Job 12 (benchy): plate clear, by ann"
        );
        assert_eq!(
            job_event_sentence(
                3,
                "cube",
                "failed",
                "dispatcher",
                Some("printer went offline")
            ),
            "Job 3 (cube): failed, by dispatcher: printer went offline"
        );
    }
}
