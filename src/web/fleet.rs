//! The fleet page (`/fleet`): every gateway on the shared broker and its printers, from their
//! retained MQTT state (see `broker::fleet`), read-only, each with a link to the gateway that
//! owns it. Commands stay with the owning gateway and its rules.

use crate::app::Gateway;
use crate::web::auth::CurrentUser;
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new().route("/fleet", get(fleet_page))
}

struct PrinterRow {
    topic_id: String,
    name: String,
    link: &'static str,
    state: String,
    progress: String,
    job: String,
}

struct GatewayRow {
    id: String,
    own: bool,
    availability: &'static str,
    web_url: Option<String>,
    printers: Vec<PrinterRow>,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    gateways: Vec<GatewayRow>,
    note: Option<String>,
    csrf: String,
}

fn online_word(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "online",
        Some(false) => "offline",
        None => "unknown",
    }
}

async fn fleet_page(State(gw): State<Arc<Gateway>>, user: CurrentUser) -> Response {
    let (gateways, note) = match gw.fleet.get() {
        None => (
            Vec::new(),
            Some("This gateway is not in a fleet: set [broker] gateway_id (with an external broker) to see the other gateways here.".to_string()),
        ),
        Some(view) => {
            let rows: Vec<GatewayRow> = view
                .gateways()
                .into_iter()
                .map(|g| GatewayRow {
                    own: g.id == view.own_id(),
                    availability: online_word(g.online),
                    web_url: g.status.as_ref().and_then(|s| s.web_url.clone()),
                    printers: g
                        .printers
                        .into_values()
                        .map(|p| PrinterRow {
                            name: p.name.clone().unwrap_or_else(|| p.topic_id.clone()),
                            link: if g.online == Some(false) {
                                "offline"
                            } else {
                                online_word(p.online)
                            },
                            state: p.gcode_state.unwrap_or_default(),
                            progress: p.percent.map(|v| format!("{v} %")).unwrap_or_default(),
                            job: p.job_name.unwrap_or_default(),
                            topic_id: p.topic_id,
                        })
                        .collect(),
                    id: g.id,
                })
                .collect();
            let note = rows
                .is_empty()
                .then(|| "No gateway has published on the broker yet.".to_string());
            (rows, note)
        }
    };
    crate::web::render(&FleetPage {
        gateways,
        note,
        csrf: user.csrf_token().to_string(),
    })
}
