//! The I/O of one Moonraker link: a fresh clean MQTT session on printgate's broker per
//! connection (the event loop dies with the connection, so nothing queued is ever sent later),
//! Moonraker's availability, full queries and status deltas merged into the snapshot, JSON-RPC
//! commands published once and answered when written, responses turned into acks, and a poll
//! that doubles as the silence watchdog.

use super::rpc::{self, Topics};
use super::status::{KlipperStatus, OBJECTS};
use super::{BrokerEndpoint, EndpointWatch, Request};
use crate::config::{LinkConfig, PrinterConfig};
use crate::printer::bambu::backoff::Backoff;
use crate::printer::bambu::commands::SequenceIds;
use crate::printer::bambu::session::{AbortOnDrop, poll_until_error};
use crate::printer::{
    CommandAck, CommandOutcome, ControlState, LinkError, LinkState, PrinterCommand, PrinterSnapshot,
};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Status payloads above this are dropped with a warning (as for Bambu reports).
pub const MAX_STATUS_BYTES: usize = 1024 * 1024;
/// Incoming packets up to this size are read (larger ones are dropped by the client).
const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;
const MAX_OUTGOING_PACKET: usize = 64 * 1024;
/// Requests older than this are forgotten (their answer, if any, is ignored).
const PENDING_MAX_AGE: Duration = Duration::from_secs(120);
const PENDING_MAX: usize = 256;

