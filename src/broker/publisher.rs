//! The gateway's own MQTT client: publishes the retained tree (state, availability, discovery)
//! and transient messages (events, command results) to the embedded broker (over loopback with
//! the internal credentials) or to an external broker, and — in external mode — receives
//! `cmd/*`. Same code for both modes.
//!
//! Every connection is a fresh clean session (I3): nothing queued before a disconnect is sent
//! after it, transient messages produced while disconnected are dropped, retained commands and
//! redeliveries (DUP) are never executed. The retained tree is kept here and republished in full
//! after every reconnect, so a broker restart loses nothing (a restarted broker worker,
//! [`crate::broker::supervisor`], is followed at once). The gateway's will sets
//! `printgate/availability` to `offline`.

use crate::broker::commands::CommandRouter;
use crate::broker::stats::BrokerStats;
use crate::broker::supervisor::WorkerStatus;
use crate::broker::topics::{self, OFFLINE, ONLINE};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Transient messages kept while connected and the broker is slow.
const TRANSIENT_MAX: usize = 512;

#[derive(Default)]
struct Inner {
    retained: BTreeMap<String, Vec<u8>>,
    dirty: BTreeSet<String>,
    transient: VecDeque<(String, Vec<u8>)>,
    connected: bool,
}

/// What the gateway wants on the broker. Cheap to share.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    stats: Arc<BrokerStats>,
}

impl Outbox {
    /// The MQTT side's counters (what this client published, whether it is connected).
    pub fn stats(&self) -> Arc<BrokerStats> {
        self.stats.clone()
    }

    /// Set a retained topic (an empty payload deletes it on the broker). Unchanged values are
    /// not republished.
    pub fn set_retained(&self, topic: String, payload: Vec<u8>) {
        if let Ok(mut i) = self.inner.lock() {
            if i.retained.get(&topic) == Some(&payload) {
                return;
            }
            i.dirty.insert(topic.clone());
            i.retained.insert(topic, payload);
        }
        self.notify.notify_one();
    }

    /// Publish once, not retained; dropped when not connected.
    pub fn send(&self, topic: String, payload: Vec<u8>) {
        if let Ok(mut i) = self.inner.lock() {
            if !i.connected || i.transient.len() >= TRANSIENT_MAX {
                return;
            }
            i.transient.push_back((topic, payload));
        }
        self.notify.notify_one();
    }

    fn connected(&self, up: bool) {
        self.stats.set_connected(up);
        if let Ok(mut i) = self.inner.lock() {
            i.connected = up;
            i.transient.clear();
            if up {
                i.dirty = i.retained.keys().cloned().collect();
            }
        }
    }

    fn mark_dirty_with_prefix(&self, prefix: &str) {
        if let Ok(mut i) = self.inner.lock() {
            let topics: Vec<String> = i
                .retained
                .keys()
                .filter(|t| t.starts_with(prefix))
                .cloned()
                .collect();
            i.dirty.extend(topics);
        }
        self.notify.notify_one();
    }

    /// Hand as much as the client's queue takes; the rest stays pending.
    fn flush(&self, client: &AsyncClient) {
        let Ok(mut i) = self.inner.lock() else { return };
        while let Some((topic, payload)) = i.transient.pop_front() {
            if client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .is_err()
            {
                i.transient.push_front((topic, payload));
                return;
            }
            self.stats.published();
        }
        while let Some(topic) = i.dirty.pop_first() {
            let payload = i.retained.get(&topic).cloned().unwrap_or_default();
            if client
                .try_publish(topic.clone(), QoS::AtLeastOnce, true, payload)
                .is_err()
            {
                i.dirty.insert(topic);
                return;
            }
            self.stats.published();
        }
    }

