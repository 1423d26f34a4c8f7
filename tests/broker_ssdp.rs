//! SSDP discovery end to end on loopback: simulated printers announce themselves to the
//! gateway's discovery listener; garbage, oversize and spoofed datagrams on the same socket
//! leave the list correct and bounded.

use printgate::broker::ssdp::{self, Discovery, DiscoveryList};
use printgate::config::Model;
use printgate::sim::printer::{SimConfig, SimPrinter};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn wait_for(discovery: &Discovery, n: usize) -> Vec<ssdp::SeenPrinter> {
    let mut changes = discovery.changes();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let seen = discovery.seen();
            if seen.len() >= n {
                return seen;
            }
            changes.changed().await.expect("discovery alive");
        }
    })
    .await
    .expect("announcements arrive within 10 s")
}

#[tokio::test]
async fn simulated_printers_show_up_and_junk_does_not() {
    let socket = ssdp::bind_socket((Ipv4Addr::LOCALHOST, 0).into(), false).unwrap();
    let target = socket.local_addr().unwrap();
    let discovery = Discovery::new(DiscoveryList::new(4, Duration::from_secs(30)));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(ssdp::run_listener(
        socket,
        discovery.clone(),
        shutdown.clone(),
    ));

    // Junk first: garbage, oversize, truncated, and a spoof naming another address.
    let junk = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let spoof = "NOTIFY * HTTP/1.1\r\nNT: urn:bambulab-com:device:3dprinter:1\r\n\
                 Location: 192.168.1.99\r\nUSN: 01P00A000000666\r\n\r\n";
    for _ in 0..200 {
        junk.send_to(b"\x00\xff garbage", target).await.unwrap();
        junk.send_to(&[b'A'; 9000], target).await.unwrap();
        junk.send_to(b"NOTIFY * HTTP/1.1\r\nUSN: 01P", target)
            .await
            .unwrap();
        junk.send_to(spoof.as_bytes(), target).await.unwrap();
    }

    let mut printers = Vec::new();
    for model in [Model::P1S, Model::X1C] {
        let mut cfg = SimConfig::new(model);
        cfg.ssdp_target = Some(target);
        cfg.ssdp_interval = Duration::from_millis(50);
        printers.push(SimPrinter::start(cfg).await.unwrap());
    }
    let seen = wait_for(&discovery, 2).await;
    assert_eq!(seen.len(), 2, "only the two real announcements: {seen:?}");
    let mut models: Vec<Option<Model>> = seen.iter().map(|s| s.announcement.model).collect();
    models.sort_by_key(|m| m.map(|m| m.config_name()));
    assert_eq!(models, [Some(Model::P1S), Some(Model::X1C)]);
    for s in &seen {
        assert_eq!(s.announcement.ip, Ipv4Addr::LOCALHOST);
        assert_eq!(s.announcement.serial.len(), 15);
        assert!(
            !seen
                .iter()
                .any(|s| s.announcement.serial == "01P00A000000666")
        );
    }
    for p in printers {
        p.shutdown().await;
    }
    shutdown.cancel();
    task.await.unwrap();
}
