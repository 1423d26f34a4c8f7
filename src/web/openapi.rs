//! The reference of the JSON API: an OpenAPI 3.1 document generated at compile time from the
//! `#[utoipa::path]` annotations on the `/api/v1/` handlers and the `ToSchema` derives on what
//! they return, served at `GET /api/v1/openapi.json`.
//!
//! It sits behind the same guard as the API it describes (a session or an `X-Api-Key` token):
//! it holds no secrets, but a gateway that switches mains power need not describe itself to
//! anonymous LAN clients, and anyone who can use the API can read it.

use super::queue::{ApiOutcome, ApiTap, JobView};
use super::upload::UploadRequest;
use crate::views::{AmsUnitView, FilamentView, HmsView, PlateView, PrinterView, TrayView};
use axum::http::header;
use axum::response::IntoResponse;
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error body of every failed API call.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong (`message` says what to do about it).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code such as `unknown_printer` or `invalid_file`.
    code: String,
    message: String,
}

/// The two ways to authenticate, named in the document.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                super::auth::API_KEY_HEADER,
                "An API token from Settings → API tokens (also accepted as `Authorization: Bearer`)",
            ))),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "The browser session; state-changing requests then also need the `X-CSRF-Token` header",
            ))),
        );
    }
}

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "printgate",
        description = "JSON API of the printgate LAN gateway: everything the web UI does. Nothing here starts a print by itself: a queued job starts only after Plate clear is tapped for its printer."
    ),
    paths(
        super::api_printers,
        openapi_json,
        super::queue::api_jobs,
        super::upload::api_upload,
        super::queue::api_plate_clear,
        super::queue::api_job_action,
        super::queue::api_queue_action,
        super::printer_page::api_control,
        super::virtual_printers::api_list,
        super::printer_login::api_issue,
        super::printer_login::api_withdraw,
        super::settings::api_discovered,
        super::settings_notifications::api_list,
        super::settings_notifications::api_add,
        super::settings_notifications::api_delete,
        super::settings_notifications::api_test,
        super::settings_users::api_list,
        super::settings_users::api_add,
        super::settings_users::api_delete,
        super::settings_users::api_password,
        crate::web::safety_api::api_status,
        crate::web::safety_api::api_emergency_stop,
        crate::web::safety_api::api_reset,
        crate::web::safety_api::api_power,
        crate::web::safety_api::api_sim_input,
        crate::web::safety_api::api_alerts_test,
    ),
    components(schemas(
        PrinterView,
        PlateView,
        HmsView,
        FilamentView,
        super::job_filaments::FilamentNeedView,
        super::job_filaments::TrayPlanView,
        AmsUnitView,
        TrayView,
        JobView,
        super::settings::DiscoveredPrinter,
        super::printer_login::IssuedLogin,
        ApiOutcome,
        ApiTap,
        UploadRequest,
        super::printer_page::ApiControl,
        super::printer_page::ControlMessage,
        crate::virtual_printer::VirtualPrinterInfo,
        super::settings_notifications::ApiAlertTarget,
        super::settings_notifications::NewAlertTarget,
        super::settings_notifications::ApiTestResult,
        super::settings_users::ApiUser,
        super::settings_users::NewUserBody,
        super::settings_users::PasswordBody,
        crate::web::safety_api::EmergencyStopBody,
        crate::web::safety_api::EmergencyStopAnswer,
        crate::web::safety_api::ResetBody,
        crate::web::safety_api::ResetAnswer,
        crate::web::safety_api::PowerBody,
        crate::web::safety_api::SimInputBody,
        crate::web::safety_api::LevelName,
        crate::alerts::Delivery,
        crate::alerts::AlertKind,
        ErrorBody,
        ErrorDetail,
    )),
    modifiers(&Security),
    security(("api_key" = []), ("session" = [])),
    tags(
        (name = "printers", description = "Printers, their plate gate and controls"),
        (name = "jobs", description = "The print queue"),
        (name = "safety", description = "Smoke input, relays, trip latch and emergency stop"),
        (name = "users", description = "Accounts (one role: any signed-in person may manage them)"),
        (name = "notifications", description = "Where alerts go (ntfy, webhooks)"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The document as JSON (built once).
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi().to_json().unwrap_or_else(|e| {
            format!("{{\"error\":\"the API document could not be built: {e}\"}}")
        })
    })
}

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        assert!(v["paths"]["/api/v1/printers"]["get"].is_object());
    }
}
