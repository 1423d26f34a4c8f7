//! The embedded broker's front door: printgate's own listeners (plain and TLS) in front of
//! rumqttd. Each client's CONNECT is authenticated ([`crate::broker::auth`]) and rewritten to the
//! internal credentials with a `c-` prefixed client id (so no client can take over the gateway's
//! session); every PUBLISH and the will are checked against the ACL ([`crate::broker::acl`]),
//! and so is every SUBSCRIBE of a Klipper printer's login (which also always gets a clean
//! session); a client with an empty client id gets one from printgate (MQTT 5: returned in the
//! CONNACK as Assigned Client Identifier), unless it asked for a persistent session under MQTT
//! 3.1.1 (refused: identifier rejected); commands are handed to the [`CommandRouter`] with the sender's identity. A
//! forbidden publish or subscribe closes the connection (MQTT 5: DISCONNECT "not authorized"), and
//! so does the revocation of the token or printer login a client logged in with
//! ([`sweep_revoked`]) — except a publish to a `$…` topic, which is answered as Mosquitto answers
//! a denied one (acknowledged, MQTT 5 "not authorized", not delivered) on a connection that
//! stays. MQTT 5 topic aliases are resolved per connection for the ACL (the broker resolves
//! them the same way); a second CONNECT ends the connection (protocol error). Limits:
//! connections, packet size, CONNECT timeout, publish rate (backpressure, not disconnect).
//!
//! Until its login succeeds a connection holds only a place in the pre-login budget
//! ([`crate::admission`]: `max_unauthenticated_per_address` per source address,
//! `max_unauthenticated` in all) and must finish its TLS handshake, WebSocket upgrade and CONNECT
//! by one deadline (`connect_timeout_ms`); a `max_connections` slot is taken only after the
//! login. Refused and timed-out connections are counted and logged once per interval.

pub use crate::admission::Ticket;
use crate::admission::{Admission, Limits, Outcome};
use crate::broker::acl::{self, Decision};
use crate::broker::auth::{Authenticator, Identity};
use crate::broker::commands::CommandRouter;
use crate::broker::config::BrokerLimits;
use crate::broker::embedded::InternalBroker;
use crate::broker::packets::{self, PUBLISH, PacketError, SUBSCRIBE};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub struct Gate {
    pub auth: Authenticator,
    pub internal: InternalBroker,
    pub limits: BrokerLimits,
    pub discovery_prefix: String,
    pub commands: CommandRouter,
    /// Moonraker instance names of configured Klipper printers: their topics are theirs alone.
    pub printer_instances: Vec<String>,
    /// Slots of logged-in clients (`max_connections`).
    slots: Arc<Semaphore>,
    /// Places of connections that have not logged in yet, on every listener.
    pub admission: Arc<Admission>,
    /// Clients, PUBLISH packets and refused logins, for the metrics endpoint.
    pub stats: Arc<crate::broker::stats::BrokerStats>,
}

impl Gate {
    pub fn new(
        auth: Authenticator,
        internal: InternalBroker,
        limits: BrokerLimits,
        discovery_prefix: String,
        commands: CommandRouter,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let admission = Admission::new(Limits {
            what: "MQTT",
            before: "before login",
            per_address: limits.max_unauthenticated_per_address,
            total: limits.max_unauthenticated,
            deadline: Duration::from_millis(limits.connect_timeout_ms),
            settings: "[broker.limits]",
        });
        Gate {
            auth,
            internal,
            limits,
            discovery_prefix,
            commands,
            printer_instances: Vec::new(),
            slots,
            admission,
            stats: Arc::default(),
        }
    }

    /// Reserve the topics of these Moonraker instances for their printers' logins.
    pub fn with_printer_instances(mut self, instances: Vec<String>) -> Self {
        self.printer_instances = instances;
        self
    }

    /// Count into these stats (shared with the metrics endpoint).
    pub fn with_stats(mut self, stats: Arc<crate::broker::stats::BrokerStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A slot of a logged-in client (`broker.limits.max_connections`), if one is free.
    fn try_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// What this client may publish on `topic`.
    fn publish_decision<'a>(&self, identity: &Identity, topic: &'a str) -> Decision<'a> {
        match &identity.scope {
            Some(instance) if acl::may_publish_scoped(instance, topic) => Decision::Allow,
            Some(_) => Decision::Deny,
            None => acl::may_publish(
                identity.access,
                topic,
                &self.discovery_prefix,
                &self.printer_instances,
            ),
        }
    }
}

