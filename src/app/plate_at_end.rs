//! The finished plate in history (issue 18): when a printer reports that a print ended
//! (`FINISH` or `FAILED` right after printing), the camera's next picture is kept as that
//! print's end picture (checked by `camera::picture`, stored by `store/plate_pictures.rs`);
//! History shows it beside the picture confirmed at the start. It only ever looks: a camera
//! that gives no picture (none, busy, off) is logged and nothing else happens.

use crate::camera::{CameraHub, picture};
use crate::printer::{GcodeState, PrinterSnapshot};
use crate::store::Store;
use crate::store::plate_pictures::NewPicture;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long the end picture may take (a first connection to a P1/A1 camera takes a second or
/// two, then a frame comes every 1–2 s).
pub const END_PICTURE_WAIT: Duration = Duration::from_secs(10);

/// Whether going from `prev` to `next` is the end of a print.
pub fn print_ended(prev: GcodeState, next: GcodeState) -> bool {
    prev.is_active() && matches!(next, GcodeState::Finish | GcodeState::Failed)
}

/// Keep the end picture of every print of printer `name` until `shutdown`.
pub async fn keep_end_pictures(
    store: Arc<Store>,
    name: String,
    camera: CameraHub,
    mut rx: watch::Receiver<PrinterSnapshot>,
    shutdown: CancellationToken,
) {
    if camera.available().is_err() {
        return; // No camera printgate reads: History says there is no picture.
    }
    let gcode = |s: &PrinterSnapshot| s.state.as_ref().map(|st| st.gcode_state);
    let mut prev = gcode(&rx.borrow_and_update());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let next = gcode(&rx.borrow_and_update());
        if let (Some(p), Some(n)) = (prev, next)
            && print_ended(p, n)
        {
            let ended_at_ms = chrono::Utc::now().timestamp_millis();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = keep_one(&store, &name, &camera, ended_at_ms) => {}
            }
        }
        if next.is_some() {
            prev = next;
        }
    }
}

async fn keep_one(store: &Arc<Store>, name: &str, camera: &CameraHub, ended_at_ms: i64) {
    let frame = match camera.snapshot(END_PICTURE_WAIT).await {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(printer = %name, "no picture of the plate at the end of the print: {e}");
            return;
        }
    };
    let (store, printer) = (store.clone(), name.to_string());
    let saved = tokio::task::spawn_blocking(move || {
        picture::check(&frame.jpeg).map_err(|e| e.to_string())?;
        let taken_at_ms = frame
            .received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        store
            .save_print_end_picture(
                ended_at_ms,
                &NewPicture {
                    printer: &printer,
                    jpeg: &frame.jpeg,
                    taken_at_ms,
                    now_ms: chrono::Utc::now().timestamp_millis(),
                },
            )
            .map_err(|e| e.to_string())
    })
    .await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(printer = %name, "the end-of-print picture was not kept: {e}"),
        Err(e) => tracing::warn!(printer = %name, "keeping the end-of-print picture stopped: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GcodeState::*;

    #[test]
    fn a_print_ends_when_printing_turns_into_finish_or_failed() {
        for from in [Prepare, Slicing, Running, Pause] {
            assert!(print_ended(from, Finish), "{from:?}");
            assert!(print_ended(from, Failed), "{from:?}");
            assert!(!print_ended(from, Running), "{from:?}");
        }
        for from in [Idle, Finish, Failed, Unknown] {
            assert!(!print_ended(from, Finish), "{from:?}: no print was running");
        }
        assert!(
            !print_ended(Running, Idle),
            "ended without a result: no picture claimed"
        );
    }
}
