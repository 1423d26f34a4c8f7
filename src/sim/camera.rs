//! The chamber-image camera of a simulated P1P/P1S/A1/A1 mini (docs/bambu-protocol.md §9): TLS on
//! its own port (6000 on a real printer), one 80-byte auth packet (u32 LE `0x40`, `0x3000`, `0`,
//! `0`, 32 bytes `bblp` NUL-padded, 32 bytes access code NUL-padded), then frames of a 16-byte
//! header (u32 LE payload length, `0`, `1`, `0`) and a JPEG, about one a second. A wrong code or
//! a client beyond the camera's limit sees the connection closed right after the auth packet,
//! with no byte sent, as on a printer.
//!
//! Frames show the simulated plate: empty, the object growing with the print's progress, and
//! the finished (or failed) object until [`SimCamera::clear_plate`] (a person takes it off).
//! A new job starts on an empty plate (the gateway asked a person to confirm it).

use crate::config::Model;
use crate::printer::GcodeState;
use crate::sim::log::SimTruth;
use crate::sim::printer::Hub;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Chamber-image port of a real printer.
pub const STANDARD_CAMERA_PORT: u16 = 6000;
/// Frame size of the simulated camera (a real one sends 1280×720; small keeps the Pi cheap).
pub const FRAME_WIDTH: u16 = 320;
pub const FRAME_HEIGHT: u16 = 180;
/// The part of a frame where objects stand on the plate: `(x, y, width, height)`.
pub const PLATE_REGION: (u32, u32, u32, u32) = (100, 70, 120, 80);
/// Streams the camera serves at once (P1/A1 cameras serve one client).
pub const CAMERA_CLIENT_LIMIT: usize = 1;
/// Length of the auth packet.
pub const AUTH_LEN: usize = 80;

/// Whether `model` has the port-6000 chamber-image camera.
pub fn has_chamber_image(model: Model) -> bool {
    matches!(model, Model::P1P | Model::P1S | Model::A1 | Model::A1Mini)
}

/// The 80-byte auth packet a client sends (also used by the gateway's client and the tests).
pub fn auth_packet(username: &str, access_code: &str) -> [u8; AUTH_LEN] {
    let mut p = [0u8; AUTH_LEN];
    p[0..4].copy_from_slice(&0x40u32.to_le_bytes());
    p[4..8].copy_from_slice(&0x3000u32.to_le_bytes());
    let u = username.as_bytes();
    let c = access_code.as_bytes();
    p[16..16 + u.len().min(32)].copy_from_slice(&u[..u.len().min(32)]);
    p[48..48 + c.len().min(32)].copy_from_slice(&c[..c.len().min(32)]);
    p
}

/// Whether `packet` is a well-formed auth packet for user `bblp` with `access_code`.
fn auth_ok(packet: &[u8; AUTH_LEN], access_code: &str) -> bool {
    let word =
        |i: usize| u32::from_le_bytes([packet[i], packet[i + 1], packet[i + 2], packet[i + 3]]);
    let field = |from: usize| {
        let f = &packet[from..from + 32];
        let end = f.iter().position(|b| *b == 0).unwrap_or(32);
        &f[..end]
    };
    word(0) == 0x40
        && word(4) == 0x3000
        && field(16) == b"bblp"
        && field(48) == access_code.as_bytes()
}

/// What stands on the simulated plate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plate {
    /// Height of the object, 0 (empty) … 100 (finished), in percent of the full object.
    pub fill: u32,
}

#[derive(Default)]
struct PlateTracker {
    plate: Plate,
    /// `jobs_started` of the job on the plate.
    job: u64,
}

impl PlateTracker {
    fn observe(&mut self, t: &SimTruth) {
        let active = matches!(
            t.gcode_state,
            GcodeState::Prepare | GcodeState::Running | GcodeState::Pause
        );
        if active && t.jobs_started != self.job {
            self.job = t.jobs_started;
            self.plate.fill = 0;
        }
        if t.jobs_started == self.job && self.job > 0 {
            match t.gcode_state {
                GcodeState::Running | GcodeState::Pause | GcodeState::Failed => {
                    self.plate.fill = self.plate.fill.max(t.percent.min(100));
                }
                GcodeState::Finish => self.plate.fill = 100,
                _ => {}
            }
        }
    }
}

