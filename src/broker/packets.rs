//! Just enough MQTT 3.1.1 / 5 wire format for printgate's broker front door (pure apart from
//! [`read_packet`]): split a byte stream into packets with a size cap, read CONNECT (credentials,
//! will, client id) and rewrite its client id and credentials, read a PUBLISH's topic, flags and
//! payload, and build CONNACK refusals. Everything else is relayed byte for byte.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBREL: u8 = 6;
pub const SUBSCRIBE: u8 = 8;

/// MQTT 5 reason codes printgate's front door sends itself.
pub mod reason {
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
}

/// The largest topic alias a client may use: the Topic Alias Maximum that the embedded broker
/// announces in its CONNACK (rumqttd's `TOPIC_ALIAS_MAX`).
pub const TOPIC_ALIAS_MAX: u16 = 4096;

/// One MQTT control packet as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    /// Fixed-header first byte (type << 4 | flags).
    pub first: u8,
    /// Everything after the remaining-length field.
    pub body: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 5);
        out.push(self.first);
        encode_varint(self.body.len(), &mut out);
        out.extend_from_slice(&self.body);
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("connection closed")]
    Closed,
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub fn encode_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// Decode a variable byte integer at the start of `buf`: (value, bytes used).
pub fn decode_varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, b) in buf.iter().take(4).enumerate() {
        value += usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Read one packet; refuses bodies over `max_body` before reading them.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    max_body: usize,
) -> Result<RawPacket, PacketError> {
    let first = match r.read_u8().await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PacketError::Closed),
        Err(e) => return Err(e.into()),
    };
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = r.read_u8().await?;
        len += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(PacketError::Malformed(
                "remaining length longer than 4 bytes",
            ));
        }
    }
    if len > max_body {
        return Err(PacketError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(RawPacket { first, body })
}

/// A cursor over a packet body.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8, PacketError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(PacketError::Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, PacketError> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], PacketError> {
        let n = usize::from(self.u16()?);
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(PacketError::Malformed("truncated field"))?;
        self.pos += n;
        Ok(s)
    }
    fn string(&mut self) -> Result<&'a str, PacketError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| PacketError::Malformed("string not UTF-8"))
    }
    /// Skip MQTT 5 properties (varint length + bytes); returns them.
    fn skip_properties(&mut self) -> Result<&'a [u8], PacketError> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let (n, used) =
            decode_varint(rest).ok_or(PacketError::Malformed("bad properties length"))?;
        let props = rest
            .get(used..used + n)
            .ok_or(PacketError::Malformed("truncated properties"))?;
        self.pos += used + n;
        Ok(props)
    }
}

/// The value of the MQTT 5 property `id` in a property list (the bytes after the property
/// length), if present; an error when the list is malformed or the property unknown.
pub fn find_property(mut props: &[u8], id: u8) -> Result<Option<&[u8]>, PacketError> {
    const BAD: PacketError = PacketError::Malformed("bad property");
    while let Some((&pid, rest)) = props.split_first() {
        let len = match pid {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0B => decode_varint(rest).ok_or(BAD)?.1,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                2 + usize::from(u16::from_be_bytes([
                    *rest.first().ok_or(BAD)?,
                    *rest.get(1).ok_or(BAD)?,
                ]))
            }
            0x26 => {
                let key = 2 + usize::from(u16::from_be_bytes([
                    *rest.first().ok_or(BAD)?,
                    *rest.get(1).ok_or(BAD)?,
                ]));
                let value = rest.get(key..key + 2).ok_or(BAD)?;
                key + 2 + usize::from(u16::from_be_bytes([value[0], value[1]]))
            }
            _ => return Err(PacketError::Malformed("unknown property")),
        };
        let value = rest.get(..len).ok_or(BAD)?;
        if pid == id {
            return Ok(Some(value));
        }
        props = &rest[len..];
    }
    Ok(None)
}

impl Cursor<'_> {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
}