enum Ended {
    Shutdown,
    EndpointChanged,
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingKind {
    Query,
    Command,
}

struct Pending {
    method: &'static str,
    kind: PendingKind,
    sent_at: Instant,
}

struct Awaiting {
    id: u64,
    reply: Option<oneshot::Sender<Result<CommandOutcome, LinkError>>>,
}

struct Conn {
    client: AsyncClient,
    broker_up: bool,
    moonraker_online: bool,
    status: KlipperStatus,
    pending: HashMap<u64, Pending>,
    awaiting: VecDeque<Awaiting>,
    /// The outstanding full query, if any (id, sent at).
    query: Option<(u64, Instant)>,
    next_poll: Instant,
    /// No full answer yet since Moonraker came online: Moonraker says "online" before it has
    /// subscribed to its request topic, so the first query may be lost; it is repeated after
    /// this delay (doubling).
    first_query_retry: Option<Duration>,
    /// When Moonraker last came online on this connection.
    online_at: Instant,
}

/// First repeat of an unanswered first query; doubles up to [`FIRST_QUERY_RETRY_MAX`].
const FIRST_QUERY_RETRY: Duration = Duration::from_millis(250);
const FIRST_QUERY_RETRY_MAX: Duration = Duration::from_secs(4);
/// How often the session's timer runs (polls, silence, retries).
const TICK: Duration = Duration::from_millis(250);

pub(super) struct Session {
    cfg: PrinterConfig,
    link: LinkConfig,
    endpoint: EndpointWatch,
    seq: SequenceIds,
    cmd_rx: mpsc::Receiver<Request>,
    snap: watch::Sender<PrinterSnapshot>,
    shutdown: CancellationToken,
    topics: Topics,
    timestamps: rpc::Timestamps,
}

impl Session {
    pub(super) fn new(
        cfg: PrinterConfig,
        link: LinkConfig,
        endpoint: EndpointWatch,
        seq: SequenceIds,
        cmd_rx: mpsc::Receiver<Request>,
        snap: watch::Sender<PrinterSnapshot>,
        shutdown: CancellationToken,
    ) -> Self {
        let topics = Topics::new(&cfg.instance_name);
        Session {
            cfg,
            link,
            endpoint,
            seq,
            cmd_rx,
            snap,
            shutdown,
            topics,
            timestamps: rpc::Timestamps::default(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.link.backoff_min_ms.max(1)),
            Duration::from_millis(self.link.backoff_max_ms.max(1)),
        );
        loop {
            let endpoint = self.endpoint.borrow_and_update().clone();
            let Some(endpoint) = endpoint else {
                self.set_link(LinkState::Connecting);
                if !self.idle_until(None).await {
                    return;
                }
                continue;
            };
            match self.connect_once(&endpoint).await {
                Ended::Shutdown => return,
                Ended::EndpointChanged => continue,
                Ended::Failed(reason) => {
                    tracing::info!("connection to printgate's MQTT broker ended: {reason}");
                    self.set_link(LinkState::Unreachable(format!(
                        "printgate's MQTT broker: {reason}; reconnecting"
                    )));
                    let delay = backoff.next_delay();
                    if !self.idle_until(Some(Instant::now() + delay)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Wait (answering commands with `NotConnected`) until `until`, or until the endpoint
    /// changes when `until` is `None`. `false` on shutdown.
    async fn idle_until(&mut self, until: Option<Instant>) -> bool {
        loop {
            let sleep = async {
                match until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                r = self.endpoint.changed() => return r.is_ok(),
                _ = sleep => return true,
                req = self.cmd_rx.recv() => match req {
                    Some(r) => { let _ = r.reply.send(Err(LinkError::NotConnected)); }
                    None => return false,
                },
            }
        }
    }

    fn set_link(&self, state: LinkState) {
        self.snap.send_if_modified(|s| {
            if s.link == state {
                return false;
            }
            if !state.is_online() {
                s.have_full_report = false;
            }
            s.link = state;
            true
        });
    }

    fn mqtt_options(&self, ep: &BrokerEndpoint) -> MqttOptions {
        let client_id = format!(
            "printgate-moonraker-{}-{:08x}",
            self.cfg.instance_name,
            rand::random::<u32>()
        );
        let mut opts = MqttOptions::new(client_id, ep.host.clone(), ep.port);
        if let (Some(u), Some(p)) = (&ep.username, &ep.password) {
            opts.set_credentials(u.clone(), p.clone());
        }
        opts.set_clean_session(true);
        opts.set_keep_alive(Duration::from_secs(self.link.keepalive_secs.max(5)));
        opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
        if let Some(tls) = &ep.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        opts
    }

    async fn connect_once(&mut self, ep: &BrokerEndpoint) -> Ended {
        let (client, eventloop) = AsyncClient::new(self.mqtt_options(ep), 32);
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        let poller = tokio::spawn(poll_until_error(eventloop, ev_tx));
        let _stop = AbortOnDrop(poller.abort_handle());
        let mut conn = Conn {
            client,
            broker_up: false,
            moonraker_online: false,
            status: KlipperStatus::default(),
            pending: HashMap::new(),
            awaiting: VecDeque::new(),
            query: None,
            next_poll: Instant::now(),
            first_query_retry: None,
            online_at: Instant::now(),
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    let _ = conn.client.try_disconnect();
                    break Ended::Shutdown;
                }
                r = self.endpoint.changed() => break if r.is_ok() { Ended::EndpointChanged } else { Ended::Shutdown },
                ev = ev_rx.recv() => match ev {
                    Some(Ok(event)) => {
                        if let Some(end) = self.on_event(&mut conn, event) {
                            break end;
                        }
                    }
                    Some(Err(e)) => break Ended::Failed(describe_error(&e)),
                    None => break Ended::Failed("the MQTT client stopped".into()),
                },
                req = self.cmd_rx.recv() => match req {
                    Some(r) => self.on_request(&mut conn, r),
                    None => break Ended::Shutdown,
                },
                _ = tick.tick() => self.on_timer(&mut conn),
            }
        };
        for a in conn.awaiting.drain(..) {
            if let Some(reply) = a.reply {
                let _ = reply.send(Err(LinkError::Other(
                    "the broker connection dropped while the command was being sent; Moonraker may or may not have received it".into(),
                )));
            }
        }
        self.snap.send_modify(|s| s.have_full_report = false);
        ended
    }

    fn on_event(&mut self, conn: &mut Conn, event: Event) -> Option<Ended> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                conn.broker_up = true;
                for t in self.topics.subscriptions() {
                    if conn.client.try_subscribe(t, QoS::AtLeastOnce).is_err() {
                        return Some(Ended::Failed("could not subscribe".into()));
                    }
                }
                self.set_link(LinkState::Unreachable(self.waiting_text()));
            }
            Event::Incoming(Packet::Publish(p)) => self.on_publish(conn, &p.topic, &p.payload),
            Event::Outgoing(Outgoing::Publish(_)) => {
                if let Some(a) = conn.awaiting.pop_front()
                    && let Some(reply) = a.reply
                {
                    let _ = reply.send(Ok(CommandOutcome::Published {
                        sequence_id: a.id.to_string(),
                    }));
                }
            }
            _ => {}
        }
        None
    }

    fn waiting_text(&self) -> String {
        format!(
            "waiting for Moonraker: nothing online on {}; check the [mqtt] section of the printer's moonraker.conf (address of printgate, the username/password printgate issued for this printer, instance_name: {})",
            self.topics.availability, self.cfg.instance_name
        )
    }

