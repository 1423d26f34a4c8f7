//! Pure input debouncing shared by every GPIO backend, driven by explicit timestamps so it can be
//! tested exactly.
//!
//! Rule: a new level counts only after the input has stayed at it, without any edge back, for the
//! whole debounce period. A glitch shorter than the period therefore never counts, however many of
//! them arrive; a real change counts exactly one period after its last bounce. This is the same
//! rule the Linux GPIO character device applies to `debounce_period_us`; printgate applies it in
//! software on every backend so the simulated GPIO behaves exactly like the Pi.

/// Electrical level of a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Low,
    High,
}

impl Level {
    pub fn from_high(high: bool) -> Level {
        if high { Level::High } else { Level::Low }
    }
    pub fn is_high(self) -> bool {
        self == Level::High
    }
    pub fn inverted(self) -> Level {
        match self {
            Level::Low => Level::High,
            Level::High => Level::Low,
        }
    }
}

/// Debounce state machine of one input. Times are microseconds on any monotonic clock.
#[derive(Debug, Clone)]
pub struct Debouncer {
    period_us: u64,
    stable: Level,
    /// A level seen since `.1` that differs from `stable` and has not been contradicted.
    candidate: Option<(Level, u64)>,
}

impl Debouncer {
    pub fn new(initial: Level, period_us: u64) -> Debouncer {
        Debouncer {
            period_us,
            stable: initial,
            candidate: None,
        }
    }

    /// The debounced (accepted) level.
    pub fn stable(&self) -> Level {
        self.stable
    }

    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// An edge (or a level sample) at `at_us`. Returns the new stable level when it is accepted
    /// immediately (only with a zero period).
    pub fn edge(&mut self, level: Level, at_us: u64) -> Option<Level> {
        if level == self.stable {
            // Back to the accepted level before the period ran out: that was a glitch.
            self.candidate = None;
            return None;
        }
        match self.candidate {
            // Repeated report of the same pending level keeps the original start.
            Some((l, _)) if l == level => {}
            _ => self.candidate = Some((level, at_us)),
        }
        self.poll(at_us)
    }

    /// Accept the pending level if it has been stable for the period at `now_us`.
    pub fn poll(&mut self, now_us: u64) -> Option<Level> {
        let (level, since) = self.candidate?;
        if now_us.saturating_sub(since) >= self.period_us {
            self.stable = level;
            self.candidate = None;
            Some(level)
        } else {
            None
        }
    }

    /// When [`Debouncer::poll`] will accept the pending level, if one is pending.
    pub fn deadline(&self) -> Option<u64> {
        self.candidate
            .map(|(_, since)| since.saturating_add(self.period_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glitch_is_ignored_and_real_change_accepted_after_period() {
        let mut d = Debouncer::new(Level::High, 1000);
        assert_eq!(d.edge(Level::Low, 0), None);
        assert_eq!(d.deadline(), Some(1000));
        assert_eq!(d.edge(Level::High, 999), None);
        assert_eq!(d.poll(5000), None);
        assert_eq!(d.stable(), Level::High);
        assert_eq!(d.edge(Level::Low, 6000), None);
        assert_eq!(d.poll(6999), None);
        assert_eq!(d.poll(7000), Some(Level::Low));
        assert_eq!(d.stable(), Level::Low);
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn zero_period_accepts_at_once() {
        let mut d = Debouncer::new(Level::Low, 0);
        assert_eq!(d.edge(Level::High, 10), Some(Level::High));
        assert_eq!(d.edge(Level::High, 11), None);
        assert_eq!(d.edge(Level::Low, 12), Some(Level::Low));
    }

    #[test]
    fn duplicate_edges_keep_the_first_start() {
        let mut d = Debouncer::new(Level::High, 100);
        d.edge(Level::Low, 0);
        d.edge(Level::Low, 90);
        assert_eq!(d.poll(100), Some(Level::Low));
    }
}
