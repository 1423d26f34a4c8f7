//! The MQTT session to one Bambu printer (docs/bambu-protocol.md §2, invariant I3): one task per printer
//! that connects, subscribes to `device/<serial>/report`, merges reports into a
//! [`PrinterSnapshot`] on a `watch` channel, publishes commands, runs the silence watchdog and
//! reconnects with backoff.
//!
//! Every connection gets a **fresh rumqttc `AsyncClient` + `EventLoop`** (clean session, new
//! client id). The event loop is polled by a child task that stops at the first error, so rumqttc
//! never reconnects by itself and nothing pending in it survives a disconnect: on any error the
//! client, the event loop and everything queued in them are dropped. A command is handed to
//! rumqttc only if the connection that was up when [`crate::printer::PrinterLink::send`] was
//! called is still the live one; otherwise the caller gets [`LinkError::NotConnected`] at once.
//! Nothing depends on PUBACK and nothing is ever retransmitted.

use crate::config::{LinkConfig, PrinterConfig};
use crate::printer::bambu::backoff::{Backoff, jitter};
use crate::printer::bambu::commands::{self, Built, SequenceIds};
use crate::printer::bambu::control::ControlTracker;
use crate::printer::bambu::report::{Ingested, ReportError, ReportMerger};
use crate::printer::bambu::tls::{CertRejection, PrinterTls};
use crate::printer::state::{CommandAck, GcodeState, LinkState, PrinterSnapshot};
use crate::printer::{CommandOutcome, LinkError, PrinterCommand};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions,
    Outgoing, Packet, QoS, StateError, TlsConfiguration, Transport,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest MQTT packet accepted from the printer. Larger than the 1 MiB report limit so that an
/// oversize report is dropped by the report parser with a warning instead of killing the link.
pub const MAX_INCOMING_PACKET: usize = 4 << 20;
const MAX_OUTGOING_PACKET: usize = 256 << 10;
/// In-flight QoS 1 window; large because some firmware stops sending PUBACKs (§2.5).
const INFLIGHT: u16 = 1000;
/// TCP + TLS + CONNECT/CONNACK must finish within this.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// A command handed to rumqttc that is not written to the socket within this long means the
/// connection is wedged: tear it down.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// A `pushall` not answered by a full report within this long may be repeated for untrusted
/// deltas (docs/bambu-protocol.md §3.4: wait up to ~5 s for `msg` 0).
const PUSHALL_ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How many of our recent `sequence_id`s are remembered to recognise our acks.
const RECENT_SENT: usize = 64;

/// One `send()` call on its way to the link task.
pub(crate) struct Request {
    pub cmd: PrinterCommand,
    /// The live connection id when `send()` was called (never 0).
    pub conn: u64,
    pub reply: oneshot::Sender<Result<CommandOutcome, LinkError>>,
}

type Reply = oneshot::Sender<Result<CommandOutcome, LinkError>>;

/// Shared between the link task and the [`crate::printer::bambu::BambuPrinter`] handle.
pub(crate) struct Shared {
    /// Id of the connection that is up right now; 0 when none is.
    pub live: AtomicU64,
    /// Cuts a backoff short (re-pairing, new access code).
    pub retry: Notify,
    /// Every payload the printer published on its report topic, as it arrived (the virtual
    /// printers mirror them; nobody listening is fine).
    pub reports: tokio::sync::broadcast::Sender<bytes::Bytes>,
}

/// Report payloads a slow reader may fall behind by before it sees `Lagged`.
const REPORT_FEED_CAPACITY: usize = 256;

impl Shared {
    pub fn new() -> Self {
        Self {
            live: AtomicU64::new(0),
            retry: Notify::new(),
            reports: tokio::sync::broadcast::channel(REPORT_FEED_CAPACITY).0,
        }
    }
}

