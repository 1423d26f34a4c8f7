//! OctoPrint-compatible API, so PrusaSlicer, OrcaSlicer and Cura (OctoPrint Connection plugin)
//! "send to OctoPrint" and land the file in printgate's queue, and Cura's monitor shows the
//! printer. Shapes, field names, types and status codes follow OctoPrint 1.x's REST API:
//! `/api/version`, `/api/server`, `/api/settings`, `/api/login`, `/api/currentuser`,
//! `/api/connection`, `/api/printerprofiles`, `/api/printer` and `/api/job` ([`job`]),
//! `/api/files…` and `/downloads/files…` ([`files`]).
//!
//! - **API key**: every route here needs a valid key (`X-Api-Key`) or a signed-in session; a
//!   request without one, or with an unknown key, gets OctoPrint's `403` (see
//!   [`is_octoprint_path`], used by the auth guard).
//! - **Which printer**: the same API is served under `/octoprint/<printer>/…` for one printer
//!   (uploads go to it, `/api/job` and `/api/printer` describe it). At the root (`/api/…`) it
//!   is the API token's default printer, else the only printer, else the printer of the newest
//!   job the key's user uploaded that names one, else the first configured printer ([`Scope`]).
//! - **Nothing starts here**: an upload with `print=true`/`select=true` only queues the job (it
//!   waits for Plate clear, `effectivePrint: false`), `POST /api/job` `start`/`restart` is
//!   refused with `409`, `cancel` follows printgate's cancel rules (a queued job is cancelled, a
//!   running print is stopped only from the printer page, confirmed).

mod files;
mod job;
pub mod state;

use super::actor::Actor;
use crate::app::Gateway;
use crate::app::PrinterEntry;
use axum::extract::{FromRequestParts, OriginalUri, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// The OctoPrint version printgate answers as (new enough for every slicer's checks).
pub const OCTOPRINT_VERSION: &str = "1.10.3";
pub const OCTOPRINT_API_VERSION: &str = "0.1";
/// Where one printer's OctoPrint API lives: `/octoprint/<printer>/api/…`.
pub const PRINTER_PREFIX: &str = "/octoprint/";

/// Whether `path` is one of the OctoPrint-compatible routes (they answer a missing or unknown
/// API key with OctoPrint's `403` instead of printgate's `401`).
pub fn is_octoprint_path(path: &str) -> bool {
    (path.starts_with("/api/") && path != "/api/v1" && !path.starts_with("/api/v1/"))
        || path.starts_with(PRINTER_PREFIX)
        || path.starts_with("/downloads/files/")
}

/// OctoPrint's error body: `{"error": "..."}`.
pub(crate) fn octo_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// An OctoPrint error answer not yet sent (status and message), small enough for `Result`.
#[derive(Debug)]
pub(crate) struct OctoError {
    status: StatusCode,
    message: String,
}

impl OctoError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        OctoError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for OctoError {
    fn into_response(self) -> Response {
        octo_error(self.status, self.message)
    }
}

/// The `403` OctoPrint answers a request without a valid API key with.
pub fn forbidden(message: &str) -> Response {
    octo_error(StatusCode::FORBIDDEN, message)
}

pub fn routes(max_upload: u64) -> Router<Arc<Gateway>> {
    let api = Router::new()
        .route("/api/version", get(version))
        .route("/api/server", get(server))
        .route("/api/settings", get(settings))
        .route("/api/login", post(login))
        .route("/api/currentuser", get(current_user))
        .route("/api/connection", get(connection))
        .route("/api/printerprofiles", get(printer_profiles))
        .route("/api/printer", get(job::printer_state))
        .route("/api/job", get(job::job).post(job::job_command))
        .merge(files::routes(max_upload));
    Router::new()
        .merge(api.clone())
        .nest(&format!("{PRINTER_PREFIX}{{printer}}"), api)
}

/// Which printer a request is about, and the absolute URL its OctoPrint API lives under (for
/// `Location` and `refs`).
pub(crate) struct Scope {
    /// The printer named in the URL (`/octoprint/<printer>/…`), if any.
    url_printer: Option<String>,
    /// `http://host[:port][/octoprint/<printer>]`.
    pub base: String,
    /// `http://host[:port]`: where printgate's own pages are.
    pub origin: String,
    pub actor: Actor,
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let actor = Actor::from_request_parts(parts, state)
            .await
            .map_err(|_| forbidden("Send the API key from printgate's Settings → API tokens"))?;
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map(|o| o.0.path().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        let url_printer = path
            .strip_prefix(PRINTER_PREFIX)
            .and_then(|rest| rest.split('/').next())
            .map(|seg| {
                percent_encoding::percent_decode_str(seg)
                    .decode_utf8_lossy()
                    .into_owned()
            });
        let origin = origin(&parts.headers);
        let mut base = origin.clone();
        if let Some(p) = &url_printer {
            base.push_str(PRINTER_PREFIX);
            base.push_str(&super::urlencode(p));
        }
        Ok(Scope {
            url_printer,
            base,
            origin,
            actor,
        })
    }
}

impl Scope {
    /// The printer this request is about (see the module doc), or OctoPrint's answer when the
    /// URL names no such printer or none is configured.
    pub fn printer<'a>(&self, gw: &'a Gateway) -> Result<&'a PrinterEntry, OctoError> {
        let by_name = |n: &str| gw.printers.iter().find(|p| p.name == n);
        if let Some(name) = &self.url_printer {
            return by_name(name).ok_or_else(|| {
                let names: Vec<&str> = gw.printers.iter().map(|p| p.name.as_str()).collect();
                OctoError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "there is no printer called {name:?}; use /octoprint/<printer>/ with one of: {}",
                        names.join(", ")
                    ),
                )
            });
        }
        let chosen = self
            .actor
            .1
            .as_deref()
            .and_then(by_name)
            .or(match gw.printers.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .or_else(|| {
                gw.store
                    .last_printer_used_by(&self.actor.0)
                    .ok()
                    .flatten()
                    .and_then(|n| by_name(&n))
            })
            .or_else(|| gw.printers.first());
        chosen.ok_or_else(|| {
            OctoError::new(
                StatusCode::CONFLICT,
                "Printer is not operational: printgate has no printer configured",
            )
        })
    }

    /// The printer uploads without a `printer` field go to: the URL's, else the token's default
    /// (else any compatible printer).
    pub fn upload_printer(&self) -> Option<String> {
        self.url_printer.clone().or_else(|| self.actor.1.clone())
    }
}

