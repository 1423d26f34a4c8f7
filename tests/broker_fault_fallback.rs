//! A broker worker that cannot start never keeps the gateway (and with it the smoke input and
//! the relays) from starting: with a worker executable that does not exist, the real gateway
//! (simulated GPIO, ephemeral ports, temp data dir) starts with the broker on its own threads,
//! MQTT clients get the printer state, and the smoke input still cuts the relay.

mod common;

use common::*;
use printgate::config::Model;
use printgate::safety::runtime::SafetyUpdate;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_leaves_the_broker_in_process_and_the_safety_path_running() {
    use printgate::broker::config::{Access, BrokerConfig, BrokerMode, BrokerUser};
    let dir = tempfile::tempdir().expect("temp dir");
    printgate::broker::worker::use_executable(dir.path().join("no-such-printgate"));
    let sims = vec![start_sim(Model::P1S, 1.0).await];
    let mut config = config_for(dir.path(), &sims);
    config.safety = safety_config(1);
    let mut broker = BrokerConfig {
        mode: BrokerMode::Embedded,
        listen: "127.0.0.1:0".parse().expect("address"),
        tls_listen: None,
        users: vec![BrokerUser {
            name: "u".into(),
            password_hash: printgate::broker::auth::hash_password("p").expect("hash"),
            access: Access::Read,
        }],
        ..BrokerConfig::default()
    };
    broker.mdns.enabled = false;
    broker.ssdp.enabled = false;
    config.broker = broker;
    let tg = TestGateway::start_with(sims, dir, config).await;
    tg.wait_online().await;
    let handle = tg
        .running
        .as_ref()
        .and_then(|r| r.broker.as_ref())
        .expect("the MQTT side runs");
    assert!(
        handle.broker_worker.is_none(),
        "no worker could start, so none is reported"
    );
    let port = handle.mqtt_addr.expect("listens").port();

    // The in-process broker serves clients.
    let mut o = MqttOptions::new("fallback-client", "127.0.0.1", port);
    o.set_credentials("u", "p");
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(o, 16);
    client
        .subscribe("printgate/printer_1/state", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let state = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("MQTT client: {e}"),
            }
        }
    })
    .await
    .expect("printer state over MQTT");
    assert!(state.retain);

    // And the safety path runs.
    let mut updates = tg.safety().subscribe();
    tg.sim_gpio()
        .set_input_asserted(SMOKE_PIN, true)
        .expect("smoke input");
    wait_update(&mut updates, "smoke trip", |u| {
        matches!(u, SafetyUpdate::Tripped { .. })
    })
    .await;
    assert_eq!(tg.sim_gpio().output_state(5), Some(false));
    tg.shutdown().await;
}
