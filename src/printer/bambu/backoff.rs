//! Reconnect backoff (docs/bambu-protocol.md §2.6, invariant I8): exponential from a minimum to a cap with
//! ±20 % jitter, plus detection of the "accepted, then dropped within seconds" pattern that a
//! second local MQTT client on a P1/A1 causes. Pure apart from the random jitter.

use rand::Rng;
use std::time::Duration;

/// A connection that was accepted and dropped before this long counts as "short".
pub const SHORT_SESSION: Duration = Duration::from_secs(10);
/// This many short sessions in a row mean "another client is kicking us": back off hard.
pub const SHORT_SESSION_LIMIT: u32 = 3;
/// Hard backoff = this × the normal cap.
pub const HARD_BACKOFF_FACTOR: u32 = 4;

/// ±20 % around `d`.
pub fn jitter(d: Duration) -> Duration {
    let factor: f64 = rand::rng().random_range(0.8..=1.2);
    d.mul_f64(factor)
}

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    short_sessions: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Self {
            min,
            max,
            current: min,
            short_sessions: 0,
        }
    }

    /// The next delay (jittered); the base doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = jitter(self.current);
        self.current = (self.current * 2).min(self.max);
        d
    }

    /// Start again from the minimum (after a healthy session).
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// Record how long an accepted connection lasted. Returns true when the pattern of short
    /// sessions says "back off hard" (see [`Backoff::hard_delay`]).
    pub fn session_ended(&mut self, uptime: Duration) -> bool {
        if uptime >= SHORT_SESSION {
            self.short_sessions = 0;
            self.reset();
            false
        } else {
            self.short_sessions += 1;
            self.short_sessions >= SHORT_SESSION_LIMIT
        }
    }

    /// Short sessions in a row so far.
    pub fn short_sessions(&self) -> u32 {
        self.short_sessions
    }

    /// The delay after repeated short sessions: [`HARD_BACKOFF_FACTOR`] × the cap, jittered.
    pub fn hard_delay(&self) -> Duration {
        jitter(self.max * HARD_BACKOFF_FACTOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_millis(30_000));
        let bases = [1000u64, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000];
        for base in bases {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= base * 8 / 10 && d <= base * 12 / 10, "{d} vs {base}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn repeated_short_sessions_trigger_hard_backoff() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert!(!b.session_ended(Duration::from_secs(1)));
        assert!(!b.session_ended(Duration::from_secs(2)));
        assert!(b.session_ended(Duration::from_secs(1)));
        let hard = b.hard_delay();
        assert!(hard >= Duration::from_millis(6400) && hard <= Duration::from_millis(9600));
        assert!(
            !b.session_ended(Duration::from_secs(60)),
            "a long session resets"
        );
        assert_eq!(b.short_sessions(), 0);
    }
}
