//! The printer side of Bambu SSDP discovery (BAMBU-LAN.md §8), pure: the `NOTIFY` datagram a
//! printer sends every few seconds, the `200 OK` answer to an `M-SEARCH`, and whether a datagram
//! is a search for Bambu printers. Shared by the simulator (`sim/ssdp.rs`) and the virtual
//! printers (`virtual_printer/announce.rs`); the listening side is `broker/ssdp.rs`.

use std::net::Ipv4Addr;

/// Search target / notification type of Bambu printers.
pub const BAMBU_URN: &str = "urn:bambulab-com:device:3dprinter:1";
/// The UDP port printers announce to and slicers search on.
pub const SSDP_PORT: u16 = 2021;

/// What an announcement says about a printer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement<'a> {
    /// `Location`: the printer's IPv4 address, bare.
    pub ip: Ipv4Addr,
    /// `USN`: the serial (equals the TLS certificate's CN).
    pub serial: &'a str,
    /// `DevModel.bambu.com`: the model code (§11).
    pub model_code: &'a str,
    /// `DevName.bambu.com`.
    pub name: &'a str,
    /// `DevConnect.bambu.com`: `lan` when true (LAN-only mode), else `cloud`.
    pub lan_only: bool,
    /// `DevVersion.bambu.com`: firmware version.
    pub firmware: &'a str,
}

/// A header value on one line: CR and LF would end the header (or start a forged one).
fn one_line(value: &str) -> String {
    value.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

fn headers(a: &Announcement<'_>) -> String {
    format!(
        "Location: {ip}\r\n\
         USN: {serial}\r\n\
         Cache-Control: max-age=1800\r\n\
         DevModel.bambu.com: {code}\r\n\
         DevName.bambu.com: {name}\r\n\
         DevSignal.bambu.com: -48\r\n\
         DevConnect.bambu.com: {connect}\r\n\
         DevBind.bambu.com: free\r\n\
         Devseclink.bambu.com: secure\r\n\
         DevInf.bambu.com: wlan0\r\n\
         DevVersion.bambu.com: {fw}\r\n\
         DevCap.bambu.com: 1\r\n",
        ip = a.ip,
        serial = one_line(a.serial),
        code = one_line(a.model_code),
        name = one_line(a.name),
        connect = if a.lan_only { "lan" } else { "cloud" },
        fw = one_line(a.firmware),
    )
}

/// The `NOTIFY` datagram, headers exactly as §8.
pub fn notify_message(a: &Announcement<'_>) -> String {
    format!(
        "NOTIFY * HTTP/1.1\r\n\
         Host: 239.255.255.250:1990\r\n\
         Server: UPnP/1.0\r\n\
         NT: {BAMBU_URN}\r\n\
         NTS: ssdp:alive\r\n\
         {}\r\n",
        headers(a)
    )
}

/// The `200 OK` answer to an `M-SEARCH`.
pub fn search_response(a: &Announcement<'_>) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n\
         Server: UPnP/1.0\r\n\
         Date: {}\r\n\
         EXT:\r\n\
         ST: {BAMBU_URN}\r\n\
         {}\r\n",
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
        headers(a)
    )
}

/// An `M-SEARCH` for Bambu printers (or everything).
pub fn is_search_for_us(datagram: &[u8]) -> bool {
    let text = String::from_utf8_lossy(datagram);
    text.starts_with("M-SEARCH")
        && (text.contains(BAMBU_URN) || text.to_ascii_lowercase().contains("ssdp:all"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Announcement<'static> {
        Announcement {
            ip: Ipv4Addr::new(192, 168, 1, 57),
            serial: "01P00A451200318",
            model_code: "C12",
            name: "Garage P1S",
            lan_only: true,
            firmware: "01.08.02.00",
        }
    }

    #[test]
    fn a_name_cannot_add_a_header() {
        let m = notify_message(&Announcement {
            name: "evil\r\nUSN: 0000000000000",
            ..example()
        });
        assert!(
            m.contains("DevName.bambu.com: evilUSN: 0000000000000\r\n"),
            "{m}"
        );
        assert_eq!(m.matches("\r\nUSN:").count(), 1);
    }

    #[test]
    fn the_answer_names_the_search_target() {
        let m = search_response(&example());
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(m.contains("ST: urn:bambulab-com:device:3dprinter:1\r\n"));
        assert!(m.contains("USN: 01P00A451200318\r\n"));
        assert!(m.ends_with("\r\n\r\n"));
    }
}
