//! Virtual printers (issue 19, first slice; off unless `[printers.virtual_printer] enabled`):
//! printgate serves a configured Bambu printer to the LAN as a Bambu printer of its own, so
//! that slicers, Home Assistant and displays point at printgate while the real printer keeps
//! one session only, printgate's. Each virtual printer has its own serial and access code
//! (`identity.rs`), a certificate signed by printgate's CA, and an MQTT-over-TLS server
//! (`server.rs`) whose report topic mirrors the real printer (`mirror.rs`) and whose request
//! topic goes through printgate's rules (`requests.rs`, `controls.rs`), and an implicit FTPS
//! server (`ftps.rs`) that streams uploads into printgate's file store. A `project_file` is
//! never a start: it queues the uploaded file as one job (`uploads.rs`), which the dispatcher
//! starts after Plate clear.
//!
//! Slicers find it by its SSDP announcements (`announce.rs`) and add it through the detect
//! handshake on TCP 3000 / TLS 3002 (`bind.rs`). One IPv4 address per virtual printer: slicers
//! reach every printer on the same fixed ports and check the certificate's CN without SNI.

pub mod allow;
pub mod announce;
pub mod bind;
pub mod config;
pub mod ftps;
pub mod identity;
pub mod login_limit;
pub mod mirror;
pub mod requests;
pub mod server;
pub mod uploads;

use crate::app::Gateway;
use bytes::Bytes;
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a person (or a tool's setup) needs to reach one virtual printer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VirtualPrinterInfo {
    /// The gateway's printer it stands for.
    pub printer: String,
    /// The virtual printer's own serial (tools subscribe to `device/<serial>/report`).
    pub serial: String,
    /// Its LAN access code (MQTT user `bblp`).
    pub access_code: String,
    /// The address it listens on (`0.0.0.0`: every address of the gateway).
    pub host: String,
    /// Its MQTT-over-TLS port.
    pub mqtt_port: u16,
    /// Its implicit-FTPS port (uploads).
    pub ftps_port: Option<u16>,
    /// The address its SSDP announcements name (`None`: not announced, see the log).
    pub announced_address: Option<String>,
    /// The plain TCP port of the slicers' detect handshake (3000 on printers).
    pub detect_port: Option<u16>,
    /// The TLS port of the slicers' detect handshake (3002 on printers).
    pub detect_tls_port: Option<u16>,
}

/// The report feeds of the printers that have a virtual printer, taken as soon as their links
/// exist so that the first full report of printgate's session is not missed.
pub fn take_feeds(
    gw_printers: &[crate::app::PrinterEntry],
    configs: &[crate::config::PrinterConfig],
) -> Vec<(String, broadcast::Receiver<Bytes>)> {
    gw_printers
        .iter()
        .filter(|p| {
            configs
                .iter()
                .any(|c| c.name == p.name && c.virtual_printer.enabled)
        })
        .filter_map(|p| Some((p.name.clone(), p.link.report_feed()?)))
        .collect()
}

