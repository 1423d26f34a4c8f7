//! SSDP announcements of one virtual printer (BAMBU-LAN.md §8), so that Bambu Studio and
//! OrcaSlicer list it among the printers they find: a `NOTIFY` every [`ANNOUNCE_EVERY`] to
//! `announce_to` (the broadcast `255.255.255.255:2021` in `serve`, as printers do; a loopback
//! address in tests and the demo) and a `200 OK` answer to an `M-SEARCH` received on its socket.
//! The datagrams are built by `printer/bambu/ssdp_wire.rs` (shared with the simulator).
//!
//! `Location` is the virtual printer's own address: the one in `listen`, or with `0.0.0.0` the
//! configured `address`, else the IPv4 address of the interface with the default route (found by
//! `connect()` of a UDP socket, which sends nothing).

use crate::printer::PrinterSnapshot;
use crate::printer::bambu::ssdp_wire::{self, Announcement};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a virtual printer announces itself (printers: every 3–5 s).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// Where the announced address came from (said in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationSource {
    /// The specific address in `listen`.
    Listen,
    /// `address` in the config (`listen` is `0.0.0.0`).
    Configured,
    /// The interface with the default route (`listen` is `0.0.0.0`, no `address`).
    DefaultRoute,
}

impl std::fmt::Display for LocationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LocationSource::Listen => "the address in printers.virtual_printer.listen",
            LocationSource::Configured => "printers.virtual_printer.address",
            LocationSource::DefaultRoute => "the interface with the default route",
        })
    }
}

/// The address to announce: `listen`'s, `configured`, or the default route's (`default_route`
/// is asked only when needed).
pub fn location(
    listen: IpAddr,
    configured: Option<Ipv4Addr>,
    default_route: impl FnOnce() -> std::io::Result<Ipv4Addr>,
) -> Result<(Ipv4Addr, LocationSource), String> {
    match listen {
        IpAddr::V4(ip) if !ip.is_unspecified() => Ok((ip, LocationSource::Listen)),
        IpAddr::V6(ip) if !ip.is_unspecified() => Err(format!(
            "listen address {ip} is IPv6 but slicers find printers by an IPv4 address; listen on an IPv4 address"
        )),
        _ => match configured {
            Some(ip) => Ok((ip, LocationSource::Configured)),
            None => default_route()
                .map(|ip| (ip, LocationSource::DefaultRoute))
                .map_err(|e| {
                    format!(
                        "listen is 0.0.0.0 and there is no default route to take an address from ({e}); set printers.virtual_printer.address to the gateway's LAN address"
                    )
                }),
        },
    }
}

/// The IPv4 address of the interface with the default route: a UDP socket `connect()`ed to a
/// documentation address (TEST-NET-1) picks its source address and sends nothing.
pub fn default_route_ipv4() -> std::io::Result<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), ssdp_wire::SSDP_PORT))?;
    match socket.local_addr()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
        other => Err(std::io::Error::other(format!(
            "the default route has no IPv4 source address ({other})"
        ))),
    }
}

/// The announcement socket: bound to `(ip, port)` with `SO_REUSEADDR`, since printgate's own
/// discovery listener (`broker/ssdp.rs`) and Bambu Studio may hold port 2021 too; broadcast on
/// when `target` is the broadcast address.
pub fn bind_socket(ip: IpAddr, port: u16, target: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if target.ip() == IpAddr::V4(Ipv4Addr::BROADCAST) {
        socket.set_broadcast(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Who a virtual printer says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub ip: Ipv4Addr,
    pub serial: String,
    pub model_code: &'static str,
    /// `<printer name> via printgate`.
    pub name: String,
}

impl Identity {
    fn announcement<'a>(&'a self, firmware: &'a str) -> Announcement<'a> {
        Announcement {
            ip: self.ip,
            serial: &self.serial,
            model_code: self.model_code,
            name: &self.name,
            lan_only: true,
            firmware,
        }
    }
}

/// The real printer's firmware version when its session has reported it.
fn firmware(snapshots: &watch::Receiver<PrinterSnapshot>) -> String {
    snapshots
        .borrow()
        .state
        .as_ref()
        .and_then(|s| s.firmware.clone())
        .unwrap_or_default()
}

/// Announce until `shutdown`; answer searches received on `socket`. Nothing received can stop
/// the task; send errors are logged once.
pub async fn run(
    socket: UdpSocket,
    target: SocketAddr,
    identity: Identity,
    snapshots: watch::Receiver<PrinterSnapshot>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let mut send_failed = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let fw = firmware(&snapshots);
                let msg = ssdp_wire::notify_message(&identity.announcement(&fw));
                match socket.send_to(msg.as_bytes(), target).await {
                    Ok(_) => send_failed = false,
                    Err(e) if !send_failed => {
                        send_failed = true;
                        tracing::warn!(serial = %identity.serial, %target, "virtual printer announcement not sent: {e}");
                    }
                    Err(_) => {}
                }
            }
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) if buf.get(..n).is_some_and(ssdp_wire::is_search_for_us) => {
                        let fw = firmware(&snapshots);
                        let msg = ssdp_wire::search_response(&identity.announcement(&fw));
                        let _ = socket.send_to(msg.as_bytes(), from).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("virtual printer SSDP receive error: {e}");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_route() -> std::io::Result<Ipv4Addr> {
        Err(std::io::Error::other("network unreachable"))
    }

    #[test]
    fn the_listen_address_wins_then_the_configured_one_then_the_route() {
        let specific: IpAddr = "192.168.1.40".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let alias = Ipv4Addr::new(192, 168, 1, 41);
        assert_eq!(
            location(specific, Some(alias), no_route),
            Ok((Ipv4Addr::new(192, 168, 1, 40), LocationSource::Listen))
        );
        assert_eq!(
            location(any, Some(alias), no_route),
            Ok((alias, LocationSource::Configured))
        );
        assert_eq!(
            location(any, None, || Ok(Ipv4Addr::new(10, 0, 0, 5))),
            Ok((Ipv4Addr::new(10, 0, 0, 5), LocationSource::DefaultRoute))
        );
        let err = location(any, None, no_route).unwrap_err();
        assert!(err.contains("printers.virtual_printer.address"), "{err}");
        assert!(location("::1".parse().unwrap(), None, no_route).is_err());
    }
}