/// Handle on a running simulated camera.
#[derive(Clone)]
pub struct SimCamera {
    port: u16,
    plate: Arc<Mutex<PlateTracker>>,
    streams: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl SimCamera {
    /// Port the camera listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// What the camera sees now.
    pub fn plate(&self) -> Plate {
        self.plate.lock().unwrap_or_else(|e| e.into_inner()).plate
    }
    /// A person took the object off the plate.
    pub fn clear_plate(&self) {
        self.plate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plate
            .fill = 0;
    }
    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
    /// Authenticated streams served since start (how many upstream connections a client made).
    pub fn streams_served(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    /// TCP connections accepted since start, refused ones included (how often a client tried).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Draw `plate` into an RGB buffer of [`FRAME_WIDTH`]×[`FRAME_HEIGHT`] and encode it as JPEG.
pub fn render_frame(plate: Plate) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (u32::from(FRAME_WIDTH), u32::from(FRAME_HEIGHT));
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    let mut fill_rect = |x0: u32, y0: u32, x1: u32, y1: u32, c: [u8; 3]| {
        for y in y0.min(h)..y1.min(h) {
            for x in x0.min(w)..x1.min(w) {
                let i = ((y * w + x) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&c);
            }
        }
    };
    // Chamber walls, then the build plate (a dark textured PEI sheet) in perspective-free view.
    fill_rect(0, 0, w, h, [40, 42, 48]);
    fill_rect(40, 60, 280, 170, [70, 72, 78]);
    let (px, py, pw, ph) = PLATE_REGION;
    // The object: an orange block standing on the plate, as tall as the print has come.
    let full = ph - 10;
    let height = full * plate.fill.min(100) / 100;
    if height > 0 {
        let bottom = py + ph - 5;
        fill_rect(
            px + 20,
            bottom - height,
            px + pw - 20,
            bottom,
            [230, 120, 30],
        );
    }
    let mut out = Vec::with_capacity(16 * 1024);
    let enc = jpeg_encoder::Encoder::new(&mut out, 80);
    enc.encode(
        &rgb,
        FRAME_WIDTH,
        FRAME_HEIGHT,
        jpeg_encoder::ColorType::Rgb,
    )?;
    Ok(out)
}

/// Start the camera on `addr`: follows the hub's truth for what is on the plate, checks its
/// current access code and certificate on each connection, sends a frame every `interval`.
pub(crate) async fn start(
    addr: SocketAddr,
    hub: Arc<Hub>,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<(SimCamera, Vec<tokio::task::JoinHandle<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let mut truth = hub.truth_rx();
    let cam = SimCamera {
        port: listener.local_addr()?.port(),
        plate: Arc::new(Mutex::new(PlateTracker::default())),
        streams: Arc::new(AtomicUsize::new(0)),
        accepted: Arc::new(AtomicUsize::new(0)),
        connections: Arc::new(AtomicUsize::new(0)),
    };
    let tracker = Arc::clone(&cam.plate);
    let stop = shutdown.clone();
    let follow = tokio::spawn(async move {
        loop {
            {
                let t = truth.borrow_and_update().clone();
                tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .observe(&t);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = truth.changed() => if r.is_err() { return },
            }
        }
    });
    let served = cam.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "sim camera accept failed");
                        continue;
                    }
                },
            };
            served.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = hub.acceptor();
            let code = hub.knobs.access_code();
            let cam = served.clone();
            let stop = shutdown.child_token();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = serve(tcp, acceptor, code, cam, interval) => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "sim camera connection ended");
                        }
                    }
                }
            });
        }
    });
    Ok((cam, vec![follow, accept]))
}

/// Decrements the open-stream count when a stream ends.
struct StreamSlot(Arc<AtomicUsize>);
impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    access_code: String,
    cam: SimCamera,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await??;
    let mut packet = [0u8; AUTH_LEN];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut packet)).await??;
    if !auth_ok(&packet, &access_code) {
        // The printer closes without a byte: the client reads end of stream.
        let _ = tls.shutdown().await;
        return Ok(());
    }
    let taken = cam
        .streams
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < CAMERA_CLIENT_LIMIT).then_some(n + 1)
        });
    if taken.is_err() {
        let _ = tls.shutdown().await;
        return Ok(());
    }
    let _slot = StreamSlot(Arc::clone(&cam.streams));
    cam.accepted.fetch_add(1, Ordering::SeqCst);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let jpeg = render_frame(cam.plate())?;
        let len = u32::try_from(jpeg.len())?;
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&len.to_le_bytes());
        header[8..12].copy_from_slice(&1u32.to_le_bytes());
        // Header and image in records of their own, as the printer sends them (clients such as
        // bambulabs-api expect a 16-byte read for the header).
        tls.write_all(&header).await?;
        tls.flush().await?;
        tls.write_all(&jpeg).await?;
        tls.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_packet_layout() {
        let p = auth_packet("bblp", "12345678");
        assert_eq!(&p[0..8], &[0x40, 0, 0, 0, 0, 0x30, 0, 0]);
        assert_eq!(&p[16..21], b"bblp\0");
        assert_eq!(&p[48..57], b"12345678\0");
        assert!(auth_ok(&p, "12345678"));
        assert!(!auth_ok(&p, "12345679"));
        assert!(!auth_ok(&auth_packet("root", "12345678"), "12345678"));
    }

    #[test]
    fn frames_are_jfif_jpegs() {
        let j = render_frame(Plate { fill: 50 }).unwrap();
        assert_eq!(&j[..4], &[0xff, 0xd8, 0xff, 0xe0]);
        assert_eq!(&j[j.len() - 2..], &[0xff, 0xd9]);
    }
}
