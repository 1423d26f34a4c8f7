//! The embedded broker with real MQTT clients on loopback, in front of the real gateway with
//! simulated printers: anonymous refused, retained state on subscribe, `#` never shows access
//! codes, a read-only user cannot send commands, commands reach the executor with the sender's
//! identity and answer on `…/result`, TLS listener, Home Assistant discovery present.

mod common;

use common::require_paho;
use printgate::broker::commands::BrokerCommand;
use printgate::broker::config::{Access, BrokerConfig, BrokerUser};
use printgate::broker::service::{self, BrokerHandle, BrokerSetup};
use printgate::broker::topics::{CommandKind, CommandResult};
use printgate::broker::{auth, publisher::PublisherState};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Rig {
    _dir: tempfile::TempDir,
    _sims: Vec<printgate::sim::SimPrinter>,
    gateway: printgate::RunningGateway,
    broker: BrokerHandle,
    executor: mpsc::Receiver<BrokerCommand>,
    access_codes: Vec<String>,
    token: CancellationToken,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (sims, mut config) = printgate::app::demo::start_simulators(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        60.0,
    )
    .await
    .unwrap();
    let mut broker_cfg = BrokerConfig::demo("127.0.0.1:0".parse().unwrap()).unwrap();
    broker_cfg.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    broker_cfg.websocket_listen = Some("127.0.0.1:0".parse().unwrap());
    broker_cfg.users.push(BrokerUser {
        name: "reader".into(),
        password_hash: auth::hash_password("look").unwrap(),
        access: Access::Read,
    });
    config.broker = broker_cfg.clone();
    // The demo's Klipper printer has no access code.
    let access_codes = config
        .printers
        .iter()
        .map(|p| p.access_code.clone())
        .filter(|c| !c.is_empty())
        .collect();
    let token = CancellationToken::new();
    let gateway = printgate::start(config, token.clone()).await.unwrap();
    let g = &gateway.gateway;
    let printers = printgate::broker_printers(g);
    let (tx, executor) = mpsc::channel(8);
    let broker = service::start(
        BrokerSetup {
            config: broker_cfg,
            data_dir: dir.path().to_path_buf(),
            web_port: 8080,
            web_url: Some(format!("http://{}/", gateway.web_addr)),
            hms_text: g.hms_text,
            executor: Some(tx),
            tokens: None,
            printer_logins: None,
            printer_instances: Vec::new(),
            credentials: None,
        },
        printers,
        token.clone(),
    )
    .await
    .unwrap()
    .unwrap();
    Rig {
        _dir: dir,
        _sims: sims,
        gateway,
        broker,
        executor,
        access_codes,
        token,
    }
}

fn client(addr: SocketAddr, id: &str, creds: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    AsyncClient::new(o, 32)
}

/// Poll until a publish matches `f` (bounded).
async fn wait_publish(
    el: &mut EventLoop,
    mut f: impl FnMut(&rumqttc::Publish) -> bool,
    seen: &mut Vec<rumqttc::Publish>,
) -> rumqttc::Publish {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    seen.push(p.clone());
                    if f(&p) {
                        return p;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("client connection failed: {e}"),
            }
        }
    })
    .await
    .expect("expected message within 15 s")
}

