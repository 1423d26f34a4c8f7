//! The simulated printer's MQTT 3.1.1 server over TLS 1.2 (docs/bambu-protocol.md §2, §12): a small server
//! of our own on rumqttc's packet codec (framing shared with the virtual printers in
//! `printer/bambu/mqtt_wire.rs`) so that every packet can be faulted (withheld PUBACK,
//! kicked clients, dropped subscriptions, half-open silence).
//!
//! Behaviour: CONNECT `bblp` + access code → CONNACK 0, else 5 (knob 4); SUBSCRIBE to the exact
//! report topic → SUBACK QoS 0 and reports from then on; another or mis-cased serial → SUBACK and
//! silence; the request topic or a wildcard → TCP dropped (knob: allowed); QoS 1 PUBLISH → PUBACK;
//! PINGREQ → PINGRESP; the model's client limit with a knob for what a further client gets.

use crate::printer::bambu::mqtt_wire::{self, Framed, read_packet, send};
use crate::sim::printer::{Admission, Hub};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections while the printer is reachable; close the port while it is not (power
/// cut, `disconnect_for`) so clients see "connection refused", and reopen it on the same port.
pub(crate) async fn run_listener(
    hub: Arc<Hub>,
    listener: TcpListener,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut listener = Some(listener);
    let mut gate = hub.gate();
    loop {
        let g = *gate.borrow_and_update();
        if !g.accepting(Instant::now()) {
            listener = None;
            hub.set_listening(false);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = gate.changed() => if r.is_err() { return },
                _ = sleep_opt(g.offline_until) => {}
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match hub.take_prebound().map_or_else(|| rebind(addr), adopt) {
                Ok(l) => {
                    hub.set_listening(true);
                    l
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "simulator could not reopen its MQTT port; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    continue;
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = gate.changed() => {
                if r.is_err() { return; }
                listener = Some(l);
            }
            r = l.accept() => {
                listener = Some(l);
                // A connection that raced a power cut / `disconnect_for` is closed at once.
                if let Ok((tcp, _peer)) = r
                    && gate.borrow().accepting(Instant::now())
                {
                    let (id, cancel) = hub.register_conn(&shutdown);
                    let hub = Arc::clone(&hub);
                    tokio::spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        serve_connection(&hub, tcp, id, cancel).await;
                        hub.remove_conn(id);
                    });
                }
            }
        }
    }
}

fn adopt(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(128)
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Wait while the printer is half-open; `false` if the connection ended meanwhile.
async fn wait_not_half_open(hub: &Hub, cancel: &CancellationToken) -> bool {
    let mut gate = hub.gate();
    loop {
        let until = gate.borrow_and_update().half_open(Instant::now());
        let Some(until) = until else { return true };
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep_until(until.into()) => {}
            r = gate.changed() => if r.is_err() { return false },
        }
    }
}

async fn serve_connection(hub: &Arc<Hub>, tcp: TcpStream, id: u64, cancel: CancellationToken) {
    if !wait_not_half_open(hub, &cancel).await {
        return;
    }
    let acceptor = hub.acceptor();
    let tls = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => tls,
            _ => return,
        },
    };
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let first = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_packet(&mut rd, &mut buf)) => r,
    };
    let connect = match first {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        _ => return,
    };
    if let Some(code) = hub.check_login(connect.login.as_ref()) {
        let _ = send(&mut wr, Packet::ConnAck(ConnAck::new(code, false))).await;
        let _ = wr.shutdown().await;
        return;
    }
    match hub.admit(id) {
        Admission::RefuseConnack => {
            let ack = ConnAck::new(ConnectReturnCode::ServiceUnavailable, false);
            let _ = send(&mut wr, Packet::ConnAck(ack)).await;
            let _ = wr.shutdown().await;
            return;
        }
        Admission::Drop => return,
        Admission::Accept { drop_after } => {
            if let Some(d) = drop_after {
                let c = cancel.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    c.cancel();
                });
            }
        }
    }
    let ack = ConnAck::new(ConnectReturnCode::Success, false);
    if send(&mut wr, Packet::ConnAck(ack)).await.is_err() {
        return;
    }
    let session = Session {
        hub: Arc::clone(hub),
        id,
        client_id: connect.client_id.clone(),
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
    };
    session.run(rd, wr, buf, cancel).await;
}

struct Session {
    hub: Arc<Hub>,
    id: u64,
    client_id: String,
    keep_alive: Duration,
}

/// What handling one inbound packet asks of the loop.
enum Next {
    Continue,
    Close,
}

