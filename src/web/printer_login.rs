//! MQTT logins for Klipper printers: issue (or re-issue) the user name and password a printer's
//! Moonraker uses to connect to printgate's broker, show them once with the `[mqtt]` section to
//! paste into moonraker.conf, and withdraw them. The broker's front door limits each login to
//! its printer's `{instance_name}/…` topics.

use super::actor::Actor;
use super::auth::CurrentUser;
use super::{ApiError, render};
use crate::app::Gateway;
use crate::config::PrinterKind;
use crate::store::EventKind;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

/// A login issued or withdrawn, in the printer's history.
pub const PRINTER_LOGIN: EventKind = EventKind::new("printer_login");

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/printers/{name}/mqtt-login", post(issue_form))
        .route("/printers/{name}/mqtt-login/withdraw", post(withdraw_form))
        .route(
            "/api/v1/printers/{name}/mqtt-login",
            post(api_issue).delete(api_withdraw),
        )
}

/// The `[mqtt]` section for moonraker.conf.
pub fn moonraker_conf(
    broker_host: &str,
    broker_port: u16,
    username: &str,
    password: &str,
    instance: &str,
) -> String {
    let objects: String = crate::printer::moonraker::status::OBJECTS
        .iter()
        .map(|o| format!("  {o}\n"))
        .collect();
    format!(
        "[mqtt]\naddress: {broker_host}\nport: {broker_port}\nusername: {username}\npassword: {password}\nmqtt_protocol: v3.1.1\nenable_moonraker_api: True\ninstance_name: {instance}\nstatus_objects:\n{objects}"
    )
}

/// Where Moonraker should connect: the broker's port, and the gateway by its mDNS name.
fn broker_address(gw: &Gateway) -> (String, u16) {
    let cfg = &gw.config.broker;
    let host = match &cfg.external {
        Some(ext) if cfg.mode == crate::broker::config::BrokerMode::External => {
            let rest = ext
                .url
                .split("://")
                .nth(1)
                .unwrap_or(&ext.url)
                .trim_end_matches('/');
            return match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().unwrap_or(1883)),
                None => (rest.to_string(), 1883),
            };
        }
        _ => format!("{}.local", cfg.mdns.hostname),
    };
    (host, cfg.listen.port())
}

/// A freshly issued login (the password is shown this once).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IssuedLogin {
    printer: String,
    username: String,
    password: String,
    instance_name: String,
    /// The `[mqtt]` section to paste into the printer's moonraker.conf.
    moonraker_conf: String,
}

fn issue(gw: &Gateway, name: &str, user: &str) -> Result<IssuedLogin, ApiError> {
    let Some(pc) = gw.config.printers.iter().find(|p| p.name == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_printer",
            format!("there is no printer called {name:?}"),
        ));
    };
    if pc.kind != PrinterKind::Moonraker {
        return Err(ApiError::bad_request(format!(
            "{name} is a Bambu printer: printgate connects to it with its access code; MQTT logins are for Klipper printers"
        )));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let (cred, password) = gw
        .store
        .issue_printer_credential(name, &pc.instance_name, now)
        .map_err(|e| ApiError::internal(format!("could not store the login: {e}")))?;
    let _ = gw.store.record_event(
        name,
        PRINTER_LOGIN,
        &json!({"action": "issued", "username": cred.username, "by": user}),
        now,
    );
    let (host, port) = broker_address(gw);
    Ok(IssuedLogin {
        printer: name.to_string(),
        moonraker_conf: moonraker_conf(&host, port, &cred.username, &password, &pc.instance_name),
        username: cred.username,
        password,
        instance_name: pc.instance_name.clone(),
    })
}

fn withdraw(gw: &Gateway, name: &str, user: &str) -> Result<bool, ApiError> {
    if !gw.printers.iter().any(|p| p.name == name) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_printer",
            format!("there is no printer called {name:?}"),
        ));
    }
    let removed = gw
        .store
        .revoke_printer_credential(name)
        .map_err(|e| ApiError::internal(format!("could not withdraw the login: {e}")))?;
    if removed {
        let _ = gw.store.record_event(
            name,
            PRINTER_LOGIN,
            &json!({"action": "withdrawn", "by": user}),
            chrono::Utc::now().timestamp_millis(),
        );
    }
    Ok(removed)
}

#[derive(Template)]
#[template(path = "printer_login.html")]
struct IssuedPage {
    login: IssuedLogin,
    csrf: String,
}

async fn issue_form(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    actor: Actor,
    user: CurrentUser,
) -> Response {
    match issue(&gw, &name, &actor.0) {
        Ok(login) => {
            let mut r = render(&IssuedPage {
                login,
                csrf: user.csrf_token().to_string(),
            });
            // The password is on this page: never keep it in a cache.
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => back(&name, &e.message),
    }
}

async fn withdraw_form(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    actor: Actor,
) -> Response {
    let message = match withdraw(&gw, &name, &actor.0) {
        Ok(true) => {
            "the MQTT login was withdrawn; the printer's Moonraker can no longer connect with it"
                .to_string()
        }
        Ok(false) => "this printer had no MQTT login".to_string(),
        Err(e) => e.message,
    };
    back(&name, &message)
}

fn back(name: &str, message: &str) -> Response {
    Redirect::to(&format!(
        "/printers/{}?notice={}",
        super::urlencode(name),
        super::urlencode(message)
    ))
    .into_response()
}

/// Issue a new MQTT login for a Klipper printer (replacing any earlier one, whose live
/// connection is closed) and return it with the `[mqtt]` section for its moonraker.conf. The
/// password is returned only here.
#[utoipa::path(
    post,
    path = "/api/v1/printers/{name}/mqtt-login",
    tag = "printers",
    params(("name" = String, Path, description = "Printer name (a Klipper printer)")),
    responses(
        (status = 200, description = "Issued", body = IssuedLogin),
        (status = 400, description = "Not a Klipper printer", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown printer", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_issue(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    actor: Actor,
) -> Result<Json<IssuedLogin>, ApiError> {
    issue(&gw, &name, &actor.0).map(Json)
}

/// Withdraw a Klipper printer's MQTT login; its Moonraker can no longer connect with it, and a
/// live connection made with it is closed.
#[utoipa::path(
    delete,
    path = "/api/v1/printers/{name}/mqtt-login",
    tag = "printers",
    params(("name" = String, Path, description = "Printer name")),
    responses(
        (status = 204, description = "Withdrawn (or there was none)"),
        (status = 404, description = "Unknown printer", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn api_withdraw(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    actor: Actor,
) -> Result<StatusCode, ApiError> {
    withdraw(&gw, &name, &actor.0).map(|_| StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_section_names_everything_moonraker_needs() {
        let c = moonraker_conf("printgate.local", 1883, "moonraker-voron", "pw", "voron");
        for line in [
            "[mqtt]",
            "address: printgate.local",
            "port: 1883",
            "username: moonraker-voron",
            "password: pw",
            "instance_name: voron",
            "status_objects:",
            "  print_stats",
            "  webhooks",
        ] {
            assert!(c.contains(line), "{line}\n{c}");
        }
    }
}
