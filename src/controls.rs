//! Printer controls: the one path a person's pause, resume, stop or chamber light takes,
//! whichever door it came through (the web page and its JSON API, the OctoPrint API, a virtual
//! printer's client). None of them can start a print. A stop needs a confirmation, a pause is
//! refused unless the printer prints and a resume unless it is paused, a command is never
//! queued for an offline printer, and every command sent is recorded in the printer's history
//! with who sent it.

use crate::app::Gateway;
use crate::printer::{GcodeState, LinkError, PrinterCommand, PrinterSnapshot};
use crate::store::EventKind;
use crate::views::control_not_applicable;
use serde_json::json;
use tokio::sync::watch;

/// A person's control action on a printer, in the history.
pub const PRINTER_CONTROL: EventKind = EventKind::new("printer_control");

/// Why a control was not sent (or may not have arrived). The text says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("there is no printer called {0:?}")]
    UnknownPrinter(String),
    #[error("stopping cancels the print for good; confirm it (form field confirm=yes)")]
    ConfirmationRequired,
    /// The printer's state makes the command pointless (not printing, not paused).
    #[error("{0}; nothing was sent")]
    NotApplicable(String),
    #[error("{0}; nothing was sent")]
    Unsupported(String),
    #[error("{0} is not connected; nothing was sent (commands are never queued for later)")]
    Offline(String),
    #[error("{0}")]
    MaybeNotSent(String),
}

/// A command handed to the printer's link, with what its reports said before.
pub struct Sent {
    pub reports: watch::Receiver<PrinterSnapshot>,
    pub before: Option<GcodeState>,
}

/// Send `cmd` (named `action` in the history) to printer `name` on behalf of `actor`.
pub async fn send(
    gw: &Gateway,
    name: &str,
    cmd: PrinterCommand,
    action: &str,
    actor: &str,
    confirmed: bool,
) -> Result<Sent, ControlError> {
    let Some(p) = gw.printers.iter().find(|p| p.name == name) else {
        return Err(ControlError::UnknownPrinter(name.to_string()));
    };
    if cmd == PrinterCommand::Stop && !confirmed {
        return Err(ControlError::ConfirmationRequired);
    }
    let mut reports = p.link.subscribe();
    let before = {
        let snap = reports.borrow_and_update();
        snap.link
            .is_online()
            .then(|| snap.state.as_ref().map(|s| s.gcode_state))
            .flatten()
    };
    if let Some(why) = before.and_then(|s| control_not_applicable(&cmd, s)) {
        return Err(ControlError::NotApplicable(format!("{name} {why}")));
    }
    let result = p.link.send(cmd).await;
    let outcome = match &result {
        Ok(_) => "sent".to_string(),
        Err(e) => e.to_string(),
    };
    let at = chrono::Utc::now().timestamp_millis();
    let detail = json!({ "action": action, "by": actor, "outcome": outcome });
    if let Err(e) = gw.store.record_event(name, PRINTER_CONTROL, &detail, at) {
        tracing::warn!("could not record a printer control: {e}");
    }
    match result {
        Ok(_) => Ok(Sent { reports, before }),
        Err(LinkError::Unsupported(why)) => {
            Err(ControlError::Unsupported(format!("{name}: {why}")))
        }
        Err(LinkError::NotConnected) => Err(ControlError::Offline(name.to_string())),
        Err(e) => Err(ControlError::MaybeNotSent(format!(
            "{action} may not have reached {name}: {e}"
        ))),
    }
}