impl Session {
    async fn run<R, W>(self, mut rd: R, mut wr: W, mut buf: BytesMut, cancel: CancellationToken)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut gate = self.hub.gate();
        let mut reports: Option<broadcast::Receiver<Bytes>> = None;
        let mut last_inbound = Instant::now();
        // Packets that were already buffered together with CONNECT.
        if matches!(
            self.drain(&mut buf, &mut wr, &mut reports).await,
            Next::Close
        ) {
            return;
        }
        loop {
            let half_open = gate.borrow_and_update().half_open(Instant::now());
            if let Some(until) = half_open {
                // Half-open: nothing flows; afterwards the connection is dead.
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
                return;
            }
            let enforce = self.hub.knobs.get().enforce_keepalive && !self.keep_alive.is_zero();
            let keepalive_deadline = enforce.then(|| last_inbound + self.keep_alive.mul_f64(1.5));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = gate.changed() => if r.is_err() { return },
                _ = sleep_opt(keepalive_deadline) => return,
                r = rd.read_buf(&mut buf) => {
                    match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            last_inbound = Instant::now();
                            if matches!(self.drain(&mut buf, &mut wr, &mut reports).await, Next::Close) {
                                return;
                            }
                        }
                    }
                }
                msg = recv_opt(&mut reports) => match msg {
                    Ok(payload) => {
                        let p = Publish::from_bytes(self.hub.report_topic.clone(), QoS::AtMostOnce, payload);
                        if send(&mut wr, Packet::Publish(p)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Handle every complete packet in `buf`.
    async fn drain<W: AsyncWrite + Unpin>(
        &self,
        buf: &mut BytesMut,
        wr: &mut W,
        reports: &mut Option<broadcast::Receiver<Bytes>>,
    ) -> Next {
        loop {
            match mqtt_wire::take_packet(buf) {
                Framed::Packet(p) => {
                    if matches!(self.handle(p, wr, reports).await, Next::Close) {
                        return Next::Close;
                    }
                }
                Framed::Incomplete => return Next::Continue,
                Framed::Bad(e) => {
                    tracing::debug!(conn = self.id, error = %e, "simulator dropped a client sending a bad packet");
                    return Next::Close;
                }
            }
        }
    }

    async fn handle<W: AsyncWrite + Unpin>(
        &self,
        packet: Packet,
        wr: &mut W,
        reports: &mut Option<broadcast::Receiver<Bytes>>,
    ) -> Next {
        let hub = &self.hub;
        let sent = match packet {
            Packet::Publish(p) => {
                let knobs = hub.knobs.get();
                let qos = p.qos as u8;
                let ack = (p.qos == QoS::AtLeastOnce && !knobs.withhold_puback)
                    .then(|| Packet::PubAck(PubAck::new(p.pkid)));
                let sent = match ack {
                    Some(a) => send(wr, a).await,
                    None => Ok(()),
                };
                if p.topic == hub.request_topic {
                    hub.handle_request(self.id, &self.client_id, qos, p.payload);
                }
                sent
            }
            Packet::Subscribe(s) => {
                let knobs = hub.knobs.get();
                let mut codes = Vec::with_capacity(s.filters.len());
                for f in &s.filters {
                    let wildcard = f.path.contains('#') || f.path.contains('+');
                    if f.path == hub.report_topic {
                        reports.get_or_insert_with(|| hub.subscribe_out());
                    } else if wildcard || f.path == hub.request_topic {
                        if !knobs.allow_request_subscribe {
                            tracing::debug!(conn = self.id, filter = %f.path, "simulator drops a client subscribing to the request topic or a wildcard");
                            return Next::Close;
                        }
                        if rumqttc::mqttbytes::matches(&hub.report_topic, &f.path) {
                            reports.get_or_insert_with(|| hub.subscribe_out());
                        }
                    }
                    codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                }
                send(wr, Packet::SubAck(SubAck::new(s.pkid, codes))).await
            }
            Packet::Unsubscribe(u) => {
                if u.topics.iter().any(|t| *t == hub.report_topic) {
                    *reports = None;
                }
                send(wr, Packet::UnsubAck(UnsubAck::new(u.pkid))).await
            }
            Packet::PingReq => send(wr, Packet::PingResp).await,
            Packet::Disconnect | Packet::Connect(_) => return Next::Close,
            _ => Ok(()),
        };
        if sent.is_err() {
            Next::Close
        } else {
            Next::Continue
        }
    }
}

async fn recv_opt(
    rx: &mut Option<broadcast::Receiver<Bytes>>,
) -> Result<Bytes, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
