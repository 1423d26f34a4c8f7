//! Carries out commands that arrive over MQTT (`printgate/<printer>/cmd/<kind>`) through the
//! same paths as the web: `plate_clear` is a tap handed to the dispatcher (so it can only make a
//! plate clear, never start a print by itself), pause/resume/stop/light go to the printer's link
//! (never queued while it is offline), power goes to the safety room's relay rules when present.

use super::commands::BrokerCommand;
use super::topics::{CommandKind, CommandResult};
use crate::app::Gateway;
use crate::jobs::dispatcher::Event;
use crate::printer::{LinkError, PrinterCommand};
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn result(ok: bool, message: impl Into<String>) -> CommandResult {
    CommandResult {
        ok,
        message: message.into(),
        id: None,
    }
}

/// Execute one command for `gw`.
pub async fn execute(gw: &Gateway, cmd: &BrokerCommand) -> CommandResult {
    let Some(printer) = gw.printers.iter().find(|p| p.name == cmd.printer) else {
        return result(
            false,
            format!("there is no printer called {:?}", cmd.printer),
        );
    };
    let link_cmd = match cmd.kind {
        CommandKind::PlateClear => {
            use rand::Rng;
            let tap_id: [u8; 16] = rand::rng().random();
            let event = Event::Tap {
                printer: cmd.printer.clone(),
                user: format!("mqtt:{}", cmd.user),
                tap_id: hex::encode(tap_id),
            };
            return match gw.dispatcher.submit(event).await {
                Err(e) => result(false, e.to_string()),
                Ok(notices) => {
                    let refused = notices.iter().find(|n| n.message.contains("not accepted"));
                    match refused {
                        Some(n) => result(false, n.message.clone()),
                        None => result(true, format!("plate of {} marked clear", cmd.printer)),
                    }
                }
            };
        }
        CommandKind::Power => {
            let Some(safety) = &gw.safety else {
                return result(
                    false,
                    "the safety room is not running; power cannot be switched",
                );
            };
            let Some(on) = cmd.on else {
                return result(false, "say \"on\" or \"off\" for power");
            };
            // Same rules as the web: refused while tripped, and while printing (no force here).
            return match safety.set_power(&cmd.printer, on, false, &format!("mqtt:{}", cmd.user)) {
                Ok(_) => result(
                    true,
                    format!(
                        "power of {} switched {}",
                        cmd.printer,
                        if on { "on" } else { "off" }
                    ),
                ),
                Err(e) => result(false, e.to_string()),
            };
        }
        CommandKind::Pause => PrinterCommand::Pause,
        CommandKind::Resume => PrinterCommand::Resume,
        CommandKind::Stop => PrinterCommand::Stop,
        CommandKind::Light => PrinterCommand::Light(cmd.on.unwrap_or(true)),
    };
    match printer.link.send(link_cmd).await {
        Ok(_) => result(
            true,
            "sent to the printer; its state shows when it takes effect",
        ),
        Err(LinkError::NotConnected) => result(
            false,
            "the printer is not connected; nothing was sent (commands are never queued)",
        ),
        Err(e @ LinkError::Unsupported(_)) => result(false, e.to_string()),
        Err(e) => result(false, format!("may not have reached the printer: {e}")),
    }
}

/// Run commands from the broker until shutdown. Holds the gateway weakly so it can be dropped.
pub async fn run(
    gw: Weak<Gateway>,
    mut rx: mpsc::Receiver<BrokerCommand>,
    shutdown: CancellationToken,
) {
    loop {
        let cmd = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = rx.recv() => match c { Some(c) => c, None => return },
        };
        let Some(gw) = gw.upgrade() else { return };
        let res = execute(&gw, &cmd).await;
        let _ = cmd.reply.send(res);
    }
}

/// The web's API tokens as broker credentials (token as password, any user name). Every web
/// account is an administrator today, so every valid token may send commands.
pub fn token_check(store: Arc<crate::store::Store>) -> super::auth::TokenCheck {
    Arc::new(move |token: &str| {
        let hash = crate::store::sha256_hex(token);
        match store.api_token_with_user(&hash) {
            Ok(Some(_)) => Some(super::config::Access::Control),
            _ => None,
        }
    })
}