/// `http://host` of a request as the client addressed it (`X-Forwarded-Proto` honoured).
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "api": OCTOPRINT_API_VERSION,
        "server": OCTOPRINT_VERSION,
        "text": format!("OctoPrint {OCTOPRINT_VERSION} (printgate {})", env!("CARGO_PKG_VERSION")),
    }))
}

async fn server() -> Json<serde_json::Value> {
    Json(json!({ "version": OCTOPRINT_VERSION, "safemode": null }))
}

async fn settings() -> Json<serde_json::Value> {
    Json(json!({
        "api": { "allowCrossOrigin": false },
        "feature": { "sdSupport": false },
        "webcam": { "webcamEnabled": false, "streamUrl": "" },
        "plugins": {},
    }))
}

/// `POST /api/login` with `{"passive": true}` (Cura asks who the key belongs to).
async fn login(actor: Actor) -> Json<serde_json::Value> {
    user_json(&actor)
}

async fn current_user(actor: Actor) -> Json<serde_json::Value> {
    Json(json!({ "name": actor.0, "permissions": [], "groups": ["users"] }))
}

fn user_json(actor: &Actor) -> Json<serde_json::Value> {
    Json(json!({
        "name": actor.0,
        "active": true,
        "user": true,
        "admin": false,
        "apikey": null,
        "settings": {},
        "groups": ["users"],
        "needs": { "role": ["user"], "group": ["users"] },
        "permissions": [],
    }))
}

/// `GET /api/connection`: the printer link as OctoPrint's serial connection.
async fn connection(State(gw): State<Arc<Gateway>>, scope: Scope) -> Response {
    let p = match scope.printer(&gw) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let snap = p.link.subscribe().borrow().clone();
    let st = state::octo_state(&snap.link, snap.state.as_ref());
    Json(json!({
        "current": {
            "state": st.kind.text(),
            "port": p.name,
            "baudrate": null,
            "printerProfile": "_default",
        },
        "options": {
            "ports": gw.printers.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "baudrates": [],
            "printerProfiles": [{ "id": "_default", "name": p.name }],
            "portPreference": p.name,
            "baudratePreference": null,
            "printerProfilePreference": "_default",
            "autoconnect": true,
        },
    }))
    .into_response()
}

/// `GET /api/printerprofiles`: one profile, the printer this request is about, marked current.
async fn printer_profiles(State(gw): State<Arc<Gateway>>, scope: Scope) -> Response {
    let p = match scope.printer(&gw) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let profile = json!({
        "id": "_default",
        "name": p.name,
        "model": p.model.display_name(),
        "color": "default",
        "current": true,
        "default": true,
        "resource": format!("{}/api/printerprofiles/_default", scope.base),
        "heatedBed": true,
        "heatedChamber": false,
        "extruder": { "count": 1, "nozzleDiameter": 0.4, "sharedNozzle": false, "offsets": [[0.0, 0.0]] },
    });
    Json(json!({ "profiles": { "_default": profile } })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octoprint_paths_are_told_apart_from_printgates_api() {
        for p in [
            "/api/version",
            "/api/files/local",
            "/api/job",
            "/octoprint/P1S/api/job",
            "/downloads/files/local/a.gcode",
        ] {
            assert!(is_octoprint_path(p), "{p}");
        }
        for p in ["/api/v1/jobs", "/api/v1", "/", "/login", "/jobs"] {
            assert!(!is_octoprint_path(p), "{p}");
        }
    }

    #[test]
    fn the_origin_is_the_host_the_client_used() {
        let mut h = HeaderMap::new();
        assert_eq!(origin(&h), "http://localhost");
        h.insert(header::HOST, "printgate.local:8080".parse().unwrap());
        assert_eq!(origin(&h), "http://printgate.local:8080");
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(origin(&h), "https://printgate.local:8080");
        h.insert(header::HOST, "evil\"<host>".parse().unwrap());
        assert_eq!(origin(&h), "https://localhost");
    }
}
