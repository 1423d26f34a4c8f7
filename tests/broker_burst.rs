//! QoS 1 bursts through the embedded rumqttd to a slow subscriber (issue 7).
//!
//! rumqttd keeps, per subscribed filter, a commit log of `max_segment_count` segments of
//! `max_segment_size` bytes; a subscriber whose read cursor falls behind the oldest segment
//! silently loses the messages in between ("cursor jumped"). A QoS 1 subscriber that does not
//! acknowledge gets at most 100 messages in flight, so everything else of a burst waits in that
//! log. These tests use the real payloads of a realistic burst: Home Assistant restarts, sends its
//! birth message, and the gateway republishes every discovery config of 10 printers and the
//! gateway while the 10 printers keep publishing state, all while Home Assistant (busy starting)
//! reads nothing. The subscriber is a real rumqttc client that stops polling its connection.
//!
//! `burst_reaches_a_slow_subscriber_intact` proves the limits of `embedded::rumqttd_config` hold
//! that burst; `burst_loss_by_segment_limits` prints the loss for the old and the chosen limits
//! (run with `--nocapture` to see the table).

use printgate::broker::config::BrokerLimits;
use printgate::broker::embedded::{self, InternalBroker};
use printgate::broker::ha::{self, HaGateway, HaPrinter};
use printgate::config::Model;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

/// A state message of a printing printer is about this size (JSON of the merged state).
const STATE_BYTES: usize = 1500;
/// State messages per printer during the burst (the printers report every second and the burst
/// plus Home Assistant's start-up take a few seconds).
const STATES_PER_PRINTER: usize = 5;
const PRINTERS: usize = 10;

fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Start rumqttd with `config` built by printgate and changed by `adjust`; returns once it
/// accepts connections.
async fn start_broker(adjust: impl FnOnce(&mut rumqttd::Config)) -> InternalBroker {
    let internal = InternalBroker {
        v4: free_port(),
        v5: free_port(),
        username: "burst".into(),
        password: "burst-pw".into(),
    };
    let mut config = embedded::rumqttd_config(&BrokerLimits::default(), &internal);
    adjust(&mut config);
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        let _ = broker.start();
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if tokio::net::TcpStream::connect(internal.v4).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("rumqttd listens within 10 s");
    internal
}

fn client(b: &InternalBroker, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, b.v4.ip().to_string(), b.v4.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_credentials(b.username.clone(), b.password.clone());
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    AsyncClient::new(o, 1000)
}

async fn until(el: &mut EventLoop, what: &str, f: impl Fn(&Event) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(e) if f(&e) => return,
                Ok(_) => {}
                Err(e) => panic!("connection failed while waiting for {what}: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within 10 s"));
}

/// The burst: every discovery config of `PRINTERS` printers and the gateway, interleaved with
/// state messages. Each payload starts with its sequence number (`<n>|`).
fn realistic_burst() -> Vec<(String, Vec<u8>)> {
    let gateway = HaGateway {
        id: "printgate".into(),
        name: "printgate".into(),
        version: "0.1.0".into(),
        configuration_url: Some("http://printgate.local:8080/".into()),
        tree: printgate::broker::topics::Tree::default(),
    };
    let models = [Model::P1S, Model::X1C, Model::A1Mini];
    let mut configs: Vec<(String, Vec<u8>)> = ha::gateway_configs("homeassistant", &gateway)
        .into_iter()
        .map(|m| (m.topic, m.payload.to_string().into_bytes()))
        .collect();
    for i in 0..PRINTERS {
        let model = models[i % models.len()];
        let p = HaPrinter {
            name: format!("Printer {i}"),
            topic_id: format!("Printer_{i}"),
            unique_id: format!("01P00A{i:09}"),
            serial: Some(format!("01P00A{i:09}")),
            manufacturer: Some("Bambu Lab".into()),
            model: model.display_name().into(),
            has_chamber_sensor: model.has_chamber_sensor(),
            has_relay: true,
            firmware: Some("01.08.00.00".into()),
        };
        for m in ha::printer_configs("homeassistant", &p, &gateway) {
            configs.push((m.topic, m.payload.to_string().into_bytes()));
        }
    }
    let states = PRINTERS * STATES_PER_PRINTER;
    let every = (configs.len() / states).max(1);
    let mut burst = Vec::new();
    let mut s = 0;
    for (n, c) in configs.into_iter().enumerate() {
        burst.push(c);
        if n % every == every - 1 && s < states {
            burst.push((
                format!("printgate/Printer_{}/state", s % PRINTERS),
                vec![b'x'; STATE_BYTES],
            ));
            s += 1;
        }
    }
    for (n, (_, payload)) in burst.iter_mut().enumerate() {
        let mut p = format!("{n}|").into_bytes();
        p.extend_from_slice(payload);
        *payload = p;
    }
    burst
}