/// End the live sessions whose credential lost its access (a token revoked, an account
/// deleted, a printer's login withdrawn or re-issued), each time the credentials signal moves,
/// until `shutdown`. Without a signal there is nothing to watch.
pub async fn sweep_revoked(gate: Arc<Gate>, shutdown: CancellationToken) {
    let Some(mut signal) = gate.auth.credentials_signal() else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = signal.changed() => if r.is_err() { return },
        }
        signal.borrow_and_update();
        gate.auth.revalidate();
    }
}

/// Accept plain MQTT clients until `shutdown`.
pub async fn serve_plain(listener: TcpListener, gate: Arc<Gate>, shutdown: CancellationToken) {
    serve(listener, gate, None, shutdown).await
}

/// Accept MQTT-over-TLS clients until `shutdown`.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) {
    serve(listener, gate, Some(acceptor), shutdown).await
}

async fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("MQTT accept failed: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        // Refused (closed at once, counted for the summary line) when this address or every
        // address together has too many connections that have not logged in yet.
        let Some(ticket) = gate.admission.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let gate = gate.clone();
        let tls = tls.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => client(stream, peer, &gate, ticket, token).await,
                Some(acceptor) => {
                    match tokio::time::timeout_at(ticket.deadline, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => client(s, peer, &gate, ticket, token).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "MQTT TLS handshake failed: {e}"),
                        Err(_) => {
                            ticket.timed_out();
                            tracing::debug!(%peer, "MQTT TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// A token bucket: `rate` per second, bursts of `rate`.
struct Bucket {
    tokens: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Bucket {
            tokens: rate,
            rate,
            at: Instant::now(),
        }
    }
    /// How long to wait before one more publish may pass.
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Serve one client connection (plain, TLS or WebSocket stream) until it ends. `ticket` is its
/// place in the pre-login budget: it must log in by the ticket's deadline, and trades the
/// ticket for a `max_connections` slot when it has.
pub(crate) async fn client<S>(
    stream: S,
    peer: SocketAddr,
    gate: &Gate,
    ticket: Ticket,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let limit = gate.limits.max_packet_bytes;
    let first =
        tokio::time::timeout_at(ticket.deadline, packets::read_packet(&mut rd, limit)).await;
    let connect = match first {
        Ok(Ok(p)) if p.kind() == packets::CONNECT => p,
        Ok(Ok(_)) => return tracing::debug!(%peer, "first MQTT packet was not CONNECT"),
        Ok(Err(e)) => return tracing::debug!(%peer, "MQTT CONNECT unreadable: {e}"),
        Err(_) => {
            ticket.timed_out();
            return tracing::debug!(%peer, "no MQTT CONNECT in time");
        }
    };
    let info = match packets::parse_connect(&connect.body) {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!(%peer, "MQTT CONNECT refused: {e}");
            let _ = wr.write_all(&packets::connack_refused(4, false)).await;
            return;
        }
    };
    // An empty client id: a clean session gets an id from printgate (MQTT 5: returned in the
    // CONNACK); MQTT 3.1.1 refuses it for a persistent session, which could never be resumed.
    if info.client_id.is_empty() && info.level == 4 && !info.clean_start {
        tracing::info!(%peer, user = info.username.as_deref().unwrap_or(""), "MQTT CONNECT refused: an empty client id needs clean session 1 under MQTT 3.1.1 (give the client an id to keep its session)");
        let _ = wr
            .write_all(&packets::connack_identifier_rejected(info.level))
            .await;
        return;
    }
    let session = match gate
        .auth
        .admit(info.username.as_deref(), info.password.as_deref())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, user = info.username.as_deref().unwrap_or(""), "MQTT login refused: {e}");
            gate.stats.login_refused();
            let _ = wr
                .write_all(&packets::connack_refused(info.level, false))
                .await;
            return;
        }
    };
    let identity = &session.identity;
    if let Some(will) = &info.will
        && gate.publish_decision(identity, &will.topic) != Decision::Allow
    {
        tracing::info!(%peer, user = %identity.user, topic = %will.topic, "MQTT will message not allowed for this user");
        let _ = wr
            .write_all(&packets::connack_refused(info.level, true))
            .await;
        return;
    }
    // Logged in: from now on the client holds a slot of its own instead of its pre-login place.
    let Some(_slot) = gate.try_slot() else {
        gate.admission.note(peer.ip(), Outcome::RefusedFull);
        let _ = wr
            .write_all(&packets::connack_unavailable(info.level))
            .await;
        return;
    };
    drop(ticket);
    let assigned = info.client_id.is_empty().then(assigned_client_id);
    let client_id = internal_client_id(
        &identity.user,
        assigned.as_deref().unwrap_or(&info.client_id),
    );
    let mut rewritten = packets::rewrite_connect(
        &connect.body,
        &info,
        &client_id,
        &gate.internal.username,
        &gate.internal.password,
    );
    if identity.scope.is_some() {
        // A printer never gets messages stored for an earlier session (I3).
        packets::force_clean_start(&mut rewritten, &info);
    }
    let upstream_addr = if info.level == 5 {
        gate.internal.v5
    } else {
        gate.internal.v4
    };
    let upstream = match TcpStream::connect(upstream_addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("embedded broker unreachable on {upstream_addr}: {e}");
            let _ = wr
                .write_all(&packets::connack_unavailable(info.level))
                .await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (mut up_rd, mut up_wr) = upstream.into_split();
    if up_wr.write_all(&rewritten.encode()).await.is_err() {
        return;
    }
    // The broker's answer: its CONNACK goes to the client (with the id printgate assigned, for
    // MQTT 5); a broker that refuses without one is logged and answered "server unavailable".
    let connect_timeout = Duration::from_millis(gate.limits.connect_timeout_ms);
    let ack = match tokio::time::timeout(connect_timeout, packets::read_packet(&mut up_rd, limit))
        .await
    {
        Ok(Ok(p)) if p.kind() == packets::CONNACK => p,
        other => {
            let why = match other {
                Ok(Ok(p)) => format!("sent packet type {} instead", p.kind()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", connect_timeout.as_millis()),
            };
            tracing::warn!(%peer, user = %identity.user, client_id = %info.client_id, keep_alive = info.keep_alive, "embedded broker refused the MQTT connection without a CONNACK ({why}); the client was told the server is unavailable");
            let _ = wr
                .write_all(&packets::connack_unavailable(info.level))
                .await;
            return;
        }
    };
    let ack = match assigned.as_deref() {
        Some(id) if info.level == 5 && ack.body.get(1) == Some(&0) => {
            match packets::connack_with_assigned_id(&ack.body, id) {
                Some(body) => packets::RawPacket { body, ..ack },
                None => ack,
            }
        }
        _ => ack,
    };
    if wr.write_all(&ack.encode()).await.is_err() {
        return;
    }
    tracing::debug!(%peer, user = %identity.user, client_id = %info.client_id, assigned = assigned.as_deref().unwrap_or(""), "MQTT client connected");
    let _counted = crate::broker::stats::ClientGuard::new(gate.stats.clone());

    // Broker → client: packet by packet as they are, and the front door's own answers (to a
    // refused `$` publish) between two packets.
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let down_wr = wr.clone();
    let down_limit = limit.saturating_add(DOWN_SLACK);
    let mut down = tokio::spawn(async move {
        let mut up_rd = tokio::io::BufReader::with_capacity(16 * 1024, up_rd);
        while let Ok(p) = packets::read_packet(&mut up_rd, down_limit).await {
            if down_wr.lock().await.write_all(&p.encode()).await.is_err() {
                break;
            }
        }
    });
    let mut broker_ended = false;

    // Client → broker: packet by packet, PUBLISH checked.
    let mut bucket = Bucket::new(gate.limits.publishes_per_sec);
    // MQTT 5 topic aliases this client set on this connection (they end with it).
    let mut aliases: std::collections::HashMap<u16, String> = std::collections::HashMap::new();
    // Packet ids of refused QoS 2 publishes (MQTT 3.1.1) whose PUBREL printgate answers.
    let mut refused_qos2: std::collections::HashSet<u16> = std::collections::HashSet::new();
    let denied: Option<u8> = loop {
        let packet = tokio::select! {
            _ = shutdown.cancelled() => break None,
            _ = session.revoked() => {
                tracing::info!(%peer, user = %identity.user, "MQTT client disconnected: its login was revoked");
                break Some(packets::reason::NOT_AUTHORIZED);
            }
            _ = &mut down => {
                // The broker ended the session (e.g. the same client id connected again).
                broker_ended = true;
                break None;
            }
            p = packets::read_packet(&mut rd, limit) => p,
        };
        let mut packet = match packet {
            Ok(p) => p,
            Err(PacketError::Closed) => break None,
            Err(e) => {
                tracing::debug!(%peer, user = %identity.user, "MQTT client dropped: {e}");
                break None;
            }
        };
        if packet.kind() == packets::CONNECT {
            // A second CONNECT is a protocol violation (MQTT 3.1.1 3.1.0-2, MQTT 5 3.1.0).
            tracing::debug!(%peer, user = %identity.user, "second MQTT CONNECT on one connection; disconnecting");
            break Some(packets::reason::PROTOCOL_ERROR);
        }
        if packet.kind() == packets::PUBREL
            && let Some(pkid) = packets::packet_id(&packet.body)
            && refused_qos2.remove(&pkid)
        {
            if wr
                .lock()
                .await
                .write_all(&packets::pubcomp(pkid))
                .await
                .is_err()
            {
                break None;
            }
            continue;
        }
        if packet.kind() == PUBLISH {
            gate.stats.publish_received();
            let wait = bucket.take();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let publish = match packets::parse_publish(packet.first, &packet.body, info.level) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%peer, "malformed PUBLISH: {e}");
                    break None;
                }
            };
            // The topic this PUBLISH goes to: its own, or the one its MQTT 5 topic alias stands
            // for on this connection (the broker resolves the alias the same way).
            let topic = match publish.topic_alias {
                None => publish.topic,
                Some(alias) if alias == 0 || alias > packets::TOPIC_ALIAS_MAX => {
                    tracing::debug!(%peer, alias, "MQTT topic alias out of range; disconnecting");
                    break Some(packets::reason::TOPIC_ALIAS_INVALID);
                }
                Some(alias) if publish.topic.is_empty() => match aliases.get(&alias) {
                    Some(t) => t.as_str(),
                    None => {
                        tracing::debug!(%peer, alias, "MQTT topic alias never set on this connection; disconnecting");
                        break Some(packets::reason::PROTOCOL_ERROR);
                    }
                },
                Some(alias) => {
                    aliases.insert(alias, publish.topic.to_string());
                    publish.topic
                }
            };
            match gate.publish_decision(identity, topic) {
                Decision::Allow => {}
                Decision::Command(printer, kind) => {
                    // A redelivery (DUP) may be a command from before a reconnect: never
                    // execute it late (I3). Retained commands are not kept either.
                    if publish.dup {
                        tracing::info!(%peer, user = %identity.user, %topic, "duplicate MQTT command ignored");
                    } else {
                        gate.commands
                            .submit(printer, kind, publish.payload, &identity.user);
                    }
                    packet.first &= !0x01;
                }
                Decision::Deny if topic.starts_with('$') => {
                    // `$…` topics belong to the broker (`$SYS`) and the gateway: refused and
                    // answered as Mosquitto answers a denied publish, the connection stays.
                    tracing::debug!(%peer, user = %identity.user, %topic, "MQTT publish to a $ topic refused");
                    let pkid = publish.pkid.unwrap_or(0);
                    if publish.qos == 2 && info.level != 5 {
                        refused_qos2.insert(pkid);
                    }
                    if let Some(ack) = packets::publish_refused(info.level, publish.qos, pkid)
                        && wr.lock().await.write_all(&ack).await.is_err()
                    {
                        break None;
                    }
                    continue;
                }
                Decision::Deny => {
                    tracing::warn!(%peer, user = %identity.user, %topic, "MQTT publish not allowed for this user; disconnecting");
                    break Some(packets::reason::NOT_AUTHORIZED);
                }
            }
        }
        if packet.kind() == SUBSCRIBE && identity.scope.is_some() {
            let allowed = packets::parse_subscribe(&packet.body, info.level).map(|filters| {
                filters
                    .into_iter()
                    .find(|f| !acl::may_subscribe(identity.scope.as_deref(), f))
                    .map(str::to_string)
            });
            match allowed {
                Ok(None) => {}
                Ok(Some(filter)) => {
                    tracing::warn!(%peer, user = %identity.user, %filter, "MQTT subscription outside this printer's topics; disconnecting");
                    break Some(packets::reason::NOT_AUTHORIZED);
                }
                Err(e) => {
                    tracing::debug!(%peer, "malformed SUBSCRIBE: {e}");
                    break None;
                }
            }
        }
        if up_wr.write_all(&packet.encode()).await.is_err() {
            break None;
        }
    };
    // Closing our half makes rumqttd end the session; the reader then ends too.
    let _ = up_wr.shutdown().await;
    if !broker_ended
        && tokio::time::timeout(Duration::from_secs(2), &mut down)
            .await
            .is_err()
    {
        down.abort();
    }
    let mut wr = wr.lock().await;
    if let Some(bytes) = denied.and_then(|reason| packets::disconnect(info.level, reason)) {
        let _ = wr.write_all(&bytes).await;
    }
    let _ = wr.shutdown().await;
}

