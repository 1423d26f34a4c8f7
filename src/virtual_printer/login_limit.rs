//! Failed logins to a virtual printer, counted per client address: after
//! [`MAX_FAILURES`] wrong access codes within [`WINDOW`], every login from that address is
//! refused (even with the right code) until [`LOCKOUT`] has passed, so an eight-digit code cannot
//! be guessed at network speed. Pure: the caller passes the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Addresses remembered at most (a flood of addresses cannot grow the table without bound).
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    first_at: Instant,
    locked_until: Option<Instant>,
}

/// What the limiter says about a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the access code.
    Check,
    /// Refuse without checking, for this long still.
    Locked(Duration),
}

#[derive(Debug, Default)]
pub struct LoginLimiter {
    by_addr: HashMap<IpAddr, Record>,
}

impl LoginLimiter {
    pub fn verdict(&self, addr: IpAddr, now: Instant) -> Verdict {
        match self.by_addr.get(&addr).and_then(|r| r.locked_until) {
            Some(until) if until > now => Verdict::Locked(until - now),
            _ => Verdict::Check,
        }
    }

    /// A wrong access code from `addr`.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        if self.by_addr.len() >= MAX_TRACKED && !self.by_addr.contains_key(&addr) {
            self.by_addr.retain(|_, r| {
                r.locked_until.is_some_and(|u| u > now) || now.duration_since(r.first_at) < WINDOW
            });
            if self.by_addr.len() >= MAX_TRACKED {
                // Still full of live entries: count this address with the oldest one's slot.
                if let Some(oldest) = self
                    .by_addr
                    .iter()
                    .min_by_key(|(_, r)| r.first_at)
                    .map(|(a, _)| *a)
                {
                    self.by_addr.remove(&oldest);
                }
            }
        }
        let r = self.by_addr.entry(addr).or_insert(Record {
            failures: 0,
            first_at: now,
            locked_until: None,
        });
        let expired_lock = r.locked_until.is_some_and(|u| u <= now);
        if expired_lock || now.duration_since(r.first_at) >= WINDOW {
            *r = Record {
                failures: 0,
                first_at: now,
                locked_until: None,
            };
        }
        r.failures += 1;
        if r.failures >= MAX_FAILURES {
            r.locked_until = Some(now + LOCKOUT);
        }
    }

    /// A good login from `addr` clears its failures.
    pub fn succeeded(&mut self, addr: IpAddr) {
        self.by_addr.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 168, 1, n])
    }

    #[test]
    fn five_failures_lock_the_address_out_for_a_minute_and_no_one_else() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for k in 0..MAX_FAILURES {
            assert_eq!(l.verdict(ip(1), t0), Verdict::Check, "attempt {k}");
            l.failed(ip(1), t0 + Duration::from_secs(u64::from(k)));
        }
        let t = t0 + Duration::from_secs(5);
        assert!(matches!(l.verdict(ip(1), t), Verdict::Locked(_)));
        assert_eq!(
            l.verdict(ip(2), t),
            Verdict::Check,
            "other clients unaffected"
        );
        let after = t0 + Duration::from_secs(4) + LOCKOUT;
        assert_eq!(l.verdict(ip(1), after), Verdict::Check);
        // A new failure after the lockout starts counting again.
        l.failed(ip(1), after);
        assert_eq!(l.verdict(ip(1), after), Verdict::Check);
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_lock() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for k in 0..10u64 {
            l.failed(ip(1), t0 + WINDOW.mul_f64(0.3) * u32::try_from(k).unwrap());
            assert_eq!(
                l.verdict(ip(1), t0 + WINDOW.mul_f64(0.3) * u32::try_from(k).unwrap()),
                Verdict::Check
            );
        }
    }

    #[test]
    fn a_good_login_clears_the_count_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = LoginLimiter::default();
        for _ in 0..MAX_FAILURES - 1 {
            l.failed(ip(1), t0);
        }
        l.succeeded(ip(1));
        l.failed(ip(1), t0);
        assert_eq!(l.verdict(ip(1), t0), Verdict::Check);
        for n in 0..(MAX_TRACKED as u32 + 100) {
            l.failed(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert!(l.by_addr.len() <= MAX_TRACKED);
    }
}