struct Outcome {
    sent: usize,
    bytes: usize,
    received: usize,
    in_order: bool,
}

/// A subscriber on `#` (QoS 1) stops reading; `burst` is published (QoS 1, all acknowledged by
/// the broker); then the subscriber reads again. Counts what reached it.
async fn run_burst(b: &InternalBroker, tag: &str, burst: &[(String, Vec<u8>)]) -> Outcome {
    let (sub, mut sel) = client(b, &format!("slow-{tag}"));
    sub.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    until(&mut sel, "SUBACK", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    // From here on `sel` is not polled: nothing is read or acknowledged.

    let (publ, mut pel) = client(b, &format!("pub-{tag}"));
    until(&mut pel, "CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    let n = burst.len();
    let feeder = {
        let publ = publ.clone();
        let burst = burst.to_vec();
        tokio::spawn(async move {
            for (topic, payload) in burst {
                publ.publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        })
    };
    let mut acks = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acks < n {
            match pel.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher failed: {e}"),
            }
        }
    })
    .await
    .expect("the broker acknowledges the whole burst within 60 s");
    feeder.await.unwrap();

    // The slow subscriber wakes up.
    let mut seqs = Vec::new();
    for _ in 0..100_000 {
        match tokio::time::timeout(Duration::from_secs(3), sel.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let seq = p
                    .payload
                    .split(|b| *b == b'|')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<usize>().ok());
                if let Some(s) = seq {
                    seqs.push(s);
                }
                if seqs.len() == n {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("slow subscriber's connection failed: {e}"),
            Err(_) => break, // quiet for 3 s: nothing more is coming
        }
    }
    let _ = sub.disconnect().await;
    let _ = publ.disconnect().await;
    // Drive both disconnects out (bounded).
    for el in [&mut sel, &mut pel] {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match el.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    Outcome {
        sent: n,
        bytes: burst.iter().map(|(t, p)| 4 + t.len() + p.len()).sum(),
        received: seqs.len(),
        in_order: seqs.windows(2).all(|w| w[0] < w[1]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_reaches_a_slow_subscriber_intact() {
    let burst = realistic_burst();
    let b = start_broker(|_| {}).await;
    let o = run_burst(&b, "chosen", &burst).await;
    println!(
        "printgate limits: {} of {} messages ({} KiB) reached the slow subscriber",
        o.received,
        o.sent,
        o.bytes / 1024
    );
    assert!(
        o.bytes > 200 * 1024,
        "the realistic burst is {} KiB; it should exceed what the old limits held",
        o.bytes / 1024
    );
    assert_eq!(o.received, o.sent, "every message of the burst arrives");
    assert!(o.in_order, "in publish order");
}

/// Loss for several segment limits (figures for the module doc of `embedded.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_loss_by_segment_limits() {
    let burst = realistic_burst();
    let chosen = embedded::rumqttd_config(
        &BrokerLimits::default(),
        &InternalBroker {
            v4: free_port(),
            v5: free_port(),
            username: String::new(),
            password: String::new(),
        },
    )
    .router;
    let cases = [
        ("old 64 KiB x 2", 64 * 1024, 2),
        ("chosen", chosen.max_segment_size, chosen.max_segment_count),
    ];
    for (i, (name, size, count)) in cases.into_iter().enumerate() {
        let b = start_broker(|c| {
            c.router.max_segment_size = size;
            c.router.max_segment_count = count;
        })
        .await;
        let o = run_burst(&b, &format!("case{i}"), &burst).await;
        println!(
            "{name} ({} KiB x {count}): {}/{} messages ({} KiB burst) reached the slow QoS 1 subscriber{}",
            size / 1024,
            o.received,
            o.sent,
            o.bytes / 1024,
            if o.in_order { "" } else { ", out of order" }
        );
        if name == "chosen" {
            assert_eq!(o.received, o.sent);
        }
    }
}

/// Count the retained messages a fresh subscription to `retained/#` at `qos` receives.
async fn retained_on_subscribe(b: &InternalBroker, tag: &str, qos: QoS, expected: usize) -> usize {
    let (c, mut el) = client(b, &format!("late-{tag}"));
    c.subscribe("retained/#", qos).await.unwrap();
    let mut got = std::collections::HashSet::new();
    for _ in 0..100_000 {
        match tokio::time::timeout(Duration::from_secs(3), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.retain => {
                got.insert(p.topic.clone());
                if got.len() == expected {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber failed: {e}"),
            Err(_) => break,
        }
    }
    let _ = c.disconnect().await;
    got.len()
}

/// Retained messages on SUBSCRIBE: Home Assistant subscribes to discovery with QoS 0 and a
/// dashboard may subscribe to `#` with QoS 1; both must get every retained message, far more
/// than one outgoing batch (`MAX_OUTGOING_PACKETS`, QoS 0) or rumqttd's inflight window (100,
/// QoS 1) holds. Upstream rumqttd dropped the excess; the vendored patch sends it as the
/// subscriber acknowledges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_on_subscribe() {
    const RETAINED: usize = 2_500;
    let b = start_broker(|_| {}).await;
    fill_retained(&b, RETAINED).await;
    let qos0 = retained_on_subscribe(&b, "q0", QoS::AtMostOnce, RETAINED).await;
    let qos1 = retained_on_subscribe(&b, "q1", QoS::AtLeastOnce, RETAINED).await;
    println!("retained on subscribe: QoS 0 {qos0}/{RETAINED}, QoS 1 {qos1}/{RETAINED}");
    assert_eq!(
        (qos0, qos1),
        (RETAINED, RETAINED),
        "every subscription gets every retained message"
    );
    // Live traffic after the backlog still flows (the subscription did not stall).
    let (c, mut el) = client(&b, "late-live");
    c.subscribe("retained/#", QoS::AtLeastOnce).await.unwrap();
    let mut retained = 0;
    let (publ, mut pel) = client(&b, "live-publisher");
    let mut published = false;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                ev = el.poll() => match ev.unwrap() {
                    Event::Incoming(Packet::Publish(p)) if p.retain => {
                        retained += 1;
                        if retained == RETAINED && !published {
                            published = true;
                            publ.publish("retained/live", QoS::AtLeastOnce, false, "now")
                                .await
                                .unwrap();
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        assert_eq!(p.topic, "retained/live");
                        return;
                    }
                    _ => {}
                },
                _ = pel.poll() => {}
            }
        }
    })
    .await
    .expect("a live message after the retained backlog");
}

/// Publish `n` retained messages `retained/<i>` (1 KiB, QoS 1) and wait for the broker's acks.
async fn fill_retained(b: &InternalBroker, n: usize) {
    let (publ, mut pel) = client(b, "retainer");
    // More than the request channel holds: queue from a task while the event loop runs.
    let queue = publ.clone();
    tokio::spawn(async move {
        for i in 0..n {
            queue
                .publish(
                    format!("retained/{i}"),
                    QoS::AtLeastOnce,
                    true,
                    vec![b'r'; 1024],
                )
                .await
                .unwrap();
        }
    });
    let mut acks = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while acks < n {
            match pel.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher failed: {e}"),
            }
        }
    })
    .await
    .expect("all retained messages acknowledged");
    let _ = publ.disconnect().await;
}
