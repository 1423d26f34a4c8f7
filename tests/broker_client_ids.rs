//! Hostile MQTT client ids against the embedded broker (issue 7): clients that log in with ids
//! containing `/`, `#` or `+`, a very long id, an empty id, the same id as another client, or
//! one of printgate's own internal ids (`printgate-gateway`, `printgate-internal`) must not
//! disturb the gateway's own session nor other clients' sessions. While they are connected the
//! gateway keeps publishing state (no reconnect of its own client), a subscriber of another user
//! keeps its session and receives the new state, and a command from a control user still goes
//! through the executor and is answered. Real rumqttc clients over loopback, in front of the real
//! gateway with simulated printers.

use printgate::broker::auth;
use printgate::broker::commands::BrokerCommand;
use printgate::broker::config::{Access, BrokerConfig, BrokerUser};
use printgate::broker::publisher::PublisherState;
use printgate::broker::service::{self, BrokerHandle, BrokerPrinter, BrokerSetup};
use printgate::broker::topics::{CommandKind, CommandResult, GatewayFacts};
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
    printers: Vec<String>,
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
    for (name, access) in [("reader", Access::Read), ("mallory", Access::Read)] {
        broker_cfg.users.push(BrokerUser {
            name: name.into(),
            password_hash: auth::hash_password(name).unwrap(),
            access,
        });
    }
    config.broker = broker_cfg.clone();
    let token = CancellationToken::new();
    let gateway = printgate::start(config, token.clone()).await.unwrap();
    let g = &gateway.gateway;
    let printers: Vec<BrokerPrinter> = printgate::broker_printers(g);
    let names = printers.iter().map(|p| p.name.clone()).collect();
    let (tx, executor) = mpsc::channel(8);
    let broker = service::start(
        BrokerSetup {
            config: broker_cfg,
            data_dir: dir.path().to_path_buf(),
            web_port: 8080,
            web_url: None,
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
        printers: names,
        token,
    }
}

fn client(addr: SocketAddr, id: &str, user: &str, pw: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    o.set_credentials(user, pw);
    AsyncClient::new(o, 64)
}

/// What a polled client saw: its publishes, or the end of its connection.
#[derive(Debug)]
enum Seen {
    Publish(rumqttc::Publish),
    SubAck,
    Closed(String),
}

/// Poll `el` in a task until `stop`, forwarding publishes and the first error.
fn watch(mut el: EventLoop, stop: CancellationToken) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = el.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Seen::Publish(p));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(Seen::SubAck);
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Seen::Closed(e.to_string()));
                    return;
                }
            }
        }
    });
    rx
}

/// Wait (bounded) for a publish matching `f`; a closed connection fails the test.
async fn next_publish(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    who: &str,
    mut f: impl FnMut(&rumqttc::Publish) -> bool,
) -> rumqttc::Publish {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match rx.recv().await {
                Some(Seen::Publish(p)) if f(&p) => return p,
                Some(Seen::Closed(e)) => panic!("{who} lost its connection: {e}"),
                Some(_) => {}
                None => panic!("{who}'s poller ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who}: expected message within 15 s"))
}

async fn next_suback(rx: &mut mpsc::UnboundedReceiver<Seen>, who: &str) {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match rx.recv().await {
                Some(Seen::SubAck) => return,
                Some(Seen::Closed(e)) => panic!("{who} lost its connection: {e}"),
                Some(_) => {}
                None => panic!("{who}'s poller ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who}: no SUBACK within 15 s"))
}

/// Nothing in `rx` says the connection closed.
fn still_connected(rx: &mut mpsc::UnboundedReceiver<Seen>, who: &str) -> Vec<rumqttc::Publish> {
    let mut publishes = Vec::new();
    while let Ok(s) = rx.try_recv() {
        match s {
            Seen::Closed(e) => panic!("{who} lost its connection: {e}"),
            Seen::Publish(p) => publishes.push(p),
            Seen::SubAck => {}
        }
    }
    publishes
}

fn topic_id(name: &str) -> String {
    name.replace(' ', "_")
}