/// How much larger than a client's packet limit a packet from the embedded broker may be (it
/// adds properties such as subscription identifiers to what it forwards).
const DOWN_SLACK: usize = 64 * 1024;

/// The client id printgate gives a client inside the embedded broker: `c-`, a short hash of
/// the signed-in user, and the client's own id — so no client can take over the gateway's own
/// session, and a client of one user cannot take over the session of another user's client
/// that happens to use the same id (the same user reconnecting with its id still replaces its
/// old session, as MQTT wants). rumqttd refuses ids with characters such as `/` by dropping
/// the connection (and was seen disturbing other sessions when it did), so anything outside
/// `[A-Za-z0-9_.-]` is replaced and a short hash of the original keeps distinct ids distinct;
/// over-long ids are shortened the same way.
pub fn internal_client_id(user: &str, requested: &str) -> String {
    use sha2::Digest;
    let owner = hex::encode(&sha2::Sha256::digest(user.as_bytes())[..3]);
    format!("c-{owner}-{}", client_id_part(requested))
}

/// The client id printgate gives a client that connected with an empty one (MQTT 5: returned
/// to it as Assigned Client Identifier, so it can resume its session with it).
fn assigned_client_id() -> String {
    format!("anon-{}", hex::encode(rand::random::<[u8; 8]>()))
}

