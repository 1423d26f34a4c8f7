//! Counters of the MQTT side, read by the metrics endpoint: clients logged in through the front
//! door, PUBLISH packets clients sent, logins refused, what the gateway's own client
//! published, and the broker worker process (up, restarts). Plain atomics; counting never
//! blocks a session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct BrokerStats {
    clients: AtomicU64,
    received: AtomicU64,
    refused_logins: AtomicU64,
    published: AtomicU64,
    connected: AtomicBool,
    connects: AtomicU64,
    has_worker: AtomicBool,
    worker_up: AtomicBool,
    worker_restarts: AtomicU64,
}

/// One reading of every counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStatsSnapshot {
    /// Clients logged in through the embedded broker's front door now.
    pub clients: u64,
    /// PUBLISH packets received from those clients.
    pub received: u64,
    /// CONNECTs refused (bad credentials, no access).
    pub refused_logins: u64,
    /// Messages the gateway's own client handed to the broker (embedded or external).
    pub published: u64,
    /// The gateway's own client is connected to the broker.
    pub connected: bool,
    /// Times the gateway's own client (re)connected.
    pub connects: u64,
    /// The embedded broker's worker process: `Some(up)` when the broker runs in one.
    pub worker_up: Option<bool>,
    /// Broker workers started after the first one (crashed or hung ones replaced).
    pub worker_restarts: u64,
}

impl BrokerStats {
    pub fn client_connected(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
    }
    pub fn client_disconnected(&self) {
        let _ = self
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
    pub fn publish_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
    pub fn login_refused(&self) {
        self.refused_logins.fetch_add(1, Ordering::Relaxed);
    }
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_connected(&self, up: bool) {
        if up && !self.connected.swap(true, Ordering::Relaxed) {
            self.connects.fetch_add(1, Ordering::Relaxed);
        } else if !up {
            self.connected.store(false, Ordering::Relaxed);
        }
    }
    /// The broker worker is running (`up`) after `restarts` restarts.
    pub fn set_worker(&self, up: bool, restarts: u64) {
        self.has_worker.store(true, Ordering::Relaxed);
        self.worker_up.store(up, Ordering::Relaxed);
        self.worker_restarts.store(restarts, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> BrokerStatsSnapshot {
        BrokerStatsSnapshot {
            clients: self.clients.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            refused_logins: self.refused_logins.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            worker_up: self
                .has_worker
                .load(Ordering::Relaxed)
                .then(|| self.worker_up.load(Ordering::Relaxed)),
            worker_restarts: self.worker_restarts.load(Ordering::Relaxed),
        }
    }
}

/// Decrements the client count when a logged-in session ends, however it ends.
pub struct ClientGuard(pub std::sync::Arc<BrokerStats>);

impl ClientGuard {
    pub fn new(stats: std::sync::Arc<BrokerStats>) -> Self {
        stats.client_connected();
        ClientGuard(stats)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.client_disconnected();
    }
}
