//! Connections that have not proven themselves yet: MQTT clients before their login, web
//! connections before their first complete request head. Each such connection holds a
//! [`Ticket`] from accept until it has logged in (or sent its request), closes, or misses its
//! deadline. Tickets are limited per source address and in total, apart from the slots of
//! clients that have logged in, so a flood of sockets that never log in can take neither a
//! logged-in client's slot nor every place in the queue for logging in: a client from another
//! address always gets in.
//!
//! Refusals and time-outs are not logged one line per socket (a flood would write thousands a
//! second): they are counted per address and [`Admission::log_summaries`] writes one warning
//! per interval with the counts. [`http`] is the HTTP accept loop that hands out these tickets,
//! shared by the web interface and MQTT over WebSocket.

pub mod http;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the counts of refused and timed-out connections are logged (when there are any).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Addresses counted separately in one summary interval; more are counted together.
const MAX_TALLIED_ADDRESSES: usize = 256;
/// Addresses named in one summary line (those with the most events first).
const NAMED_IN_SUMMARY: usize = 5;

/// What happened to a connection that had not logged in yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused: its address already had the most connections allowed that have not logged in.
    RefusedPerAddress,
    /// Refused: the whole budget of connections that have not logged in was in use.
    RefusedTotal,
    /// Closed: it did not log in (or send its request) before its deadline.
    TimedOut,
    /// Refused after its login: every slot for logged-in clients was taken.
    RefusedFull,
}

/// Limits and the words the summary uses for them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `"MQTT"`, `"web"`: starts the summary line.
    pub what: &'static str,
    /// What a connection has not done yet: `"before login"`, `"before a complete request"`.
    pub before: &'static str,
    /// Connections not yet logged in from one address.
    pub per_address: usize,
    /// Connections not yet logged in, from all addresses together.
    pub total: usize,
    /// Time from accept to login.
    pub deadline: Duration,
    /// Where the limits are set, for the summary line (e.g. `"[broker.limits]"`).
    pub settings: &'static str,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    per_address: u64,
    total: u64,
    timed_out: u64,
    full: u64,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        let n = match outcome {
            Outcome::RefusedPerAddress => &mut self.per_address,
            Outcome::RefusedTotal => &mut self.total,
            Outcome::TimedOut => &mut self.timed_out,
            Outcome::RefusedFull => &mut self.full,
        };
        *n = n.saturating_add(1);
    }
    fn sum(&self) -> u64 {
        self.per_address
            .saturating_add(self.total)
            .saturating_add(self.timed_out)
            .saturating_add(self.full)
    }
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<IpAddr, usize>,
    pending_total: usize,
    tally: HashMap<IpAddr, Tally>,
    /// Events of addresses beyond [`MAX_TALLIED_ADDRESSES`] in this interval.
    others: Tally,
}

/// The budget of connections that have not logged in yet, for one kind of listener.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

/// A place in the budget of connections that have not logged in. Dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
    /// The connection must have logged in by then.
    pub deadline: Instant,
}