/// What a CONNECT says, with the byte ranges needed to rewrite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// 4 = MQTT 3.1.1, 5 = MQTT 5 (3.1 "MQIsdp" is refused).
    pub level: u8,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    flags_at: usize,
    client_id_at: usize,
    will_at: usize,
    creds_at: usize,
}

pub fn parse_connect(body: &[u8]) -> Result<ConnectInfo, PacketError> {
    let mut c = Cursor { buf: body, pos: 0 };
    let name = c.string()?;
    let level = c.u8()?;
    if name != "MQTT" || !(level == 4 || level == 5) {
        return Err(PacketError::Malformed(
            "only MQTT 3.1.1 and 5 are supported",
        ));
    }
    let flags_at = c.pos;
    let flags = c.u8()?;
    if flags & 1 != 0 {
        return Err(PacketError::Malformed("reserved connect flag set"));
    }
    let keep_alive = c.u16()?;
    if level == 5 {
        c.skip_properties()?;
    }
    let client_id_at = c.pos;
    let client_id = c.string()?.to_string();
    let will_at = c.pos;
    let will = if flags & 0x04 != 0 {
        if level == 5 {
            c.skip_properties()?;
        }
        let topic = c.string()?.to_string();
        c.bytes()?;
        Some(Will {
            topic,
            qos: (flags >> 3) & 3,
            retain: flags & 0x20 != 0,
        })
    } else {
        None
    };
    let creds_at = c.pos;
    let username = if flags & 0x80 != 0 {
        Some(c.string()?.to_string())
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(c.bytes()?.to_vec())
    } else {
        None
    };
    if c.pos != body.len() {
        return Err(PacketError::Malformed("trailing bytes after CONNECT"));
    }
    Ok(ConnectInfo {
        level,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        flags_at,
        client_id_at,
        will_at,
        creds_at,
    })
}

fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(s.get(..n).unwrap_or(s));
}

/// The same CONNECT with another client id and credentials (everything else byte-identical).
pub fn rewrite_connect(
    body: &[u8],
    info: &ConnectInfo,
    client_id: &str,
    username: &str,
    password: &str,
) -> RawPacket {
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(body.get(..info.client_id_at).unwrap_or(&[]));
    if let Some(f) = out.get_mut(info.flags_at) {
        *f |= 0xC0;
    }
    push_str(&mut out, client_id.as_bytes());
    out.extend_from_slice(body.get(info.will_at..info.creds_at).unwrap_or(&[]));
    push_str(&mut out, username.as_bytes());
    push_str(&mut out, password.as_bytes());
    RawPacket {
        first: CONNECT << 4,
        body: out,
    }
}

/// A PUBLISH's topic, flags and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishInfo<'a> {
    /// The topic name as sent: empty when an MQTT 5 client names the topic by alias only.
    pub topic: &'a str,
    /// Packet identifier (QoS 1 and 2).
    pub pkid: Option<u16>,
    /// MQTT 5 Topic Alias.
    pub topic_alias: Option<u16>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub payload: &'a [u8],
}

pub fn parse_publish(first: u8, body: &[u8], level: u8) -> Result<PublishInfo<'_>, PacketError> {
    let qos = (first >> 1) & 3;
    if qos == 3 {
        return Err(PacketError::Malformed("QoS 3"));
    }
    let mut c = Cursor { buf: body, pos: 0 };
    let topic = c.string()?;
    let pkid = if qos > 0 { Some(c.u16()?) } else { None };
    let mut topic_alias = None;
    if level == 5 {
        let props = c.skip_properties()?;
        topic_alias = find_property(props, 0x23)?.map(|v| u16::from_be_bytes([v[0], v[1]]));
    }
    Ok(PublishInfo {
        topic,
        pkid,
        topic_alias,
        qos,
        retain: first & 1 != 0,
        dup: first & 0x08 != 0,
        payload: body.get(c.pos..).unwrap_or(&[]),
    })
}