/// Start a virtual printer for every printer with one enabled; returns how to reach them.
pub async fn start(
    gw: &Arc<Gateway>,
    feeds: Vec<(String, broadcast::Receiver<Bytes>)>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Vec<VirtualPrinterInfo>> {
    let mut feeds = feeds;
    let wanted: Vec<_> = gw
        .config
        .printers
        .iter()
        .filter(|c| c.virtual_printer.enabled && c.kind == crate::config::PrinterKind::Bambu)
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let identities = identity::IdentityStore::new(&gw.config.data_dir);
    let authority = identities.authority()?;
    let mut infos = Vec::new();
    for pc in wanted {
        let Some(entry) = gw.printers.iter().find(|p| p.name == pc.name) else {
            continue;
        };
        let feed = match feeds.iter().position(|(n, _)| *n == pc.name) {
            Some(i) => feeds.swap_remove(i).1,
            None => match entry.link.report_feed() {
                Some(f) => f,
                None => continue,
            },
        };
        let credentials = identities.credentials(&pc.name, pc.model)?;
        let listen = pc.virtual_printer.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!(
                "the virtual printer of {} cannot listen on {listen}: {e}; choose another printers.virtual_printer.listen for it (or stop what uses that port)",
                pc.name
            )
        })?;
        let addr = listener.local_addr()?;
        let ftps_listen = pc.virtual_printer.ftps_listen();
        let ftps_listener = tokio::net::TcpListener::bind(ftps_listen).await.map_err(|e| {
            anyhow::anyhow!(
                "the virtual printer of {} cannot take uploads on {ftps_listen}: {e}; choose another printers.virtual_printer.ftps_listen for it (port 990 needs root or CAP_NET_BIND_SERVICE)",
                pc.name
            )
        })?;
        let ftps_addr = ftps_listener.local_addr()?;
        let tls = authority.server_config(&credentials.serial)?;
        let name = format!("{} via printgate", pc.name);
        let detect = bind::DetectIdentity {
            serial: credentials.serial.clone(),
            model_code: pc.model.model_code(),
            name: name.clone(),
            firmware: String::new(),
        };
        let mut detect_ports = [None, None];
        for (slot, (port, key, secure)) in [
            (pc.virtual_printer.detect_port, "detect_port", false),
            (pc.virtual_printer.detect_tls_port, "detect_tls_port", true),
        ]
        .into_iter()
        .enumerate()
        {
            let at = SocketAddr::new(listen.ip(), port);
            let l = tokio::net::TcpListener::bind(at).await.map_err(|e| {
                anyhow::anyhow!(
                    "the virtual printer of {} cannot answer slicers' detect on {at}: {e}; choose another printers.virtual_printer.{key} for it (or stop what uses that port)",
                    pc.name
                )
            })?;
            detect_ports[slot] = Some(l.local_addr()?.port());
            let acceptor = secure.then(|| tokio_rustls::TlsAcceptor::from(tls.clone()));
            tasks.spawn(bind::run_listener(
                l,
                acceptor,
                detect.clone(),
                entry.link.subscribe(),
                shutdown.clone(),
            ));
        }
        let announced = start_announcer(pc, &credentials.serial, &name, entry, shutdown, tasks);
        let vp = server::VirtualPrinter::new(server::Parts {
            printer: pc.name.clone(),
            model: pc.model,
            files: gw.files.clone(),
            mirror: match addr.ip() {
                std::net::IpAddr::V4(v4) => {
                    mirror::Mirror::new(pc.model, &pc.serial, &credentials.serial).with_address(v4)
                }
                std::net::IpAddr::V6(_) => {
                    mirror::Mirror::new(pc.model, &pc.serial, &credentials.serial)
                }
            },
            tls,
            credentials: credentials.clone(),
            link: entry.link.clone(),
            allow: pc.virtual_printer.allow.clone(),
            gateway: Arc::downgrade(gw),
        });
        tasks.spawn(vp.clone().run_mirror(feed, shutdown.clone()));
        tasks.spawn(ftps::run_listener(
            vp.clone(),
            ftps_listener,
            shutdown.clone(),
        ));
        tasks.spawn(vp.run_listener(listener, shutdown.clone()));
        tracing::info!(printer = %pc.name, serial = %credentials.serial, %addr, "virtual printer listening");
        infos.push(VirtualPrinterInfo {
            printer: pc.name.clone(),
            serial: credentials.serial,
            access_code: credentials.access_code,
            host: addr.ip().to_string(),
            mqtt_port: addr.port(),
            ftps_port: Some(ftps_addr.port()),
            announced_address: announced.map(|ip| ip.to_string()),
            detect_port: detect_ports[0],
            detect_tls_port: detect_ports[1],
        });
    }
    Ok(infos)
}

/// Start the SSDP announcements of one virtual printer; the announced address, or `None` (said
/// in the log) when there is none to announce or the socket cannot be opened. Discovery is a
/// convenience: a slicer can still add the printer by IP, so this never stops the gateway.
fn start_announcer(
    pc: &crate::config::PrinterConfig,
    serial: &str,
    name: &str,
    entry: &crate::app::PrinterEntry,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Option<Ipv4Addr> {
    let c = &pc.virtual_printer;
    let (ip, source) =
        match announce::location(c.listen.ip(), c.address, announce::default_route_ipv4) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(printer = %pc.name, "virtual printer not announced: {e}");
                return None;
            }
        };
    let socket = match announce::bind_socket(c.listen.ip(), c.ssdp_port, c.announce_to) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(printer = %pc.name, "virtual printer not announced: cannot open UDP {}:{}: {e}; choose another printers.virtual_printer.ssdp_port", c.listen.ip(), c.ssdp_port);
            return None;
        }
    };
    tracing::info!(printer = %pc.name, %serial, address = %ip, "virtual printer announced to {} as {ip} (from {source})", c.announce_to);
    let identity = announce::Identity {
        ip,
        serial: serial.to_string(),
        model_code: pc.model.model_code(),
        name: name.to_string(),
    };
    tasks.spawn(announce::run(
        socket,
        c.announce_to,
        identity,
        entry.link.subscribe(),
        shutdown.clone(),
    ));
    Some(ip)
}
