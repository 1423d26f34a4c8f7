//! The slicers' detect handshake of one virtual printer: Bambu Studio and OrcaSlicer, adding a
//! printer by IP, connect to TCP 3000 (plain) or 3002 (TLS with the printer's certificate), send
//! one framed `{"login":{"command":"detect",…}}` and read one framed answer naming the printer.
//!
//! Frame: `A5 A5`, the total frame size (header + payload + trailer) as u16 little-endian, the
//! JSON payload, `A7 A7`. Described after the bind server of the open-source Bambuddy project
//! (maziggy/bambuddy, backend/app/services/virtual_printer/bind_server.py): it answers `detect`
//! only (anything else closes the connection unanswered), with a fixed integer `sequence_id`
//! (3021, not the slicer's string), and closes after one exchange. No code is taken from it.
//!
//! Hostile input: a frame is at most [`MAX_FRAME`] bytes, a connection lives at most
//! [`CONNECTION_TIMEOUT`], at most [`MAX_CONNECTIONS`] are served at once; a bad frame closes
//! the connection with a log line.

use crate::printer::PrinterSnapshot;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const HEADER: [u8; 2] = [0xA5, 0xA5];
const TRAILER: [u8; 2] = [0xA7, 0xA7];
const OVERHEAD: usize = 6;
/// Largest frame accepted (a detect request is ~60 bytes).
pub const MAX_FRAME: usize = 4096;
/// A connection (TLS handshake, request, answer) must be done within this.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// The `sequence_id` of the answer (Bambuddy's; slicers do not check it).
pub const ANSWER_SEQUENCE_ID: u64 = 3021;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame does not start with A5 A5")]
    BadHeader,
    #[error("frame size {0} is smaller than the 6 bytes of header and trailer")]
    TooSmall(usize),
    #[error("frame size {0} is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame does not end with A7 A7")]
    BadTrailer,
}

/// Frame `payload`; `None` when it would exceed [`MAX_FRAME`].
pub fn encode(payload: &[u8]) -> Option<Vec<u8>> {
    let total = payload.len() + OVERHEAD;
    if total > MAX_FRAME {
        return None;
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&HEADER);
    out.extend_from_slice(&u16::try_from(total).ok()?.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&TRAILER);
    Some(out)
}

/// The first frame in `buf`: `Ok(None)` while more bytes are needed, else the payload and the
/// frame's size.
pub fn decode(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    if let Some(start) = buf.get(..2)
        && start != HEADER
    {
        return Err(FrameError::BadHeader);
    }
    let Some(size) = buf.get(2..4) else {
        return Ok(None);
    };
    let total = usize::from(u16::from_le_bytes([size[0], size[1]]));
    if total < OVERHEAD {
        return Err(FrameError::TooSmall(total));
    }
    if total > MAX_FRAME {
        return Err(FrameError::TooLarge(total));
    }
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    if frame.get(total - 2..) != Some(&TRAILER[..]) {
        return Err(FrameError::BadTrailer);
    }
    Ok(Some((frame.get(4..total - 2).unwrap_or(&[]), total)))
}

/// Who the virtual printer says it is in its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectIdentity {
    pub serial: String,
    pub model_code: &'static str,
    pub name: String,
    pub firmware: String,
}

/// The answer payload to one request payload: `Some` for a `login` `detect` only.
pub fn answer(request: &[u8], who: &DetectIdentity) -> Option<Vec<u8>> {
    let request: Value = serde_json::from_slice(request).ok()?;
    if request.pointer("/login/command").and_then(Value::as_str) != Some("detect") {
        return None;
    }
    let reply = json!({"login": {
        "bind": "free",
        "command": "detect",
        "connect": "lan",
        "dev_cap": 1,
        "id": who.serial,
        "model": who.model_code,
        "name": who.name,
        "sequence_id": ANSWER_SEQUENCE_ID,
        "version": who.firmware,
    }});
    serde_json::to_vec(&reply).ok()
}

