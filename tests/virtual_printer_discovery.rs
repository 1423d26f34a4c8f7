//! Issue 19: slicers find and add printgate's virtual printers.
//!
//! - `a_virtual_printer_announces_itself_and_answers_searches_but_is_no_printer_to_add`: the
//!   gateway's virtual printer sends SSDP `NOTIFY`s (to a loopback address, never broadcast) that
//!   printgate's own §8 parser reads as a LAN-mode printer with the virtual printer's serial,
//!   address, model code and name, answers a directed `M-SEARCH` with `200 OK`, and the same
//!   announcement fed to printgate's discovery listener ("Add printer") is not listed while a
//!   real printer's is.
//! - `the_detect_handshake_names_the_virtual_printer_and_survives_bad_frames`: the slicers'
//!   detect on the plain and the TLS port (certificate verified against printgate's CA for the
//!   serial) answers one frame with the virtual printer's identity and closes; garbage, an
//!   oversize frame and another command get a closed connection and the server keeps answering.
//! - `three_virtual_printers_on_three_addresses`: three simulated printers served on 127.0.0.2,
//!   .3 and .4 (on the printers' fixed ports 8883/990/3000/3002/2021 inside a network namespace
//!   of the test's own when `unshare` allows it, else on free ports): each announces its own
//!   address and serial, answers detect with its own serial, and an MQTT client of each receives
//!   only its own printer's reports.

mod common;

use common::{TestGateway, WAIT, config_for, start_sim};
use printgate::broker::ssdp::parse_from;
use printgate::config::Model;
use printgate::sim::SimPrinter;
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::virtual_printer::VirtualPrinterInfo;
use printgate::virtual_printer::config::VirtualPrinterConfig;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const IN_NETNS: &str = "PRINTGATE_VP_DISCOVERY_TEST_IN_NETNS";
const SEARCH: &str = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1990\r\nMAN: \"ssdp:discover\"\r\nMX: 3\r\nST: urn:bambulab-com:device:3dprinter:1\r\n\r\n";
const DETECT: &[u8] = br#"{"login":{"command":"detect","sequence_id":"20000"}}"#;

fn frame(payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(payload.len() + 6).expect("small");
    let mut f = vec![0xA5, 0xA5];
    f.extend_from_slice(&total.to_le_bytes());
    f.extend_from_slice(payload);
    f.extend_from_slice(&[0xA7, 0xA7]);
    f
}

/// Receive datagrams on `socket` until one satisfies `want`; returns it and its sender.
async fn recv_until(socket: &UdpSocket, want: impl Fn(&str) -> bool) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 4096];
    timeout(WAIT, async {
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.expect("receive");
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if want(&text) {
                return (text, from);
            }
        }
    })
    .await
    .expect("the datagram arrives")
}

/// One detect exchange: the answer's JSON, after checking the server closed the connection.
async fn detect<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> Value {
    s.write_all(&frame(DETECT)).await.expect("send");
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("answered and closed")
        .expect("read");
    assert!(got.len() > 6, "an answer frame: {got:?}");
    assert_eq!(&got[..2], &[0xA5, 0xA5]);
    assert_eq!(usize::from(u16::from_le_bytes([got[2], got[3]])), got.len());
    assert_eq!(&got[got.len() - 2..], &[0xA7, 0xA7]);
    serde_json::from_slice(&got[4..got.len() - 2]).expect("JSON answer")
}

/// What the server sends back to `bytes` before closing (bounded by `WAIT`).
async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let _ = timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("the server closes the connection");
    got
}

fn check_detect_answer(answer: &Value, vp: &VirtualPrinterInfo, model: Model) {
    let login = &answer["login"];
    assert_eq!(login["command"], "detect", "{answer}");
    assert_eq!(login["id"], vp.serial.as_str());
    assert_eq!(login["model"], model.model_code());
    assert_eq!(
        login["name"],
        format!("{} via printgate", vp.printer).as_str()
    );
    assert_eq!(login["bind"], "free");
    assert_eq!(login["connect"], "lan");
    assert_eq!(login["dev_cap"], 1);
    assert!(login["sequence_id"].is_u64(), "an integer: {answer}");
}

fn ca_of(tg: &TestGateway) -> Vec<u8> {
    std::fs::read(tg.dir.path().join("virtual-printers/ca.pem")).expect("the CA is kept")
}

fn roots(ca_pem: &[u8]) -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA pem")).expect("CA added");
    }
    roots
}

