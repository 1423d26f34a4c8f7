//! `GET /api/v1/virtual-printers`: how to reach each virtual printer printgate serves (address,
//! serial, access code), for the person setting up a slicer or Home Assistant. Behind the
//! sign-in guard like the whole API: the access codes are secrets.

use crate::app::Gateway;
use crate::virtual_printer::VirtualPrinterInfo;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new().route("/api/v1/virtual-printers", get(api_list))
}

/// The virtual printers printgate serves, in configuration order (empty unless a printer has
/// `[printers.virtual_printer] enabled = true`).
#[utoipa::path(
    get,
    path = "/api/v1/virtual-printers",
    tag = "printers",
    responses((status = 200, description = "The virtual printers", body = [VirtualPrinterInfo]))
)]
pub(crate) async fn api_list(State(gw): State<Arc<Gateway>>) -> Json<Vec<VirtualPrinterInfo>> {
    Json(gw.virtual_printers.get().cloned().unwrap_or_default())
}
