//! Client of the P1P/P1S/A1/A1 mini chamber-image camera (docs/bambu-protocol.md §9): TLS to
//! port 6000 with the printer's certificate rules, one 80-byte auth packet, then frames of a
//! 16-byte header (u32 LE payload length, 0, 1, 0) and a JPEG. Errors say in words what went
//! wrong and what to do; nothing read from the network can panic here.

use crate::printer::model::Model;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Chamber-image port of a real printer.
pub const CAMERA_PORT: u16 = 6000;
/// Largest frame accepted (a 1280×720 JPEG is well under 1 MB).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// How long a connect, the TLS handshake or one frame may take.
pub const CAMERA_TIMEOUT: Duration = Duration::from_secs(10);

/// Which camera a model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraKind {
    /// JPEG frames over TLS on port 6000 (P1P, P1S, A1, A1 mini).
    ChamberImage,
    /// RTSPS on port 322 (X1C, X1E, P2S, H2D): not supported by printgate yet.
    Rtsps,
    /// No camera printgate can reach (Klipper printers).
    None,
}

impl CameraKind {
    pub fn of(model: Model) -> Self {
        match model {
            Model::P1P | Model::P1S | Model::A1 | Model::A1Mini => Self::ChamberImage,
            Model::X1C | Model::X1E | Model::P2S | Model::H2D => Self::Rtsps,
            Model::Klipper => Self::None,
        }
    }
}

/// Why no frame came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CameraError {
    #[error(
        "live view for this model is not supported yet (its camera streams RTSPS on port 322; printgate reads only the P1/A1 chamber image)"
    )]
    RtspsNotSupported,
    #[error("no camera on this model that printgate can reach")]
    NoCamera,
    #[error(
        "the camera refused the connection ({0}): on the printer enable Settings → LAN Only Mode → \"LAN Only Liveview\", and check that the printer is on"
    )]
    Unreachable(String),
    #[error(
        "the camera closed the connection right after sign-in: wrong access code, or camera busy (another client such as Bambu Studio or Handy is watching; printgate retries later). Check the access code on the printer's screen (Settings → LAN Only Mode)"
    )]
    ClosedAfterAuth,
    #[error("the camera's TLS handshake failed: {0}")]
    Tls(String),
    #[error("the camera stream broke: {0}")]
    Broken(String),
    #[error("the camera sent something that is not a frame: {0}")]
    BadFrame(String),
    #[error("the camera sent no frame within {0} s")]
    Timeout(u64),
}

/// An open chamber-image stream.
pub struct CameraStream {
    tls: TlsStream<TcpStream>,
    frames: u64,
}

/// The 80-byte auth packet: u32 LE `0x40`, `0x3000`, `0`, `0`, 32 bytes user NUL-padded, 32 bytes
/// access code NUL-padded.
pub fn auth_packet(username: &str, access_code: &str) -> [u8; 80] {
    let mut p = [0u8; 80];
    p[0..4].copy_from_slice(&0x40u32.to_le_bytes());
    p[4..8].copy_from_slice(&0x3000u32.to_le_bytes());
    let u = &username.as_bytes()[..username.len().min(32)];
    let c = &access_code.as_bytes()[..access_code.len().min(32)];
    p[16..16 + u.len()].copy_from_slice(u);
    p[48..48 + c.len()].copy_from_slice(c);
    p
}

async fn timed<T>(what: impl Future<Output = Result<T, CameraError>>) -> Result<T, CameraError> {
    tokio::time::timeout(CAMERA_TIMEOUT, what)
        .await
        .unwrap_or(Err(CameraError::Timeout(CAMERA_TIMEOUT.as_secs())))
}

impl CameraStream {
    /// Connect to `addr`, verify the certificate with `tls` (the printer's pinning config, server
    /// name = serial) and sign in with `access_code`.
    pub async fn connect(
        addr: SocketAddr,
        serial: &str,
        tls: Arc<ClientConfig>,
        access_code: &str,
    ) -> Result<CameraStream, CameraError> {
        let name = ServerName::try_from(serial.to_string())
            .map_err(|_| CameraError::Tls(format!("serial {serial:?} is not a valid TLS name")))?;
        let tcp = timed(async {
            TcpStream::connect(addr)
                .await
                .map_err(|e| CameraError::Unreachable(e.to_string()))
        })
        .await?;
        let _ = tcp.set_nodelay(true);
        let mut tls = timed(async {
            tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| CameraError::Tls(e.to_string()))
        })
        .await?;
        timed(async {
            tls.write_all(&auth_packet("bblp", access_code))
                .await
                .map_err(|e| CameraError::Broken(e.to_string()))?;
            tls.flush()
                .await
                .map_err(|e| CameraError::Broken(e.to_string()))
        })
        .await?;
        Ok(CameraStream { tls, frames: 0 })
    }

    /// The next JPEG. The first call tells a refused sign-in ([`CameraError::ClosedAfterAuth`])
    /// from a stream that broke later.
    pub async fn next_frame(&mut self) -> Result<bytes::Bytes, CameraError> {
        let first = self.frames == 0;
        let r = timed(async {
            let mut header = [0u8; 16];
            if let Err(e) = self.tls.read_exact(&mut header).await {
                return Err(if first {
                    CameraError::ClosedAfterAuth
                } else {
                    CameraError::Broken(e.to_string())
                });
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if !(4..=MAX_FRAME).contains(&len) {
                return Err(CameraError::BadFrame(format!(
                    "frame length {len} (expected 4 … {MAX_FRAME} bytes)"
                )));
            }
            let mut jpeg = vec![0u8; len];
            self.tls
                .read_exact(&mut jpeg)
                .await
                .map_err(|e| CameraError::Broken(e.to_string()))?;
            if jpeg[..2] != [0xff, 0xd8] || jpeg[len - 2..] != [0xff, 0xd9] {
                return Err(CameraError::BadFrame(
                    "payload is not a JPEG (no FF D8 … FF D9)".into(),
                ));
            }
            Ok(bytes::Bytes::from(jpeg))
        })
        .await?;
        self.frames += 1;
        Ok(r)
    }
}
