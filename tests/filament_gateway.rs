//! Issue 21, AMS state end to end: the gateway, started as a user starts it, reads the AMS
//! trays the simulated printers report and shows them in `GET /api/v1/printers`, on the
//! printer page and in the retained MQTT state; a spool pulled out or put in on the printer
//! shows up there after the next report (a delta on P1-style printers, a full report on X1).

mod common;

use common::{TestGateway, WAIT, config_for};
use printgate::config::Model;
use printgate::printer::PrinterSnapshot;
use printgate::sim::{SimSpool, default_trays};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::time::Duration;

/// `(label, material, colour, text)` of every tray of a printer's view (`filament` object).
fn trays(filament: &Value) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    filament["units"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["trays"].as_array().cloned().unwrap_or_default())
        .chain(filament["external"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            (
                s(&t["label"]),
                s(&t["material"]),
                s(&t["color"]),
                s(&t["text"]),
            )
        })
        .collect()
}

/// What the simulator's default spools look like in the view, in slot order.
fn default_tray_lines() -> Vec<(String, String, String, String)> {
    vec![
        t(
            "AMS 1 slot 1",
            "PLA",
            "#FFFFFF",
            "PLA Basic · white · 80 % left",
        ),
        t(
            "AMS 1 slot 2",
            "PLA",
            "#000000",
            "PLA Basic · black · 45 % left",
        ),
        t(
            "AMS 1 slot 3",
            "PLA",
            "#C12E1F",
            "PLA Basic · red · 100 % left",
        ),
        t(
            "AMS 1 slot 4",
            "PETG",
            "#0A2989",
            "PETG HF · blue · 62 % left",
        ),
    ]
}

fn t(label: &str, material: &str, color: &str, text: &str) -> (String, String, String, String) {
    (label.into(), material.into(), color.into(), text.into())
}

async fn retained_state(mqtt: std::net::SocketAddr, topic: &str) -> Value {
    let mut opts = MqttOptions::new("filament-test", mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials("reader", "look");
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 10);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    return serde_json::from_slice::<Value>(&p.payload).expect("JSON state");
                }
                Ok(_) => {}
                Err(e) => panic!("MQTT client failed: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("retained state arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bambu_model_shows_its_trays_in_the_api_the_page_and_mqtt() {
    use printgate::broker::config::{Access, BrokerConfig, BrokerMode, BrokerUser};
    let models = [Model::P1S, Model::X1C, Model::A1, Model::P2S, Model::H2D];
    let mut sims = Vec::new();
    for m in models {
        sims.push(common::start_sim(m, 1.0).await);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), &sims);
    let mut broker = BrokerConfig {
        mode: BrokerMode::Embedded,
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_listen: None,
        users: vec![BrokerUser {
            name: "reader".into(),
            password_hash: printgate::broker::auth::hash_password("look").expect("hash"),
            access: Access::Read,
        }],
        ..BrokerConfig::default()
    };
    broker.mdns.enabled = false;
    broker.ssdp.enabled = false;
    config.broker = broker;
    let tg = TestGateway::start_with(sims, dir, config).await;
    tg.wait_online().await;

    let answer = tg.api().printers().await.expect("GET /api/v1/printers");
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let printers = answer.body.as_array().expect("a list").clone();
    assert_eq!(printers.len(), models.len());
    for (p, model) in printers.iter().zip(models) {
        let f = &p["filament"];
        let mut lines = trays(f);
        let external = lines.split_off(4);
        let mut want = default_tray_lines();
        if model == Model::A1 {
            for w in &mut want {
                w.0 = w.0.replace("AMS 1", "AMS lite");
            }
        }
        assert_eq!(lines, want, "{model:?}: {f}");
        // The generic PLA on the external holder; the H2D's left holder is empty.
        let spool = t("External spool", "PLA", "#FFFFFF", "PLA · white");
        let want_external = if model == Model::H2D {
            vec![
                t("External spool (left nozzle)", "-", "-", "empty"),
                t(
                    "External spool (right nozzle)",
                    "PLA",
                    "#FFFFFF",
                    "PLA · white",
                ),
            ]
        } else {
            vec![spool]
        };
        assert_eq!(external, want_external, "{model:?}: {f}");
        assert_eq!(f["active"], serde_json::json!([]), "{model:?}: idle");
        assert_eq!(f["units"][0]["humidity_level"], 2, "{model:?}");
        let percent = if matches!(model, Model::X1C | Model::P2S | Model::H2D) {
            serde_json::json!(23)
        } else {
            Value::Null
        };
        assert_eq!(f["units"][0]["humidity_percent"], percent, "{model:?}");
    }

    // The printer page has a trays section saying the same.
    let browser = tg.browser().await;
    let page = browser
        .http
        .get(tg.url("/printers/printer%202"))
        .header("cookie", &browser.cookie)
        .send()
        .await
        .expect("printer page")
        .text()
        .await
        .expect("page text");
    assert!(
        page.contains("<h2 id=\"filament-heading\">Filament</h2>"),
        "{page}"
    );
    for line in default_tray_lines() {
        assert!(
            page.contains(&format!("<strong>{}</strong> {}", line.0, line.3)),
            "{line:?} missing from the page"
        );
    }
    assert!(page.contains("background:#0A2989"), "a swatch per tray");
    assert!(page.contains("No tray is feeding the nozzle."));

    // And the retained MQTT state (the same read model).
    let mqtt = tg
        .running
        .as_ref()
        .and_then(|r| r.broker.as_ref())
        .and_then(|b| b.mqtt_addr)
        .expect("embedded broker listens");
    let state = retained_state(mqtt, "printgate/printer_1/state").await;
    assert_eq!(
        trays(&state["filament"]).get(..4),
        Some(&default_tray_lines()[..])
    );
    tg.shutdown().await;
}

