//! External-broker mode against a real Mosquitto started by the test (it must be installed:
//! `.ci/run` installs it): the retained tree is published there, commands
//! sent while printgate was disconnected are never executed later (I3), the gateway's will
//! marks it offline when it dies without saying goodbye, and a printer deleted from the config
//! has its Home Assistant entities removed on the next start.

use printgate::broker::commands::BrokerCommand;
use printgate::broker::config::{BrokerConfig, BrokerMode, ExternalBroker};
use printgate::broker::publisher::PublisherState;
use printgate::broker::service::{self, BrokerHandle, BrokerPrinter, BrokerSetup};
use printgate::config::Model;
use printgate::printer::PrinterSnapshot;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::path::Path;

mod common;
use common::mosquitto::start_mosquitto;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn observer(port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    AsyncClient::new(o, 64)
}

async fn next_publish(
    el: &mut EventLoop,
    mut f: impl FnMut(&rumqttc::Publish) -> bool,
) -> rumqttc::Publish {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = el.poll().await
                && f(&p)
            {
                return p;
            }
        }
    })
    .await
    .expect("message within 15 s")
}

async fn start(
    port: u16,
    data_dir: &Path,
    printers: &[(&str, &str)],
    snaps: &watch::Sender<PrinterSnapshot>,
    token: CancellationToken,
) -> (BrokerHandle, mpsc::Receiver<BrokerCommand>) {
    let cfg = BrokerConfig {
        mode: BrokerMode::External,
        external: Some(ExternalBroker {
            url: format!("mqtt://127.0.0.1:{port}"),
            username: None,
            password: None,
            ca_file: None,
            client_id: "printgate-test".into(),
        }),
        ..BrokerConfig::demo("127.0.0.1:0".parse().unwrap()).unwrap()
    };
    let (tx, rx) = mpsc::channel(8);
    let list = printers
        .iter()
        .map(|(name, serial)| BrokerPrinter {
            name: name.to_string(),
            unique_id: serial.to_string(),
            model: Model::P1S,
            snapshots: snaps.subscribe(),
            has_relay: true,
        })
        .collect();
    let h = service::start(
        BrokerSetup {
            config: cfg,
            data_dir: data_dir.to_path_buf(),
            web_port: 8080,
            web_url: None,
            hms_text: |_, _| String::new(),
            executor: Some(tx),
            tokens: None,
            printer_logins: None,
            printer_instances: Vec::new(),
            credentials: None,
        },
        list,
        token,
    )
    .await
    .unwrap()
    .unwrap();
    let mut st = h.publisher.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        st.wait_for(|s| matches!(s, PublisherState::Connected { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    (h, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mosq, port)) = start_mosquitto(dir.path()).await else {
        return;
    };
    let (snaps, _) = watch::channel(PrinterSnapshot::default());
    let printers = [
        ("Garage P1S", "01P00A451200318"),
        ("Shed P1S", "01P00A451200319"),
    ];

    // Observer first, so deletions (empty retained payloads) are seen as they happen.
    let (obs, mut oel) = observer(port, "observer");
    obs.subscribe("#", QoS::AtLeastOnce).await.unwrap();

    let token = CancellationToken::new();
    let (h, mut cmds) = start(port, dir.path(), &printers, &snaps, token.clone()).await;
    let (mut online, mut power) = (false, false);
    next_publish(&mut oel, |p| {
        online |= p.topic == "printgate/availability" && &p.payload[..] == b"online";
        power |= p.topic == "homeassistant/switch/printgate_01P00A451200319/power/config";
        online && power
    })
    .await;

    // A command while connected is executed.
    let (ctl, mut cel) = observer(port, "controller");
    ctl.publish(
        "printgate/Garage_P1S/cmd/light",
        QoS::AtLeastOnce,
        false,
        "ON",
    )
    .await
    .unwrap();
    let c = tokio::select! {
        c = cmds.recv() => c.unwrap(),
        _ = async { loop { let _ = cel.poll().await; } } => unreachable!(),
    };
    assert_eq!(
        (c.printer.as_str(), c.kind, c.on, c.user.as_str()),
        (
            "Garage P1S",
            printgate::broker::topics::CommandKind::Light,
            Some(true),
            "external"
        )
    );
    drop(c);

    // The gateway dies without DISCONNECT: its will says offline.
    drop(h);
    next_publish(&mut oel, |p| {
        p.topic == "printgate/availability" && &p.payload[..] == b"offline"
    })
    .await;

    // Commands sent while printgate is away (also retained ones) are never executed later.
    ctl.publish(
        "printgate/Garage_P1S/cmd/stop",
        QoS::AtLeastOnce,
        false,
        "PRESS",
    )
    .await
    .unwrap();
    ctl.publish(
        "printgate/Garage_P1S/cmd/pause",
        QoS::AtLeastOnce,
        true,
        "PRESS",
    )
    .await
    .unwrap();
    // Both are on the broker before printgate comes back: wait for the PUBACK of exactly these
    // two (the earlier `light` PUBACK may still be in flight and must not be counted).
    tokio::time::timeout(Duration::from_secs(5), async {
        let (mut sent, mut unacked) = (0, std::collections::HashSet::new());
        while sent < 2 || !unacked.is_empty() {
            match cel.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    sent += 1;
                    unacked.insert(pkid);
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    unacked.remove(&ack.pkid);
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();

    // Restart without the shed printer: it is removed from Home Assistant, state is back.
    let token2 = CancellationToken::new();
    let (h2, mut cmds2) = start(port, dir.path(), &printers[..1], &snaps, token2.clone()).await;
    let (mut online, mut removed) = (false, false);
    next_publish(&mut oel, |p| {
        online |= p.topic == "printgate/availability" && &p.payload[..] == b"online";
        removed |= p.topic == "homeassistant/switch/printgate_01P00A451200319/power/config"
            && p.payload.is_empty();
        online && removed
    })
    .await;
    // A fresh command goes through, and it is the only one: the stale ones never arrive.
    ctl.publish(
        "printgate/Garage_P1S/cmd/resume",
        QoS::AtLeastOnce,
        false,
        "",
    )
    .await
    .unwrap();
    let c = tokio::select! {
        c = cmds2.recv() => c.unwrap(),
        _ = async { loop { let _ = cel.poll().await; } } => unreachable!(),
    };
    assert_eq!(
        c.kind,
        printgate::broker::topics::CommandKind::Resume,
        "stale stop/pause must not be executed"
    );
    drop(c);
    assert!(cmds2.try_recv().is_err());

    // Graceful shutdown publishes offline too.
    h2.shutdown().await;
    next_publish(&mut oel, |p| {
        p.topic == "printgate/availability" && &p.payload[..] == b"offline"
    })
    .await;
    drop(mosq);
}
