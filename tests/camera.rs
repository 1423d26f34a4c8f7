//! Issue 18: the P1/A1 chamber-image camera. The simulator's camera (TLS, 80-byte auth packet,
//! length-prefixed JPEG frames, one client) read by printgate's camera client; frames decoded
//! with jpeg-decoder (not ours) show an empty plate before a print and the object after it.
//! bambulabs-api's own camera client reads the simulator too (tests/sim_clients.rs).

use printgate::config::{Model, TlsMode};
use printgate::printer::GcodeState;
use printgate::printer::bambu::camera::{CameraError, CameraKind, CameraStream};
use printgate::printer::bambu::tls::{MemoryPinStore, PrinterTls};
use printgate::sim::camera::PLATE_REGION;
use printgate::sim::fixtures::{Fixture3mf, build_3mf};
use printgate::sim::{SimConfig, SimPrinter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn sim(model: Model) -> SimPrinter {
    let mut cfg = SimConfig::new(model);
    cfg.camera_frame_interval = Duration::from_millis(50);
    cfg.time_scale = 600.0;
    cfg.report_interval = Duration::from_millis(50);
    SimPrinter::start(cfg).await.expect("simulator starts")
}

async fn open(sim: &SimPrinter, code: &str) -> Result<CameraStream, CameraError> {
    let port = sim.camera_port().expect("this model has a chamber camera");
    let tls = PrinterTls::new(sim.serial(), TlsMode::Pin, Arc::new(MemoryPinStore::new()))
        .expect("tls config");
    let addr: SocketAddr = format!("{}:{port}", sim.host()).parse().unwrap();
    CameraStream::connect(addr, sim.serial(), tls.client_config(), code).await
}

/// Share of pixels in the plate region that are strongly orange (the printed object).
fn object_share(jpeg: &[u8]) -> f64 {
    let mut d = jpeg_decoder::Decoder::new(jpeg);
    let px = d.decode().expect("a JPEG jpeg-decoder can read");
    let info = d.info().expect("info");
    assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
    let w = u32::from(info.width);
    let (x0, y0, rw, rh) = PLATE_REGION;
    let mut hits = 0u32;
    for y in y0..y0 + rh {
        for x in x0..x0 + rw {
            let i = ((y * w + x) * 3) as usize;
            let (r, b) = (i32::from(px[i]), i32::from(px[i + 2]));
            if r - b > 100 && r > 150 {
                hits += 1;
            }
        }
    }
    f64::from(hits) / f64::from(rw * rh)
}

#[tokio::test]
async fn frames_show_the_plate_empty_then_the_finished_object_until_cleared() {
    let sim = sim(Model::P1S).await;
    let mut cam = open(&sim, &sim.access_code()).await.expect("camera opens");
    let empty = cam.next_frame().await.expect("a frame");
    assert!(
        object_share(&empty) < 0.01,
        "empty plate: {}",
        object_share(&empty)
    );

    let fixture = Fixture3mf {
        prediction_secs: 600,
        ..Fixture3mf::for_model(Model::P1S)
    };
    sim.storage()
        .put("cube.gcode.3mf", build_3mf(&fixture))
        .unwrap();
    sim.start_from_screen("cube.gcode.3mf", "cube");
    sim.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Finish)
        .await
        .expect("print finishes");
    // Frames keep coming on the same stream (those sent while nobody read are queued in the
    // socket); the later ones show the finished object.
    let mut share = 0.0;
    for _ in 0..400 {
        share = object_share(&cam.next_frame().await.expect("a frame"));
        if share > 0.2 {
            break;
        }
    }
    assert!(share > 0.2, "finished object on the plate: {share}");

    // Dismissing the dialog leaves the object there; a person taking it off clears it.
    sim.dismiss_on_screen();
    sim.wait_truth(WAIT, |t| t.gcode_state == GcodeState::Idle)
        .await
        .unwrap();
    assert!(sim.camera().unwrap().plate().fill == 100);
    sim.camera().unwrap().clear_plate();
    let mut share = 1.0;
    for _ in 0..400 {
        share = object_share(&cam.next_frame().await.expect("a frame"));
        if share < 0.01 {
            break;
        }
    }
    assert!(share < 0.01, "cleared plate: {share}");
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_access_code_closes_the_connection_and_says_so() {
    let sim = sim(Model::A1Mini).await;
    let mut cam = open(&sim, "00000000").await.expect("TLS and auth written");
    let err = cam
        .next_frame()
        .await
        .expect_err("no frame for a wrong code");
    assert_eq!(err, CameraError::ClosedAfterAuth);
    assert!(err.to_string().contains("wrong access code"), "{err}");
    assert_eq!(sim.camera().unwrap().streams_served(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_camera_serves_one_client_and_refuses_a_second() {
    let sim = sim(Model::A1).await;
    let mut first = open(&sim, &sim.access_code()).await.unwrap();
    first.next_frame().await.expect("first client gets frames");
    let mut second = open(&sim, &sim.access_code()).await.unwrap();
    let err = second.next_frame().await.expect_err("busy");
    assert!(err.to_string().contains("camera busy"), "{err}");
    first
        .next_frame()
        .await
        .expect("the first keeps its stream");
    drop(first);
    // Once the first viewer left, a new one is served.
    let mut third = loop {
        let mut c = open(&sim, &sim.access_code()).await.unwrap();
        if c.next_frame().await.is_ok() {
            break c;
        }
        tokio::task::yield_now().await;
    };
    third.next_frame().await.unwrap();
    assert_eq!(sim.camera().unwrap().streams_served(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn rtsps_models_have_no_chamber_camera_and_report_liveview_disabled() {
    let sim = sim(Model::X1C).await;
    assert_eq!(sim.camera_port(), None);
    assert_eq!(CameraKind::of(Model::X1C), CameraKind::Rtsps);
    assert_eq!(CameraKind::of(Model::P1P), CameraKind::ChamberImage);
    assert!(
        CameraError::RtspsNotSupported
            .to_string()
            .contains("live view for this model is not supported yet")
    );
    sim.shutdown().await;
}
