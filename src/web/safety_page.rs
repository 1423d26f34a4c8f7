//! The Safety page: the trip latch (cause, time, readings) with its confirmed reset, the
//! emergency stop, each printer's relay power (confirmed; refused while printing unless forced,
//! and while tripped), the inputs, and a test of the alert targets. Every action goes through
//! the safety room's own rules ([`crate::safety::runtime::SafetyHandle`]); this module only
//! renders and forwards, and every action is recorded there with the signed-in user.

use super::actor::Actor;
use super::auth::CurrentUser;
use super::event_text::{LocalTime, local_time};
use super::render;
use crate::app::Gateway;
use crate::safety::latch::PrinterReading;
use crate::safety::runtime::SafetyView;
use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/safety", get(page))
        .route("/safety/emergency-stop", post(emergency_stop))
        .route("/safety/reset", post(reset))
        .route("/safety/power", post(power))
        .route("/safety/alerts-test", post(alerts_test))
}

/// The one-line banner pages show while a trip is latched.
pub fn banner(gw: &Gateway) -> Option<String> {
    let status = gw.safety.as_ref()?.status();
    status.tripped.then(|| {
        format!(
            "Safety trip: {} — power cut, queue paused. A person must check, then reset on the Safety page.",
            status
                .trip_description
                .unwrap_or_else(|| "cause not recorded yet".into())
        )
    })
}

struct PowerRow {
    printer: String,
    has_relay: bool,
    on: bool,
    latched: bool,
    printing: bool,
}

#[derive(Template)]
#[template(path = "safety.html")]
struct SafetyPage {
    running: bool,
    view: Option<SafetyView>,
    trip_id: i64,
    trip_at: LocalTime,
    readings: Vec<String>,
    power: Vec<PowerRow>,
    notice: Option<String>,
    csrf: String,
}

#[derive(Deserialize, Default)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn page(
    State(gw): State<Arc<Gateway>>,
    user: CurrentUser,
    axum::extract::Query(q): axum::extract::Query<NoticeQuery>,
) -> Response {
    let view = gw.safety.as_ref().map(|s| s.status());
    let trip = view.as_ref().and_then(|v| v.trip.clone());
    let power = view
        .as_ref()
        .map(|v| {
            v.printers
                .iter()
                .map(|p| PowerRow {
                    printer: p.printer.clone(),
                    has_relay: p.relay_pin.is_some(),
                    on: p.power_on.unwrap_or(false),
                    latched: p.latched,
                    printing: p.printing,
                })
                .collect()
        })
        .unwrap_or_default();
    render(&SafetyPage {
        running: view.is_some(),
        trip_id: trip.as_ref().and_then(|t| t.id).unwrap_or(0),
        trip_at: local_time(
            trip.as_ref().map(|t| t.at_unix_ms).unwrap_or(0),
            &chrono::Local,
        ),
        readings: trip
            .as_ref()
            .map(|t| t.readings.iter().map(reading_sentence).collect())
            .unwrap_or_default(),
        view,
        power,
        notice: q.notice.filter(|n| !n.is_empty()),
        csrf: user.csrf_token().to_string(),
    })
}

fn back(notice: &str) -> Response {
    Redirect::to(&format!("/safety?notice={}", super::urlencode(notice))).into_response()
}

fn not_running() -> Response {
    back("the safety room is not running in this gateway")
}

#[derive(Deserialize)]
struct ConfirmForm {
    confirm: Option<String>,
}

async fn emergency_stop(
    State(gw): State<Arc<Gateway>>,
    actor: Actor,
    Form(form): Form<ConfirmForm>,
) -> Response {
    let Some(h) = gw.safety.as_ref() else {
        return not_running();
    };
    if form.confirm.as_deref() != Some("yes") {
        return back("Emergency stop was not confirmed; nothing changed");
    }
    let trip = h.emergency_stop(&actor.0);
    back(&format!(
        "Emergency stop by {}: relays off ({} printers), stop sent, queue paused",
        actor.0,
        trip.affected_printers.len()
    ))
}

/// The reset form: the trip it confirms, and what to do right after the reset, on the same
/// confirmed screen (switch power back on for some printers, resume the queue).
#[derive(Debug, Default, PartialEq)]
struct ResetForm {
    trip_id: Option<i64>,
    confirmed: bool,
    power_on: Vec<String>,
    resume_queue: bool,
}

impl ResetForm {
    /// From the posted `application/x-www-form-urlencoded` body (`power_on` may repeat).
    fn parse(body: &[u8]) -> ResetForm {
        let mut f = ResetForm::default();
        for (k, v) in form_urlencoded::parse(body) {
            match k.as_ref() {
                "trip_id" => f.trip_id = v.trim().parse().ok(),
                "confirm" => f.confirmed = v == "yes",
                "power_on" if !v.is_empty() && !f.power_on.contains(&v.to_string()) => {
                    f.power_on.push(v.into_owned())
                }
                "resume_queue" => f.resume_queue = v == "yes",
                _ => {}
            }
        }
        f
    }
}