/// The topic filters of a SUBSCRIBE.
pub fn parse_subscribe(body: &[u8], level: u8) -> Result<Vec<&str>, PacketError> {
    let mut c = Cursor { buf: body, pos: 0 };
    c.u16()?;
    if level == 5 {
        c.skip_properties()?;
    }
    let mut filters = Vec::new();
    while c.pos < body.len() {
        filters.push(c.string()?);
        c.u8()?;
    }
    if filters.is_empty() {
        return Err(PacketError::Malformed("SUBSCRIBE without a topic filter"));
    }
    Ok(filters)
}

/// Make a (rewritten) CONNECT start a clean session: nothing stored for an earlier session of
/// the same client id is delivered, and nothing is kept for a later one.
pub fn force_clean_start(packet: &mut RawPacket, info: &ConnectInfo) {
    if let Some(f) = packet.body.get_mut(info.flags_at) {
        *f |= 0x02;
    }
}

/// CONNACK refusing the connection: "bad user name or password" / "not authorized".
pub fn connack_refused(level: u8, not_authorized: bool) -> Vec<u8> {
    if level == 5 {
        vec![0x20, 3, 0, if not_authorized { 0x87 } else { 0x86 }, 0]
    } else {
        vec![0x20, 2, 0, if not_authorized { 5 } else { 4 }]
    }
}

/// CONNACK "identifier rejected" (3.1.1 return code 2; MQTT 5 reason 0x85 "client identifier
/// not valid").
pub fn connack_identifier_rejected(level: u8) -> Vec<u8> {
    if level == 5 {
        vec![0x20, 3, 0, 0x85, 0]
    } else {
        vec![0x20, 2, 0, 2]
    }
}

/// An MQTT 5 CONNACK (`body`: flags, reason code, properties) with the Assigned Client
/// Identifier property added, for a client that connected with an empty client id. `None` when
/// the body is not a well-formed MQTT 5 CONNACK.
pub fn connack_with_assigned_id(body: &[u8], client_id: &str) -> Option<Vec<u8>> {
    let head = body.get(..2)?;
    let rest = body.get(2..)?;
    let (len, used) = decode_varint(rest)?;
    let props = rest.get(used..used + len)?;
    if used + len != rest.len() {
        return None;
    }
    let mut new_props = props.to_vec();
    new_props.push(0x12);
    push_str(&mut new_props, client_id.as_bytes());
    let mut out = head.to_vec();
    encode_varint(new_props.len(), &mut out);
    out.extend_from_slice(&new_props);
    Some(out)
}

/// CONNACK "server unavailable / server busy".
pub fn connack_unavailable(level: u8) -> Vec<u8> {
    if level == 5 {
        vec![0x20, 3, 0, 0x89, 0]
    } else {
        vec![0x20, 2, 0, 3]
    }
}

/// MQTT 5 DISCONNECT with reason "not authorized" (3.1.1 has no server DISCONNECT: just close).
/// The empty property length is written out although MQTT 5 lets it be left off: some clients
/// (rumqttc) cannot read a DISCONNECT without it and see only a dropped connection.
pub fn disconnect_not_authorized(level: u8) -> Option<Vec<u8>> {
    disconnect(level, reason::NOT_AUTHORIZED)
}

/// MQTT 5 DISCONNECT with this reason code (3.1.1: none, the connection is just closed).
pub fn disconnect(level: u8, reason: u8) -> Option<Vec<u8>> {
    (level == 5).then(|| vec![0xE0, 2, reason, 0])
}

/// The answer to a PUBLISH that is refused without ending the connection, as Mosquitto
/// answers a publish its ACL denies: QoS 1 a PUBACK, QoS 2 a PUBREC, MQTT 5 with reason "not
/// authorized" (which ends a QoS 2 flow), MQTT 3.1.1 as if accepted; QoS 0 nothing.
pub fn publish_refused(level: u8, qos: u8, pkid: u16) -> Option<Vec<u8>> {
    let kind = match qos {
        1 => 0x40,
        2 => 0x50,
        _ => return None,
    };
    let [hi, lo] = pkid.to_be_bytes();
    Some(if level == 5 {
        vec![kind, 4, hi, lo, reason::NOT_AUTHORIZED, 0]
    } else {
        vec![kind, 2, hi, lo]
    })
}

