//! `[printers.virtual_printer]`: whether printgate serves this Bambu printer to the LAN as a
//! virtual printer, and where. Off unless `enabled = true` (issue 19 is landing in slices; see
//! the README for what a virtual printer does today).

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};

/// The standard MQTT-over-TLS port of a Bambu printer.
pub const STANDARD_MQTT_PORT: u16 = 8883;

/// One printer's virtual printer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualPrinterConfig {
    /// Serve the virtual printer (default off).
    #[serde(default)]
    pub enabled: bool,
    /// Address and port of its MQTT-over-TLS server. Slicers and Home Assistant expect port
    /// 8883, so several virtual printers need one address each; port 0 picks a free port
    /// (tests and `printgate demo`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address and port of its implicit-FTPS server (uploads); default: the address of
    /// `listen` with port 990 (the printers' port; needs root or CAP_NET_BIND_SERVICE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftps_listen: Option<SocketAddr>,
    /// Harmless commands its clients may send on to the printer (`allow.rs` has the fixed set;
    /// anything else in the list is a config error). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<super::allow::AllowedCommand>,
    /// The address announced to slicers (SSDP `Location`) when `listen` is `0.0.0.0`; default:
    /// the IPv4 address of the interface with the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Where the SSDP announcements go: default the broadcast `255.255.255.255:2021`, as
    /// printers do (tests and `printgate demo`: a loopback address).
    #[serde(default = "default_announce_to")]
    pub announce_to: SocketAddr,
    /// UDP port the announcements come from and slicers' searches are answered on (2021).
    #[serde(default = "default_ssdp_port")]
    pub ssdp_port: u16,
    /// TCP port of the slicers' detect handshake (plain; 3000 on printers).
    #[serde(default = "default_detect_port")]
    pub detect_port: u16,
    /// TCP port of the slicers' detect handshake over TLS (3002 on printers).
    #[serde(default = "default_detect_tls_port")]
    pub detect_tls_port: u16,
}

/// The standard detect ports of a Bambu printer (plain, TLS).
pub const STANDARD_DETECT_PORT: u16 = 3000;
pub const STANDARD_DETECT_TLS_PORT: u16 = 3002;

fn default_announce_to() -> SocketAddr {
    SocketAddr::from((
        Ipv4Addr::BROADCAST,
        crate::printer::bambu::ssdp_wire::SSDP_PORT,
    ))
}
fn default_ssdp_port() -> u16 {
    crate::printer::bambu::ssdp_wire::SSDP_PORT
}
fn default_detect_port() -> u16 {
    STANDARD_DETECT_PORT
}
fn default_detect_tls_port() -> u16 {
    STANDARD_DETECT_TLS_PORT
}

/// The standard implicit-FTPS port of a Bambu printer.
pub const STANDARD_FTPS_PORT: u16 = 990;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], STANDARD_MQTT_PORT))
}

impl Default for VirtualPrinterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: default_listen(),
            ftps_listen: None,
            allow: Vec::new(),
            address: None,
            announce_to: default_announce_to(),
            ssdp_port: default_ssdp_port(),
            detect_port: STANDARD_DETECT_PORT,
            detect_tls_port: STANDARD_DETECT_TLS_PORT,
        }
    }
}

impl VirtualPrinterConfig {
    /// On, listening on `listen` (tests and the demo); with port 0 the FTPS, SSDP and detect
    /// ports are picked freely too. Announcements go to loopback `127.0.0.1:2021`, never to the
    /// broadcast address (set `announce_to` for another loopback target).
    pub fn on(listen: SocketAddr) -> Self {
        let free = listen.port() == 0;
        let port = |standard: u16| if free { 0 } else { standard };
        Self {
            enabled: true,
            listen,
            ftps_listen: free.then(|| SocketAddr::new(listen.ip(), 0)),
            address: None,
            announce_to: SocketAddr::from((Ipv4Addr::LOCALHOST, default_ssdp_port())),
            ssdp_port: port(default_ssdp_port()),
            detect_port: port(STANDARD_DETECT_PORT),
            detect_tls_port: port(STANDARD_DETECT_TLS_PORT),
            allow: Vec::new(),
        }
    }

    /// Where the FTPS server listens.
    pub fn ftps_listen(&self) -> SocketAddr {
        self.ftps_listen
            .unwrap_or_else(|| SocketAddr::new(self.listen.ip(), STANDARD_FTPS_PORT))
    }

    /// For `skip_serializing_if`: nothing to write while it is off and at its default.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Problems across printers: two virtual printers on one fixed address and port. Each item is
/// (index of the later printer, message).
pub fn listen_conflicts(configs: &[(usize, &VirtualPrinterConfig)]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, (i, c)) in configs.iter().enumerate() {
        if !c.enabled || c.listen.port() == 0 {
            continue;
        }
        let clash = configs[..n].iter().find(|(_, o)| {
            o.enabled
                && o.listen.port() == c.listen.port()
                && (o.listen.ip() == c.listen.ip()
                    || o.listen.ip().is_unspecified()
                    || c.listen.ip().is_unspecified())
        });
        if let Some((j, _)) = clash {
            out.push((
                *i,
                format!(
                    "printers[{j}] already serves its virtual printer on {}; give each virtual printer its own address (slicers expect port {STANDARD_MQTT_PORT} on every printer)",
                    c.listen
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_takes_harmless_commands_only_and_says_why_not() {
        let c: VirtualPrinterConfig =
            toml::from_str("allow = [\"print_speed\", \"xcam_control_set\"]").expect("parses");
        assert_eq!(c.allow.len(), 2);
        let e = toml::from_str::<VirtualPrinterConfig>("allow = [\"gcode_line\"]")
            .expect_err("G-code cannot be allowed")
            .to_string();
        assert!(e.contains("gcode_line") && e.contains("G-code"), "{e}");
    }

    #[test]
    fn off_by_default_and_on_the_standard_port() {
        let c: VirtualPrinterConfig = toml::from_str("").expect("parses");
        assert!(!c.enabled);
        assert_eq!(c.listen.port(), 8883);
        assert!(c.is_default());
    }

    #[test]
    fn two_on_one_address_clash_but_ephemeral_ports_do_not() {
        let a = VirtualPrinterConfig::on("0.0.0.0:8883".parse().unwrap());
        let b = VirtualPrinterConfig::on("192.168.1.9:8883".parse().unwrap());
        let c = VirtualPrinterConfig::on("127.0.0.1:0".parse().unwrap());
        let d = VirtualPrinterConfig::on("127.0.0.1:0".parse().unwrap());
        let found = listen_conflicts(&[(0, &a), (1, &b), (2, &c), (3, &d)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 1);
        assert!(found[0].1.contains("printers[0]"), "{}", found[0].1);
        let off = VirtualPrinterConfig::default();
        assert!(off.allow.is_empty());
        assert!(listen_conflicts(&[(0, &off), (1, &b)]).is_empty());
    }
}
