//! One virtual printer's MQTT 3.1.1 server over TLS 1.2, speaking the printer side of the
//! Bambu LAN protocol (docs/bambu-protocol.md §2) on the framing the simulator uses
//! (`printer/bambu/mqtt_wire.rs`): CONNECT as `bblp` with the virtual printer's access code
//! (CONNACK 5 otherwise, and after [`super::login_limit::MAX_FAILURES`] wrong codes from one
//! address, for every code until the lockout ends), SUBSCRIBE to `device/<serial>/report` →
//! the mirror of the real printer's reports, PUBLISH to `device/<serial>/request` → the
//! decisions of [`super::requests`], answered on the report topic as a printer answers (every
//! client sees every answer). Any number of clients share the one session printgate keeps with
//! the real printer.

use super::identity::Credentials;
use super::login_limit::{LoginLimiter, Verdict};
use super::mirror::Mirror;
use super::requests::{self, Decision};
use crate::app::Gateway;
use crate::printer::bambu::mqtt_wire::{self, Framed, read_packet, send};
use crate::printer::bambu::request_json::{Sections, parse_lenient_as};
use crate::printer::{PrinterCommand, PrinterLink};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// TLS handshake and CONNECT must both arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections (logged in or not) one virtual printer holds at most; more get CONNACK 3.
pub const MAX_CONNECTIONS: usize = 64;
/// Messages a slow client may fall behind by before it misses some.
const CLIENT_BACKLOG: usize = 1024;

/// The shared state of one virtual printer.
pub struct VirtualPrinter {
    /// The gateway's printer it stands for.
    pub printer: String,
    pub credentials: Credentials,
    report_topic: String,
    request_topic: String,
    acceptor: tokio_rustls::TlsAcceptor,
    out: broadcast::Sender<Bytes>,
    mirror: Mutex<Mirror>,
    limiter: Mutex<LoginLimiter>,
    link: Arc<dyn PrinterLink>,
    gateway: Weak<Gateway>,
    connections: AtomicUsize,
    logged_in: AtomicUsize,
    /// When a full report answering a `pushall` last went to every client.
    last_full_report: Mutex<Option<Instant>>,
    model: crate::printer::Model,
    uploads: super::uploads::Uploads,
    files: Arc<crate::jobs::files::FileStore>,
    allow: Vec<super::allow::AllowedCommand>,
}

/// A `pushall` within this long of the last full report, from a client that was subscribed
/// when it went out, is not answered again: that client has it (no amplification, I8).
const PUSHALL_REPEAT: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the server needs to know about the printer it stands for.
pub struct Parts {
    pub printer: String,
    pub model: crate::printer::Model,
    pub files: Arc<crate::jobs::files::FileStore>,
    pub credentials: Credentials,
    pub mirror: Mirror,
    pub tls: Arc<rustls::ServerConfig>,
    pub link: Arc<dyn PrinterLink>,
    /// Settings its clients may send on to the printer.
    pub allow: Vec<super::allow::AllowedCommand>,
    pub gateway: Weak<Gateway>,
}

impl VirtualPrinter {
    pub fn new(parts: Parts) -> Arc<Self> {
        let serial = &parts.credentials.serial;
        Arc::new(Self {
            report_topic: mqtt_wire::report_topic(serial),
            request_topic: mqtt_wire::request_topic(serial),
            printer: parts.printer,
            acceptor: tokio_rustls::TlsAcceptor::from(parts.tls),
            out: broadcast::channel(CLIENT_BACKLOG).0,
            mirror: Mutex::new(parts.mirror),
            limiter: Mutex::new(LoginLimiter::default()),
            link: parts.link,
            allow: parts.allow,
            gateway: parts.gateway,
            connections: AtomicUsize::new(0),
            logged_in: AtomicUsize::new(0),
            last_full_report: Mutex::new(None),
            model: parts.model,
            files: parts.files,
            uploads: super::uploads::Uploads::default(),
            credentials: parts.credentials,
        })
    }

    /// Clients logged in right now.
    pub fn clients(&self) -> usize {
        self.logged_in.load(Ordering::SeqCst)
    }