    fn on_publish(&mut self, conn: &mut Conn, topic: &str, payload: &[u8]) {
        if topic == self.topics.availability {
            self.on_availability(conn, payload);
        } else if topic == self.topics.response {
            self.on_response(conn, payload);
        } else if payload.len() > MAX_STATUS_BYTES {
            tracing::warn!(
                bytes = payload.len(),
                topic,
                "status message larger than 1 MiB dropped"
            );
        } else if topic == self.topics.klipper_status {
            let merged = serde_json::from_slice::<Value>(payload)
                .map_err(|e| e.to_string())
                .and_then(|v| conn.status.merge(&v).map_err(|e| e.to_string()));
            match merged {
                Ok(()) => self.publish_status(conn, false),
                Err(e) => tracing::warn!("unusable Klipper status message ignored: {e}"),
            }
        } else if let Some(rest) = topic.strip_prefix(&self.topics.klipper_state_prefix) {
            let Some((object, field)) = rest.split_once('/') else {
                return;
            };
            match serde_json::from_slice::<Value>(payload) {
                Ok(v) if conn.status.merge_split(object, field, &v) => {
                    self.publish_status(conn, false)
                }
                _ => tracing::warn!(topic, "unusable Klipper state message ignored"),
            }
        }
    }

    fn on_availability(&mut self, conn: &mut Conn, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let value = serde_json::from_slice::<Value>(payload).ok();
        let server = value
            .as_ref()
            .and_then(|v| v.get("server"))
            .and_then(Value::as_str)
            .unwrap_or(text.trim());
        match server {
            "online" => {
                if conn.moonraker_online {
                    return;
                }
                conn.moonraker_online = true;
                conn.status = KlipperStatus::default();
                conn.query = None;
                conn.first_query_retry = Some(FIRST_QUERY_RETRY);
                conn.online_at = Instant::now();
                self.snap.send_modify(|s| {
                    s.connection_epoch += 1;
                    s.link = LinkState::Online;
                    s.control = ControlState::Ok;
                    s.have_full_report = false;
                });
                tracing::info!("Moonraker is online");
                self.send_query(conn);
            }
            "offline" | "" => {
                let was = conn.moonraker_online;
                conn.moonraker_online = false;
                conn.query = None;
                if was {
                    tracing::warn!("Moonraker went offline (its will message or a clean stop)");
                }
                self.set_link(LinkState::Unreachable(if was {
                    "Moonraker went offline (its will message); nothing is sent until it is back"
                        .to_string()
                } else {
                    self.waiting_text()
                }));
            }
            other => {
                tracing::warn!(value = %other.chars().take(40).collect::<String>(), "unknown Moonraker availability value ignored");
            }
        }
    }

    fn on_response(&mut self, conn: &mut Conn, payload: &[u8]) {
        let response = match rpc::decode_response(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("unusable JSON-RPC response from Moonraker ignored: {e}");
                return;
            }
        };
        let Some(id) = response.id else {
            if let Err(e) = &response.outcome {
                tracing::warn!("Moonraker could not read a request: {e}");
            }
            return;
        };
        let Some(p) = conn.pending.remove(&id) else {
            return;
        };
        match p.kind {
            PendingKind::Query => {
                if conn.query.is_some_and(|(q, _)| q == id) {
                    conn.query = None;
                }
                match response.outcome {
                    Ok(result) => match conn.status.replace(&result) {
                        Ok(()) => {
                            conn.first_query_retry = None;
                            self.publish_status(conn, true)
                        }
                        Err(e) => tracing::warn!("unusable objects query answer: {e}"),
                    },
                    Err(e) => {
                        conn.first_query_retry = None;
                        // Typically "Klippy Disconnected": Moonraker runs, Klipper does not.
                        let mut state = conn.status.to_state();
                        state.gcode_state = crate::printer::GcodeState::Unknown;
                        state.status_message = Some(format!("Klipper is not ready: {}", e.message));
                        self.snap.send_modify(|s| {
                            let now = std::time::Instant::now();
                            s.state = Some(state);
                            s.have_full_report = true;
                            s.last_report_at = Some(now);
                            s.last_full_report_at = Some(now);
                            if conn.moonraker_online && s.link == LinkState::Silent {
                                s.link = LinkState::Online;
                            }
                        });
                    }
                }
            }
            PendingKind::Command => {
                let (success, reason) = match &response.outcome {
                    Ok(_) => (true, None),
                    Err(e) => (false, Some(e.to_string())),
                };
                if !success {
                    tracing::warn!(method = p.method, reason = ?reason, "Moonraker refused a command");
                }
                let ack = CommandAck {
                    command: p.method.to_string(),
                    sequence_id: id.to_string(),
                    success: Some(success),
                    reason,
                    err_code: None,
                };
                self.snap.send_modify(|s| s.last_ack = Some(ack));
            }
        }
    }

