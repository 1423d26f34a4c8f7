//! A fleet: 3 gateways × 30 simulated printers on one real Mosquitto (external-broker mode,
//! `[broker] gateway_id`), in one test process. Every printer appears once in Home Assistant
//! discovery with no id collision (the printers of all gateways have the same names); a
//! command reaches only the gateway that owns its topic; each gateway's fleet page shows the
//! others' printers with a link to their owner; stopping one gateway marks only its printers
//! unavailable; and a broker restart loses nothing and starts nothing: retained commands found
//! on the new broker (sent while the gateways were away) are never executed (I2/I3).

mod common;
use common::mosquitto::{start_mosquitto, start_mosquitto_on};
use common::*;

use printgate::broker::config::{BrokerConfig, BrokerMode, ExternalBroker};
use printgate::broker::publisher::PublisherState;
use printgate::config::Model;
use printgate::jobs::model::JobState;
use printgate::sim::{SimConfig, SimPrinter};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const GATEWAYS: [&str; 3] = ["farm-a", "farm-b", "farm-c"];
const PRINTERS: usize = 30;
/// Home Assistant configs of one P1S without relay: 8 sensors, 4 binary sensors, 4 buttons.
const CONFIGS_PER_PRINTER: usize = 16;

async fn start_gateway(id: &str, port: u16) -> TestGateway {
    let mut sims = Vec::new();
    for i in 0..PRINTERS {
        let mut c = SimConfig::new(Model::P1S);
        c.name = format!("{id} sim {i}");
        c.report_interval = Duration::from_secs(1);
        sims.push(SimPrinter::start(c).await.expect("simulator starts"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config_for(dir.path(), &sims);
    let mut broker = BrokerConfig {
        mode: BrokerMode::External,
        external: Some(ExternalBroker {
            url: format!("mqtt://127.0.0.1:{port}"),
            username: None,
            password: None,
            ca_file: None,
            client_id: format!("printgate-{id}"),
        }),
        gateway_id: Some(id.to_string()),
        ..BrokerConfig::default()
    };
    broker.mdns.enabled = false;
    broker.mdns.hostname = id.to_string();
    broker.ssdp.enabled = false;
    cfg.broker = broker;
    TestGateway::start_with(sims, dir, cfg).await
}

async fn connected(t: &TestGateway, epoch_above: u64) {
    let mut st = t
        .running
        .as_ref()
        .and_then(|r| r.broker.as_ref())
        .expect("broker side")
        .publisher
        .clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        st.wait_for(|s| matches!(s, PublisherState::Connected { epoch } if *epoch > epoch_above)),
    )
    .await
    .expect("connected to the broker in time")
    .expect("publisher running");
}

fn client(port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    AsyncClient::new(o, 256)
}

/// Subscribe to `filter` on a fresh connection and collect retained messages (topic → payload)
/// until `done` says so.
async fn retained(
    port: u16,
    name: &str,
    filter: &str,
    mut done: impl FnMut(&BTreeMap<String, Vec<u8>>) -> bool,
) -> BTreeMap<String, Vec<u8>> {
    let (c, mut el) = client(port, name);
    // QoS 0: Mosquitto queues at most 1000 QoS 1 messages per client (max_queued_messages),
    // fewer than the fleet's retained tree.
    c.subscribe(filter, QoS::AtMostOnce)
        .await
        .expect("subscribe");
    let mut seen = BTreeMap::new();
    let r = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.payload.is_empty() {
                        seen.remove(&p.topic);
                    } else {
                        seen.insert(p.topic.clone(), p.payload.to_vec());
                    }
                    if done(&seen) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("observer lost the broker: {e}"),
            }
        }
    })
    .await;
    let _ = c.disconnect().await;
    assert!(
        r.is_ok(),
        "{filter}: not everything arrived; have {} topics",
        seen.len()
    );
    seen
}