impl Ticket {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Count that this connection missed its deadline (the caller closes it).
    pub fn timed_out(&self) {
        self.admission.note(self.ip, Outcome::TimedOut);
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.admission.lock();
        s.pending_total = s.pending_total.saturating_sub(1);
        if let Some(n) = s.pending.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.pending.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every early exit; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `ip`, or `None` (counted for the summary) when its
    /// address or the whole budget is at its limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let refused = {
            let mut s = self.lock();
            let from_ip = s.pending.get(&ip).copied().unwrap_or(0);
            if from_ip >= self.limits.per_address {
                Some(Outcome::RefusedPerAddress)
            } else if s.pending_total >= self.limits.total {
                Some(Outcome::RefusedTotal)
            } else {
                s.pending.insert(ip, from_ip + 1);
                s.pending_total += 1;
                None
            }
        };
        match refused {
            Some(outcome) => {
                self.note(ip, outcome);
                None
            }
            None => Some(Ticket {
                admission: self.clone(),
                ip,
                deadline: Instant::now() + self.limits.deadline,
            }),
        }
    }

    /// Count an event for the next summary.
    pub fn note(&self, ip: IpAddr, outcome: Outcome) {
        let mut s = self.lock();
        if s.tally.len() < MAX_TALLIED_ADDRESSES || s.tally.contains_key(&ip) {
            s.tally.entry(ip).or_default().add(outcome);
        } else {
            s.others.add(outcome);
        }
    }

    /// Connections from `ip` that hold a ticket now.
    pub fn pending_from(&self, ip: IpAddr) -> usize {
        self.lock().pending.get(&ip).copied().unwrap_or(0)
    }

    /// The summary of the events counted since the last call (and forget them), if any.
    pub fn take_summary(&self, interval: Duration) -> Option<String> {
        let (tally, others) = {
            let mut s = self.lock();
            (std::mem::take(&mut s.tally), std::mem::take(&mut s.others))
        };
        if tally.is_empty() && others.sum() == 0 {
            return None;
        }
        let mut rows: Vec<(IpAddr, Tally)> = tally.into_iter().collect();
        rows.sort_by(|a, b| b.1.sum().cmp(&a.1.sum()).then(a.0.cmp(&b.0)));
        let l = &self.limits;
        let mut line = format!(
            "{} connections refused or closed {} in the last {} s",
            l.what,
            l.before,
            interval.as_secs()
        );
        for (ip, t) in rows.iter().take(NAMED_IN_SUMMARY) {
            let _ = write!(line, "; {ip}: {}", self.describe(t));
        }
        let rest = rows
            .iter()
            .skip(NAMED_IN_SUMMARY)
            .fold(others, |mut acc, (_, t)| {
                acc.per_address = acc.per_address.saturating_add(t.per_address);
                acc.total = acc.total.saturating_add(t.total);
                acc.timed_out = acc.timed_out.saturating_add(t.timed_out);
                acc.full = acc.full.saturating_add(t.full);
                acc
            });
        if rest.sum() > 0 {
            let _ = write!(line, "; other addresses: {}", self.describe(&rest));
        }
        let _ = write!(
            line,
            " (limits: {} waiting per address, {} in all, {} ms each; see {})",
            l.per_address,
            l.total,
            l.deadline.as_millis(),
            l.settings
        );
        Some(line)
    }

    fn describe(&self, t: &Tally) -> String {
        let parts = [
            (
                t.per_address,
                "refused (too many waiting from this address)",
            ),
            (t.total, "refused (too many waiting in all)"),
            (t.timed_out, "timed out"),
            (t.full, "refused after login (all connection slots taken)"),
        ];
        let said: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        said.join(", ")
    }

    /// Log one summary line per [`SUMMARY_EVERY`] while there is something to say, until
    /// `shutdown` (then the last counts are logged too).
    pub async fn log_summaries(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval_at(Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Some(line) = self.take_summary(SUMMARY_EVERY) {
                tracing::warn!("{line}");
            }
            if stop {
                return;
            }
        }
    }
}

/// Connections the kernel completes before printgate accepts them. The default of Rust and
/// tokio (128) overflows under a burst of a few hundred sockets; the kernel then drops the
/// handshakes of everyone, valid clients included, who retry only after a second or more. The
/// kernel caps it at `net.core.somaxconn` (4096 on current Linux).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Listen on `addr` with [`LISTEN_BACKLOG`] (for every listener that faces the LAN).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_address: usize, total: usize) -> Arc<Admission> {
        Admission::new(Limits {
            what: "MQTT",
            before: "before login",
            per_address,
            total,
            deadline: Duration::from_secs(5),
            settings: "[broker.limits]",
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 168, 1, last])
    }

    #[tokio::test]
    async fn limits_per_address_and_in_total_and_frees_on_drop() {
        let a = admission(2, 3);
        let t1 = a.admit(ip(1)).expect("first");
        let _t2 = a.admit(ip(1)).expect("second");
        assert!(a.admit(ip(1)).is_none(), "third from one address");
        let _t3 = a.admit(ip(2)).expect("another address");
        assert!(a.admit(ip(3)).is_none(), "budget in all");
        drop(t1);
        assert_eq!(a.pending_from(ip(1)), 1);
        let _t4 = a.admit(ip(3)).expect("a freed place");
        let line = a.take_summary(SUMMARY_EVERY).expect("events");
        assert!(
            line.contains("192.168.1.1: 1 refused (too many waiting from this address)"),
            "{line}"
        );
        assert!(
            line.contains("192.168.1.3: 1 refused (too many waiting in all)"),
            "{line}"
        );
        assert!(a.take_summary(SUMMARY_EVERY).is_none(), "counts are reset");
    }

    #[tokio::test]
    async fn summary_names_the_busiest_addresses_and_sums_the_rest() {
        let a = admission(1, 1000);
        for last in 1..=20u8 {
            for _ in 0..last {
                a.note(ip(last), Outcome::TimedOut);
            }
        }
        let line = a.take_summary(SUMMARY_EVERY).expect("events");
        assert!(line.starts_with("MQTT connections refused"), "{line}");
        assert!(line.contains("192.168.1.20: 20 timed out"), "{line}");
        assert!(!line.contains("192.168.1.1:"), "{line}");
        // 1 + 2 + … + 15
        assert!(line.contains("other addresses: 120 timed out"), "{line}");
    }
}