/// A TLS connection verifying the virtual printer's certificate for its serial.
async fn tls_to(
    addr: SocketAddr,
    ca_pem: &[u8],
    serial: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(serial.to_string()).expect("DNS name");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("the certificate is the serial's, signed by printgate's CA")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_printer_announces_itself_and_answers_searches_but_is_no_printer_to_add() {
    use printgate::broker::config::BrokerMode;
    let watcher = UdpSocket::bind("127.0.0.1:0").await.expect("watcher");
    let discovery_at = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let sim = start_sim(Model::P1S, 10.0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), std::slice::from_ref(&sim));
    let mut vp_config = VirtualPrinterConfig::on("127.0.0.1:0".parse().expect("address"));
    vp_config.announce_to = watcher.local_addr().expect("address");
    config.printers[0].virtual_printer = vp_config;
    config.broker.mode = BrokerMode::Embedded;
    config.broker.listen = "127.0.0.1:0".parse().expect("address");
    config.broker.tls_listen = None;
    config.broker.mdns.enabled = false;
    config.broker.ssdp.enabled = true;
    config.broker.ssdp.listen = discovery_at;
    let tg = TestGateway::start_with(vec![sim], dir, config).await;
    let vp = tg
        .gw()
        .virtual_printers
        .get()
        .and_then(|v| v.first().cloned())
        .expect("a virtual printer");
    assert_eq!(vp.announced_address.as_deref(), Some("127.0.0.1"));

    let (notify, vp_ssdp) = recv_until(&watcher, |t| t.starts_with("NOTIFY")).await;
    let a = parse_from(notify.as_bytes(), vp_ssdp).expect("a §8 announcement from its address");
    assert_eq!(a.serial, vp.serial);
    assert_ne!(
        a.serial,
        tg.sims[0].serial(),
        "its own serial, not the printer's"
    );
    assert_eq!(a.ip, Ipv4Addr::LOCALHOST);
    assert_eq!(a.model, Some(Model::P1S));
    assert_eq!(a.name.as_deref(), Some("printer 1 via printgate"));
    assert_eq!(a.connect.as_deref(), Some("lan"));
    assert_eq!(a.bind.as_deref(), Some("free"));

    watcher
        .send_to(SEARCH.as_bytes(), vp_ssdp)
        .await
        .expect("search");
    let (ok, from) = recv_until(&watcher, |t| t.starts_with("HTTP/1.1 200 OK")).await;
    assert_eq!(from, vp_ssdp);
    let answer = parse_from(ok.as_bytes(), from).expect("a §8 search answer");
    assert_eq!(answer.serial, vp.serial);
    assert!(
        ok.contains("ST: urn:bambulab-com:device:3dprinter:1\r\n"),
        "{ok}"
    );

    // "Add printer": the virtual printer's own announcement, then a real printer's, from the
    // same socket (so they arrive in this order); only the real printer is listed.
    let discovery = tg.gw().discovery.get().expect("discovery runs").clone();
    let mut changes = discovery.changes();
    let real = printgate::sim::ssdp::notify_message(&printgate::sim::ssdp::AnnounceInfo {
        ip: Ipv4Addr::LOCALHOST,
        serial: "01P00A451200318".into(),
        model: Model::P1S,
        name: "Garage P1S".into(),
        developer_mode: true,
    });
    watcher
        .send_to(notify.as_bytes(), discovery_at)
        .await
        .expect("send");
    watcher
        .send_to(real.as_bytes(), discovery_at)
        .await
        .expect("send");
    timeout(WAIT, async {
        while !discovery
            .seen()
            .iter()
            .any(|p| p.announcement.serial == "01P00A451200318")
        {
            changes.changed().await.expect("discovery runs");
        }
    })
    .await
    .expect("the real printer is listed");
    let listed: Vec<String> = discovery
        .seen()
        .into_iter()
        .map(|p| p.announcement.serial)
        .collect();
    assert_eq!(listed, vec!["01P00A451200318".to_string()], "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detect_handshake_names_the_virtual_printer_and_survives_bad_frames() {
    let sim = start_sim(Model::P1S, 10.0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), std::slice::from_ref(&sim));
    let watcher = UdpSocket::bind("127.0.0.1:0").await.expect("watcher");
    let mut vp_config = VirtualPrinterConfig::on("127.0.0.1:0".parse().expect("address"));
    vp_config.announce_to = watcher.local_addr().expect("address");
    config.printers[0].virtual_printer = vp_config;
    let tg = TestGateway::start_with(vec![sim], dir, config).await;
    let vp = tg
        .gw()
        .virtual_printers
        .get()
        .and_then(|v| v.first().cloned())
        .expect("a virtual printer");
    let host: Ipv4Addr = vp.host.parse().expect("IPv4");
    let plain = SocketAddr::from((host, vp.detect_port.expect("a detect port")));
    let secure = SocketAddr::from((host, vp.detect_tls_port.expect("a TLS detect port")));

    let answer = detect(TcpStream::connect(plain).await.expect("connect")).await;
    check_detect_answer(&answer, &vp, Model::P1S);
    let answer = detect(tls_to(secure, &ca_of(&tg), &vp.serial).await).await;
    check_detect_answer(&answer, &vp, Model::P1S);

    for (what, bytes) in [
        ("not a frame", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("an oversize frame", vec![0xA5, 0xA5, 0xff, 0xff, b'{']),
        ("a bad trailer", {
            let mut f = frame(DETECT);
            let end = f.len() - 1;
            f[end] = 0;
            f
        }),
        ("another command", frame(br#"{"login":{"command":"bind"}}"#)),
        ("not JSON", frame(b"\x00\x01garbage")),
    ] {
        assert!(
            answer_to(plain, &bytes).await.is_empty(),
            "{what}: closed unanswered"
        );
    }
    // A slicer that sends its request in pieces is answered too.
    let mut s = TcpStream::connect(plain).await.expect("connect");
    let f = frame(DETECT);
    s.write_all(&f[..3]).await.expect("send");
    s.flush().await.expect("flush");
    let answer = detect_rest(s, &f[3..]).await;
    check_detect_answer(&answer, &vp, Model::P1S);
}

async fn detect_rest(mut s: TcpStream, rest: &[u8]) -> Value {
    s.write_all(rest).await.expect("send");
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("answered and closed")
        .expect("read");
    serde_json::from_slice(got.get(4..got.len().saturating_sub(2)).unwrap_or(&[]))
        .expect("JSON answer")
}

fn netns_available() -> bool {
    Command::new("unshare")
        .args(["--net", "--map-root-user", "sh", "-c", "ip link set lo up"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn three_virtual_printers_on_three_addresses() {
    const NAME: &str = "three_virtual_printers_on_three_addresses";
    let in_netns = std::env::var_os(IN_NETNS).is_some();
    if !in_netns && netns_available() {
        let exe = std::env::current_exe().expect("test binary");
        let status = Command::new("unshare")
            .args([
                "--net",
                "--map-root-user",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" --exact \"$1\" --nocapture --test-threads=1",
            ])
            .arg(&exe)
            .arg(NAME)
            .env(IN_NETNS, "1")
            .status()
            .expect("unshare runs");
        assert!(
            status.success(),
            "the test in its network namespace failed ({status})"
        );
        return;
    }
    if !in_netns {
        eprintln!(
            "fixed ports SKIPPED: no network namespace is available (`unshare --net --map-root-user` failed); the three virtual printers use free ports on their addresses"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(three_printers(in_netns));
}

fn start_screen_print(sim: &SimPrinter, job: &str) {
    let file = format!("{job}.gcode.3mf");
    let bytes = build_3mf(&Fixture3mf {
        prediction_secs: 36_000,
        layers: 200,
        ..Fixture3mf::for_model(sim.model())
    });
    sim.storage().put(&file, bytes).expect("stored on the sim");
    sim.start_from_screen(&file, job);
}

async fn three_printers(fixed_ports: bool) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    const MODELS: [Model; 3] = [Model::P1S, Model::X1C, Model::A1];
    let watcher = UdpSocket::bind("127.0.0.1:0").await.expect("watcher");
    let mut sims = Vec::new();
    for (i, model) in MODELS.into_iter().enumerate() {
        let sim = start_sim(model, 10.0).await;
        start_screen_print(&sim, &format!("vp_job_{i}"));
        sims.push(sim);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), &sims);
    for (i, pc) in config.printers.iter_mut().enumerate() {
        let ip = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i).expect("small"));
        let mut vp = if fixed_ports {
            VirtualPrinterConfig {
                enabled: true,
                listen: SocketAddr::from((ip, 8883)),
                ..VirtualPrinterConfig::default()
            }
        } else {
            VirtualPrinterConfig::on(SocketAddr::from((ip, 0)))
        };
        vp.announce_to = watcher.local_addr().expect("address");
        pc.virtual_printer = vp;
    }
    let tg = TestGateway::start_with(sims, dir, config).await;
    tg.wait_online().await;
    let vps = tg.gw().virtual_printers.get().cloned().unwrap_or_default();
    assert_eq!(vps.len(), 3, "{vps:?}");
    let ca = ca_of(&tg);

    // Each announces its own address and serial.
    let mut announced = std::collections::HashMap::new();
    timeout(WAIT, async {
        let mut buf = vec![0u8; 4096];
        while announced.len() < 3 {
            let (n, from) = watcher.recv_from(&mut buf).await.expect("receive");
            let a = parse_from(&buf[..n], from).expect("a §8 announcement from its own address");
            announced.insert(a.serial.clone(), (a, from));
        }
    })
    .await
    .expect("all three announce themselves");
    for (vp, model) in vps.iter().zip(MODELS) {
        let (a, from) = &announced[&vp.serial];
        assert_eq!(a.ip.to_string(), vp.host, "{vp:?}");
        assert_eq!(a.model, Some(model));
        if fixed_ports {
            assert_eq!(from.port(), 2021);
            assert_eq!(
                (
                    vp.mqtt_port,
                    vp.ftps_port,
                    vp.detect_port,
                    vp.detect_tls_port
                ),
                (8883, Some(990), Some(3000), Some(3002))
            );
        }
        let host: Ipv4Addr = vp.host.parse().expect("IPv4");
        let plain = SocketAddr::from((host, vp.detect_port.expect("port")));
        let answer = detect(TcpStream::connect(plain).await.expect("connect")).await;
        check_detect_answer(&answer, vp, model);
        let secure = SocketAddr::from((host, vp.detect_tls_port.expect("port")));
        let answer = detect(tls_to(secure, &ca, &vp.serial).await).await;
        check_detect_answer(&answer, vp, model);
    }

    // An MQTT client of each sees its own printer's reports only.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Vec<u8>)>();
    let mut clients = Vec::new();
    for (i, vp) in vps.iter().enumerate() {
        let mut o = MqttOptions::new(format!("slicer-{i}"), vp.host.clone(), vp.mqtt_port);
        o.set_credentials("bblp", vp.access_code.clone());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls_for(&ca, &vp.serial),
        )));
        let (client, mut events) = AsyncClient::new(o, 16);
        client
            .subscribe(format!("device/{}/report", vp.serial), QoS::AtMostOnce)
            .await
            .expect("queue subscribe");
        // As slicers do: ask for the full state (answered from printgate's merged state).
        client
            .publish(
                format!("device/{}/request", vp.serial),
                QoS::AtMostOnce,
                false,
                r#"{"pushing":{"command":"pushall","sequence_id":"1"}}"#,
            )
            .await
            .expect("queue pushall");
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let _ = tx.send((i, p.topic.clone(), p.payload.to_vec()));
                }
            }
        });
        clients.push(client);
    }
    let mut seen_own = [false; 3];
    timeout(WAIT, async {
        while !seen_own.iter().all(|s| *s) {
            let (i, topic, payload) = rx.recv().await.expect("clients run");
            assert_eq!(topic, format!("device/{}/report", vps[i].serial));
            let text = String::from_utf8_lossy(&payload);
            for other in (0..3).filter(|j| *j != i) {
                assert!(
                    !text.contains(&format!("vp_job_{other}")),
                    "client {i} got printer {other}'s report: {text}"
                );
                assert!(!text.contains(tg.sims[other].serial()));
            }
            if text.contains(&format!("vp_job_{i}")) {
                seen_own[i] = true;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("every client sees its own printer's job: {seen_own:?}"));
    drop(clients);
}

/// rumqttc names the server by its IP address; the virtual printer's certificate is the
/// serial's (slicers check the CN without SNI), so verify it for the serial.
fn tls_for(ca_pem: &[u8], serial: &str) -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct AsSerial(
        Arc<rustls::client::WebPkiServerVerifier>,
        ServerName<'static>,
    );
    impl ServerCertVerifier for AsSerial {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.0
                .verify_server_cert(end_entity, intermediates, &self.1, ocsp, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let name = ServerName::try_from(serial.to_string()).expect("serial is a DNS name");
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AsSerial(inner, name)))
        .with_no_client_auth();
    Arc::new(cfg)
}