async fn wait_connected(broker: &BrokerHandle) {
    let mut rx = broker.publisher.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| matches!(s, PublisherState::Connected { .. })),
    )
    .await
    .expect("gateway publisher connects")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_end_to_end() {
    let mut rig = rig().await;
    let addr = rig.broker.mqtt_addr.unwrap();
    wait_connected(&rig.broker).await;

    // Anonymous and wrong passwords are refused.
    for creds in [None, Some(("demo", "wrong")), Some(("nobody", "demo"))] {
        let (_c, mut el) = client(addr, "intruder", creds);
        let r = tokio::time::timeout(Duration::from_secs(10), el.poll())
            .await
            .unwrap();
        assert!(
            matches!(r, Err(rumqttc::ConnectionError::ConnectionRefused(_))),
            "{creds:?}: {r:?}"
        );
    }

    // A read-only user sees the retained tree, never an access code.
    let (reader, mut rel) = client(addr, "reader-1", Some(("reader", "look")));
    reader.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let mut seen = Vec::new();
    let mut wanted = std::collections::HashSet::new();
    // Every printer's state and stop button, and the gateway's availability.
    let printer_count = rig.gateway.gateway.printers.len();
    wait_publish(
        &mut rel,
        |p| {
            if p.retain
                && (p.topic.ends_with("/state")
                    || p.topic == "printgate/availability"
                    || p.topic.ends_with("/stop/config"))
            {
                wanted.insert(p.topic.clone());
            }
            wanted.len() == 2 * printer_count + 1
        },
        &mut seen,
    )
    .await;
    let topics: Vec<&str> = seen.iter().map(|p| p.topic.as_str()).collect();
    assert!(topics.contains(&"printgate/availability"), "{topics:?}");
    // One Home Assistant device per printer, Klipper included (no serial there).
    let stop_buttons: std::collections::HashSet<&str> = topics
        .iter()
        .copied()
        .filter(|t| t.starts_with("homeassistant/button/") && t.ends_with("/stop/config"))
        .collect();
    assert_eq!(stop_buttons.len(), printer_count, "{stop_buttons:?}");
    assert!(
        stop_buttons.iter().all(|t| !t.contains("/printgate_/"))
            && stop_buttons
                .iter()
                .any(|t| t.contains("/printgate_klipper-")),
        "{stop_buttons:?}"
    );
    assert!(
        topics
            .iter()
            .any(|t| t.starts_with("homeassistant/button/printgate_")),
        "{topics:?}"
    );
    let state = seen.iter().find(|p| p.topic.ends_with("/state")).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&state.payload).unwrap();
    assert!(
        json.get("gcode_state").is_some() && json.get("plate_clear").is_some(),
        "{json}"
    );
    for p in &seen {
        let text = String::from_utf8_lossy(&p.payload);
        for code in &rig.access_codes {
            assert!(
                !text.contains(code.as_str()),
                "{} leaks an access code",
                p.topic
            );
        }
    }
    let printer_topic = state.topic.split('/').nth(1).unwrap().to_string();

    // Read-only: a command publish gets the connection closed and reaches nobody.
    reader
        .publish(
            format!("printgate/{printer_topic}/cmd/stop"),
            QoS::AtLeastOnce,
            false,
            "PRESS",
        )
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if rel.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "read-only publisher must be disconnected");
    // Spoofing state is refused for control users too.
    let (demo, mut del) = client(addr, "demo-1", Some(("demo", "demo")));
    demo.subscribe(
        format!("printgate/{printer_topic}/cmd/+/result"),
        QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    // Wait for SUBACK so that the result cannot be missed.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = del.poll().await {
                return;
            }
        }
    })
    .await
    .unwrap();
    demo.publish(
        format!("printgate/{printer_topic}/cmd/pause"),
        QoS::AtLeastOnce,
        false,
        r#"{"id":"r1"}"#,
    )
    .await
    .unwrap();
    let mut scratch = Vec::new();
    let (cmd, result) = tokio::join!(
        async {
            let cmd = tokio::time::timeout(Duration::from_secs(10), rig.executor.recv())
                .await
                .unwrap()
                .unwrap();
            let summary = (cmd.printer.clone(), cmd.kind, cmd.user.clone());
            cmd.reply
                .send(CommandResult {
                    ok: true,
                    message: "paused".into(),
                    id: None,
                })
                .unwrap();
            summary
        },
        wait_publish(
            &mut del,
            |p| p.topic.ends_with("/cmd/pause/result"),
            &mut scratch
        )
    );
    assert_eq!(cmd.1, CommandKind::Pause);
    assert_eq!(cmd.2, "demo");
    assert_eq!(cmd.0.replace(' ', "_"), printer_topic);
    let r: CommandResult = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!(
        r,
        CommandResult {
            ok: true,
            message: "paused".into(),
            id: Some("r1".into())
        }
    );
    assert!(
        rig.executor.try_recv().is_err(),
        "the read-only stop never reached the executor"
    );

    demo.publish(
        format!("printgate/{printer_topic}/state"),
        QoS::AtLeastOnce,
        true,
        "{}",
    )
    .await
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if del.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "spoofing state must disconnect");

    // TLS listener with the generated certificate.
    let tls_addr = rig.broker.mqtts_addr.unwrap();
    let cert = std::fs::read(rig._dir.path().join("broker-tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&cert) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut o = MqttOptions::new("tls-1", "localhost", tls_addr.port());
    o.set_credentials("reader", "look");
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
    ));
    let (tc, mut tel) = AsyncClient::new(o, 8);
    tc.subscribe("printgate/availability", QoS::AtMostOnce)
        .await
        .unwrap();
    let p = wait_publish(
        &mut tel,
        |p| p.topic == "printgate/availability",
        &mut Vec::new(),
    )
    .await;
    assert_eq!(&p.payload[..], b"online");

    rig.broker.shutdown().await;
    rig.token.cancel();
    rig.gateway.shutdown().await;
}

/// paho-mqtt (Python) as a second client, MQTT 3.1.1 and MQTT 5: retained state, a command with
/// a request id, its result. `.ci/run` installs paho-mqtt; the test fails without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_clients_v311_and_v5() {
    require_paho();
    let mut rig = rig().await;
    wait_connected(&rig.broker).await;
    let addr = rig.broker.mqtt_addr.unwrap();
    let ws = rig.broker.ws_addr.expect("websocket listener");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/broker_client.py");
    // MQTT 3.1.1 and 5 over TCP, and both again over WebSocket (as a browser client).
    for (proto, port, transport) in [
        ("4", addr.port(), "tcp"),
        ("5", addr.port(), "tcp"),
        ("4", ws.port(), "ws"),
        ("5", ws.port(), "ws"),
    ] {
        let child = tokio::process::Command::new("python3")
            .args([
                script,
                "127.0.0.1",
                &port.to_string(),
                "demo",
                "demo",
                proto,
                "Garage_P1S",
                transport,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let cmd = tokio::time::timeout(Duration::from_secs(20), rig.executor.recv())
            .await
            .expect("command from paho")
            .unwrap();
        assert_eq!(
            (cmd.printer.as_str(), cmd.kind, cmd.user.as_str()),
            ("Garage P1S", CommandKind::PlateClear, "demo")
        );
        cmd.reply
            .send(CommandResult {
                ok: false,
                message: "not yet".into(),
                id: None,
            })
            .unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "paho v{proto} {transport}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["result"]["id"], "py-1", "{v}");
        assert_eq!(v["result"]["ok"], false);
        assert_eq!(v["state"]["name"], "Garage P1S");
    }
    // Wrong password refused for paho too.
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            "127.0.0.1",
            &addr.port().to_string(),
            "demo",
            "nope",
            "5",
            "Garage_P1S",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            "127.0.0.1",
            &ws.port().to_string(),
            "demo",
            "nope",
            "4",
            "Garage_P1S",
            "ws",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "wrong password over WebSocket: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    rig.broker.shutdown().await;
    rig.token.cancel();
    rig.gateway.shutdown().await;
}