/// Publish `payload` on `topic` and wait for the result on `<topic>/result`.
async fn command(port: u16, topic: &str, payload: &str) -> serde_json::Value {
    let (c, mut el) = client(port, &format!("ctl-{}", topic.replace('/', "-")));
    let result = format!("{topic}/result");
    c.subscribe(&result, QoS::AtLeastOnce).await.expect("sub");
    let mut sent = false;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match el.poll().await.expect("broker") {
                Event::Incoming(Packet::SubAck(_)) if !sent => {
                    sent = true;
                    c.publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                        .await
                        .expect("publish");
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == result => {
                    let _ = c.disconnect().await;
                    return serde_json::from_slice(&p.payload).expect("result JSON");
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no result on {result}"))
}

fn lights(sim: &SimPrinter) -> usize {
    sim.command_log()
        .iter()
        .filter(|c| c.command.as_deref() == Some("ledctrl"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some((mosquitto, port)) = start_mosquitto(dir.path()).await else {
        return;
    };
    let mut gws = Vec::new();
    for id in GATEWAYS {
        gws.push(start_gateway(id, port).await);
    }
    for g in &gws {
        g.wait_online().await;
        connected(g, 0).await;
    }

    // Every printer once in Home Assistant, all ids distinct, each pointing into its own tree.
    let want = GATEWAYS.len() * (PRINTERS * CONFIGS_PER_PRINTER + 2);
    let configs = retained(port, "ha-observer", "homeassistant/#", |m| m.len() >= want).await;
    assert_eq!(configs.len(), want, "exactly these discovery configs");
    let mut unique_ids = BTreeSet::new();
    let mut devices: BTreeMap<String, String> = BTreeMap::new();
    for (topic, payload) in &configs {
        let v: serde_json::Value = serde_json::from_slice(payload).expect("config JSON");
        assert!(
            unique_ids.insert(v["unique_id"].as_str().expect("unique_id").to_string()),
            "unique id used twice: {topic}"
        );
        let Some(state) = v["state_topic"].as_str().or(v["command_topic"].as_str()) else {
            continue;
        };
        let owner = state
            .split('/')
            .nth(1)
            .expect("gateway segment")
            .to_string();
        let device = v["device"]["identifiers"][0]
            .as_str()
            .expect("device")
            .to_string();
        let prev = devices.insert(device.clone(), owner.clone());
        assert!(prev.is_none_or(|p| p == owner), "{device} in two trees");
    }
    let printers = devices.keys().filter(|d| !d.contains("gateway")).count();
    assert_eq!(printers, GATEWAYS.len() * PRINTERS, "{devices:?}");

    // Every printer of every gateway is online in its own tree.
    let avail = retained(port, "avail-observer", "printgate/+/+/availability", |m| {
        m.len() >= GATEWAYS.len() * PRINTERS && m.values().all(|v| v == b"online")
    })
    .await;
    for id in GATEWAYS {
        for i in 1..=PRINTERS {
            assert!(avail.contains_key(&format!("printgate/{id}/printer_{i}/availability")));
        }
    }

    // A command reaches only the gateway that owns the topic; the others never see it (their
    // later commands are answered after it, so it would have arrived before).
    let before: Vec<usize> = gws.iter().map(|g| lights(&g.sims[0])).collect();
    let r = command(port, "printgate/farm-b/printer_1/cmd/light", "ON").await;
    assert_eq!(r["ok"], true, "{r}");
    for id in ["farm-a", "farm-c"] {
        let r = command(port, &format!("printgate/{id}/printer_2/cmd/light"), "ON").await;
        assert_eq!(r["ok"], true, "{r}");
    }
    tokio::time::timeout(WAIT, async {
        while lights(&gws[1].sims[0]) == before[1] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("farm-b's printer 1 got the light command");
    assert_eq!(lights(&gws[0].sims[0]), before[0], "farm-a must not act");
    assert_eq!(lights(&gws[2].sims[0]), before[2], "farm-c must not act");

    // Each gateway's fleet page shows the others' printers, linking to their owner.
    let browser = gws[0].browser().await;
    let page = tokio::time::timeout(WAIT, async {
        loop {
            let html = browser
                .http
                .get(gws[0].url("/fleet"))
                .header("cookie", &browser.cookie)
                .send()
                .await
                .expect("fleet page")
                .text()
                .await
                .expect("html");
            let rows = html.matches("data-printer=\"printer_").count();
            if rows >= GATEWAYS.len() * PRINTERS
                && GATEWAYS
                    .iter()
                    .all(|g| html.contains(&format!("id=\"gateway-{g}\"")))
            {
                return html;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the fleet page shows every gateway's printers");
    let b_port = gws[1].running.as_ref().expect("running").web_addr.port();
    assert!(
        page.contains(&format!("href=\"http://farm-b.local:{b_port}/\"")),
        "link to the owner:\n{page}"
    );
    assert!(page.contains("farm-a (this gateway)"));
    assert!(
        !page.contains("<form method=\"post\" action=\"/printers"),
        "read-only"
    );

    // Stopping farm-c marks only farm-c unavailable (its printers' entities need it online).
    let c = gws.pop().expect("farm-c");
    c.shutdown().await;
    let gw_avail = retained(port, "gw-observer", "printgate/+/availability", |m| {
        m.get("printgate/farm-c/availability").map(Vec::as_slice) == Some(b"offline")
            && m.len() == GATEWAYS.len()
    })
    .await;
    assert_eq!(gw_avail["printgate/farm-a/availability"], b"online");
    assert_eq!(gw_avail["printgate/farm-b/availability"], b"online");
    for (topic, payload) in &configs {
        let v: serde_json::Value = serde_json::from_slice(payload).expect("json");
        let needs: Vec<&str> = v["availability"]
            .as_array()
            .expect("availability")
            .iter()
            .filter_map(|a| a["topic"].as_str())
            .collect();
        let owner = topic.split('/').nth(2).unwrap_or("");
        let is_c = owner.starts_with("printgate_farm-c") || owner.ends_with("farm-c");
        assert_eq!(
            needs.contains(&"printgate/farm-c/availability"),
            is_c,
            "{topic} depends on the right gateway"
        );
    }

    // A job waits on farm-a's printer 3 for a plate-clear tap.
    let job = gws[0]
        .queue(Some("printer 3"), Model::P1S, "fleet-job")
        .await;

    // The broker restarts. Commands arrive while the gateways are away: found retained on the
    // new broker (a plate clear, a stop), they must never be executed (I2/I3).
    mosquitto.stop_gracefully();
    let persist = dir.path().join("persist");
    std::fs::create_dir_all(&persist).expect("dir");
    let side_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let side = start_mosquitto_on(dir.path(), side_port, Some(&persist)).await;
    {
        let (c, mut el) = client(side_port, "while-away");
        for (topic, payload) in [
            ("printgate/farm-a/printer_3/cmd/plate_clear", "PRESS"),
            ("printgate/farm-a/printer_2/cmd/stop", "PRESS"),
        ] {
            c.publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .expect("publish");
        }
        let mut acks = 0;
        tokio::time::timeout(Duration::from_secs(10), async {
            while acks < 2 {
                if let Ok(Event::Incoming(Packet::PubAck(_))) = el.poll().await {
                    acks += 1;
                }
            }
        })
        .await
        .expect("retained commands stored");
    }
    side.stop_gracefully();
    let _mosquitto = start_mosquitto_on(dir.path(), port, Some(&persist)).await;
    for g in &gws {
        connected(g, 1).await;
    }

    // Nothing lost: the whole retained tree of the running gateways is back.
    let after = retained(port, "after-observer", "printgate/+/+/state", |m| {
        m.len() >= 2 * PRINTERS
    })
    .await;
    for id in ["farm-a", "farm-b"] {
        for i in 1..=PRINTERS {
            assert!(after.contains_key(&format!("printgate/{id}/printer_{i}/state")));
        }
    }
    let ha = retained(port, "ha-after", "homeassistant/#", |m| {
        m.len() >= 2 * (PRINTERS * CONFIGS_PER_PRINTER + 2)
    })
    .await;
    assert_eq!(ha.len(), 2 * (PRINTERS * CONFIGS_PER_PRINTER + 2));

    // Nothing started: a live command sent now is answered, and by then the retained ones
    // (delivered at the subscription, before it) have been ignored.
    let r = command(port, "printgate/farm-a/printer_4/cmd/light", "ON").await;
    assert_eq!(r["ok"], true, "{r}");
    let j = gws[0].gw().store.job(job.id).expect("db").expect("job");
    assert!(
        matches!(j.state, JobState::Queued | JobState::Staged),
        "the retained plate clear started nothing: {:?}",
        j.state
    );
    let plate = gws[0].gw().dispatcher.state().printers["printer 3"]
        .plate
        .clone();
    assert!(
        !matches!(plate, printgate::jobs::plate::PlateState::Clear(_)),
        "no tap was taken from the retained plate clear: {plate:?}"
    );
    for g in &gws {
        for s in &g.sims {
            assert!(starts(s).is_empty(), "no print was started");
            assert!(
                !s.command_log()
                    .iter()
                    .any(|c| c.command.as_deref() == Some("stop")),
                "the retained stop was not executed"
            );
        }
    }
    for g in gws {
        g.shutdown().await;
    }
}