/// How one connection ended.
enum Ended {
    Shutdown,
    AuthRejected,
    Cert(CertRejection),
    Failed {
        state: LinkState,
        /// How long the connection was up after CONNACK (`None`: it never came up).
        uptime: Option<Duration>,
        /// We tore it down ourselves (silence, wedged writes).
        by_us: bool,
    },
}

/// A publish handed to rumqttc, waiting for its `Outgoing::Publish` (written and flushed).
struct Awaiting {
    sequence_id: String,
    command: &'static str,
    reply: Option<Reply>,
    control: Option<PrinterCommand>,
    queued_at: Instant,
}

/// An idle P1/A1 may be silent this many times `silence_secs` before it is nudged.
const IDLE_DELTA_SILENCE_FACTOR: u32 = 5;

/// State of one connection attempt.
struct Conn {
    id: u64,
    client: AsyncClient,
    up_since: Option<Instant>,
    merger: ReportMerger,
    awaiting: VecDeque<Awaiting>,
    last_rx: Instant,
    nudged_at: Option<Instant>,
    deferred_pushall: Option<(Instant, Vec<Reply>)>,
    /// When the last `pushall` on this connection went out, until a full report answers it.
    pushall_unanswered_since: Option<Instant>,
}

/// The task's ends of the channels it shares with the printer handle.
pub(crate) struct TaskChannels {
    pub cmd_rx: mpsc::Receiver<Request>,
    pub snap: watch::Sender<PrinterSnapshot>,
    pub shared: Arc<Shared>,
}

pub(crate) struct LinkTask {
    pub cfg: PrinterConfig,
    pub link: LinkConfig,
    pub tls: Result<PrinterTls, String>,
    pub seq: SequenceIds,
    pub shutdown: CancellationToken,
    pub cmd_rx: mpsc::Receiver<Request>,
    pub snap: watch::Sender<PrinterSnapshot>,
    pub shared: Arc<Shared>,
    pub control: ControlTracker,
    pub firmware: Option<String>,
    pub backoff: Backoff,
    pub last_pushall: Option<Instant>,
    pub next_conn_id: u64,
    pub recent_sent: VecDeque<(String, &'static str)>,
}

impl LinkTask {
    pub fn new(
        cfg: PrinterConfig,
        link: LinkConfig,
        tls: Result<PrinterTls, String>,
        seq: SequenceIds,
        shutdown: CancellationToken,
        channels: TaskChannels,
    ) -> Self {
        let TaskChannels {
            cmd_rx,
            snap,
            shared,
        } = channels;
        let backoff = Backoff::new(
            Duration::from_millis(link.backoff_min_ms),
            Duration::from_millis(link.backoff_max_ms),
        );
        Self {
            cfg,
            link,
            tls,
            seq,
            shutdown,
            cmd_rx,
            snap,
            shared,
            control: ControlTracker::new(),
            firmware: None,
            backoff,
            last_pushall: None,
            next_conn_id: 1,
            recent_sent: VecDeque::new(),
        }
    }

    fn report_topic(&self) -> String {
        format!("device/{}/report", self.cfg.serial)
    }

    fn request_topic(&self) -> String {
        format!("device/{}/request", self.cfg.serial)
    }

    fn set_link(&self, state: LinkState) {
        self.snap.send_if_modified(|s| {
            if s.link == state {
                false
            } else {
                s.link = state;
                true
            }
        });
    }

    /// Link state while a connection is up.
    fn online_state(&self) -> LinkState {
        if self.control.state() == crate::printer::ControlState::Refused {
            LinkState::DeveloperModeRequired
        } else {
            LinkState::Online
        }
    }

