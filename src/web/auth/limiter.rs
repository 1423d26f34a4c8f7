//! Sign-in rate limiting (pure, clock passed in): failures are counted per user name and per
//! client address; past a number of free failures each further failure locks that key for an
//! exponentially growing time. Unknown user names are counted exactly like known ones, so the
//! limiter reveals nothing about which accounts exist. Memory is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What is counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// A user name as typed, lower-cased.
    User(String),
    Ip(IpAddr),
}

impl LimitKey {
    pub fn user(name: &str) -> LimitKey {
        LimitKey::User(name.trim().to_lowercase())
    }
}

/// The numbers of the limiter.
#[derive(Debug, Clone)]
pub struct LimitPolicy {
    /// Failures per user name before the first lockout.
    pub free_failures_user: u32,
    /// Failures per client address before the first lockout (several people may share one).
    pub free_failures_ip: u32,
    /// First lockout; doubles with each further failure.
    pub base_lockout: Duration,
    pub max_lockout: Duration,
    /// A key with no failure for this long is forgotten.
    pub forget_after: Duration,
    /// Most keys remembered at once.
    pub max_entries: usize,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            free_failures_user: 5,
            free_failures_ip: 20,
            base_lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(60 * 60),
            max_entries: 4096,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    last_failure: Instant,
}

/// Failure counts and lockouts.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    policy: LimitPolicy,
    entries: HashMap<LimitKey, Entry>,
}

impl LoginLimiter {
    pub fn new(policy: LimitPolicy) -> LoginLimiter {
        LoginLimiter {
            policy,
            entries: HashMap::new(),
        }
    }

    /// How long the longest lockout among `keys` still lasts, if any.
    pub fn locked_for(&self, keys: &[LimitKey], now: Instant) -> Option<Duration> {
        keys.iter()
            .filter_map(|k| self.entries.get(k)?.locked_until)
            .filter_map(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
            .max()
    }

    /// Count a failed attempt for every key; returns the lockout now in force, if any.
    pub fn record_failure(&mut self, keys: &[LimitKey], now: Instant) -> Option<Duration> {
        self.prune(now);
        for key in keys {
            let free = match key {
                LimitKey::User(_) => self.policy.free_failures_user,
                LimitKey::Ip(_) => self.policy.free_failures_ip,
            };
            let lockout = |failures: u32| {
                let doublings = failures.saturating_sub(free).min(20);
                self.policy
                    .base_lockout
                    .saturating_mul(1u32 << doublings)
                    .min(self.policy.max_lockout)
            };
            let entry = self.entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                locked_until: None,
                last_failure: now,
            });
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            if entry.failures >= free {
                entry.locked_until = Some(now + lockout(entry.failures));
            }
        }
        self.locked_for(keys, now)
    }

    /// A successful sign-in clears the count of the user name (not of the address, so one known
    /// account cannot be used to reset the budget for guessing others).
    pub fn record_success(&mut self, user: &LimitKey) {
        self.entries.remove(user);
    }

    fn prune(&mut self, now: Instant) {
        let forget = self.policy.forget_after;
        self.entries.retain(|_, e| {
            let idle = now.saturating_duration_since(e.last_failure) < forget;
            let locked = e.locked_until.is_some_and(|u| u > now);
            idle || locked
        });
        while self.entries.len() >= self.policy.max_entries {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.entries.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// "30 seconds", "2 minutes", "1 minute 30 seconds".
pub fn describe_wait(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match (secs / 60, secs % 60) {
        (0, s) => plural(s, "second"),
        (m, 0) => plural(m, "minute"),
        (m, s) => format!("{} {}", plural(m, "minute"), plural(s, "second")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<LimitKey> {
        vec![
            LimitKey::user("Admin"),
            LimitKey::Ip(IpAddr::from([10, 0, 0, 2])),
        ]
    }

    #[test]
    fn five_failures_lock_and_lockouts_double() {
        let mut l = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(l.record_failure(&keys(), t0), None);
        }
        assert_eq!(l.locked_for(&keys(), t0), None);
        assert_eq!(l.record_failure(&keys(), t0), Some(Duration::from_secs(30)));
        assert_eq!(
            l.locked_for(&keys(), t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(l.locked_for(&keys(), t1), None);
        assert_eq!(l.record_failure(&keys(), t1), Some(Duration::from_secs(60)));
        // The user key is case-insensitive.
        assert!(l.locked_for(&[LimitKey::user("admin")], t1).is_some());
    }

    #[test]
    fn lockout_is_capped_and_success_clears_the_user() {
        let mut l = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..40 {
            l.record_failure(&keys(), t0);
        }
        assert_eq!(l.locked_for(&keys(), t0), Some(Duration::from_secs(900)));
        l.record_success(&LimitKey::user("admin"));
        assert!(l.locked_for(&[LimitKey::user("admin")], t0).is_none());
        // The address stays locked.
        assert!(l.locked_for(&keys(), t0).is_some());
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = LoginLimiter::new(LimitPolicy {
            max_entries: 10,
            ..LimitPolicy::default()
        });
        let t0 = Instant::now();
        for i in 0..100 {
            l.record_failure(&[LimitKey::user(&format!("u{i}"))], t0);
        }
        assert!(l.entries.len() <= 10);
    }

    #[test]
    fn waits_read_naturally() {
        assert_eq!(describe_wait(Duration::from_secs(30)), "30 seconds");
        assert_eq!(describe_wait(Duration::from_secs(60)), "1 minute");
        assert_eq!(
            describe_wait(Duration::from_millis(90_500)),
            "1 minute 31 seconds"
        );
    }
}