fn client_id_part(requested: &str) -> String {
    const MAX: usize = 56;
    if requested.is_empty() {
        return assigned_client_id();
    }
    let clean: String = requested
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX)
        .collect();
    if clean == requested {
        clean
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(requested.as_bytes());
        format!("{clean}-{}", hex::encode(&digest[..4]))
    }
}

#[cfg(test)]
mod client_id_tests {
    use super::internal_client_id;

    #[test]
    fn plain_ids_are_kept_and_others_made_safe_and_distinct() {
        let ha = internal_client_id("ha", "homeassistant");
        assert!(
            ha.starts_with("c-") && ha.ends_with("-homeassistant"),
            "{ha}"
        );
        assert_eq!(ha, internal_client_id("ha", "homeassistant"));
        assert_ne!(
            ha,
            internal_client_id("phone", "homeassistant"),
            "another user's client never takes over this session"
        );
        let a = internal_client_id("u", "bench/pub-1");
        let b = internal_client_id("u", "bench_pub-1");
        assert!(a.contains("-bench_pub-1-"), "{a}");
        assert!(b.ends_with("-bench_pub-1"), "{b}");
        assert_ne!(a, b, "sanitising never merges two clients' sessions");
        let long = internal_client_id("u", &"x".repeat(500));
        assert!(long.len() < 80, "{long}");
        assert!(internal_client_id("u", "").contains("-anon-"));
        for id in [a, long] {
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            );
        }
    }
}