    pub async fn run(mut self) {
        let tls = match &self.tls {
            Ok(tls) => tls.clone(),
            Err(e) => {
                self.set_link(LinkState::TlsError(e.clone()));
                // Keep answering until shutdown so callers never hang.
                while self.wait(None).await {}
                return;
            }
        };
        loop {
            let ended = self.connect_once(&tls).await;
            let delay = match ended {
                Ended::Shutdown => break,
                Ended::AuthRejected => {
                    tracing::warn!(
                        "printer refused the access code (CONNACK 4/5); waiting {} s before trying again — re-enter the code from the printer screen",
                        self.link.auth_backoff_secs
                    );
                    self.set_link(LinkState::AccessCodeRejected);
                    Some(jitter(Duration::from_secs(self.link.auth_backoff_secs)))
                }
                Ended::Cert(CertRejection::FingerprintChanged { pinned, seen }) => {
                    tracing::error!(
                        %pinned, %seen,
                        "printer certificate changed; not reconnecting until the printer is re-paired"
                    );
                    self.set_link(LinkState::FingerprintChanged { pinned, seen });
                    None
                }
                Ended::Cert(other) => {
                    self.set_link(LinkState::TlsError(other.to_string()));
                    Some(self.backoff.next_delay())
                }
                Ended::Failed {
                    state,
                    uptime,
                    by_us,
                } => {
                    let hard = match uptime {
                        Some(up) if !by_us => self.backoff.session_ended(up),
                        _ => false,
                    };
                    if hard {
                        let n = self.backoff.short_sessions();
                        tracing::warn!(
                            short_sessions = n,
                            "the printer accepted and then dropped the connection {n} times within seconds: another local MQTT client (Bambu Studio, Bambu Handy, Home Assistant, another gateway) is probably connected; close it — backing off"
                        );
                        self.set_link(LinkState::Unreachable(format!(
                            "the printer keeps dropping the connection right after accepting it ({n} times); another local MQTT client (Bambu Studio, Bambu Handy, Home Assistant, another gateway) is probably connected — close it"
                        )));
                        Some(self.backoff.hard_delay())
                    } else {
                        self.set_link(state);
                        Some(self.backoff.next_delay())
                    }
                }
            };
            if !self.wait(delay).await {
                break;
            }
        }
    }