/// Reset the trip and, only if the reset succeeded, do the chosen recovery steps; the answer
/// says what each step did. Power comes back only for the printers ticked, never for one that
/// reports printing (that needs the Printer power table's explicit "even though it is
/// printing"); resuming the queue starts nothing by itself (every start still needs its own
/// Plate clear tap).
async fn reset(State(gw): State<Arc<Gateway>>, actor: Actor, body: axum::body::Bytes) -> Response {
    let Some(h) = gw.safety.as_ref() else {
        return not_running();
    };
    let form = ResetForm::parse(&body);
    if !form.confirmed {
        return back("Reset was not confirmed; the trip stays latched");
    }
    let Some(trip_id) = form.trip_id else {
        return back(
            "The reset did not say which trip it confirms; reload the Safety page and try again",
        );
    };
    let n = match h.reset(&actor.0, trip_id).await {
        Ok(n) => n,
        Err(e) => return back(&format!("{e}. Nothing else was changed.")),
    };
    let mut said = vec![format!("{n} trip(s) reset by {}", actor.0)];
    for printer in &form.power_on {
        said.push(match h.set_power(printer, true, false, &actor.0) {
            Ok(_) => format!("power of {printer} switched on"),
            Err(e) => format!("power of {printer} stays off: {e}"),
        });
    }
    if form.power_on.is_empty() {
        said.push("relays stay off until someone switches power on".into());
    }
    if form.resume_queue {
        let resumed = gw
            .dispatcher
            .submit(crate::jobs::dispatcher::Event::ResumeQueue { printer: None })
            .await;
        said.push(match resumed {
            Ok(_) => "queue resumed (each print still needs its own Plate clear tap)".into(),
            Err(e) => format!("the queue stays paused: {e}"),
        });
    } else {
        said.push("the queue stays paused until resumed".into());
    }
    back(&format!("{}.", said.join("; ")))
}

#[derive(Deserialize)]
struct PowerForm {
    printer: String,
    on: String,
    confirm: Option<String>,
    force: Option<String>,
}

async fn power(
    State(gw): State<Arc<Gateway>>,
    actor: Actor,
    Form(form): Form<PowerForm>,
) -> Response {
    let Some(h) = gw.safety.as_ref() else {
        return not_running();
    };
    if form.confirm.as_deref() != Some("yes") {
        return back("Power change was not confirmed; nothing changed");
    }
    let on = form.on == "on";
    let force = form.force.as_deref() == Some("yes");
    match h.set_power(&form.printer, on, force, &actor.0) {
        Ok(_) => back(&format!(
            "Power of {} switched {}",
            form.printer,
            if on { "on" } else { "off" }
        )),
        Err(e) => back(&e.to_string()),
    }
}

async fn alerts_test(State(gw): State<Arc<Gateway>>, actor: Actor) -> Response {
    let Some(h) = gw.safety.as_ref() else {
        return not_running();
    };
    if h.notifier().target_count() == 0 {
        return back(
            "No alert targets configured; add one under Settings → Notifications, or [[alerts.targets]] (ntfy, webhook or buzzer) in printgate.toml",
        );
    }
    let results = h.notifier().test(&actor.0).await;
    let text: Vec<String> = results
        .iter()
        .map(|d| match &d.error {
            None => format!("{}: delivered", d.label),
            Some(e) => format!("{}: failed ({e})", d.label),
        })
        .collect();
    back(&text.join(" · "))
}

/// One printer's readings at the moment of a trip, as a sentence:
/// "printer 1 was printing; nozzle 212 °C (target 220), bed 60 °C (target 60)".
fn reading_sentence(r: &PrinterReading) -> String {
    fn temp(name: &str, now: Option<f64>, target: Option<f64>) -> Option<String> {
        let now = now?;
        Some(match target {
            Some(t) => format!("{name} {now:.0} °C (target {t:.0})"),
            None => format!("{name} {now:.0} °C"),
        })
    }
    let state = match r.gcode_state.as_deref() {
        Some("RUNNING") => "was printing".to_string(),
        Some("PREPARE") => "was preparing a print".to_string(),
        Some("PAUSE") => "was paused".to_string(),
        Some("IDLE") => "was idle".to_string(),
        Some("FINISH") => "had finished".to_string(),
        Some(other) => format!("reported {other}"),
        None => "had not reported its state".to_string(),
    };
    let temps: Vec<String> = [
        temp("nozzle", r.nozzle, r.nozzle_target),
        temp("bed", r.bed, r.bed_target),
    ]
    .into_iter()
    .flatten()
    .collect();
    if temps.is_empty() {
        format!("{} {state}; no temperatures known", r.printer)
    } else {
        format!("{} {state}; {}", r.printer, temps.join(", "))
    }
}

#[cfg(test)]
mod reading_tests {
    use super::*;

    #[test]
    fn the_reset_form_reads_repeated_printers_and_ignores_junk() {
        let f = ResetForm::parse(
            b"csrf=x&trip_id=7&confirm=yes&power_on=printer+1&power_on=p%262&power_on=printer+1&power_on=&resume_queue=yes",
        );
        assert_eq!(
            f,
            ResetForm {
                trip_id: Some(7),
                confirmed: true,
                power_on: vec!["printer 1".into(), "p&2".into()],
                resume_queue: true,
            }
        );
        assert_eq!(
            ResetForm::parse(b"trip_id=x&confirm=no"),
            ResetForm::default()
        );
        assert_eq!(ResetForm::parse(&[0xff, b'=', 0xfe]), ResetForm::default());
    }

    #[test]
    fn trip_readings_read_as_sentences() {
        let r = PrinterReading {
            printer: "printer 1".into(),
            gcode_state: Some("RUNNING".into()),
            nozzle: Some(212.4),
            nozzle_target: Some(220.0),
            bed: Some(60.0),
            bed_target: None,
        };
        assert_eq!(
            reading_sentence(&r),
            "printer 1 was printing; nozzle 212 °C (target 220), bed 60 °C"
        );
        let blank = PrinterReading {
            printer: "p".into(),
            gcode_state: None,
            nozzle: None,
            nozzle_target: Some(200.0),
            bed: None,
            bed_target: None,
        };
        assert_eq!(
            reading_sentence(&blank),
            "p had not reported its state; no temperatures known"
        );
    }
}