/// PUBCOMP for a PUBREL of a refused QoS 2 PUBLISH (MQTT 3.1.1).
pub fn pubcomp(pkid: u16) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    vec![0x70, 2, hi, lo]
}

/// The packet identifier of a PUBREL (or any ack).
pub fn packet_id(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn publish_topic_alias_and_refusals() {
        // MQTT 5 QoS 1 PUBLISH, empty topic, pkid 9, properties: user property, topic alias 3.
        let mut body = Vec::new();
        push_str(&mut body, b"");
        body.extend_from_slice(&[0, 9]);
        let props = [0x26, 0, 1, b'k', 0, 1, b'v', 0x23, 0, 3];
        body.push(props.len() as u8);
        body.extend_from_slice(&props);
        body.push(b'x');
        let p = parse_publish(0x32, &body, 5).unwrap();
        assert_eq!((p.topic, p.pkid, p.topic_alias), ("", Some(9), Some(3)));
        assert_eq!(p.payload, b"x");
        assert_eq!(find_property(&props, 0x26).unwrap(), Some(&props[1..7]));
        assert_eq!(find_property(&props, 0x01).unwrap(), None);
        assert!(find_property(&[0x23, 0], 0x23).is_err(), "truncated value");
        assert!(
            find_property(&[0x7F, 0], 0x23).is_err(),
            "unknown property id"
        );
        // MQTT 3.1.1 has no properties: the same bytes are topic, pkid and payload.
        assert_eq!(parse_publish(0x32, &body, 4).unwrap().topic_alias, None);

        assert_eq!(publish_refused(5, 1, 9), Some(vec![0x40, 4, 0, 9, 0x87, 0]));
        assert_eq!(publish_refused(4, 2, 9), Some(vec![0x50, 2, 0, 9]));
        assert_eq!(publish_refused(4, 0, 9), None);
        assert_eq!(pubcomp(0x0102), vec![0x70, 2, 1, 2]);
        assert_eq!(packet_id(&[1, 2, 0]), Some(0x0102));
        assert_eq!(
            disconnect(5, reason::TOPIC_ALIAS_INVALID),
            Some(vec![0xE0, 2, 0x94, 0])
        );
        assert_eq!(disconnect(4, reason::PROTOCOL_ERROR), None);
    }

    #[test]
    fn subscribe_filters() {
        let mut b = vec![0, 7];
        push_str(&mut b, b"voron/#");
        b.push(1);
        push_str(&mut b, b"voron/moonraker/api/request");
        b.push(0);
        assert_eq!(
            parse_subscribe(&b, 4).unwrap(),
            vec!["voron/#", "voron/moonraker/api/request"]
        );
        let mut v5 = vec![0, 7, 0];
        push_str(&mut v5, b"a/b");
        v5.push(0);
        assert_eq!(parse_subscribe(&v5, 5).unwrap(), vec!["a/b"]);
        assert!(parse_subscribe(&[0, 7], 4).is_err());
        assert!(parse_subscribe(&[0, 7, 0, 9, b'a'], 4).is_err());
    }

    fn connect_v4(will: bool, user: Option<&str>, pass: Option<&[u8]>) -> Vec<u8> {
        let mut b = Vec::new();
        push_str(&mut b, b"MQTT");
        b.push(4);
        let mut flags = 0x02;
        if will {
            flags |= 0x04 | 0x20 | 0x08;
        }
        if user.is_some() {
            flags |= 0x80;
        }
        if pass.is_some() {
            flags |= 0x40;
        }
        b.push(flags);
        b.extend_from_slice(&30u16.to_be_bytes());
        push_str(&mut b, b"phone-1");
        if will {
            push_str(&mut b, b"home/phone/lwt");
            push_str(&mut b, b"gone");
        }
        if let Some(u) = user {
            push_str(&mut b, u.as_bytes());
        }
        if let Some(p) = pass {
            push_str(&mut b, p);
        }
        b
    }

    #[test]
    fn connect_parse_and_rewrite() {
        let body = connect_v4(true, Some("ha"), Some(b"secret"));
        let info = parse_connect(&body).unwrap();
        assert_eq!(info.level, 4);
        assert_eq!(info.client_id, "phone-1");
        assert_eq!(info.username.as_deref(), Some("ha"));
        assert_eq!(info.password.as_deref(), Some(&b"secret"[..]));
        assert_eq!(
            info.will,
            Some(Will {
                topic: "home/phone/lwt".into(),
                qos: 1,
                retain: true
            })
        );
        let re = rewrite_connect(&body, &info, "c-phone-1", "internal", "pw");
        let again = parse_connect(&re.body).unwrap();
        assert_eq!(again.client_id, "c-phone-1");
        assert_eq!(again.username.as_deref(), Some("internal"));
        assert_eq!(again.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(again.will, info.will);
        assert_eq!(again.keep_alive, 30);
        // Without credentials the flags are set by the rewrite.
        let anon = connect_v4(false, None, None);
        let info = parse_connect(&anon).unwrap();
        assert_eq!(info.username, None);
        let re = rewrite_connect(&anon, &info, "c-x", "u", "p");
        assert_eq!(
            parse_connect(&re.body).unwrap().username.as_deref(),
            Some("u")
        );
    }

    #[test]
    fn publish_parse() {
        let mut body = Vec::new();
        push_str(&mut body, b"printgate/P1/cmd/stop");
        body.extend_from_slice(&[0, 7]);
        body.extend_from_slice(b"PRESS");
        let p = parse_publish(0x30 | 0x02 | 0x01, &body, 4).unwrap();
        assert_eq!(p.topic, "printgate/P1/cmd/stop");
        assert_eq!((p.qos, p.retain, p.dup), (1, true, false));
        assert_eq!(p.payload, b"PRESS");
        // MQTT 5: properties between packet id and payload.
        let mut v5 = Vec::new();
        push_str(&mut v5, b"t");
        v5.extend_from_slice(&[0, 1, 2, 0x01, 0x01]);
        v5.extend_from_slice(b"x");
        assert_eq!(parse_publish(0x32, &v5, 5).unwrap().payload, b"x");
    }

    #[test]
    fn assigned_client_identifier_is_added_to_a_v5_connack() {
        // Session present 0, success, one property (receive maximum 10).
        let body = [0, 0, 3, 0x21, 0, 10];
        let out = connack_with_assigned_id(&body, "anon-1").unwrap();
        assert_eq!(
            out,
            [&[0, 0, 12, 0x21, 0, 10, 0x12, 0, 6][..], b"anon-1"].concat()
        );
        assert_eq!(
            connack_with_assigned_id(&[0, 0, 0], "x").unwrap(),
            vec![0, 0, 4, 0x12, 0, 1, b'x']
        );
        assert_eq!(connack_with_assigned_id(&[0, 0], "x"), None);
        assert_eq!(connack_with_assigned_id(&[0, 0, 5, 1], "x"), None);
        assert_eq!(connack_with_assigned_id(&[0, 0, 0, 9], "x"), None);
    }

    #[tokio::test]
    async fn framing_with_size_cap() {
        let p = RawPacket {
            first: 0x30,
            body: vec![7; 300],
        };
        let wire = p.encode();
        assert_eq!(read_packet(&mut &wire[..], 1000).await.unwrap(), p);
        assert!(matches!(
            read_packet(&mut &wire[..], 299).await,
            Err(PacketError::TooLarge(300))
        ));
        assert!(matches!(
            read_packet(&mut &[][..], 10).await,
            Err(PacketError::Closed)
        ));
        let endless = [0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(
            read_packet(&mut &endless[..], usize::MAX).await,
            Err(PacketError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(first in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200), level in 4u8..=5) {
            let _ = parse_connect(&body);
            let _ = connack_with_assigned_id(&body, "anon");
            let _ = parse_publish(first, &body, level);
        }

        #[test]
        fn varint_round_trip(n in 0usize..268_435_455) {
            let mut out = Vec::new();
            encode_varint(n, &mut out);
            prop_assert_eq!(decode_varint(&out), Some((n, out.len())));
        }
    }
}
