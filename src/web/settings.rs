//! Settings → Printers: the printers of the configuration (never their access codes) with their
//! link state and pinned certificate, and the Bambu printers that announce themselves on the LAN
//! (SSDP) that are not configured yet, each with the `[[printers]]` block to add to
//! `printgate.toml` — model and serial filled in, the access code left for the person to type.

use super::auth::CurrentUser;
use super::render;
use crate::app::Gateway;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/settings/printers", get(page))
        .route("/api/v1/discovered-printers", get(api_discovered))
}

#[derive(Serialize)]
pub struct ConfiguredPrinter {
    pub name: String,
    pub model: String,
    pub serial: String,
    pub host: String,
    pub link: String,
    pub certificate_pinned: bool,
}

/// A Bambu printer announcing itself on the LAN that is not configured yet.
#[derive(Serialize, Clone, utoipa::ToSchema)]
pub struct DiscoveredPrinter {
    pub serial: String,
    pub ip: String,
    pub model: String,
    pub name: String,
    /// `lan` = LAN-only (Developer Mode possible), `cloud` = cloud-connected.
    pub connect: String,
    pub seconds_ago: u64,
    /// A `[[printers]]` block for printgate.toml.
    pub config_snippet: String,
}

fn discovered(gw: &Gateway) -> Vec<DiscoveredPrinter> {
    let Some(d) = gw.discovery.get() else {
        return Vec::new();
    };
    let configured: Vec<&str> = gw
        .config
        .printers
        .iter()
        .map(|p| p.serial.as_str())
        .collect();
    d.seen()
        .into_iter()
        .filter(|s| !configured.contains(&s.announcement.serial.as_str()))
        .map(|s| {
            let a = &s.announcement;
            let model = a
                .model
                .map(|m| m.config_name().to_string())
                .or_else(|| a.model_code.clone())
                .unwrap_or_else(|| "unknown".into());
            let name = a.name.clone().unwrap_or_else(|| format!("Printer {}", a.serial));
            DiscoveredPrinter {
                config_snippet: format!(
                    "[[printers]]\nname = \"{}\"\nmodel = \"{model}\"\nserial = \"{}\"\nhost = \"{}\"\naccess_code = \"\" # 8 characters, from the printer's screen (LAN Only Mode)\n",
                    name.replace(['"', '\\'], ""),
                    a.serial,
                    a.ip
                ),
                serial: a.serial.clone(),
                ip: a.ip.to_string(),
                model,
                name,
                connect: a.connect.clone().unwrap_or_default(),
                seconds_ago: s.last_seen.elapsed().as_secs(),
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "settings_printers.html")]
struct PrintersPage {
    configured: Vec<ConfiguredPrinter>,
    discovered: Vec<DiscoveredPrinter>,
    discovery_on: bool,
    csrf: String,
}

async fn page(State(gw): State<Arc<Gateway>>, user: CurrentUser) -> Response {
    let configured = gw
        .config
        .printers
        .iter()
        .map(|pc| {
            let link = gw
                .printers
                .iter()
                .find(|p| p.name == pc.name)
                .map(|p| p.link.subscribe().borrow().link.describe())
                .unwrap_or_default();
            ConfiguredPrinter {
                name: pc.name.clone(),
                model: pc.model.display_name().to_string(),
                serial: pc.serial.clone(),
                host: pc.host.clone(),
                link,
                certificate_pinned: gw
                    .store
                    .pinned_fingerprint(&pc.serial)
                    .ok()
                    .flatten()
                    .is_some(),
            }
        })
        .collect();
    render(&PrintersPage {
        configured,
        discovered: discovered(&gw),
        discovery_on: gw.discovery.get().is_some(),
        csrf: user.csrf_token().to_string(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/discovered-printers",
    tag = "printers",
    responses((status = 200, description = "Printers seen on the LAN (SSDP) that are not configured", body = [DiscoveredPrinter]))
)]
pub(crate) async fn api_discovered(State(gw): State<Arc<Gateway>>) -> Json<Vec<DiscoveredPrinter>> {
    Json(discovered(&gw))
}
