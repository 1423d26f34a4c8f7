//! The safety room's JSON API, a web adapter over `safety::runtime::SafetyHandle` (the Safety page is
//! `safety_page.rs`):
//!
//! | method | path | body | what |
//! |---|---|---|---|
//! | GET  | `/api/v1/safety` | | [`SafetyView`]: tripped?, cause, readings, relays, inputs |
//! | POST | `/api/v1/safety/emergency-stop` | `{"printer": null}` | cut power now (all, or one printer) |
//! | POST | `/api/v1/safety/reset` | `{"confirmed_trip_id": 7, "confirm": true}` | reset the latch; relays stay off |
//! | POST | `/api/v1/safety/power` | `{"printer": "x1c", "on": true, "force": false, "confirm": true}` | switch a relay |
//! | POST | `/api/v1/safety/sim-input` | `{"pin": 17, "level": "low"}` or `{"input": "smoke", "asserted": true}` | drive a simulated input (demo, tests, `printgate gpio set`) |
//! | POST | `/api/v1/alerts/test` | | send a test alert to every target, report each result |
//!
//! Every route needs an [`Actor`] (a signed-in person or an API token), put there by the
//! authentication layer.

use super::ApiError;
use super::actor::Actor;
use crate::alerts::Delivery;
use crate::app::Gateway;
use crate::safety::gpio::Level;
use crate::safety::latch::{PowerChange, PowerError, ResetError, TripRecord};
use crate::safety::runtime::{SafetyError, SafetyHandle, SafetyView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How long `sim-input` waits for the edge to be debounced and a resulting trip recorded.
const SIM_INPUT_WAIT: Duration = Duration::from_secs(10);

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/api/v1/safety", get(api_status))
        .route("/api/v1/safety/emergency-stop", post(api_emergency_stop))
        .route("/api/v1/safety/reset", post(api_reset))
        .route("/api/v1/safety/power", post(api_power))
        .route("/api/v1/safety/sim-input", post(api_sim_input))
        .route("/api/v1/alerts/test", post(api_alerts_test))
}

fn handle(gw: &Gateway) -> Result<&SafetyHandle, ApiError> {
    gw.safety
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("the safety room is not running in this gateway"))
}

/// Map a refusal to an API answer that says what to do.
pub fn api_error(e: SafetyError) -> ApiError {
    let conflict =
        |code, e: &dyn std::fmt::Display| ApiError::new(StatusCode::CONFLICT, code, e.to_string());
    match &e {
        SafetyError::NotAuthenticated => ApiError::unauthorized(),
        SafetyError::Reset(ResetError::NotAuthenticated) => ApiError::unauthorized(),
        SafetyError::Reset(ResetError::NotTripped) => conflict("not_tripped", &e),
        SafetyError::Reset(ResetError::InputStillAsserted(_)) => conflict("input_asserted", &e),
        SafetyError::Reset(ResetError::TripBeingRecorded) => conflict("trip_being_recorded", &e),
        SafetyError::Reset(ResetError::Store(_)) => conflict("reset_refused", &e),
        SafetyError::Power(PowerError::NoRelay(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "no_relay", e.to_string())
        }
        SafetyError::Power(PowerError::Tripped(_)) | SafetyError::Power(PowerError::TripRaced) => {
            conflict("tripped", &e)
        }
        SafetyError::Power(PowerError::Printing(_)) => conflict("printing", &e),
        SafetyError::NotSimulated => conflict("not_simulated", &e),
        SafetyError::Gpio(_) => ApiError::bad_request(e.to_string()),
        SafetyError::Store(_) => ApiError::internal(e.to_string()),
        SafetyError::Stopped => ApiError::unavailable(e.to_string()),
    }
}

