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

#[derive(Deserialize)]
struct ResetForm {
    trip_id: i64,
    confirm: Option<String>,
}

async fn reset(
    State(gw): State<Arc<Gateway>>,
    actor: Actor,
    Form(form): Form<ResetForm>,
) -> Response {
    let Some(h) = gw.safety.as_ref() else {
        return not_running();
    };
    if form.confirm.as_deref() != Some("yes") {
        return back("Reset was not confirmed; the trip stays latched");
    }
    match h.reset(&actor.0, form.trip_id).await {
        Ok(n) => back(&format!(
            "{n} trip(s) reset by {}. Relays stay off until someone switches power on; the queue stays paused until resumed.",
            actor.0
        )),
        Err(e) => back(&e.to_string()),
    }
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