    /// Put the merged objects into the snapshot; a full answer makes the state trusted.
    fn publish_status(&self, conn: &Conn, full: bool) {
        let state = conn.status.to_state();
        let online = conn.moonraker_online;
        self.snap.send_modify(|s| {
            let now = std::time::Instant::now();
            s.last_report_at = Some(now);
            if full {
                s.have_full_report = true;
                s.last_full_report_at = Some(now);
                if online && s.link == LinkState::Silent {
                    s.link = LinkState::Online;
                }
            }
            if s.have_full_report || full {
                s.state = Some(state);
            }
        });
    }

    fn on_request(&mut self, conn: &mut Conn, req: Request) {
        if !conn.broker_up || !conn.moonraker_online {
            let _ = req.reply.send(Err(LinkError::NotConnected));
            return;
        }
        let (method, params) = match &req.cmd {
            PrinterCommand::Start(s) => ("printer.print.start", json!({"filename": s.remote_name})),
            PrinterCommand::Pause => ("printer.print.pause", json!({})),
            PrinterCommand::Resume => ("printer.print.resume", json!({})),
            PrinterCommand::Stop => ("printer.print.cancel", json!({})),
            PrinterCommand::Light(_) => {
                let _ = req.reply.send(Err(LinkError::Unsupported(
                    "Klipper printers have no standard light; switch it with a macro in Klipper"
                        .into(),
                )));
                return;
            }
            PrinterCommand::Setting(c) => {
                let _ = req.reply.send(Err(LinkError::Unsupported(format!(
                    "Klipper printers have no Bambu setting {}.{}",
                    c.section, c.command
                ))));
                return;
            }
            PrinterCommand::PushAll => {
                if conn.query.is_none() {
                    self.send_query(conn);
                }
                let _ = req.reply.send(Ok(CommandOutcome::Published {
                    sequence_id: conn.query.map(|(id, _)| id.to_string()).unwrap_or_default(),
                }));
                return;
            }
        };
        match self.publish(conn, method, params, PendingKind::Command) {
            Some(id) => conn.awaiting.push_back(Awaiting {
                id,
                reply: Some(req.reply),
            }),
            None => {
                let _ = req.reply.send(Err(LinkError::NotConnected));
            }
        }
    }

    fn send_query(&mut self, conn: &mut Conn) {
        let params = rpc::objects_query_params(&OBJECTS);
        if let Some(id) = self.publish(conn, "printer.objects.query", params, PendingKind::Query) {
            conn.awaiting.push_back(Awaiting { id, reply: None });
            conn.query = Some((id, Instant::now()));
        }
        conn.next_poll = Instant::now() + Duration::from_secs(self.link.silence_secs.max(1));
    }

    /// Hand one request to this connection's client (QoS 0: never redelivered, never queued
    /// for a later session); `None` if the client would not take it (nothing was sent).
    fn publish(
        &mut self,
        conn: &mut Conn,
        method: &'static str,
        params: Value,
        kind: PendingKind,
    ) -> Option<u64> {
        let id: u64 = self.seq.next_id().parse().unwrap_or_default();
        let payload = rpc::request(method, params, id, self.timestamps.next());
        conn.client
            .try_publish(self.topics.request.clone(), QoS::AtMostOnce, false, payload)
            .ok()?;
        if conn.pending.len() >= PENDING_MAX {
            conn.pending.clear();
        }
        conn.pending.insert(
            id,
            Pending {
                method,
                kind,
                sent_at: Instant::now(),
            },
        );
        Some(id)
    }

    fn on_timer(&mut self, conn: &mut Conn) {
        let now = Instant::now();
        conn.pending
            .retain(|_, p| now.duration_since(p.sent_at) < PENDING_MAX_AGE);
        if !conn.moonraker_online {
            return;
        }
        if let (Some(retry), Some((_, sent))) = (conn.first_query_retry, conn.query)
            && now.duration_since(sent) >= retry
        {
            // The earlier query stays pending: a late answer still counts.
            conn.first_query_retry = Some((retry * 2).min(FIRST_QUERY_RETRY_MAX));
            conn.query = None;
            self.send_query(conn);
            if now.duration_since(conn.online_at)
                > Duration::from_secs(self.link.silence_reconnect_secs.max(1))
            {
                self.set_link(LinkState::Silent);
            }
            return;
        }
        if let Some((_, sent)) = conn.query
            && now.duration_since(sent)
                > Duration::from_secs(self.link.silence_reconnect_secs.max(1))
        {
            tracing::warn!("Moonraker did not answer the state query; marking the printer silent");
            conn.query = None;
            self.set_link(LinkState::Silent);
        }
        if now >= conn.next_poll && conn.query.is_none() {
            self.send_query(conn);
        }
    }
}

fn describe_error(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused printgate's own login ({code:?})")
        }
        other => other.to_string(),
    }
}
