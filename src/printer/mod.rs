//! Printer links: the vendor-neutral view of a printer (state, link health, commands) and the
//! per-vendor implementations: `bambu/` (the gateway connects to the printer) and `moonraker/`
//! (Klipper's Moonraker connects to the gateway's broker).
//!
//! Everything above this module (dispatcher, web, broker) talks to printers only through
//! [`PrinterLink`] and the [`PrinterSnapshot`] it publishes on a `watch` channel.

pub mod bambu;
pub mod events;
pub mod model;
pub mod moonraker;
pub mod state;

pub use model::Model;
pub use state::{
    CommandAck, ControlState, GcodeState, HmsEntry, LinkState, PrinterSnapshot, PrinterState,
};

use futures::future::BoxFuture;
use std::path::PathBuf;
use tokio::sync::{mpsc, watch};

/// What the gateway asks a printer to start. Built by the dispatcher only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Name of the file already uploaded to the printer's storage root (ASCII, `pg-…gcode.3mf`).
    pub remote_name: String,
    /// 1-based plate index inside the 3MF (`Metadata/plate_<n>.gcode`).
    pub plate: u32,
    /// Job name shown on the printer's screen and echoed back as `subtask_name`.
    pub subtask_name: String,
    /// Unique decimal id in 1..2^31-1 sent as project/task/subtask id; the echo identifies our job.
    pub subtask_id: u32,
    /// Uppercase MD5 of the whole file, or empty for "no check".
    pub md5: String,
    /// Build plate type from the 3MF, or "auto".
    pub bed_type: String,
    pub use_ams: bool,
    /// `ams_mapping` and `ams_mapping2` to send, `None` = no mapping fields.
    pub ams_mapping: Option<AmsMappingFields>,
}

/// The tray mapping fields of a start (docs/bambu-protocol.md §4.2), position = filament id − 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmsMappingFields {
    /// `ams_mapping`: global tray ids, `-1` = unused filament or external spool.
    pub flat: Vec<i64>,
    /// `ams_mapping2`: `(ams_id, slot_id)`, `(255, 255)` = unused.
    pub pairs: Vec<(u32, u32)>,
}

/// A command for one printer. Every command is published at most once, on a connection that is
/// up at that instant; a command issued while the link is down fails with
/// [`LinkError::NotConnected`] and is never queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrinterCommand {
    Start(StartRequest),
    Pause,
    Resume,
    Stop,
    Light(bool),
    /// Ask for a full report (rate-limited by the link).
    PushAll,
    /// A setting a virtual printer's allow-list lets a client change
    /// (`virtual_printer::config::AllowedCommand`): published as `{section: {command, fields…}}`
    /// with the link's own `sequence_id`. Never a start, a motion or a heater.
    Setting(SettingCommand),
}

/// One harmless setting, as a virtual printer's client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingCommand {
    /// Request section (`print`, `xcam`, `camera`).
    pub section: &'static str,
    /// Its `command`.
    pub command: &'static str,
    /// The client's other fields (no `command`, no `sequence_id`).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// What happened to a command from the link's point of view. `Published` is *not* evidence that
/// the printer acted on it (docs/bambu-protocol.md §5): confirmation comes from later reports only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Handed to a live connection with this `sequence_id`.
    Published { sequence_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("printer link is not connected; nothing was sent")]
    NotConnected,
    #[error("printer link has shut down")]
    Closed,
    /// This kind of printer has no such command; nothing was sent.
    #[error("{0}; nothing was sent")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// Progress of an upload in bytes sent so far and the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadProgress {
    pub sent: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("could not connect to the printer's file service: {0}")]
    Connect(String),
    #[error("the printer refused the access code for file upload (530); re-enter the access code")]
    AccessCodeRejected,
    #[error(
        "the printer's storage refused the file ({0}); check the SD card/storage is present, writable and not full"
    )]
    StorageRefused(String),
    #[error("upload was interrupted after {sent} of {total} bytes: {reason}")]
    Interrupted {
        sent: u64,
        total: u64,
        reason: String,
    },
    #[error(
        "upload finished but the printer reports {remote} bytes instead of {local}; the file is not usable"
    )]
    SizeMismatch { local: u64, remote: u64 },
    #[error("{0}")]
    Other(String),
}

/// Wait (at most `timeout`) for a link task's answer to one command.
pub(crate) async fn await_answer(
    answer: tokio::sync::oneshot::Receiver<Result<CommandOutcome, LinkError>>,
    timeout: std::time::Duration,
) -> Result<CommandOutcome, LinkError> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(LinkError::Closed),
        Err(_) => Err(LinkError::Other(
            "the printer link did not answer in time; the command may or may not have been sent"
                .into(),
        )),
    }
}

/// One connected printer as seen by the rest of the gateway.
pub trait PrinterLink: Send + Sync {
    /// The configured printer name (unique).
    fn name(&self) -> &str;
    /// Live state; updated on every report and link change.
    fn subscribe(&self) -> watch::Receiver<PrinterSnapshot>;
    /// Publish one command now, or fail without queuing anything.
    fn send(&self, cmd: PrinterCommand) -> BoxFuture<'_, Result<CommandOutcome, LinkError>>;
    /// The printer's own report payloads as they arrive on printgate's one session (Bambu
    /// printers; what a virtual printer mirrors). `None` for links that have none.
    fn report_feed(&self) -> Option<tokio::sync::broadcast::Receiver<bytes::Bytes>> {
        None
    }
    /// Upload a local file to the printer's storage root under `remote_name`, verified by size.
    fn upload(
        &self,
        local: PathBuf,
        remote_name: String,
        progress: Option<mpsc::Sender<UploadProgress>>,
    ) -> BoxFuture<'_, Result<(), UploadError>>;
}
