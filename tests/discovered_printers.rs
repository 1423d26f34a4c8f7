//! Settings → Printers: a Bambu printer announcing itself on the (loopback) network shows up with
//! model, serial and address and a ready `[[printers]]` block; configured printers are listed
//! without their access codes.

mod common;

use common::{TestGateway, config_for, start_sim};
use printgate::config::Model;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcing_printer_is_offered_with_its_config_block() {
    let configured = start_sim(Model::P1S, 1.0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(dir.path(), std::slice::from_ref(&configured));
    // The embedded broker's SSDP listener on a loopback port (never the LAN in tests).
    let ssdp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let mut broker = printgate::broker::config::BrokerConfig::demo("127.0.0.1:0".parse().unwrap())
        .expect("demo broker config");
    broker.ssdp.enabled = true;
    broker.ssdp.listen = format!("127.0.0.1:{ssdp_port}").parse().unwrap();
    config.broker = broker;
    std::fs::create_dir_all(dir.path()).unwrap();
    printgate::web::auth::ensure_demo_account(
        &printgate::store::Store::open(&dir.path().join(printgate::DATABASE_FILE)).unwrap(),
    )
    .unwrap();
    let t = TestGateway::start_with(vec![configured], dir, config).await;

    let mut cfg = printgate::sim::SimConfig::new(Model::X1C);
    cfg.ssdp_target = Some(format!("127.0.0.1:{ssdp_port}").parse().unwrap());
    cfg.ssdp_interval = Duration::from_millis(100);
    let newcomer = printgate::sim::SimPrinter::start(cfg).await.unwrap();

    let discovery = t.gw().discovery.get().expect("discovery running").clone();
    let mut changes = discovery.changes();
    tokio::time::timeout(common::WAIT, async {
        while !discovery
            .seen()
            .iter()
            .any(|s| s.announcement.serial == newcomer.serial())
        {
            changes.changed().await.expect("discovery alive");
        }
    })
    .await
    .expect("the announcement arrives");

    let client = reqwest::Client::new();
    let page = client
        .get(t.url("/settings/printers"))
        .header("X-Api-Key", "printgate-demo")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(newcomer.serial()), "the newcomer is offered");
    assert!(page.contains("model = &#34;X1C&#34;"), "{page}");
    assert!(
        page.contains(t.sims[0].serial()),
        "the configured printer is listed"
    );
    assert!(
        !page.contains(&t.sims[0].access_code()),
        "no access code on the page"
    );
    let api: serde_json::Value = client
        .get(t.url("/api/v1/discovered-printers"))
        .header("X-Api-Key", "printgate-demo")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = api.as_array().expect("list");
    assert!(
        list.iter()
            .any(|d| d["serial"] == newcomer.serial() && d["model"] == "X1C")
    );
    assert!(
        list.iter().all(|d| d["serial"] != t.sims[0].serial()),
        "configured printers are not offered again"
    );
    newcomer.shutdown().await;
    t.shutdown().await;
}
