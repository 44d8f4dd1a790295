//! Adaptive concurrency (AIMD, after Vector's adaptive request concurrency): how many
//! annotate calls may be in flight, between 1 and `delivery.max_in_flight`.
//!
//! Time is cut into windows of about one round trip (at least [`MIN_WINDOW`]). At the end of
//! a window the limit is cut by a tenth if any call in it was pushed back (429, 503, a
//! timeout); otherwise, if the limit was reached and the round trip held (within half again
//! of its running mean), it grows: doubling until the first push-back (slow start), then by
//! one. A slow or throttling API is not hammered, and a fast one gets the in-flight calls it
//! can take.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::telemetry::Metrics;

/// Shortest window between two decisions.
const MIN_WINDOW: Duration = Duration::from_millis(50);

/// How an answer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered in its time (2xx, or an answer about the event itself).
    Answered,
    /// 429, 503, or no answer in time: the endpoint asks for less.
    PushedBack,
    /// Says nothing of the endpoint's load (a connection refused, a halt).
    Neutral,
}

struct Window {
    limit: usize,
    /// Permits to forget as slots come back, after a cut bigger than the free permits.
    debt: usize,
    slow_start: bool,
    started: Instant,
    /// Running mean of round trips, seconds.
    mean_rtt: Option<f64>,
    rtt_sum: f64,
    rtt_count: u32,
    pushed_back: bool,
    /// Whether every slot was in use at some point of the window.
    reached: bool,
}

pub struct Concurrency {
    permits: Semaphore,
    window: Mutex<Window>,
    max: usize,
    adaptive: bool,
    metrics: Metrics,
}

/// An in-flight slot; it goes back (or, after a cut, away) when dropped.
pub struct Slot<'a> {
    permit: Option<SemaphorePermit<'a>>,
    owner: &'a Concurrency,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // Under the lock, so a cut made meanwhile sees the permit either held or back.
        let mut window = self.owner.window();
        if window.debt > 0 {
            window.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        drop(window);
    }
}

impl Concurrency {
    /// `adaptive`: false keeps the limit at `max`.
    pub fn new(max: usize, adaptive: bool, metrics: Metrics) -> Self {
        let max = max.max(1);
        let initial = if adaptive {
            (max / 8).clamp(1, 16).min(max)
        } else {
            max
        };
        metrics
            .concurrency_limit
            .set(i64::try_from(initial).unwrap_or(i64::MAX));
        Self {
            permits: Semaphore::new(initial),
            window: Mutex::new(Window {
                limit: initial,
                debt: 0,
                slow_start: true,
                started: Instant::now(),
                mean_rtt: None,
                rtt_sum: 0.0,
                rtt_count: 0,
                pushed_back: false,
                reached: false,
            }),
            max,
            adaptive,
            metrics,
        }
    }

    fn window(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.window().limit
    }

    /// Waits for an in-flight slot.
    pub async fn acquire(&self) -> Slot<'_> {
        // The semaphore is never closed.
        let permit = self.permits.acquire().await.ok();
        if self.adaptive && self.permits.available_permits() == 0 {
            self.window().reached = true;
        }
        Slot {
            permit,
            owner: self,
        }
    }

    /// One call's answer after `rtt`.
    pub fn observe(&self, rtt: Duration, signal: Signal) {
        if !self.adaptive || signal == Signal::Neutral {
            return;
        }
        let mut w = self.window();
        match signal {
            Signal::PushedBack => w.pushed_back = true,
            _ => {
                w.rtt_sum += rtt.as_secs_f64();
                w.rtt_count += 1;
            }
        }
        let length = w
            .mean_rtt
            .map_or(MIN_WINDOW, Duration::from_secs_f64)
            .max(MIN_WINDOW);
        if w.started.elapsed() < length {
            return;
        }
        let rtt = (w.rtt_count > 0).then(|| w.rtt_sum / f64::from(w.rtt_count));
        let old = w.limit;
        if w.pushed_back {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let cut = ((old as f64) * 0.9).floor() as usize;
            w.limit = cut.max(1);
            w.slow_start = false;
        } else if w.reached
            && rtt.is_some_and(|now| w.mean_rtt.is_none_or(|mean| now <= mean * 1.5 + 0.001))
        {
            let grown = if w.slow_start { old * 2 } else { old + 1 };
            w.limit = grown.min(self.max);
        }
        if let Some(now) = rtt {
            w.mean_rtt = Some(w.mean_rtt.map_or(now, |mean| mean * 0.7 + now * 0.3));
        }
        w.started = Instant::now();
        w.rtt_sum = 0.0;
        w.rtt_count = 0;
        w.pushed_back = false;
        w.reached = false;
        let new = w.limit;
        if new > old {
            let mut more = new - old;
            let repaid = more.min(w.debt);
            w.debt -= repaid;
            more -= repaid;
            self.permits.add_permits(more);
        } else if new < old {
            let fewer = old - new;
            let forgotten = self.permits.forget_permits(fewer);
            w.debt += fewer - forgotten;
        }
        drop(w);
        if new != old {
            self.metrics
                .concurrency_limit
                .set(i64::try_from(new).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass_window(c: &Concurrency) {
        c.window().started -= Duration::from_secs(1);
    }

    #[tokio::test]
    async fn the_limit_grows_under_a_fast_endpoint_and_shrinks_on_push_back() {
        let c = Concurrency::new(64, true, Metrics::new());
        assert_eq!(c.limit(), 8);
        for _ in 0..4 {
            let slots: Vec<_> =
                futures::future::join_all((0..c.limit()).map(|_| c.acquire())).await;
            pass_window(&c);
            c.observe(Duration::from_millis(5), Signal::Answered);
            drop(slots);
        }
        assert_eq!(c.limit(), 64, "doubled to the ceiling");
        pass_window(&c);
        c.observe(Duration::from_millis(5), Signal::PushedBack);
        assert_eq!(c.limit(), 57);
        // Held slots beyond the new limit are forgotten as they come back.
        let slots: Vec<_> = futures::future::join_all((0..57).map(|_| c.acquire())).await;
        assert_eq!(c.permits.available_permits(), 0);
        pass_window(&c);
        c.observe(Duration::from_millis(5), Signal::Answered);
        assert_eq!(c.limit(), 58, "additive after the first cut");
        drop(slots);
        assert_eq!(c.permits.available_permits(), 58);
    }

    #[tokio::test]
    async fn a_limit_not_reached_does_not_grow() {
        let c = Concurrency::new(64, true, Metrics::new());
        let slot = c.acquire().await;
        pass_window(&c);
        c.observe(Duration::from_millis(5), Signal::Answered);
        drop(slot);
        assert_eq!(c.limit(), 8);
    }

    #[tokio::test]
    async fn cuts_below_the_slots_in_use_are_repaid_as_they_come_back() {
        let c = Concurrency::new(16, true, Metrics::new());
        let slots: Vec<_> = futures::future::join_all((0..2).map(|_| c.acquire())).await;
        for _ in 0..3 {
            pass_window(&c);
            c.observe(Duration::from_millis(5), Signal::PushedBack);
        }
        assert_eq!(c.limit(), 1);
        drop(slots);
        assert_eq!(c.permits.available_permits(), 1);
    }
}
