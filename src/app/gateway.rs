//! The shared handle of a running gateway: the config, the store, the printer links, the
//! dispatcher, the safety runtime. The web handlers and the broker's command executor receive
//! it as an `Arc<Gateway>`; it is built in one place, [`super::serve::start`].

use crate::config::{Config, Model};
use crate::printer::PrinterLink;
use crate::store::Store;
use crate::{broker, jobs, printer, safety, views};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One configured printer and its live link.
pub struct PrinterEntry {
    pub name: String,
    pub model: Model,
    pub link: Arc<dyn PrinterLink>,
    /// Its camera, shared by every viewer (one upstream connection).
    pub camera: crate::camera::CameraHub,
}

/// Everything the running parts share.
pub struct Gateway {
    pub config: Config,
    pub store: Arc<Store>,
    pub printers: Vec<PrinterEntry>,
    /// Uploaded print files, by content hash.
    pub files: Arc<jobs::files::FileStore>,
    /// The job queue and plate-clear gate: every start goes through it.
    pub dispatcher: jobs::runner::Dispatcher,
    pub shutdown: CancellationToken,
    /// Printers announcing themselves on the LAN (SSDP), once the broker side has started.
    pub discovery: std::sync::OnceLock<broker::ssdp::Discovery>,
    /// Readable text for an HMS code (from the printer vendor's catalogue).
    pub hms_text: views::HmsTextFn,
    /// Smoke input, relays, thermal watchdog, trip latch and alerts (`None` only in setups that
    /// build a `Gateway` without [`start`]).
    pub safety: Option<safety::runtime::SafetyHandle>,
    /// Where Klipper printers' links reach the broker, once the MQTT side has started.
    pub broker_endpoint: tokio::sync::watch::Sender<Option<printer::moonraker::BrokerEndpoint>>,
    /// In a fleet: the other gateways' retained state on the shared broker (`/fleet`).
    pub fleet: std::sync::OnceLock<Arc<crate::broker::fleet::FleetView>>,
    /// Web request and MQTT counters for `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The virtual printers served (empty unless configured), once they listen.
    pub virtual_printers: std::sync::OnceLock<Vec<crate::virtual_printer::VirtualPrinterInfo>>,
}
