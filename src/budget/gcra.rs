//! GCRA, the generic cell rate algorithm: a token bucket kept as one number per key, the
//! theoretical arrival time (TAT) of the next call. A call is granted when the TAT is at
//! most `(burst - 1)` intervals ahead of now; the grant moves the TAT one interval on. So
//! `burst` calls may go at once after a quiet spell, then one per interval: no one-second
//! window holds more than `rate + burst` calls.
//!
//! The same arithmetic runs here (one instance, or the fallback share) and, atomically, in
//! Redis for the whole group ([`super::redis`]). Times are microseconds.

use std::collections::HashMap;

/// One limit: calls per second, and how many may go at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Microseconds between calls (at least 1).
    pub fn interval_us(self) -> u64 {
        if self.per_second <= 0.0 {
            return u64::MAX / 4;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let us = (1_000_000.0 / self.per_second).ceil() as u64;
        us.max(1)
    }

    /// How far ahead of now the TAT may be for a grant: `(burst - 1)` intervals.
    pub fn slack_us(self) -> u64 {
        self.interval_us()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }

    /// This rate scaled by `share` (0..=1), burst included, never below one call.
    #[must_use]
    pub fn scaled(self, share: f64) -> Self {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let burst = (f64::from(self.burst) * share).floor() as u32;
        Self {
            per_second: (self.per_second * share).max(0.001),
            burst: burst.max(1),
        }
    }
}

/// Most keys kept locally; expired ones are dropped first when it is reached.
const MAX_KEYS: usize = 4096;

/// Local GCRA state: the TAT per key.
#[derive(Default)]
pub struct Gcra {
    tats: HashMap<String, u64>,
}

impl Gcra {
    /// Takes one call from every limit in `limits` at once, or none: `Err` is how long to
    /// wait before asking again.
    pub fn take(&mut self, limits: &[(&str, Rate)], now: u64) -> Result<(), u64> {
        let mut wait = 0;
        for (key, rate) in limits {
            let tat = self.tats.get(*key).copied().unwrap_or(now).max(now);
            wait = wait.max((tat - now).saturating_sub(rate.slack_us()));
        }
        if wait > 0 {
            return Err(wait);
        }
        if self.tats.len() + limits.len() > MAX_KEYS {
            self.tats.retain(|_, tat| *tat > now);
        }
        for (key, rate) in limits {
            let tat = self.tats.get(*key).copied().unwrap_or(now).max(now);
            let next = tat.saturating_add(rate.interval_us());
            let room = self.tats.len() < MAX_KEYS;
            match self.tats.get_mut(*key) {
                Some(stored) => *stored = next,
                None if room => {
                    self.tats.insert((*key).to_owned(), next);
                }
                // Full of live keys (only with thousands of throttled projects): this key
                // goes unlimited locally rather than growing without bound.
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_burst_goes_at_once_then_one_call_per_interval() {
        let mut gcra = Gcra::default();
        let r = [("all", rate(10.0, 3))];
        for _ in 0..3 {
            assert_eq!(gcra.take(&r, SECOND), Ok(()));
        }
        assert_eq!(gcra.take(&r, SECOND), Err(100_000));
        assert_eq!(gcra.take(&r, SECOND + 100_000), Ok(()));
        assert_eq!(gcra.take(&r, SECOND + 100_000), Err(100_000));
    }

    #[test]
    fn no_one_second_window_holds_more_than_rate_plus_burst() {
        // A caller that asks as often as it is allowed, waking late by up to 3 ms.
        let mut gcra = Gcra::default();
        let r = [("all", rate(100.0, 10))];
        let mut now = 0;
        let mut grants = Vec::new();
        let mut late = 0;
        while now < 20 * SECOND {
            match gcra.take(&r, now) {
                Ok(()) => grants.push(now),
                Err(wait) => {
                    late = (late + 1_700) % 3_000;
                    now += wait + late;
                }
            }
        }
        let busiest = grants
            .iter()
            .map(|start| {
                grants
                    .iter()
                    .filter(|t| **t >= *start && **t < start + SECOND)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(busiest <= 110, "{busiest}");
        // Late wake-ups are made up from the burst: the rate holds.
        assert!(grants.len() >= 1990, "{}", grants.len());
    }

    #[test]
    fn a_call_takes_from_every_limit_or_from_none() {
        let mut gcra = Gcra::default();
        let group = ("all", rate(1000.0, 100));
        let project = ("project:a", rate(1.0, 1));
        assert_eq!(gcra.take(&[group, project], 0), Ok(()));
        // The project is spent; the refused call must not take from the group either.
        assert!(gcra.take(&[group, project], 0).is_err());
        for _ in 0..99 {
            assert_eq!(gcra.take(&[group], 0), Ok(()));
        }
        assert!(gcra.take(&[group], 0).is_err());
    }

    #[test]
    fn scaling_a_rate_keeps_at_least_one_call() {
        assert_eq!(rate(200.0, 20).scaled(0.5), rate(100.0, 10));
        assert_eq!(rate(10.0, 1).scaled(0.25).burst, 1);
    }
}