/// Why a connection ended without an answer.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("connection closed before a whole frame")]
    Closed,
    #[error("not a detect request")]
    NotDetect,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    who: &DetectIdentity,
) -> Result<(), Unanswered> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let payload = loop {
        if let Some((payload, _)) = decode(&buf)? {
            break payload.to_vec();
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Unanswered::Closed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    };
    let reply = answer(&payload, who).ok_or(Unanswered::NotDetect)?;
    let frame = encode(&reply).ok_or(Unanswered::NotDetect)?;
    stream.write_all(&frame).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Serve the detect handshake on `listener` (over TLS with `tls`) until `shutdown`; the
/// firmware named is the real printer's latest (from `snapshots`).
pub async fn run_listener(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    who: DetectIdentity,
    snapshots: watch::Receiver<PrinterSnapshot>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("virtual printer detect accept error: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "virtual printer detect: too many connections at once; closed");
            continue;
        };
        let mut who = who.clone();
        if let Some(fw) = snapshots
            .borrow()
            .state
            .as_ref()
            .and_then(|s| s.firmware.clone())
        {
            who.firmware = fw;
        }
        let (tls, shutdown) = (tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let work = async {
                match tls {
                    Some(acceptor) => {
                        let mut s = acceptor.accept(tcp).await?;
                        exchange(&mut s, &who).await
                    }
                    None => {
                        let mut tcp = tcp;
                        exchange(&mut tcp, &who).await
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = tokio::time::timeout(CONNECTION_TIMEOUT, work) => log_outcome(peer, &who.serial, r),
            }
        });
    }
}

fn log_outcome(
    peer: SocketAddr,
    serial: &str,
    r: Result<Result<(), Unanswered>, tokio::time::error::Elapsed>,
) {
    match r {
        Ok(Ok(())) => tracing::info!(%peer, %serial, "virtual printer answered a slicer's detect"),
        Ok(Err(e)) => {
            tracing::info!(%peer, %serial, "virtual printer detect connection closed unanswered: {e}")
        }
        Err(_) => {
            tracing::info!(%peer, %serial, "virtual printer detect connection timed out; closed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn who() -> DetectIdentity {
        DetectIdentity {
            serial: "01PVP0000000001".into(),
            model_code: "C12",
            name: "Garage P1S via printgate".into(),
            firmware: "01.08.02.00".into(),
        }
    }

    #[test]
    fn a_detect_request_gets_the_printers_identity() {
        // The slicer's request as Bambuddy's tests frame it.
        let req = encode(br#"{"login":{"command":"detect","sequence_id":"20000"}}"#).unwrap();
        assert_eq!(&req[..2], &[0xA5, 0xA5]);
        assert_eq!(usize::from(u16::from_le_bytes([req[2], req[3]])), req.len());
        let (payload, used) = decode(&req).unwrap().unwrap();
        assert_eq!(used, req.len());
        let reply: Value = serde_json::from_slice(&answer(payload, &who()).unwrap()).unwrap();
        assert_eq!(
            reply,
            json!({"login": {"bind": "free", "command": "detect", "connect": "lan", "dev_cap": 1,
                "id": "01PVP0000000001", "model": "C12", "name": "Garage P1S via printgate",
                "sequence_id": 3021, "version": "01.08.02.00"}})
        );
    }

    #[test]
    fn other_commands_and_bad_frames_get_no_answer() {
        assert!(answer(br#"{"login":{"command":"bind"}}"#, &who()).is_none());
        assert!(answer(b"not json", &who()).is_none());
        assert_eq!(decode(b"\xA5\xA5"), Ok(None));
        assert_eq!(decode(b"GET /"), Err(FrameError::BadHeader));
        assert_eq!(decode(b"\xA5\xA5\x03\x00"), Err(FrameError::TooSmall(3)));
        assert_eq!(
            decode(b"\xA5\xA5\xff\xff"),
            Err(FrameError::TooLarge(65535))
        );
        assert_eq!(
            decode(b"\xA5\xA5\x07\x00{}\xA7"),
            Err(FrameError::BadTrailer)
        );
        assert!(encode(&vec![b' '; MAX_FRAME]).is_none());
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_reads_within_the_buffer(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            if let Ok(Some((payload, used))) = decode(&bytes) {
                prop_assert!(used <= bytes.len() && used <= MAX_FRAME);
                prop_assert_eq!(payload.len() + OVERHEAD, used);
            }
        }

        #[test]
        fn what_encode_frames_decode_reads_back(payload in proptest::collection::vec(any::<u8>(), 0..(MAX_FRAME - OVERHEAD)), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut frame = encode(&payload).unwrap();
            let len = frame.len();
            frame.extend_from_slice(&tail);
            prop_assert_eq!(decode(&frame), Ok(Some((&payload[..], len))));
            for cut in 0..len.min(8) {
                prop_assert_eq!(decode(&frame[..cut]), Ok(None));
            }
        }
    }
}