/// Whether safety is tripped, the cause, readings, relays and inputs.
#[utoipa::path(
    get,
    path = "/api/v1/safety",
    tag = "safety",
    responses(
        (status = 200, description = "The safety state: `tripped`, `trip` (the newest open trip; its `id` is what a reset confirms), `trip_description`, `open_trips`, `latched_printers`, `relays`, `printers`, `inputs`, `gpio`, `relay_fail_safe`, `last_warning`", body = serde_json::Value),
        (status = 503, description = "The safety room is not running", body = crate::web::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_status(
    _actor: Actor,
    State(gw): State<Arc<Gateway>>,
) -> Result<Json<SafetyView>, ApiError> {
    Ok(Json(handle(&gw)?.status()))
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmergencyStopBody {
    /// One printer (its relay); all printers when absent.
    #[serde(default)]
    pub printer: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmergencyStopAnswer {
    /// The trip: `id`, `cause`, `scope`, `affected_printers`, `relays_off`, `at_unix_ms`, `readings`.
    #[schema(value_type = Object)]
    pub trip: TripRecord,
    /// The trip was written to the database before this answer.
    pub persisted: bool,
    /// As `GET /api/v1/safety`.
    #[schema(value_type = Object)]
    pub status: SafetyView,
}

/// Cut power now: every printer, or one printer's relay. The trip latches until a person resets it.
#[utoipa::path(
    post,
    path = "/api/v1/safety/emergency-stop",
    tag = "safety",
    request_body(content = Option<EmergencyStopBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Power cut; the trip and whether it was written to the database", body = EmergencyStopAnswer),
        (status = 404, description = "Unknown printer", body = crate::web::openapi::ErrorBody),
        (status = 503, description = "The safety room is not running", body = crate::web::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_emergency_stop(
    Actor(user, _): Actor,
    State(gw): State<Arc<Gateway>>,
    body: Option<Json<EmergencyStopBody>>,
) -> Result<Json<EmergencyStopAnswer>, ApiError> {
    let h = handle(&gw)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    if let Some(p) = &body.printer
        && !gw.printers.iter().any(|e| &e.name == p)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_printer",
            format!("no printer named \"{p}\"; leave \"printer\" out to stop every printer"),
        ));
    }
    let rx = h.subscribe();
    let trip = h.emergency_stop_printer(&user, body.printer.as_deref());
    let persisted = crate::safety::runtime::wait_persisted(h, rx, Duration::from_secs(5)).await;
    Ok(Json(EmergencyStopAnswer {
        trip,
        persisted,
        status: h.status(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// The id of the newest open trip, as shown on the page the person confirmed.
    pub confirmed_trip_id: i64,
    /// Must be `true`: the person confirmed they checked the printers.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResetAnswer {
    pub reset_trips: usize,
    /// As `GET /api/v1/safety`.
    #[schema(value_type = Object)]
    pub status: SafetyView,
}

/// Reset the trip latch after checking the printers; relays stay off until switched on.
#[utoipa::path(
    post,
    path = "/api/v1/safety/reset",
    tag = "safety",
    request_body(content = ResetBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Reset", body = ResetAnswer),
        (status = 400, description = "Not confirmed", body = crate::web::openapi::ErrorBody),
        (status = 409, description = "Not tripped, an input is still asserted, or a newer trip exists", body = crate::web::openapi::ErrorBody),
        (status = 503, description = "The safety room is not running", body = crate::web::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_reset(
    Actor(user, _): Actor,
    State(gw): State<Arc<Gateway>>,
    Json(body): Json<ResetBody>,
) -> Result<Json<ResetAnswer>, ApiError> {
    let h = handle(&gw)?;
    if !body.confirm {
        return Err(ApiError::bad_request(
            "confirm the reset (\"confirm\": true) after checking the printers and the cause of the trip",
        ));
    }
    let n = h
        .reset(&user, body.confirmed_trip_id)
        .await
        .map_err(api_error)?;
    Ok(Json(ResetAnswer {
        reset_trips: n,
        status: h.status(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerBody {
    pub printer: String,
    pub on: bool,
    /// Switch even though the printer is printing.
    #[serde(default)]
    pub force: bool,
    /// Must be `true`: the person confirmed the switch.
    #[serde(default)]
    pub confirm: bool,
}

/// Switch a printer's relay on or off (confirmed; refused while tripped, and while printing
/// unless forced).
#[utoipa::path(
    post,
    path = "/api/v1/safety/power",
    tag = "safety",
    request_body(content = PowerBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Switched: `pin`, `printers` on the relay, `on`, `changed`, `forced`", body = serde_json::Value),
        (status = 400, description = "Not confirmed", body = crate::web::openapi::ErrorBody),
        (status = 404, description = "The printer has no relay", body = crate::web::openapi::ErrorBody),
        (status = 409, description = "Tripped, or printing (use `force`)", body = crate::web::openapi::ErrorBody),
        (status = 503, description = "The safety room is not running", body = crate::web::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_power(
    Actor(user, _): Actor,
    State(gw): State<Arc<Gateway>>,
    Json(body): Json<PowerBody>,
) -> Result<Json<PowerChange>, ApiError> {
    let h = handle(&gw)?;
    if !body.confirm {
        return Err(ApiError::bad_request(format!(
            "confirm switching {} {} (\"confirm\": true)",
            body.printer,
            if body.on { "on" } else { "off" }
        )));
    }
    h.set_power(&body.printer, body.on, body.force, &user)
        .map(Json)
        .map_err(api_error)
}

/// Electrical level names accepted by `sim-input` and `printgate gpio set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LevelName {
    High,
    Low,
}

impl From<LevelName> for Level {
    fn from(l: LevelName) -> Level {
        match l {
            LevelName::High => Level::High,
            LevelName::Low => Level::Low,
        }
    }
}

/// Which input to drive: by pin and level, or by name and asserted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimInputBody {
    #[serde(default)]
    pub pin: Option<u8>,
    #[serde(default)]
    pub level: Option<LevelName>,
    /// `smoke` or `second`.
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub asserted: Option<bool>,
}

/// Drive a simulated GPIO input (demo, tests, `printgate gpio set`); refused on real GPIO.
#[utoipa::path(
    post,
    path = "/api/v1/safety/sim-input",
    tag = "safety",
    request_body(content = SimInputBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The safety state after the input was debounced (as `GET /api/v1/safety`)", body = serde_json::Value),
        (status = 400, description = "Neither pin and level nor input and asserted given", body = crate::web::openapi::ErrorBody),
        (status = 409, description = "The GPIO is not simulated", body = crate::web::openapi::ErrorBody),
        (status = 503, description = "The safety room is not running", body = crate::web::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_sim_input(
    _actor: Actor,
    State(gw): State<Arc<Gateway>>,
    Json(body): Json<SimInputBody>,
) -> Result<Json<SafetyView>, ApiError> {
    let h = handle(&gw)?;
    let cfg = h.config();
    let (pin, level) = match (&body, body.pin, body.level) {
        (_, Some(pin), Some(level)) => (pin, Level::from(level)),
        (
            SimInputBody {
                input: Some(name),
                asserted: Some(asserted),
                ..
            },
            None,
            None,
        ) => {
            let (pin, active) = match name.as_str() {
                "smoke" => cfg.smoke.as_ref().map(|s| (s.pin, s.active_level)),
                "second" => cfg.second_input.as_ref().map(|s| (s.pin, s.active_level)),
                _ => None,
            }
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "input \"{name}\" is not configured; use \"smoke\" or \"second\" as set up in [safety]"
                ))
            })?;
            let on = match active {
                crate::safety::config::ActiveLevel::Low => Level::Low,
                crate::safety::config::ActiveLevel::High => Level::High,
            };
            (pin, if *asserted { on } else { on.inverted() })
        }
        _ => {
            return Err(ApiError::bad_request(
                "send {\"pin\": <BCM number>, \"level\": \"high\"|\"low\"} or {\"input\": \"smoke\", \"asserted\": true}",
            ));
        }
    };
    h.set_sim_input(pin, level, SIM_INPUT_WAIT)
        .await
        .map(Json)
        .map_err(api_error)
}

/// Send a test alert to every notification target and report each result.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/test",
    tag = "notifications",
    responses(
        (status = 200, description = "One result per target (`error` is null when delivered)", body = [Delivery]),
        (status = 400, description = "No targets", body = crate::web::openapi::ErrorBody),
        (status = 503, description = "The safety room is not running", body = crate::web::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_alerts_test(
    Actor(user, _): Actor,
    State(gw): State<Arc<Gateway>>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let h = handle(&gw)?;
    if h.notifier().target_count() == 0 {
        return Err(ApiError::bad_request(
            "no alert targets configured; add one under Settings → Notifications, or [[alerts.targets]] (ntfy, webhook or buzzer) in printgate.toml",
        ));
    }
    Ok(Json(h.notifier().test(&user).await))
}
