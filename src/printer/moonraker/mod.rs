//! Klipper printers through Moonraker's `[mqtt]` component. Moonraker connects to printgate's
//! broker (embedded or external) as a client; this link connects to the same broker and talks
//! to it the way Moonraker documents: JSON-RPC on `{instance}/moonraker/api/request` /
//! `…/api/response`, Klipper object updates on `{instance}/klipper/status`, availability
//! (and Moonraker's will) on the retained `{instance}/moonraker/status`. Files go over
//! Moonraker's HTTP API ([`upload`]).
//!
//! The same rules as for Bambu printers hold: every broker connection is a fresh clean session
//! (nothing queued is sent after a reconnect), a command is published once on a connection that
//! is up *and* while Moonraker says it is online, starts carry a unique `mqtt_timestamp` so a
//! duplicate delivery is discarded by Moonraker, and a start is confirmed only by
//! `print_stats` showing our file printing.

pub mod rpc;
mod session;
pub mod status;
pub mod upload;

use crate::config::{LinkConfig, PrinterConfig};
use crate::printer::bambu::commands::SequenceIds;
use crate::printer::{
    CommandOutcome, LinkError, PrinterCommand, PrinterLink, PrinterSnapshot, UploadError,
    UploadProgress,
};
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where the gateway's own MQTT client for Moonraker printers connects: the embedded broker's
/// internal listener or the external broker.
#[derive(Clone)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The broker endpoint once the MQTT side has started (`None` before).
pub type EndpointWatch = watch::Receiver<Option<BrokerEndpoint>>;

/// Upper bound for one `send()`; a command is answered when written to the socket.
const SEND_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Request {
    cmd: PrinterCommand,
    reply: oneshot::Sender<Result<CommandOutcome, LinkError>>,
}

/// One Klipper printer: a task owning the broker session, and this handle.
pub struct MoonrakerPrinter {
    cfg: PrinterConfig,
    cmd_tx: mpsc::Sender<Request>,
    snapshot: watch::Receiver<PrinterSnapshot>,
    http: reqwest::Client,
    target: upload::HttpTarget,
}

impl MoonrakerPrinter {
    /// Start the session task; it runs until `shutdown`. JSON-RPC ids come from `seq` (never
    /// reused, also not across restarts).
    pub fn spawn(
        cfg: PrinterConfig,
        link: LinkConfig,
        endpoint: EndpointWatch,
        seq: SequenceIds,
        shutdown: CancellationToken,
    ) -> Arc<MoonrakerPrinter> {
        let (cmd_tx, cmd_rx) = mpsc::channel(32);
        let (snap_tx, snapshot) = watch::channel(PrinterSnapshot::default());
        let task =
            session::Session::new(cfg.clone(), link, endpoint, seq, cmd_rx, snap_tx, shutdown);
        let span = tracing::info_span!("printer", name = %cfg.name, instance = %cfg.instance_name);
        tokio::spawn(task.run().instrument(span));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let target = upload::HttpTarget {
            base_url: upload::base_url(&cfg.host, cfg.http_port),
            api_key: cfg.api_key.clone(),
        };
        Arc::new(MoonrakerPrinter {
            cfg,
            cmd_tx,
            snapshot,
            http,
            target,
        })
    }

    async fn send_cmd(&self, cmd: PrinterCommand) -> Result<CommandOutcome, LinkError> {
        let (reply, answer) = oneshot::channel();
        self.cmd_tx
            .send(Request { cmd, reply })
            .await
            .map_err(|_| LinkError::Closed)?;
        crate::printer::await_answer(answer, SEND_ANSWER_TIMEOUT).await
    }
}

impl PrinterLink for MoonrakerPrinter {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn subscribe(&self) -> watch::Receiver<PrinterSnapshot> {
        self.snapshot.clone()
    }

    fn send(&self, cmd: PrinterCommand) -> BoxFuture<'_, Result<CommandOutcome, LinkError>> {
        Box::pin(self.send_cmd(cmd))
    }

    fn upload(
        &self,
        local: PathBuf,
        remote_name: String,
        progress: Option<mpsc::Sender<UploadProgress>>,
    ) -> BoxFuture<'_, Result<(), UploadError>> {
        Box::pin(async move {
            upload::upload(&self.http, &self.target, &local, &remote_name, progress).await?;
            tracing::info!(printer = %self.cfg.name, file = %remote_name, "upload verified by Moonraker");
            Ok(())
        })
    }
}
