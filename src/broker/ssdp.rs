//! Bambu printer discovery on the LAN (docs/bambu-protocol.md §8): a pure parser for the printers' SSDP
//! `NOTIFY` datagrams (and `200 OK` answers to an `M-SEARCH`), a bounded list of the printers seen
//! recently, and the UDP listener task that feeds it. "Add printer" shows this list with model and
//! serial filled in.
//!
//! Nothing here trusts the datagram: it is size-capped, every header is optional, strings are
//! length-capped, the printer's address must be the datagram's source address (a printer
//! announces itself, not somebody else), and the list has a fixed capacity.

use crate::printer::Model;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Notification type / search target of Bambu printers.
pub const BAMBU_URN: &str = "urn:bambulab-com:device:3dprinter:1";
/// Largest datagram accepted; real announcements are ~450 bytes.
pub const MAX_DATAGRAM: usize = 2048;
/// Longest header value kept (names, versions); longer values are cut.
const MAX_VALUE_CHARS: usize = 64;
/// Most header lines looked at in one datagram.
const MAX_LINES: usize = 48;

/// What one announcement says about a printer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsdpAnnouncement {
    /// `USN`: the printer's serial (equals its TLS certificate CN).
    pub serial: String,
    /// `Location`: the printer's IPv4 address.
    pub ip: Ipv4Addr,
    /// `DevModel.bambu.com` as sent (model code, docs/bambu-protocol.md §11).
    pub model_code: Option<String>,
    /// The model, when the code is one printgate knows.
    pub model: Option<Model>,
    /// `DevName.bambu.com`: the user-editable name.
    pub name: Option<String>,
    /// `DevConnect.bambu.com`: `lan` (LAN-only, Developer Mode possible) or `cloud`.
    pub connect: Option<String>,
    /// `DevBind.bambu.com`: `free` / `occupied`.
    pub bind: Option<String>,
    /// `DevVersion.bambu.com`: firmware version.
    pub firmware: Option<String>,
    /// `DevSignal.bambu.com`: Wi-Fi RSSI in dBm.
    pub signal_dbm: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsdpError {
    #[error("datagram of {0} bytes is larger than the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    #[error("not an SSDP NOTIFY or search answer")]
    NotAnnouncement,
    #[error("announcement is not from a Bambu printer (NT/ST {0:?})")]
    NotBambu(String),
    #[error("printer says goodbye (ssdp:byebye)")]
    ByeBye,
    #[error("announcement has no usable serial (USN)")]
    BadSerial,
    #[error("announcement has no usable IPv4 address (Location)")]
    BadLocation,
    #[error("announcement of printgate's own virtual printer {0}; not a printer to add")]
    OwnVirtualPrinter(String),
    #[error("announcement names {location} but came from {sender}; ignored as spoofed")]
    Spoofed {
        location: Ipv4Addr,
        sender: std::net::IpAddr,
    },
}

fn clip(value: &str) -> String {
    value.chars().take(MAX_VALUE_CHARS).collect()
}

