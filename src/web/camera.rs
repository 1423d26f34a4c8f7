//! `GET /printers/<name>/snapshot.jpg`: a current picture of the printer's plate from its
//! shared camera hub (src/camera/), behind the sign-in like every page. No picture is answered
//! in words: 404 when the printer has no camera printgate reads (with what to do), 503 with
//! `Retry-After` while the camera is busy, refusing or still connecting.
//!
//! The Plate clear confirmation (src/web/queue.rs) takes its picture here too
//! ([`confirmation_picture`]): fresh when the page opens, shown with its age, and never in the
//! way of the tap — without a picture the page says why and the form works the same. The
//! picture shown is kept with the tap by `web/plate_pictures.rs`.

use super::auth::CurrentUser;
use crate::app::Gateway;
use crate::camera::{CameraHub, Frame, SnapshotError};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

/// How long a snapshot request waits for the camera's next frame (a P1/A1 sends one every
/// 1–2 s; the connect and TLS handshake come first when nobody was watching).
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(8);

/// How long the Plate clear confirmation waits for a picture before it opens without one (an
/// open upstream answers at once; a first connection to a P1/A1 takes a second or two).
pub const CONFIRMATION_WAIT: Duration = Duration::from_secs(3);

/// The camera's picture on the Plate clear confirmation.
pub struct PlatePicture {
    /// `data:image/jpeg;base64,…`: the page shows exactly the frame its caption describes.
    pub data_uri: String,
    /// "taken 3 s ago".
    pub age: String,
    pub taken: super::event_text::LocalTime,
}

/// "taken 3 s ago" for a picture `age` old.
pub fn age_text(age: Duration) -> String {
    match age.as_secs() {
        0 => "taken less than a second ago".to_string(),
        s @ 1..=119 => format!("taken {s} s ago"),
        s => format!("taken {} min ago", s / 60),
    }
}

/// A fresh picture of `printer`'s plate for its Plate clear confirmation carrying `tap_id`, or
/// why there is none (a sentence for the page). The hub remembers the frame under the tap id,
/// so that the tap stores the very picture the person saw
/// ([`super::plate_pictures::keep_confirmed_picture`]); a frame too large to be kept is shown
/// but not remembered.
pub(super) async fn confirmation_picture(
    gw: &Gateway,
    printer: &str,
    tap_id: &str,
) -> Result<PlatePicture, String> {
    use base64::Engine;
    let hub = hub(gw, printer).ok_or_else(|| format!("there is no printer called {printer:?}"))?;
    let frame = hub
        .snapshot(CONFIRMATION_WAIT)
        .await
        .map_err(|e| e.to_string())?;
    if frame.jpeg.len() <= crate::camera::picture::MAX_PICTURE_BYTES {
        hub.remember_shown(tap_id, frame.clone());
    }
    let ms = unix_ms(frame.received_at);
    Ok(PlatePicture {
        data_uri: format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&frame.jpeg)
        ),
        age: age_text(frame.age()),
        taken: super::event_text::local_time(ms, &chrono::Local),
    })
}

pub(super) fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new().route("/printers/{name}/snapshot.jpg", get(snapshot))
}

/// The camera hub of printer `name`, if there is such a printer.
pub(super) fn hub<'a>(gw: &'a Gateway, name: &str) -> Option<&'a CameraHub> {
    gw.printers
        .iter()
        .find(|p| p.name == name)
        .map(|p| &p.camera)
}

async fn snapshot(
    State(gw): State<Arc<Gateway>>,
    _user: CurrentUser,
    Path(name): Path<String>,
) -> Response {
    let Some(hub) = hub(&gw, &name) else {
        return (
            StatusCode::NOT_FOUND,
            format!("there is no printer called {name:?}"),
        )
            .into_response();
    };
    match hub.snapshot(SNAPSHOT_WAIT).await {
        Ok(frame) => jpeg_answer(&frame),
        Err(e) => error_answer(&name, &e),
    }
}

fn jpeg_answer(frame: &Frame) -> Response {
    let mut resp = (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        frame.jpeg.clone(),
    )
        .into_response();
    let taken = chrono::DateTime::<chrono::Utc>::from(frame.received_at)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(v) = HeaderValue::from_str(&taken) {
        resp.headers_mut().insert(header::LAST_MODIFIED, v);
    }
    resp
}

/// The HTTP status of a snapshot that did not come.
pub(super) fn status_of(e: &SnapshotError) -> StatusCode {
    match e {
        SnapshotError::NoCamera(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn error_answer(printer: &str, e: &SnapshotError) -> Response {
    let status = status_of(e);
    let retry = match e {
        SnapshotError::Busy { retry_in } | SnapshotError::Failing { retry_in, .. } => {
            Some(retry_in.as_secs().max(1))
        }
        SnapshotError::NoPictureYet(_) => Some(2),
        _ => None,
    };
    let mut resp = (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        format!("no picture from the camera of {printer}: {e}\n"),
    )
        .into_response();
    if let Some(s) = retry
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(
            age_text(Duration::from_millis(400)),
            "taken less than a second ago"
        );
        assert_eq!(age_text(Duration::from_millis(3400)), "taken 3 s ago");
        assert_eq!(age_text(Duration::from_secs(150)), "taken 2 min ago");
    }
}
