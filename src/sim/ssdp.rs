//! SSDP-style discovery announcements of a simulated printer (docs/bambu-protocol.md §8): an HTTP-like
//! `NOTIFY` every few seconds as UDP **unicast** to a configured address (loopback in tests; the
//! simulator never broadcasts), and a `200 OK` answer to a directed `M-SEARCH`.
//! `DevConnect.bambu.com` follows the Developer Mode knob (`lan` / `cloud`). The datagrams are built
//! by `printer/bambu/ssdp_wire.rs`, shared with the virtual printers.

use crate::config::Model;
use crate::sim::printer::Hub;
use crate::sim::reports::firmware_version;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::printer::bambu::ssdp_wire::{self, Announcement};
pub use crate::printer::bambu::ssdp_wire::{BAMBU_URN, is_search_for_us};

/// What an announcement says about the printer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceInfo {
    pub ip: Ipv4Addr,
    pub serial: String,
    pub model: Model,
    pub name: String,
    pub developer_mode: bool,
}

impl AnnounceInfo {
    fn wire(&self) -> Announcement<'_> {
        Announcement {
            ip: self.ip,
            serial: &self.serial,
            model_code: self.model.model_code(),
            name: &self.name,
            lan_only: self.developer_mode,
            firmware: firmware_version(self.model),
        }
    }
}

/// The `NOTIFY` datagram, headers exactly as §8.
pub fn notify_message(info: &AnnounceInfo) -> String {
    ssdp_wire::notify_message(&info.wire())
}

/// The `200 OK` answer to an `M-SEARCH`.
pub fn search_response(info: &AnnounceInfo) -> String {
    ssdp_wire::search_response(&info.wire())
}

pub(crate) async fn run_announcer(
    hub: Arc<Hub>,
    target: SocketAddr,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // From the printer's own (loopback) address, as a listener that keys printers by source
    // sees them; a target off loopback is reached through the routing table.
    let source = if target.ip().is_loopback() {
        hub.ip
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let socket = match UdpSocket::bind((source, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "simulator could not open its SSDP socket; no announcements");
            return;
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let info = |hub: &Hub| AnnounceInfo {
        ip: hub.ip,
        serial: hub.serial.clone(),
        model: hub.model,
        name: hub.name.clone(),
        developer_mode: hub.knobs.get().developer_mode,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if hub.powered() && hub.knobs.get().ssdp_enabled {
                    let _ = socket.send_to(notify_message(&info(&hub)).as_bytes(), target).await;
                }
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r
                    && hub.powered()
                    && buf.get(..n).is_some_and(is_search_for_us)
                {
                    let _ = socket.send_to(search_response(&info(&hub)).as_bytes(), from).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_has_the_headers_of_section_8() {
        let info = AnnounceInfo {
            ip: Ipv4Addr::new(192, 168, 1, 57),
            serial: "01P00A451200318".into(),
            model: Model::P1S,
            name: "Garage P1S".into(),
            developer_mode: true,
        };
        let m = notify_message(&info);
        assert!(m.starts_with("NOTIFY * HTTP/1.1\r\nHost: 239.255.255.250:1990\r\n"));
        for h in [
            "Location: 192.168.1.57\r\n",
            "NT: urn:bambulab-com:device:3dprinter:1\r\n",
            "NTS: ssdp:alive\r\n",
            "USN: 01P00A451200318\r\n",
            "DevModel.bambu.com: C12\r\n",
            "DevName.bambu.com: Garage P1S\r\n",
            "DevConnect.bambu.com: lan\r\n",
            "DevVersion.bambu.com: 01.08.02.00\r\n",
        ] {
            assert!(m.contains(h), "{h}");
        }
        assert!(m.ends_with("\r\n\r\n"));
        let cloud = notify_message(&AnnounceInfo {
            developer_mode: false,
            ..info
        });
        assert!(cloud.contains("DevConnect.bambu.com: cloud\r\n"));
    }

    #[test]
    fn search_detection() {
        assert!(is_search_for_us(
            b"M-SEARCH * HTTP/1.1\r\nST: urn:bambulab-com:device:3dprinter:1\r\n\r\n"
        ));
        assert!(!is_search_for_us(b"NOTIFY * HTTP/1.1\r\n"));
    }
}
