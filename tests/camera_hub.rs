//! Issue 18: the camera hub against the simulated P1/A1 chamber camera. One upstream
//! connection however many viewers (counted at the simulator, which is the printer side),
//! fresh frames reused, the upstream closed after the grace, and a busy camera said in words
//! and never asked again before the backoff ends.

use printgate::camera::{CameraHub, CameraTarget, ChamberTarget, HubTimings, SnapshotError};
use printgate::config::{Model, TlsMode};
use printgate::printer::bambu::camera::{CameraError, CameraStream};
use printgate::printer::bambu::tls::{MemoryPinStore, PrinterTls};
use printgate::sim::{SimConfig, SimPrinter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

async fn sim(model: Model) -> SimPrinter {
    let mut cfg = SimConfig::new(model);
    cfg.camera_frame_interval = Duration::from_millis(50);
    SimPrinter::start(cfg).await.expect("simulator starts")
}

fn tls(sim: &SimPrinter) -> Arc<rustls::ClientConfig> {
    PrinterTls::new(sim.serial(), TlsMode::Pin, Arc::new(MemoryPinStore::new()))
        .expect("tls config")
        .client_config()
}

fn hub(sim: &SimPrinter, code: &str, signed_in: bool, timings: HubTimings) -> CameraHub {
    CameraHub::new(
        sim.name(),
        CameraTarget::ChamberImage(ChamberTarget {
            host: sim.host().to_string(),
            port: sim.camera_port().expect("a chamber camera"),
            serial: sim.serial().to_string(),
            access_code: code.to_string(),
            tls: tls(sim),
            signed_in: Arc::new(move || signed_in),
        }),
        timings,
        CancellationToken::new(),
    )
}

fn quick() -> HubTimings {
    HubTimings {
        fresh: Duration::from_secs(2),
        grace: Duration::from_millis(300),
        backoff_min: Duration::from_millis(300),
        backoff_max: Duration::from_secs(5),
    }
}

/// Another client (Bambu Studio, say) watching the camera.
async fn other_viewer(sim: &SimPrinter) -> CameraStream {
    let addr: SocketAddr = format!("{}:{}", sim.host(), sim.camera_port().unwrap())
        .parse()
        .unwrap();
    let mut s = CameraStream::connect(addr, sim.serial(), tls(sim), &sim.access_code())
        .await
        .expect("the other client connects");
    s.next_frame().await.expect("the other client is served");
    s
}

fn decodes(jpeg: &[u8]) -> bool {
    jpeg_decoder::Decoder::new(jpeg).decode().is_ok()
}

#[tokio::test]
async fn ten_concurrent_snapshots_share_one_upstream_connection() {
    let sim = sim(Model::P1S).await;
    let hub = hub(&sim, &sim.access_code(), true, HubTimings::default());
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let hub = hub.clone();
            tokio::spawn(async move { hub.snapshot(WAIT).await })
        })
        .collect();
    for r in futures::future::join_all(requests).await {
        let frame = r.expect("request task").expect("a picture");
        assert!(decodes(&frame.jpeg), "a JPEG jpeg-decoder reads");
        assert!(frame.age() < Duration::from_secs(2));
    }
    let cam = sim.camera().unwrap();
    assert_eq!(cam.connections(), 1, "connections at the simulated printer");
    assert_eq!(cam.streams_served(), 1);
    assert_eq!(hub.connections(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_fresh_frame_is_reused_and_the_upstream_closes_a_grace_after_the_last_viewer() {
    let sim = sim(Model::A1).await;
    let hub = hub(&sim, &sim.access_code(), true, quick());
    hub.snapshot(WAIT).await.expect("first picture");
    // Later requests within the grace are answered from the open connection.
    for _ in 0..5 {
        let f = hub.snapshot(WAIT).await.expect("picture");
        assert!(f.age() < Duration::from_secs(2));
    }
    assert_eq!(sim.camera().unwrap().connections(), 1);
    assert!(
        hub.wait_upstream_closed(WAIT).await,
        "the upstream closes after the grace"
    );
    // The simulated camera notices at its next frame that nobody reads any more.
    let cam = sim.camera().unwrap();
    for _ in 0..2000 {
        if cam.streams() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        cam.streams(),
        0,
        "the camera's one client slot is free again"
    );
    // A reused frame is not older than `fresh`: after the close a request opens a new one.
    tokio::time::sleep(quick().fresh).await;
    hub.snapshot(WAIT).await.expect("picture after reopening");
    assert_eq!(cam.connections(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_busy_camera_is_said_in_words_and_not_asked_again_before_the_backoff_ends() {
    let sim = sim(Model::P1P).await;
    let other = other_viewer(&sim).await;
    let cam = sim.camera().unwrap();
    assert_eq!(cam.connections(), 1);
    let hub = hub(&sim, &sim.access_code(), true, quick());

    let err = hub.snapshot(WAIT).await.expect_err("the camera is taken");
    let SnapshotError::Busy { retry_in } = err.clone() else {
        panic!("expected camera busy, got {err:?}");
    };
    assert!(err.to_string().starts_with("camera busy"), "{err}");
    assert!(err.to_string().contains("does not take it away"), "{err}");
    assert_eq!(cam.connections(), 2, "one attempt");
    // Page reloads during the backoff: answered at once, no new connection.
    for _ in 0..20 {
        let e = hub.snapshot(WAIT).await.expect_err("still backing off");
        assert!(matches!(e, SnapshotError::Busy { .. }), "{e:?}");
    }
    assert_eq!(cam.connections(), 2, "no connection during the backoff");
    // The other viewer still has its stream: printgate never took it.
    let mut other = other;
    other
        .next_frame()
        .await
        .expect("the other client keeps its stream");

    // Still taken after the backoff: one more attempt, and the next delay has doubled.
    tokio::time::sleep(retry_in).await;
    let err = hub.snapshot(WAIT).await.expect_err("still taken");
    let SnapshotError::Busy { retry_in: second } = err else {
        panic!("expected camera busy, got {err:?}");
    };
    assert_eq!(cam.connections(), 3);
    assert!(
        second > Duration::from_millis(450),
        "doubled from 300 ms (jitter ±20 %): {second:?}"
    );

    // The other viewer leaves; after the backoff printgate gets the picture.
    drop(other);
    for _ in 0..2000 {
        if cam.streams() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(second).await;
    let frame = hub.snapshot(WAIT).await.expect("the camera is free now");
    assert!(decodes(&frame.jpeg));
    assert_eq!(cam.connections(), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_access_code_is_not_called_busy() {
    let sim = sim(Model::A1Mini).await;
    // The printer's MQTT session is not signed in either: the code may be wrong.
    let hub = hub(&sim, "00000000", false, quick());
    let err = hub.snapshot(WAIT).await.expect_err("refused");
    assert!(
        matches!(
            err,
            SnapshotError::Failing {
                error: CameraError::ClosedAfterAuth,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("wrong access code"), "{err}");
    assert!(
        err.to_string().contains("asks the camera again in"),
        "{err}"
    );
    assert_eq!(sim.camera().unwrap().streams_served(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_camera_that_is_off_is_said_in_words() {
    let sim = sim(Model::P1S).await;
    let port = sim.camera_port().unwrap();
    let host = sim.host().to_string();
    let serial = sim.serial().to_string();
    let tls = tls(&sim);
    sim.shutdown().await;
    let hub = CameraHub::new(
        "off",
        CameraTarget::ChamberImage(ChamberTarget {
            host,
            port,
            serial,
            access_code: "12345678".into(),
            tls,
            signed_in: Arc::new(|| false),
        }),
        quick(),
        CancellationToken::new(),
    );
    let err = hub.snapshot(WAIT).await.expect_err("nothing listens");
    assert!(err.to_string().contains("LAN Only Liveview"), "{err}");
    assert!(hub.wait_upstream_closed(WAIT).await);
}