    fn pending(&self) -> bool {
        self.inner
            .lock()
            .map(|i| !i.dirty.is_empty() || !i.transient.is_empty())
            .unwrap_or(false)
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    /// External mode: commands come from this broker (embedded mode: from the front door).
    pub receive_commands: bool,
    /// Home Assistant discovery prefix (its `…/status` birth message triggers a republish).
    pub discovery_prefix: String,
    /// The gateway's topic tree (its will, its command topics).
    pub tree: topics::Tree,
    /// In a fleet: the other gateways' retained state, for the fleet page.
    pub fleet: Option<Arc<crate::broker::fleet::FleetView>>,
    /// Embedded broker in a worker process: its status, so a reconnect follows a restarted
    /// worker at once instead of at the end of the back-off.
    pub broker_worker: Option<watch::Receiver<WorkerStatus>>,
}

fn options(t: &Target) -> MqttOptions {
    let mut o = MqttOptions::new(t.client_id.clone(), t.host.clone(), t.port);
    o.set_clean_session(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    o.set_last_will(LastWill::new(
        t.tree.gateway_availability(),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(u) = &t.username {
        o.set_credentials(u.clone(), t.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &t.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    o
}

/// Connection state, for tests and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherState {
    Connecting,
    Connected { epoch: u64 },
}

/// Run until `shutdown`; on shutdown publish `offline` and disconnect cleanly.
pub async fn run(
    target: Target,
    outbox: Arc<Outbox>,
    commands: CommandRouter,
    state: watch::Sender<PublisherState>,
    shutdown: CancellationToken,
) {
    outbox.set_retained(target.tree.gateway_availability(), ONLINE.into());
    let mut backoff = Duration::from_millis(500);
    let mut epoch = 0u64;
    let mut broker_worker = target.broker_worker.clone();
    // The broker worker generation this client last connected to (at first: the one running
    // now, so only a worker started later cuts a back-off short).
    let mut connected_generation = broker_worker.as_ref().map_or(0, |w| w.borrow().generation);
    loop {
        let (client, mut eventloop) = AsyncClient::new(options(&target), 64);
        let mut up = false;
        let ended_by_shutdown = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break true,
                _ = outbox.notify.notified(), if up => outbox.flush(&client),
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                        up = true;
                        epoch += 1;
                        if let Some(w) = &broker_worker {
                            connected_generation = w.borrow().generation;
                        }
                        backoff = Duration::from_millis(500);
                        outbox.connected(true);
                        let _ = client.try_subscribe(format!("{}/status", target.discovery_prefix), QoS::AtLeastOnce);
                        if target.receive_commands {
                            let _ = client.try_subscribe(target.tree.cmd_filter(), QoS::AtLeastOnce);
                        }
                        if let Some(fleet) = &target.fleet {
                            fleet.clear();
                            for f in target.tree.fleet_filters() {
                                let _ = client.try_subscribe(f, QoS::AtMostOnce);
                            }
                        }
                        outbox.flush(&client);
                        state.send_replace(PublisherState::Connected { epoch });
                        tracing::info!(host = %target.host, port = target.port, "connected to the MQTT broker");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == format!("{}/status", target.discovery_prefix) {
                            if p.payload.as_ref() == b"online" {
                                outbox.mark_dirty_with_prefix(&format!("{}/", target.discovery_prefix));
                            }
                        } else if let Some((printer, kind)) = target.tree.parse_cmd_topic(&p.topic) {
                            if !target.receive_commands || p.retain || p.dup {
                                tracing::info!(topic = %p.topic, retain = p.retain, dup = p.dup, "MQTT command ignored (retained or redelivered: never executed late)");
                            } else {
                                commands.submit(printer, kind, &p.payload, "external");
                            }
                        } else if let Some(fleet) = &target.fleet {
                            fleet.observe(&p.topic, &p.payload);
                        }
                        if outbox.pending() { outbox.flush(&client); }
                    }
                    Ok(_) => if up && outbox.pending() { outbox.flush(&client) },
                    Err(e) => {
                        tracing::warn!(host = %target.host, port = target.port, "MQTT broker connection lost: {e}; reconnecting with a fresh session");
                        break false;
                    }
                },
            }
        };
        outbox.connected(false);
        state.send_replace(PublisherState::Connecting);
        if ended_by_shutdown {
            if up {
                let _ = client.try_publish(
                    target.tree.gateway_availability(),
                    QoS::AtLeastOnce,
                    true,
                    OFFLINE,
                );
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            }
            return;
        }
        drop(client);
        drop(eventloop);
        let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 250));
        // A new broker worker that became ready ends the wait early (once per worker).
        let restarted = async {
            match &mut broker_worker {
                Some(w) => {
                    if w.wait_for(|s| s.up && s.generation > connected_generation)
                        .await
                        .is_err()
                    {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = restarted => {
                tracing::info!("a new MQTT broker worker is ready; connecting to it now");
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