/// A serial is 8–32 characters of ASCII letters and digits (15 on every known model).
fn usable_serial(s: &str) -> bool {
    (8..=32).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `Location` is a bare IPv4 address; tolerate a scheme and a port/path in case firmware adds them.
fn parse_location(v: &str) -> Option<Ipv4Addr> {
    let v = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .unwrap_or(v);
    let host = v.split(['/', ':']).next().unwrap_or(v);
    host.trim().parse().ok()
}

/// Parse one datagram. Header names are case-insensitive, lines may end in `\n` or `\r\n`, and
/// missing optional headers are tolerated; `NT`/`ST` must name Bambu printers when present.
pub fn parse_notify(datagram: &[u8]) -> Result<SsdpAnnouncement, SsdpError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(SsdpError::TooLarge(datagram.len()));
    }
    let text = String::from_utf8_lossy(datagram);
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let first = lines.next().unwrap_or("").trim();
    let starts = |prefix: &str| {
        first
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let is_notify = starts("NOTIFY ");
    let is_answer = starts("HTTP/1.1 200");
    if !is_notify && !is_answer {
        return Err(SsdpError::NotAnnouncement);
    }
    let mut headers: HashMap<String, &str> = HashMap::new();
    for line in lines.take(MAX_LINES) {
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_insert(value.trim());
        }
    }
    let get = |name: &str| headers.get(name).copied().filter(|v| !v.is_empty());
    if let Some(kind) = get("nt").or_else(|| get("st"))
        && !kind.eq_ignore_ascii_case(BAMBU_URN)
    {
        return Err(SsdpError::NotBambu(clip(kind)));
    }
    if get("nts").is_some_and(|v| v.eq_ignore_ascii_case("ssdp:byebye")) {
        return Err(SsdpError::ByeBye);
    }
    let serial = get("usn")
        .map(|v| v.strip_prefix("uuid:").unwrap_or(v).trim())
        .filter(|s| usable_serial(s))
        .ok_or(SsdpError::BadSerial)?
        .to_string();
    let ip = get("location")
        .and_then(parse_location)
        .ok_or(SsdpError::BadLocation)?;
    let model_code = get("devmodel.bambu.com").map(clip);
    Ok(SsdpAnnouncement {
        serial,
        ip,
        model: model_code.as_deref().and_then(Model::from_model_code),
        model_code,
        name: get("devname.bambu.com").map(clip),
        connect: get("devconnect.bambu.com").map(|v| clip(v).to_ascii_lowercase()),
        bind: get("devbind.bambu.com").map(|v| clip(v).to_ascii_lowercase()),
        firmware: get("devversion.bambu.com").map(clip),
        signal_dbm: get("devsignal.bambu.com").and_then(|v| v.parse().ok()),
    })
}

/// [`parse_notify`] plus the anti-spoofing rule: the announced address must be the sender's.
pub fn parse_from(datagram: &[u8], source: SocketAddr) -> Result<SsdpAnnouncement, SsdpError> {
    let a = parse_notify(datagram)?;
    if source.ip() != std::net::IpAddr::V4(a.ip) {
        return Err(SsdpError::Spoofed {
            location: a.ip,
            sender: source.ip(),
        });
    }
    Ok(a)
}

/// One printer seen on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenPrinter {
    pub announcement: SsdpAnnouncement,
    pub first_seen: Instant,
    pub last_seen: Instant,
    /// Announcements received (saturating).
    pub count: u64,
}

/// Printers seen recently, keyed by serial: bounded in size, entries expire after `expiry`
/// without an announcement (printers announce every 3–5 s; `max-age` 1800 s is far too long).
#[derive(Debug, Clone)]
pub struct DiscoveryList {
    entries: HashMap<String, SeenPrinter>,
    capacity: usize,
    expiry: Duration,
}

impl DiscoveryList {
    /// Default: 64 printers, gone after 30 s (six missed announcements).
    pub const DEFAULT_CAPACITY: usize = 64;
    pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(30);

    pub fn new(capacity: usize, expiry: Duration) -> Self {
        DiscoveryList {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            expiry,
        }
    }

    /// Record an announcement at `now`. When the list is full, the printer silent the longest
    /// makes room. Returns true if the list's visible content changed (new printer or new data).
    pub fn observe(&mut self, a: SsdpAnnouncement, now: Instant) -> bool {
        self.expire(now);
        if let Some(e) = self.entries.get_mut(&a.serial) {
            // Only the signal strength changes between real announcements.
            let changed = SsdpAnnouncement {
                signal_dbm: e.announcement.signal_dbm,
                ..a.clone()
            } != e.announcement;
            e.announcement = a;
            e.last_seen = now;
            e.count = e.count.saturating_add(1);
            return changed;
        }
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self
                .entries
                .values()
                .min_by_key(|e| e.last_seen)
                .map(|e| e.announcement.serial.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(
            a.serial.clone(),
            SeenPrinter {
                announcement: a,
                first_seen: now,
                last_seen: now,
                count: 1,
            },
        );
        true
    }

    /// Drop printers not heard from within `expiry`. Returns how many were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let expiry = self.expiry;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) <= expiry);
        before - self.entries.len()
    }

    /// Printers seen within `expiry` of `now`, sorted by serial.
    pub fn current(&self, now: Instant) -> Vec<SeenPrinter> {
        let mut v: Vec<SeenPrinter> = self
            .entries
            .values()
            .filter(|e| now.saturating_duration_since(e.last_seen) <= self.expiry)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.announcement.serial.cmp(&b.announcement.serial));
        v
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for DiscoveryList {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY, Self::DEFAULT_EXPIRY)
    }
}