async fn wait_snapshot(
    tg: &TestGateway,
    i: usize,
    what: &str,
    pred: impl Fn(&PrinterSnapshot) -> bool,
) {
    let mut rx = tg.gw().printers[i].link.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| panic!("{what}: not seen in time"))
        .expect("link alive");
}

fn tray_of(s: &PrinterSnapshot, slot: usize) -> Option<printgate::printer::state::Tray> {
    s.state
        .as_ref()?
        .filament
        .as_ref()?
        .units
        .first()?
        .trays
        .get(slot)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_pulled_out_and_one_put_in_reach_the_api() {
    // P1S: deltas carry the change; X1C: the next full report does.
    let tg = TestGateway::start(&[Model::P1S, Model::X1C], 1.0).await;
    tg.wait_online().await;
    for (i, sim) in tg.sims.iter().enumerate() {
        let before = tg.gw().printers[i].link.subscribe().borrow().clone();
        assert!((0..4).all(|slot| tray_of(&before, slot).is_some_and(|t| t.loaded)));
        assert!(sim.load_tray(1, None), "slot 2 exists");
        let orange = SimSpool::new("GFG00", "PETG", "PETG Basic", "FF6A13FF", 100);
        assert!(sim.load_tray(0, Some(orange)));
        assert!(!sim.load_tray(4, None), "an AMS has four slots");
        wait_snapshot(&tg, i, "slot 2 empty, PETG in slot 1", |s| {
            tray_of(s, 1).is_some_and(|t| !t.loaded)
                && tray_of(s, 0).is_some_and(|t| t.material.as_deref() == Some("PETG"))
        })
        .await;
    }
    let printers = tg.api().printers().await.expect("printers").body;
    for p in printers.as_array().expect("list") {
        let lines = trays(&p["filament"]);
        assert_eq!(
            lines.get(..3),
            Some(
                &[
                    t(
                        "AMS 1 slot 1",
                        "PETG",
                        "#FF6A13",
                        "PETG Basic · orange · 100 % left"
                    ),
                    t("AMS 1 slot 2", "-", "-", "empty"),
                    default_tray_lines()[2].clone(),
                ][..]
            ),
            "{}",
            p["name"]
        );
    }
    // The spool goes back: the slot reads as loaded again.
    let black = default_trays()[1].clone();
    tg.sims[0].load_tray(1, black);
    wait_snapshot(&tg, 0, "slot 2 loaded again", |s| {
        tray_of(s, 1).is_some_and(|t| t.loaded && t.color.as_deref() == Some("000000FF"))
    })
    .await;
    tg.sims[0].load_external_spool(None);
    wait_snapshot(&tg, 0, "external spool taken off", |s| {
        s.state
            .as_ref()
            .and_then(|st| st.filament.as_ref())
            .is_some_and(|f| f.external.iter().all(|t| !t.loaded))
    })
    .await;
    tg.shutdown().await;
}
