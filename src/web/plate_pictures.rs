//! Camera pictures of the plate kept for history (issue 18): the picture a person saw on the
//! Plate clear confirmation is stored with their tap ([`keep_confirmed_picture`]), and
//! `GET /plate-pictures/<id>` serves a stored picture (signed in, like every page) for the
//! History page (web/history.rs), which shows for every start the picture that was confirmed.
//! A picture is checked before it is stored (`camera::picture`: at most 1 MiB, a JPEG that
//! decodes); one that cannot be checked or stored is logged and the tap goes ahead — the
//! camera never blocks a tap.

use super::auth::CurrentUser;
use super::camera::{hub, unix_ms};
use crate::app::Gateway;
use crate::camera::picture;
use crate::store::plate_pictures::NewPicture;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new().route("/plate-pictures/{id}", get(serve))
}

/// The address of stored picture `id`.
pub fn url(id: i64) -> String {
    format!("/plate-pictures/{id}")
}

/// Store the picture the confirmation carrying `tap_id` showed, with that tap id, before the
/// tap is submitted (its own small commit; the tap's commit is the dispatcher's and does not
/// wait for it). Nothing to store when the page showed no picture.
pub(super) async fn keep_confirmed_picture(gw: &Gateway, printer: &str, tap_id: &str) {
    let Some(frame) = hub(gw, printer).and_then(|h| h.take_shown(tap_id)) else {
        return;
    };
    let store = gw.store.clone();
    let (printer, tap_id) = (printer.to_string(), tap_id.to_string());
    let now_ms = chrono::Utc::now().timestamp_millis();
    let saved = tokio::task::spawn_blocking(move || {
        picture::check(&frame.jpeg).map_err(|e| e.to_string())?;
        store
            .save_confirmed_picture(
                &tap_id,
                &NewPicture {
                    printer: &printer,
                    jpeg: &frame.jpeg,
                    taken_at_ms: unix_ms(frame.received_at),
                    now_ms,
                },
            )
            .map_err(|e| e.to_string())
    })
    .await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("the confirmed plate picture was not kept: {e}"),
        Err(e) => tracing::warn!("keeping the confirmed plate picture stopped: {e}"),
    }
}

async fn serve(
    State(gw): State<Arc<Gateway>>,
    _user: CurrentUser,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return (
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a picture number; pictures are linked from the History page"),
        )
            .into_response();
    };
    match gw.store.plate_picture(id) {
        Ok(Some(p)) => {
            let mut resp = (
                [
                    (header::CONTENT_TYPE, "image/jpeg"),
                    // A stored picture never changes.
                    (header::CACHE_CONTROL, "private, max-age=86400, immutable"),
                ],
                p.jpeg,
            )
                .into_response();
            if let Some(t) = chrono::DateTime::from_timestamp_millis(p.taken_at_ms)
                && let Ok(v) =
                    HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            {
                resp.headers_mut().insert(header::LAST_MODIFIED, v);
            }
            resp
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!(
                "there is no stored camera picture {id}: only the newest pictures of each printer are kept; see the History page"
            ),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not read camera picture {id}: {e}"),
        )
            .into_response(),
    }
}