    /// Pass the real printer's reports on to the clients until shutdown.
    pub async fn run_mirror(
        self: Arc<Self>,
        mut feed: broadcast::Receiver<Bytes>,
        shutdown: CancellationToken,
    ) {
        loop {
            let payload = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = feed.recv() => r,
            };
            match payload {
                Ok(p) => {
                    let out = lock(&self.mirror).on_printer_payload(&p);
                    if let Some(out) = out {
                        let _ = self.out.send(out);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(printer = %self.printer, missed = n, "the virtual printer fell behind its printer's reports; asking for a full report");
                    lock(&self.mirror).lost_payloads();
                    self.ask_printer_for_full_report();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// A `pushall` on printgate's own session (the link rate-limits it; the answer is mirrored).
    fn ask_printer_for_full_report(&self) {
        let link = self.link.clone();
        tokio::spawn(async move {
            let _ = link.send(PrinterCommand::PushAll).await;
        });
    }

    /// Accept clients until shutdown.
    pub async fn run_listener(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(printer = %self.printer, error = %e, "virtual printer could not accept a connection");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                },
            };
            let vp = Arc::clone(&self);
            let cancel = shutdown.child_token();
            tokio::spawn(async move {
                let held = vp.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = tcp.set_nodelay(true);
                vp.serve(tcp, peer, held > MAX_CONNECTIONS, cancel).await;
                vp.connections.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    async fn serve(
        self: &Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        full: bool,
        cancel: CancellationToken,
    ) {
        let tls = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)) => match r {
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
        let refusal = if full {
            Some(ConnectReturnCode::ServiceUnavailable)
        } else {
            self.login(&connect, peer.ip())
        };
        if let Some(code) = refusal {
            let _ = send(&mut wr, Packet::ConnAck(ConnAck::new(code, false))).await;
            let _ = wr.shutdown().await;
            return;
        }
        if send(
            &mut wr,
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        )
        .await
        .is_err()
        {
            return;
        }
        self.logged_in.fetch_add(1, Ordering::SeqCst);
        tracing::info!(printer = %self.printer, client = %connect.client_id, %peer, "a client logged in to the virtual printer");
        let session = Session {
            vp: Arc::clone(self),
            actor: format!(
                "virtual printer client {} from {}",
                connect.client_id,
                peer.ip()
            ),
            keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
            pending_qos2: Vec::new(),
            subscribed_at: None,
        };
        session.run(rd, wr, buf, cancel).await;
        self.logged_in.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    pub(super) fn uploads(&self) -> &super::uploads::Uploads {
        &self.uploads
    }

    /// The gateway's file store (uploads are validated and kept there).
    pub(super) fn files(&self) -> Arc<crate::jobs::files::FileStore> {
        Arc::clone(&self.files)
    }

    /// Give a stored file's reference back (an upload no job took).
    pub(super) fn release_file(&self, sha256: String) {
        let files = self.files();
        tokio::spawn(async move {
            if let Err(e) = files.release(&sha256).await {
                tracing::warn!("could not release an unused virtual printer upload: {e}");
            }
        });
    }

    /// FTPS `PASS`: the access code, under the same lockout as MQTT logins.
    pub(super) fn ftps_login(&self, password: &str, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut limiter = lock(&self.limiter);
        if matches!(limiter.verdict(ip, now), Verdict::Locked(_)) {
            return false;
        }
        let good = constant_time_eq(password.as_bytes(), self.credentials.access_code.as_bytes());
        if good {
            limiter.succeeded(ip);
        } else {
            limiter.failed(ip, now);
            tracing::warn!(printer = %self.printer, %ip, "virtual printer FTPS login refused: wrong access code");
        }
        good
    }

    /// `None` if the client may in, else the CONNACK refusal code.
    fn login(&self, connect: &Connect, ip: IpAddr) -> Option<ConnectReturnCode> {
        let now = Instant::now();
        let mut limiter = lock(&self.limiter);
        if let Verdict::Locked(left) = limiter.verdict(ip, now) {
            tracing::warn!(printer = %self.printer, %ip, seconds_left = left.as_secs(), "virtual printer login refused: too many wrong access codes from this address");
            return Some(ConnectReturnCode::NotAuthorized);
        }
        let good = connect.login.as_ref().is_some_and(|l| {
            l.username == "bblp"
                && constant_time_eq(
                    l.password.as_bytes(),
                    self.credentials.access_code.as_bytes(),
                )
        });
        if good {
            limiter.succeeded(ip);
            None
        } else {
            limiter.failed(ip, now);
            tracing::warn!(printer = %self.printer, %ip, "virtual printer login refused: user must be bblp with the virtual printer's access code");
            Some(ConnectReturnCode::NotAuthorized)
        }
    }

    /// Carry out one request from a client (its answers go to every client, as on a printer).
    /// `subscribed_at`: when the asking client subscribed to the report topic.
    fn on_request(self: &Arc<Self>, payload: &[u8], actor: &str, subscribed_at: Option<Instant>) {
        let Some(Sections(sections)) = parse_lenient_as::<Sections>(payload) else {
            tracing::debug!(printer = %self.printer, "virtual printer ignored a request that is not a JSON object");
            return;
        };
        for (section, body, decision) in requests::decide(&sections, &self.allow) {
            match decision {
                Decision::Nothing => {}
                Decision::PushAll => {
                    let now = Instant::now();
                    let mut last = lock(&self.last_full_report);
                    let has_it = last.is_some_and(|t| {
                        now.duration_since(t) < PUSHALL_REPEAT
                            && subscribed_at.is_some_and(|s| s <= t)
                    });
                    if has_it {
                        continue;
                    }
                    let full = lock(&self.mirror).full_report();
                    match full {
                        Some(full) => {
                            *last = Some(now);
                            let _ = self.out.send(full);
                        }
                        None => self.ask_printer_for_full_report(),
                    }
                }
                Decision::Version { sequence_id } => {
                    let firmware = self
                        .link
                        .subscribe()
                        .borrow()
                        .state
                        .as_ref()
                        .and_then(|s| s.firmware.clone());
                    let answer =
                        lock(&self.mirror).version_answer(&sequence_id, firmware.as_deref());
                    let _ = self.out.send(answer);
                }
                Decision::Refuse(why) => {
                    tracing::info!(printer = %self.printer, %actor, %section, command = ?body.get("command"), "virtual printer refused a request: {why}");
                    self.answer(&section, &body, false, &why);
                }
                Decision::QueueFile { file, plate, name } => {
                    let vp = Arc::clone(self);
                    let actor = actor.to_string();
                    tokio::spawn(async move {
                        let Some(gw) = vp.gateway.upgrade() else {
                            return;
                        };
                        let outcome = vp
                            .uploads
                            .queue(
                                &gw,
                                &vp.printer,
                                vp.model,
                                super::uploads::PrintRequest { file, plate, name },
                                &actor,
                            )
                            .await;
                        match outcome {
                            Ok(q) => {
                                let why = format!(
                                    "queued in printgate as job {} ({}){}; it starts only after Plate clear is tapped for {} — nothing was started",
                                    q.job_id,
                                    q.name,
                                    if q.created {
                                        ""
                                    } else {
                                        ", already queued by an earlier request"
                                    },
                                    vp.printer
                                );
                                tracing::info!(printer = %vp.printer, %actor, job = q.job_id, created = q.created, "virtual printer print request queued a job");
                                vp.answer(&section, &body, true, &why);
                            }
                            Err(why) => vp.answer(&section, &body, false, &why),
                        }
                    });
                }
                Decision::Forward(setting) => {
                    let vp = Arc::clone(self);
                    let actor = actor.to_string();
                    tokio::spawn(async move {
                        vp.forward(section, body, setting, &actor).await;
                    });
                }
                Decision::Control { command, action } => {
                    let vp = Arc::clone(self);
                    let actor = actor.to_string();
                    tokio::spawn(async move {
                        vp.control(section, body, command, action, &actor).await;
                    });
                }
            }
        }
    }

    async fn control(
        &self,
        section: String,
        body: serde_json::Map<String, Value>,
        command: PrinterCommand,
        action: &str,
        actor: &str,
    ) {
        let Some(gw) = self.gateway.upgrade() else {
            return;
        };
        // The client's request is the person's confirmation of a stop.
        let outcome = crate::controls::send(&gw, &self.printer, command, action, actor, true).await;
        match outcome {
            Ok(_) => self.answer(&section, &body, true, ""),
            Err(e) => self.answer(&section, &body, false, &e.to_string()),
        }
    }

    /// Send an allowed setting on printgate's session, recorded in the history with the client
    /// as actor; the printer's own answer follows on the report topic (mirrored).
    async fn forward(
        &self,
        section: String,
        body: serde_json::Map<String, Value>,
        setting: crate::printer::SettingCommand,
        actor: &str,
    ) {
        let Some(gw) = self.gateway.upgrade() else {
            return;
        };
        let command = setting.command;
        let outcome = crate::controls::send(
            &gw,
            &self.printer,
            PrinterCommand::Setting(setting),
            command,
            actor,
            true,
        )
        .await;
        tracing::info!(printer = %self.printer, %actor, command, ok = outcome.is_ok(), "virtual printer forwarded an allowed setting");
        match outcome {
            Ok(_) => self.answer(
                &section,
                &body,
                true,
                &format!(
                    "sent to {} by printgate (allowed by its config)",
                    self.printer
                ),
            ),
            Err(e) => self.answer(&section, &body, false, &e.to_string()),
        }
    }

    fn answer(&self, section: &str, body: &serde_json::Map<String, Value>, ok: bool, why: &str) {
        let ack = requests::ack(section, body, ok, why);
        let _ = self.out.send(Bytes::from(ack.to_string()));
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One logged-in client.
struct Session {
    vp: Arc<VirtualPrinter>,
    actor: String,
    keep_alive: Duration,
    /// QoS 2 packet ids received, waiting for PUBREL.
    pending_qos2: Vec<u16>,
    /// When this client subscribed to the report topic.
    subscribed_at: Option<Instant>,
}

enum Next {
    Continue,
    Close,
}

impl Session {
    async fn run<R, W>(mut self, mut rd: R, mut wr: W, mut buf: BytesMut, cancel: CancellationToken)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut reports: Option<broadcast::Receiver<Bytes>> = None;
        let mut last_inbound = Instant::now();
        if matches!(
            self.drain(&mut buf, &mut wr, &mut reports).await,
            Next::Close
        ) {
            return;
        }
        loop {
            let deadline =
                (!self.keep_alive.is_zero()).then(|| last_inbound + self.keep_alive.mul_f64(1.5));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = sleep_until(deadline) => return,
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        last_inbound = Instant::now();
                        if matches!(self.drain(&mut buf, &mut wr, &mut reports).await, Next::Close) {
                            return;
                        }
                    }
                },
                msg = recv_opt(&mut reports) => match msg {
                    Ok(payload) => {
                        let p = Publish::from_bytes(self.vp.report_topic.clone(), QoS::AtMostOnce, payload);
                        if send(&mut wr, Packet::Publish(p)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(printer = %self.vp.printer, client = %self.actor, missed = n, "a slow virtual printer client missed reports");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    async fn drain<W: AsyncWrite + Unpin>(
        &mut self,
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
                    tracing::debug!(printer = %self.vp.printer, client = %self.actor, error = %e, "virtual printer dropped a client sending a bad packet");
                    return Next::Close;
                }
            }
        }
    }

    async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        packet: Packet,
        wr: &mut W,
        reports: &mut Option<broadcast::Receiver<Bytes>>,
    ) -> Next {
        let vp = &self.vp;
        let sent = match packet {
            Packet::Publish(p) => {
                let ack = match p.qos {
                    QoS::AtMostOnce => Ok(()),
                    QoS::AtLeastOnce => send(wr, Packet::PubAck(PubAck::new(p.pkid))).await,
                    QoS::ExactlyOnce => {
                        // Carried out once, on first receipt; a resent copy (same id) is not.
                        let first = !self.pending_qos2.contains(&p.pkid);
                        if first && self.pending_qos2.len() < 64 {
                            self.pending_qos2.push(p.pkid);
                        }
                        let r = send(wr, Packet::PubRec(PubRec::new(p.pkid))).await;
                        if !first {
                            return if r.is_err() {
                                Next::Close
                            } else {
                                Next::Continue
                            };
                        }
                        r
                    }
                };
                if p.topic == vp.request_topic {
                    vp.on_request(&p.payload, &self.actor, self.subscribed_at);
                }
                ack
            }
            Packet::PubRel(r) => {
                self.pending_qos2.retain(|id| *id != r.pkid);
                send(wr, Packet::PubComp(PubComp::new(r.pkid))).await
            }
            Packet::Subscribe(s) => {
                let mut codes = Vec::with_capacity(s.filters.len());
                for f in &s.filters {
                    // The report topic, or a filter that covers it; anything else is granted
                    // and stays silent, as on a printer.
                    if rumqttc::mqttbytes::matches(&vp.report_topic, &f.path) && reports.is_none() {
                        *reports = Some(vp.out.subscribe());
                        self.subscribed_at = Some(Instant::now());
                    }
                    codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                }
                send(wr, Packet::SubAck(SubAck::new(s.pkid, codes))).await
            }
            Packet::Unsubscribe(u) => {
                if u.topics.iter().any(|t| *t == vp.report_topic) {
                    *reports = None;
                    self.subscribed_at = None;
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
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