/// Ids that are hostile by their shape or by naming printgate's own sessions.
fn shaped_ids() -> Vec<String> {
    let long = "L".repeat(5000);
    [
        "a/b/c",
        "#",
        "+",
        "printgate/#",
        "$SYS/x",
        "",
        long.as_str(),
        "c-watcher",
        "printgate-gateway",
        "c-printgate-gateway",
        "printgate-internal",
        "printgate",
        "dup",
        "dup",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_ids_disturb_nobody() {
    hostile_clients_disturb_nobody(shaped_ids()).await;
}

/// Another user connecting with the client id of a legit client must not take over that
/// client's session (a reconnect by the same user may, as MQTT says): the front door makes
/// internal client ids per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_reusing_a_client_id_takes_over_nothing() {
    hostile_clients_disturb_nobody(vec!["watcher".into(), "ctl".into()]).await;
}

/// The legit clients (`watcher`, user reader; `ctl`, user demo) connect, then every id in
/// `hostile_ids` connects as user mallory and subscribes to `#`; nothing of the legit side may
/// notice.
async fn hostile_clients_disturb_nobody(hostile_ids: Vec<String>) {
    let mut rig = rig().await;
    let addr = rig.broker.mqtt_addr.unwrap();
    let mut publisher = rig.broker.publisher.clone();
    let epoch = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.wait_for(|s| matches!(s, PublisherState::Connected { .. })),
    )
    .await
    .expect("gateway publisher connects")
    .map(|s| *s)
    .unwrap();
    let stop = CancellationToken::new();

    // Legit clients: a read-only watcher of the whole tree, a control user waiting for results.
    let (watcher, wel) = client(addr, "watcher", "reader", "reader");
    let mut wrx = watch(wel, stop.clone());
    watcher
        .subscribe("printgate/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_suback(&mut wrx, "watcher").await;
    let first = rig.printers[0].clone();
    let first_topic = format!("printgate/{}/state", topic_id(&first));
    next_publish(&mut wrx, "watcher", |p| p.topic == first_topic).await;

    let (ctl, cel) = client(addr, "ctl", "demo", "demo");
    let mut crx = watch(cel, stop.clone());
    ctl.subscribe("printgate/+/cmd/+/result", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_suback(&mut crx, "ctl").await;

    // Hostile clients, all logged in as another (read-only) user, all kept connected.
    let mut hostile = Vec::new();
    for id in &hostile_ids {
        let (c, el) = client(addr, id, "mallory", "mallory");
        let mut rx = watch(el, stop.clone());
        // Whatever the broker answers (a session, or a refusal), it is the hostile client's
        // business; subscribing to everything makes it a full participant.
        let _ = c.subscribe("#", QoS::AtLeastOnce).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Some(Seen::SubAck) | Some(Seen::Closed(_)) | None => return,
                    Some(_) => {}
                }
            }
        })
        .await;
        hostile.push((c, rx));
    }

    // The gateway's own session was never taken over or restarted.
    assert_eq!(
        *rig.broker.publisher.borrow(),
        epoch,
        "the gateway's MQTT client had to reconnect"
    );

    // The gateway keeps publishing: a new state reaches the legit watcher.
    let _ = still_connected(&mut wrx, "watcher");
    rig.broker.set_facts(
        &first,
        GatewayFacts {
            plate_clear: Some(true),
            ..GatewayFacts::default()
        },
    );
    next_publish(&mut wrx, "watcher", |p| {
        p.topic == first_topic
            && serde_json::from_slice::<serde_json::Value>(&p.payload)
                .is_ok_and(|v| v["plate_clear"] == true)
    })
    .await;

    // A command from the control user still goes through and is answered.
    ctl.publish(
        format!("printgate/{}/cmd/pause", topic_id(&first)),
        QoS::AtLeastOnce,
        false,
        r#"{"id":"after-hostiles"}"#,
    )
    .await
    .unwrap();
    let cmd = tokio::time::timeout(Duration::from_secs(10), rig.executor.recv())
        .await
        .expect("command reaches the executor")
        .unwrap();
    assert_eq!(
        (cmd.printer.as_str(), cmd.kind, cmd.user.as_str()),
        (first.as_str(), CommandKind::Pause, "demo")
    );
    cmd.reply
        .send(CommandResult {
            ok: true,
            message: "paused".into(),
            id: None,
        })
        .unwrap();
    let r = next_publish(&mut crx, "ctl", |p| p.topic.ends_with("/cmd/pause/result")).await;
    let r: CommandResult = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(r.id.as_deref(), Some("after-hostiles"));
    assert!(r.ok);

    // Still one session each, and the gateway never reconnected.
    let _ = still_connected(&mut wrx, "watcher");
    let _ = still_connected(&mut crx, "ctl");
    assert_eq!(*rig.broker.publisher.borrow(), epoch);

    // The hostile clients themselves: those with usable ids got the state too (the broker
    // served them rather than crashing); none of them saw a command result they could forge.
    let mut served = 0;
    for (id, (_c, rx)) in hostile_ids.iter().zip(hostile.iter_mut()) {
        let mut got_state = false;
        while let Ok(s) = rx.try_recv() {
            if let Seen::Publish(p) = s
                && p.topic.ends_with("/state")
            {
                got_state = true;
            }
        }
        if got_state {
            served += 1;
        } else {
            println!(
                "hostile client id {:?}: no state received",
                &id[..id.len().min(20)]
            );
        }
    }
    assert!(
        served + 2 >= hostile_ids.len(),
        "hostile clients (other than the two sharing \"dup\") are served normally: {served}/{}",
        hostile_ids.len()
    );

    stop.cancel();
    rig.broker.shutdown().await;
    rig.token.cancel();
    rig.gateway.shutdown().await;
}
