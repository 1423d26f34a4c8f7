//! Bambu Lab LAN link: MQTT 3.1.1 over TLS 1.2, report merge, commands, FTPS upload
//! (docs/bambu-protocol.md). [`BambuPrinter`] is the [`PrinterLink`] the rest of the gateway uses; the
//! submodules are its parts: pure report/command/error logic and the I/O of the session.

pub mod ams;
pub mod backoff;
pub mod camera;
pub mod commands;
pub mod control;
pub mod errors;
pub mod ftps;
pub mod mqtt_wire;
pub mod report;
pub mod request_json;
pub mod session;
pub mod ssdp_wire;
pub mod tls;

use crate::config::{LinkConfig, PrinterConfig};
use crate::printer::{
    CommandOutcome, LinkError, PrinterCommand, PrinterLink, PrinterSnapshot, UploadError,
    UploadProgress,
};
use commands::SequenceIds;
use ftps::FtpsTarget;
use futures::future::BoxFuture;
use session::{LinkTask, Request, Shared, TaskChannels};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tls::{PinStore, PrinterTls};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Upper bound for one `send()`: a command is answered when written to the socket, when the
/// connection dies, or when a rate-limited `pushall` goes out — all far below this.
const SEND_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One Bambu printer in LAN mode: a connection task owning the MQTT session, and this handle.
pub struct BambuPrinter {
    cfg: PrinterConfig,
    tls: Result<PrinterTls, String>,
    cmd_tx: mpsc::Sender<Request>,
    snapshot: watch::Receiver<PrinterSnapshot>,
    shared: Arc<Shared>,
}

impl BambuPrinter {
    /// Start the connection task for one printer. It runs until `shutdown` is cancelled (or
    /// every handle is dropped). `seq` must be seeded above every `sequence_id` ever used.
    pub fn spawn(
        cfg: PrinterConfig,
        link: LinkConfig,
        pins: Arc<dyn PinStore>,
        seq: SequenceIds,
        shutdown: CancellationToken,
    ) -> Arc<BambuPrinter> {
        let tls = PrinterTls::new(&cfg.serial, cfg.tls, pins).map_err(|e| e.to_string());
        let (cmd_tx, cmd_rx) = mpsc::channel(32);
        let (snap_tx, snapshot) = watch::channel(PrinterSnapshot::default());
        let shared = Arc::new(Shared::new());
        let task = LinkTask::new(
            cfg.clone(),
            link,
            tls.clone(),
            seq,
            shutdown,
            TaskChannels {
                cmd_rx,
                snap: snap_tx,
                shared: shared.clone(),
            },
        );
        let span = tracing::info_span!("printer", name = %cfg.name, serial = %cfg.serial);
        tokio::spawn(task.run().instrument(span));
        Arc::new(BambuPrinter {
            cfg,
            tls,
            cmd_tx,
            snapshot,
            shared,
        })
    }

    pub fn config(&self) -> &PrinterConfig {
        &self.cfg
    }

    /// The TLS client config used for this printer's MQTT session; the FTPS uploader uses the
    /// same one (same pinning, shared session cache for the data channel's resumption).
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .as_ref()
            .map(PrinterTls::client_config)
            .map_err(Clone::clone)
    }

    /// Where the FTPS uploader reaches this printer: same host, the printer's FTPS port, the
    /// serial as TLS server name, and the same pinned TLS config as the MQTT session.
    /// `PROT C` is never allowed from here (no per-printer setting for it yet).
    pub fn ftps_target(&self) -> Result<FtpsTarget, UploadError> {
        let tls = self.tls_config().map_err(UploadError::Connect)?;
        Ok(FtpsTarget {
            host: self.cfg.host.clone(),
            port: self.cfg.ftps_port,
            server_name: self.cfg.serial.clone(),
            access_code: self.cfg.access_code.clone(),
            tls,
            allow_prot_c: false,
        })
    }

    /// End a backoff now: after a person re-paired the certificate (cleared the pin) or fixed
    /// the access code. A link stopped by `FingerprintChanged` only resumes through this.
    pub fn retry_now(&self) {
        self.shared.retry.notify_one();
    }

    /// Whether a connection is up at this instant.
    pub fn is_connected(&self) -> bool {
        self.shared.live.load(Ordering::SeqCst) != 0
    }

    async fn send_cmd(&self, cmd: PrinterCommand) -> Result<CommandOutcome, LinkError> {
        let conn = self.shared.live.load(Ordering::SeqCst);
        if conn == 0 {
            return Err(LinkError::NotConnected);
        }
        let (reply, answer) = oneshot::channel();
        self.cmd_tx
            .send(Request { cmd, conn, reply })
            .await
            .map_err(|_| LinkError::Closed)?;
        crate::printer::await_answer(answer, SEND_ANSWER_TIMEOUT).await
    }
}

impl PrinterLink for BambuPrinter {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn subscribe(&self) -> watch::Receiver<PrinterSnapshot> {
        self.snapshot.clone()
    }

    fn send(&self, cmd: PrinterCommand) -> BoxFuture<'_, Result<CommandOutcome, LinkError>> {
        Box::pin(self.send_cmd(cmd))
    }

    fn report_feed(&self) -> Option<tokio::sync::broadcast::Receiver<bytes::Bytes>> {
        Some(self.shared.reports.subscribe())
    }

    fn upload(
        &self,
        local: PathBuf,
        remote_name: String,
        progress: Option<mpsc::Sender<UploadProgress>>,
    ) -> BoxFuture<'_, Result<(), UploadError>> {
        Box::pin(async move {
            let target = self.ftps_target()?;
            let report = ftps::upload(&target, &local, &remote_name, progress).await?;
            for warning in &report.warnings {
                tracing::warn!(printer = %self.cfg.name, file = %remote_name, "upload: {warning}");
            }
            tracing::info!(printer = %self.cfg.name, file = %remote_name, bytes = report.bytes, "upload verified");
            Ok(())
        })
    }
}