    /// Wait out a backoff (`None`: until re-paired) while refusing commands. False on shutdown.
    async fn wait(&mut self, delay: Option<Duration>) -> bool {
        let sleep = tokio::time::sleep(delay.unwrap_or(Duration::from_secs(365 * 86_400)));
        tokio::pin!(sleep);
        let forever = delay.is_none();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = self.shared.retry.notified() => return true,
                _ = &mut sleep, if !forever => return true,
                req = self.cmd_rx.recv() => match req {
                    Some(r) => {
                        let _ = r.reply.send(Err(LinkError::NotConnected));
                    }
                    None => return false,
                },
            }
        }
    }

    fn mqtt_options(&self, tls: &PrinterTls) -> MqttOptions {
        let safe_name: String = self
            .cfg
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let client_id = format!("printgate-{safe_name}-{:08x}", rand::random::<u32>());
        let mut opts = MqttOptions::new(client_id, self.cfg.host.clone(), self.cfg.mqtt_port);
        opts.set_credentials("bblp", self.cfg.access_code.clone());
        opts.set_clean_session(true);
        opts.set_keep_alive(Duration::from_secs(self.link.keepalive_secs.max(1)));
        opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
        opts.set_inflight(INFLIGHT);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.client_config(),
        )));
        opts
    }

    async fn connect_once(&mut self, tls: &PrinterTls) -> Ended {
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let (client, mut eventloop) = AsyncClient::new(self.mqtt_options(tls), 16);
        let mut net = NetworkOptions::new();
        net.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(net);
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        let poller = tokio::spawn(poll_until_error(eventloop, ev_tx));
        let _stop_poller = AbortOnDrop(poller.abort_handle());
        tracing::debug!(conn = id, host = %self.cfg.host, port = self.cfg.mqtt_port, "connecting");

        let mut conn = Conn {
            id,
            client,
            up_since: None,
            merger: ReportMerger::new(),
            awaiting: VecDeque::new(),
            last_rx: Instant::now(),
            nudged_at: None,
            deferred_pushall: None,
            pushall_unanswered_since: None,
        };
        let ended = loop {
            let deadline = self.next_deadline(&conn);
            tokio::select! {
                _ = self.shutdown.cancelled() => break Ended::Shutdown,
                ev = ev_rx.recv() => match ev {
                    Some(Ok(event)) => {
                        if let Some(end) = self.on_event(&mut conn, tls, event) {
                            break end;
                        }
                    }
                    Some(Err(e)) => break self.classify_error(&conn, tls, e),
                    None => break self.failed(&conn, "the MQTT client stopped unexpectedly".into(), true),
                },
                req = self.cmd_rx.recv() => match req {
                    Some(r) => self.on_request(&mut conn, r),
                    None => break Ended::Shutdown,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(end) = self.on_timer(&mut conn) {
                        break end;
                    }
                }
            }
        };
        self.close(conn);
        ended
    }

    /// Tear down: nothing of this connection is sent later; callers still waiting learn it.
    fn close(&mut self, conn: Conn) {
        self.shared.live.store(0, Ordering::SeqCst);
        for a in conn.awaiting {
            if let Some(reply) = a.reply {
                let _ = reply.send(Err(LinkError::Other(
                    "the printer connection dropped while the command was being sent; the printer may or may not have received it".into(),
                )));
            }
        }
        if let Some((_, replies)) = conn.deferred_pushall {
            for reply in replies {
                let _ = reply.send(Err(LinkError::NotConnected));
            }
        }
        self.snap.send_modify(|s| s.have_full_report = false);
        // `conn.client` is dropped here and the poller (owning the event loop) is aborted by
        // `AbortOnDrop` in `connect_once`: everything pending in rumqttc dies with them.
    }

    fn failed(&self, conn: &Conn, reason: String, by_us: bool) -> Ended {
        let uptime = conn.up_since.map(|t| t.elapsed());
        let state = if uptime.is_some() {
            LinkState::Unreachable(format!("connection lost ({reason}); reconnecting"))
        } else {
            LinkState::Unreachable(reason)
        };
        Ended::Failed {
            state,
            uptime,
            by_us,
        }
    }

    fn classify_error(&self, conn: &Conn, tls: &PrinterTls, e: ConnectionError) -> Ended {
        if let Some(rejection) = tls.take_rejection() {
            return Ended::Cert(rejection);
        }
        let target = format!("{}:{}", self.cfg.host, self.cfg.mqtt_port);
        tracing::info!(conn = conn.id, error = %e, "printer connection ended");
        match e {
            ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
            ) => Ended::AuthRejected,
            ConnectionError::ConnectionRefused(code) => {
                self.failed(conn, format!("the printer refused the connection ({code:?})"), false)
            }
            ConnectionError::Tls(te) => Ended::Failed {
                state: LinkState::TlsError(format!(
                    "TLS with {target} failed: {te}; check that the host is the printer"
                )),
                uptime: conn.up_since.map(|t| t.elapsed()),
                by_us: false,
            },
            ConnectionError::NetworkTimeout => self.failed(
                conn,
                format!("no answer from {target} within {CONNECT_TIMEOUT_SECS} s; is the printer on and the address right?"),
                false,
            ),
            ConnectionError::MqttState(StateError::AwaitPingResp) => self.failed(
                conn,
                "the printer stopped answering keepalive pings (half-open connection)".into(),
                false,
            ),
            ConnectionError::Io(io) if conn.up_since.is_none() => {
                self.failed(conn, format!("cannot connect to {target}: {io}"), false)
            }
            other => self.failed(conn, other.to_string(), false),
        }
    }

    /// How long a silence may last before the watchdog nudges the printer. P1/A1 printers send
    /// deltas only and say nothing while idle and unchanged, so an idle one is given
    /// [`IDLE_DELTA_SILENCE_FACTOR`] times longer: the nudge's `pushall` then comes about every
    /// 5 minutes, the rate docs/bambu-protocol.md §3.4 advises for a P1P, instead of every minute.
    fn silence_limit(&self) -> Duration {
        let base = Duration::from_secs(self.link.silence_secs.max(1));
        if self.expects_idle_silence() {
            base * IDLE_DELTA_SILENCE_FACTOR
        } else {
            base
        }
    }

    /// Silence is normal right now (an idle delta-report printer).
    fn expects_idle_silence(&self) -> bool {
        self.cfg.model.sends_deltas()
            && !self
                .snap
                .borrow()
                .state
                .as_ref()
                .is_some_and(|s| s.gcode_state.is_active())
    }

    fn next_deadline(&self, conn: &Conn) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut deadline = far;
        if conn.up_since.is_some() {
            let silence = match conn.nudged_at {
                None => conn.last_rx + self.silence_limit(),
                Some(n) => n + Duration::from_secs(self.link.silence_reconnect_secs.max(1)),
            };
            deadline = deadline.min(silence);
        }
        if let Some((due, _)) = &conn.deferred_pushall {
            deadline = deadline.min(*due);
        }
        if let Some(front) = conn.awaiting.front() {
            deadline = deadline.min(front.queued_at + FLUSH_DEADLINE);
        }
        deadline
    }

    fn on_timer(&mut self, conn: &mut Conn) -> Option<Ended> {
        let now = Instant::now();
        if let Some(front) = conn.awaiting.front()
            && now >= front.queued_at + FLUSH_DEADLINE
        {
            return Some(self.failed(
                conn,
                "the printer connection stopped accepting data".into(),
                true,
            ));
        }
        if let Some((due, _)) = &conn.deferred_pushall
            && now >= *due
        {
            let replies = conn
                .deferred_pushall
                .take()
                .map(|(_, r)| r)
                .unwrap_or_default();
            self.publish_pushall(conn, replies);
        }
        conn.up_since?;
        match conn.nudged_at {
            None if now >= conn.last_rx + self.silence_limit() => {
                conn.nudged_at = Some(now);
                if self.expects_idle_silence() {
                    // Normal for an idle P1/A1: ask for a full report without alarming anyone.
                    tracing::debug!("idle printer quiet; sending pushing.start and pushall");
                } else {
                    tracing::warn!(
                        silence_secs = self.link.silence_secs,
                        "no report from the printer; sending pushing.start and pushall"
                    );
                    self.set_link(LinkState::Silent);
                }
                let built = commands::pushing_start(&self.seq);
                self.publish(conn, built, "start", None, None);
                self.request_pushall(conn, None);
                None
            }
            Some(n) if now >= n + Duration::from_secs(self.link.silence_reconnect_secs.max(1)) => {
                tracing::warn!(
                    "printer still silent after the nudge; reconnecting with a fresh client"
                );
                Some(self.failed(conn, "no reports from the printer".into(), true))
            }
            _ => None,
        }
    }

    fn on_event(&mut self, conn: &mut Conn, tls: &PrinterTls, event: Event) -> Option<Ended> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                let now = Instant::now();
                conn.up_since = Some(now);
                conn.last_rx = now;
                self.shared.live.store(conn.id, Ordering::SeqCst);
                if let Err(e) = tls.pin_after_login() {
                    tracing::warn!("could not store the printer's certificate pin: {e}");
                }
                let link = self.online_state();
                self.snap.send_modify(|s| {
                    s.link = link;
                    s.connection_epoch += 1;
                    s.state = None;
                    s.have_full_report = false;
                });
                tracing::info!(conn = conn.id, "connected to the printer");
                if let Err(e) = conn
                    .client
                    .try_subscribe(self.report_topic(), QoS::AtMostOnce)
                {
                    return Some(self.failed(conn, format!("could not subscribe: {e}"), true));
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::warn!("the printer refused the report subscription");
                }
                let built = commands::get_version(&self.seq);
                self.publish(conn, built, "get_version", None, None);
                self.request_pushall(conn, None);
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.report_topic() => {
                self.on_report(conn, &p.payload);
            }
            Event::Outgoing(Outgoing::Publish(_)) => {
                if let Some(a) = conn.awaiting.pop_front() {
                    self.remember_sent(&a.sequence_id, a.command);
                    if let Some(cmd) = &a.control {
                        let before = self
                            .snap
                            .borrow()
                            .state
                            .as_ref()
                            .map(|s| s.gcode_state)
                            .unwrap_or(GcodeState::Unknown);
                        self.control
                            .published(cmd, before, std::time::Instant::now());
                    }
                    if let Some(reply) = a.reply {
                        let _ = reply.send(Ok(CommandOutcome::Published {
                            sequence_id: a.sequence_id,
                        }));
                    }
                }
            }
            _ => {}
        }
        None
    }

    fn remember_sent(&mut self, sequence_id: &str, command: &'static str) {
        if self.recent_sent.len() >= RECENT_SENT {
            self.recent_sent.pop_front();
        }
        self.recent_sent
            .push_back((sequence_id.to_string(), command));
    }

    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        if req.conn != conn.id || conn.up_since.is_none() {
            let _ = req.reply.send(Err(LinkError::NotConnected));
            return;
        }
        if req.cmd == PrinterCommand::PushAll {
            self.request_pushall(conn, Some(req.reply));
            return;
        }
        let built = commands::build(&self.seq, &req.cmd);
        let (_, command) = commands::command_key(&req.cmd);
        let control = matches!(
            req.cmd,
            PrinterCommand::Start(_)
                | PrinterCommand::Pause
                | PrinterCommand::Resume
                | PrinterCommand::Stop
        )
        .then(|| req.cmd.clone());
        self.publish(conn, built, command, Some(req.reply), control);
    }

    /// Send `pushall` now, or once the rate limit allows (coalesced; dropped with the connection).
    fn request_pushall(&mut self, conn: &mut Conn, reply: Option<Reply>) {
        let now = Instant::now();
        let interval = Duration::from_millis(self.link.pushall_min_interval_ms);
        let due = self.last_pushall.map(|t| t + interval).filter(|d| *d > now);
        match (due, conn.deferred_pushall.as_mut()) {
            (_, Some((_, replies))) => replies.extend(reply),
            (Some(due), None) => conn.deferred_pushall = Some((due, reply.into_iter().collect())),
            (None, None) => self.publish_pushall(conn, reply.into_iter().collect()),
        }
    }

    fn publish_pushall(&mut self, conn: &mut Conn, mut replies: Vec<Reply>) {
        self.last_pushall = Some(Instant::now());
        conn.pushall_unanswered_since = Some(Instant::now());
        let built = commands::pushall(&self.seq);
        let first = replies.pop();
        let sequence_id = built.sequence_id.clone();
        let published = self.publish(conn, built, "pushall", first, None);
        // Others who asked for the same coalesced pushall share its outcome.
        for reply in replies {
            let _ = reply.send(if published {
                Ok(CommandOutcome::Published {
                    sequence_id: sequence_id.clone(),
                })
            } else {
                Err(LinkError::NotConnected)
            });
        }
    }

    /// Hand one publish to rumqttc (QoS 1). Returns false (and answers `NotConnected`) when the
    /// client would not take it — then nothing was sent.
    fn publish(
        &mut self,
        conn: &mut Conn,
        built: Built,
        command: &'static str,
        reply: Option<Reply>,
        control: Option<PrinterCommand>,
    ) -> bool {
        if conn.up_since.is_none() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(LinkError::NotConnected));
            }
            return false;
        }
        match conn.client.try_publish(
            self.request_topic(),
            QoS::AtLeastOnce,
            false,
            built.to_bytes(),
        ) {
            Ok(()) => {
                tracing::debug!(command, sequence_id = %built.sequence_id, "publishing");
                conn.awaiting.push_back(Awaiting {
                    sequence_id: built.sequence_id,
                    command,
                    reply,
                    control,
                    queued_at: Instant::now(),
                });
                true
            }
            Err(e) => {
                tracing::warn!(command, error = %e, "the MQTT client did not take the command; nothing was sent");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(LinkError::NotConnected));
                }
                false
            }
        }
    }

    fn on_report(&mut self, conn: &mut Conn, payload: &[u8]) {
        if self.shared.reports.receiver_count() > 0 {
            let _ = self
                .shared
                .reports
                .send(bytes::Bytes::copy_from_slice(payload));
        }
        let now = Instant::now();
        conn.last_rx = now;
        conn.nudged_at = None;
        let model = self.cfg.model;
        let mut full = false;
        let mut merged = false;
        match conn.merger.ingest(payload) {
            Ok(Ingested::Full) => {
                full = true;
                merged = true;
            }
            Ok(Ingested::Delta { trusted }) => {
                merged = true;
                if !trusted {
                    tracing::debug!(
                        "delta before the first full report; state unknown until pushall is answered"
                    );
                }
            }
            Ok(Ingested::Duplicate) => tracing::debug!("duplicate report ignored"),
            Ok(Ingested::Version { firmware, ack }) => {
                if firmware.is_some() {
                    self.firmware = firmware;
                    merged = true;
                }
                self.on_ack(ack);
            }
            Ok(Ingested::Ack(ack)) => self.on_ack(ack),
            Ok(Ingested::Ignored) => {}
            Err(ReportError::TooLarge(_)) => {} // already warned by the parser
            Err(e) => tracing::warn!("ignoring a report from the printer: {e}"),
        }
        if full {
            conn.pushall_unanswered_since = None;
        }
        // A delta before the first full report asks for `pushall`, unless one is pending or was
        // sent recently and may still be answered.
        if conn.merger.take_pushall_request()
            && conn.deferred_pushall.is_none()
            && conn
                .pushall_unanswered_since
                .is_none_or(|t| t.elapsed() >= PUSHALL_ANSWER_WAIT)
        {
            self.request_pushall(conn, None);
        }
        let state = if merged {
            conn.merger.state(model).map(|mut s| {
                s.firmware = self.firmware.clone();
                s
            })
        } else {
            None
        };
        if let Some(s) = &state {
            self.control.on_state(s, std::time::Instant::now());
        }
        let link = self.online_state();
        let control = self.control.state();
        let have_full = conn.merger.have_full_report();
        let std_now = std::time::Instant::now();
        self.snap.send_modify(|snap| {
            snap.link = link;
            snap.control = control;
            snap.last_report_at = Some(std_now);
            if full {
                snap.last_full_report_at = Some(std_now);
            }
            snap.have_full_report = have_full;
            if let Some(s) = state {
                snap.state = Some(s);
            }
        });
    }

    fn on_ack(&mut self, ack: CommandAck) {
        let ours = self
            .recent_sent
            .iter()
            .any(|(seq, cmd)| *seq == ack.sequence_id && *cmd == ack.command);
        if !ours {
            return;
        }
        self.control.on_ack(&ack);
        if ack.success == Some(false) {
            tracing::warn!(command = %ack.command, sequence_id = %ack.sequence_id, reason = ?ack.reason, err_code = ?ack.err_code, "the printer refused a command");
        }
        self.snap.send_modify(|s| s.last_ack = Some(ack));
    }
}

/// Poll the event loop until its first error, forwarding every event. The event loop is dropped
/// when this returns (or is aborted), so rumqttc never reconnects or replays anything.
pub(crate) async fn poll_until_error(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Result<Event, ConnectionError>>,
) {
    loop {
        let result = eventloop.poll().await;
        let stop = result.is_err();
        if tx.send(result).await.is_err() || stop {
            break;
        }
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