/// The shared discovery list plus a counter that increments on every change (await it with
/// [`Discovery::changes`]).
#[derive(Debug, Clone)]
pub struct Discovery {
    list: Arc<Mutex<DiscoveryList>>,
    version: Arc<watch::Sender<u64>>,
    /// Serials of printgate's own virtual printers: they announce themselves on the same port
    /// but are not printers to add.
    own: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Discovery {
    pub fn new(list: DiscoveryList) -> Self {
        Discovery {
            list: Arc::new(Mutex::new(list)),
            version: Arc::new(watch::channel(0).0),
            own: Arc::default(),
        }
    }

    /// Printers seen recently (for "Add printer").
    pub fn seen(&self) -> Vec<SeenPrinter> {
        let now = Instant::now();
        match self.list.lock() {
            Ok(mut l) => {
                l.expire(now);
                l.current(now)
            }
            Err(_) => Vec::new(),
        }
    }

    /// A receiver that sees every change of the list.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Never list these serials (printgate's own virtual printers); drops them if listed.
    pub fn hide_serials(&self, serials: impl IntoIterator<Item = String>) {
        if let Ok(mut own) = self.own.lock() {
            own.extend(serials);
            if let Ok(mut l) = self.list.lock() {
                let before = l.entries.len();
                l.entries.retain(|serial, _| !own.contains(serial));
                if l.entries.len() != before {
                    self.version.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
        }
    }

    /// Feed one datagram received from `source`.
    pub fn handle_datagram(&self, datagram: &[u8], source: SocketAddr) -> Result<(), SsdpError> {
        let a = parse_from(datagram, source)?;
        if self.own.lock().is_ok_and(|own| own.contains(&a.serial)) {
            return Err(SsdpError::OwnVirtualPrinter(a.serial));
        }
        let changed = match self.list.lock() {
            Ok(mut l) => l.observe(a, Instant::now()),
            Err(_) => false,
        };
        if changed {
            self.version.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(())
    }
}

/// Bind the discovery socket with `SO_REUSEADDR` (Bambu Studio may own the port too).
/// `broadcast` enables reception of broadcasts (only `serve` on `0.0.0.0:2021` needs it).
pub fn bind_socket(addr: SocketAddr, broadcast: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if broadcast {
        socket.set_broadcast(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receive announcements until `shutdown`, feeding `discovery`. Bad datagrams are counted and
/// logged at debug level; nothing in a datagram can stop the task.
pub async fn run_listener(socket: UdpSocket, discovery: Discovery, shutdown: CancellationToken) {
    // One byte more than the cap, so an oversize datagram is seen as oversize, not truncated.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, from)) => {
                if let Err(e) = discovery.handle_datagram(buf.get(..n).unwrap_or(&[]), from) {
                    tracing::debug!(%from, "SSDP datagram ignored: {e}");
                }
            }
            Err(e) => {
                tracing::debug!("SSDP receive error: {e}");
                // Avoid a busy loop on a persistent socket error.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "NOTIFY * HTTP/1.1\r\nHost: 239.255.255.250:1990\r\nServer: UPnP/1.0\r\n\
        Location: 192.168.1.57\r\nNT: urn:bambulab-com:device:3dprinter:1\r\nNTS: ssdp:alive\r\n\
        USN: 01P00A451200318\r\nCache-Control: max-age=1800\r\nDevModel.bambu.com: C12\r\n\
        DevName.bambu.com: Garage P1S\r\nDevSignal.bambu.com: -48\r\nDevConnect.bambu.com: lan\r\n\
        DevBind.bambu.com: free\r\nDevseclink.bambu.com: secure\r\nDevInf.bambu.com: wlan0\r\n\
        DevVersion.bambu.com: 01.08.02.00\r\nDevCap.bambu.com: 1\r\n\r\n";

    fn from(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::from((ip, 2021))
    }

    #[test]
    fn parses_the_section_8_example() {
        let a = parse_notify(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(a.serial, "01P00A451200318");
        assert_eq!(a.ip, Ipv4Addr::new(192, 168, 1, 57));
        assert_eq!(a.model, Some(Model::P1S));
        assert_eq!(a.model_code.as_deref(), Some("C12"));
        assert_eq!(a.name.as_deref(), Some("Garage P1S"));
        assert_eq!(a.connect.as_deref(), Some("lan"));
        assert_eq!(a.bind.as_deref(), Some("free"));
        assert_eq!(a.firmware.as_deref(), Some("01.08.02.00"));
        assert_eq!(a.signal_dbm, Some(-48));
    }

    #[test]
    fn header_case_and_line_endings_do_not_matter() {
        let lower = EXAMPLE
            .replace("\r\n", "\n")
            .to_lowercase()
            .replace("01p00a451200318", "01P00A451200318");
        let a = parse_notify(lower.as_bytes()).unwrap();
        assert_eq!(a.serial, "01P00A451200318");
        assert_eq!(a.model, None, "model code lower-cased is unknown: c12");
        assert_eq!(a.model_code.as_deref(), Some("c12"));
    }

    #[test]
    fn simulator_announcements_parse() {
        use crate::sim::ssdp::{AnnounceInfo, notify_message, search_response};
        for model in Model::ALL {
            let info = AnnounceInfo {
                ip: Ipv4Addr::LOCALHOST,
                serial: format!("{}00A000000001", model.serial_prefix()),
                model,
                name: "Sim".into(),
                developer_mode: false,
            };
            for msg in [notify_message(&info), search_response(&info)] {
                let a = parse_from(msg.as_bytes(), from([127, 0, 0, 1])).unwrap();
                assert_eq!(a.model, Some(model));
                assert_eq!(a.serial, info.serial);
                assert_eq!(a.connect.as_deref(), Some("cloud"));
            }
        }
    }

    #[test]
    fn missing_optional_headers_are_tolerated() {
        let a = parse_notify(b"NOTIFY * HTTP/1.1\nLocation: 10.0.0.9\nUSN: 00M09A350100123\n\n")
            .unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(a.model, None);
        assert_eq!(a.name, None);
    }

    #[test]
    fn rejects_what_is_not_a_bambu_announcement() {
        assert_eq!(parse_notify(b""), Err(SsdpError::NotAnnouncement));
        assert_eq!(
            parse_notify(b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n"),
            Err(SsdpError::NotAnnouncement)
        );
        let other = EXAMPLE.replace(BAMBU_URN, "upnp:rootdevice");
        assert!(matches!(
            parse_notify(other.as_bytes()),
            Err(SsdpError::NotBambu(_))
        ));
        let bye = EXAMPLE.replace("ssdp:alive", "ssdp:byebye");
        assert_eq!(parse_notify(bye.as_bytes()), Err(SsdpError::ByeBye));
        let no_serial = EXAMPLE.replace("USN: 01P00A451200318\r\n", "");
        assert_eq!(
            parse_notify(no_serial.as_bytes()),
            Err(SsdpError::BadSerial)
        );
        let bad_serial = EXAMPLE.replace("01P00A451200318", "01P00A45120/318");
        assert_eq!(
            parse_notify(bad_serial.as_bytes()),
            Err(SsdpError::BadSerial)
        );
        let bad_ip = EXAMPLE.replace("192.168.1.57", "192.168.1.300");
        assert_eq!(parse_notify(bad_ip.as_bytes()), Err(SsdpError::BadLocation));
        let big = format!("{EXAMPLE}{}", "x".repeat(MAX_DATAGRAM));
        assert!(matches!(
            parse_notify(big.as_bytes()),
            Err(SsdpError::TooLarge(_))
        ));
    }

    #[test]
    fn truncated_announcements_fail_cleanly_or_parse() {
        for cut in 0..EXAMPLE.len() {
            let _ = parse_notify(&EXAMPLE.as_bytes()[..cut]);
        }
        // Cut after the USN line: still a valid (partial) announcement.
        let cut = EXAMPLE.find("Cache-Control").unwrap();
        assert!(parse_notify(&EXAMPLE.as_bytes()[..cut]).is_ok());
    }

    #[test]
    fn spoofed_location_is_refused() {
        let e = parse_from(EXAMPLE.as_bytes(), from([192, 168, 1, 66])).unwrap_err();
        assert!(matches!(e, SsdpError::Spoofed { .. }));
        assert!(parse_from(EXAMPLE.as_bytes(), from([192, 168, 1, 57])).is_ok());
    }

    #[test]
    fn own_virtual_printers_are_never_listed() {
        let d = Discovery::new(DiscoveryList::default());
        let from_real = from([192, 168, 1, 57]);
        d.handle_datagram(EXAMPLE.as_bytes(), from_real).unwrap();
        assert_eq!(d.seen().len(), 1);
        d.hide_serials(["01P00A451200318".to_string()]);
        assert!(d.seen().is_empty(), "hiding drops a listed one");
        assert_eq!(
            d.handle_datagram(EXAMPLE.as_bytes(), from_real),
            Err(SsdpError::OwnVirtualPrinter("01P00A451200318".into()))
        );
        assert!(d.seen().is_empty());
    }

    #[test]
    fn long_values_are_clipped() {
        let long = EXAMPLE.replace("Garage P1S", &"n".repeat(5000));
        let long = &long[..long.len().min(MAX_DATAGRAM)];
        if let Ok(a) = parse_notify(long.as_bytes()) {
            assert!(a.name.unwrap_or_default().chars().count() <= MAX_VALUE_CHARS);
        }
        let a = parse_notify(EXAMPLE.replace("Garage P1S", &"n".repeat(500)).as_bytes()).unwrap();
        assert_eq!(a.name.unwrap().len(), MAX_VALUE_CHARS);
    }

    fn ann(serial: &str) -> SsdpAnnouncement {
        SsdpAnnouncement {
            serial: serial.into(),
            ..parse_notify(EXAMPLE.as_bytes()).unwrap()
        }
    }

    #[test]
    fn list_tracks_last_seen_and_expires() {
        let t0 = Instant::now();
        let mut l = DiscoveryList::new(8, Duration::from_secs(30));
        assert!(l.observe(ann("01P00A451200318"), t0));
        // Same data again (signal changes only): not a visible change.
        let mut again = ann("01P00A451200318");
        again.signal_dbm = Some(-60);
        assert!(!l.observe(again, t0 + Duration::from_secs(5)));
        let cur = l.current(t0 + Duration::from_secs(5));
        assert_eq!(cur.len(), 1);
        assert_eq!(cur[0].count, 2);
        assert_eq!(cur[0].last_seen, t0 + Duration::from_secs(5));
        assert_eq!(cur[0].announcement.signal_dbm, Some(-60));
        assert_eq!(l.current(t0 + Duration::from_secs(35)).len(), 1);
        assert!(l.current(t0 + Duration::from_secs(36)).is_empty());
        assert_eq!(l.expire(t0 + Duration::from_secs(36)), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn list_is_bounded_and_evicts_the_longest_silent() {
        let t0 = Instant::now();
        let mut l = DiscoveryList::new(3, Duration::from_secs(30));
        for (i, s) in ["AAAAAAAA1", "AAAAAAAA2", "AAAAAAAA3"].iter().enumerate() {
            l.observe(ann(s), t0 + Duration::from_millis(i as u64));
        }
        l.observe(ann("AAAAAAAA1"), t0 + Duration::from_millis(10));
        l.observe(ann("AAAAAAAA4"), t0 + Duration::from_millis(11));
        let serials: Vec<String> = l
            .current(t0 + Duration::from_millis(11))
            .into_iter()
            .map(|e| e.announcement.serial)
            .collect();
        assert_eq!(serials, ["AAAAAAAA1", "AAAAAAAA3", "AAAAAAAA4"]);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = parse_notify(&bytes);
        }

        #[test]
        fn mutated_announcements_never_panic(
            cut in 0usize..600,
            flips in proptest::collection::vec((0usize..600, any::<u8>()), 0..20),
        ) {
            let mut b = EXAMPLE.as_bytes().to_vec();
            for (i, v) in flips {
                if let Some(x) = b.get_mut(i) { *x = v; }
            }
            b.truncate(cut);
            if let Ok(a) = parse_notify(&b) {
                prop_assert!(usable_serial(&a.serial));
            }
        }

        #[test]
        fn many_serials_stay_within_capacity(serials in proptest::collection::vec("[A-Z0-9]{15}", 0..300)) {
            let t0 = Instant::now();
            let mut l = DiscoveryList::new(16, Duration::from_secs(30));
            for (i, s) in serials.iter().enumerate() {
                l.observe(ann(s), t0 + Duration::from_millis(i as u64));
                prop_assert!(l.len() <= 16);
            }
        }
    }
}
