//! The printer side of the Bambu MQTT wire (docs/bambu-protocol.md §2), shared by the two servers
//! that play a printer: the simulator (`sim/mqtt.rs`) and printgate's virtual printers
//! (`virtual_printer/server.rs`). Reading and writing one MQTT 3.1.1 packet on rumqttc's codec,
//! the packet size limits a printer applies, and the topic names. Pure framing: no decisions.

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest packet accepted from a client (requests are small; 1 MiB is generous).
pub const MAX_INCOMING_PACKET: usize = 1024 * 1024;
/// Largest packet sent to a client (pretty full reports are tens of KB).
pub const MAX_OUTGOING_PACKET: usize = 16 * 1024 * 1024;

/// `device/<serial>/report`: everything a printer says.
pub fn report_topic(serial: &str) -> String {
    format!("device/{serial}/report")
}

/// `device/<serial>/request`: where clients publish commands.
pub fn request_topic(serial: &str) -> String {
    format!("device/{serial}/request")
}

/// What one attempt to take a packet out of a buffer found.
#[derive(Debug)]
pub enum Framed {
    Packet(Packet),
    /// More bytes are needed.
    Incomplete,
    /// Not MQTT 3.1.1, or over [`MAX_INCOMING_PACKET`]: drop the client.
    Bad(String),
}

/// Take one complete packet out of `buf`, if it holds one.
pub fn take_packet(buf: &mut BytesMut) -> Framed {
    match Packet::read(buf, MAX_INCOMING_PACKET) {
        Ok(p) => Framed::Packet(p),
        Err(CodecError::InsufficientBytes(_)) => Framed::Incomplete,
        Err(e) => Framed::Bad(e.to_string()),
    }
}

/// Read until one packet is complete; `None` at end of stream or on a bad packet.
pub async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Packet>> {
    loop {
        match take_packet(buf) {
            Framed::Packet(p) => return Ok(Some(p)),
            Framed::Incomplete => {}
            Framed::Bad(_) => return Ok(None),
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Write one packet and flush it.
pub async fn send<W: AsyncWrite + Unpin>(wr: &mut W, packet: Packet) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(packet.size());
    packet
        .write(&mut out, MAX_OUTGOING_PACKET)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    wr.write_all(&out).await?;
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::Publish;

    #[test]
    fn a_packet_split_in_two_is_taken_once_complete() {
        let p = Packet::Publish(Publish::new(report_topic("S"), QoS::AtMostOnce, "{}"));
        let mut whole = BytesMut::new();
        p.write(&mut whole, MAX_OUTGOING_PACKET).expect("encodes");
        let mut buf = BytesMut::from(&whole[..3]);
        assert!(matches!(take_packet(&mut buf), Framed::Incomplete));
        buf.extend_from_slice(&whole[3..]);
        match take_packet(&mut buf) {
            Framed::Packet(Packet::Publish(got)) => assert_eq!(got.topic, "device/S/report"),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_bad_not_a_panic() {
        let mut buf = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert!(matches!(take_packet(&mut buf), Framed::Bad(_)));
    }
}
