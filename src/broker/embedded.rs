//! The embedded rumqttd broker. rumqttd does the routing, retained messages, QoS and wills; it
//! listens only on 127.0.0.1 (an MQTT 3.1.1 and an MQTT 5 port) and accepts only printgate's
//! internal credentials, so every outside client has to come through printgate's front door
//! ([`crate::broker::gate`]), which authenticates users and applies the ACL.
//!
//! `printgate serve` and `printgate demo` run rumqttd in a child process
//! ([`crate::broker::worker`], watched and restarted by [`crate::broker::supervisor`]), so a
//! broker crash or hang never takes the safety path with it; [`start`] runs it on threads of
//! the calling process instead, for programs that use printgate as a library. rumqttd has no
//! shutdown: there its threads and loopback listeners live until the process exits.
//!
//! ## Queue limits (measured in `tests/broker_burst.rs`)
//!
//! rumqttd keeps one in-memory commit log per subscribed filter (all clients subscribed to the
//! same filter share it) and sends from it; it never waits for a slow subscriber. A subscriber
//! whose read position falls behind the oldest segment of that log loses the messages in
//! between without notice, QoS 1 included (a QoS 1 subscriber gets at most 100 unacknowledged
//! messages, the rest of a burst waits in the log). The realistic burst is Home Assistant
//! restarting: its birth message makes the gateway republish every discovery config (10
//! printers and the gateway: 175 messages of about 1 KiB) while the printers keep publishing
//! state (~1.5 KiB each), about 225 messages / 230 KiB, while Home Assistant, busy starting,
//! reads nothing.
//!
//! - Old limits, segments of 64 KiB × 2 (holds 64–128 KiB): 201 of those 225 messages arrived.
//! - Chosen: segments of [`SEGMENT_BYTES`] (64 KiB, or the packet limit if larger) ×
//!   [`SEGMENT_COUNT`] (8): every filter holds at least 7 × 64 KiB = 448 KiB of recent messages
//!   (twice the 10-printer burst; with ~20 printers the burst alone fills it) and at most
//!   512 KiB. Memory: payloads are shared between the logs of overlapping filters, so the
//!   broker holds about the last 512 KiB of the busiest filter plus, for each narrower filter,
//!   its own last 512 KiB (Home Assistant subscribes to each printer's `state` separately:
//!   10 printers printing ≈ 10 × 512 KiB after some minutes). Only traffic that was published
//!   is held; an idle gateway holds almost nothing.
//! - Retained messages sent on SUBSCRIBE: every matching retained message is sent, as the
//!   subscriber's inflight window (QoS 1: 100) or outgoing batch ([`MAX_OUTGOING_PACKETS`],
//!   QoS 0) allows; upstream rumqttd dropped the excess, the vendored copy
//!   (`vendor/rumqttd/PRINTGATE-PATCHES.md`) keeps it and sends it later.

use crate::broker::config::BrokerLimits;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

/// Size of one commit-log segment of a subscribed filter (at least the largest packet).
pub const SEGMENT_BYTES: usize = 64 * 1024;
/// Segments kept per subscribed filter: a slow subscriber may lag `SEGMENT_COUNT - 1` full
/// segments behind without losing messages.
pub const SEGMENT_COUNT: usize = 8;
/// Publishes rumqttd hands a QoS 0 subscriber at once (retained messages on SUBSCRIBE too; the
/// rest follow in later batches).
pub const MAX_OUTGOING_PACKETS: u64 = 1000;

/// Where the internal broker listens and how to log in to it.
#[derive(Clone)]
pub struct InternalBroker {
    pub v4: SocketAddr,
    pub v5: SocketAddr,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for InternalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalBroker")
            .field("v4", &self.v4)
            .field("v5", &self.v5)
            .finish_non_exhaustive()
    }
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    // rumqttd binds by address itself; take a free port from the OS and hand it over.
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

fn server(
    name: &str,
    listen: SocketAddr,
    limits: &BrokerLimits,
    user: &str,
    pw: &str,
) -> rumqttd::ServerSettings {
    rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: u16::try_from(limits.connect_timeout_ms).unwrap_or(u16::MAX),
            max_payload_size: limits.max_packet_bytes,
            max_inflight_count: limits.max_inflight,
            auth: Some(HashMap::from([(user.to_string(), pw.to_string())])),
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// rumqttd configuration: limits from `[broker.limits]`, commit-log segments sized for a Pi.
pub fn rumqttd_config(limits: &BrokerLimits, internal: &InternalBroker) -> rumqttd::Config {
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            // The gateway's own connection comes on top of the clients.
            max_connections: limits.max_connections + 4,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            // Each subscribed filter keeps up to count × size bytes of recent messages.
            max_segment_size: limits.max_packet_bytes.max(SEGMENT_BYTES),
            max_segment_count: SEGMENT_COUNT,
            ..Default::default()
        },
        v4: Some(HashMap::from([(
            "1".to_string(),
            server(
                "internal-v4",
                internal.v4,
                limits,
                &internal.username,
                &internal.password,
            ),
        )])),
        v5: Some(HashMap::from([(
            "1".to_string(),
            server(
                "internal-v5",
                internal.v5,
                limits,
                &internal.username,
                &internal.password,
            ),
        )])),
        ..Default::default()
    }
}

/// Two free loopback ports and a fresh random internal password.
pub fn new_internal() -> std::io::Result<InternalBroker> {
    Ok(InternalBroker {
        v4: free_loopback_port()?,
        v5: free_loopback_port()?,
        username: "printgate-internal".into(),
        password: hex::encode(rand::random::<[u8; 24]>()),
    })
}

/// Start rumqttd on threads of this process (when no broker worker executable is set,
/// [`crate::broker::worker::use_executable`]: a program using printgate as a library, most
/// tests), on two free loopback ports; returns once its MQTT 3.1.1 port accepts
/// connections (or fails after 5 s).
pub async fn start(limits: &BrokerLimits) -> anyhow::Result<InternalBroker> {
    let internal = new_internal()?;
    let config = rumqttd_config(limits, &internal);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })?;
    for addr in [internal.v4, internal.v5] {
        let ready = tokio::time::timeout(Duration::from_secs(5), async {
            // rumqttd binds in its own thread; poll until it accepts (bounded by the timeout).
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if ready.is_err() {
            anyhow::bail!(
                "the embedded MQTT broker did not start listening on {addr} within 5 s; see the log above for its error"
            );
        }
    }
    Ok(internal)
}
